//! Self-test of the test frontend in `tests/support` against an in-process vhost-user
//! backend (`vhost_user_backend::VhostUserDaemon` with a mock device), so the frontend is
//! known to work independently of the real daemon.
//!
//! The mock also offers SHMEM: its host-visible region (shmid 1) is 64 MiB unless a test picks
//! another size, and a 32-byte command on the control queue (see [`shm_cmd`]) makes it map or
//! unmap pages of its own memfd through the backend request channel.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use support::*;
use vhost::vhost_user::message::{
    VhostUserMMap, VhostUserMMapFlags, VhostUserProtocolFeatures, VhostUserShMemConfig,
};
use vhost::vhost_user::{
    Backend, GpuBackend, Listener, VhostUserFrontendReqHandler, VhostUserProtocolFeatures as P,
};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

const T: Duration = Duration::from_secs(5);

/// Mock device: for every chain, the readable bytes reversed go into the writable buffers;
/// a chain with an unreadable/unwritable buffer is completed with length 0.
struct Mock {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    config: [u8; 16],
    gpu_sockets: usize,
    backend_req: bool,
    acked: u64,
    /// Signal the call eventfd (off = a buggy device that completes silently).
    signal: bool,
    /// Size of the host-visible region reported in GET_SHMEM_CONFIG (0: none).
    shm_size: u64,
    /// The backend request channel from SET_BACKEND_REQ_FD.
    backend: Option<Backend>,
    /// What the mock maps into the region: MOCK_MEMFD_SIZE bytes of `pattern`.
    memfd: File,
}

const MIB: u64 = 1 << 20;
const MOCK_MEMFD_SIZE: u64 = MIB;
const SHM_CMD_MAP: u8 = 1;
const SHM_CMD_UNMAP: u8 = 2;

/// The mock memfd's initial content.
fn pattern(i: u64) -> u8 {
    ((i % 251) as u8) ^ ((i / 4096) as u8)
}

fn pattern_range(start: u64, len: u64) -> Vec<u8> {
    (start..start + len).map(pattern).collect()
}

const MOCK_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_GPU_F_VIRGL
    | VIRTIO_GPU_F_RESOURCE_UUID
    | VIRTIO_GPU_F_RESOURCE_BLOB
    | VIRTIO_GPU_F_CONTEXT_INIT
    | VIRTIO_RING_F_EVENT_IDX
    | VHOST_USER_F_PROTOCOL_FEATURES;

impl Mock {
    /// A control queue command `b"SHM" op shmid flags pad[2] fd_offset shm_offset len` (32
    /// bytes, little endian) maps or unmaps part of the memfd; the reply is a u64, 0 = done.
    fn shm_command(&self, input: &[u8]) -> Option<Vec<u8>> {
        if input.len() != 32 || &input[..3] != b"SHM" {
            return None;
        }
        let le = |i: usize| u64::from_le_bytes(input[i..i + 8].try_into().unwrap());
        let req = VhostUserMMap {
            shmid: input[4],
            fd_offset: le(8),
            shm_offset: le(16),
            len: le(24),
            flags: u64::from(input[5]),
            ..Default::default()
        };
        let r = match (&self.backend, input[3]) {
            (Some(b), SHM_CMD_MAP) => b.shmem_map(&req, &self.memfd),
            (Some(b), SHM_CMD_UNMAP) => b.shmem_unmap(&req),
            _ => Err(io::Error::other("no backend channel / bad op")),
        };
        let v: u64 = if r.is_ok() { 0 } else { 1 };
        Some(v.to_le_bytes().to_vec())
    }

    fn process(&self, vring: &VringRwLock) -> io::Result<()> {
        let mem = self.mem.memory();
        loop {
            vring.disable_notification().map_err(io::Error::other)?;
            loop {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let mut input = Vec::new();
                let mut outs = Vec::new();
                let mut ok = true;
                for desc in chain {
                    if desc.is_write_only() {
                        outs.push((desc.addr(), desc.len() as usize));
                    } else {
                        let mut b = vec![0u8; desc.len() as usize];
                        if mem.read_slice(&mut b, desc.addr()).is_err() {
                            ok = false;
                        }
                        input.extend_from_slice(&b);
                    }
                }
                let mut written = 0;
                if ok {
                    match self.shm_command(&input) {
                        Some(reply) => input = reply,
                        None => input.reverse(),
                    }
                    for (addr, len) in outs {
                        let take = len.min(input.len() - written);
                        if mem
                            .write_slice(&input[written..written + take], addr)
                            .is_err()
                        {
                            written = 0;
                            break;
                        }
                        written += take;
                    }
                }
                vring
                    .add_used(head, written as u32)
                    .map_err(io::Error::other)?;
                if vring.needs_notification().map_err(io::Error::other)? && self.signal {
                    vring.signal_used_queue()?;
                }
            }
            if !vring.enable_notification().map_err(io::Error::other)? {
                break;
            }
        }
        Ok(())
    }
}

impl VhostUserBackendMut for Mock {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        1024
    }

    fn features(&self) -> u64 {
        MOCK_FEATURES
    }

    fn acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::SHMEM
    }

    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        Ok(VhostUserShMemConfig::new(1, &[0, self.shm_size]))
    }

    fn set_event_idx(&mut self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let (o, s) = (offset as usize, size as usize);
        if o + s > self.config.len() {
            return Vec::new();
        }
        self.config[o..o + s].to_vec()
    }

    fn set_config(&mut self, offset: u32, buf: &[u8]) -> io::Result<()> {
        let o = offset as usize;
        if o + buf.len() > self.config.len() {
            return Err(io::Error::other("config write out of range"));
        }
        self.config[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = mem;
        Ok(())
    }

    fn set_backend_req_fd(&mut self, backend: Backend) {
        self.backend_req = true;
        self.backend = Some(backend);
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> io::Result<()> {
        self.gpu_sockets += 1;
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        match vrings.get(usize::from(device_event)) {
            Some(vring) => self.process(vring),
            None => Ok(()),
        }
    }
}

type SharedMock = Arc<Mutex<Mock>>;

/// Starts an in-process vhost-user backend listening on a fresh socket; it serves one
/// connection on a background thread.
fn start_mock(dir: &Path) -> (PathBuf, SharedMock) {
    start_mock_shm(dir, 64 * MIB)
}

/// Like [`start_mock`] with a host-visible region of `shm_size` bytes.
fn start_mock_shm(dir: &Path, shm_size: u64) -> (PathBuf, SharedMock) {
    let memfd = File::from(
        nix::sys::memfd::memfd_create("mock-shm", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .expect("memfd"),
    );
    memfd
        .write_all_at(&pattern_range(0, MOCK_MEMFD_SIZE), 0)
        .expect("fill memfd");
    let path = dir.join(format!("mock-{}.sock", rand_suffix()));
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mock = Arc::new(Mutex::new(Mock {
        mem: mem.clone(),
        config: [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0],
        gpu_sockets: 0,
        backend_req: false,
        acked: 0,
        signal: true,
        shm_size,
        backend: None,
        memfd,
    }));
    let mut daemon =
        VhostUserDaemon::new("mock-gpu".to_string(), mock.clone(), mem).expect("daemon");
    let mut listener = Listener::new(&path, true).expect("listener");
    thread::spawn(move || {
        if daemon.start(&mut listener).is_ok() {
            let _ = daemon.wait();
        }
    });
    (path, mock)
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn reversed(b: &[u8]) -> Vec<u8> {
    b.iter().rev().copied().collect()
}

#[test]
fn handshake_and_config() {
    let dir = temp_dir();
    let (path, mock) = start_mock(dir.path());
    let mut vm = TestVm::connect(&path);

    assert_eq!(vm.backend_features(), MOCK_FEATURES);
    assert_eq!(
        vm.acked_features(),
        DEFAULT_ACK_MASK,
        "default ack is backend ∩ DEFAULT_ACK_MASK"
    );
    let proto = VhostUserProtocolFeatures::from_bits_truncate(vm.protocol_features());
    assert!(
        proto.contains(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK)
    );
    assert_eq!(vm.queue_num(), Some(2));
    assert!(vm.has_backend_req_channel());
    assert!(!vm.event_idx());

    assert_eq!(
        vm.get_config(0, 16),
        vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
    );
    assert_eq!(vm.get_config(12, 4), vec![1, 0, 0, 0]);
    // Out of range: the mock returns nothing, which the frontend reports as an error.
    assert!(vm.try_get_config(14, 4).is_err());

    vm.set_config(4, &[7, 0, 0, 0]);
    assert_eq!(vm.get_config(4, 4), vec![7, 0, 0, 0]);

    // Hand-written GPU_SET_SOCKET, then a synchronous request to make sure it was handled.
    vm.send_gpu_set_socket();
    vm.send_gpu_set_socket();
    let _ = vm.get_config(0, 4);
    assert_eq!(vm.send_gpu_set_socket_acked().unwrap(), 0);
    let m = mock.lock().unwrap();
    assert_eq!(m.gpu_sockets, 3);
    assert!(m.backend_req);
    assert_eq!(m.acked, DEFAULT_ACK_MASK);
}

#[test]
fn submit_and_wait_on_both_queues() {
    let dir = temp_dir();
    let (path, _mock) = start_mock(dir.path());
    let mut vm = TestVm::connect(&path);

    assert_eq!(vm.ctrl(b"hello", 5), b"olleh");
    assert_eq!(vm.cursor(b"cursor!", 16), b"!rosruc");

    // Several readable and writable buffers: concatenated both ways.
    let h = vm.submit(CONTROLQ, &[b"ab", b"cde"], &[2, 2, 8]);
    assert_eq!(vm.wait_for(CONTROLQ, h, T).unwrap(), b"edcba");

    // Out-of-order collection: wait for the second chain first.
    let h1 = vm.submit(CURSORQ, &[b"one"], &[3]);
    let h2 = vm.submit(CURSORQ, &[b"two"], &[3]);
    assert_eq!(vm.wait_for(CURSORQ, h2, T).unwrap(), b"owt");
    assert!(vm.is_done(CURSORQ, h1));
    assert_eq!(vm.wait_used(CURSORQ, T), Some((h1, 3)));
    assert_eq!(vm.wait_used(CURSORQ, Duration::from_millis(20)), None);

    // Writable-only chain: nothing to reverse.
    let h = vm.submit(CONTROLQ, &[], &[4]);
    assert_eq!(vm.wait_for_used(CONTROLQ, h, T).unwrap().len, 0);

    // Guest memory helpers.
    let a = vm.alloc(100, 64);
    assert_eq!(a % 64, 0);
    assert!(a >= vm.mem_base() && a + 100 <= vm.mem_end());
    vm.write_mem(a, b"guest");
    assert_eq!(vm.read_mem(a, 5), b"guest");
    vm.free(a);
}

fn round_trips(event_idx: bool, queue_size: u16) {
    let dir = temp_dir();
    let (path, _mock) = start_mock(dir.path());
    let mut vm = TestVm::builder()
        .event_idx(event_idx)
        .queue_size(queue_size)
        .connect(&path);
    assert_eq!(vm.event_idx(), event_idx);

    // 10 000 round trips, pipelined 32 deep, with sizes that vary so several size classes
    // are recycled; more chains than descriptors, so slots must be reused.
    let total = 10_000usize;
    let depth = 32usize;
    let mut pending = std::collections::VecDeque::new();
    let mut sent = 0usize;
    let mut checked = 0usize;
    while checked < total {
        while sent < total && pending.len() < depth {
            let len = 1 + (sent * 37) % 300;
            let msg: Vec<u8> = (0..len).map(|i| (sent + i) as u8).collect();
            let head = vm.submit(CONTROLQ, &[&msg], &[len as u32]);
            pending.push_back((head, msg));
            sent += 1;
        }
        let (head, msg) = pending.pop_front().unwrap();
        let got = vm
            .wait_for(CONTROLQ, head, T)
            .unwrap_or_else(|| panic!("round trip {checked} timed out"));
        assert_eq!(got, reversed(&msg), "round trip {checked}");
        checked += 1;
    }
    let stats = vm.queue_stats(CONTROLQ);
    eprintln!("event_idx {event_idx}: {stats:?}");
    assert_eq!(stats.submitted, total as u64);
    assert_eq!(stats.completed, total as u64);
    assert_eq!(vm.in_flight(CONTROLQ), 0);
}

#[test]
fn ten_thousand_round_trips() {
    round_trips(false, 256);
}

#[test]
fn ten_thousand_round_trips_event_idx_small_queue() {
    round_trips(true, 64);
}

#[test]
fn malformed_chain_and_restart() {
    let dir = temp_dir();
    let (path, _mock) = start_mock(dir.path());
    let mut vm = TestVm::connect(&path);

    // Readable descriptor outside guest memory, then a valid writable one.
    let out = vm.alloc(16, 16);
    let bad = vm.mem_end() + 0x1000;
    let h = vm.submit_descs(
        CONTROLQ,
        &[
            RawDesc::readable(bad, 8, Some(1)),
            RawDesc::writable(out, 16, None),
        ],
    );
    let used = vm
        .wait_for_used(CONTROLQ, h, T)
        .expect("mock completes bad chains");
    assert_eq!(used.len, 0);
    // Raw chain with valid buffers: data comes back through the raw writable descriptor.
    let inp = vm.alloc(4, 16);
    vm.write_mem(inp, b"wxyz");
    let h = vm.submit_descs(
        CONTROLQ,
        &[
            RawDesc::readable(inp, 4, Some(1)),
            RawDesc::writable(out, 16, None),
        ],
    );
    assert_eq!(vm.wait_for(CONTROLQ, h, T).unwrap(), b"zyxw");

    // The queue keeps working.
    assert_eq!(vm.ctrl(b"still fine", 10), b"enif llits");

    // Guest reset: a stopped queue does not complete anything; restart resets the rings.
    let bases = vm.stop_queues();
    assert_eq!(bases, [3, 0]);
    let h = vm.submit(CONTROLQ, &[b"lost"], &[4]);
    assert_eq!(vm.wait_for(CONTROLQ, h, Duration::from_millis(50)), None);
    assert!(!vm.is_done(CONTROLQ, h));
    assert_eq!(vm.in_flight(CONTROLQ), 1);
    vm.start_queues();
    assert_eq!(vm.in_flight(CONTROLQ), 0);
    assert_eq!(vm.ctrl(b"again", 5), b"niaga");
    assert_eq!(vm.cursor(b"c", 1), b"c");

    // Discarded completions recycle their slots too.
    for _ in 0..600 {
        let h = vm.submit(CURSORQ, &[b"x"], &[1]);
        vm.discard(CURSORQ, h);
    }
    assert_eq!(vm.cursor(b"ok", 2), b"ko");
    vm.disconnect();
}

#[test]
fn guest_blob_scatter_lists() {
    let dir = temp_dir();
    let (path, _mock) = start_mock(dir.path());
    let mut vm = TestVm::builder().blob_pieces(3).connect(&path);

    let entries = vm.alloc_blob_memory(3 * 4096 + 100);
    assert_eq!(entries.len(), 3);
    assert_eq!(
        entries.iter().map(|e| u64::from(e.1)).sum::<u64>(),
        3 * 4096 + 100
    );
    assert!(
        entries[0].0 > entries[1].0,
        "entries are listed in descending order"
    );
    let blob = GuestBlob {
        res_id: 1,
        size: 3 * 4096 + 100,
        entries,
    };
    let data: Vec<u8> = (0..blob.size).map(|i| (i % 251) as u8).collect();
    vm.write_blob(&blob, 0, &data);
    assert_eq!(vm.read_blob(&blob, 0, data.len()), data);
    assert_eq!(vm.read_blob(&blob, 4090, 20), data[4090..4110].to_vec());
    assert_eq!(vm.read_mem(blob.gpa_at(8192), 4), data[8192..8196].to_vec());
    assert_eq!(vm.alloc_blob_memory(4096).len(), 1);
}

#[test]
fn encoders_follow_the_spec_layouts() {
    let h = hdr(
        CMD_SUBMIT_3D,
        FLAG_FENCE | FLAG_INFO_RING_IDX,
        0x1122334455667788,
        9,
        1,
    );
    assert_eq!(
        h,
        [
            0x07, 0x02, 0, 0, 3, 0, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 9, 0, 0,
            0, 1, 0, 0, 0
        ]
    );
    let p = parse_hdr(&h);
    assert_eq!(
        (p.type_, p.fence_id, p.ctx_id, p.ring_idx),
        (0x207, 0x1122334455667788, 9, 1)
    );

    let s = req_submit_3d(3, &cd_poll(), Some((5, Some(1))));
    assert_eq!(s.len(), 32 + 16);
    assert_eq!(le32(&s, 24), 16);
    assert_eq!(le32(&s, 4), 3);
    assert_eq!(s[32], CD_CMD_POLL);
    assert_eq!(u16::from_le_bytes([s[34], s[35]]), 16);

    assert_eq!(req_ctx_create(1, 5, b"x").len(), 96);
    assert_eq!(le32(&req_ctx_create(1, 5, b"x"), 28), 5);
    let cb = CreateBlob {
        res_id: 7,
        blob_mem: BLOB_MEM_GUEST,
        blob_flags: BLOB_FLAG_USE_MAPPABLE,
        size: 8192,
        entries: vec![(0x1000, 4096), (0x3000, 4096)],
        ..Default::default()
    };
    let e = cb.encode();
    assert_eq!(e.len(), 56 + 32);
    assert_eq!(
        (le32(&e, 24), le32(&e, 28), le32(&e, 32), le32(&e, 36)),
        (7, 1, 1, 2)
    );
    assert_eq!(
        (le64(&e, 48), le64(&e, 56), le32(&e, 64)),
        (8192, 0x1000, 4096)
    );

    assert_eq!(cd_init(1, 2, 3).len(), 20);
    assert_eq!(cd_init_legacy(1, 3).len(), 16);
    assert_eq!(cd_init_v24(1, 2, 3, 1).len(), 24);
    assert_eq!(cd_init_36(1, 2, 3, [9; 16]).len(), 36);
    for v in [
        cd_init(1, 2, 3),
        cd_init_v24(1, 2, 3, 1),
        cd_init_36(1, 2, 3, [9; 16]),
    ] {
        assert_eq!(usize::from(u16::from_le_bytes([v[2], v[3]])), v.len());
        assert_eq!((le32(&v, 8), le32(&v, 12), le32(&v, 16)), (1, 2, 3));
    }

    let send = cd_send(
        b"data",
        &[
            (10, CD_ID_TYPE_VIRTGPU_BLOB),
            (0x8000_0001, CD_ID_TYPE_READ_PIPE),
        ],
    );
    assert_eq!(send.len(), 356);
    assert_eq!(u16::from_le_bytes([send[2], send[3]]), 356);
    assert_eq!((le32(&send, 8), le32(&send, 12)), (2, 4));
    assert_eq!((le32(&send, 16), le32(&send, 20)), (10, 0x8000_0001));
    assert_eq!((le32(&send, 128), le32(&send, 132)), (1, 3));
    assert_eq!(&send[352..], b"data");

    let w = cd_write(0x8000_0001, b"abc", true);
    assert_eq!(w.len(), 27);
    assert_eq!(
        (w[0], le32(&w, 8), le32(&w, 12), le32(&w, 16)),
        (CD_CMD_WRITE, 0x8000_0001, 1, 3)
    );
    assert_eq!(cd_image_requirements(1, 2, 3, 4).len(), 24);

    // Channel ring decoding.
    let mut ring = vec![0u8; 4096];
    ring[0] = CD_CMD_RECEIVE;
    ring[8..12].copy_from_slice(&1u32.to_le_bytes());
    ring[12..16].copy_from_slice(&3u32.to_le_bytes());
    ring[16..20].copy_from_slice(&5u32.to_le_bytes());
    ring[128..132].copy_from_slice(&4u32.to_le_bytes());
    ring[352..355].copy_from_slice(b"xyz");
    assert_eq!(
        decode_channel_msg(&ring),
        ChannelMsg::Receive {
            ids: vec![(5, 4, 0)],
            data: b"xyz".to_vec()
        }
    );
    let mut ring = vec![0u8; 4096];
    ring[0] = CD_CMD_READ;
    ring[8..12].copy_from_slice(&0x8000_0001u32.to_le_bytes());
    ring[12..16].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(
        decode_channel_msg(&ring),
        ChannelMsg::Read {
            id: 0x8000_0001,
            hang_up: true,
            data: vec![]
        }
    );
    assert_eq!(decode_channel_msg(&[0xee; 4096]), ChannelMsg::Untouched);
    assert_eq!(decode_channel_msg(&[9; 64]), ChannelMsg::Other(9));
}

#[test]
fn channel_listener_and_daemon_path() {
    let dir = temp_dir();
    let (p1, _l1) = channel_listener(dir.path());
    let (p2, l2) = channel_listener(dir.path());
    assert_ne!(p1, p2);
    let c = std::os::unix::net::UnixStream::connect(&p2).unwrap();
    assert!(accept_timeout(&l2, T).is_some());
    drop(c);
    assert!(daemon_bin().ends_with(DAEMON_NAME));
}

#[test]
#[should_panic(expected = "never signalled the call eventfd")]
fn silent_completion_is_reported() {
    let dir = temp_dir();
    let (path, mock) = start_mock(dir.path());
    let mut vm = TestVm::connect(&path);
    mock.lock().unwrap().signal = false;
    let h = vm.submit(CONTROLQ, &[b"quiet"], &[5]);
    let _ = vm.wait_for(CONTROLQ, h, Duration::from_millis(200));
}

// ---- host-visible shared memory ----------------------------------------------------------

/// Asks the mock (through the control queue) to map `len` bytes of its memfd at `fd_offset`
/// into region `shmid` at `shm_offset`, or to unmap; true if the VMM accepted.
fn shm_cmd(
    vm: &mut TestVm,
    op: u8,
    shmid: u8,
    fd_offset: u64,
    shm_offset: u64,
    len: u64,
    writable: bool,
) -> bool {
    let mut c = b"SHM".to_vec();
    c.extend_from_slice(&[op, shmid, u8::from(writable), 0, 0]);
    for v in [fd_offset, shm_offset, len] {
        c.extend_from_slice(&v.to_le_bytes());
    }
    let r = vm.ctrl(&c, 8);
    u64::from_le_bytes(r[..8].try_into().unwrap()) == 0
}

fn map(vm: &mut TestVm, fd_offset: u64, shm_offset: u64, len: u64, writable: bool) -> bool {
    shm_cmd(vm, SHM_CMD_MAP, 1, fd_offset, shm_offset, len, writable)
}

fn unmap(vm: &mut TestVm, shm_offset: u64, len: u64) -> bool {
    shm_cmd(vm, SHM_CMD_UNMAP, 1, 0, shm_offset, len, false)
}

fn mmap_req(shm_offset: u64, len: u64) -> VhostUserMMap {
    VhostUserMMap {
        shmid: 1,
        shm_offset,
        len,
        flags: VhostUserMMapFlags::WRITABLE.bits(),
        ..Default::default()
    }
}

fn memfd_read(mock: &SharedMock, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    mock.lock()
        .unwrap()
        .memfd
        .read_exact_at(&mut b, off)
        .unwrap();
    b
}

#[test]
fn shm_config_and_region() {
    let dir = temp_dir();
    let (path, _mock) = start_mock(dir.path());
    let vm = TestVm::connect(&path);
    assert_ne!(vm.acked_protocol_features() & P::SHMEM.bits(), 0);
    assert!(vm.has_backend_req_channel());
    assert_eq!(vm.shm_size(), Some(64 * MIB));
    let cfg = vm.shm_config().expect("GET_SHMEM_CONFIG was sent");
    assert_eq!(cfg.nregions, 1);
    assert_eq!(cfg.sizes.len(), 256);
    assert_eq!((cfg.size(0), cfg.size(1), cfg.size(2)), (0, 64 * MIB, 0));
    assert!(vm.shm_mappings().is_empty());
    assert_eq!(vm.shm_try_read(0, 1), None);
    assert_eq!(vm.shm_stats(), ShmStats::default());
}

#[test]
fn shm_map_read_write_unmap() {
    let dir = temp_dir();
    let (path, mock) = start_mock(dir.path());
    let mut vm = TestVm::connect(&path);

    // Writable: two pages of the memfd from 8 KiB, at region offset 64 KiB.
    assert!(map(&mut vm, 0x2000, 0x10000, 0x2000, true));
    assert_eq!(
        vm.shm_mapping_at(0x11fff),
        Some(ShmMapping {
            offset: 0x10000,
            len: 0x2000,
            writable: true
        })
    );
    assert_eq!(vm.shm_mapping_at(0x12000), None);
    assert_eq!(vm.shm_read(0x10000, 0x2000), pattern_range(0x2000, 0x2000));
    // Shared both ways: the guest's write shows in the memfd, the host's in the region.
    vm.shm_write(0x10ffe, b"guest");
    assert_eq!(memfd_read(&mock, 0x2ffe, 5), b"guest");
    mock.lock()
        .unwrap()
        .memfd
        .write_all_at(b"host", 0x3000)
        .unwrap();
    assert_eq!(vm.shm_read(0x11000, 4), b"host");

    // Read-only, right after it: reads span both, writes are refused by the probe.
    assert!(map(&mut vm, 0x8000, 0x12000, 0x1000, false));
    assert_eq!(vm.shm_read(0x11ffc, 8)[4..], pattern_range(0x8000, 4)[..]);
    assert!(!vm.shm_try_write(0x12000, b"x"));
    assert!(!vm.shm_try_write(0x11fff, b"xy"), "partly read-only");
    assert!(vm.shm_try_write(0x11fff, b"z"));
    assert_eq!(memfd_read(&mock, 0x3fff, 1), b"z");
    assert_eq!(vm.shm_mappings().len(), 2);

    // Unmap must name exactly one mapping.
    assert!(!unmap(&mut vm, 0x10000, 0x1000));
    assert!(!unmap(&mut vm, 0x10000, 0x3000));
    assert!(unmap(&mut vm, 0x10000, 0x2000));
    assert_eq!(vm.shm_mapping_at(0x10000), None);
    assert_eq!(vm.shm_try_read(0x10000, 1), None);
    assert!(vm.shm_try_read(0x12000, 1).is_some());
    // The same range can be mapped again, with other content.
    assert!(map(&mut vm, 0, 0x10000, 0x2000, true));
    assert_eq!(vm.shm_read(0x10000, 16), pattern_range(0, 16));
    assert!(unmap(&mut vm, 0x12000, 0x1000));

    let s = vm.shm_stats();
    assert_eq!((s.maps, s.unmaps, s.refused, s.violations), (3, 2, 2, 0));
    assert_eq!(s.bad_requests, 0);
    vm.shm_assert_no_violations();
    // The queues work as before.
    assert_eq!(vm.ctrl(b"abc", 3), b"cba");
}

#[test]
fn shm_refusals() {
    let dir = temp_dir();
    let (path, mock) = start_mock(dir.path());
    let mut vm = TestVm::connect(&path);
    let size = 64 * MIB;
    assert!(map(&mut vm, 0, 0x4000, 0x4000, true));

    let refused = |vm: &mut TestVm, ok: bool, why: &str| {
        assert!(!ok, "{why}: accepted");
        let last = vm.shm_last_refusal().unwrap_or_default();
        eprintln!("{why}: {last}");
        last
    };
    let r = map(&mut vm, 0, 0x7000, 0x2000, true);
    assert!(refused(&mut vm, r, "overlap at the end").contains("overlaps"));
    let r = map(&mut vm, 0, 0x3000, 0x2000, true);
    assert!(refused(&mut vm, r, "overlap at the start").contains("overlaps"));
    let r = map(&mut vm, 0, 0x2000, 0x10000, true);
    assert!(refused(&mut vm, r, "covers a mapping").contains("overlaps"));
    let r = map(&mut vm, 0, size - 0x1000, 0x2000, true);
    assert!(refused(&mut vm, r, "past the region").contains("outside"));
    let r = map(&mut vm, 0, 0x100, 0x1000, true);
    assert!(refused(&mut vm, r, "unaligned offset").contains("aligned"));
    let r = map(&mut vm, 0x10, 0x10000, 0x1000, true);
    assert!(refused(&mut vm, r, "unaligned fd_offset").contains("aligned"));
    let r = map(&mut vm, MOCK_MEMFD_SIZE - 0x1000, 0x10000, 0x2000, true);
    assert!(refused(&mut vm, r, "past the end of the memfd").contains("past the end"));
    // A file whose size is not a page multiple: like QEMU 11.1.3, even its last, partial page is
    // refused (the mapping would run past the end of the file).
    mock.lock()
        .unwrap()
        .memfd
        .set_len(MOCK_MEMFD_SIZE - 100)
        .unwrap();
    let r = map(&mut vm, MOCK_MEMFD_SIZE - 0x1000, 0x30000, 0x1000, false);
    assert!(refused(&mut vm, r, "the last, partial page").contains("QEMU refuses"));
    let r = map(&mut vm, MOCK_MEMFD_SIZE, 0x40000, 0x1000, true);
    assert!(refused(&mut vm, r, "a page wholly past the end").contains("past the end"));
    let r = shm_cmd(&mut vm, SHM_CMD_MAP, 0, 0, 0x10000, 0x1000, true);
    assert!(refused(&mut vm, r, "shmid 0").contains("shmid"));
    let r = unmap(&mut vm, 0x10000, 0x1000);
    assert!(refused(&mut vm, r, "unmap of nothing").contains("not exactly"));

    // Refusal on demand, then normal service again.
    vm.shm_refuse_next(2);
    let r = map(&mut vm, 0, 0x10000, 0x1000, true);
    assert!(refused(&mut vm, r, "refuse_next 1").contains("shm_refuse_next"));
    let r = map(&mut vm, 0, 0x10000, 0x1000, true);
    assert!(refused(&mut vm, r, "refuse_next 2").contains("shm_refuse_next"));
    assert!(map(&mut vm, 0, 0x10000, 0x1000, true));
    // The last page of the region.
    assert!(map(&mut vm, 0, size - 0x1000, 0x1000, false));
    assert_eq!(vm.shm_read(size - 16, 16), pattern_range(0x1000 - 16, 16));

    let s = vm.shm_stats();
    // One map fewer and one refusal more than before: the partial last page is refused now.
    assert_eq!((s.maps, s.unmaps, s.refused, s.violations), (3, 0, 13, 0));
    assert_eq!(vm.shm_mappings().len(), 3);
}

#[test]
#[should_panic(expected = "is not mapped")]
fn shm_read_of_unmapped_range_panics() {
    let dir = temp_dir();
    let (path, _mock) = start_mock(dir.path());
    let mut vm = TestVm::connect(&path);
    assert!(map(&mut vm, 0, 0, 0x1000, true));
    let _ = vm.shm_read(0xff0, 0x20);
}

#[test]
#[should_panic(expected = "read-only")]
fn shm_write_to_read_only_mapping_panics() {
    let dir = temp_dir();
    let (path, _mock) = start_mock(dir.path());
    let mut vm = TestVm::connect(&path);
    assert!(map(&mut vm, 0, 0, 0x1000, false));
    vm.shm_write(0, b"no");
}

#[test]
#[should_panic(expected = "not mapped")]
fn shm_try_write_to_unmapped_range_panics() {
    let dir = temp_dir();
    let (path, _mock) = start_mock(dir.path());
    let vm = TestVm::connect(&path);
    let _ = vm.shm_try_write(0, b"no");
}

#[test]
fn shm_requests_while_stopped_are_violations_and_reset_drops_mappings() {
    let dir = temp_dir();
    let (path, mock) = start_mock(dir.path());
    let mut vm = TestVm::connect(&path);
    assert!(map(&mut vm, 0, 0, 0x2000, true));
    let backend = mock.lock().unwrap().backend.clone().unwrap();

    vm.stop_queues();
    // A backend that unmaps (or maps) after the stop: refused and recorded, no crash.
    assert!(backend.shmem_unmap(&mmap_req(0, 0x2000)).is_err());
    assert!(backend
        .shmem_map(&mmap_req(0x4000, 0x1000), &mock.lock().unwrap().memfd)
        .is_err());
    let s = vm.shm_stats();
    assert_eq!((s.violations, s.refused, s.unmaps), (2, 2, 0));
    assert!(vm
        .shm_last_refusal()
        .unwrap()
        .contains("PROTOCOL VIOLATION"));
    // Until the restart the mapping is still there.
    assert_eq!(vm.shm_read(0, 4), pattern_range(0, 4));

    // Restart after the stop = guest reset: the VMM drops every mapping itself.
    vm.start_queues();
    assert!(vm.shm_mappings().is_empty());
    assert_eq!(vm.shm_stats().dropped_at_reset, 1);
    assert!(map(&mut vm, 0x1000, 0, 0x2000, true));
    assert_eq!(vm.shm_read(0, 4), pattern_range(0x1000, 4));
    assert_eq!(vm.shm_stats().violations, 2);
}

#[test]
#[should_panic(expected = "while the device was not started")]
fn shm_map_before_start_is_a_violation() {
    // Refused and counted; then `shm_assert_no_violations` at the end must panic.
    let dir = temp_dir();
    let (path, mock) = start_mock(dir.path());
    let mut vm = TestVm::builder().start_queues(false).connect(&path);
    let backend = mock.lock().unwrap().backend.clone().unwrap();
    let memfd = mock.lock().unwrap().memfd.try_clone().unwrap();
    assert!(backend.shmem_map(&mmap_req(0, 0x1000), &memfd).is_err());
    assert_eq!(vm.shm_stats().violations, 1);
    vm.start_queues();
    assert!(backend.shmem_map(&mmap_req(0, 0x1000), &memfd).is_ok());
    assert_eq!(vm.shm_wait_mapping(0, T).map(|m| m.len), Some(0x1000));
    vm.shm_assert_no_violations();
}

#[test]
fn shm_not_negotiated_or_not_queried() {
    let dir = temp_dir();
    let (path, mock) = start_mock(dir.path());
    let mut vm = TestVm::builder().shmem(false).connect(&path);
    assert_eq!(vm.acked_protocol_features() & P::SHMEM.bits(), 0);
    assert_eq!(vm.shm_size(), None);
    assert!(vm.shm_config().is_none());
    // The backend's request never leaves it (SHMEM not negotiated).
    assert!(!map(&mut vm, 0, 0, 0x1000, true));
    assert_eq!(vm.shm_stats(), ShmStats::default());
    drop(vm);
    drop(mock);

    let (path, _mock) = start_mock(dir.path());
    let mut vm = TestVm::builder().shm_config_query(false).connect(&path);
    assert_ne!(vm.acked_protocol_features() & P::SHMEM.bits(), 0);
    assert_eq!(vm.shm_size(), None);
    assert!(!map(&mut vm, 0, 0, 0x1000, true));
    assert!(vm
        .shm_last_refusal()
        .unwrap()
        .contains("no shared memory region"));
    assert_eq!(vm.shm_stats().refused, 1);
}

#[test]
fn shm_eight_gib_region_is_only_reserved() {
    let dir = temp_dir();
    let size = 8 << 30;
    let (path, _mock) = start_mock_shm(dir.path(), size);
    let mut vm = TestVm::connect(&path);
    assert_eq!(vm.shm_size(), Some(size));
    assert!(map(&mut vm, 0x4000, size - 0x4000, 0x4000, true));
    assert!(map(&mut vm, 0, 0, 0x1000, false));
    assert_eq!(vm.shm_read(size - 0x4000, 8), pattern_range(0x4000, 8));
    vm.shm_write(size - 8, b"the end!");
    assert_eq!(vm.shm_read(size - 8, 8), b"the end!");
}

#[test]
fn shm_mappings_in_set_mem_table() {
    let dir = temp_dir();
    let (path, mock) = start_mock(dir.path());
    let mut vm = TestVm::connect(&path);
    assert!(map(&mut vm, 0x3000, 0x20000, 0x2000, true));
    vm.set_mem_table_with_shm();
    // The backend now sees the mapping as guest memory at shm_gpa + offset.
    let gpa = vm.shm_gpa() + 0x20000;
    let mut b = [0u8; 16];
    mock.lock()
        .unwrap()
        .mem
        .memory()
        .read_slice(&mut b, GuestAddress(gpa))
        .unwrap();
    assert_eq!(b[..], pattern_range(0x3000, 16)[..]);
    vm.shm_write(0x20000, b"via the guest");
    let mut b = [0u8; 13];
    mock.lock()
        .unwrap()
        .mem
        .memory()
        .read_slice(&mut b, GuestAddress(gpa))
        .unwrap();
    assert_eq!(&b, b"via the guest");
    assert_eq!(vm.ctrl(b"still", 5), b"llits");

    assert!(unmap(&mut vm, 0x20000, 0x2000));
    vm.set_mem_table_with_shm();
    assert!(mock
        .lock()
        .unwrap()
        .mem
        .memory()
        .read_slice(&mut b, GuestAddress(gpa))
        .is_err());
    assert_eq!(vm.ctrl(b"ok", 2), b"ko");
}

#[test]
fn shm_channel_closed_by_either_side() {
    let dir = temp_dir();
    // The VMM closes it: the backend's request fails, nothing is mapped.
    let (path, _mock) = start_mock(dir.path());
    let mut vm = TestVm::connect(&path);
    vm.close_backend_req_channel();
    assert!(!vm.has_backend_req_channel());
    assert!(!map(&mut vm, 0, 0, 0x1000, true));
    assert!(vm.shm_mappings().is_empty());

    // The backend closes it: the serving thread notices and ends.
    let (path, mock) = start_mock(dir.path());
    let mut vm = TestVm::connect(&path);
    assert!(map(&mut vm, 0, 0, 0x1000, true));
    mock.lock().unwrap().backend = None;
    let deadline = std::time::Instant::now() + T;
    while vm.has_backend_req_channel() {
        assert!(
            std::time::Instant::now() < deadline,
            "request thread still running"
        );
        thread::sleep(Duration::from_millis(2));
    }
    // Mappings outlive the channel.
    assert_eq!(vm.shm_read(0, 4), pattern_range(0, 4));
}

// ---- VMM imitation: crosvm mode and the lifecycle sequences ------------------------------

/// crosvm mode against the mock, whose queues hold at most 1024 entries.
fn crosvm_vm(path: &Path) -> TestVm {
    TestVm::builder()
        .vmm(VmmKind::Crosvm)
        .queue_size(256)
        .connect(path)
}

#[test]
fn crosvm_mode_negotiates_as_crosvm_does() {
    let dir = temp_dir();
    let (path, _mock) = start_mock(dir.path());
    let mut vm = crosvm_vm(&path);
    assert_eq!(vm.vmm(), VmmKind::Crosvm);
    // vhost-user-backend adds REPLY_ACK to what the mock offers.
    let mock_protocol = (P::CONFIG | P::MQ | P::BACKEND_REQ | P::SHMEM | P::REPLY_ACK).bits();
    assert_eq!(
        vm.acked_protocol_features(),
        mock_protocol & CROSVM_PROTOCOL_MASK
    );
    assert_eq!(vm.queue_num(), Some(2));
    assert!(vm.has_backend_req_channel());
    assert_eq!(vm.get_config(8, 4), [1, 0, 0, 0]);
    assert_eq!(vm.ctrl(b"abc", 3), b"cba");
    // The default queue size is crosvm's.
    let b = TestVm::builder().vmm(VmmKind::Crosvm);
    assert!(format!("{b:?}").contains("queue_sizes: [32768, 32768]"));
}

#[test]
fn lifecycle_sequences_per_vmm() {
    for kind in [VmmKind::Qemu, VmmKind::Crosvm] {
        let dir = temp_dir();
        let (path, _mock) = start_mock(dir.path());
        let mut vm = TestVm::builder().vmm(kind).queue_size(256).connect(&path);
        assert_eq!(vm.ctrl(b"one", 3), b"eno");
        assert_eq!(vm.pause(), [1, 0]);
        vm.resume();
        assert_eq!(vm.ctrl(b"two", 3), b"owt", "{kind:?}: the rings continue");
        assert_eq!(vm.guest_reset(), [2, 0]);
        vm.reprobe();
        assert_eq!(vm.ctrl(b"three", 5), b"eerht", "{kind:?}: fresh rings work");
        let log = vm.take_lifecycle_log();
        eprintln!("{kind:?}:\n  {}", log.join("\n  "));
        let stop = match kind {
            VmmKind::Crosvm => vec![
                "-- stop",
                "SET_VRING_ENABLE(0, 0)",
                "GET_VRING_BASE(0) = B0",
                "SET_VRING_ENABLE(1, 0)",
                "GET_VRING_BASE(1) = 0",
            ],
            VmmKind::Qemu => vec![
                "-- stop",
                "SET_VRING_ENABLE(0, 0)",
                "SET_VRING_ENABLE(1, 0)",
                "GET_VRING_BASE(0) = B0",
                "GET_VRING_BASE(1) = 0",
                "SET_VRING_CALL(0)",
                "SET_VRING_CALL(1)",
            ],
        };
        let start = |b0: &str| -> Vec<String> {
            let v: Vec<&str> = match kind {
                VmmKind::Crosvm => vec![
                    "SET_MEM_TABLE",
                    "SET_VRING_NUM(0, 256)",
                    "SET_VRING_ADDR(0)",
                    "SET_VRING_BASE(0, B0)",
                    "SET_VRING_CALL(0)",
                    "SET_VRING_KICK(0)",
                    "SET_VRING_ENABLE(0, 1)",
                    "SET_VRING_NUM(1, 256)",
                    "SET_VRING_ADDR(1)",
                    "SET_VRING_BASE(1, 0)",
                    "SET_VRING_CALL(1)",
                    "SET_VRING_KICK(1)",
                    "SET_VRING_ENABLE(1, 1)",
                ],
                VmmKind::Qemu => vec![
                    "SET_VRING_CALL(0)",
                    "SET_VRING_CALL(1)",
                    "SET_FEATURES(F)",
                    "SET_MEM_TABLE (RAM + 0 mappings)",
                    "SET_VRING_NUM(0, 256)",
                    "SET_VRING_BASE(0, B0)",
                    "SET_VRING_ADDR(0)",
                    "SET_VRING_KICK(0)",
                    "SET_VRING_NUM(1, 256)",
                    "SET_VRING_BASE(1, 0)",
                    "SET_VRING_ADDR(1)",
                    "SET_VRING_KICK(1)",
                    "SET_VRING_ENABLE(0, 1)",
                    "SET_VRING_ENABLE(1, 1)",
                    "SET_VRING_CALL(0)",
                    "SET_VRING_CALL(1)",
                ],
            };
            v.iter().map(|s| s.replace("B0", b0)).collect()
        };
        let features = format!("{:#x}", vm.acked_features());
        let fill = |v: Vec<&str>, b0: &str| -> Vec<String> {
            v.iter().map(|s| s.replace("B0", b0)).collect()
        };
        let mut want: Vec<String> = fill(stop.clone(), "1");
        want.push("-- start (same rings)".into());
        want.extend(start("1"));
        want.extend(fill(stop, "2"));
        if kind == VmmKind::Qemu {
            want.push("(QEMU drops every mapping)".into());
        }
        want.push("-- start (rings re-initialised)".into());
        want.extend(start("0"));
        let want: Vec<String> = want
            .iter()
            .map(|s| s.replace("(F)", &format!("({features})")))
            .collect();
        assert_eq!(log, want, "{kind:?}");
    }
}

#[test]
fn mappings_across_pause_and_guest_reset_per_vmm() {
    for kind in [VmmKind::Qemu, VmmKind::Crosvm] {
        let dir = temp_dir();
        let (path, _mock) = start_mock(dir.path());
        let mut vm = TestVm::builder().vmm(kind).queue_size(256).connect(&path);
        assert!(map(&mut vm, 0, 0, 0x2000, true));
        vm.pause();
        vm.resume();
        assert_eq!(
            vm.shm_mappings().len(),
            1,
            "{kind:?}: a pause keeps mappings"
        );
        vm.guest_reset();
        let kept = vm.shm_mappings().len();
        vm.reprobe();
        match kind {
            VmmKind::Qemu => assert_eq!((kept, vm.shm_stats().dropped_at_reset), (0, 1)),
            VmmKind::Crosvm => {
                assert_eq!((kept, vm.shm_stats().dropped_at_reset), (1, 0));
                // crosvm unmaps by offset: the length in the request does not matter.
                assert!(unmap(&mut vm, 0, 0x1000));
                assert!(vm.shm_mappings().is_empty());
            }
        }
        assert_eq!(vm.shm_stats().violations, 0);
    }
}

#[test]
fn crosvm_mode_memory_slot_limit() {
    let dir = temp_dir();
    let (path, _mock) = start_mock(dir.path());
    let mut vm = TestVm::builder()
        .vmm(VmmKind::Qemu)
        .vmm_max_mappings(2)
        .connect(&path);
    assert!(map(&mut vm, 0, 0, 0x1000, true));
    assert!(map(&mut vm, 0, 0x1000, 0x1000, true));
    assert!(
        !map(&mut vm, 0, 0x2000, 0x1000, true),
        "third mapping refused"
    );
    assert!(vm
        .shm_last_refusal()
        .unwrap()
        .contains("no free memory slot"));
    assert_eq!(vm.shm_fatal(), None, "QEMU mode only logs a refusal");
}

#[test]
#[should_panic(expected = "crosvm ends the VM")]
fn crosvm_mode_refusal_ends_the_session() {
    let dir = temp_dir();
    let (path, _mock) = start_mock(dir.path());
    let mut vm = crosvm_vm(&path);
    assert!(map(&mut vm, 0, 0, 0x2000, true));
    // Overlaps: KVM refuses the slot (EEXIST) and crosvm ends the VM.
    assert!(!map(&mut vm, 0, 0x1000, 0x1000, true));
    assert!(vm.shm_fatal().unwrap().contains("overlaps"));
    // The next request finds the connection gone.
    vm.ctrl(b"anyone?", 7);
}
