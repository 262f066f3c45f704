//! Entry points shared by the fuzz targets (`fuzz/`, cargo-fuzz on nightly) and by the corpus
//! regression test (`tests/fuzz_corpus.rs`, stable): each takes arbitrary bytes and drives the
//! real decoding and state-machine code the guest can reach. They must never panic, hang or leak;
//! any crash found is committed under `fuzz/regressions/<target>/` and replayed by the test.
//!
//! Not part of the stable API.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use nix::sys::epoll::EpollFlags;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::{self, ChannelTable};
use crate::cross_domain::{
    Connector, Context, HoldToken, Lookup, ResourceView, Shared, Submission,
};
use crate::guest_mem::{GuestMem, SgList};
use crate::ratelimit::GuestLog;
use crate::virtio_gpu::{Gpu, Limits, ShmMapper};

/// Guest memory of every harness: 2 MiB at 64 KiB.
const MEM_BASE: u64 = 0x1_0000;
const MEM_SIZE: usize = 2 << 20;
const STREAM_A: u64 = MEM_BASE;
const STREAM_B: u64 = MEM_BASE + 0x4_0000;
const QUERY_RING: u64 = MEM_BASE + 0x10_0000;
const CHANNEL_RING: u64 = MEM_BASE + 0x11_0000;
const SMALL_RING: u64 = MEM_BASE + 0x12_0000;
/// A 64 KiB channel ring (resource 6), for the large-ring channel [`PAIR_CHANNEL`].
const LARGE_RING: u64 = MEM_BASE + 0x14_0000;
const LARGE_RING_SIZE: usize = 64 << 10;

fn new_memory() -> GuestMem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(MEM_BASE), MEM_SIZE)])
        .unwrap_or_else(|e| panic!("fuzz harness: guest memory: {e}"))
}

/// A host service for channel 2 that accepts connections and keeps the newest few open without
/// reading, so sends succeed until the socket buffer fills, and then exercise the backlog.
struct HostService {
    path: PathBuf,
}

fn host_service() -> &'static HostService {
    static SERVICE: OnceLock<HostService> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vucd-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("channel-2.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .unwrap_or_else(|e| panic!("fuzz harness: bind {}: {e}", path.display()));
        let kept: Arc<Mutex<VecDeque<UnixStream>>> = Arc::default();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let mut k = kept.lock().unwrap_or_else(|p| p.into_inner());
                k.push_back(s);
                if k.len() > 8 {
                    k.pop_front();
                }
            }
        });
        HostService { path }
    })
}

fn channels() -> Arc<ChannelTable> {
    static TABLE: OnceLock<Arc<ChannelTable>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            let mut t = ChannelTable::new();
            let _ = t.insert(2, host_service().path.clone());
            let _ = t.insert(
                3,
                std::env::temp_dir().join("vucd-fuzz-nobody-listens.sock"),
            );
            // Never connected by path: `DirectConnector` makes socket pairs for them.
            // With large rings (`ring=64K`), so that INITs asking for them reach that path.
            t.add_channel_arg(&format!(
                "{PAIR_CHANNEL}:{},ring=64K",
                std::env::temp_dir()
                    .join("vucd-fuzz-socket-pair.sock")
                    .display()
            ))
            .unwrap_or_else(|e| panic!("fuzz harness: {e}"));
            let _ = t.insert(
                PAIR_DBUS_CHANNEL,
                std::env::temp_dir().join("vucd-fuzz-socket-pair-dbus.sock"),
            );
            Arc::new(t)
        })
        .clone()
}

/// The channel type whose connections are socket pairs made by the harness: the host end is
/// kept in [`PAIR_HOST`], so that the fuzzer can play a host service that sends fds.
const PAIR_CHANNEL: u32 = 4;

/// D-Bus's session channel, also a socket pair: its default fd policy carries sockets, so
/// sockets the host sends become items the guest may park (command 13) and adopt (INIT-36).
const PAIR_DBUS_CHANNEL: u32 = 0x12;

/// The host end of the newest [`PAIR_CHANNEL`] or [`PAIR_DBUS_CHANNEL`] connection.
static PAIR_HOST: Mutex<Option<UnixStream>> = Mutex::new(None);

fn pair_host() -> std::sync::MutexGuard<'static, Option<UnixStream>> {
    PAIR_HOST.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connects channel sockets directly, as the daemon does without a sandbox (the harness never
/// starts a broker), except [`PAIR_CHANNEL`] and [`PAIR_DBUS_CHANNEL`], which get socket pairs.
struct DirectConnector;

impl Connector for DirectConnector {
    fn connect(&self, channel_type: u32, path: &Path) -> io::Result<OwnedFd> {
        if channel_type == PAIR_CHANNEL || channel_type == PAIR_DBUS_CHANNEL {
            let (ours, host) = UnixStream::pair()?;
            ours.set_nonblocking(true)?;
            host.set_nonblocking(true)?;
            *pair_host() = Some(host);
            return Ok(ours.into());
        }
        crate::sandbox::broker::connect_unix(path)
    }
}

/// Most host copies of eventfds the harness keeps to signal and read.
const HOST_EVENTFDS: usize = 8;

/// As a host service on the newest socket-pair connection: send `bytes[2..]` (at least one
/// byte) with `bytes[0] % 6` fds whose kinds come from `bytes[1]`, three bits each (eventfds,
/// memfds of odd sizes, sealed like PipeWire's or not, pipe ends, a Unix stream socket, or a
/// directory when `bytes[0]` is even and a Unix seqpacket socket when it is odd). The host
/// keeps a copy of each eventfd (up to [`HOST_EVENTFDS`]).
fn host_sends(bytes: &[u8], host_efds: &mut Vec<OwnedFd>) {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let guard = pair_host();
    let Some(host) = guard.as_ref() else {
        return;
    };
    let n = usize::from(bytes.first().copied().unwrap_or(0) % 6);
    let kinds = u32::from(bytes.get(1).copied().unwrap_or(0)) * 0x0101_0101;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for i in 0..n {
        let fd: io::Result<OwnedFd> = match (kinds >> (3 * i)) & 7 {
            0 | 1 => nix::sys::eventfd::EventFd::from_value_and_flags(
                i as u32,
                nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
            )
            .map(OwnedFd::from)
            .map_err(io::Error::from),
            k @ (2 | 3) => memfd_create(c"vucd-fuzz-host", MFdFlags::MFD_ALLOW_SEALING)
                .map_err(io::Error::from)
                .and_then(|fd| {
                    nix::unistd::ftruncate(&fd, 2312 + i as i64 * 1000)?;
                    if k == 3 {
                        let seals = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
                        nix::fcntl::fcntl(
                            &fd,
                            nix::fcntl::FcntlArg::F_ADD_SEALS(
                                nix::fcntl::SealFlag::from_bits_truncate(seals),
                            ),
                        )?;
                    }
                    Ok(fd)
                }),
            4 => nix::unistd::pipe().map(|(_, w)| w).map_err(io::Error::from),
            5 => nix::unistd::pipe().map(|(r, _)| r).map_err(io::Error::from),
            6 => UnixStream::pair().map(|(a, _)| a.into()),
            _ if n % 2 == 1 => nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::SeqPacket,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            )
            .map(|(a, _)| a)
            .map_err(io::Error::from),
            _ => std::fs::File::open("/").map(OwnedFd::from),
        };
        let Ok(fd) = fd else { continue };
        if (kinds >> (3 * i)) & 7 < 2 && host_efds.len() < HOST_EVENTFDS {
            if let Ok(copy) = fd.try_clone() {
                host_efds.push(copy);
            }
        }
        fds.push(fd);
    }
    let data = bytes.get(2..).filter(|d| !d.is_empty()).unwrap_or(b"x");
    let iov = [libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    }];
    let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmsg = crate::cross_domain::io::CmsgBuf::default();
    // A full socket refuses the message (non-blocking); the fds close here either way.
    let _ = crate::cross_domain::io::send_with_fds(host.as_fd(), &iov, &raw, &mut cmsg);
}

/// As a host service, on its copy of eventfd `bytes[0]`: add `bytes[2..10]` to its counter
/// when `bytes[1]` is odd (it may be full, or refuse u64::MAX), read (reset) it otherwise.
fn host_eventfd(bytes: &[u8], host_efds: &[OwnedFd]) {
    if host_efds.is_empty() {
        return;
    }
    let efd = &host_efds[usize::from(bytes.first().copied().unwrap_or(0)) % host_efds.len()];
    if bytes.get(1).copied().unwrap_or(0) & 1 == 1 {
        let v = u64_of(bytes.get(2..).unwrap_or(&[]));
        let _ = nix::unistd::write(efd, &v.to_ne_bytes());
    } else {
        let _ = nix::unistd::read(efd, &mut [0u8; 8]);
    }
}

/// Resources as one context sees them: 1 query ring, 2 channel ring, 3 a 1 KiB ring, 4 a
/// resource without backing, 5 a host memfd blob, 6 a 64 KiB ring; everything else is not
/// attached.
struct FuzzView {
    query: SgList,
    channel: SgList,
    small: SgList,
    large: SgList,
    memfd: OwnedFd,
}

impl ResourceView for FuzzView {
    fn lookup(&self, res_id: u32) -> Lookup<'_> {
        match res_id {
            1 => Lookup::Guest(&self.query),
            2 => Lookup::Guest(&self.channel),
            3 => Lookup::Guest(&self.small),
            4 => Lookup::Unbacked,
            5 => Lookup::Host(self.memfd.as_fd()),
            6 => Lookup::Guest(&self.large),
            _ => Lookup::NotAttached,
        }
    }
}

struct CdFixture {
    mem: GuestMem,
    shared: Shared,
    view: FuzzView,
    limiter: GuestLog,
}

fn sg(parts: &[(u64, usize)]) -> SgList {
    let mut s = SgList::new();
    for &(a, l) in parts {
        s.push(GuestAddress(a), l);
    }
    s
}

fn cd_fixture() -> CdFixture {
    let memfd = nix::sys::memfd::memfd_create(c"vucd-fuzz", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .unwrap_or_else(|e| panic!("fuzz harness: memfd: {e}"));
    let _ = nix::unistd::ftruncate(&memfd, 8192);
    CdFixture {
        mem: new_memory(),
        shared: Shared::new(channels(), Arc::new(DirectConnector), Default::default())
            .unwrap_or_else(|e| panic!("fuzz harness: epoll: {e}")),
        view: FuzzView {
            query: sg(&[(QUERY_RING, 4096)]),
            // A channel ring split in two pieces, out of order, as Linux may hand it out.
            channel: sg(&[(CHANNEL_RING + 2048, 2048), (CHANNEL_RING, 2048)]),
            small: sg(&[(SMALL_RING, 1024)]),
            // In two pieces, like the channel ring.
            large: sg(&[
                (LARGE_RING + LARGE_RING_SIZE as u64 / 2, LARGE_RING_SIZE / 2),
                (LARGE_RING, LARGE_RING_SIZE / 2),
            ]),
            memfd,
        },
        limiter: GuestLog::new(1),
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(rest.len());
    let (a, b) = rest.split_at(n);
    *rest = b;
    a
}

fn u16_of(b: &[u8]) -> u16 {
    let mut v = [0u8; 2];
    v[..b.len().min(2)].copy_from_slice(&b[..b.len().min(2)]);
    u16::from_le_bytes(v)
}

fn u32_of(b: &[u8]) -> u32 {
    let mut v = [0u8; 4];
    v[..b.len().min(4)].copy_from_slice(&b[..b.len().min(4)]);
    u32::from_le_bytes(v)
}

fn u64_of(b: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    v[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
    u64::from_le_bytes(v)
}

/// One cross-domain context driven by a sequence of operations, each `[op u8][len u16][bytes]`:
/// 0 = SUBMIT_3D command stream (`bytes`, laid out in two guest-memory pieces), 1 = a POLL fence
/// and a delivery attempt, 2 = an epoll event (`bytes` = source u32, events u32), 3 = a HOST3D
/// blob request (`bytes` = blob id u32, size u64), 4 = the host service of channel 4 sends a
/// message with fds ([`host_sends`]; eventfds among them, for commands 11, 12 and WRITE),
/// 5 = it signals or reads one of its eventfds ([`host_eventfd`]); the last two also hand the
/// context its ready epoll events and try a delivery. Operations with the top bit of `op` set
/// go to a second context of the same VM, which may adopt a socket the first parked (command
/// 13, INIT of 36 bytes with channel type 0xFFFFFFFF). Both contexts are torn down at the end,
/// and the VM's parked sockets purged, as a device reset does.
pub fn cross_domain_commands(data: &[u8]) {
    thread_local! {
        static FX: RefCell<Option<CdFixture>> = const { RefCell::new(None) };
    }
    FX.with(|cell| {
        let mut guard = cell.borrow_mut();
        let fx = guard.get_or_insert_with(cd_fixture);
        let mut ctxs = [
            Context::new(7, "fuzz".into()),
            Context::new(8, "fuzz-b".into()),
        ];
        let mut rest = data;
        let mut fence = 0u64;
        // Requests held by queued output (token value -> chunks), as the device keeps them;
        // every hold must be released exactly once, at the latest by the teardown.
        let mut held: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
        let mut released = Vec::new();
        let mut next_head = 0u16;
        let mut host_efds = Vec::new();
        // Contexts with SENDs gathered in the current "pass" (SUBMITs in a row): any other
        // operation on the context ends the pass first, as the device ends it before any other
        // request and before host events.
        let mut gathered = [false; 2];
        while rest.len() >= 3 {
            let op = rest[0];
            let len = usize::from(u16_of(&rest[1..3]));
            rest = &rest[3..];
            let bytes = take(&mut rest, len);
            let which = usize::from(op >> 7);
            let ctx = &mut ctxs[which];
            let ctx_no = 7 + which as u32;
            // The host service acts, then its events reach the context (ops 4 and 5).
            let mut ready = [(0u32, EpollFlags::empty()); 8];
            let mut nready = 0;
            if op % 6 >= 4 {
                if op % 6 == 4 {
                    host_sends(bytes, &mut host_efds);
                } else {
                    host_eventfd(bytes, &host_efds);
                }
                let mut events = [nix::sys::epoll::EpollEvent::empty(); 8];
                let n = fx
                    .shared
                    .epoll()
                    .wait(&mut events, nix::sys::epoll::EpollTimeout::ZERO)
                    .unwrap_or(0);
                for ev in &events[..n] {
                    let (ctx_id, src) = crate::cross_domain::token_parts(ev.data());
                    if ctx_id == ctx_no {
                        ready[nready] = (src, ev.events());
                        nready += 1;
                    }
                }
            }
            let mut env = fx.shared.env(&fx.mem, &mut fx.limiter, &mut released);
            if op % 6 != 0 && gathered[which] {
                gathered[which] = false;
                ctx.flush_coalesced(&mut env);
            }
            match op % 6 {
                0 => {
                    let half = bytes.len() / 2;
                    let _ = fx.mem.write_slice(&bytes[..half], GuestAddress(STREAM_A));
                    let _ = fx.mem.write_slice(&bytes[half..], GuestAddress(STREAM_B));
                    let stream = sg(&[(STREAM_A, half), (STREAM_B, bytes.len() - half)]);
                    // Odd heads may be held, even ones must complete now (as fenced ones).
                    next_head = next_head.wrapping_add(1);
                    while held.contains_key(&u64::from(next_head)) {
                        next_head = next_head.wrapping_add(1);
                    }
                    let mut sub = Submission {
                        hold: (next_head % 2 == 1).then(|| HoldToken::new(next_head.into())),
                        held_chunks: 0,
                        // Small, so that the VM-wide refusal is reached too.
                        images_left: 64,
                        // Half of the holdable ones may be gathered into the pass's batch.
                        coalesce: next_head % 4 == 1,
                        coalesced: false,
                    };
                    let _ = ctx.submit(&mut env, &mut sub, &fx.view, &stream, 0, bytes.len());
                    gathered[which] |= sub.coalesced;
                    assert!(
                        sub.hold.is_some() || sub.held_chunks == 0,
                        "unholdable request held"
                    );
                    if sub.held_chunks > 0 {
                        held.insert(next_head.into(), sub.held_chunks);
                    }
                }
                1 => {
                    fence += 1;
                    ctx.arm_poll(fence);
                    let _ = ctx.try_deliver(&mut env);
                }
                2 => {
                    let src = u32_of(bytes);
                    let events =
                        EpollFlags::from_bits_truncate(u32_of(&bytes[bytes.len().min(4)..]) as i32);
                    ctx.on_event(&mut env, src, events);
                    let _ = ctx.try_deliver(&mut env);
                }
                3 => {
                    let id = u32_of(bytes);
                    let size = u64_of(&bytes[bytes.len().min(4)..]) % (1 << 24);
                    let _ = ctx.take_blob(id, size);
                }
                _ => {
                    for &(src, events) in &ready[..nready] {
                        ctx.on_event(&mut env, src, events);
                    }
                    let _ = ctx.try_deliver(&mut env);
                }
            }
            settle(&mut held, &mut released);
        }
        for (ctx, gathered) in ctxs.iter_mut().zip(gathered) {
            if gathered {
                let mut env = fx.shared.env(&fx.mem, &mut fx.limiter, &mut released);
                ctx.flush_coalesced(&mut env);
            }
            ctx.teardown(fx.shared.epoll(), &mut released);
        }
        fx.shared.purge_parked_sockets();
        settle(&mut held, &mut released);
        // The host service goes with the context: nothing outlives one input.
        drop(host_efds);
        *pair_host() = None;
        assert!(
            held.is_empty(),
            "requests still held after teardown: {held:?}"
        );
        fx.limiter.limits.forget(7);
        fx.limiter.limits.forget(8);
    });
}

/// Account released holds, as the device does; a release of a request that is not held is a bug.
fn settle(held: &mut std::collections::HashMap<u64, u32>, released: &mut Vec<HoldToken>) {
    for head in released.drain(..).map(HoldToken::get) {
        let refs = held
            .get_mut(&head)
            .unwrap_or_else(|| panic!("request {head} released but not held"));
        *refs -= 1;
        if *refs == 0 {
            held.remove(&head);
        }
    }
}

/// Accepts every map with an even offset page and refuses the others, so both outcomes occur.
struct FuzzMapper;

impl ShmMapper for FuzzMapper {
    fn map(&self, _fd: BorrowedFd<'_>, offset: u64, _len: u64, _w: bool) -> io::Result<()> {
        if (offset / 4096) % 2 == 0 {
            Ok(())
        } else {
            Err(io::Error::other("refused"))
        }
    }

    fn unmap(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

fn gpu() -> Gpu {
    Gpu::new(
        channels(),
        Arc::new(DirectConnector),
        1,
        1 << 24,
        Limits::default(),
    )
    .unwrap_or_else(|e| panic!("fuzz harness: gpu: {e}"))
}

/// The control-queue decoder and dispatcher. `data` = guest memory image (first 64 KiB, copied
/// to the start of guest memory) followed by requests, each `[n u8][n x (addr u32, len u32,
/// flags u8)]`: a descriptor chain whose addresses are offsets from the memory base (large
/// values fall outside guest memory). Every request goes to `Gpu::process_chain`; every fourth
/// one on the cursor queue.
pub fn control_queue(data: &[u8]) {
    thread_local! {
        static MEM: GuestMem = new_memory();
    }
    MEM.with(|mem| {
        let mut rest = data;
        let image = take(&mut rest, 0x1_0000);
        let _ = mem.write_slice(image, GuestAddress(MEM_BASE));
        let mut g = gpu();
        let mut head = 0u16;
        while !rest.is_empty() {
            let n = usize::from(take(&mut rest, 1)[0] % 8);
            let mut descs = Vec::with_capacity(n);
            for _ in 0..n {
                let d = take(&mut rest, 9);
                let addr = MEM_BASE.wrapping_add(u64::from(u32_of(d)));
                let len = u32_of(&d[d.len().min(4)..]);
                let flags = if d.len() > 8 && d[8] & 1 != 0 { 2 } else { 0 };
                descs.push(Descriptor::new(addr, len, flags, 0));
            }
            head = head.wrapping_add(1);
            let _ = g.process_chain(mem, head, descs.into_iter(), head % 4 == 0, &FuzzMapper);
            let _ = g.take_completions().count();
        }
        g.complete_all_and_reset();
        let _ = g.take_completions().count();
    });
}

/// A split virtqueue laid out in guest memory from the fuzz bytes (descriptor table, avail
/// ring, then the memory image), walked with virtio-queue and dispatched like the device does.
pub fn virtqueue(data: &[u8]) {
    thread_local! {
        static MEM: GuestMem = new_memory();
    }
    const QSIZE: u16 = 16;
    const DESC: u64 = MEM_BASE;
    const AVAIL: u64 = MEM_BASE + 0x1000;
    const USED: u64 = MEM_BASE + 0x2000;
    MEM.with(|mem| {
        let mut rest = data;
        let table = take(&mut rest, 16 * QSIZE as usize);
        let _ = mem.write_slice(table, GuestAddress(DESC));
        let avail = take(&mut rest, 4 + 2 * QSIZE as usize);
        let _ = mem.write_slice(avail, GuestAddress(AVAIL));
        let _ = mem.write_slice(&[0u8; 4 + 8 * QSIZE as usize], GuestAddress(USED));
        let _ = mem.write_slice(rest, GuestAddress(MEM_BASE + 0x3000));
        let Ok(mut q) = Queue::new(QSIZE) else {
            return;
        };
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        let mut g = gpu();
        // Bounded: a queue holds at most QSIZE new chains per avail-index wrap.
        for _ in 0..(4 * QSIZE) {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            if let Some(len) = g.process_chain(mem, head, chain, false, &FuzzMapper) {
                let _ = q.add_used(mem, head, len);
            }
            for (h, l) in g.take_completions() {
                let _ = q.add_used(mem, h, l);
            }
        }
        g.complete_all_and_reset();
    });
}

/// The command-line parsers: `--channel`, its type, `--shm-size`, `--scanouts`.
pub fn config_parsers(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let _ = config::parse_channel_spec(&s);
    let _ = config::parse_channel_type(&s);
    let _ = config::parse_shm_size(&s);
    let _ = config::parse_scanouts(&s);
    let mut t = ChannelTable::new();
    for part in s.split('\n') {
        let _ = t.add_channel_arg(part);
    }
    let _ = t.capset_mask();
}
