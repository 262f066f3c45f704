//! Sockets the host passes (identifier type 7, docs/protocol.md §5.9): each becomes a session of
//! its own.
//!
//! A socket cannot be handed to the client the way memory or a pipe can: the guest has no
//! descriptor for the host's socket. The host can make it a channel instead: the proxy prepares
//! a new context on a new DRM file, parks the socket item under a fresh random uuid
//! (ASSIGN_SOCKET_UUID, docs/protocol.md §3.10), sends the new context's 36-byte INIT naming
//! channel 0xFFFFFFFF and that uuid (docs/protocol.md §3.3), and bridges that context to one end
//! of a local `socketpair(AF_UNIX, SOCK_STREAM)`; the client gets the other end, in the
//! identifier's place. Parking comes after everything that can fail locally, because the
//! protocol cannot take a parked socket back.
//! The new context is served by a [`Session`] like a client's connection (bytes, pipes, memory,
//! eventfds and, recursively, further sockets), on a thread of its own, and lives until that
//! socket's conversation ends, independently of the session that passed it (a PipeWire remote
//! outlives the portal request that returned it).
//!
//! This module owns that hand-over, the limits on nesting ([`MAX_SOCKET_DEPTH`],
//! [`MAX_SOCKET_SESSIONS`]) and the [`ClientId`] that names the sessions in the log. It must
//! never hand the client a message without a socket it carried: every failure here (a limit,
//! the host refusing to park or adopt, no device) ends the passing session, which hangs the
//! client's connection up (docs/protocol.md §5.3.1).
#![forbid(unsafe_code)]

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use log::info;

use super::{ProxyConfig, Session, SessionError};
use crate::device::{DeviceError, VirtGpuDevice};
use crate::wire::{self, Identifier};
use cross_domain_protocol::channel::CHANNEL_TYPE_INTERNAL_SOCKET;
use cross_domain_protocol::wire::QUERY_RING;

/// How deep sockets may nest: a socket passed over a socket passed over … the client's own
/// connection. Real use is one level (a portal hands out a PipeWire remote); the bound keeps a
/// hostile or looping host from growing the chain without end.
pub const MAX_SOCKET_DEPTH: u32 = 4;

/// How many socket sessions one client connection and the sockets passed to it may have open at
/// once, all levels together. Each is a thread, a DRM file and a host context; the daemon parks
/// at most 64 sockets per VM anyway.
pub const MAX_SOCKET_SESSIONS: usize = 32;

/// Which connection a session serves, for the log: a client's own (`client 3`), or the n-th
/// socket passed to that client or to its sockets (`client 3 socket 2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientId {
    /// The client connection the proxy accepted.
    pub client: u64,
    /// 0 for the client's own connection, else the socket's number, counted per client from 1.
    pub socket: u32,
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.socket == 0 {
            write!(f, "{}", self.client)
        } else {
            write!(f, "{} socket {}", self.client, self.socket)
        }
    }
}

/// Why a socket from the host could not be passed to the client.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("this session was set up without a way to open further contexts")]
    NotEnabled,
    #[error("sockets nested {MAX_SOCKET_DEPTH} deep already (the limit)")]
    TooDeep,
    #[error("{MAX_SOCKET_SESSIONS} socket sessions of this client are open already (the limit)")]
    TooMany,
    #[error("no random uuid (/dev/urandom: {0})")]
    Random(#[source] io::Error),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("socketpair: {0}")]
    SocketPair(#[source] io::Error),
    #[error("cannot start a thread: {0}")]
    Thread(#[source] io::Error),
    #[error("the new context did not start: {0}")]
    Setup(#[source] Box<SessionError>),
    #[error("the new context's thread ended before it was set up")]
    Gone,
}

/// What one client connection and all the socket sessions that came from it share.
#[derive(Debug, Default)]
struct Tree {
    /// Socket sessions open (set up or being set up).
    live: AtomicUsize,
    /// The last socket number given out.
    last: AtomicU32,
}

/// One of a tree's [`MAX_SOCKET_SESSIONS`] places, given back when dropped (when the socket's
/// session ends, or its setup fails).
struct Slot(Arc<Tree>);

impl Slot {
    fn take(tree: &Arc<Tree>) -> Result<Slot, SocketError> {
        tree.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_SOCKET_SESSIONS).then_some(n + 1)
            })
            .map_err(|_| SocketError::TooMany)?;
        Ok(Slot(tree.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything a new socket session needs, handed to its thread.
struct Adoption {
    id: ClientId,
    uuid: [u8; 16],
    /// The proxy's end of the local socket pair.
    stream: UnixStream,
    sockets: Sockets,
    slot: Slot,
}

/// Parks the socket (ASSIGN_SOCKET_UUID on the passing session's context), called by an
/// [`Adopter`] once the new context is ready for its INIT.
type Park<'a> = &'a mut dyn FnMut() -> Result<(), SocketError>;

/// Starts a socket session on its own thread and returns once it is set up (or failed): the
/// thread prepares the new context, the caller's [`Park`] parks the socket, the thread sends
/// the INIT that adopts it. Type erased, so that the session code needs no `Send`/`'static`
/// bounds on its device.
type Adopter = Arc<dyn Fn(Adoption, Park<'_>) -> Result<(), SocketError> + Send + Sync>;

/// A session's means to pass sockets: how to start a socket session, and where it is in its tree.
pub(super) struct Sockets {
    adopt: Adopter,
    tree: Arc<Tree>,
    /// 0 for a client's own connection, n for a socket nested n deep.
    depth: u32,
}

impl<D: VirtGpuDevice + 'static> Session<D> {
    /// Lets this session pass the host's sockets to its client: `open` gives a new DRM file (a
    /// new context) for each. Without it, a socket from the host hangs the client's connection
    /// up.
    pub fn pass_sockets<F>(&mut self, open: Arc<F>)
    where
        F: Fn() -> Result<D, DeviceError> + Send + Sync + 'static,
    {
        self.sockets = Some(Sockets {
            adopt: adopter(open),
            tree: Arc::default(),
            depth: 0,
        });
    }
}

impl<D: VirtGpuDevice> Session<D> {
    /// A type-7 identifier: prepare a new context on its own thread, park the host's socket,
    /// let the new context adopt it, and return the client's end of the local socket pair
    /// bridged to it.
    pub(super) fn host_socket(&mut self, ident: &Identifier) -> Result<OwnedFd, SocketError> {
        let Some(sockets) = &self.sockets else {
            return Err(SocketError::NotEnabled);
        };
        if sockets.depth >= MAX_SOCKET_DEPTH {
            return Err(SocketError::TooDeep);
        }
        let child = Sockets {
            adopt: sockets.adopt.clone(),
            tree: sockets.tree.clone(),
            depth: sockets.depth + 1,
        };
        let slot = Slot::take(&child.tree)?;
        let number = child
            .tree
            .last
            .fetch_add(1, Ordering::AcqRel)
            .wrapping_add(1);
        let uuid = random_uuid().map_err(SocketError::Random)?;
        // Stream, as the sockets that matter are (D-Bus, PipeWire): a seqpacket socket from the
        // host arrives as a stream, as every channel does, without its message boundaries.
        let (ours, theirs) = UnixStream::pair().map_err(SocketError::SocketPair)?;
        let id = ClientId {
            client: self.client_id.client,
            socket: number,
        };
        let adopt = child.adopt.clone();
        let (dev, query_bo) = (&mut self.dev, self.query.bo);
        // Fenced on the query ring and waited for: the host has handled the ASSIGN before the
        // new context (another DRM file, not ordered with this one) sends its INIT. A refused
        // ASSIGN is not reported; the INIT then names an unknown uuid, which the new session's
        // setup detects.
        let mut park = || -> Result<(), SocketError> {
            dev.execbuffer(
                &wire::assign_socket_uuid(uuid, ident.id),
                Some(u32::from(QUERY_RING)),
                &[query_bo],
            )?;
            dev.wait(query_bo)?;
            Ok(())
        };
        let job = Adoption {
            id,
            uuid,
            stream: ours,
            sockets: child,
            slot,
        };
        adopt(job, &mut park)?;
        self.stats.fds_to_client += 1;
        self.stats.sockets_to_client += 1;
        info!(
            "client {}: host socket {:#x} passed to the client as client {id}",
            self.client_id, ident.id
        );
        Ok(theirs.into())
    }
}

/// 16 random bytes: the host's table of parked sockets is shared by the whole VM, so the uuid
/// must not be guessable by another guest process racing to adopt it.
fn random_uuid() -> io::Result<[u8; 16]> {
    let mut uuid = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut uuid)?;
    Ok(uuid)
}

/// The [`Adopter`] of a device opener.
fn adopter<D, F>(open: Arc<F>) -> Adopter
where
    D: VirtGpuDevice + 'static,
    F: Fn() -> Result<D, DeviceError> + Send + Sync + 'static,
{
    Arc::new(move |job: Adoption, park: Park<'_>| {
        let open = open.clone();
        let (report, progress) = mpsc::sync_channel(1);
        let (go, wait_go) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("client-{}-s{}", job.id.client, job.id.socket))
            .spawn(move || run_adopted(&*open, job, report, wait_go))
            .map_err(SocketError::Thread)?;
        let step = || match progress.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SocketError::Setup(Box::new(e))),
            Err(mpsc::RecvError) => Err(SocketError::Gone),
        };
        // The new context is ready for its INIT; park the socket, then let the INIT go (or
        // stop the thread if parking failed).
        step()?;
        let parked = park();
        let _ = go.send(parked.is_ok());
        parked?;
        step()
    })
}

/// A socket session's thread: prepare the new context and say so on `report`, wait for the
/// passing session to park the socket (`go`), send the INIT that adopts it and report the
/// outcome, then forward until the conversation ends.
fn run_adopted<D, F>(
    open: &F,
    job: Adoption,
    report: mpsc::SyncSender<Result<(), SessionError>>,
    go: mpsc::Receiver<bool>,
) where
    D: VirtGpuDevice,
    F: Fn() -> Result<D, DeviceError>,
{
    let Adoption {
        id,
        uuid,
        stream,
        sockets,
        slot,
    } = job;
    let cfg = ProxyConfig {
        channel_type: CHANNEL_TYPE_INTERNAL_SOCKET,
        // 0xFFFFFFFF is never advertised: it is a parked socket, not a configured channel.
        skip_capset_check: true,
    };
    // Errors go to the passing session, which logs them with the client it hangs up.
    let prepared = open()
        .map_err(SessionError::from)
        .and_then(|dev| Session::prepare(&cfg, dev));
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = report.send(Err(e));
            return;
        }
    };
    let _ = report.send(Ok(()));
    if go.recv() != Ok(true) {
        return;
    }
    let mut session = match Session::start(prepared, id, cfg, stream, Some(uuid)) {
        Ok(s) => s,
        Err(e) => {
            let _ = report.send(Err(e));
            return;
        }
    };
    session.sockets = Some(sockets);
    let _ = report.send(Ok(()));
    info!("client {id}: connected to a socket the host passed");
    crate::report(id, session.run());
    drop(slot);
}
