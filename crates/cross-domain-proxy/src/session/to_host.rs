//! Client → host: what the client writes becomes SENDs, and the descriptors it passes become
//! identifiers.
//!
//! This module owns reading the client socket (its end of file and hang-up) and the
//! classification of a client's descriptor: a pipe goes to [`super::pipes`], a regular file or
//! memfd and a dma-buf to [`super::blobs`], anything else is refused. A refused descriptor is
//! closed and logged, and the message's bytes are still sent: the module must never drop a
//! client's bytes because of a descriptor.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use log::{debug, warn};
use nix::poll::PollFlags;
use nix::sys::stat::{fstat, SFlag};

use super::{Refusal, Session, SessionError};
use crate::device::VirtGpuDevice;
use crate::kernel::{recv_with_fds, MAX_FDS};
use crate::wire::{self, Identifier};

impl<D: VirtGpuDevice> Session<D> {
    /// The client socket is ready: flush a pending RECEIVE, read one message (or its end of
    /// file), notice a hang-up.
    pub(super) fn on_client(&mut self, ev: PollFlags) -> Result<(), SessionError> {
        if ev.contains(PollFlags::POLLOUT) {
            self.flush_to_client();
        }
        let hup = ev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL);
        if ev.contains(PollFlags::POLLIN) && !self.client_eof && !self.host_closed {
            let mut buf = vec![0u8; wire::MAX_SEND_DATA];
            match recv_with_fds(self.client.as_fd(), &mut buf) {
                Ok(r) if r.len == 0 && r.fds.is_empty() => {
                    self.client_eof = true;
                    if hup {
                        self.client_gone = true;
                    } else {
                        debug!("client {}: shut down its sending side", self.client_id);
                    }
                    return Ok(());
                }
                Ok(r) => {
                    if r.fds_truncated {
                        // The kernel closed the ones past MAX_FDS: the message cannot be
                        // passed whole.
                        self.stats.fds_refused += 1;
                        return Err(SessionError::FdRefused {
                            to: "host",
                            what: format!("a message with more than {MAX_FDS} descriptors"),
                            reason: "one message crosses with at most that many (the channel \
                                     protocol's limit), and the kernel dropped the rest"
                                .to_owned(),
                        });
                    }
                    buf.truncate(r.len);
                    return self.forward_to_host(&buf, r.fds);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
                Err(e) => {
                    debug!("client {}: receive failed: {e}", self.client_id);
                    self.client_eof = true;
                    self.client_gone = true;
                    return Ok(());
                }
            }
        }
        if hup {
            // Closed in both directions (or broken): nothing more can be read or written.
            self.client_eof = true;
            self.client_gone = true;
        }
        Ok(())
    }

    /// One SEND of `data` with the identifiers `fds` become. A descriptor that cannot cross
    /// ends the session (the client's connection is closed): the host never gets the message
    /// without it.
    fn forward_to_host(&mut self, data: &[u8], fds: Vec<OwnedFd>) -> Result<(), SessionError> {
        if data.is_empty() {
            self.stats.fds_refused += fds.len() as u64;
            warn!(
                "client {}: dropping {} descriptors that came without data",
                self.client_id,
                fds.len()
            );
            return Ok(());
        }
        let mut ids = Vec::with_capacity(fds.len());
        let mut close_after = Vec::new();
        for (n, fd) in fds.into_iter().enumerate() {
            match self.client_fd(fd, &mut close_after) {
                Ok(ident) => ids.push(ident),
                Err(e) => {
                    self.stats.fds_refused += 1;
                    for bo in close_after {
                        self.close_bo(bo);
                    }
                    return Err(SessionError::FdRefused {
                        to: "host",
                        what: format!("the client's descriptor {n} of the message"),
                        reason: e.to_string(),
                    });
                }
            }
        }
        let cmd = wire::send(&ids, data).map_err(SessionError::Encode)?;
        let r = self.dev.execbuffer(&cmd, None, &[]);
        for bo in close_after {
            self.close_bo(bo);
        }
        r?;
        self.stats.bytes_to_host += data.len() as u64;
        self.stats.fds_to_host += ids.len() as u64;
        Ok(())
    }

    /// Turns one descriptor from the client into an identifier; GEM handles to close after
    /// the SEND go into `close_after`.
    fn client_fd(
        &mut self,
        fd: OwnedFd,
        close_after: &mut Vec<u32>,
    ) -> Result<Identifier, Refusal> {
        let st = fstat(&fd).map_err(io::Error::from)?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFIFO {
            return self.client_pipe(fd);
        }
        if kind == SFlag::S_IFREG {
            let len = u64::try_from(st.st_size).unwrap_or(0);
            return self.client_file(fd.as_fd(), len, close_after);
        }
        if kind == SFlag::S_IFSOCK {
            return Err(Refusal::Kind("a socket (only pipes and memory can cross)"));
        }
        self.client_dmabuf(fd.as_fd(), close_after)
    }
}
