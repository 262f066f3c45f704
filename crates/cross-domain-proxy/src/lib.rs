//! `cross-domain-proxy`: the guest-side endpoint of a cross-domain channel.
//!
//! It runs inside the guest, listens on a Unix socket, and gives every client that connects its
//! own cross-domain context (its own DRM file) on the channel type it was started with. Bytes
//! and file descriptors then flow between the client and the host service the daemon connects
//! that context to; see `docs/guest-proxy.md` for what crosses and how.
//!
//! Module map:
//! - [`device`]: the [`VirtGpuDevice`] trait — the dozen DRM operations the proxy needs — and
//!   its argument types. The session logic only talks to this trait.
//! - [`kernel`]: [`KernelDevice`], the trait on a real virtio-gpu render node: the ioctl
//!   wrappers, with the kernel's structs and numbers ([`kernel::uapi`]), blob mappings
//!   ([`kernel::mapping`]), DRM event parsing ([`kernel::events`]) and `SCM_RIGHTS` reception
//!   ([`kernel::recv`]), and finding the render node at start-up ([`kernel::node`]). The
//!   proxy's `unsafe` code is here, apart from adopting a socket-activated descriptor.
//! - [`activation`]: the listening socket systemd passes (socket activation).
//! - [`wire`]: the cross-domain commands the guest writes and the ring messages it reads.
//! - [`session`]: one client: context setup (feature and capset checks, CONTEXT_INIT, rings,
//!   INIT) and the forwarding loop, with each direction, the relayed pipes, the eventfds, the
//!   blobs and the sockets the host passes (each a nested session) in files of their own.
//!
//! [`serve`] accepts clients and runs each session on its own thread, so one client's failure
//! (or its slowness) never affects another.
//!
//! This crate shares only the wire formats with the daemon (the `cross-domain-protocol`
//! crate): it must never depend on the daemon's package, so that none of its configuration,
//! sandbox or vhost-user code ends up in the guest binary.

pub mod activation;
pub mod device;
pub mod kernel;
pub mod session;
pub mod wire;

use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use log::{error, info};

pub use device::{BlobMapping, DeviceError, VirtGpuDevice};
pub use kernel::KernelDevice;
pub use session::{
    probe, ClientId, DeviceInfo, End, ProxyConfig, Session, SessionError, SocketError, Stats,
};

/// Accepts clients on `listener` forever; each gets a thread that opens a device with `open`
/// and runs a [`Session`] (and each socket the host passes to a client gets another thread and
/// device, see [`Session::pass_sockets`]). Errors are logged, per client.
pub fn serve<F, D>(listener: UnixListener, config: ProxyConfig, open: F) -> !
where
    F: Fn() -> Result<D, DeviceError> + Send + Sync + 'static,
    D: VirtGpuDevice + 'static,
{
    let open = Arc::new(open);
    let mut next_id: u64 = 0;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                next_id += 1;
                let id = next_id;
                let open = open.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("client-{id}"))
                    .spawn(move || handle_client(id, config, stream, open));
                if let Err(e) = spawned {
                    error!("client {id}: cannot start a thread: {e}; connection closed");
                }
            }
            Err(e) => {
                error!("accept: {e}");
                // Out of descriptors or memory: give the running sessions a moment.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Runs one client's session to its end and logs the outcome; `open` also serves the sessions
/// of the sockets the host passes to the client.
pub fn handle_client<F, D>(id: u64, config: ProxyConfig, stream: UnixStream, open: Arc<F>)
where
    F: Fn() -> Result<D, DeviceError> + Send + Sync + 'static,
    D: VirtGpuDevice + 'static,
{
    let dev = match open() {
        Ok(dev) => dev,
        Err(e) => {
            error!("client {id}: cannot open the virtio-gpu device: {e}; connection closed");
            return;
        }
    };
    let mut session = match Session::open(id, config, dev, stream) {
        Ok(s) => s,
        Err(e) => {
            error!("client {id}: cannot set up a cross-domain context: {e}; connection closed");
            return;
        }
    };
    session.pass_sockets(open);
    info!(
        "client {id}: connected to channel {:#x}",
        config.channel_type
    );
    report(id, session.run());
}

/// Logs how a session (a client's, or a passed socket's) ended, with its traffic.
fn report(id: impl std::fmt::Display, (result, stats): (Result<End, SessionError>, Stats)) {
    let traffic = format!(
        "{} bytes and {} fds to the host, {} bytes and {} fds ({} sockets) to the client, {} \
         fds refused, {} eventfd wake-ups to the host and {} to the client",
        stats.bytes_to_host,
        stats.fds_to_host,
        stats.bytes_to_client,
        stats.fds_to_client,
        stats.sockets_to_client,
        stats.fds_refused,
        stats.wakeups_to_host,
        stats.wakeups_to_client
    );
    match result {
        Ok(End::ClientClosed) => info!("client {id}: closed by the client ({traffic})"),
        Ok(End::HostClosed) => info!("client {id}: closed by the host service ({traffic})"),
        Err(e) => error!("client {id}: {e}; connection closed ({traffic})"),
    }
}
