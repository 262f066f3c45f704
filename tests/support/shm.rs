//! Host-visible shared memory as a VMM provides it to a vhost-user device.
//!
//! When VHOST_USER_PROTOCOL_F_SHMEM (bit 22) is negotiated, the VMM asks GET_SHMEM_CONFIG
//! for the region sizes (index = shmid; virtio-gpu's host-visible region is shmid 1) and
//! reserves the whole region in its address space, inaccessible. The backend then asks, on
//! the backend request channel (SET_BACKEND_REQ_FD), for an fd to be mapped at an offset in
//! the region (SHMEM_MAP) or for such a mapping to go away (SHMEM_UNMAP).
//!
//! [`Shm`] is the test VMM's side of that: the reservation, a table of live mappings and a
//! thread serving the backend request channel through the `vhost` crate's
//! `FrontendReqHandler`. The rules follow the VMM being imitated ([`ShmMode`]):
//! - a map must target shmid 1, lie inside the region, be page aligned and not overlap a live
//!   mapping (KVM refuses an overlapping memory slot with EEXIST); anything else is refused
//!   (non-zero reply when the backend asked for one);
//! - QEMU 11.1.3: an unmap must name exactly one live mapping; crosvm: an unmap names a
//!   mapping by its offset only;
//! - a map or unmap served while the device is not started (before the queues are started, or
//!   once a stop began) is a *protocol violation* — QEMU 11.1.3 crashes there, crosvm does not
//!   read the channel until the next activation. It is counted in [`ShmStats::violations`]
//!   and refused;
//! - QEMU drops every mapping itself at a guest reset ([`Shm::drop_all_mappings`], called by
//!   `TestVm`); crosvm keeps them ("TODO: Reset SHMEM_MAP mappings" in its frontend) and has
//!   one KVM memory slot per mapping;
//! - crosvm treats any refused backend request as a device crash and ends the VM: in
//!   [`ShmMode::crosvm`] a refusal is *fatal* — recorded ([`Shm::fatal`]), the vhost-user
//!   connection is shut down and the channel closed, so the test fails.
//!
//! Tests access the region "as the guest" through `TestVm::shm_read`/`shm_write`, which check
//! the mapping table first (under the same lock the request thread takes to change a mapping),
//! so a test gets a clear panic instead of a segfault.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags, VhostUserShMemConfig};
use vhost::vhost_user::{
    Error as VuError, Frontend, FrontendReqHandler, HandlerResult, VhostUserFrontend,
    VhostUserFrontendReqHandler,
};
use vhost::VhostUserMemoryRegionInfo;
use vm_memory::VolatileSlice;

/// virtio-gpu's host-visible shared memory region id.
pub const VIRTIO_GPU_SHM_ID_HOST_VISIBLE: u8 = 1;

/// Guest physical address where the test VMM places the region (its "BAR") when it describes
/// mappings to the backend in SET_MEM_TABLE (see `TestVm::set_mem_table_with_shm`).
pub const DEFAULT_SHM_GPA: u64 = 1 << 39;

/// One live mapping in the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmMapping {
    /// Offset in the region (`shm_offset` of the SHMEM_MAP request).
    pub offset: u64,
    pub len: u64,
    pub writable: bool,
}

/// What the backend request thread did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShmStats {
    /// Successful SHMEM_MAP requests.
    pub maps: u64,
    /// Successful SHMEM_UNMAP requests.
    pub unmaps: u64,
    /// SHMEM_MAP/UNMAP requests answered with a failure (for any reason, violations and
    /// `shm_refuse_next` included).
    pub refused: u64,
    /// SHMEM_MAP/UNMAP requests served while the device was not started (QEMU 11.1.3
    /// crashes on these). Also counted in `refused`.
    pub violations: u64,
    /// Backend requests the `vhost` crate could not parse (wrong size, missing or extra fd,
    /// invalid body, unknown request code).
    pub bad_requests: u64,
    /// Mappings the VMM dropped by itself at a guest reset (QEMU).
    pub dropped_at_reset: u64,
}

/// How the test VMM serves SHMEM_MAP/UNMAP: which VMM it imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmMode {
    /// SHMEM_UNMAP names a mapping by its offset alone (crosvm); otherwise offset and length
    /// must match one mapping exactly (QEMU 11.1.3).
    pub unmap_by_offset: bool,
    /// A refused request ends the session, as crosvm ends the VM (see [`Shm::fatal`]).
    pub fatal_refusals: bool,
    /// Most live mappings (crosvm: one KVM memory slot each; x86 KVM has about 32 764 for
    /// user memory). `usize::MAX`: no limit (QEMU maps into its own address space).
    pub max_mappings: usize,
}

/// KVM user memory slots on x86 (`KVM_USER_MEM_SLOTS` = 32 764 in Linux), the bound crosvm's
/// mappings run into.
pub const KVM_X86_USER_MEM_SLOTS: usize = 32764;

impl ShmMode {
    /// QEMU 11.1.3's rules (the default).
    pub const fn qemu() -> ShmMode {
        ShmMode {
            unmap_by_offset: false,
            fatal_refusals: false,
            max_mappings: usize::MAX,
        }
    }

    /// crosvm's rules (`devices/src/virtio/vhost_user_frontend/handler.rs`, `worker.rs`).
    pub const fn crosvm() -> ShmMode {
        ShmMode {
            unmap_by_offset: true,
            fatal_refusals: true,
            max_mappings: KVM_X86_USER_MEM_SLOTS,
        }
    }
}

impl Default for ShmMode {
    fn default() -> Self {
        ShmMode::qemu()
    }
}

/// The GET_SHMEM_CONFIG reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmConfig {
    pub nregions: u32,
    /// 256 entries, index = shmid, 0 = no such region.
    pub sizes: Vec<u64>,
}

impl ShmConfig {
    pub(crate) fn from_reply(reply: &VhostUserShMemConfig) -> ShmConfig {
        let sizes = reply.memory_sizes;
        ShmConfig {
            nregions: reply.nregions,
            sizes: sizes.to_vec(),
        }
    }

    /// Size of region `shmid` (0 if absent).
    pub fn size(&self, shmid: u8) -> u64 {
        self.sizes.get(usize::from(shmid)).copied().unwrap_or(0)
    }
}

pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// The reserved address range of the region: PROT_NONE where nothing is mapped.
struct Reservation {
    base: usize,
    /// Region size as reported by the backend.
    size: u64,
    /// Bytes reserved (size rounded up to whole pages).
    reserved: usize,
}

impl Reservation {
    fn new(size: u64) -> io::Result<Reservation> {
        let page = page_size();
        let reserved = usize::try_from(size.div_ceil(page) * page)
            .map_err(|_| io::Error::other(format!("region of {size:#x} bytes is too large")))?;
        // SAFETY: a fresh anonymous mapping chosen by the kernel (no MAP_FIXED), so no
        // existing memory is affected; the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserved,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("reserving a shared memory region of {size:#x} bytes: {e}"),
            ));
        }
        Ok(Reservation {
            base: p as usize,
            size,
            reserved,
        })
    }

    fn addr(&self, offset: u64) -> usize {
        self.base + offset as usize
    }

    /// Maps `fd` at `offset` (caller checked: inside the reservation, page aligned).
    fn map_fd(
        &self,
        offset: u64,
        len: u64,
        writable: bool,
        fd: RawFd,
        fd_offset: u64,
    ) -> io::Result<()> {
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let fd_offset = libc::off_t::try_from(fd_offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: [offset, offset+len) lies inside our own reservation (checked by the caller
        // under the state lock), so MAP_FIXED only replaces pages of the reservation, which no
        // Rust reference points into; the result is checked.
        let p = unsafe {
            libc::mmap(
                self.addr(offset) as *mut libc::c_void,
                len as usize,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                fd_offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Puts the range back to the inaccessible reserved state.
    fn clear(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: as in `map_fd`: the range is inside our reservation and only the test VMM's
        // own mappings are replaced; the result is checked.
        let p = unsafe {
            libc::mmap(
                self.addr(offset) as *mut libc::c_void,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: the range is exactly the reservation made in `new`, owned by this value;
        // accesses only happen under the state lock while the reservation is still present.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.reserved);
        }
    }
}

struct Entry {
    len: u64,
    writable: bool,
    fd_offset: u64,
    /// A duplicate of the mapped fd, to describe the mapping in SET_MEM_TABLE.
    file: File,
}

/// Why an access from the test failed.
pub(crate) enum AccessError {
    NotMapped(String),
    ReadOnly(String),
}

impl AccessError {
    pub(crate) fn message(&self) -> &str {
        match self {
            AccessError::NotMapped(m) | AccessError::ReadOnly(m) => m,
        }
    }
}

#[derive(Default)]
struct State {
    mode: ShmMode,
    region: Option<Reservation>,
    mappings: BTreeMap<u64, Entry>,
    started: bool,
    /// A stop happened since the last start.
    stopped: bool,
    refuse_next: u64,
    stats: ShmStats,
    last_refusal: Option<String>,
    channel_open: bool,
    /// Changes of the mapping table (maps, unmaps, drops), to know when QEMU would describe
    /// the table again in SET_MEM_TABLE.
    generation: u64,
    /// Why the session ended ([`ShmMode::fatal_refusals`]).
    fatal: Option<String>,
    /// A duplicate of the vhost-user connection, shut down on a fatal refusal.
    session: Option<UnixStream>,
}

impl State {
    fn table(&self) -> String {
        if self.mappings.is_empty() {
            return "no live mappings".into();
        }
        let v: Vec<String> = self
            .mappings
            .iter()
            .map(|(o, e)| {
                format!(
                    "[{o:#x}, {:#x}) {}",
                    o + e.len,
                    if e.writable { "rw" } else { "ro" }
                )
            })
            .collect();
        format!("live mappings: {}", v.join(", "))
    }

    fn region(&self, shmid: u8) -> Result<&Reservation, String> {
        if shmid != VIRTIO_GPU_SHM_ID_HOST_VISIBLE {
            return Err(format!(
                "shmid {shmid}: the only region is shmid {VIRTIO_GPU_SHM_ID_HOST_VISIBLE}"
            ));
        }
        self.region.as_ref().ok_or_else(|| {
            "no shared memory region (SHMEM not negotiated, GET_SHMEM_CONFIG not sent, or \
             size 0 for shmid 1)"
                .to_string()
        })
    }

    /// The live mapping overlapping [start, end), if any.
    fn overlapping(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        self.mappings
            .range(..end)
            .next_back()
            .filter(|(o, e)| *o + e.len > start)
            .map(|(o, e)| (*o, o + e.len))
    }

    fn map(&mut self, req: &VhostUserMMap, fd: RawFd) -> Result<(), (i32, String)> {
        let (shmid, fd_offset, offset, len, flags) =
            (req.shmid, req.fd_offset, req.shm_offset, req.len, req.flags);
        if !self.started {
            self.stats.violations += 1;
            return Err((
                libc::EBUSY,
                "PROTOCOL VIOLATION: SHMEM_MAP while the device is not started (QEMU 11.1.3 \
                 crashes here)"
                    .into(),
            ));
        }
        if self.refuse_next > 0 {
            self.refuse_next -= 1;
            return Err((libc::ENOMEM, "refused on purpose (shm_refuse_next)".into()));
        }
        let region = self.region(shmid).map_err(|m| (libc::EINVAL, m))?;
        let writable = match VhostUserMMapFlags::from_bits(flags) {
            Some(f) => f.contains(VhostUserMMapFlags::WRITABLE),
            None => return Err((libc::EINVAL, format!("unknown flags {flags:#x}"))),
        };
        let page = page_size();
        if len == 0 || offset % page != 0 || len % page != 0 || fd_offset % page != 0 {
            return Err((
                libc::EINVAL,
                format!(
                    "not page aligned / empty: shm_offset {offset:#x}, len {len:#x}, \
                     fd_offset {fd_offset:#x}"
                ),
            ));
        }
        let end = match offset.checked_add(len) {
            Some(end) if end <= region.size => end,
            _ => {
                return Err((
                    libc::EINVAL,
                    format!(
                        "[{offset:#x}, +{len:#x}) is outside the region of {:#x} bytes",
                        region.size
                    ),
                ))
            }
        };
        if let Some((o, e)) = self.overlapping(offset, end) {
            return Err((
                libc::EEXIST,
                format!("[{offset:#x}, {end:#x}) overlaps the live mapping [{o:#x}, {e:#x})"),
            ));
        }
        if self.mappings.len() >= self.mode.max_mappings {
            return Err((
                libc::ENOSPC,
                format!(
                    "no free memory slot: {} mappings live, the limit is {}",
                    self.mappings.len(),
                    self.mode.max_mappings
                ),
            ));
        }
        // SAFETY: `fd` was received with the request and stays open for the whole call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let file = File::from(
            borrowed
                .try_clone_to_owned()
                .map_err(|e| (libc::EBADF, format!("dup of the mapped fd: {e}")))?,
        );
        // Like QEMU 11.1.3 ("backing store size ... is too small for 'size' option"): the file
        // must hold the whole mapping, not only reach into its last page. (Touching a page
        // wholly past the end of a regular file would also raise SIGBUS.)
        if let Ok(meta) = file.metadata() {
            if meta.is_file() && fd_offset.saturating_add(len) > meta.len() {
                return Err((
                    libc::EINVAL,
                    format!(
                        "fd_offset {fd_offset:#x} + len {len:#x} is past the end of the file \
                         ({:#x} bytes), which QEMU refuses",
                        meta.len()
                    ),
                ));
            }
        }
        region
            .map_fd(offset, len, writable, fd, fd_offset)
            .map_err(|e| {
                (
                    e.raw_os_error().unwrap_or(libc::EINVAL),
                    format!("mmap of [{offset:#x}, +{len:#x}) failed: {e}"),
                )
            })?;
        self.mappings.insert(
            offset,
            Entry {
                len,
                writable,
                fd_offset,
                file,
            },
        );
        self.stats.maps += 1;
        self.generation += 1;
        Ok(())
    }

    fn unmap(&mut self, req: &VhostUserMMap) -> Result<(), (i32, String)> {
        let (shmid, offset, len) = (req.shmid, req.shm_offset, req.len);
        if !self.started {
            self.stats.violations += 1;
            return Err((
                libc::EBUSY,
                "PROTOCOL VIOLATION: SHMEM_UNMAP while the device is not started (QEMU 11.1.3 \
                 crashes here)"
                    .into(),
            ));
        }
        let region = self.region(shmid).map_err(|m| (libc::EINVAL, m))?;
        // crosvm looks the mapping up by its offset and ignores the length.
        let len = match self.mappings.get(&offset) {
            Some(e) if self.mode.unmap_by_offset => e.len,
            _ => len,
        };
        match self.mappings.get(&offset) {
            Some(e) if e.len == len => {}
            _ => {
                return Err((
                    libc::EINVAL,
                    format!(
                        "[{offset:#x}, +{len:#x}) is not exactly one live mapping ({})",
                        self.table()
                    ),
                ))
            }
        }
        region.clear(offset, len).map_err(|e| {
            (
                e.raw_os_error().unwrap_or(libc::EINVAL),
                format!("clearing [{offset:#x}, +{len:#x}) failed: {e}"),
            )
        })?;
        self.mappings.remove(&offset);
        self.stats.unmaps += 1;
        self.generation += 1;
        Ok(())
    }

    fn drop_all_mappings(&mut self) {
        let ranges: Vec<(u64, u64)> = self.mappings.iter().map(|(o, e)| (*o, e.len)).collect();
        if let Some(region) = &self.region {
            for (o, l) in ranges {
                if let Err(e) = region.clear(o, l) {
                    panic!("shared memory: clearing [{o:#x}, +{l:#x}) at reset failed: {e}");
                }
            }
        }
        self.stats.dropped_at_reset += self.mappings.len() as u64;
        if !self.mappings.is_empty() {
            self.generation += 1;
        }
        self.mappings.clear();
    }

    /// Checks that [offset, offset+len) is covered by live mappings (writable ones when
    /// `write`), returning the region.
    fn check_access(
        &self,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<&Reservation, AccessError> {
        let what = if write { "write" } else { "read" };
        let region = self.region.as_ref().ok_or_else(|| {
            AccessError::NotMapped(format!("shm {what}: no shared memory region"))
        })?;
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= region.size)
            .ok_or_else(|| {
                AccessError::NotMapped(format!(
                    "shm {what} of [{offset:#x}, +{len:#x}) is outside the region of {:#x} bytes",
                    region.size
                ))
            })?;
        let mut pos = offset;
        while pos < end {
            let Some((o, e)) = self
                .mappings
                .range(..=pos)
                .next_back()
                .filter(|(o, e)| *o + e.len > pos)
            else {
                return Err(AccessError::NotMapped(format!(
                    "shm {what} of [{offset:#x}, {end:#x}): offset {pos:#x} is not mapped ({})",
                    self.table()
                )));
            };
            if write && !e.writable {
                return Err(AccessError::ReadOnly(format!(
                    "shm write of [{offset:#x}, {end:#x}): the mapping [{o:#x}, {:#x}) is \
                     read-only",
                    o + e.len
                )));
            }
            pos = o + e.len;
        }
        Ok(region)
    }
}

/// State shared between the test thread and the backend request thread.
pub(crate) struct ShmShared {
    state: Mutex<State>,
    changed: Condvar,
}

impl ShmShared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test must not turn into a second panic here.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(
        &self,
        mut st: MutexGuard<'_, State>,
        what: &str,
        r: Result<(), (i32, String)>,
    ) -> HandlerResult<u64> {
        let out = match r {
            Ok(()) => Ok(0),
            Err((errno, msg)) => {
                st.stats.refused += 1;
                let why = format!("{what}: {msg}");
                if st.mode.fatal_refusals && st.fatal.is_none() {
                    // crosvm: the worker fails, the device crashes, the VM exits. The reply
                    // still goes out (the handler's caller sends it); the connection ends.
                    if let Some(s) = &st.session {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                    st.fatal = Some(why.clone());
                }
                st.last_refusal = Some(why);
                Err(io::Error::from_raw_os_error(errno))
            }
        };
        drop(st);
        self.changed.notify_all();
        out
    }
}

impl VhostUserFrontendReqHandler for ShmShared {
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> HandlerResult<u64> {
        let mut st = self.lock();
        let r = st.map(req, fd.as_raw_fd());
        self.finish(st, "SHMEM_MAP", r)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
        let mut st = self.lock();
        let r = st.unmap(req);
        self.finish(st, "SHMEM_UNMAP", r)
    }
}

struct Server {
    thread: JoinHandle<()>,
    /// A duplicate of the socket the thread reads, to wake it up (shutdown) at the end.
    wake: UnixStream,
}

/// The test VMM's shared memory: region, mapping table and backend request thread.
pub struct Shm {
    shared: Arc<ShmShared>,
    server: Option<Server>,
    config: Option<ShmConfig>,
    gpa: u64,
}

impl Shm {
    pub(crate) fn new(gpa: u64, mode: ShmMode) -> Shm {
        Shm {
            shared: Arc::new(ShmShared {
                state: Mutex::new(State {
                    mode,
                    ..State::default()
                }),
                changed: Condvar::new(),
            }),
            server: None,
            config: None,
            gpa,
        }
    }

    /// Records the GET_SHMEM_CONFIG reply and reserves region 1 if it has a size.
    pub(crate) fn configure(&mut self, config: ShmConfig) -> io::Result<()> {
        let size = config.size(VIRTIO_GPU_SHM_ID_HOST_VISIBLE);
        self.config = Some(config);
        if size > 0 {
            let r = Reservation::new(size)?;
            self.shared.lock().region = Some(r);
        }
        Ok(())
    }

    /// Creates the backend request channel, sends its other end with SET_BACKEND_REQ_FD and
    /// starts the thread serving it.
    pub(crate) fn connect_channel(
        &mut self,
        frontend: &mut Frontend,
        reply_ack: bool,
    ) -> io::Result<()> {
        let mut handler = FrontendReqHandler::new(self.shared.clone())
            .map_err(|e| io::Error::other(format!("backend request channel: {e}")))?;
        handler.set_reply_ack_flag(reply_ack);
        let tx = handler.get_tx_raw_fd();
        frontend
            .set_backend_request_fd(&tx)
            .map_err(|e| io::Error::other(format!("SET_BACKEND_REQ_FD: {e}")))?;
        // The handler keeps its own copy of the end it just sent; as long as that is open the
        // thread would never see the backend close the channel. The fd now travels in (or
        // was received from) the socket, so point the handler's copy at a placeholder socket.
        let (placeholder, _peer) = UnixStream::pair()?;
        // SAFETY: `tx` is open and owned by `handler`, which is alive; dup3 atomically makes
        // that descriptor number refer to the placeholder socket instead, so it stays a valid
        // AF_UNIX stream socket owned (and later closed) by the handler. `placeholder` is open.
        if unsafe { libc::dup3(placeholder.as_raw_fd(), tx, libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the handler's receiving socket is open while `handler` lives (here).
        let rx = unsafe { BorrowedFd::borrow_raw(handler.as_raw_fd()) };
        let wake = UnixStream::from(rx.try_clone_to_owned()?);
        self.shared.lock().channel_open = true;
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name("vmm-backend-req".into())
            .spawn(move || {
                loop {
                    match handler.handle_request() {
                        // Handler refusals were already answered and counted.
                        Ok(_) | Err(VuError::ReqHandlerError(_)) | Err(VuError::SocketRetry(_)) => {
                        }
                        Err(
                            e @ (VuError::InvalidMessage
                            | VuError::IncorrectFds
                            | VuError::OversizedMsg
                            | VuError::InvalidParam),
                        ) => {
                            let mut st = shared.lock();
                            st.stats.bad_requests += 1;
                            st.last_refusal = Some(format!("backend request: {e}"));
                        }
                        // Disconnected, partial message, broken socket: the channel is gone.
                        Err(_) => break,
                    }
                    if shared.lock().fatal.is_some() {
                        // The "VM" ended: the channel closes with it.
                        break;
                    }
                }
                shared.lock().channel_open = false;
                shared.changed.notify_all();
            })?;
        self.server = Some(Server { thread, wake });
        Ok(())
    }

    /// Closes the VMM's end of the backend request channel (the backend's next request
    /// fails) and waits for the thread to finish.
    pub(crate) fn close_channel(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.wake.shutdown(Shutdown::Both);
            let _ = s.thread.join();
        }
    }

    /// The device starts (queues being set up). With `drop_after_stop` (QEMU, a guest
    /// that comes back after a reset) a start that follows a stop first drops every mapping.
    pub(crate) fn device_start(&self, drop_after_stop: bool) {
        let mut st = self.shared.lock();
        if st.stopped && drop_after_stop {
            st.drop_all_mappings();
        }
        st.stopped = false;
        st.started = true;
        drop(st);
        self.shared.changed.notify_all();
    }

    /// QEMU at a guest reset: every mapping goes, without a request from the backend.
    pub(crate) fn drop_all_mappings(&self) {
        self.shared.lock().drop_all_mappings();
        self.shared.changed.notify_all();
    }

    /// The connection to shut down when a refusal is fatal.
    pub(crate) fn set_session(&self, conn: UnixStream) {
        self.shared.lock().session = Some(conn);
    }

    /// Why the session ended, if a refusal was fatal ([`ShmMode::fatal_refusals`]).
    pub(crate) fn fatal(&self) -> Option<String> {
        self.shared.lock().fatal.clone()
    }

    /// Changes of the mapping table so far.
    pub(crate) fn generation(&self) -> u64 {
        self.shared.lock().generation
    }

    /// The device stops (a stop begins): maps/unmaps from now on are violations.
    pub(crate) fn device_stop(&self) {
        let mut st = self.shared.lock();
        st.started = false;
        st.stopped = true;
    }

    pub(crate) fn config(&self) -> Option<&ShmConfig> {
        self.config.as_ref()
    }

    pub(crate) fn gpa(&self) -> u64 {
        self.gpa
    }

    pub(crate) fn size(&self) -> Option<u64> {
        self.shared.lock().region.as_ref().map(|r| r.size)
    }

    pub(crate) fn channel_open(&self) -> bool {
        self.shared.lock().channel_open
    }

    pub(crate) fn stats(&self) -> ShmStats {
        self.shared.lock().stats
    }

    pub(crate) fn last_refusal(&self) -> Option<String> {
        self.shared.lock().last_refusal.clone()
    }

    pub(crate) fn refuse_next(&self, n: u64) {
        self.shared.lock().refuse_next = n;
    }

    pub(crate) fn mappings(&self) -> Vec<ShmMapping> {
        let st = self.shared.lock();
        st.mappings
            .iter()
            .map(|(o, e)| ShmMapping {
                offset: *o,
                len: e.len,
                writable: e.writable,
            })
            .collect()
    }

    pub(crate) fn mapping_at(&self, offset: u64) -> Option<ShmMapping> {
        let st = self.shared.lock();
        mapping_at(&st, offset)
    }

    /// Waits until `pred` holds for the mapping at `offset` (None = not mapped).
    pub(crate) fn wait_mapping(
        &self,
        offset: u64,
        timeout: Duration,
        pred: impl Fn(Option<ShmMapping>) -> bool,
    ) -> Option<Option<ShmMapping>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            let m = mapping_at(&st, offset);
            if pred(m) {
                return Some(m);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub(crate) fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, AccessError> {
        let st = self.shared.lock();
        let region = st.check_access(offset, len as u64, false)?;
        let mut buf = vec![0u8; len];
        if len > 0 {
            // SAFETY: [offset, offset+len) is covered by live readable mappings (checked
            // above), which cannot change while we hold the state lock.
            let slice = unsafe { VolatileSlice::new(region.addr(offset) as *mut u8, len) };
            slice.copy_to(&mut buf[..]);
        }
        Ok(buf)
    }

    pub(crate) fn write(&self, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        let st = self.shared.lock();
        let region = st.check_access(offset, data.len() as u64, true)?;
        if !data.is_empty() {
            // SAFETY: [offset, offset+len) is covered by live writable mappings (checked
            // above), which cannot change while we hold the state lock.
            let slice = unsafe { VolatileSlice::new(region.addr(offset) as *mut u8, data.len()) };
            slice.copy_from(data);
        }
        Ok(())
    }

    /// Memory regions describing the live mappings at `gpa() + offset`, as QEMU adds them to
    /// SET_MEM_TABLE. The returned files keep the fds alive while the regions are sent.
    pub(crate) fn mem_table_regions(
        &self,
    ) -> io::Result<(Vec<VhostUserMemoryRegionInfo>, Vec<File>)> {
        let st = self.shared.lock();
        let Some(region) = &st.region else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut regions = Vec::new();
        let mut files = Vec::new();
        for (o, e) in &st.mappings {
            let f = e.file.try_clone()?;
            regions.push(VhostUserMemoryRegionInfo::new(
                self.gpa + o,
                e.len,
                region.addr(*o) as u64,
                e.fd_offset,
                f.as_raw_fd(),
            ));
            files.push(f);
        }
        Ok((regions, files))
    }
}

fn mapping_at(st: &State, offset: u64) -> Option<ShmMapping> {
    st.mappings
        .range(..=offset)
        .next_back()
        .filter(|(o, e)| *o + e.len > offset)
        .map(|(o, e)| ShmMapping {
            offset: *o,
            len: e.len,
            writable: e.writable,
        })
}

impl Drop for Shm {
    fn drop(&mut self) {
        self.close_channel();
        let region = {
            let mut st = self.shared.lock();
            st.mappings.clear();
            st.region.take()
        };
        drop(region);
    }
}
