//! Host → client: the DRM file's fence events, the channel-ring message each POLL returns, and
//! a RECEIVE's bytes and descriptors on their way to the client socket.
//!
//! This module owns [`Outgoing`], the one RECEIVE in flight to the client, and decides what each
//! channel message means (data, the host's hang-up, a pipe's or an eventfd's READ, or nothing).
//! It must never buffer more than that one message: the next POLL waits until it is handed on,
//! which is how a slow client holds the host back. Host identifiers become client descriptors in
//! [`super::blobs`] (memory), [`super::pipes`] (pipes), [`super::eventfds`] (eventfds) and
//! [`super::sockets`] (sockets, whose failure ends the session rather than drop one).
#![forbid(unsafe_code)]

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use log::{debug, info, warn};
use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use super::{Refusal, Session, SessionError};
use crate::device::{BlobMapping, DeviceError, VirtGpuDevice, EVENT_FENCE_SIGNALED};
use crate::wire::{self, ChannelMessage, Identifier};
use cross_domain_protocol::wire::{ID_TYPE_SOCKET, ID_TYPE_VIRTGPU_BLOB, ID_TYPE_WRITE_PIPE};

/// A RECEIVE on its way to the client.
pub(super) struct Outgoing {
    data: Vec<u8>,
    /// Sent with the first byte, then dropped.
    fds: Vec<OwnedFd>,
    sent: usize,
}

impl<D: VirtGpuDevice> Session<D> {
    /// The DRM file is readable: each fence event of the outstanding POLL means a message in
    /// the channel ring.
    pub(super) fn on_drm(&mut self, ev: PollFlags) -> Result<(), SessionError> {
        if ev.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL) {
            return Err(DeviceError::new(
                "poll (DRM file)",
                io::Error::other(format!("unexpected events {ev:?}")),
            )
            .into());
        }
        let mut events = Vec::new();
        self.dev.read_events(&mut events)?;
        for ty in events {
            if ty != EVENT_FENCE_SIGNALED {
                debug!("client {}: ignoring DRM event {ty:#x}", self.client_id);
                continue;
            }
            if !self.poll_pending {
                debug!("client {}: fence event without a POLL", self.client_id);
                continue;
            }
            self.poll_pending = false;
            self.on_channel_message()?;
        }
        Ok(())
    }

    /// Copies the message out of the channel ring (the host may overwrite it after the next
    /// POLL) and hands it on.
    fn on_channel_message(&mut self) -> Result<(), SessionError> {
        // The header first, then only as much of the ring as the message takes: a large ring
        // is 1 MiB, and most messages are small.
        let ring_len = self.channel.map.len();
        let mut ring = vec![0u8; wire::SEND_HEADER.min(ring_len)];
        self.channel.map.read(0, &mut ring)?;
        let len = wire::message_len(&ring, ring_len);
        if len > ring.len() {
            let head = ring.len();
            ring.resize(len, 0);
            self.channel.map.read(head, &mut ring[head..])?;
        }
        match wire::decode_channel(&ring)? {
            ChannelMessage::Nothing => {
                return Err(SessionError::PollWithoutMessage(self.cfg.channel_type))
            }
            ChannelMessage::Receive { ids, data } if ids.is_empty() && data.is_empty() => {
                info!(
                    "client {}: the host service closed the channel",
                    self.client_id
                );
                self.host_closed = true;
            }
            ChannelMessage::Receive { ids, data } => self.on_receive(&ids, data)?,
            ChannelMessage::Read { id, hang_up, data } if self.eventfds.contains_key(&id) => {
                self.on_eventfd_read(id, hang_up, &data)?
            }
            ChannelMessage::Read { id, hang_up, data } => self.on_read(id, hang_up, data),
            ChannelMessage::Other(cmd) => warn!(
                "client {}: ignoring channel message with command {cmd}",
                self.client_id
            ),
        }
        Ok(())
    }

    /// A RECEIVE: its identifiers become descriptors, and bytes and descriptors go to the
    /// client together. A socket that cannot be passed ends the session (the client is hung
    /// up): a socket is what D-Bus and PipeWire clients count on by position, so the message
    /// must not arrive without it.
    fn on_receive(&mut self, ids: &[Identifier], data: Vec<u8>) -> Result<(), SessionError> {
        if self.client_gone {
            debug!(
                "client {}: dropping {} bytes from the host: the client is gone",
                self.client_id,
                data.len()
            );
            return Ok(());
        }
        let mut fds = Vec::with_capacity(ids.len());
        for ident in ids {
            if ident.kind == ID_TYPE_SOCKET {
                let fd = self
                    .host_socket(ident)
                    .map_err(|source| SessionError::Socket {
                        id: ident.id,
                        source,
                    })?;
                fds.push(fd);
                continue;
            }
            let r = match ident.kind {
                ID_TYPE_VIRTGPU_BLOB => self.host_memory(ident),
                ID_TYPE_WRITE_PIPE => self.host_write_pipe(ident.id),
                kind if wire::is_eventfd(kind) => self.host_eventfd(ident.id),
                _ => Err(Refusal::Kind(
                    "an identifier type this proxy does not handle",
                )),
            };
            match r {
                Ok(fd) => fds.push(fd),
                Err(e) => {
                    // Never the message without it: protocols that count descriptors by
                    // position (PipeWire, D-Bus) would take the next one in its place.
                    self.stats.fds_refused += 1;
                    return Err(SessionError::FdRefused {
                        to: "client",
                        what: format!(
                            "host identifier {:#x} (type {}, size {})",
                            ident.id, ident.kind, ident.size
                        ),
                        reason: e.to_string(),
                    });
                }
            }
        }
        if data.is_empty() {
            // A stream socket cannot carry descriptors without a byte; the host never sends
            // this (its stream has the same rule).
            if !fds.is_empty() {
                warn!(
                    "client {}: dropping {} descriptors that came without data",
                    self.client_id,
                    fds.len()
                );
            }
            return Ok(());
        }
        self.to_client = Some(Outgoing { data, fds, sent: 0 });
        self.flush_to_client();
        Ok(())
    }

    /// Sends as much of the pending RECEIVE to the client as its socket takes.
    pub(super) fn flush_to_client(&mut self) {
        let Some(out) = self.to_client.as_mut() else {
            return;
        };
        if self.client_gone {
            self.to_client = None;
            return;
        }
        while out.sent < out.data.len() {
            let raw: Vec<RawFd> = out.fds.iter().map(|f| f.as_raw_fd()).collect();
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
            let iov = [IoSlice::new(&out.data[out.sent..])];
            match sendmsg::<()>(
                self.client.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(n) => {
                    out.sent += n;
                    self.stats.bytes_to_client += n as u64;
                    // The descriptors went with the first byte.
                    out.fds.clear();
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(e) => {
                    debug!("client {}: send failed: {e}", self.client_id);
                    self.client_gone = true;
                    break;
                }
            }
        }
        self.to_client = None;
    }
}
