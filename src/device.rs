//! The vhost-user backend: feature and protocol-feature negotiation, the config space, the
//! host-visible shared-memory region, and the glue from queue kicks and host-fd readiness to the
//! virtio-gpu layer.
//!
//! VMM quirks live here (QEMU's GPU_SET_SOCKET, SET_CONFIG of read-only fields, transport bits
//! a frontend acks without asking, no SHMEM requests while the device is stopped), never in the
//! protocol code.
//!
//! Threads: `vhost-user-backend` runs one worker thread that receives queue kicks, the readiness
//! of the device's own epoll set (channel sockets, pipes) and control events (reset, shutdown);
//! all device work happens there, under the `state` mutex. The vhost-user request thread also
//! calls into the backend (memory table updates, queue stops, resets, the backend channel); those
//! callbacks never take `state`. That matters: the worker holds `state` while it waits for the
//! VMM to acknowledge a SHMEM_MAP, and the VMM may send SET_MEM_TABLE (and wait for its reply)
//! before it acknowledges.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use log::{debug, info, warn};
use vhost::vhost_user::message::{
    VhostUserMMap, VhostUserMMapFlags, VhostUserProtocolFeatures, VhostUserShMemConfig,
};
use vhost::vhost_user::{Backend as BackendChannel, GpuBackend, VhostUserFrontendReqHandler};
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
use crate::virtio_gpu::{Gpu, Limits, ShmMapper};

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
/// Event id of control requests to the worker: reset and shutdown (see [`Backend::quiesce`]).
pub const SHUTDOWN_EVENT: u16 = HOST_EVENT + 1;
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
    /// Between the first queue kick and the control queue's stop: the only window in which the
    /// VMM accepts SHMEM_MAP/UNMAP (QEMU 11.1.3 crashes otherwise).
    started: AtomicBool,
    reset_pending: AtomicBool,
    shutdown_pending: AtomicBool,
    gpu_socket: Mutex<Option<GpuBackend>>,
    channel: Mutex<Option<BackendChannel>>,
    control: EventFd,
    quiesced: (Mutex<bool>, Condvar),
    /// Exit-event fds handed to `vhost-user-backend`, which turns them into raw fds and never
    /// closes them; [`Backend::close_exit_event_fds`] does, once the session is over.
    exit_fds: Mutex<Vec<RawFd>>,
}

/// Maps blobs into the VMM's host-visible region over the vhost-user backend channel.
struct VmmMapper<'a> {
    channel: Option<&'a BackendChannel>,
    started: &'a AtomicBool,
}

impl VmmMapper<'_> {
    fn channel(&self) -> io::Result<&BackendChannel> {
        if !self.started.load(Ordering::Acquire) {
            return Err(io::Error::other("the device is stopped"));
        }
        self.channel.ok_or_else(|| {
            io::Error::other("the VMM gave no backend channel (BACKEND_REQ and SHMEM needed)")
        })
    }

    fn msg(offset: u64, len: u64, writable: bool) -> VhostUserMMap {
        VhostUserMMap {
            shmid: SHMID_HOST_VISIBLE,
            fd_offset: 0,
            shm_offset: offset,
            len,
            flags: if writable {
                VhostUserMMapFlags::WRITABLE.bits()
            } else {
                0
            },
            ..Default::default()
        }
    }
}

impl ShmMapper for VmmMapper<'_> {
    fn map(&self, fd: BorrowedFd<'_>, offset: u64, len: u64, writable: bool) -> io::Result<()> {
        self.channel()?
            .shmem_map(&Self::msg(offset, len, writable), &fd)
            .map(|_| ())
            .map_err(|e| io::Error::other(format!("SHMEM_MAP refused: {e}")))
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        self.channel()?
            .shmem_unmap(&Self::msg(offset, len, false))
            .map(|_| ())
            .map_err(|e| io::Error::other(format!("SHMEM_UNMAP refused: {e}")))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic on another thread would already have ended the session; keep using the data
    // rather than propagating the poison.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Backend {
    /// A backend for one VMM session.
    pub fn new(config: &Config) -> io::Result<Self> {
        let num_scanouts = config.num_scanouts;
        let gpu = Gpu::new(
            config.channels.clone(),
            Arc::new(crate::sandbox::BrokerConnector),
            num_scanouts,
            config.shm_size,
            Limits::default(),
        )?;
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
            reset_pending: AtomicBool::new(false),
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

    /// The raw fd of the device's epoll set, to register with the worker's epoll.
    pub fn host_epoll_fd(&self) -> i32 {
        lock(&self.state).gpu.epoll().0.as_fd().as_raw_fd()
    }

    /// Drop all device state (contexts, resources, host sockets). Called by the serve loop
    /// after the session ended; no request goes to the VMM.
    pub fn reset(&self) {
        self.started.store(false, Ordering::Release);
        lock(&self.state).gpu.reset();
        *lock(&self.gpu_socket) = None;
        *lock(&self.channel) = None;
    }

    /// Ask the worker to drop all device state (the queues were stopped or the device reset).
    fn request_reset(&self) {
        self.started.store(false, Ordering::Release);
        self.reset_pending.store(true, Ordering::Release);
        if let Err(e) = self.control.write(1) {
            warn!("cannot wake the worker for a reset: {e}");
        }
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

    fn publish_completions(&self, st: &mut State, vrings: &[VringRwLock]) {
        if !st.gpu.has_completions() {
            return;
        }
        let Some(vring) = vrings.get(CONTROL_QUEUE as usize) else {
            return;
        };
        {
            let mut vr = vring.get_mut();
            for (h, l) in st.gpu.take_completions() {
                let _ = vr.add_used(h, l);
            }
        }
        Self::signal(vring, self.event_idx.load(Ordering::Relaxed));
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
        if self.reset_pending.swap(false, Ordering::AcqRel) {
            if st.gpu.context_count() > 0 {
                info!("device stopped or reset: dropping all contexts and resources");
            }
            st.gpu.reset();
        }
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
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::SHMEM
    }

    fn reset_device(&self) {
        info!("device reset by the VMM");
        self.request_reset();
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
        if queue_index == u32::from(CONTROL_QUEUE) {
            // Mappings are dropped by the VMM itself; no SHMEM request may follow a stop.
            self.request_reset();
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let mut st = lock(&self.state);
        if device_event == SHUTDOWN_EVENT {
            self.handle_control(&mut st, vrings);
            return Ok(());
        }
        if self.reset_pending.load(Ordering::Acquire) {
            self.handle_control(&mut st, vrings);
        }
        let Some(mem) = lock(&self.mem).clone() else {
            return Ok(());
        };
        match device_event {
            CONTROL_QUEUE | CURSOR_QUEUE => {
                // A kick means the queues run: mapping requests are welcome from here on.
                self.started.store(true, Ordering::Release);
                self.process_queue(&mut st, &mem, vrings, device_event);
            }
            HOST_EVENT => {
                st.gpu.handle_host_events(&mem.memory());
                self.publish_completions(&mut st, vrings);
            }
            other => warn!("unexpected device event {other}"),
        }
        Ok(())
    }
}
