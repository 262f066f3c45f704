//! The pipes the session relays, in both directions.
//!
//! Client to host: a pipe write end the client passes becomes a READ_PIPE identifier; the host
//! gives its service the write end of a pipe of its own, and what the service writes comes back
//! as READ messages that this module writes into the client's pipe ([`ClientPipe`]). Host to
//! client: a WRITE_PIPE identifier becomes a local pipe whose write end the client gets and
//! whose read end this module forwards with WRITE.
//!
//! This module owns both pipe tables and their hang-ups. It must never block on a client's
//! pipe (it writes only what `poll` said fits, and the client may have left the pipe blocking)
//! and never hold more than one READ per pipe: the next POLL waits until it is written.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;

use log::{debug, warn};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::PollFlags;

use super::{Refusal, Session, SessionError};
use crate::device::VirtGpuDevice;
use crate::wire::{self, Identifier};
use cross_domain_protocol::wire::{ID_TYPE_READ_PIPE, READ_PIPE_ID_BASE};

/// A pipe write end the client passed (READ_PIPE): host data goes into it.
pub(super) struct ClientPipe {
    pub(super) fd: OwnedFd,
    /// READ data not yet written into the pipe.
    pub(super) pending: Vec<u8>,
    written: usize,
    /// Close after `pending` is written.
    hang_up: bool,
}

impl<D: VirtGpuDevice> Session<D> {
    /// A pipe from the client (client → host): a write end becomes a READ_PIPE identifier
    /// whose READs this session writes into it. A read end cannot cross.
    pub(super) fn client_pipe(&mut self, fd: OwnedFd) -> Result<Identifier, Refusal> {
        let fl = fcntl(&fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
        if OFlag::from_bits_truncate(fl) & OFlag::O_ACCMODE != OFlag::O_WRONLY {
            return Err(Refusal::Kind(
                "a pipe read end (only write ends, which the host writes into, can cross)",
            ));
        }
        let id = self.read_pipe_ids.next_id();
        self.client_pipes.insert(
            id,
            ClientPipe {
                fd,
                pending: Vec::new(),
                written: 0,
                hang_up: false,
            },
        );
        Ok(Identifier {
            id,
            kind: ID_TYPE_READ_PIPE,
            size: 0,
        })
    }

    /// A READ from the host: data (and perhaps the hang-up) for a client pipe.
    pub(super) fn on_read(&mut self, id: u32, hang_up: bool, data: Vec<u8>) {
        match self.client_pipes.get_mut(&id) {
            Some(p) => {
                self.stats.bytes_to_client += data.len() as u64;
                p.pending = data;
                p.written = 0;
                p.hang_up = hang_up;
                if hang_up && p.pending.is_empty() {
                    self.client_pipes.remove(&id);
                }
            }
            None if self.dropped_pipes.contains(&id) => {
                if hang_up {
                    self.dropped_pipes.remove(&id);
                }
            }
            // Below the read-pipe ids only eventfds produce READs: one the proxy released may
            // still have had a READ on its way.
            None if id <= READ_PIPE_ID_BASE => debug!(
                "client {}: READ for released eventfd {id:#x} dropped",
                self.client_id
            ),
            None => warn!(
                "client {}: READ for unknown pipe {id:#x} ({} bytes) dropped",
                self.client_id,
                data.len()
            ),
        }
    }

    /// A client pipe (READ_PIPE target) is writable or its reader went away.
    pub(super) fn on_client_pipe(&mut self, id: u32, ev: PollFlags) {
        let Some(p) = self.client_pipes.get_mut(&id) else {
            return;
        };
        if ev.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL) {
            debug!(
                "client {}: the reader of pipe {id:#x} went away",
                self.client_id
            );
            self.drop_client_pipe(id);
            return;
        }
        if !ev.contains(PollFlags::POLLOUT) {
            return;
        }
        // POLLOUT means the pipe has a free buffer, which takes one write of up to a page
        // without blocking even if the client left the pipe blocking (READ data is smaller).
        let end = (p.written + 4096).min(p.pending.len());
        match nix::unistd::write(&p.fd, &p.pending[p.written..end]) {
            Ok(n) => p.written += n,
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => return,
            Err(e) => {
                debug!("client {}: writing pipe {id:#x}: {e}", self.client_id);
                self.drop_client_pipe(id);
                return;
            }
        }
        if p.written >= p.pending.len() {
            p.pending.clear();
            p.written = 0;
            if p.hang_up {
                self.client_pipes.remove(&id);
            }
        }
    }

    /// Closes a client pipe before the host hung up on it.
    fn drop_client_pipe(&mut self, id: u32) {
        if let Some(p) = self.client_pipes.remove(&id) {
            if !p.hang_up {
                self.dropped_pipes.insert(id);
            }
        }
    }

    /// A host pipe write end: the client gets the write end of a local pipe, the proxy reads
    /// the other end and forwards it with WRITE.
    pub(super) fn host_write_pipe(&mut self, id: u32) -> Result<OwnedFd, Refusal> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
        if let Some(old) = self.host_pipes.insert(id, r) {
            warn!(
                "client {}: the host reused pipe id {id:#x}; closing the older pipe",
                self.client_id
            );
            drop(old);
        }
        self.stats.fds_to_client += 1;
        Ok(w)
    }

    /// A relayed host pipe (WRITE_PIPE source) is readable: one WRITE of what the client wrote,
    /// or the hang-up at end of file.
    pub(super) fn on_host_pipe(&mut self, id: u32) -> Result<(), SessionError> {
        let Some(fd) = self.host_pipes.get(&id) else {
            return Ok(());
        };
        let mut buf = vec![0u8; wire::MAX_WRITE_DATA];
        let (data, hang_up) = match nix::unistd::read(fd, &mut buf) {
            Ok(0) => (&buf[..0], true),
            Ok(n) => (&buf[..n], false),
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return Ok(()),
            Err(e) => {
                warn!(
                    "client {}: reading the pipe for host pipe {id:#x}: {e}",
                    self.client_id
                );
                (&buf[..0], true)
            }
        };
        let cmd = wire::write(id, data, hang_up).map_err(SessionError::Encode)?;
        self.dev.execbuffer(&cmd, None, &[])?;
        self.stats.bytes_to_host += data.len() as u64;
        if hang_up {
            self.host_pipes.remove(&id);
        }
        Ok(())
    }
}
