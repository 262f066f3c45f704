//! The audio half of the end-to-end test's PipeWire checks (tests/e2e/run.sh): writes the test
//! signal the guest plays, and judges what a recorder on the host's sink monitor captured.
//!
//! ```text
//! e2e_audio sine FILE.wav SECONDS HZ       # 48 kHz stereo S16LE WAV of a sine at HZ
//! e2e_audio judge FILE.wav HZ MIN_SECONDS  # PASS/FAIL: the loudest tone is HZ, lasting at
//!                                          # least MIN_SECONDS
//! ```
//!
//! `judge` reads the WAV (or raw S16LE stereo at 48 kHz when the file has no RIFF header), keeps
//! the samples louder than a noise floor (the recording starts and ends with silence), measures
//! the length of that part and finds its dominant frequency with a Goertzel scan around HZ and a
//! coarse scan over the whole band, so a tone at another pitch (resampled at the wrong rate, for
//! instance) is reported with its real frequency. Uses only the standard library: run.sh builds
//! it with plain rustc.

use std::f64::consts::PI;
use std::fs;
use std::process::ExitCode;

const RATE: u32 = 48_000;
const CHANNELS: u16 = 2;

fn wav(samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&CHANNELS.to_le_bytes());
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&(RATE * u32::from(CHANNELS) * 2).to_le_bytes());
    out.extend_from_slice(&(CHANNELS * 2).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// The first channel's samples of a WAV file (its `data` chunk) or of raw stereo S16LE.
fn mono(bytes: &[u8]) -> Result<Vec<f64>, String> {
    let mut data = bytes;
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE" {
        let mut at = 12;
        let mut found = None;
        while at + 8 <= bytes.len() {
            let id = &bytes[at..at + 4];
            let len =
                u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
                    as usize;
            let body = at + 8;
            if id == b"fmt " && body + 16 <= bytes.len() {
                let fmt = u16::from_le_bytes([bytes[body], bytes[body + 1]]);
                let ch = u16::from_le_bytes([bytes[body + 2], bytes[body + 3]]);
                let rate = u32::from_le_bytes([
                    bytes[body + 4],
                    bytes[body + 5],
                    bytes[body + 6],
                    bytes[body + 7],
                ]);
                let bits = u16::from_le_bytes([bytes[body + 14], bytes[body + 15]]);
                if fmt != 1 || ch != CHANNELS || rate != RATE || bits != 16 {
                    return Err(format!(
                        "unsupported WAV format {fmt}, {ch} channels, {rate} Hz, {bits} bits \
                         (want PCM, 2, 48000, 16)"
                    ));
                }
            }
            if id == b"data" {
                // Recorders that stream leave the length 0 or too large: take what is there.
                let end = if len == 0 {
                    bytes.len()
                } else {
                    (body + len).min(bytes.len())
                };
                found = Some(&bytes[body..end]);
                break;
            }
            at = body + len + (len & 1);
        }
        data = found.ok_or("no data chunk in the WAV file")?;
    }
    Ok(data
        .chunks_exact(4)
        .map(|f| f64::from(i16::from_le_bytes([f[0], f[1]])) / 32768.0)
        .collect())
}

/// Power of `x` at `hz` (Goertzel).
fn power(x: &[f64], hz: f64) -> f64 {
    let w = 2.0 * PI * hz / f64::from(RATE);
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s = v + c * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - c * s1 * s2) / (x.len() as f64).powi(2)
}

fn judge(path: &str, want_hz: f64, min_seconds: f64) -> Result<String, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let x = mono(&bytes)?;
    // The part louder than the floor, from its first to its last loud 10 ms block.
    let block = (RATE / 100) as usize;
    let loud: Vec<bool> = x
        .chunks(block)
        .map(|b| b.iter().map(|v| v * v).sum::<f64>() / b.len() as f64 > 1e-4)
        .collect();
    let (Some(first), Some(last)) = (loud.iter().position(|&l| l), loud.iter().rposition(|&l| l))
    else {
        return Err(format!(
            "silence: {} samples, none above the noise floor",
            x.len()
        ));
    };
    let sound = &x[first * block..((last + 1) * block).min(x.len())];
    let seconds = sound.len() as f64 / f64::from(RATE);
    // One second from the middle is plenty for the pitch.
    let mid = sound.len() / 2;
    let half = (RATE as usize / 2).min(mid);
    let probe = &sound[mid - half..(mid + half).min(sound.len())];
    let mut best = (0.0, 0.0);
    let mut scan = |hz: f64| {
        let p = power(probe, hz);
        if p > best.1 {
            best = (hz, p);
        }
    };
    let mut hz = 50.0;
    while hz < 20_000.0 {
        scan(hz);
        hz += 25.0;
    }
    let mut hz = want_hz - 30.0;
    while hz <= want_hz + 30.0 {
        scan(hz);
        hz += 1.0;
    }
    let got = best.0;
    let what = format!(
        "{seconds:.2} s of sound ({} samples recorded), dominant tone {got:.0} Hz",
        x.len()
    );
    if (got - want_hz).abs() > 5.0 {
        return Err(format!("{what}; want {want_hz:.0} Hz"));
    }
    if seconds < min_seconds {
        return Err(format!("{what}; want at least {min_seconds:.2} s"));
    }
    Ok(what)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0);
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["sine", path, secs, hz] => {
            let (Some(secs), Some(hz)) = (num(secs), num(hz)) else {
                eprintln!("e2e_audio: SECONDS and HZ must be positive numbers");
                return ExitCode::from(2);
            };
            let frames = (secs * f64::from(RATE)) as usize;
            let mut samples = Vec::with_capacity(frames * 2);
            for i in 0..frames {
                let v = (0.4 * (2.0 * PI * hz * i as f64 / f64::from(RATE)).sin() * 32767.0) as i16;
                samples.push(v);
                samples.push(v);
            }
            if let Err(e) = fs::write(path, wav(&samples)) {
                eprintln!("e2e_audio: cannot write {path}: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        ["judge", path, hz, min] => {
            let (Some(hz), Some(min)) = (num(hz), num(min)) else {
                eprintln!("e2e_audio: HZ and MIN_SECONDS must be positive numbers");
                return ExitCode::from(2);
            };
            match judge(path, hz, min) {
                Ok(what) => {
                    println!("PASS {what}");
                    ExitCode::SUCCESS
                }
                Err(what) => {
                    println!("FAIL {what}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!(
                "usage: e2e_audio sine FILE SECONDS HZ | e2e_audio judge FILE HZ MIN_SECONDS"
            );
            ExitCode::from(2)
        }
    }
}
