//! The vhost-user backend: feature and protocol-feature negotiation, the config space, the
//! host-visible shared-memory region, and the glue from queue kicks and host-fd readiness to the
//! virtio-gpu layer.
//!
//! VMM quirks live here (QEMU's GPU_SET_SOCKET, SET_CONFIG of read-only fields, transport bits
//! a frontend acks without asking, no SHMEM requests while the device is stopped), never in the
//! protocol code.
//!
//! A stop of the rings (GET_VRING_BASE) is a pause: all device state stays, host events wait
//! and nothing is written to guest memory until the next start. That start decides
//! (`device/lifecycle.rs`): the rings continue where they stopped (a VM pause ended) or the
//! guest reset the device, and only then is guest-visible state dropped. What the VMM still has
//! mapped in the host-visible region survives a reset (`device/mapper.rs`) so that no later map
//! overlaps it.
//!
//! Threads: `vhost-user-backend` runs one worker thread that receives queue kicks, the readiness
//! of host fds (channel sockets, pipes, eventfds) and control events (shutdown); all device
//! work happens there, under the `state` mutex. Host fds are registered straight in the
//! worker's epoll set under event ids from [`FIRST_HOST_SLOT`] up (one `epoll_wait` serves
//! kicks and host fds; events that come while the device is stopped are kept for the next
//! start); past the last id, or before [`Backend::attach_event_loop`], they go into the
//! device's own epoll set, watched as one fd behind a gate that is closed while the device is
//! stopped. The vhost-user request thread also calls into the backend (memory table
//! updates, queue stops, resets, the backend channel); those callbacks never take `state`.
//! That matters: the worker holds `state` while it waits for the VMM to acknowledge a
//! SHMEM_MAP, and the VMM may send SET_MEM_TABLE (and wait for its reply) before it
//! acknowledges. Stops are ordered with the worker through the control vring's lock instead:
//! the library clears the queue's ready flag under it before calling
//! [`VhostUserBackend::stop_vring`], and the worker checks that flag under the same lock before
//! it touches guest memory.

mod lifecycle;
mod mapper;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use log::{debug, info, warn};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserShMemConfig};
use vhost::vhost_user::{Backend as BackendChannel, GpuBackend};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::{VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::EventFd;

use crate::config::Config;
use crate::virtio_gpu::protocol::{
    VirtioGpuConfig, F_CONTEXT_INIT, F_RESOURCE_BLOB, F_RESOURCE_UUID, F_VIRGL,
};
use crate::virtio_gpu::{Gpu, Limits};
use lifecycle::{Lifecycle, RingMark, Start};
use mapper::{VmmMapper, VmmMappings};

/// Control queue index.
pub const CONTROL_QUEUE: u16 = 0;
/// Cursor queue index.
pub const CURSOR_QUEUE: u16 = 1;
/// Number of virtqueues.
pub const NUM_QUEUES: usize = 2;
/// Largest queue the device accepts: crosvm's default, so no `max-queue-size` is needed.
pub const MAX_QUEUE_SIZE: usize = 32768;
/// Event id of the device's own epoll set (channel sockets, pipes) in the worker's epoll.
pub const HOST_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// Event id of control requests to the worker: shutdown (see [`Backend::quiesce`]).
pub const SHUTDOWN_EVENT: u16 = HOST_EVENT + 1;
/// The first event id of a host fd watched directly in the worker's epoll set; the ids up to
/// `u16::MAX` are the device's (the event loop passes 16 bits of an event's data on).
pub const FIRST_HOST_SLOT: u16 = SHUTDOWN_EVENT + 1;
/// Shared memory region id of the host-visible region (`VIRTIO_GPU_SHM_ID_HOST_VISIBLE`).
pub const SHMID_HOST_VISIBLE: u8 = 1;

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Virtio features the device offers.
pub const DEVICE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_F_RING_RESET)
    | VHOST_USER_F_PROTOCOL_FEATURES
    | F_VIRGL
    | F_RESOURCE_UUID
    | F_RESOURCE_BLOB
    | F_CONTEXT_INIT;

type GuestMemAtomic = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// State only the worker thread touches.
struct State {
    gpu: Gpu,
}

/// The backend handed to `vhost-user-backend`. One instance per VMM connection.
pub struct Backend {
    state: Mutex<State>,
    config: VirtioGpuConfig,
    shm_size: u64,
    mem: Mutex<Option<GuestMemAtomic>>,
    event_idx: AtomicBool,
    /// Between a start of the control queue and its stop: the only window in which the
    /// device writes guest memory and the VMM accepts SHMEM_MAP/UNMAP (QEMU 11.1.3 crashes
    /// otherwise). Mirrors [`Lifecycle::running`] for lock-free readers.
    started: AtomicBool,
    lifecycle: Mutex<Lifecycle>,
    /// The library's vrings, kept from the first event so that a stop can note where the
    /// control queue stood ([`RingMark`]).
    vrings: Mutex<Vec<VringRwLock>>,
    /// What the VMM has mapped in the host-visible region (survives guest resets).
    mappings: VmmMappings,
    /// The epoll fd registered with the worker for host events: it contains the device's own
    /// epoll set only while the device runs, so a stopped device is not woken by (and does
    /// not read) channel sockets and pipes.
    gate: Epoll,
    /// A duplicate of the device's epoll fd, to open and close the gate without `state`.
    host_epoll: OwnedFd,
    shutdown_pending: AtomicBool,
    gpu_socket: Mutex<Option<GpuBackend>>,
    channel: Mutex<Option<BackendChannel>>,
    control: EventFd,
    quiesced: (Mutex<bool>, Condvar),
    /// Exit-event fds handed to `vhost-user-backend`, which turns them into raw fds and never
    /// closes them; [`Backend::close_exit_event_fds`] does, once the session is over.
    exit_fds: Mutex<Vec<RawFd>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic on another thread would already have ended the session; keep using the data
    // rather than propagating the poison.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Backend {
    /// A backend for one VMM session.
    pub fn new(config: &Config) -> io::Result<Self> {
        let num_scanouts = config.num_scanouts;
        let limits = Limits {
            max_mappings: config.max_mappings,
            partial_pages: config.partial_pages,
            ..Limits::default()
        };
        let gpu = Gpu::new(
            config.channels.clone(),
            Arc::new(crate::sandbox::BrokerConnector),
            num_scanouts,
            config.shm_size,
            limits,
        )?;
        let host_epoll = gpu.epoll().0.try_clone()?;
        let gate = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        gate.add(&host_epoll, EpollEvent::new(EpollFlags::EPOLLIN, 0))
            .map_err(io::Error::from)?;
        Ok(Backend {
            state: Mutex::new(State { gpu }),
            config: VirtioGpuConfig {
                num_scanouts,
                num_capsets: 1,
                ..Default::default()
            },
            shm_size: config.shm_size,
            mem: Mutex::new(None),
            event_idx: AtomicBool::new(false),
            started: AtomicBool::new(false),
            lifecycle: Mutex::new(Lifecycle::default()),
            vrings: Mutex::new(Vec::new()),
            mappings: VmmMappings::new(limits.max_mappings),
            gate,
            host_epoll,
            shutdown_pending: AtomicBool::new(false),
            gpu_socket: Mutex::new(None),
            channel: Mutex::new(None),
            control: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            quiesced: (Mutex::new(false), Condvar::new()),
            exit_fds: Mutex::new(Vec::new()),
        })
    }

    /// Close the exit-event fds the vhost-user library leaks (one per session otherwise).
    /// Call only after the `VhostUserDaemon` of this backend was dropped: dropping it joins the
    /// worker threads, whose epoll sets were the only users of these fds.
    pub fn close_exit_event_fds(&self) {
        for fd in lock(&self.exit_fds).drain(..) {
            // SAFETY: `fd` is the consumer end created in `exit_event`; vhost-user-backend 0.24
            // converted it with `into_raw_fd` into its worker's epoll set and never closes it.
            // The worker threads were joined when the daemon was dropped (the caller's
            // contract), so nothing uses the fd any more and it is closed exactly once here.
            unsafe {
                libc::close(fd);
            }
        }
    }

    /// The fd to register with the worker's epoll under [`SHUTDOWN_EVENT`].
    pub fn shutdown_fd(&self) -> i32 {
        self.control.as_raw_fd()
    }

    /// Shutdown with a live VMM: ask the worker thread to complete every pending fence (the
    /// guest sees its POLLs return instead of hanging) and close every channel socket and
    /// pipe, then wait up to `timeout` for it. Returns false on timeout (e.g. the worker is
    /// stuck or was never started).
    pub fn quiesce(&self, timeout: Duration) -> bool {
        self.shutdown_pending.store(true, Ordering::Release);
        if self.control.write(1).is_err() {
            return false;
        }
        let (m, cvar) = &self.quiesced;
        let done = lock(m);
        let (done, _) = cvar
            .wait_timeout_while(done, timeout, |d| !*d)
            .unwrap_or_else(|p| p.into_inner());
        *done
    }

    /// The fd to register with the worker's epoll under [`HOST_EVENT`]: readable when the
    /// device runs and a channel socket or pipe has work.
    pub fn host_epoll_fd(&self) -> i32 {
        self.gate.0.as_raw_fd()
    }

    /// Watch host fds directly in the worker's epoll set, whose fd is `worker_epoll` (borrowed:
    /// it is duplicated). Call before the worker runs; with several workers, do not call it
    /// (host fds then stay in the device's own set, which every worker watches).
    pub fn attach_event_loop(&self, worker_epoll: RawFd) -> io::Result<()> {
        // SAFETY: the caller passes the fd of a live epoll set (the handler keeps it open for
        // the session); it is only borrowed for the duplication.
        let fd =
            unsafe { std::os::fd::BorrowedFd::borrow_raw(worker_epoll) }.try_clone_to_owned()?;
        lock(&self.state).gpu.attach_event_loop(fd, FIRST_HOST_SLOT);
        Ok(())
    }

    /// Drop all device state (contexts, resources, host sockets). Called by the serve loop
    /// after the session ended; no request goes to the VMM.
    pub fn reset(&self) {
        self.started.store(false, Ordering::Release);
        lock(&self.state).gpu.reset();
        self.mappings.clear();
        lock(&self.vrings).clear();
        *lock(&self.gpu_socket) = None;
        *lock(&self.channel) = None;
    }

    /// Host events reach the worker (the device runs).
    fn open_gate(&self) {
        let ev = EpollEvent::new(EpollFlags::EPOLLIN, 0);
        match self.gate.add(&self.host_epoll, ev) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => warn!("cannot resume host events: {e}"),
        }
    }

    /// Host events wait (the device is stopped); level-triggered, they fire at the reopening.
    fn close_gate(&self) {
        match self.gate.delete(&self.host_epoll) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => warn!("cannot hold back host events: {e}"),
        }
    }

    /// The device stops: no guest memory access, no SHMEM request, no host event until the
    /// next start. Runs on the vhost-user thread.
    fn stop(&self, mark: Option<RingMark>) {
        {
            // `started` changes under the lifecycle lock only, so that it always agrees with
            // the decision the worker takes in `ensure_running`.
            let mut lc = lock(&self.lifecycle);
            if lc.running() {
                info!("device stopped: paused until the next start shows a resume or a reset");
            }
            lc.stop(mark);
            self.started.store(false, Ordering::Release);
        }
        self.close_gate();
    }

    /// If the device is stopped and the control queue was started again, decide whether this
    /// is a resume or a guest reset and act on it. Returns whether the device runs.
    fn ensure_running(&self, st: &mut State, vrings: &[VringRwLock]) -> bool {
        if self.started.load(Ordering::Acquire) {
            return true;
        }
        let Some(ctrl) = vrings.get(CONTROL_QUEUE as usize) else {
            return false;
        };
        let start = {
            let mut lc = lock(&self.lifecycle);
            // Read under the lifecycle lock: a stop clears `ready` before it takes that lock,
            // so a queue seen ready here is not stopped behind the decision's back.
            let mark = {
                let vr = ctrl.get_ref();
                let q = vr.get_queue();
                if !q.ready() {
                    return false;
                }
                RingMark::of(q)
            };
            let Some(start) = lc.start(mark) else {
                return true;
            };
            self.started.store(true, Ordering::Release);
            start
        };
        match start {
            Start::First => debug!("device started"),
            Start::Resume => {
                info!("device restarted where it stopped (VM paused and resumed): state kept")
            }
            Start::Reset => {
                info!(
                    "device restarted anew (guest reset): dropping {} context(s) and all \
                     resources",
                    st.gpu.context_count()
                );
                st.gpu.reset();
            }
        }
        self.open_gate();
        match start {
            // Inside the started window: the VMM accepts requests now.
            Start::Reset => self.mappings.reconcile(lock(&self.channel).as_ref()),
            // Responses completed while stopped (none normally: nothing runs then).
            Start::Resume => self.publish_completions(st, vrings),
            Start::First => {}
        }
        true
    }

    fn process_queue(
        &self,
        st: &mut State,
        mem: &GuestMemAtomic,
        vrings: &[VringRwLock],
        queue: u16,
    ) {
        let mem = mem.memory();
        let Some(vring) = vrings.get(queue as usize) else {
            return;
        };
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let channel = lock(&self.channel).clone();
        let mapper = VmmMapper {
            channel: channel.as_ref(),
            started: &self.started,
            mappings: &self.mappings,
        };
        let cursor = queue == CURSOR_QUEUE;
        if !cursor {
            st.gpu
                .set_control_queue_size(vring.get_ref().get_queue().size());
        }
        let mut used = false;
        loop {
            let mut vr = vring.get_mut();
            if event_idx {
                let _ = vr.disable_notification();
            }
            while let Some(chain) = vr.get_queue_mut().pop_descriptor_chain(&*mem) {
                let head = chain.head_index();
                if let Some(len) = st.gpu.process_chain(&mem, head, chain, cursor, &mapper) {
                    if let Err(e) = vr.add_used(head, len) {
                        warn!("queue {queue}: add_used failed: {e}");
                    }
                    used = true;
                }
                if !cursor && st.gpu.has_completions() {
                    for (h, l) in st.gpu.take_completions() {
                        let _ = vr.add_used(h, l);
                    }
                    used = true;
                }
            }
            if !cursor {
                // SENDs gathered in this pass go out now; those sent complete in it.
                st.gpu.end_pass(&mem);
                if st.gpu.has_completions() {
                    for (h, l) in st.gpu.take_completions() {
                        let _ = vr.add_used(h, l);
                    }
                    used = true;
                }
            }
            if !event_idx {
                break;
            }
            match vr.enable_notification() {
                Ok(true) => continue,
                _ => break,
            }
        }
        if used {
            Self::signal(vring, event_idx);
        }
    }

    /// Puts completed deferred responses in the used ring. Not while stopped: they wait
    /// for the restart (a resume publishes them; a reset forgets them with their ring).
    fn publish_completions(&self, st: &mut State, vrings: &[VringRwLock]) {
        if !st.gpu.has_completions() {
            return;
        }
        let Some(vring) = vrings.get(CONTROL_QUEUE as usize) else {
            return;
        };
        {
            let mut vr = vring.get_mut();
            // Checked under the vring lock, which a stop takes to clear `ready`.
            if !vr.get_queue().ready() || !self.started.load(Ordering::Acquire) {
                return;
            }
            for (h, l) in st.gpu.take_completions() {
                let _ = vr.add_used(h, l);
            }
        }
        Self::signal(vring, self.event_idx.load(Ordering::Relaxed));
    }

    /// Channel sockets and pipes have work. Runs with the control vring's lock held for
    /// reading, so that a stop waits for it to finish and no delivery writes guest memory
    /// after the VMM got GET_VRING_BASE's reply.
    fn handle_host_events(&self, st: &mut State, vrings: &[VringRwLock], mem: &GuestMemAtomic) {
        let Some(ctrl) = vrings.get(CONTROL_QUEUE as usize) else {
            return;
        };
        {
            let vr = ctrl.get_ref();
            if !vr.get_queue().ready() || !self.started.load(Ordering::Acquire) {
                drop(vr);
                // A stop is under way (or the device never ran): wait for the start.
                self.close_gate();
                return;
            }
            st.gpu.handle_host_events(&mem.memory());
        }
        self.publish_completions(st, vrings);
    }

    /// A host fd watched directly in the worker's epoll set (event id `slot`) has work; while
    /// the device is stopped its events are kept for the next start. Ordered with stops as
    /// [`Backend::handle_host_events`] is.
    fn handle_host_slot(
        &self,
        st: &mut State,
        vrings: &[VringRwLock],
        mem: &GuestMemAtomic,
        slot: u16,
        evset: EventSet,
    ) {
        let events = EpollFlags::from_bits_truncate(evset.bits() as i32);
        let Some(ctrl) = vrings.get(CONTROL_QUEUE as usize) else {
            st.gpu.defer_host_slot(slot, events);
            return;
        };
        {
            let vr = ctrl.get_ref();
            if !vr.get_queue().ready() || !self.started.load(Ordering::Acquire) {
                st.gpu.defer_host_slot(slot, events);
                return;
            }
            st.gpu.handle_host_slot(&mem.memory(), slot, events);
        }
        self.publish_completions(st, vrings);
    }

    /// The events of directly watched host fds kept while the device was stopped, once it
    /// runs again.
    fn handle_deferred(&self, st: &mut State, vrings: &[VringRwLock], mem: &GuestMemAtomic) {
        let Some(ctrl) = vrings.get(CONTROL_QUEUE as usize) else {
            return;
        };
        {
            let vr = ctrl.get_ref();
            if !vr.get_queue().ready() || !self.started.load(Ordering::Acquire) {
                return;
            }
            st.gpu.handle_deferred(&mem.memory());
        }
        self.publish_completions(st, vrings);
    }

    fn signal(vring: &VringRwLock, event_idx: bool) {
        let needed = !event_idx || vring.needs_notification().unwrap_or(true);
        if needed {
            if let Err(e) = vring.signal_used_queue() {
                debug!("signalling the guest failed: {e}");
            }
        }
    }

    fn handle_control(&self, st: &mut State, vrings: &[VringRwLock]) {
        let _ = self.control.read();
        if self.shutdown_pending.load(Ordering::Acquire) {
            info!("shutting down: completing pending fences and closing channels");
            st.gpu.complete_all_and_reset();
            self.publish_completions(st, vrings);
            let (m, cvar) = &self.quiesced;
            *lock(m) = true;
            cvar.notify_all();
        }
    }
}

impl VhostUserBackend for Backend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        DEVICE_FEATURES
    }

    fn acked_features(&self, features: u64) {
        debug!("acked features {features:#x}");
        let mut lc = lock(&self.lifecycle);
        if lc.features(features) {
            info!("features renegotiated while running: the device restarts anew");
            self.started.store(false, Ordering::Release);
            drop(lc);
            self.close_gate();
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::SHMEM
            // Frontends that would otherwise send RESET_OWNER (which the vhost-user library
            // does not pass on) send RESET_DEVICE instead.
            | VhostUserProtocolFeatures::RESET_DEVICE
    }

    fn reset_device(&self) {
        // The library disabled the rings; the next start is a guest reset.
        info!("device reset by the VMM (RESET_DEVICE)");
        {
            let mut lc = lock(&self.lifecycle);
            lc.reset();
            self.started.store(false, Ordering::Release);
        }
        self.close_gate();
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // Any window is answered; bytes past the struct read as zero. Bounded by the vhost-user
        // message size.
        let size = (size as usize).min(256);
        let bytes = self.config.as_slice();
        (0..size)
            .map(|i| {
                (offset as usize)
                    .checked_add(i)
                    .and_then(|o| bytes.get(o).copied())
                    .unwrap_or(0)
            })
            .collect()
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        // QEMU writes the whole struct back when the guest clears events; no event is ever
        // raised, so there is nothing to clear, and read-only fields are ignored.
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemAtomic) -> io::Result<()> {
        // QEMU sends the table again after every SHMEM_MAP, possibly while the worker waits for
        // that map's acknowledgement: never touch `state` here.
        self.mappings.memory_table(&mem.memory());
        *lock(&self.mem) = Some(mem);
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: BackendChannel) {
        debug!("backend request channel received");
        *lock(&self.channel) = Some(backend);
    }

    fn set_gpu_socket(&self, gpu_backend: GpuBackend) -> io::Result<()> {
        // QEMU sends this at every DRIVER_OK. The device has no display to drive, so the socket
        // is only kept open (closing it would make QEMU read EOF forever).
        debug!("GPU socket received");
        *lock(&self.gpu_socket) = Some(gpu_backend);
        Ok(())
    }

    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        let mut sizes = [0u64; 2];
        sizes[SHMID_HOST_VISIBLE as usize] = self.shm_size;
        Ok(VhostUserShMemConfig::new(1, &sizes))
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        lock(&self.exit_fds).push(consumer.as_raw_fd());
        Some((consumer, notifier))
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // A pause or the start of a guest reset: which one shows at the next start. The cursor
        // queue holds nothing; the control queue's position decides.
        if queue_index == u32::from(CONTROL_QUEUE) {
            let mark = lock(&self.vrings)
                .get(CONTROL_QUEUE as usize)
                .map(|v| RingMark::of(v.get_ref().get_queue()));
            self.stop(mark);
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let mut st = lock(&self.state);
        {
            let mut kept = lock(&self.vrings);
            if kept.is_empty() {
                kept.extend(vrings.iter().cloned());
            }
        }
        if device_event == SHUTDOWN_EVENT {
            self.handle_control(&mut st, vrings);
            return Ok(());
        }
        let Some(mem) = lock(&self.mem).clone() else {
            return Ok(());
        };
        match device_event {
            CONTROL_QUEUE | CURSOR_QUEUE => {
                // The first event after a (re)start of the control queue decides what the
                // start is. The cursor queue holds no state: it is served regardless.
                let running = self.ensure_running(&mut st, vrings);
                if running && st.gpu.has_deferred() {
                    self.handle_deferred(&mut st, vrings, &mem);
                }
                if running || device_event == CURSOR_QUEUE {
                    self.process_queue(&mut st, &mem, vrings, device_event);
                }
            }
            HOST_EVENT => self.handle_host_events(&mut st, vrings, &mem),
            slot if slot >= FIRST_HOST_SLOT => {
                self.handle_host_slot(&mut st, vrings, &mem, slot, evset)
            }
            other => warn!("unexpected device event {other}"),
        }
        Ok(())
    }
}
