//! A fake VMM: guest memory in a memfd, the vhost-user handshake a VMM performs, and the
//! two virtio-gpu queues (controlq 0, cursorq 1) driven from guest memory.
//!
//! Everything goes through the vhost-user socket as QEMU or crosvm would send it, mostly via
//! the `vhost` crate's `Frontend`. Two messages are written by hand: GPU_SET_SOCKET (the
//! `Frontend` has no method for it) and GET_CONFIG (the `Frontend` hangs on an error reply).
//!
//! Host-visible shared memory (protocol feature SHMEM) lives in [`super::shm`]: when SHMEM is
//! negotiated the VMM asks GET_SHMEM_CONFIG, reserves region 1, and a thread serves
//! SHMEM_MAP/UNMAP on the backend request channel; tests use the `shm_*` methods.
//!
//! Two VMMs are imitated ([`VmmKind`]): QEMU (the default, and what every test did before the
//! choice existed) and crosvm, message for message as `crosvm run --vhost-user type=gpu,...`
//! drives a backend. The lifecycle methods ([`TestVm::pause`], [`TestVm::resume`],
//! [`TestVm::guest_reset`], [`TestVm::reprobe`]) send each VMM's sequence for a VM pause, its
//! end and a guest device reset, and record what they sent ([`TestVm::lifecycle_log`]).
//! [`TestVm::stop_queues`]/[`TestVm::start_queues`] keep their older, VMM-neutral meaning:
//! stop, then come back as a re-initialised driver.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::shm::{Shm, ShmConfig, ShmMapping, ShmMode, ShmStats, DEFAULT_SHM_GPA};
use super::virtq::{align_up, ring_layout, Arena, QueueStats, RawDesc, Used, VirtQueue};

/// virtio-gpu feature bits (as masks).
pub const VIRTIO_GPU_F_VIRGL: u64 = 1 << 0;
pub const VIRTIO_GPU_F_EDID: u64 = 1 << 1;
pub const VIRTIO_GPU_F_RESOURCE_UUID: u64 = 1 << 2;
pub const VIRTIO_GPU_F_RESOURCE_BLOB: u64 = 1 << 3;
pub const VIRTIO_GPU_F_CONTEXT_INIT: u64 = 1 << 4;
/// Transport feature bits (as masks).
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_F_RING_RESET: u64 = 1 << 40;

/// What `TestVm` acks by default (intersected with what the backend offers).
pub const DEFAULT_ACK_MASK: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_GPU_F_VIRGL
    | VIRTIO_GPU_F_RESOURCE_UUID
    | VIRTIO_GPU_F_RESOURCE_BLOB
    | VIRTIO_GPU_F_CONTEXT_INIT
    | VHOST_USER_F_PROTOCOL_FEATURES;

/// Queue indexes.
pub const CONTROLQ: usize = 0;
pub const CURSORQ: usize = 1;

/// vhost-user request codes sent by hand.
pub const VHOST_USER_GET_CONFIG: u32 = 24;
pub const VHOST_USER_GPU_SET_SOCKET: u32 = 33;
/// vhost-user header flags.
pub const VHOST_USER_VERSION: u32 = 0x1;
pub const VHOST_USER_REPLY: u32 = 0x4;
pub const VHOST_USER_NEED_REPLY: u32 = 0x8;

/// How long `ctrl`/`cursor` wait for a response.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// crosvm's default queue size (`Queue::MAX_SIZE`), used unless `max-queue-size` is given.
pub const CROSVM_QUEUE_SIZE: u16 = 32768;

/// Which VMM the test frontend imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmmKind {
    /// QEMU 11.1 (`vhost-user-test-device-pci`), the default: NEED_REPLY on its own requests
    /// once REPLY_ACK is acked, SET_FEATURES at every start, SHMEM requests only between
    /// start and stop (it crashes otherwise), mappings dropped at a guest reset, an unmap must
    /// name a whole mapping, a refused request is only logged.
    Qemu,
    /// crosvm (`devices/src/virtio/vhost_user_frontend`): protocol features CONFIG, MQ,
    /// BACKEND_REQ, DEVICE_STATE, SHMEM and REPLY_ACK, but NEED_REPLY never set on its own
    /// requests; SET_BACKEND_REQ_FD before GET_QUEUE_NUM; queues of 32 768 entries; GET_CONFIG
    /// with flags WRITABLE; no SET_VRING_ERR, no GPU_SET_SOCKET; SET_FEATURES only when the
    /// acked set changed; mappings kept across a guest reset, one KVM memory slot each, unmap
    /// by offset; any refused SHMEM request ends the VM ([`ShmMode::crosvm`]).
    Crosvm,
}

/// The protocol features crosvm is willing to ack.
pub const CROSVM_PROTOCOL_MASK: u64 = VhostUserProtocolFeatures::CONFIG.bits()
    | VhostUserProtocolFeatures::MQ.bits()
    | VhostUserProtocolFeatures::BACKEND_REQ.bits()
    | VhostUserProtocolFeatures::DEVICE_STATE.bits()
    | VhostUserProtocolFeatures::SHMEM.bits()
    | VhostUserProtocolFeatures::REPLY_ACK.bits();

const MIB: u64 = 1 << 20;

/// Options for [`TestVm`]; start with [`TestVm::builder`].
#[derive(Clone, Debug)]
pub struct TestVmBuilder {
    mem_size: u64,
    mem_base: u64,
    queue_sizes: [u16; 2],
    features: Option<u64>,
    event_idx: bool,
    protocol_mask: u64,
    need_reply: bool,
    start_queues: bool,
    always_kick: bool,
    connect_timeout: Duration,
    blob_pieces: usize,
    shm_config_query: bool,
    shm_gpa: u64,
    vmm: VmmKind,
    shm_mode: ShmMode,
    qemu_mem_table_updates: bool,
}

impl Default for TestVmBuilder {
    fn default() -> Self {
        TestVmBuilder {
            mem_size: 64 * MIB,
            mem_base: MIB,
            queue_sizes: [256, 256],
            features: None,
            event_idx: false,
            protocol_mask: (VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::BACKEND_REQ
                | VhostUserProtocolFeatures::SHMEM)
                .bits(),
            need_reply: true,
            start_queues: true,
            always_kick: false,
            connect_timeout: Duration::from_secs(10),
            blob_pieces: 2,
            shm_config_query: true,
            shm_gpa: DEFAULT_SHM_GPA,
            vmm: VmmKind::Qemu,
            shm_mode: ShmMode::qemu(),
            qemu_mem_table_updates: false,
        }
    }
}

impl TestVmBuilder {
    /// Imitate `kind` (default [`VmmKind::Qemu`]). For crosvm this also sets the protocol
    /// feature mask ([`CROSVM_PROTOCOL_MASK`]), NEED_REPLY off, both queues to
    /// [`CROSVM_QUEUE_SIZE`] and the shared memory rules ([`ShmMode::crosvm`]); call it
    /// first, then override what a test needs.
    pub fn vmm(mut self, kind: VmmKind) -> Self {
        self.vmm = kind;
        match kind {
            VmmKind::Qemu => {
                let d = TestVmBuilder::default();
                self.protocol_mask = d.protocol_mask;
                self.need_reply = d.need_reply;
                self.queue_sizes = d.queue_sizes;
                self.shm_mode = ShmMode::qemu();
            }
            VmmKind::Crosvm => {
                self.protocol_mask = CROSVM_PROTOCOL_MASK;
                self.need_reply = false;
                self.queue_sizes = [CROSVM_QUEUE_SIZE; 2];
                self.shm_mode = ShmMode::crosvm();
            }
        }
        self
    }

    /// Most simultaneous mappings the VMM accepts (crosvm: KVM memory slots; default
    /// [`super::shm::KVM_X86_USER_MEM_SLOTS`] for crosvm, unlimited for QEMU).
    pub fn vmm_max_mappings(mut self, n: usize) -> Self {
        self.shm_mode.max_mappings = n;
        self
    }

    /// QEMU describes every live mapping in SET_MEM_TABLE, sent again after each map and
    /// unmap (observed with 11.1.3). On: after each request/response round trip that changed
    /// the mapping table, and at every [`TestVm::resume`]/[`TestVm::reprobe`], the test VMM
    /// sends SET_MEM_TABLE with the mappings as QEMU would (default off; QEMU mode only).
    pub fn qemu_mem_table_updates(mut self, on: bool) -> Self {
        self.qemu_mem_table_updates = on;
        self
    }

    /// Guest RAM size (default 64 MiB; at least 4 MiB).
    pub fn mem_size(mut self, bytes: u64) -> Self {
        self.mem_size = bytes;
        self
    }

    /// Guest physical address where RAM starts (default 1 MiB, page aligned).
    pub fn mem_base(mut self, gpa: u64) -> Self {
        self.mem_base = gpa;
        self
    }

    /// Size of both queues (default 256; power of two).
    pub fn queue_size(mut self, n: u16) -> Self {
        self.queue_sizes = [n, n];
        self
    }

    /// Sizes of controlq and cursorq.
    pub fn queue_sizes(mut self, ctrl: u16, cursor: u16) -> Self {
        self.queue_sizes = [ctrl, cursor];
        self
    }

    /// Exact value sent in SET_FEATURES (default: backend ∩ [`DEFAULT_ACK_MASK`], plus
    /// EVENT_IDX when [`Self::event_idx`] is set and offered).
    pub fn features(mut self, acked: u64) -> Self {
        self.features = Some(acked);
        self
    }

    /// Ack VIRTIO_RING_F_EVENT_IDX if the backend offers it (default off). Ignored when
    /// [`Self::features`] is given (then the driver follows whether bit 29 is in it).
    pub fn event_idx(mut self, on: bool) -> Self {
        self.event_idx = on;
        self
    }

    /// Protocol features the VMM is willing to ack (intersected with the backend's offer).
    /// Default CONFIG | REPLY_ACK | MQ | BACKEND_REQ | SHMEM. Replaces the whole mask, so call
    /// [`Self::shmem`] after it to change only SHMEM.
    pub fn protocol_features(mut self, mask: u64) -> Self {
        self.protocol_mask = mask;
        self
    }

    /// Ack VHOST_USER_PROTOCOL_F_SHMEM (bit 22) if offered (default on). Off: no
    /// GET_SHMEM_CONFIG and no region ([`TestVm::shm_size`] is `None`).
    pub fn shmem(mut self, on: bool) -> Self {
        let bit = VhostUserProtocolFeatures::SHMEM.bits();
        if on {
            self.protocol_mask |= bit;
        } else {
            self.protocol_mask &= !bit;
        }
        self
    }

    /// Send GET_SHMEM_CONFIG once SHMEM is acked (default on). Off: SHMEM stays acked but the
    /// VMM knows of no region, so every SHMEM_MAP is refused.
    pub fn shm_config_query(mut self, on: bool) -> Self {
        self.shm_config_query = on;
        self
    }

    /// Guest physical address of the shared memory region, used when mappings are described
    /// in SET_MEM_TABLE (default [`DEFAULT_SHM_GPA`]).
    pub fn shm_gpa(mut self, gpa: u64) -> Self {
        self.shm_gpa = gpa;
        self
    }

    /// Set NEED_REPLY on every request once REPLY_ACK is acked, so backend errors surface on
    /// the call that caused them (default on).
    pub fn need_reply(mut self, on: bool) -> Self {
        self.need_reply = on;
        self
    }

    /// Set up and enable both vrings during `connect` (default on). When off, call
    /// [`TestVm::start_queues`] yourself.
    pub fn start_queues(mut self, on: bool) -> Self {
        self.start_queues = on;
        self
    }

    /// Kick on every submit even when the device suppressed notifications (default off:
    /// the driver honours NO_NOTIFY / avail_event like Linux does).
    pub fn always_kick(mut self, on: bool) -> Self {
        self.always_kick = on;
        self
    }

    /// How long to retry connecting to the socket (default 10 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Number of scatter-list entries for guest blobs larger than one page (default 2).
    pub fn blob_pieces(mut self, n: usize) -> Self {
        self.blob_pieces = n.max(1);
        self
    }

    /// Connects and performs the handshake; panics with the failing step on error.
    pub fn connect(self, socket: impl AsRef<Path>) -> TestVm {
        let path = socket.as_ref().to_path_buf();
        self.try_connect(&path)
            .unwrap_or_else(|e| panic!("vhost-user handshake with {} failed: {e}", path.display()))
    }

    /// Connects and performs the handshake.
    pub fn try_connect(self, socket: impl AsRef<Path>) -> io::Result<TestVm> {
        let stream = connect_with_retry(socket.as_ref(), self.connect_timeout)?;
        TestVm::handshake(self, stream)
    }

    /// Performs the handshake over an already connected socket.
    pub fn connect_stream(self, stream: UnixStream) -> io::Result<TestVm> {
        TestVm::handshake(self, stream)
    }
}

fn connect_with_retry(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

fn step<T>(what: &str, r: vhost::Result<T>) -> io::Result<T> {
    r.map_err(|e| io::Error::other(format!("{what}: {e}")))
}

/// A fake VMM connected to one vhost-user GPU backend.
pub struct TestVm {
    frontend: Frontend,
    /// Second handle on the vhost-user connection for hand-written messages.
    conn: UnixStream,
    mem: GuestMemoryMmap,
    memfd: File,
    mem_base: u64,
    mem_size: u64,
    queues: Vec<VirtQueue>,
    heap: Arena,
    opts: TestVmBuilder,
    backend_features: u64,
    acked_features: u64,
    protocol_features: u64,
    acked_protocol_features: u64,
    queue_num: Option<u64>,
    gpu_socket: Option<UnixStream>,
    next_fence: u64,
    next_res: u32,
    next_ctx: u32,
    pub(crate) blob_pieces: usize,
    /// Timeout used by `ctrl`/`cursor` and the gpu helpers (default 5 s).
    pub timeout: Duration,
    vmm: VmmKind,
    /// Bases GET_VRING_BASE reported at the last [`TestVm::pause`], for [`TestVm::resume`].
    paused_bases: Option<[u32; 2]>,
    /// Messages the lifecycle methods sent, in order (see [`TestVm::lifecycle_log`]).
    lifecycle_log: Vec<String>,
    /// The mapping table generation last described in SET_MEM_TABLE (QEMU mode).
    mem_table_generation: u64,
    /// Shared memory region and the backend request thread (dropped last: it joins the
    /// thread and unmaps the region).
    shm: Shm,
}

impl TestVm {
    pub fn builder() -> TestVmBuilder {
        TestVmBuilder::default()
    }

    /// Connects with default options (see [`TestVmBuilder`]).
    pub fn connect(socket: impl AsRef<Path>) -> TestVm {
        TestVmBuilder::default().connect(socket)
    }

    fn handshake(opts: TestVmBuilder, stream: UnixStream) -> io::Result<TestVm> {
        assert!(
            opts.mem_size >= 4 * MIB,
            "guest memory must be at least 4 MiB"
        );
        assert_eq!(opts.mem_base % 4096, 0, "mem_base must be page aligned");
        let conn = stream.try_clone()?;
        let stream_for_shm = stream.try_clone()?;
        let mut frontend = Frontend::from_stream(stream, 2);

        // Guest RAM: one memfd-backed region, shared with the backend.
        let memfd = nix::sys::memfd::memfd_create(
            "vhost-test-guest-ram",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let memfd = File::from(memfd);
        memfd.set_len(opts.mem_size)?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(opts.mem_base),
            opts.mem_size as usize,
            Some(FileOffset::new(memfd.try_clone()?, 0)),
        )])
        .map_err(|e| io::Error::other(format!("map guest memory: {e}")))?;

        step("SET_OWNER", frontend.set_owner())?;
        let backend_features = step("GET_FEATURES", frontend.get_features())?;
        let mut protocol_features = 0;
        let mut acked_protocol_features = 0;
        let mut queue_num = None;
        let mut shm = Shm::new(opts.shm_gpa, opts.shm_mode);
        shm.set_session(stream_for_shm);
        if backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            protocol_features =
                step("GET_PROTOCOL_FEATURES", frontend.get_protocol_features())?.bits();
            acked_protocol_features = protocol_features & opts.protocol_mask;
            step(
                "SET_PROTOCOL_FEATURES",
                frontend.set_protocol_features(VhostUserProtocolFeatures::from_bits_truncate(
                    acked_protocol_features,
                )),
            )?;
            let acked = VhostUserProtocolFeatures::from_bits_truncate(acked_protocol_features);
            if opts.need_reply && acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            // QEMU asks GET_QUEUE_NUM first, crosvm sends SET_BACKEND_REQ_FD first.
            if acked.contains(VhostUserProtocolFeatures::MQ) && opts.vmm == VmmKind::Qemu {
                queue_num = Some(step("GET_QUEUE_NUM", frontend.get_queue_num())?);
            }
            if acked.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
                // A thread serves SHMEM_MAP/UNMAP (and refuses anything else) on it.
                shm.connect_channel(
                    &mut frontend,
                    acked.contains(VhostUserProtocolFeatures::REPLY_ACK),
                )?;
            }
            if acked.contains(VhostUserProtocolFeatures::MQ) && opts.vmm == VmmKind::Crosvm {
                queue_num = Some(step("GET_QUEUE_NUM", frontend.get_queue_num())?);
            }
            if acked.contains(VhostUserProtocolFeatures::SHMEM) && opts.shm_config_query {
                let reply = step("GET_SHMEM_CONFIG", frontend.get_shmem_config())?;
                shm.configure(ShmConfig::from_reply(&reply))?;
            }
        }

        let acked_features = opts.features.unwrap_or_else(|| {
            let mut want = DEFAULT_ACK_MASK;
            if opts.event_idx {
                want |= VIRTIO_RING_F_EVENT_IDX;
            }
            backend_features & want
        });
        step("SET_FEATURES", frontend.set_features(acked_features))?;
        let event_idx = acked_features & VIRTIO_RING_F_EVENT_IDX != 0;

        // Layout: [rings q0 | rings q1 | data q0 | data q1 | heap]
        let base = opts.mem_base;
        let mut off = 0;
        let mut ring_at = Vec::new();
        for &n in &opts.queue_sizes {
            ring_at.push(base + off);
            off += ring_layout(n).3;
        }
        off = align_up(off, 4096);
        let rest = opts.mem_size - off;
        let ctrl_data = align_up(rest * 3 / 8, 4096);
        let cursor_data = align_up(rest / 8, 4096);
        let q0 = Arena::new(base + off, ctrl_data);
        let q1 = Arena::new(base + off + ctrl_data, cursor_data);
        let heap_at = base + off + ctrl_data + cursor_data;
        let heap = Arena::new(heap_at, base + opts.mem_size - heap_at);
        let queues = vec![
            VirtQueue::new(
                0,
                opts.queue_sizes[0],
                ring_at[0],
                q0,
                event_idx,
                opts.always_kick,
            ),
            VirtQueue::new(
                1,
                opts.queue_sizes[1],
                ring_at[1],
                q1,
                event_idx,
                opts.always_kick,
            ),
        ];

        let mut vm = TestVm {
            frontend,
            conn,
            mem,
            memfd,
            mem_base: opts.mem_base,
            mem_size: opts.mem_size,
            queues,
            heap,
            backend_features,
            acked_features,
            protocol_features,
            acked_protocol_features,
            queue_num,
            gpu_socket: None,
            next_fence: 0,
            next_res: 0x100,
            next_ctx: 0,
            blob_pieces: opts.blob_pieces,
            timeout: DEFAULT_TIMEOUT,
            vmm: opts.vmm,
            paused_bases: None,
            lifecycle_log: Vec::new(),
            mem_table_generation: 0,
            opts,
            shm,
        };
        vm.try_set_mem_table()?;
        if vm.opts.start_queues {
            vm.try_start_queues()?;
        }
        Ok(vm)
    }

    /// Sends SET_MEM_TABLE describing the guest RAM region.
    pub fn try_set_mem_table(&mut self) -> io::Result<()> {
        let host = self
            .mem
            .get_host_address(GuestAddress(self.mem_base))
            .map_err(|e| io::Error::other(format!("host address of guest RAM: {e}")))?;
        let region = VhostUserMemoryRegionInfo::new(
            self.mem_base,
            self.mem_size,
            host as u64,
            0,
            self.memfd.as_raw_fd(),
        );
        step("SET_MEM_TABLE", self.frontend.set_mem_table(&[region])).map(|_| ())
    }

    /// SET_MEM_TABLE with guest RAM plus one region per live shared memory mapping, at
    /// [`Self::shm_gpa`] + offset — what QEMU 11.1.3 sends after each SHMEM_MAP/UNMAP. Send it
    /// again (or [`Self::try_set_mem_table`]) after an unmap to take the mapping out.
    pub fn try_set_mem_table_with_shm(&mut self) -> io::Result<()> {
        let host = self
            .mem
            .get_host_address(GuestAddress(self.mem_base))
            .map_err(|e| io::Error::other(format!("host address of guest RAM: {e}")))?;
        let mut regions = vec![VhostUserMemoryRegionInfo::new(
            self.mem_base,
            self.mem_size,
            host as u64,
            0,
            self.memfd.as_raw_fd(),
        )];
        // `_files` keeps the mapping fds open until the message is sent.
        let (shm_regions, _files) = self.shm.mem_table_regions()?;
        regions.extend(shm_regions);
        step("SET_MEM_TABLE", self.frontend.set_mem_table(&regions)).map(|_| ())
    }

    pub fn set_mem_table_with_shm(&mut self) {
        self.try_set_mem_table_with_shm()
            .unwrap_or_else(|e| panic!("SET_MEM_TABLE with shared memory mappings failed: {e}"))
    }

    fn host_addr(&self, gpa: u64) -> u64 {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .expect("ring inside guest memory") as u64
    }

    /// Resets both queues in guest memory and sends, per queue: SET_VRING_NUM, SET_VRING_ADDR,
    /// SET_VRING_BASE 0, SET_VRING_CALL, SET_VRING_KICK, SET_VRING_ENABLE 1 (the last only
    /// when VHOST_USER_F_PROTOCOL_FEATURES was acked).
    ///
    /// For shared memory the device counts as started from here on; in QEMU mode a start
    /// after [`Self::stop_queues`] first drops every mapping, as QEMU does at a reset (crosvm
    /// keeps them).
    pub fn try_start_queues(&mut self) -> io::Result<()> {
        self.shm.device_start(self.vmm == VmmKind::Qemu);
        for q in 0..self.queues.len() {
            self.queues[q].reset(&self.mem);
            let size = self.queues[q].size();
            let (desc, avail, used) = self.queues[q].addrs();
            step("SET_VRING_NUM", self.frontend.set_vring_num(q, size))?;
            let config = VringConfigData {
                queue_max_size: size,
                queue_size: size,
                flags: 0,
                desc_table_addr: self.host_addr(desc),
                used_ring_addr: self.host_addr(used),
                avail_ring_addr: self.host_addr(avail),
                log_addr: None,
            };
            step("SET_VRING_ADDR", self.frontend.set_vring_addr(q, &config))?;
            step("SET_VRING_BASE", self.frontend.set_vring_base(q, 0))?;
            step(
                "SET_VRING_CALL",
                self.frontend.set_vring_call(q, self.queues[q].call_fd()),
            )?;
            step(
                "SET_VRING_KICK",
                self.frontend.set_vring_kick(q, self.queues[q].kick_fd()),
            )?;
            if self.acked_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
                step("SET_VRING_ENABLE", self.frontend.set_vring_enable(q, true))?;
            }
        }
        Ok(())
    }

    /// [`Self::try_start_queues`], panicking on error. Also the "guest came back after a
    /// reset" path after [`Self::stop_queues`]: every chain and completion is forgotten.
    pub fn start_queues(&mut self) {
        self.try_start_queues()
            .unwrap_or_else(|e| panic!("starting queues failed: {e}"));
    }

    /// Like a guest reset: SET_VRING_ENABLE 0 then GET_VRING_BASE for both queues. Returns
    /// the bases the backend reported.
    pub fn stop_queues(&mut self) -> [u32; 2] {
        self.try_stop_queues()
            .unwrap_or_else(|e| panic!("stopping queues failed: {e}"))
    }

    /// From the start of a stop, SHMEM_MAP/UNMAP requests are protocol violations (QEMU
    /// 11.1.3 handles the backend channel only after the stop and crashes on them).
    pub fn try_stop_queues(&mut self) -> io::Result<[u32; 2]> {
        self.shm.device_stop();
        let mut bases = [0; 2];
        for (q, base) in bases.iter_mut().enumerate() {
            if self.acked_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
                step(
                    "SET_VRING_ENABLE 0",
                    self.frontend.set_vring_enable(q, false),
                )?;
            }
            *base = step("GET_VRING_BASE", self.frontend.get_vring_base(q))?;
        }
        Ok(bases)
    }

    // ---- VMM lifecycle: pause, resume, guest reset -------------------------------------

    /// Which VMM this frontend imitates.
    pub fn vmm(&self) -> VmmKind {
        self.vmm
    }

    fn log(&mut self, msg: impl Into<String>) {
        self.lifecycle_log.push(msg.into());
    }

    /// The messages [`Self::pause`], [`Self::resume`], [`Self::guest_reset`] and
    /// [`Self::reprobe`] sent so far, one entry per message (`"SET_VRING_ENABLE(0, 0)"`,
    /// `"GET_VRING_BASE(0) = 7"`, ...), with `"--"` entries between the steps. Cleared by
    /// [`Self::take_lifecycle_log`].
    pub fn lifecycle_log(&self) -> &[String] {
        &self.lifecycle_log
    }

    pub fn take_lifecycle_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.lifecycle_log)
    }

    /// The VMM stops the device, as both VMMs do for a VM pause (QEMU `stop`, crosvm
    /// `suspend --full` or the pause before `snapshot take`) and at the start of a guest
    /// reset: crosvm per queue SET_VRING_ENABLE 0 then GET_VRING_BASE; QEMU SET_VRING_ENABLE 0
    /// for every queue, then GET_VRING_BASE per queue, then SET_VRING_CALL per queue (it
    /// unbinds the guest notifiers). Returns the bases the backend reported. SHMEM requests
    /// from here on are violations.
    pub fn try_pause(&mut self) -> io::Result<[u32; 2]> {
        self.shm.device_stop();
        self.log("-- stop");
        let enable_msgs = self.acked_features & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        let mut bases = [0u32; 2];
        match self.vmm {
            VmmKind::Crosvm => {
                for (q, base) in bases.iter_mut().enumerate() {
                    if enable_msgs {
                        step(
                            "SET_VRING_ENABLE 0",
                            self.frontend.set_vring_enable(q, false),
                        )?;
                        self.log(format!("SET_VRING_ENABLE({q}, 0)"));
                    }
                    *base = step("GET_VRING_BASE", self.frontend.get_vring_base(q))?;
                    self.log(format!("GET_VRING_BASE({q}) = {base}"));
                }
            }
            VmmKind::Qemu => {
                if enable_msgs {
                    for q in 0..2 {
                        step(
                            "SET_VRING_ENABLE 0",
                            self.frontend.set_vring_enable(q, false),
                        )?;
                        self.log(format!("SET_VRING_ENABLE({q}, 0)"));
                    }
                }
                for (q, base) in bases.iter_mut().enumerate() {
                    *base = step("GET_VRING_BASE", self.frontend.get_vring_base(q))?;
                    self.log(format!("GET_VRING_BASE({q}) = {base}"));
                }
                for q in 0..2 {
                    // QEMU hands the backend its masked notifier while the guest's is unbound.
                    let masked = vmm_sys_util::eventfd::EventFd::new(libc::EFD_CLOEXEC)?;
                    step("SET_VRING_CALL", self.frontend.set_vring_call(q, &masked))?;
                    self.log(format!("SET_VRING_CALL({q})"));
                }
            }
        }
        self.paused_bases = Some(bases);
        Ok(bases)
    }

    /// [`Self::try_pause`], panicking on error.
    pub fn pause(&mut self) -> [u32; 2] {
        self.try_pause()
            .unwrap_or_else(|e| panic!("pausing the device failed: {e}"))
    }

    /// The VMM restarts the device after [`Self::pause`] with the same rings, each at the base
    /// the backend reported (QEMU `cont`, crosvm `resume --full`). Chains that were in flight
    /// stay in flight: the backend must still complete them.
    ///
    /// crosvm (`virtio_wake` → `activate`): SET_MEM_TABLE, then per queue SET_VRING_NUM,
    /// SET_VRING_ADDR, SET_VRING_BASE, SET_VRING_CALL, SET_VRING_KICK, SET_VRING_ENABLE 1 (no
    /// SET_FEATURES: the acked set did not change). QEMU (`vhost_dev_start`): SET_VRING_CALL
    /// per queue, SET_FEATURES, SET_MEM_TABLE (with the live mappings), per queue
    /// SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, then SET_VRING_ENABLE 1
    /// per queue and SET_VRING_CALL per queue.
    pub fn try_resume(&mut self) -> io::Result<()> {
        let bases = self
            .paused_bases
            .take()
            .ok_or_else(|| io::Error::other("resume without a pause"))?;
        self.log("-- start (same rings)");
        self.shm.device_start(false);
        self.send_start(bases)
    }

    /// [`Self::try_resume`], panicking on error.
    pub fn resume(&mut self) {
        self.try_resume()
            .unwrap_or_else(|e| panic!("resuming the device failed: {e}"))
    }

    /// The guest resets the device (virtio status 0: driver unbind, kexec, reboot): the VMM
    /// stops it exactly as for a pause ([`Self::try_pause`]); neither VMM sends RESET_DEVICE.
    /// QEMU then drops every shared memory mapping itself; crosvm keeps them. Follow with
    /// [`Self::reprobe`].
    pub fn try_guest_reset(&mut self) -> io::Result<[u32; 2]> {
        let bases = self.try_pause()?;
        self.paused_bases = None;
        if self.vmm == VmmKind::Qemu {
            self.shm.drop_all_mappings();
            self.log("(QEMU drops every mapping)");
        }
        Ok(bases)
    }

    /// [`Self::try_guest_reset`], panicking on error.
    pub fn guest_reset(&mut self) -> [u32; 2] {
        self.try_guest_reset()
            .unwrap_or_else(|e| panic!("guest reset failed: {e}"))
    }

    /// The re-probed guest driver sets the device up again after [`Self::guest_reset`]: rings
    /// re-initialised in guest memory (same addresses, fresh eventfds, index 0), every chain
    /// forgotten, then the VMM's start sequence (see [`Self::try_resume`]) with base 0.
    pub fn try_reprobe(&mut self) -> io::Result<()> {
        self.paused_bases = None;
        for q in 0..self.queues.len() {
            self.queues[q].reset(&self.mem);
        }
        self.log("-- start (rings re-initialised)");
        self.shm.device_start(false);
        self.send_start([0, 0])
    }

    /// [`Self::try_reprobe`], panicking on error.
    pub fn reprobe(&mut self) {
        self.try_reprobe()
            .unwrap_or_else(|e| panic!("re-probing the device failed: {e}"))
    }

    fn vring_config(&self, q: usize) -> VringConfigData {
        let size = self.queues[q].size();
        let (desc, avail, used) = self.queues[q].addrs();
        VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: self.host_addr(desc),
            used_ring_addr: self.host_addr(used),
            avail_ring_addr: self.host_addr(avail),
            log_addr: None,
        }
    }

    /// One VMM's start sequence with the given ring bases (see [`Self::try_resume`]).
    fn send_start(&mut self, bases: [u32; 2]) -> io::Result<()> {
        let enable_msgs = self.acked_features & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        match self.vmm {
            VmmKind::Crosvm => {
                self.try_set_mem_table()?;
                self.log("SET_MEM_TABLE");
                for (q, &base) in bases.iter().enumerate() {
                    let size = self.queues[q].size();
                    step("SET_VRING_NUM", self.frontend.set_vring_num(q, size))?;
                    self.log(format!("SET_VRING_NUM({q}, {size})"));
                    let config = self.vring_config(q);
                    step("SET_VRING_ADDR", self.frontend.set_vring_addr(q, &config))?;
                    self.log(format!("SET_VRING_ADDR({q})"));
                    step(
                        "SET_VRING_BASE",
                        self.frontend.set_vring_base(q, base as u16),
                    )?;
                    self.log(format!("SET_VRING_BASE({q}, {base})"));
                    step(
                        "SET_VRING_CALL",
                        self.frontend.set_vring_call(q, self.queues[q].call_fd()),
                    )?;
                    self.log(format!("SET_VRING_CALL({q})"));
                    step(
                        "SET_VRING_KICK",
                        self.frontend.set_vring_kick(q, self.queues[q].kick_fd()),
                    )?;
                    self.log(format!("SET_VRING_KICK({q})"));
                    if enable_msgs {
                        step(
                            "SET_VRING_ENABLE 1",
                            self.frontend.set_vring_enable(q, true),
                        )?;
                        self.log(format!("SET_VRING_ENABLE({q}, 1)"));
                    }
                }
            }
            VmmKind::Qemu => {
                for q in 0..2 {
                    step(
                        "SET_VRING_CALL",
                        self.frontend.set_vring_call(q, self.queues[q].call_fd()),
                    )?;
                    self.log(format!("SET_VRING_CALL({q})"));
                }
                let features = self.acked_features;
                step("SET_FEATURES", self.frontend.set_features(features))?;
                self.log(format!("SET_FEATURES({features:#x})"));
                self.try_set_mem_table_with_shm()?;
                self.mem_table_generation = self.shm.generation();
                let n = self.shm.mappings().len();
                self.log(format!("SET_MEM_TABLE (RAM + {n} mappings)"));
                for (q, &base) in bases.iter().enumerate() {
                    let size = self.queues[q].size();
                    step("SET_VRING_NUM", self.frontend.set_vring_num(q, size))?;
                    self.log(format!("SET_VRING_NUM({q}, {size})"));
                    step(
                        "SET_VRING_BASE",
                        self.frontend.set_vring_base(q, base as u16),
                    )?;
                    self.log(format!("SET_VRING_BASE({q}, {base})"));
                    let config = self.vring_config(q);
                    step("SET_VRING_ADDR", self.frontend.set_vring_addr(q, &config))?;
                    self.log(format!("SET_VRING_ADDR({q})"));
                    step(
                        "SET_VRING_KICK",
                        self.frontend.set_vring_kick(q, self.queues[q].kick_fd()),
                    )?;
                    self.log(format!("SET_VRING_KICK({q})"));
                }
                if enable_msgs {
                    for q in 0..2 {
                        step(
                            "SET_VRING_ENABLE 1",
                            self.frontend.set_vring_enable(q, true),
                        )?;
                        self.log(format!("SET_VRING_ENABLE({q}, 1)"));
                    }
                }
                for q in 0..2 {
                    step(
                        "SET_VRING_CALL",
                        self.frontend.set_vring_call(q, self.queues[q].call_fd()),
                    )?;
                    self.log(format!("SET_VRING_CALL({q})"));
                }
            }
        }
        Ok(())
    }

    /// QEMU mode with [`TestVmBuilder::qemu_mem_table_updates`]: describe the mappings in
    /// SET_MEM_TABLE again if they changed since the last time.
    fn sync_mem_table(&mut self) {
        if self.vmm != VmmKind::Qemu || !self.opts.qemu_mem_table_updates {
            return;
        }
        let generation = self.shm.generation();
        if generation != self.mem_table_generation {
            self.mem_table_generation = generation;
            self.set_mem_table_with_shm();
        }
    }

    /// Why the session ended if the (crosvm) VMM met a refused SHMEM request.
    pub fn shm_fatal(&self) -> Option<String> {
        self.shm.fatal()
    }

    /// Closes the vhost-user connection and drops guest memory, queues and side channels.
    pub fn disconnect(self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
        drop(self);
    }

    // ---- negotiated state -------------------------------------------------------------

    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    /// What was sent in SET_FEATURES.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// What the backend offered in GET_PROTOCOL_FEATURES (0 if bit 30 was not offered).
    pub fn protocol_features(&self) -> u64 {
        self.protocol_features
    }

    /// What was sent in SET_PROTOCOL_FEATURES.
    pub fn acked_protocol_features(&self) -> u64 {
        self.acked_protocol_features
    }

    /// GET_QUEUE_NUM answer, if MQ was negotiated.
    pub fn queue_num(&self) -> Option<u64> {
        self.queue_num
    }

    pub fn event_idx(&self) -> bool {
        self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0
    }

    /// The `vhost` crate frontend, for requests this type has no wrapper for.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// Whether the backend request channel (BACKEND_REQ) is up: sent with SET_BACKEND_REQ_FD
    /// and not yet closed by either side. A thread serves it; see the `shm_*` methods.
    pub fn has_backend_req_channel(&self) -> bool {
        self.shm.channel_open()
    }

    /// Closes the VMM's end of the backend request channel (the backend's next request on it
    /// fails) and stops the thread serving it. Mappings stay as they are.
    pub fn close_backend_req_channel(&mut self) {
        self.shm.close_channel();
    }

    // ---- config space ------------------------------------------------------------------

    /// GET_CONFIG(offset, size), flags 0 as QEMU sends it (WRITABLE in crosvm mode). Written
    /// by hand: the `vhost` crate's `Frontend::get_config` blocks forever on the backend's
    /// error reply (a config header with size 0 and no payload). An error reply becomes
    /// `Err`.
    pub fn try_get_config(&mut self, offset: u32, size: u32) -> io::Result<Vec<u8>> {
        let mut payload = Vec::with_capacity(12 + size as usize);
        payload.extend_from_slice(&offset.to_le_bytes());
        payload.extend_from_slice(&size.to_le_bytes());
        // crosvm sends flags WRITABLE with every read, QEMU 0.
        let flags = match self.vmm {
            VmmKind::Crosvm => VhostUserConfigFlags::WRITABLE.bits(),
            VmmKind::Qemu => 0,
        };
        payload.extend_from_slice(&flags.to_le_bytes());
        payload.resize(12 + size as usize, 0);
        self.send_raw(VHOST_USER_GET_CONFIG, VHOST_USER_VERSION, &payload, &[])?;
        let (req, flags, reply) = self.recv_raw(DEFAULT_TIMEOUT)?;
        if req != VHOST_USER_GET_CONFIG || flags & VHOST_USER_REPLY == 0 || reply.len() < 12 {
            return Err(io::Error::other(format!(
                "GET_CONFIG: unexpected reply (request {req}, flags {flags:#x}, {} bytes)",
                reply.len()
            )));
        }
        let r_off = u32::from_le_bytes(reply[0..4].try_into().unwrap());
        let r_size = u32::from_le_bytes(reply[4..8].try_into().unwrap());
        if r_size == 0 {
            return Err(io::Error::other(
                "GET_CONFIG: backend reported an error (size 0)",
            ));
        }
        if r_off != offset || r_size != size || reply.len() != 12 + size as usize {
            return Err(io::Error::other(format!(
                "GET_CONFIG({offset}, {size}): reply has offset {r_off}, size {r_size}, {} \
                 payload bytes",
                reply.len() - 12
            )));
        }
        Ok(reply[12..].to_vec())
    }

    pub fn get_config(&mut self, offset: u32, size: u32) -> Vec<u8> {
        self.try_get_config(offset, size)
            .unwrap_or_else(|e| panic!("GET_CONFIG({offset}, {size}) failed: {e}"))
    }

    /// SET_CONFIG(offset, data) with flags 0.
    pub fn try_set_config(&mut self, offset: u32, data: &[u8]) -> io::Result<()> {
        step(
            "SET_CONFIG",
            self.frontend
                .set_config(offset, VhostUserConfigFlags::empty(), data),
        )
    }

    pub fn set_config(&mut self, offset: u32, data: &[u8]) {
        self.try_set_config(offset, data)
            .unwrap_or_else(|e| panic!("SET_CONFIG({offset}) failed: {e}"))
    }

    // ---- hand-written vhost-user messages ------------------------------------------------

    /// Writes one vhost-user message by hand: 12-byte header {request, flags, size} +
    /// payload, with `fds` attached via SCM_RIGHTS.
    pub fn send_raw(
        &mut self,
        request: u32,
        flags: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> io::Result<()> {
        let mut msg = Vec::with_capacity(12 + payload.len());
        msg.extend_from_slice(&request.to_le_bytes());
        msg.extend_from_slice(&flags.to_le_bytes());
        msg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        msg.extend_from_slice(payload);
        if fds.is_empty() {
            (&self.conn).write_all(&msg)
        } else {
            let n = self
                .conn
                .send_with_fds(&[&msg[..]], fds)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
            if n != msg.len() {
                (&self.conn).write_all(&msg[n..])?;
            }
            Ok(())
        }
    }

    /// Reads one reply message written by the backend: (request, flags, payload). Any fds
    /// attached are ignored.
    pub fn recv_raw(&mut self, timeout: Duration) -> io::Result<(u32, u32, Vec<u8>)> {
        self.conn.set_read_timeout(Some(timeout))?;
        let r = (|| {
            let mut hdr = [0u8; 12];
            (&self.conn).read_exact(&mut hdr)?;
            let le = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
            let mut payload = vec![0u8; le(8) as usize];
            (&self.conn).read_exact(&mut payload)?;
            Ok((le(0), le(4), payload))
        })();
        self.conn.set_read_timeout(None)?;
        r
    }

    /// Sends GPU_SET_SOCKET (request 33, flags 0x1, size 0) with one end of a fresh socket
    /// pair, as QEMU does at DRIVER_OK. Our end replaces (closes) the previous one.
    pub fn send_gpu_set_socket(&mut self) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        self.send_raw(
            VHOST_USER_GPU_SET_SOCKET,
            VHOST_USER_VERSION,
            &[],
            &[theirs.as_raw_fd()],
        )
        .expect("send GPU_SET_SOCKET");
        self.gpu_socket = Some(ours);
    }

    /// GPU_SET_SOCKET with NEED_REPLY; returns the backend's u64 ack (0 = success). Only
    /// meaningful when REPLY_ACK was negotiated.
    pub fn send_gpu_set_socket_acked(&mut self) -> io::Result<u64> {
        let (ours, theirs) = UnixStream::pair()?;
        self.send_raw(
            VHOST_USER_GPU_SET_SOCKET,
            VHOST_USER_VERSION | VHOST_USER_NEED_REPLY,
            &[],
            &[theirs.as_raw_fd()],
        )?;
        self.gpu_socket = Some(ours);
        let (req, _flags, payload) = self.recv_raw(Duration::from_secs(5))?;
        if req != VHOST_USER_GPU_SET_SOCKET || payload.len() != 8 {
            return Err(io::Error::other(format!(
                "unexpected reply to GPU_SET_SOCKET: request {req}, {} bytes",
                payload.len()
            )));
        }
        Ok(u64::from_le_bytes(payload[..8].try_into().unwrap()))
    }

    /// Our end of the latest GPU socket pair, if GPU_SET_SOCKET was sent.
    pub fn gpu_socket(&self) -> Option<&UnixStream> {
        self.gpu_socket.as_ref()
    }

    // ---- guest memory ------------------------------------------------------------------

    pub fn mem_base(&self) -> u64 {
        self.mem_base
    }

    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    /// First address past guest RAM.
    pub fn mem_end(&self) -> u64 {
        self.mem_base + self.mem_size
    }

    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Allocates guest memory outside the queue buffers (for blobs, rings, raw chains).
    pub fn alloc(&mut self, len: u64, align: u64) -> u64 {
        self.heap.alloc(len, align).unwrap_or_else(|| {
            panic!(
                "guest heap exhausted allocating {len} bytes ({} live allocations)",
                self.heap.live()
            )
        })
    }

    /// Returns memory from [`Self::alloc`]; panics on an address it did not hand out.
    pub fn free(&mut self, gpa: u64) {
        assert!(
            self.heap.free(gpa),
            "free of {gpa:#x}, which is not allocated"
        );
    }

    pub fn write_mem(&self, gpa: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .unwrap_or_else(|e| panic!("write_mem({gpa:#x}, {} bytes): {e}", data.len()));
    }

    pub fn read_mem(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(gpa))
            .unwrap_or_else(|e| panic!("read_mem({gpa:#x}, {len}): {e}"));
        v
    }

    // ---- host-visible shared memory -----------------------------------------------------

    /// Size of the host-visible region (shmid 1) from GET_SHMEM_CONFIG; `None` if SHMEM was
    /// not negotiated, the query was not sent, or the size was 0.
    pub fn shm_size(&self) -> Option<u64> {
        self.shm.size()
    }

    /// The whole GET_SHMEM_CONFIG reply, if it was asked.
    pub fn shm_config(&self) -> Option<&ShmConfig> {
        self.shm.config()
    }

    /// Guest physical address of the region (only used in SET_MEM_TABLE).
    pub fn shm_gpa(&self) -> u64 {
        self.shm.gpa()
    }

    /// Reads region bytes as the guest would. Panics (never faults) unless the whole range
    /// is covered by live mappings.
    pub fn shm_read(&self, offset: u64, len: usize) -> Vec<u8> {
        self.shm
            .read(offset, len)
            .unwrap_or_else(|e| panic!("{}", e.message()))
    }

    /// Like [`Self::shm_read`] but `None` instead of a panic when not all of it is mapped.
    pub fn shm_try_read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        self.shm.read(offset, len).ok()
    }

    /// Writes region bytes as the guest would. Panics (never faults) unless the whole range
    /// is covered by live writable mappings.
    pub fn shm_write(&self, offset: u64, data: &[u8]) {
        self.shm
            .write(offset, data)
            .unwrap_or_else(|e| panic!("{}", e.message()))
    }

    /// Probe: writes like [`Self::shm_write`] and returns true, or returns false without
    /// writing anything when part of the range is mapped read-only (decided from the mapping
    /// table; nothing faults). Still panics when part of the range is not mapped at all.
    pub fn shm_try_write(&self, offset: u64, data: &[u8]) -> bool {
        match self.shm.write(offset, data) {
            Ok(()) => true,
            Err(super::shm::AccessError::ReadOnly(_)) => false,
            Err(e) => panic!("{}", e.message()),
        }
    }

    /// The live mapping containing `offset`.
    pub fn shm_mapping_at(&self, offset: u64) -> Option<ShmMapping> {
        self.shm.mapping_at(offset)
    }

    /// All live mappings, by offset.
    pub fn shm_mappings(&self) -> Vec<ShmMapping> {
        self.shm.mappings()
    }

    /// Waits until a mapping contains `offset` (SHMEM_MAP is served on another thread).
    pub fn shm_wait_mapping(&self, offset: u64, timeout: Duration) -> Option<ShmMapping> {
        self.shm
            .wait_mapping(offset, timeout, |m| m.is_some())
            .flatten()
    }

    /// Waits until no mapping contains `offset`; false on timeout.
    pub fn shm_wait_unmapped(&self, offset: u64, timeout: Duration) -> bool {
        self.shm
            .wait_mapping(offset, timeout, |m| m.is_none())
            .is_some()
    }

    /// Counters of the backend request thread (maps, unmaps, refusals, violations, ...).
    pub fn shm_stats(&self) -> ShmStats {
        self.shm.stats()
    }

    /// Why the last SHMEM_MAP/UNMAP (or unparsable backend request) was refused.
    pub fn shm_last_refusal(&self) -> Option<String> {
        self.shm.last_refusal()
    }

    /// Panics if the backend sent SHMEM_MAP/UNMAP while the device was not started.
    pub fn shm_assert_no_violations(&self) {
        let s = self.shm.stats();
        assert_eq!(
            s.violations,
            0,
            "backend sent {} SHMEM_MAP/UNMAP request(s) while the device was not started \
             (last refusal: {:?})",
            s.violations,
            self.shm.last_refusal()
        );
    }

    /// Makes the next `n` SHMEM_MAP requests fail (as if the VMM could not map), to test the
    /// device's handling of a refusal. Replaces any previous count.
    pub fn shm_refuse_next(&self, n: u64) {
        self.shm.refuse_next(n)
    }

    // ---- queues ------------------------------------------------------------------------

    /// Copies `readable` buffers into queue memory, adds writable buffers of the given
    /// lengths, chains them, publishes the head and kicks. Returns the head.
    pub fn submit(&mut self, queue: usize, readable: &[&[u8]], writable: &[u32]) -> u16 {
        self.queues[queue].submit(&self.mem, readable, writable)
    }

    /// Publishes the chains submitted to `queue` from now on without kicking, then all at
    /// once with one kick: the device processes them in one pass.
    pub fn batch<R>(&mut self, queue: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        self.queues[queue].hold_kicks(true);
        let r = f(self);
        self.queues[queue].hold_kicks(false);
        self.queues[queue].kick();
        r
    }

    /// Lays out an arbitrary (possibly malformed) chain; see [`RawDesc`].
    pub fn submit_descs(&mut self, queue: usize, descs: &[RawDesc]) -> u16 {
        self.queues[queue].submit_descs(&self.mem, descs)
    }

    /// Waits for any completion on `queue` and collects it: (head, written length).
    pub fn wait_used(&mut self, queue: usize, timeout: Duration) -> Option<(u16, u32)> {
        self.queues[queue]
            .wait_any(&self.mem, timeout)
            .map(|u| (u.head, u.len))
    }

    /// Like [`Self::wait_used`] but also returns the written bytes.
    pub fn wait_any(&mut self, queue: usize, timeout: Duration) -> Option<Used> {
        self.queues[queue].wait_any(&self.mem, timeout)
    }

    /// Waits for the chain `head` and returns what the device wrote into its writable
    /// buffers (concatenated, truncated to the used length).
    pub fn wait_for(&mut self, queue: usize, head: u16, timeout: Duration) -> Option<Vec<u8>> {
        self.queues[queue]
            .wait_for(&self.mem, head, timeout)
            .map(|u| u.data)
    }

    /// Like [`Self::wait_for`] but returns the used element too.
    pub fn wait_for_used(&mut self, queue: usize, head: u16, timeout: Duration) -> Option<Used> {
        self.queues[queue].wait_for(&self.mem, head, timeout)
    }

    /// Non-blocking completion check (does not collect).
    pub fn is_done(&mut self, queue: usize, head: u16) -> bool {
        self.queues[queue].is_done(&self.mem, head)
    }

    /// Not interested in this chain's completion any more.
    pub fn discard(&mut self, queue: usize, head: u16) {
        self.queues[queue].discard(head)
    }

    /// Recycle an outstanding chain the device dropped (see [`VirtQueue::forget`]).
    pub fn forget(&mut self, queue: usize, head: u16) {
        self.queues[queue].forget(head)
    }

    /// Chains offered and not yet completed.
    pub fn in_flight(&self, queue: usize) -> usize {
        self.queues[queue].in_flight()
    }

    pub fn queue_stats(&self, queue: usize) -> QueueStats {
        self.queues[queue].stats()
    }

    pub fn queue(&mut self, queue: usize) -> &mut VirtQueue {
        &mut self.queues[queue]
    }

    /// Sends `req` (one readable buffer) on `queue` with one writable buffer of `resp_len`
    /// and waits up to `self.timeout`; panics on timeout.
    pub fn request(&mut self, queue: usize, req: &[u8], resp_len: u32) -> Vec<u8> {
        self.request_sg(queue, &[req], resp_len)
    }

    /// Like [`Self::request`] with the request split over several readable buffers.
    pub fn request_sg(&mut self, queue: usize, req: &[&[u8]], resp_len: u32) -> Vec<u8> {
        let head = self.submit(queue, req, &[resp_len]);
        let timeout = self.timeout;
        match self.wait_for(queue, head, timeout) {
            Some(resp) => {
                self.sync_mem_table();
                resp
            }
            None => {
                if let Some(why) = self.shm.fatal() {
                    panic!("the VMM ended the session (crosvm ends the VM) after: {why}");
                }
                let ty = req
                    .first()
                    .filter(|r| r.len() >= 4)
                    .map(|r| u32::from_le_bytes(r[..4].try_into().unwrap()))
                    .unwrap_or(0);
                panic!(
                    "queue {queue}: no response to request type {ty:#x} within {timeout:?} \
                     (head {head})"
                )
            }
        }
    }

    /// Control queue request/response round trip.
    pub fn ctrl(&mut self, req: &[u8], resp_len: u32) -> Vec<u8> {
        self.request(CONTROLQ, req, resp_len)
    }

    /// Cursor queue request/response round trip.
    pub fn cursor(&mut self, req: &[u8], resp_len: u32) -> Vec<u8> {
        self.request(CURSORQ, req, resp_len)
    }

    // ---- id allocators -----------------------------------------------------------------

    /// Next fence id: one counter for every context and ring, like Linux.
    pub fn next_fence_id(&mut self) -> u64 {
        self.next_fence += 1;
        self.next_fence
    }

    /// A fresh resource id (starts at 0x100 to stay clear of ids tests pick by hand).
    pub fn next_resource_id(&mut self) -> u32 {
        self.next_res += 1;
        self.next_res
    }

    /// A fresh context id (starts at 1).
    pub fn next_ctx_id(&mut self) -> u32 {
        self.next_ctx += 1;
        self.next_ctx
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        // Make sure the backend sees EOF even if someone still holds a dup of the socket.
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
        if let Some(why) = self.shm.fatal() {
            if !std::thread::panicking() {
                panic!("the VMM ended the session (crosvm ends the VM) after: {why}");
            }
        }
    }
}
