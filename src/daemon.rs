//! The serve loop: listen on the vhost-user socket, serve one VMM at a time, and after the
//! VMM disconnects drop all device state and listen again. The process lives as long as its
//! service unit; one process serves one VM.

use std::sync::Arc;

use log::{error, info};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::config::Config;
use crate::device::{Backend, HOST_EVENT, SHUTDOWN_EVENT};

/// Errors that end the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: String,
        source: vhost::vhost_user::Error,
    },
    /// Device state could not be set up.
    #[error("cannot create the device: {0}")]
    Device(std::io::Error),
    /// The vhost-user library failed outside a single session.
    #[error("vhost-user: {0}")]
    VhostUser(vhost_user_backend::Error),
}

/// Serve VMM connections on the configured socket, one after another, until a fatal error.
pub fn run(config: &Config) -> Result<(), Error> {
    let mut listener =
        Listener::new(&config.socket_path, true).map_err(|source| Error::Listen {
            path: config.socket_path.display().to_string(),
            source,
        })?;
    info!(
        "listening on {} for the VMM's vhost-user connection",
        config.socket_path.display()
    );
    let mut session = 0u64;
    loop {
        session += 1;
        let backend = Arc::new(Backend::new(config).map_err(Error::Device)?);
        let mut daemon = VhostUserDaemon::new(
            "vhost-user-cross-domain".to_string(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(Error::VhostUser)?;
        let handlers = daemon.get_epoll_handlers();
        for h in &handlers {
            h.register_listener(backend.host_epoll_fd(), EventSet::IN, u64::from(HOST_EVENT))
                .map_err(Error::Device)?;
            h.register_listener(
                backend.shutdown_fd(),
                EventSet::IN,
                u64::from(SHUTDOWN_EVENT),
            )
            .map_err(Error::Device)?;
        }
        daemon.start(&mut listener).map_err(Error::VhostUser)?;
        info!("session {session}: VMM connected");
        match daemon.wait() {
            Ok(()) => info!("session {session}: VMM disconnected"),
            Err(e) => error!("session {session}: ended with an error: {e}"),
        }
        for h in &handlers {
            h.send_exit_event();
        }
        backend.reset();
        drop(daemon);
        info!("session {session}: device state cleared; waiting for the next VMM");
    }
}
