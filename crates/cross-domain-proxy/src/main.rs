//! `cross-domain-proxy`: run inside a guest, it listens on a Unix socket and connects every
//! client to the host service behind one cross-domain channel of the virtio-gpu device.
//!
//! ```sh
//! cross-domain-proxy --channel 2 --listen /run/portal.sock
//! ```
//!
//! Under systemd socket activation `--listen` is left out: the socket unit's socket arrives as
//! descriptor 3. See `docs/guest-proxy.md`.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use cross_domain_protocol::{channel_name, parse_channel_type};
use cross_domain_proxy::activation;
use cross_domain_proxy::kernel::node;
use cross_domain_proxy::{self as proxy, KernelDevice, ProxyConfig};
use log::{info, warn};

/// Connects clients of a guest Unix socket to a host service through a virtio-gpu
/// cross-domain channel. Runs inside the guest.
#[derive(Debug, Parser)]
#[command(name = "cross-domain-proxy", version)]
struct Args {
    /// Channel type: decimal, 0x hexadecimal, or a name (wayland, camera, pipewire, x11,
    /// dbus-session, dbus-system). The host must serve it (`--channel TYPE:PATH`).
    #[arg(long, value_name = "TYPE", value_parser = parse_type)]
    channel: u32,

    /// Unix socket to listen on for clients. Leave it out under socket activation, which
    /// passes the socket (LISTEN_FDS).
    #[arg(long, value_name = "PATH")]
    listen: Option<PathBuf>,

    /// The virtio-gpu DRM node [default: the first /dev/dri/renderD* driven by virtio_gpu].
    #[arg(long, value_name = "PATH")]
    device: Option<PathBuf>,

    /// Where to look for render nodes without --device (tests point it elsewhere).
    #[arg(long, value_name = "DIR", default_value = node::DRI_DIR, hide = true)]
    dri_dir: PathBuf,

    /// Do not require the channel in the capset's supported_channels mask (needed for types
    /// 32 and above, which the mask cannot carry).
    #[arg(long)]
    skip_capset_check: bool,
}

/// Exit status of a usage error (as clap's own).
const USAGE: u8 = 2;

/// The message names the flag, as the daemon's `--channel` errors do.
fn parse_type(s: &str) -> Result<u32, String> {
    parse_channel_type(s).map_err(|e| format!("--channel '{s}': {e}"))
}

/// Binds `path`, replacing a stale socket file that nobody listens on.
fn bind(path: &Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            match UnixStream::connect(path) {
                Err(c) if c.kind() == io::ErrorKind::ConnectionRefused => {
                    warn!("removing stale socket {}", path.display());
                    std::fs::remove_file(path)?;
                    UnixListener::bind(path)
                }
                // Someone is listening, or it is not a socket: leave it alone.
                _ => Err(e),
            }
        }
        r => r,
    }
}

/// Where clients connect: the socket passed by socket activation, or `--listen`.
enum Listen {
    Activated(activation::Activated),
    Path(PathBuf),
}

/// Exactly one of `--listen` and socket activation.
fn listen_source(listen: Option<PathBuf>) -> Result<Listen, String> {
    let activated = activation::listener().map_err(|e| e.to_string())?;
    match (listen, activated) {
        (None, Some(a)) => Ok(Listen::Activated(a)),
        (Some(path), None) => Ok(Listen::Path(path)),
        (Some(path), Some(_)) => Err(format!(
            "--listen {} and socket activation (LISTEN_FDS) both give the socket: use one",
            path.display()
        )),
        (None, None) => Err(
            "no socket to listen on: give --listen PATH, or start the proxy by socket \
             activation (a socket unit, docs/guest-proxy.md)"
                .to_string(),
        ),
    }
}

/// The render node: `--device`, or the first virtio-gpu one in the DRI directory.
fn open_device(args: &Args) -> Result<(PathBuf, KernelDevice), node::NodeError> {
    match &args.device {
        Some(path) => node::open(path).map(|dev| (path.clone(), dev)),
        None => node::find(&args.dri_dir),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = ProxyConfig {
        channel_type: args.channel,
        skip_capset_check: args.skip_capset_check,
    };
    let name = channel_name(args.channel)
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();

    let listen = match listen_source(args.listen.clone()) {
        Ok(listen) => listen,
        Err(e) => {
            eprintln!("cross-domain-proxy: error: {e}");
            return ExitCode::from(USAGE);
        }
    };
    if let Listen::Activated(a) = &listen {
        info!("socket activation: listening socket {}", a.name());
    }

    // Check the device once up front, so a wrong setup fails now rather than per client.
    let (device, mut dev) = match open_device(&args) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("cross-domain-proxy: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let info = match proxy::probe(&mut dev, &config) {
        Ok(info) => info,
        Err(e) => {
            eprintln!("cross-domain-proxy: error: {}: {e}", device.display());
            return ExitCode::FAILURE;
        }
    };
    drop(dev);
    if !info.host_visible {
        warn!(
            "{}: no host-visible memory region: memory file descriptors cannot cross",
            device.display()
        );
    }
    let (listener, listening) = match listen {
        Listen::Activated(a) => {
            let name = a.name();
            (a.listener, name)
        }
        Listen::Path(path) => match bind(&path) {
            Ok(l) => (l, path.display().to_string()),
            Err(e) => {
                eprintln!(
                    "cross-domain-proxy: error: cannot listen on {}: {e}",
                    path.display()
                );
                return ExitCode::FAILURE;
            }
        },
    };
    info!(
        "listening on {listening} for channel {:#x}{name} through {} (host channels {:#x})",
        args.channel,
        device.display(),
        info.capabilities.supported_channels
    );
    proxy::serve(listener, config, move || KernelDevice::open(&device))
}
