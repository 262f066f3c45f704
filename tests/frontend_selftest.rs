//! Self-test of the test frontend in `tests/support` against an in-process vhost-user
//! backend (`vhost_user_backend::VhostUserDaemon` with a mock device), so the frontend is
//! known to work independently of the real daemon.

mod support;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use support::*;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Backend, GpuBackend, Listener};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
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
}

const MOCK_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_GPU_F_VIRGL
    | VIRTIO_GPU_F_RESOURCE_UUID
    | VIRTIO_GPU_F_RESOURCE_BLOB
    | VIRTIO_GPU_F_CONTEXT_INIT
    | VIRTIO_RING_F_EVENT_IDX
    | VHOST_USER_F_PROTOCOL_FEATURES;

impl Mock {
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
                    input.reverse();
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

    fn set_backend_req_fd(&mut self, _backend: Backend) {
        self.backend_req = true;
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
    let path = dir.join(format!("mock-{}.sock", rand_suffix()));
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mock = Arc::new(Mutex::new(Mock {
        mem: mem.clone(),
        config: [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0],
        gpu_sockets: 0,
        backend_req: false,
        acked: 0,
        signal: true,
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
    assert!(vm.backend_req_channel().is_some());
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
