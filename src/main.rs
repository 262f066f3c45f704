//! Command line of `vhost-user-cross-domain`: parses the flags into a [`Config`], sets up
//! logging and hands over to the library. All device behaviour lives in the library; this file
//! only maps outcomes to exit codes: 0 clean stop, 1 runtime failure, 2 invalid configuration
//! (clap's own usage errors also exit with 2).

use std::error::Error as StdError;
use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::{ArgGroup, Parser};
use log::{error, info, warn};
use vhost_user_cross_domain::config::{
    channel_name, parse_scanouts, parse_socket_path, ChannelTable, ConfigError, CHANNEL_NAMES,
};
use vhost_user_cross_domain::Config;

/// Exit status for a failure after the configuration was accepted.
const EXIT_RUNTIME_FAILURE: u8 = 1;
/// Exit status for a rejected configuration (the same clap uses for usage errors).
const EXIT_BAD_CONFIG: u8 = 2;

const ABOUT: &str =
    "vhost-user virtio-gpu device carrying cross-domain channels to host Unix sockets";

const LONG_ABOUT: &str = "\
vhost-user virtio-gpu device that offers only the cross-domain context type (capset 5).

A VMM (crosvm, QEMU) connects to the vhost-user socket given with --socket-path. A guest program
opens a cross-domain context and names a numeric channel type; the daemon connects that context
to the host Unix socket configured for the type with --channel and carries bytes and file
descriptors both ways. It never looks inside the traffic: what a channel number means is agreed
between the guest program and the host service.";

// The listening-socket flags form one group so that a future `--fd` can join it and clap keeps
// enforcing "exactly one of them".
#[derive(Debug, Parser)]
#[command(
    name = "vhost-user-cross-domain",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = "Run with --help for examples.",
    after_long_help = EXAMPLES,
    group(ArgGroup::new("listen").required(true).multiple(false).args(["socket_path"])),
)]
struct Args {
    /// Unix socket path on which to wait for the VMM's vhost-user connection.
    #[arg(
        long,
        value_name = "PATH",
        value_parser = clap::value_parser!(OsString),
        long_help = "\
Unix socket path on which to wait for the VMM's vhost-user connection. The daemon
creates the socket and the VMM connects to it as a client; when the VMM goes away,
the daemon waits for the next connection.
Example: --socket-path /run/vm1/gpu.sock"
    )]
    socket_path: Option<OsString>,

    /// Connect channel type TYPE to the host Unix socket PATH (repeatable).
    #[arg(long = "channel", value_name = "TYPE:PATH", long_help = channel_long_help())]
    channels: Vec<String>,

    /// Same as --channel 1:PATH (Wayland).
    #[arg(
        long,
        value_name = "PATH",
        value_parser = clap::value_parser!(OsString),
        long_help = "\
Same as --channel 1:PATH, the Wayland channel; kept for command lines written for
crosvm's --wayland-sock. Giving both this flag and a --channel of type 1 is an error.
Example: --wayland-sock $XDG_RUNTIME_DIR/wayland-0"
    )]
    wayland_sock: Option<OsString>,

    /// Number of scanouts (display outputs) the device reports, 0 to 16.
    #[arg(
        long,
        value_name = "N",
        default_value = "1",
        long_help = "\
Number of scanouts (display outputs) the device reports, 0 to 16. The device never
shows anything; the scanouts exist because the guest driver asks for them. Linux 6.4
and newer accept 0 and then skip display setup; older kernels refuse a GPU with 0.
Example: --scanouts 0"
    )]
    scanouts: String,
}

fn channel_long_help() -> String {
    let names: Vec<String> = CHANNEL_NAMES
        .iter()
        .map(|&(name, t)| match t {
            0..=9 => format!("{name} ({t})"),
            _ => format!("{name} ({t:#x})"),
        })
        .collect();
    // clap is built without line wrapping, so the text carries its own line breaks.
    let names: Vec<String> = names.chunks(3).map(|line| line.join(", ")).collect();
    format!(
        "\
Connect every cross-domain context whose guest program asks for channel type TYPE to
the host Unix socket PATH. The socket is connected when a guest asks, so the host
service may start after the daemon. Repeat the flag for several channels; each type
may be given once. TYPE is a decimal number, a 0x-prefixed hexadecimal number, or
one of these names:
  {}.
0 and 0xffffffff are reserved. Types from 32 up work, but the capset's 32-bit channel
mask cannot advertise them, so the guest program must know the number.
Example: --channel 2:/run/portal.sock (a guest program that asks for channel 2
reaches the service listening on /run/portal.sock)",
        names.join(",\n  ")
    )
}

const EXAMPLES: &str = "\
Examples:
  Serve Wayland and a portal service on channel 2 to one VM:
    vhost-user-cross-domain --socket-path /run/vm1/gpu.sock \\
        --channel wayland:$XDG_RUNTIME_DIR/wayland-0 --channel 2:/run/portal.sock

  Start crosvm against it:
    crosvm run --vhost-user gpu,socket=/run/vm1/gpu.sock ...

  QEMU 11 (only its generic vhost-user test device passes the needed GPU features on):
    qemu-system-x86_64 -m 4G -object memory-backend-memfd,id=mem,size=4G,share=on \\
        -machine q35,memory-backend=mem \\
        -chardev socket,id=gpu,path=/run/vm1/gpu.sock \\
        -device vhost-user-test-device-pci,chardev=gpu,virtio-id=16,num_vqs=2,config_size=24 ...

Logging: RUST_LOG selects the log level (default: info), for example RUST_LOG=debug.
Exit status: 0 clean stop, 1 runtime failure, 2 invalid command line or configuration.";

fn main() -> ExitCode {
    // Exits with 2 on a usage error, 0 for --help and --version.
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let config = match config_from_args(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("vhost-user-cross-domain: error: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    log_channels(&config.channels);

    match vhost_user_cross_domain::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{}", error_chain(&e));
            ExitCode::from(EXIT_RUNTIME_FAILURE)
        }
    }
}

fn config_from_args(args: &Args) -> Result<Config, ConfigError> {
    let socket_path = match &args.socket_path {
        Some(path) => parse_socket_path(Path::new(path))?,
        None => return Err(ConfigError::NoListenSocket),
    };
    let mut channels = ChannelTable::new();
    for spec in &args.channels {
        channels.add_channel_arg(spec)?;
    }
    if let Some(path) = &args.wayland_sock {
        channels.add_wayland_sock_arg(Path::new(path))?;
    }
    let num_scanouts = parse_scanouts(&args.scanouts)?;
    Ok(Config {
        socket_path,
        channels,
        num_scanouts,
        shm_size: vhost_user_cross_domain::config::DEFAULT_SHM_SIZE,
    })
}

fn log_channels(channels: &ChannelTable) {
    if channels.is_empty() {
        warn!("no --channel given: guests can only open query-only contexts");
        return;
    }
    let list: Vec<String> = channels
        .iter()
        .map(|(t, path)| format!("{} -> {}", describe_channel(t), path.display()))
        .collect();
    info!(
        "channels: {} (capset channel mask {:#x})",
        list.join(", "),
        channels.capset_mask()
    );
    for t in channels.unadvertised() {
        warn!(
            "channel type {t} ({t:#x}) cannot be advertised in the capset's 32-bit channel mask; \
             a guest that knows the number can still use it"
        );
    }
}

fn describe_channel(channel_type: u32) -> String {
    match channel_name(channel_type) {
        Some(name) => format!("{channel_type} ({name})"),
        None => channel_type.to_string(),
    }
}

/// The error's message followed by those of its sources that it does not already contain.
fn error_chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
