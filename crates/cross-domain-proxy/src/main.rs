//! `cross-domain-proxy`: run inside a guest, it listens on a Unix socket and connects every
//! client to the host service behind one cross-domain channel of the virtio-gpu device.
//!
//! ```sh
//! cross-domain-proxy --channel 2 --listen /run/portal.sock
//! ```
//!
//! See `docs/guest-proxy.md`.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use cross_domain_protocol::{channel_name, parse_channel_type};
use cross_domain_proxy::{self as proxy, KernelDevice, ProxyConfig};
use log::{info, warn};

/// Connects clients of a guest Unix socket to a host service through a virtio-gpu
/// cross-domain channel.
#[derive(Debug, Parser)]
#[command(name = "cross-domain-proxy", version)]
struct Args {
    /// Channel type: decimal, 0x hexadecimal, or a name (wayland, camera, pipewire, x11,
    /// dbus-session, dbus-system). The host must serve it (`--channel TYPE:PATH`).
    #[arg(long, value_name = "TYPE", value_parser = parse_type)]
    channel: u32,

    /// Unix socket to listen on for clients.
    #[arg(long, value_name = "PATH")]
    listen: PathBuf,

    /// The virtio-gpu DRM node.
    #[arg(long, value_name = "PATH", default_value = "/dev/dri/renderD128")]
    device: PathBuf,

    /// Do not require the channel in the capset's supported_channels mask (needed for types
    /// 32 and above, which the mask cannot carry).
    #[arg(long)]
    skip_capset_check: bool,
}

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

    // Check the device once up front, so a wrong setup fails now rather than per client.
    let info = match KernelDevice::open(&args.device)
        .map_err(proxy::SessionError::from)
        .and_then(|mut dev| proxy::probe(&mut dev, &config))
    {
        Ok(info) => info,
        Err(e) => {
            eprintln!("cross-domain-proxy: error: {}: {e}", args.device.display());
            return ExitCode::FAILURE;
        }
    };
    if !info.host_visible {
        warn!(
            "{}: no host-visible memory region: memory file descriptors cannot cross",
            args.device.display()
        );
    }
    let listener = match bind(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "cross-domain-proxy: error: cannot listen on {}: {e}",
                args.listen.display()
            );
            return ExitCode::FAILURE;
        }
    };
    info!(
        "listening on {} for channel {:#x}{name} through {} (host channels {:#x})",
        args.listen.display(),
        args.channel,
        args.device.display(),
        info.capabilities.supported_channels
    );
    let device = args.device;
    proxy::serve(listener, config, move || KernelDevice::open(&device))
}
