//! The vhost-user backend: feature and protocol-feature negotiation, the config space, and the
//! glue from queue kicks and host-fd readiness to the virtio-gpu layer.
//!
//! VMM quirks live here (QEMU's GPU_SET_SOCKET, SET_CONFIG of read-only fields, transport bits
//! a frontend acks without asking), never in the protocol code.
//!
//! Threads: `vhost-user-backend` runs one worker thread that receives queue kicks and the
//! readiness of the device's own epoll set (channel sockets, pipes); all device work happens
//! there. The vhost-user request thread also calls into the backend (memory table updates,
//! queue stops, resets), so the state sits behind one mutex. In steady state only the worker
//! takes it, so it is never contended on the data path.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use log::{debug, info, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::GpuBackend;
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
/// Event id of the shutdown request (see [`Backend::quiesce`]).
pub const SHUTDOWN_EVENT: u16 = HOST_EVENT + 1;

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

struct State {
    gpu: Gpu,
    mem: Option<GuestMemAtomic>,
    event_idx: bool,
    gpu_socket: Option<GpuBackend>,
}

/// The backend handed to `vhost-user-backend`. One instance per VMM connection.
pub struct Backend {
    state: Mutex<State>,
    config: VirtioGpuConfig,
    shutdown: EventFd,
    quiesced: (Mutex<bool>, Condvar),
}

impl Backend {
    /// A backend for one VMM session.
    pub fn new(config: &Config) -> io::Result<Self> {
        let num_scanouts = config.num_scanouts;
        let gpu = Gpu::new(
            Arc::new(config.channels.clone()),
            num_scanouts,
            Limits::default(),
        )?;
        Ok(Backend {
            state: Mutex::new(State {
                gpu,
                mem: None,
                event_idx: false,
                gpu_socket: None,
            }),
            config: VirtioGpuConfig {
                num_scanouts,
                num_capsets: 1,
                ..Default::default()
            },
            shutdown: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            quiesced: (Mutex::new(false), Condvar::new()),
        })
    }

    /// The fd to register with the worker's epoll under [`SHUTDOWN_EVENT`].
    pub fn shutdown_fd(&self) -> i32 {
        self.shutdown.as_raw_fd()
    }

    /// Shutdown with a live VMM: ask the worker thread to complete every pending fence (the
    /// guest sees its POLLs return instead of hanging) and close every channel socket and
    /// pipe, then wait up to `timeout` for it. Returns false on timeout (e.g. the worker is
    /// stuck or was never started).
    pub fn quiesce(&self, timeout: Duration) -> bool {
        if self.shutdown.write(1).is_err() {
            return false;
        }
        let (lock, cvar) = &self.quiesced;
        let done = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (done, _) = cvar
            .wait_timeout_while(done, timeout, |d| !*d)
            .unwrap_or_else(|p| p.into_inner());
        *done
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic on the worker thread would already have ended the session; keep serving the
        // state that is there rather than propagating the poison.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The raw fd of the device's epoll set, to register with the worker's epoll.
    pub fn host_epoll_fd(&self) -> i32 {
        self.lock().gpu.epoll().0.as_fd().as_raw_fd()
    }

    /// Drop all device state (contexts, resources, host sockets).
    pub fn reset(&self) {
        let mut st = self.lock();
        st.gpu.reset();
        st.gpu_socket = None;
    }

    fn process_queue(st: &mut State, vrings: &[VringRwLock], queue: u16) {
        let Some(atomic) = st.mem.clone() else {
            return;
        };
        let mem = atomic.memory();
        let Some(vring) = vrings.get(queue as usize) else {
            return;
        };
        let cursor = queue == CURSOR_QUEUE;
        let mut used = false;
        loop {
            let mut vr = vring.get_mut();
            if st.event_idx {
                let _ = vr.disable_notification();
            }
            while let Some(chain) = vr.get_queue_mut().pop_descriptor_chain(&*mem) {
                let head = chain.head_index();
                if let Some(len) = st.gpu.process_chain(&mem, head, chain, cursor) {
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
            if !st.event_idx {
                break;
            }
            match vr.enable_notification() {
                Ok(true) => continue,
                _ => break,
            }
        }
        if used {
            Self::signal(vring, st.event_idx);
        }
    }

    fn publish_completions(st: &mut State, vrings: &[VringRwLock]) {
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
        Self::signal(vring, st.event_idx);
    }

    fn signal(vring: &VringRwLock, event_idx: bool) {
        let needed = !event_idx || vring.needs_notification().unwrap_or(true);
        if needed {
            if let Err(e) = vring.signal_used_queue() {
                debug!("signalling the guest failed: {e}");
            }
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
    }

    fn reset_device(&self) {
        info!("device reset by the VMM");
        self.lock().gpu.reset();
    }

    fn set_event_idx(&self, enabled: bool) {
        self.lock().event_idx = enabled;
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
        self.lock().mem = Some(mem);
        Ok(())
    }

    fn set_gpu_socket(&self, gpu_backend: GpuBackend) -> io::Result<()> {
        // QEMU sends this at every DRIVER_OK. The device has no display to drive, so the socket
        // is only kept open (closing it would make QEMU read EOF forever).
        debug!("GPU socket received");
        self.lock().gpu_socket = Some(gpu_backend);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if queue_index == u32::from(CONTROL_QUEUE) {
            let mut st = self.lock();
            if st.gpu.context_count() > 0 {
                info!("control queue stopped: dropping all contexts and resources");
            }
            st.gpu.reset();
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
        let mut st = self.lock();
        match device_event {
            CONTROL_QUEUE | CURSOR_QUEUE => Self::process_queue(&mut st, vrings, device_event),
            HOST_EVENT => {
                let Some(atomic) = st.mem.clone() else {
                    return Ok(());
                };
                let mem = atomic.memory();
                st.gpu.handle_host_events(&mem);
                Self::publish_completions(&mut st, vrings);
            }
            SHUTDOWN_EVENT => {
                let _ = self.shutdown.read();
                info!("shutting down: completing pending fences and closing channels");
                st.gpu.complete_all_and_reset();
                Self::publish_completions(&mut st, vrings);
                let (lock, cvar) = &self.quiesced;
                *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
                cvar.notify_all();
            }
            other => warn!("unexpected device event {other}"),
        }
        Ok(())
    }
}
