//! Command line of `vhost-user-cross-domain`: parses the flags (and the socket-activation
//! environment) into a [`Config`], answers `--print-capabilities`, sets up logging and hands
//! over to the library. All device behaviour lives in the library; this file only maps outcomes
//! to exit codes: 0 clean stop, 1 runtime failure, 2 invalid configuration (clap's own usage
//! errors also exit with 2).

use std::error::Error as StdError;
use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{ArgGroup, Parser};
use log::{error, info, warn};
use vhost_user_cross_domain::config::{
    channel_name, parse_fd, parse_sandbox, parse_scanouts, parse_seccomp, parse_shm_size,
    parse_socket_path, select_listen, unusable_fd, ChannelTable, ConfigError, Listen, SandboxMode,
    SeccompMode, ACTIVATION_SOURCE, CHANNEL_NAMES,
};
use vhost_user_cross_domain::inherited::{self, FdError, SocketKind};
use vhost_user_cross_domain::{systemd, Config};

/// Exit status for a failure after the configuration was accepted.
const EXIT_RUNTIME_FAILURE: u8 = 1;
/// Exit status for a rejected configuration (the same clap uses for usage errors).
const EXIT_BAD_CONFIG: u8 = 2;

const ABOUT: &str =
    "vhost-user virtio-gpu device carrying cross-domain channels to host Unix sockets";

const LONG_ABOUT: &str = "\
vhost-user virtio-gpu device that offers only the cross-domain context type (capset 5).

A VMM (crosvm, QEMU) reaches the daemon through exactly one of: the vhost-user socket the
daemon creates at --socket-path, an already connected socket passed as --fd N, or a listening
socket passed by systemd socket activation. A guest program opens a cross-domain context and
names a numeric channel type; the daemon connects that context to the host Unix socket
configured for the type with --channel and carries bytes and file descriptors both ways. It
never looks inside the traffic: what a channel number means is agreed between the guest
program and the host service.";

/// The `--print-capabilities` answer (QEMU's vhost-user.json schema). The schema's only GPU
/// features are "render-node" and "virgl"; this device has neither a render node nor a virgl
/// renderer (it offers the VIRGL feature bit only because Linux requires it before a context
/// can be created), so the list is empty.
const CAPABILITIES: &str = "{\n  \"type\": \"gpu\",\n  \"features\": []\n}";

// `--socket-path` and `--fd` form one group, so clap rejects both together; socket activation
// joins the choice in `config_from_args`.
#[derive(Debug, Parser)]
#[command(
    name = "vhost-user-cross-domain",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = "Run with --help for examples.",
    after_long_help = EXAMPLES,
    group(ArgGroup::new("listen").required(false).multiple(false).args(["socket_path", "fd"])),
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
the daemon waits for the next connection. Exactly one of --socket-path, --fd and
socket activation gives the socket.
Example: --socket-path /run/vm1/gpu.sock"
    )]
    socket_path: Option<OsString>,

    /// Serve the vhost-user connection already open on file descriptor N, then exit.
    #[arg(
        long,
        value_name = "N",
        long_help = "\
Serve the vhost-user connection already open on file descriptor N (a Unix stream
socket connected to the VMM, as libvirt passes it), for one session: the daemon exits
with status 0 when the VMM disconnects.
Example: --fd 3"
    )]
    fd: Option<String>,

    /// Print the vhost-user capabilities as JSON and exit; other options are ignored.
    #[arg(
        long,
        long_help = "\
Print the vhost-user capabilities JSON object (QEMU's vhost-user.json schema) on
standard output and exit with status 0; every other option is ignored. The answer is
{\"type\": \"gpu\", \"features\": []}: the device has neither a render node nor a virgl
renderer."
    )]
    print_capabilities: bool,

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

    /// Size of the host-visible shared memory region, in bytes (K, M, G suffixes).
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "8G",
        long_help = "\
Size of the host-visible shared memory region the device offers the VMM, in bytes,
with an optional K, M or G suffix (binary units: 8G is 8 GiB). It must be a non-zero
multiple of the host page size. The VMM reserves this much guest physical address
space; nothing is allocated up front.
Example: --shm-size 4G"
    )]
    shm_size: String,

    /// Confine the daemon after start-up: on (default), or none to debug.
    #[arg(
        long,
        value_name = "MODE",
        default_value = "on",
        long_help = "\
Whether the daemon confines itself once its vhost-user socket is open: on (the
default) or none. On: a seccomp filter allows only the system calls the daemon
needs (see --seccomp); Landlock, where the kernel has it, denies all file-system
access except removing files in the directory of --socket-path (the socket, at
shutdown); no new privileges; every capability dropped (a daemon started as root
keeps uid 0 but loses CAP_DAC_OVERRIDE: run it as the user who owns the channel
sockets); and channel sockets are connected by a small broker process, by channel
type, so the daemon itself cannot connect to any socket. none: no confinement at
all, for debugging only.
Example: --sandbox none"
    )]
    sandbox: String,

    /// What a system call outside the allow-list does: kill (default) or log.
    #[arg(
        long,
        value_name = "ACTION",
        long_help = "\
What happens when the sandboxed daemon makes a system call outside its seccomp
allow-list: kill (the default; the kernel kills the process with SIGSYS) or log (the
kernel logs the call, audit type 1326 in dmesg or the audit log, and lets it run),
to find calls missing from the list. Ignored with --sandbox none.
Example: --seccomp log"
    )]
    seccomp: Option<String>,
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

  Serve one connection that libvirt (or another manager) already opened, then exit:
    vhost-user-cross-domain --fd 3 --channel wayland:$XDG_RUNTIME_DIR/wayland-0

  Under systemd socket activation no socket option is given; the socket unit's socket
  arrives as fd 3 (LISTEN_FDS=1) and the daemon keeps accepting after each VMM:
    systemctl start vhost-user-cross-domain@vm1.socket

Environment: RUST_LOG selects the log level (default: info), for example RUST_LOG=debug.
LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES pass a socket-activated socket; NOTIFY_SOCKET
receives READY=1 once the daemon accepts connections and STOPPING=1 on shutdown.
Signals: SIGTERM or SIGINT completes pending fences, closes the channels and exits 0.
Sandbox: on by default (seccomp, Landlock, no capabilities, a connection broker);
--sandbox none turns it off, --seccomp log logs calls outside the allow-list instead
of killing the daemon. See docs/security.md.
Exit status: 0 clean stop, 1 runtime failure (the sandbox could not be set up, among
others), 2 invalid command line or configuration.";

fn main() -> ExitCode {
    // The backend-program convention: --print-capabilities answers whatever else is given.
    if wants_capabilities(std::env::args_os().skip(1)) {
        println!("{CAPABILITIES}");
        return ExitCode::SUCCESS;
    }
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
    if config.sandbox == SandboxMode::None && args.seccomp.is_some() {
        warn!("--seccomp has no effect with --sandbox none");
    }

    match vhost_user_cross_domain::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{}", error_chain(&e));
            ExitCode::from(EXIT_RUNTIME_FAILURE)
        }
    }
}

/// True if `--print-capabilities` is among the arguments (before a `--`).
fn wants_capabilities(args: impl Iterator<Item = OsString>) -> bool {
    args.take_while(|a| a != "--")
        .any(|a| a == "--print-capabilities")
}

fn config_from_args(args: &Args) -> Result<Config, ConfigError> {
    let listen = listen_from_args(args)?;
    let mut channels = ChannelTable::new();
    for spec in &args.channels {
        channels.add_channel_arg(spec)?;
    }
    if let Some(path) = &args.wayland_sock {
        channels.add_wayland_sock_arg(Path::new(path))?;
    }
    let num_scanouts = parse_scanouts(&args.scanouts)?;
    let shm_size = parse_shm_size(&args.shm_size)?;
    let sandbox = parse_sandbox(&args.sandbox)?;
    let seccomp = match &args.seccomp {
        Some(value) => parse_seccomp(value)?,
        None => SeccompMode::default(),
    };
    Ok(Config {
        listen,
        channels,
        num_scanouts,
        shm_size,
        sandbox,
        seccomp,
    })
}

/// Exactly one of `--socket-path`, `--fd` and socket activation.
fn listen_from_args(args: &Args) -> Result<Listen, ConfigError> {
    let mut candidates = Vec::new();
    if let Some(path) = &args.socket_path {
        let path = parse_socket_path(Path::new(path))?;
        candidates.push(("--socket-path", Listen::Path(path)));
    }
    if let Some(value) = &args.fd {
        let fd = parse_fd(value)?;
        match inherited::inspect(fd) {
            Ok(SocketKind::Connected) => {}
            Ok(SocketKind::Listening) => return Err(unusable_fd(value, FdError::Listening)),
            Err(e) => return Err(unusable_fd(value, e)),
        }
        // SAFETY: `fd` is open (just inspected) and was handed to the daemon by number on the
        // command line; nothing in this process owns it, and this is the only place that takes
        // it.
        let owned = unsafe { inherited::take(fd) };
        candidates.push((
            "--fd",
            Listen::Connected {
                fd: Arc::new(owned),
                origin: format!("--fd {fd}"),
            },
        ));
    }
    match systemd::activation() {
        Ok(None) => {}
        Ok(Some(activation)) => candidates.push((ACTIVATION_SOURCE, activated(activation)?)),
        // Variables that are not meant for this process (an inherited environment) must not
        // stop a daemon given its socket on the command line.
        Err(e) if !candidates.is_empty() => warn!("ignoring the socket-activation variables: {e}"),
        Err(e) => {
            return Err(ConfigError::Activation {
                reason: e.to_string(),
            })
        }
    }
    select_listen(candidates)
}

/// The socket passed by socket activation: a listening one (`Accept=no`, the normal case) or
/// one connection (`Accept=yes`).
fn activated(activation: systemd::Activation) -> Result<Listen, ConfigError> {
    let systemd::Activation { fd, name } = activation;
    let kind = inherited::inspect(fd).map_err(|e| ConfigError::Activation {
        reason: format!("fd {fd} ('{name}') is {e}"),
    })?;
    // SAFETY: the service manager passed `fd` (checked open just now) to this process for the
    // daemon's use; nothing else in the process owns it, and this is the only place that takes
    // it.
    let owned = Arc::new(unsafe { inherited::take(fd) });
    Ok(match kind {
        SocketKind::Listening => Listen::Listener { fd: owned, name },
        SocketKind::Connected => Listen::Connected {
            fd: owned,
            origin: format!("socket activation (fd {fd}, '{name}')"),
        },
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
