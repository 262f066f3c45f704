//! Benchmark of the data path: our daemon (real binary, separate process, driven through
//! vhost-user by the test frontend's VMM and a cheap guest driver) against the limit (bare
//! socketpair / pipe between two threads, two processes for the round trip), the relay floor
//! of a separate-process device (round trip only) and the peer (rutabaga_gfx's cross-domain
//! context driven in-process), in one run, pinned to one CPU and unpinned.
//!
//! ```sh
//! cargo run --release --features bench-peer --example bench -- [--quick] [--json FILE]
//! ```
//!
//! Without `--features bench-peer` rutabaga_gfx is not compiled in, and the peer's column says
//! so instead of a measurement.
//!
//! More options (for profiling one case): `--only g2h,rtt,...`, `--regime pinned|unpinned`,
//! `--systems limit,relay,ours,rutabaga`, `--reps N`, `--driver lean|frontend`.
//! `VHOST_USER_CROSS_DOMAIN_BIN=PATH` runs another daemon binary or a wrapper script (e.g. one
//! that execs the daemon under callgrind or strace). See docs/performance.md for the method and
//! a full run.

#[path = "bench/alloc.rs"]
mod alloc;
#[path = "bench/cases.rs"]
mod cases;
#[path = "bench/counters.rs"]
mod counters;
#[path = "bench/driver.rs"]
mod driver;
#[path = "bench/lean.rs"]
mod lean;
#[path = "bench/limit.rs"]
mod limit;
#[path = "bench/ours.rs"]
mod ours;
#[cfg(feature = "bench-peer")]
#[path = "bench/peer.rs"]
mod peer;
/// Stands in for the peer when rutabaga_gfx is not compiled in; never run (see
/// [`Bench::unavailable`]).
#[cfg(not(feature = "bench-peer"))]
mod peer {
    use crate::cases::{Case, Params, RepResult};

    pub struct Peer;

    impl Peer {
        pub fn new() -> Result<Peer, String> {
            Err(crate::PEER_NOT_BUILT.to_owned())
        }

        pub fn run(&mut self, _: Case, _: &Params) -> RepResult {
            Err(crate::PEER_NOT_BUILT.to_owned())
        }
    }
}
#[path = "bench/relay.rs"]
mod relay;
#[path = "bench/service.rs"]
mod service;
#[path = "bench/stats.rs"]
mod stats;
#[path = "bench/sys.rs"]
mod sys;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use cases::{Case, Metric, Outcome, Params, RepResult, ALL};
use stats::{fmt, Summary};

/// The systems, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Limit,
    Relay,
    Ours,
    Peer,
}

const SYSTEMS: [System; 4] = [System::Limit, System::Relay, System::Ours, System::Peer];

/// What the peer's cells say when rutabaga_gfx is not compiled in.
const PEER_NOT_BUILT: &str = "n/a (build with --features bench-peer)";

impl System {
    fn key(self) -> &'static str {
        match self {
            System::Limit => "limit",
            System::Relay => "relay",
            System::Ours => "ours",
            System::Peer => "rutabaga",
        }
    }

    fn runs(self, case: Case) -> bool {
        match self {
            System::Relay => relay::supports(case),
            _ => true,
        }
    }

    /// Has a device process whose system calls the counted pass counts.
    fn has_device(self) -> bool {
        matches!(self, System::Relay | System::Ours)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Regime {
    Pinned,
    Unpinned,
}

impl Regime {
    fn key(self) -> &'static str {
        match self {
            Regime::Pinned => "pinned",
            Regime::Unpinned => "unpinned",
        }
    }
}

struct Options {
    quick: bool,
    json: Option<PathBuf>,
    reps: usize,
    cases: Vec<Case>,
    regimes: Vec<Regime>,
    systems: Vec<System>,
    driver: ours::Driver,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench [--quick] [--json FILE] [--reps N] [--only CASE,...] \
         [--regime pinned|unpinned|both] [--systems limit,relay,ours,rutabaga] \
         [--driver lean|frontend]\n\
         cases: {}",
        ALL.map(Case::key).join(", ")
    );
    std::process::exit(2)
}

fn parse_args() -> Options {
    let mut o = Options {
        quick: false,
        json: None,
        reps: 5,
        cases: ALL.to_vec(),
        regimes: vec![Regime::Pinned, Regime::Unpinned],
        systems: SYSTEMS.to_vec(),
        driver: ours::Driver::Lean,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--quick" => o.quick = true,
            "--json" => o.json = Some(PathBuf::from(value())),
            "--reps" => o.reps = value().parse().unwrap_or_else(|_| usage()),
            "--only" => {
                o.cases = value()
                    .split(',')
                    .map(|k| Case::from_key(k).unwrap_or_else(|| usage()))
                    .collect()
            }
            "--regime" => {
                o.regimes = match value().as_str() {
                    "pinned" => vec![Regime::Pinned],
                    "unpinned" => vec![Regime::Unpinned],
                    "both" => vec![Regime::Pinned, Regime::Unpinned],
                    _ => usage(),
                }
            }
            "--systems" => {
                o.systems = value()
                    .split(',')
                    .map(|k| {
                        SYSTEMS
                            .into_iter()
                            .find(|s| s.key() == k)
                            .unwrap_or_else(|| usage())
                    })
                    .collect()
            }
            "--driver" => {
                o.driver = match value().as_str() {
                    "lean" => ours::Driver::Lean,
                    "frontend" => ours::Driver::Frontend,
                    _ => usage(),
                }
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    if o.reps == 0 {
        usage();
    }
    o
}

/// Everything measured for one system in one case.
struct SystemResult {
    /// Per metric: the summary over repetitions, or why there is none.
    metrics: Vec<Result<Summary, String>>,
    /// CPU time per operation (all processes of the system), µs, and the part of its device
    /// process (ours: the daemon, relay: its device).
    cpu_us: Option<Summary>,
    device_cpu_us: Option<Summary>,
    /// Per operation, for systems with a device process: the guest driver thread's CPU time
    /// (µs), the device's wake-ups and preemptions, the driver's allocations in the loop, and
    /// the device's system calls (from the separate counted pass).
    driver_cpu_us: Option<Summary>,
    wakeups: Option<Summary>,
    preemptions: Option<Summary>,
    allocs: Option<Summary>,
    syscalls: Option<Result<f64, String>>,
    /// Repetitions that failed (their reasons); the others are summarised.
    failures: Vec<String>,
    attempts: usize,
    /// Diagnostics per operation (median over repetitions), e.g. kicks and interrupts.
    extra: Vec<(&'static str, Summary)>,
}

struct CaseResult {
    case: Case,
    metrics: Vec<Metric>,
    systems: Vec<(System, SystemResult)>,
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

/// The systems under test in one regime.
struct Bench {
    bin: PathBuf,
    driver: ours::Driver,
    ours: Option<ours::Ours>,
    peer: Result<peer::Peer, String>,
}

impl Bench {
    fn new(bin: &Path, systems: &[System], driver: ours::Driver) -> Bench {
        let ours = systems
            .contains(&System::Ours)
            .then(|| ours::Ours::start(bin, driver));
        let peer = if systems.contains(&System::Peer) {
            peer::Peer::new()
        } else {
            Err("not selected".into())
        };
        Bench {
            bin: bin.to_owned(),
            driver,
            ours,
            peer,
        }
    }

    /// Why `system` cannot run at all in this build, if it cannot: then it is not attempted.
    fn unavailable(&self, system: System) -> Option<&'static str> {
        (system == System::Peer && !cfg!(feature = "bench-peer")).then_some(PEER_NOT_BUILT)
    }

    /// One repetition of `case` on `system`, with the CPU time all its processes spent: over
    /// the traffic for systems that measure it themselves (ours, relay: `Outcome::costs`),
    /// otherwise over the whole repetition (the bench process and its waited-for children).
    fn rep(&mut self, system: System, case: Case, p: &Params) -> (RepResult, u64) {
        let c0 = sys::self_cpu_ns();
        let r = catch_unwind(AssertUnwindSafe(|| match system {
            System::Limit => limit::run(case, p),
            System::Relay => relay::run(case, p),
            System::Ours => self.ours.as_mut().expect("ours").run(case, p),
            System::Peer => match &mut self.peer {
                Ok(peer) => peer.run(case, p),
                Err(e) => Err(e.clone()),
            },
        }))
        .unwrap_or_else(|e| Err(format!("panicked: {}", panic_message(e))));
        let c1 = sys::self_cpu_ns();
        if r.is_err() && system == System::Ours {
            // The VM may be mid-request: start over with a fresh daemon for what follows.
            self.ours = Some(ours::Ours::start(&self.bin, self.driver));
        }
        let total = match &r {
            Ok(Outcome { costs: Some(c), .. }) => c.total_ns,
            _ => c1.saturating_sub(c0),
        };
        (r, total)
    }
}

/// Per-operation costs of one recorded repetition.
struct RepCosts {
    total: f64,
    device: Option<f64>,
    driver: Option<f64>,
    wakeups: Option<f64>,
    preemptions: Option<f64>,
    allocs: Option<f64>,
}

fn run_case(
    bench: &mut Bench,
    case: Case,
    p: &Params,
    reps: usize,
    systems: &[System],
    regime: Regime,
) -> CaseResult {
    let metrics = case.metrics(p);
    let systems: Vec<System> = systems.iter().copied().filter(|s| s.runs(case)).collect();
    let mut outcomes: Vec<Vec<Outcome>> = systems.iter().map(|_| Vec::new()).collect();
    let mut failures: Vec<Vec<String>> = systems.iter().map(|_| Vec::new()).collect();
    let mut attempts: Vec<usize> = systems.iter().map(|_| 0).collect();
    let mut costs: Vec<Vec<RepCosts>> = systems.iter().map(|_| Vec::new()).collect();
    // Repetition 0 warms up (page faults, caches, lazy allocations) and is not recorded. The
    // systems take turns within a repetition, so slow drifts of the machine hit all of them.
    // A failed repetition is lost (and reported); after two failures a system is dropped from
    // the case.
    for rep in 0..=reps {
        eprint!(
            "\r[{}] {:<12} rep {rep}/{reps}   ",
            regime.key(),
            case.key()
        );
        for (i, &s) in systems.iter().enumerate() {
            if failures[i].len() >= 2 || bench.unavailable(s).is_some() {
                continue;
            }
            attempts[i] += 1;
            let (r, cpu_ns) = bench.rep(s, case, p);
            match r {
                Ok(o) => {
                    if rep > 0 {
                        if o.ops > 0 {
                            let ops = o.ops as f64;
                            let us = |ns: u64| ns as f64 / ops / 1000.0;
                            let c = o.costs.as_ref();
                            costs[i].push(RepCosts {
                                total: us(cpu_ns),
                                device: c.map(|c| us(c.device_ns)),
                                driver: c.map(|c| us(c.driver_ns)),
                                wakeups: c.map(|c| c.device_wakeups as f64 / ops),
                                preemptions: c.map(|c| c.device_preemptions as f64 / ops),
                                allocs: o.driver_allocs.map(|a| a as f64 / ops),
                            });
                        }
                        outcomes[i].push(o);
                    }
                }
                Err(e) => {
                    eprintln!("\n[{}] {} on {}: {e}", regime.key(), case.key(), s.key());
                    failures[i].push(e);
                }
            }
        }
    }
    // The counted pass: one more repetition of each system with a device process, with its
    // system calls counted (see counters.rs); its times are not used.
    let mut syscalls: Vec<Option<Result<f64, String>>> = systems.iter().map(|_| None).collect();
    // The bulk cases report no operation to count per (four transfers of different sizes).
    if case.has_ops() {
        eprint!(
            "\r[{}] {:<12} counting syscalls   ",
            regime.key(),
            case.key()
        );
        let counted = Params {
            count_syscalls: true,
            ..*p
        };
        for (i, &s) in systems.iter().enumerate() {
            if !s.has_device() || failures[i].len() >= 2 {
                continue;
            }
            let (r, _) = bench.rep(s, case, &counted);
            syscalls[i] = Some(match r {
                Ok(o) => match o.costs.and_then(|c| c.device_syscalls) {
                    Some(Ok(n)) if o.ops > 0 => Ok(n as f64 / o.ops as f64),
                    Some(Err(e)) => Err(e),
                    _ => Err("n/a (not counted)".into()),
                },
                Err(e) => Err(format!("n/a (the counted pass failed: {e})")),
            });
        }
    }
    let systems = systems
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let metrics = (0..metrics.len())
                .map(|m| {
                    let mut vals = Vec::new();
                    for o in &outcomes[i] {
                        match &o.values[m] {
                            Ok(v) => vals.push(*v),
                            Err(e) => return Err(e.clone()),
                        }
                    }
                    Summary::of(&vals).ok_or_else(|| {
                        failures[i]
                            .first()
                            .cloned()
                            .or_else(|| bench.unavailable(s).map(str::to_owned))
                            .unwrap_or_else(|| "no repetitions".to_owned())
                    })
                })
                .collect();
            let mut extra: Vec<(&'static str, Summary)> = Vec::new();
            if let Some(first) = outcomes[i].first() {
                for (k, (name, _)) in first.extra.iter().enumerate() {
                    let vals: Vec<f64> = outcomes[i]
                        .iter()
                        .filter_map(|o| o.extra.get(k).map(|e| e.1))
                        .collect();
                    if let Some(sm) = Summary::of(&vals) {
                        extra.push((name, sm));
                    }
                }
            }
            let c = &costs[i];
            let total: Vec<f64> = c.iter().map(|c| c.total).collect();
            let of = |f: fn(&RepCosts) -> Option<f64>| {
                Summary::of(&c.iter().filter_map(f).collect::<Vec<f64>>())
            };
            (
                s,
                SystemResult {
                    metrics,
                    cpu_us: Summary::of(&total),
                    device_cpu_us: of(|c| c.device),
                    driver_cpu_us: of(|c| c.driver),
                    wakeups: of(|c| c.wakeups),
                    preemptions: of(|c| c.preemptions),
                    allocs: of(|c| c.allocs),
                    syscalls: syscalls[i].take(),
                    failures: std::mem::take(&mut failures[i]),
                    attempts: attempts[i],
                    extra,
                },
            )
        })
        .collect();
    CaseResult {
        case,
        metrics,
        systems,
    }
}

fn get(r: &CaseResult, s: System, m: usize) -> Option<&Result<Summary, String>> {
    r.systems
        .iter()
        .find(|(x, _)| *x == s)
        .map(|(_, sr)| &sr.metrics[m])
}

fn sys(r: &CaseResult, s: System) -> Option<&SystemResult> {
    r.systems.iter().find(|(x, _)| *x == s).map(|(_, sr)| sr)
}

fn ratio(r: &CaseResult, m: usize, other: System) -> Option<f64> {
    match (get(r, System::Ours, m), get(r, other, m)) {
        (Some(Ok(a)), Some(Ok(b))) if b.median != 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

/// Prints one regime's table; reasons for "n/a" become numbered notes.
fn print_table(regime: Regime, results: &[CaseResult], notes: &mut Vec<String>) {
    let mut rows: Vec<[String; 9]> = vec![[
        "case".into(),
        "unit".into(),
        "limit".into(),
        "relay".into(),
        "ours".into(),
        "rutabaga".into(),
        "ours/limit".into(),
        "ours/relay".into(),
        "ours/rutabaga".into(),
    ]];
    let note = |reason: &str, notes: &mut Vec<String>| -> String {
        let i = match notes.iter().position(|n| n == reason) {
            Some(i) => i,
            None => {
                notes.push(reason.to_owned());
                notes.len() - 1
            }
        };
        format!("n/a [{}]", i + 1)
    };
    for r in results {
        for (m, metric) in r.metrics.iter().enumerate() {
            let cell = |s: System, notes: &mut Vec<String>| match get(r, s, m) {
                None => "-".to_owned(),
                Some(Ok(v)) => {
                    let mut c = format!("{} ({}–{})", fmt(v.median), fmt(v.min), fmt(v.max));
                    if let Some((_, sr)) = r.systems.iter().find(|(x, _)| *x == s) {
                        if let Some(first) = sr.failures.first() {
                            let n = note(
                                &format!(
                                    "{} of {} runs failed: {first}",
                                    sr.failures.len(),
                                    sr.attempts
                                ),
                                notes,
                            );
                            c = format!("{c} {}", n.trim_start_matches("n/a "));
                        }
                    }
                    c
                }
                // Said in the cell itself: it is the same for every case.
                Some(Err(e)) if e == PEER_NOT_BUILT => e.clone(),
                Some(Err(e)) => note(e, notes),
            };
            let arrow = if metric.higher_is_better {
                "↑"
            } else {
                "↓"
            };
            let q = |v: Option<f64>| v.map(|x| format!("{x:.2}×")).unwrap_or_else(|| "-".into());
            rows.push([
                metric.name.clone(),
                format!("{} {arrow}", metric.unit),
                cell(System::Limit, notes),
                cell(System::Relay, notes),
                cell(System::Ours, notes),
                cell(System::Peer, notes),
                q(ratio(r, m, System::Limit)),
                q(ratio(r, m, System::Relay)),
                q(ratio(r, m, System::Peer)),
            ]);
        }
    }
    let title = match regime {
        Regime::Pinned => {
            "pinned: every thread of the bench, the daemon and the host services on one CPU \
             (judge by this)"
        }
        Regime::Unpinned => "unpinned: the scheduler's choice (realistic, noisy)",
    };
    println!("\n## {title}\nmedian (min–max) of the repetitions\n");
    print_rows(&rows);

    let med = |v: Option<&Summary>, f: fn(f64) -> String| {
        v.map(|v| f(v.median)).unwrap_or_else(|| "-".into())
    };
    let name = |r: &CaseResult| {
        r.metrics[0]
            .name
            .split(" (limit")
            .next()
            .unwrap_or("")
            .to_owned()
    };
    let two = |x: f64| format!("{x:.2}");
    // CPU per operation.
    let mut cpu_rows: Vec<[String; 9]> = vec![[
        "case".into(),
        "per".into(),
        "limit".into(),
        "relay".into(),
        "relay: device".into(),
        "ours".into(),
        "ours: daemon".into(),
        "ours: driver".into(),
        "rutabaga".into(),
    ]];
    for r in results.iter().filter(|r| r.case.has_ops()) {
        let c =
            |s: System, f: fn(&SystemResult) -> Option<&Summary>| med(sys(r, s).and_then(f), fmt);
        cpu_rows.push([
            name(r),
            r.case.op().into(),
            c(System::Limit, |s| s.cpu_us.as_ref()),
            c(System::Relay, |s| s.cpu_us.as_ref()),
            c(System::Relay, |s| s.device_cpu_us.as_ref()),
            c(System::Ours, |s| s.cpu_us.as_ref()),
            c(System::Ours, |s| s.device_cpu_us.as_ref()),
            c(System::Ours, |s| s.driver_cpu_us.as_ref()),
            c(System::Peer, |s| s.cpu_us.as_ref()),
        ]);
    }
    println!(
        "\nCPU time per operation, µs (medians): all processes of the system; of which the \
         device process (relay: its device, ours: the daemon) and our guest driver's thread. \
         Relay and ours over the traffic only, the others over the whole repetition\n"
    );
    print_rows(&cpu_rows);
    // The device process and the guest driver, per operation.
    let mut dev_rows: Vec<[String; 10]> = vec![[
        "case".into(),
        "per".into(),
        "syscalls: relay device".into(),
        "syscalls: daemon".into(),
        "wake-ups (+preempted): relay device".into(),
        "wake-ups (+preempted): daemon".into(),
        "requests".into(),
        "kicks".into(),
        "interrupts".into(),
        "driver allocations".into(),
    ]];
    for r in results.iter().filter(|r| r.case.has_ops()) {
        let calls = |s: System, notes: &mut Vec<String>| match sys(r, s)
            .and_then(|x| x.syscalls.as_ref())
        {
            None => "-".to_owned(),
            Some(Ok(v)) => two(*v),
            Some(Err(e)) => note(e, notes),
        };
        let x = |name: &str| {
            med(
                sys(r, System::Ours)
                    .and_then(|sr| sr.extra.iter().find(|(n, _)| *n == name))
                    .map(|(_, v)| v),
                two,
            )
        };
        let switches = |s: System| match sys(r, s) {
            Some(SystemResult {
                wakeups: Some(w),
                preemptions: Some(p),
                ..
            }) => format!("{:.2} (+{:.2})", w.median, p.median),
            _ => "-".into(),
        };
        dev_rows.push([
            name(r),
            r.case.op().into(),
            calls(System::Relay, notes),
            calls(System::Ours, notes),
            switches(System::Relay),
            switches(System::Ours),
            x("requests"),
            x("kicks"),
            x("interrupts"),
            med(sys(r, System::Ours).and_then(|s| s.allocs.as_ref()), two),
        ]);
    }
    println!(
        "\nPer operation (medians): system calls of the device process (all threads; counted \
         in one extra repetition with a perf counter on raw_syscalls:sys_enter, not timed), its \
         wake-ups (voluntary context switches) and preemptions (involuntary ones); our guest \
         driver's control-queue requests, kicks and interrupts, and its allocations in the loop\n"
    );
    print_rows(&dev_rows);
}

fn print_rows<const N: usize>(rows: &[[String; N]]) {
    let width = |c: usize| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..N).map(width).collect();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| {
                let pad = widths[c] - s.chars().count();
                if c < 2 {
                    format!("{s}{}", " ".repeat(pad))
                } else {
                    format!("{}{s}", " ".repeat(pad))
                }
            })
            .collect();
        println!("| {} |", line.join(" | "));
        if i == 0 {
            let sep: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, w)| {
                    if c < 2 {
                        format!(":{}", "-".repeat((*w).max(1) - 1))
                    } else {
                        format!("{}:", "-".repeat((*w).max(1) - 1))
                    }
                })
                .collect();
            println!("| {} |", sep.join(" | "));
        }
    }
}

const COSTS: &str = "\
Costs each side pays:
- ours: a separate daemon process behind vhost-user. Per request the guest driver (Rust code in
  the bench process standing in for the guest kernel; by default a cheap one that offers
  pre-encoded requests from reused guest buffers and allocates nothing per request) publishes
  the chain and kicks an eventfd unless EVENT_IDX suppresses it; the daemon walks the
  descriptor chain, does the work, writes the used ring and signals an interrupt eventfd, which
  the guest driver polls. Unfenced requests (SEND, WRITE) are pipelined up to 32 deep, as Linux
  does not wait for them; POLL is fenced and waited for. The guest driver's CPU time counts too.
- relay (round trip only): the floor of any separate-process device. The guest thread writes
  64 bytes into shared memory and kicks an eventfd; a device process waiting in epoll reads the
  kick, writes the bytes to its Unix socket to the host service, reads the answer into the
  shared memory and writes a call eventfd the guest waits on. No virtqueue, no protocol.
- rutabaga: in-process function calls: no virtqueue, no kick, no interrupt, no second process.
  The bench copies each command into a reused buffer (what a VMM does reading a descriptor) and
  calls submit_command; a POLL completes on rutabaga's per-context worker thread, whose fence
  callback hands the fence id to the bench thread over a channel.
- limit: the same bytes over a bare Unix socketpair or pipe(2) between two threads (round trip:
  two processes), with the same host-service code.
All of them use the same host-service code (drain, write, echo, fd passing) on a Unix stream
socket (accepted from the same kind of listener, except the limit's and the relay's).";

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--echo-child") {
        limit::echo_child();
        return;
    }
    if std::env::args().nth(1).as_deref() == Some(relay::DEVICE_ARG) {
        if let Err(e) = relay::device_main() {
            eprintln!("bench: relay device: {e}");
            std::process::exit(1);
        }
        return;
    }
    let o = parse_args();
    let start = Instant::now();
    let p = if o.quick {
        Params::quick()
    } else {
        Params::full()
    };
    let bin = match sys::daemon_binary(support::DAEMON_NAME) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    };
    let build_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let all_cpus = sys::affinity().unwrap_or_default();
    let pin_cpu = if all_cpus.contains(&0) {
        0
    } else {
        all_cpus.first().copied().unwrap_or(0)
    };
    let (nproc, cpu, kernel) = sys::machine();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    println!(
        "# vhost-user-cross-domain benchmark ({})\n\nmachine: {nproc} CPUs ({cpu}), Linux \
         {kernel}, load average {load} at the start; daemon {}; guest driver: {}; {} \
         repetitions after one warm-up",
        if o.quick { "quick" } else { "full" },
        bin.display(),
        o.driver.key(),
        o.reps
    );

    let mut regimes_json = Vec::new();
    let mut notes = Vec::new();
    for &regime in &o.regimes {
        let cpus = match regime {
            Regime::Pinned => vec![pin_cpu],
            Regime::Unpinned => all_cpus.clone(),
        };
        if let Err(e) = sys::set_affinity(&cpus) {
            eprintln!("bench: sched_setaffinity({cpus:?}): {e}");
            std::process::exit(1);
        }
        // The daemon, the relay's device and rutabaga's worker threads inherit this thread's
        // affinity.
        let mut bench = Bench::new(&bin, &o.systems, o.driver);
        let results: Vec<CaseResult> = o
            .cases
            .iter()
            .map(|&c| run_case(&mut bench, c, &p, o.reps, &o.systems, regime))
            .collect();
        eprintln!();
        drop(bench);
        print_table(regime, &results, &mut notes);
        regimes_json.push(regime_json(regime, &cpus, &results));
    }
    if !notes.is_empty() {
        println!();
        for (i, n) in notes.iter().enumerate() {
            println!("[{}] {n}", i + 1);
        }
    }
    println!("\n{COSTS}");
    let secs = start.elapsed().as_secs_f64();
    if build_secs >= 1.0 {
        println!("\nmeasured in {secs:.1} s (plus {build_secs:.1} s building the daemon)");
    } else {
        println!("\nmeasured in {secs:.1} s");
    }
    if let Some(path) = &o.json {
        let doc = json!({
            "mode": if o.quick { "quick" } else { "full" },
            "repetitions": o.reps,
            "machine": { "nproc": nproc, "cpu": cpu, "kernel": kernel },
            "daemon": bin.display().to_string(),
            "guest_driver": o.driver.key(),
            "params": {
                "message_bytes": cases::MSG,
                "messages": p.msgs,
                "round_trip_bytes": cases::RTT_MSG,
                "round_trips": p.rtts,
                "pipe_bytes": p.pipe_bytes,
                "pipe_chunk": cases::PIPE_CHUNK,
                "fd_messages": p.fd_msgs,
                "memfd_messages": p.memfd_msgs,
                "guest_window": ours::WINDOW,
            },
            "regimes": regimes_json,
            "costs": COSTS,
            "seconds": secs,
        });
        let text = serde_json::to_string_pretty(&doc).expect("serialise");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("bench: write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}

fn summary_json(s: &Result<Summary, String>) -> Value {
    match s {
        Ok(v) => json!({ "min": v.min, "median": v.median, "max": v.max, "samples": v.samples }),
        Err(e) => json!({ "na": e }),
    }
}

fn regime_json(regime: Regime, cpus: &[usize], results: &[CaseResult]) -> Value {
    let mut rows = Vec::new();
    for r in results {
        for (m, metric) in r.metrics.iter().enumerate() {
            let mut row = json!({
                "case": r.case.key(),
                "metric": metric.name,
                "unit": metric.unit,
                "higher_is_better": metric.higher_is_better,
                "ours_over_limit": ratio(r, m, System::Limit),
                "ours_over_relay": ratio(r, m, System::Relay),
                "ours_over_rutabaga": ratio(r, m, System::Peer),
            });
            for (s, sr) in &r.systems {
                row[s.key()] = summary_json(&sr.metrics[m]);
                if !sr.failures.is_empty() {
                    row[format!("{}_failures", s.key())] = json!(sr.failures);
                }
                for (name, v) in &sr.extra {
                    if m == 0 {
                        row[format!("{}_{name}_per_{}", s.key(), r.case.op().replace(' ', "_"))] =
                            json!(v.median);
                    }
                }
                if m == 0 && r.case != Case::Memory {
                    let op = r.case.op().replace(' ', "_");
                    let sm = |v: &Option<Summary>| {
                        v.as_ref()
                            .map(|v| json!({"min": v.min, "median": v.median, "max": v.max}))
                    };
                    let mut v = json!({ "total": sm(&sr.cpu_us) });
                    if s.has_device() {
                        let device = if *s == System::Ours {
                            "daemon"
                        } else {
                            "device"
                        };
                        v[device] = json!(sm(&sr.device_cpu_us));
                        v["driver"] = json!(sm(&sr.driver_cpu_us));
                        row[format!("{}_wakeups_per_{op}", s.key())] = json!(sm(&sr.wakeups));
                        row[format!("{}_preemptions_per_{op}", s.key())] =
                            json!(sm(&sr.preemptions));
                        row[format!("{}_driver_allocations_per_{op}", s.key())] =
                            json!(sm(&sr.allocs));
                        row[format!("{}_syscalls_per_{op}", s.key())] = match &sr.syscalls {
                            Some(Ok(n)) => json!(n),
                            Some(Err(e)) => json!({ "na": e }),
                            None => Value::Null,
                        };
                    }
                    row[format!("{}_cpu_us_per_{op}", s.key())] = v;
                }
            }
            rows.push(row);
        }
    }
    json!({ "regime": regime.key(), "cpus": cpus, "rows": rows })
}
