//! Serving a socket that is already connected to the VMM (`--fd N`, or socket activation with
//! `Accept=yes`): a private listening socket plus a relay that copies vhost-user messages, with
//! their file descriptors, between the VMM's socket and the session served on the private one.
//!
//! Why a relay: `vhost-user-backend` 0.24 serves a session only on a connection it accepts from
//! a `Listener` or opens itself to a path (`VhostUserDaemon::start`, `start_client`); the type
//! that handles requests on a given stream is private to the crate. Rather than re-implement
//! the vhost-user request handling, the daemon runs its normal session on a listening socket
//! that only this process can reach, connects to it, and relays.
//!
//! This module owns:
//! - [`private_connection`]: the private listening socket and the connection to it. The socket
//!   is bound in a fresh directory created with mode 0700 (under `$XDG_RUNTIME_DIR`, else the
//!   temporary directory), connected at once, and its name and directory are removed before
//!   the session starts, so no other process can reach it;
//! - [`Relay`]: two threads, one per direction, that forward whole messages.
//!
//! Framing: a vhost-user message is a 12-byte header {request: u32, flags: u32, size: u32} and
//! `size` bytes of payload; file descriptors travel as `SCM_RIGHTS` attached to the header. The
//! relay reads exactly one header (collecting any descriptors), then exactly `size` payload
//! bytes, and forwards header, payload and descriptors with one `sendmsg`, so descriptors stay
//! attached to the message they came with. A payload above [`MAX_PAYLOAD`] (the vhost crate
//! itself accepts at most 4096 bytes on this socket), a connection that closes inside a
//! message, or more descriptors than one message can carry ends the session.
//!
//! Performance: only control messages cross the relay (memory table, vring setup, features,
//! config space, resets). Guest memory is mapped from descriptors passed in those messages,
//! queue kicks and interrupts are eventfds, and the GPU socket and backend request channel are
//! separate sockets handed over as descriptors, so none of the data path goes through here.

use std::fmt;
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread::{self, JoinHandle};

use cross_domain_fdpass::{self as fdpass, CmsgBuf};
use log::debug;
use nix::errno::Errno;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// Size of a vhost-user message header.
pub const HEADER_SIZE: usize = 12;
/// Largest payload the relay forwards. The vhost crate limits messages on this socket to 4096
/// bytes; the relay is more generous so that it never is the one to refuse a message.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Most descriptors one `SCM_RIGHTS` message can carry on Linux (`SCM_MAX_FD`).
const MAX_FDS: usize = 253;

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Requests from the VMM to the daemon's session.
    ToDaemon,
    /// Replies from the daemon's session to the VMM.
    ToVmm,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::ToDaemon => "VMM to daemon",
            Direction::ToVmm => "daemon to VMM",
        })
    }
}

/// Why the relay ended a session other than by a clean disconnect.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or writing a socket failed.
    #[error("relay {direction}: {source}")]
    Io {
        direction: Direction,
        source: io::Error,
    },
    /// The sender closed the connection inside a message.
    #[error("relay {direction}: the connection closed in the middle of a message")]
    Truncated { direction: Direction },
    /// A header announced a payload above [`MAX_PAYLOAD`].
    #[error(
        "relay {direction}: a message (request {request}) announces {size} bytes of payload, \
         more than the limit of {MAX_PAYLOAD}"
    )]
    TooLarge {
        direction: Direction,
        request: u32,
        size: u32,
    },
    /// More descriptors arrived than one message can carry.
    #[error("relay {direction}: a message carried more file descriptors than fit in one message")]
    TooManyFds { direction: Direction },
    /// A relay thread panicked.
    #[error("relay {direction}: the relay thread panicked")]
    Panicked { direction: Direction },
}

/// A listening socket that only this process can reach, and a connection to it that is
/// waiting to be accepted.
///
/// The caller accepts the connection from the listener (e.g. through `VhostUserDaemon::start`),
/// then drops the listener.
pub fn private_connection() -> io::Result<(UnixListener, UnixStream)> {
    let mut bases: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if dir.is_absolute() {
            bases.push(dir);
        }
    }
    bases.push(std::env::temp_dir());
    bases.push(PathBuf::from("/tmp"));
    let mut last_error = io::Error::other("no directory to create a private socket in");
    for base in bases {
        match private_connection_in(base.join("vhost-user-cross-domain.XXXXXX")) {
            Ok(pair) => return Ok(pair),
            Err(e) => {
                debug!(
                    "cannot create a private socket under {}: {e}",
                    base.display()
                );
                last_error = io::Error::new(
                    e.kind(),
                    format!(
                        "cannot create a private socket under {}: {e}",
                        base.display()
                    ),
                );
            }
        }
    }
    Err(last_error)
}

fn private_connection_in(template: PathBuf) -> io::Result<(UnixListener, UnixStream)> {
    // mkdtemp creates the directory with mode 0700.
    let dir = nix::unistd::mkdtemp(&template).map_err(io::Error::from)?;
    let path = dir.join("s");
    let result = UnixListener::bind(&path).and_then(|listener| {
        // The connection waits in the listen backlog until the session accepts it.
        let stream = UnixStream::connect(&path)?;
        Ok((listener, stream))
    });
    // From here on the socket is reachable only through the two descriptors.
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    result
}

/// The two relay threads of one session.
pub struct Relay {
    to_daemon: JoinHandle<Result<(), RelayError>>,
    to_vmm: JoinHandle<Result<(), RelayError>>,
}

impl Relay {
    /// Starts relaying between `vmm` (the socket connected to the VMM) and `daemon` (the
    /// connection to the private socket whose other end the session serves). When either side
    /// closes, or a message breaks the framing rules, both sockets are shut down, which ends
    /// the session and the other thread.
    pub fn start(vmm: UnixStream, daemon: UnixStream) -> io::Result<Relay> {
        vmm.set_nonblocking(false)?;
        daemon.set_nonblocking(false)?;
        let vmm2 = vmm.try_clone()?;
        let daemon2 = daemon.try_clone()?;
        let cleanup = vmm.try_clone()?;
        let to_daemon = thread::Builder::new()
            .name("relay-to-daemon".into())
            .spawn(move || pump(&vmm, &daemon, Direction::ToDaemon))?;
        let to_vmm = thread::Builder::new()
            .name("relay-to-vmm".into())
            .spawn(move || pump(&daemon2, &vmm2, Direction::ToVmm))
            .inspect_err(|_| {
                // Ends the first thread (it reads end of stream and shuts both sides down).
                let _ = cleanup.shutdown(Shutdown::Both);
            })?;
        Ok(Relay { to_daemon, to_vmm })
    }

    /// Waits for both threads. `Ok` if the session ended by a clean disconnect of either side.
    pub fn join(self) -> Result<(), RelayError> {
        let a = self.to_daemon.join().unwrap_or(Err(RelayError::Panicked {
            direction: Direction::ToDaemon,
        }));
        let b = self.to_vmm.join().unwrap_or(Err(RelayError::Panicked {
            direction: Direction::ToVmm,
        }));
        a.and(b)
    }
}

/// Forwards messages from `from` to `to` until either closes, then shuts both down.
fn pump(from: &UnixStream, to: &UnixStream, direction: Direction) -> Result<(), RelayError> {
    let mut cmsg_buf = CmsgBuf::new(MAX_FDS);
    let mut msg = Vec::with_capacity(HEADER_SIZE + 256);
    let result = loop {
        match forward_one(from, to, direction, &mut msg, &mut cmsg_buf) {
            Ok(true) => {}
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    match &result {
        Ok(()) => debug!("relay {direction}: connection closed"),
        Err(e) => debug!("{e}"),
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    result
}

/// Forwards one message. `Ok(false)` on a clean end of stream before a message.
fn forward_one(
    from: &UnixStream,
    to: &UnixStream,
    direction: Direction,
    msg: &mut Vec<u8>,
    cmsg_buf: &mut CmsgBuf,
) -> Result<bool, RelayError> {
    let io_err = |source: io::Error| RelayError::Io { direction, source };
    let mut fds: Vec<OwnedFd> = Vec::new();
    msg.clear();
    msg.resize(HEADER_SIZE, 0);
    match recv_exact(from, &mut msg[..], &mut fds, cmsg_buf, direction) {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        // A peer that closed with our replies unread looks like a reset; it is still a
        // disconnect between messages.
        Err(RelayError::Io { source, .. }) if source.raw_os_error() == Some(libc::ECONNRESET) => {
            return Ok(false)
        }
        Err(e) => return Err(e),
    }
    let request = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
    let size = u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]);
    if size as usize > MAX_PAYLOAD {
        return Err(RelayError::TooLarge {
            direction,
            request,
            size,
        });
    }
    if size > 0 {
        msg.resize(HEADER_SIZE + size as usize, 0);
        if !recv_exact(from, &mut msg[HEADER_SIZE..], &mut fds, cmsg_buf, direction)? {
            return Err(RelayError::Truncated { direction });
        }
    }
    send_all(to, msg, &fds).map_err(io_err)?;
    Ok(true)
}

/// Fills `buf` from `from`, collecting descriptors into `fds`. `Ok(false)` if the stream ended
/// before the first byte; [`RelayError::Truncated`] if it ended after it.
fn recv_exact(
    from: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    cmsg_buf: &mut CmsgBuf,
    direction: Direction,
) -> Result<bool, RelayError> {
    let mut got = 0;
    while got < buf.len() {
        // Blocking: the relay threads wait for the next message (Relay::start makes both
        // sockets blocking).
        let received = fdpass::recv(
            from.as_fd(),
            &mut buf[got..],
            fds,
            cmsg_buf,
            fdpass::Wait::Block,
        )
        .map_err(|source| RelayError::Io { direction, source })?;
        let n = received.len;
        // The kernel dropping descriptors cannot happen with room for SCM_MAX_FD of them, but
        // if it did, the session ends (the ones that arrived are closed with `fds`).
        if received.fds_truncated {
            return Err(RelayError::TooManyFds { direction });
        }
        if fds.len() > MAX_FDS {
            return Err(RelayError::TooManyFds { direction });
        }
        if n == 0 {
            return if got == 0 {
                Ok(false)
            } else {
                Err(RelayError::Truncated { direction })
            };
        }
        got += n;
    }
    Ok(true)
}

/// Writes all of `msg` to `to`, with `fds` attached to its first byte.
fn send_all(to: &UnixStream, msg: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let with_fds = [ControlMessage::ScmRights(&raw)];
    let mut sent = 0;
    while sent < msg.len() {
        let cmsgs: &[ControlMessage] = if sent == 0 && !raw.is_empty() {
            &with_fds
        } else {
            &[]
        };
        match sendmsg::<()>(
            to.as_raw_fd(),
            &[IoSlice::new(&msg[sent..])],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::io::{IoSliceMut, Read, Write};
    use std::os::fd::FromRawFd;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    fn header(request: u32, flags: u32, size: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&request.to_ne_bytes());
        h.extend_from_slice(&flags.to_ne_bytes());
        h.extend_from_slice(&size.to_ne_bytes());
        h
    }

    /// vmm_end <-> [relay] <-> daemon_end
    fn relayed() -> (UnixStream, UnixStream, Relay) {
        let (vmm_end, vmm_relay) = UnixStream::pair().unwrap();
        let (listener, daemon_relay) = private_connection().unwrap();
        let (daemon_end, _) = listener.accept().unwrap();
        let relay = Relay::start(vmm_relay, daemon_relay).unwrap();
        (vmm_end, daemon_end, relay)
    }

    /// Reads one message the way the vhost crate does: the header with recvmsg (descriptors
    /// attached to it), then the payload.
    fn read_msg(s: &mut UnixStream) -> (Vec<u8>, Vec<OwnedFd>) {
        let mut hdr = [0u8; HEADER_SIZE];
        let mut cmsg_buf = nix::cmsg_space!([RawFd; 8]);
        let mut iov = [IoSliceMut::new(&mut hdr)];
        let m = recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::empty(),
        )
        .unwrap();
        assert_eq!(m.bytes, HEADER_SIZE);
        let mut files = Vec::new();
        for c in m.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: received from the socket just now; owned by nobody else.
                files.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let size = u32::from_ne_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
        let mut payload = vec![0u8; size];
        s.read_exact(&mut payload).unwrap();
        let mut all = hdr.to_vec();
        all.extend_from_slice(&payload);
        (all, files)
    }

    #[test]
    fn messages_and_fds_both_ways() {
        let (mut vmm, mut daemon, relay) = relayed();
        // Header + payload with two descriptors, sent in one write.
        let mut m = header(5, 1, 8);
        m.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let f1 = std::fs::File::open("/dev/null").unwrap();
        let (p_read, p_write) = nix::unistd::pipe().unwrap();
        vmm.send_with_fds(&[&m[..]], &[f1.as_raw_fd(), p_read.as_raw_fd()])
            .unwrap();
        let (got, files) = read_msg(&mut daemon);
        assert_eq!(got, m);
        assert_eq!(files.len(), 2);
        // The second descriptor is the pipe's read end.
        std::fs::File::from(p_write).write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        std::fs::File::from(files.into_iter().nth(1).unwrap())
            .read_exact(&mut b)
            .unwrap();
        assert_eq!(&b, b"hi");

        // A header-only message, written in pieces.
        let m = header(1, 1, 0);
        vmm.write_all(&m[..5]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        vmm.write_all(&m[5..]).unwrap();
        assert_eq!(read_msg(&mut daemon).0, m);

        // A reply with a descriptor.
        let mut r = header(5, 5, 4);
        r.extend_from_slice(&7u32.to_ne_bytes());
        daemon.send_with_fd(&r[..], f1.as_raw_fd()).unwrap();
        let (got, files) = read_msg(&mut vmm);
        assert_eq!(got, r);
        assert_eq!(files.len(), 1);

        // Two messages back to back keep their boundaries and descriptors.
        let m1 = header(9, 1, 0);
        let mut m2 = header(10, 1, 3);
        m2.extend_from_slice(b"abc");
        vmm.send_with_fd(&m1[..], f1.as_raw_fd()).unwrap();
        vmm.write_all(&m2).unwrap();
        let (got, files) = read_msg(&mut daemon);
        assert_eq!((got, files.len()), (m1, 1));
        let (got, files) = read_msg(&mut daemon);
        assert_eq!((got, files.len()), (m2, 0));

        // The VMM disconnects: the daemon side sees EOF, the relay ends cleanly.
        drop(vmm);
        let mut rest = Vec::new();
        daemon.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        relay.join().unwrap();
    }

    #[test]
    fn oversized_payload_ends_the_session() {
        let (mut vmm, mut daemon, relay) = relayed();
        vmm.write_all(&header(1, 1, MAX_PAYLOAD as u32 + 1))
            .unwrap();
        let mut rest = Vec::new();
        daemon.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        let e = relay.join().unwrap_err();
        assert!(
            matches!(
                e,
                RelayError::TooLarge {
                    direction: Direction::ToDaemon,
                    ..
                }
            ),
            "{e:?}"
        );
        // The VMM side is closed too.
        let mut rest = Vec::new();
        let _ = vmm.read_to_end(&mut rest);
        assert!(rest.is_empty());
    }

    #[test]
    fn disconnect_inside_a_message() {
        let (mut vmm, mut daemon, relay) = relayed();
        let mut m = header(1, 1, 100);
        m.extend_from_slice(&[0; 10]);
        vmm.write_all(&m).unwrap();
        drop(vmm);
        let mut rest = Vec::new();
        daemon.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "a partial message must not be forwarded");
        assert!(matches!(
            relay.join().unwrap_err(),
            RelayError::Truncated {
                direction: Direction::ToDaemon
            }
        ));
    }

    #[test]
    fn daemon_side_close_ends_both() {
        let (mut vmm, daemon, relay) = relayed();
        drop(daemon);
        let mut rest = Vec::new();
        let _ = vmm.read_to_end(&mut rest);
        assert!(rest.is_empty());
        relay.join().unwrap();
    }

    #[test]
    fn private_socket_has_no_name() {
        let (listener, _stream) = private_connection().unwrap();
        let addr = listener.local_addr().unwrap();
        let path = addr.as_pathname().expect("bound to a path").to_path_buf();
        assert!(!path.exists(), "{} still exists", path.display());
        assert!(!path.parent().unwrap().exists());
    }
}
