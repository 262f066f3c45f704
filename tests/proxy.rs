//! The guest proxy's session logic end to end, without a guest kernel: the proxy's
//! [`VirtGpuDevice`] trait is implemented on the test VMM (`FakeGpu`), which talks vhost-user
//! to the real daemon, and the test plays both the guest client (connected to the proxy's
//! socket) and the host service (accepting the daemon's channel connection).
//!
//! How the fake maps the kernel's behaviour (Linux `drivers/gpu/drm/virtio`, docs/protocol.md §1.9):
//! - CONTEXT_INIT → CTX_CREATE; GUEST blobs live in the VM's guest memory and are attached to
//!   the context; HOST3D mappable blobs → CREATE_BLOB + RESOURCE_MAP_BLOB at an offset the
//!   fake allocates in the host-visible region + CTX_ATTACH; GEM_CLOSE → CTX_DETACH and, unless
//!   exported, UNMAP + UNREF.
//! - EXECBUFFER → SUBMIT_3D: unfenced without a ring; on a polled ring fenced with
//!   FENCE|INFO_RING_IDX, and a background thread turns the fence's completion into a
//!   `drm_event {0x90000000, 8}` on the file's event socket; on another ring (the query ring)
//!   fenced and waited for, so WAIT returns at once.
//! - Like the kernel, EXECBUFFER does not report the host's refusals; the fake records them
//!   and the tests check that none happened.
//! - PRIME export of a HOST3D blob cannot hand out the region itself (the test VMM has no fd
//!   for a mapping), so it returns a memfd holding a copy of the blob's bytes taken at export
//!   time; PRIME import is not supported (no dma-bufs exist here).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use cross_domain_proxy::device::{
    context_param, param, Blob, BlobCreate, BlobMapping, DeviceError, ResourceInfo, VirtGpuDevice,
    BLOB_FLAG_USE_MAPPABLE, BLOB_MEM_GUEST, BLOB_MEM_HOST3D,
};
use cross_domain_proxy::{self as proxy, ProxyConfig, Session, SessionError};
use support::*;
use tempfile::TempDir;

const T: Duration = Duration::from_secs(10);
const PAGE: u64 = 4096;

// ---- the fake guest kernel -----------------------------------------------------------------

struct KState {
    vm: TestVm,
    /// Fenced POLLs in flight: (head, ctx, the file's event socket).
    polls: Vec<(u16, u32, UnixStream)>,
    next_shm_offset: u64,
    /// Make the next n CONTEXT_INITs fail (as if the kernel refused).
    fail_context_init: u32,
    /// Commands the host refused (the kernel would only log them).
    host_errors: Vec<String>,
    capset_ids: u64,
    /// SUBMIT_3Ds by their first command's id.
    commands: HashMap<u8, u64>,
}

/// One test VMM shared by every fake DRM file, as one guest kernel serves every process.
struct FakeKernel {
    state: Mutex<KState>,
}

impl FakeKernel {
    fn new(mut vm: TestVm) -> Arc<FakeKernel> {
        let info = vm.get_capset_info(0);
        let capset = parse_capset_info(&info).capset_id;
        let k = Arc::new(FakeKernel {
            state: Mutex::new(KState {
                vm,
                polls: Vec::new(),
                next_shm_offset: 0,
                fail_context_init: 0,
                host_errors: Vec::new(),
                capset_ids: 1 << capset,
                commands: HashMap::new(),
            }),
        });
        let weak = Arc::downgrade(&k);
        thread::Builder::new()
            .name("fake-fence-events".into())
            .spawn(move || loop {
                thread::sleep(Duration::from_micros(200));
                let Some(k) = weak.upgrade() else { return };
                let mut guard = k.lock();
                let st = &mut *guard;
                let mut i = 0;
                while i < st.polls.len() {
                    let head = st.polls[i].0;
                    if !st.vm.is_done(CONTROLQ, head) {
                        i += 1;
                        continue;
                    }
                    let (_, ctx, events) = st.polls.swap_remove(i);
                    if let Some(resp) = st.vm.wait_for(CONTROLQ, head, Duration::ZERO) {
                        if resp_type(&resp) != RESP_OK_NODATA {
                            st.host_errors.push(format!(
                                "ctx {ctx}: POLL answered {}",
                                resp_name(resp_type(&resp))
                            ));
                        }
                    }
                    // The kernel signals the fence whatever the response; the file may be
                    // closed already.
                    let mut ev = [0u8; 8];
                    ev[..4].copy_from_slice(&0x9000_0000u32.to_ne_bytes());
                    ev[4..].copy_from_slice(&8u32.to_ne_bytes());
                    let _ = (&events).write_all(&ev);
                }
            })
            .expect("spawn the fence event thread");
        k
    }

    fn lock(&self) -> MutexGuard<'_, KState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn host_errors(&self) -> Vec<String> {
        self.lock().host_errors.clone()
    }
}

#[derive(Debug)]
enum BoKind {
    Guest(GuestBlob),
    Host { offset: Option<u64> },
}

#[derive(Debug)]
struct Bo {
    res: u32,
    size: u64,
    blob_mem: u32,
    kind: BoKind,
    exported: bool,
}

/// One fake DRM file.
struct FakeGpu {
    k: Arc<FakeKernel>,
    ctx: Option<u32>,
    poll_mask: u64,
    bos: HashMap<u32, Bo>,
    next_bo: u32,
    events: UnixStream,
    events_tx: UnixStream,
}

fn errno(op: &'static str, e: i32) -> DeviceError {
    DeviceError::new(op, io::Error::from_raw_os_error(e))
}

impl FakeGpu {
    fn new(k: Arc<FakeKernel>) -> FakeGpu {
        let (events, events_tx) = UnixStream::pair().expect("socketpair");
        events.set_nonblocking(true).unwrap();
        FakeGpu {
            k,
            ctx: None,
            poll_mask: 0,
            bos: HashMap::new(),
            next_bo: 0,
            events,
            events_tx,
        }
    }

    fn ctx(&self, op: &'static str) -> Result<u32, DeviceError> {
        self.ctx.ok_or_else(|| errno(op, libc::EINVAL))
    }

    /// Records a refused command like the kernel's log line.
    fn check(st: &mut KState, what: &str, resp: &[u8], ok: u32) -> bool {
        let t = resp_type(resp);
        if t != ok {
            st.host_errors.push(format!("{what}: {}", resp_name(t)));
            return false;
        }
        true
    }

    fn release(st: &mut KState, ctx: u32, bo: Bo) {
        let resp = st.vm.ctx_detach(ctx, bo.res);
        Self::check(st, "CTX_DETACH_RESOURCE", &resp, RESP_OK_NODATA);
        if bo.exported {
            // The dma-buf keeps the object alive in the kernel.
            return;
        }
        if let BoKind::Host { offset: Some(_) } = bo.kind {
            let resp = st.vm.resource_unmap_blob(bo.res);
            Self::check(st, "RESOURCE_UNMAP_BLOB", &resp, RESP_OK_NODATA);
        }
        let resp = st.vm.resource_unref(bo.res);
        Self::check(st, "RESOURCE_UNREF", &resp, RESP_OK_NODATA);
        if let BoKind::Guest(g) = &bo.kind {
            st.vm.free_blob_memory(g);
        }
    }
}

impl Drop for FakeGpu {
    fn drop(&mut self) {
        let k = self.k.clone();
        let mut guard = k.lock();
        let st = &mut *guard;
        let Some(ctx) = self.ctx else { return };
        // File close: handles go first, then the context (Linux: GEM release, postclose).
        for (_, bo) in self.bos.drain() {
            Self::release(st, ctx, bo);
        }
        let mut i = 0;
        while i < st.polls.len() {
            if st.polls[i].1 == ctx {
                let (head, _, _) = st.polls.swap_remove(i);
                st.vm.discard(CONTROLQ, head);
            } else {
                i += 1;
            }
        }
        let resp = st.vm.ctx_destroy(ctx);
        Self::check(st, "CTX_DESTROY", &resp, RESP_OK_NODATA);
    }
}

/// A mapped blob: guest memory of the VM, or a range of the host-visible region.
enum FakeMapping {
    Guest {
        k: Arc<FakeKernel>,
        blob: GuestBlob,
    },
    Host {
        k: Arc<FakeKernel>,
        offset: u64,
        len: usize,
    },
}

impl FakeMapping {
    fn check(&self, op: &'static str, offset: usize, len: usize) -> Result<(), DeviceError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(errno(op, libc::EFAULT));
        }
        Ok(())
    }
}

impl BlobMapping for FakeMapping {
    fn len(&self) -> usize {
        match self {
            FakeMapping::Guest { blob, .. } => blob.size as usize,
            FakeMapping::Host { len, .. } => *len,
        }
    }

    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.check("read", offset, buf.len())?;
        let data = match self {
            FakeMapping::Guest { k, blob } => k.lock().vm.read_blob(blob, offset as u64, buf.len()),
            FakeMapping::Host { k, offset: o, .. } => {
                k.lock().vm.shm_read(o + offset as u64, buf.len())
            }
        };
        buf.copy_from_slice(&data);
        Ok(())
    }

    fn write(&self, offset: usize, data: &[u8]) -> Result<(), DeviceError> {
        self.check("write", offset, data.len())?;
        match self {
            FakeMapping::Guest { k, blob } => k.lock().vm.write_blob(blob, offset as u64, data),
            FakeMapping::Host { k, offset: o, .. } => {
                k.lock().vm.shm_write(o + offset as u64, data)
            }
        }
        Ok(())
    }
}

impl VirtGpuDevice for FakeGpu {
    type Mapping = FakeMapping;

    fn get_param(&mut self, p: u64) -> Result<u64, DeviceError> {
        let st = self.k.lock();
        Ok(match p {
            param::FEATURES_3D | param::CAPSET_QUERY_FIX | param::RESOURCE_BLOB => 1,
            param::CONTEXT_INIT => 1,
            param::HOST_VISIBLE => u64::from(st.vm.shm_size().is_some()),
            param::CROSS_DEVICE => 0,
            param::SUPPORTED_CAPSET_IDS => st.capset_ids,
            _ => return Err(errno("GETPARAM", libc::EINVAL)),
        })
    }

    fn get_caps(&mut self, id: u32, version: u32, out: &mut [u8]) -> Result<(), DeviceError> {
        let resp = self.k.lock().vm.get_capset(id, version);
        if resp_type(&resp) != RESP_OK_CAPSET {
            return Err(errno("GET_CAPS", libc::EINVAL));
        }
        let caps = &resp[HDR_SIZE..];
        let n = out.len().min(caps.len());
        out[..n].copy_from_slice(&caps[..n]);
        Ok(())
    }

    fn context_init(&mut self, params: &[(u64, u64)]) -> Result<(), DeviceError> {
        if self.ctx.is_some() {
            return Err(errno("CONTEXT_INIT", libc::EEXIST));
        }
        let mut capset = 0;
        for &(p, v) in params {
            match p {
                context_param::CAPSET_ID => capset = v as u32,
                context_param::NUM_RINGS => {}
                context_param::POLL_RINGS_MASK => self.poll_mask = v,
                _ => return Err(errno("CONTEXT_INIT", libc::EINVAL)),
            }
        }
        let mut st = self.k.lock();
        if st.fail_context_init > 0 {
            st.fail_context_init -= 1;
            return Err(errno("CONTEXT_INIT", libc::ENOMEM));
        }
        let ctx = st.vm.next_ctx_id();
        let resp = st.vm.ctx_create(ctx, capset);
        if !Self::check(&mut st, "CTX_CREATE", &resp, RESP_OK_NODATA) {
            return Err(errno("CONTEXT_INIT", libc::EINVAL));
        }
        self.ctx = Some(ctx);
        Ok(())
    }

    fn create_blob(&mut self, req: &BlobCreate) -> Result<Blob, DeviceError> {
        let ctx = self.ctx("RESOURCE_CREATE_BLOB")?;
        let mut guard = self.k.lock();
        let st = &mut *guard;
        let res = st.vm.next_resource_id();
        let kind = match req.blob_mem {
            BLOB_MEM_GUEST => BoKind::Guest(st.vm.create_guest_blob(res, req.size)),
            BLOB_MEM_HOST3D => {
                let resp = st
                    .vm
                    .create_host_blob(ctx, res, req.blob_id, req.size, req.blob_flags);
                if !Self::check(st, "RESOURCE_CREATE_BLOB", &resp, RESP_OK_NODATA) {
                    return Err(errno("RESOURCE_CREATE_BLOB", libc::EINVAL));
                }
                let mut offset = None;
                if req.blob_flags & BLOB_FLAG_USE_MAPPABLE != 0 {
                    let o = st.next_shm_offset;
                    st.next_shm_offset += req.size.div_ceil(PAGE) * PAGE;
                    let resp = st.vm.resource_map_blob(res, o);
                    if !Self::check(st, "RESOURCE_MAP_BLOB", &resp, RESP_OK_MAP_INFO) {
                        st.vm.resource_unref(res);
                        return Err(errno("RESOURCE_CREATE_BLOB", libc::EINVAL));
                    }
                    st.vm.shm_wait_mapping(o, T).expect("the VMM maps the blob");
                    offset = Some(o);
                }
                BoKind::Host { offset }
            }
            _ => return Err(errno("RESOURCE_CREATE_BLOB", libc::EINVAL)),
        };
        let resp = st.vm.ctx_attach(ctx, res);
        Self::check(st, "CTX_ATTACH_RESOURCE", &resp, RESP_OK_NODATA);
        self.next_bo += 1;
        let bo = self.next_bo;
        self.bos.insert(
            bo,
            Bo {
                res,
                size: req.size,
                blob_mem: req.blob_mem,
                kind,
                exported: false,
            },
        );
        Ok(Blob {
            bo_handle: bo,
            res_handle: res,
        })
    }

    fn map(&mut self, bo: u32, size: usize) -> Result<FakeMapping, DeviceError> {
        let b = self
            .bos
            .get(&bo)
            .ok_or_else(|| errno("MAP", libc::ENOENT))?;
        if size as u64 > b.size {
            return Err(errno("mmap", libc::EINVAL));
        }
        match &b.kind {
            BoKind::Guest(g) => Ok(FakeMapping::Guest {
                k: self.k.clone(),
                blob: g.clone(),
            }),
            BoKind::Host { offset: Some(o) } => Ok(FakeMapping::Host {
                k: self.k.clone(),
                offset: *o,
                len: size,
            }),
            BoKind::Host { offset: None } => Err(errno("MAP", libc::EINVAL)),
        }
    }

    fn execbuffer(
        &mut self,
        cmds: &[u8],
        ring: Option<u32>,
        _bo_handles: &[u32],
    ) -> Result<(), DeviceError> {
        let ctx = self.ctx("EXECBUFFER")?;
        let mut guard = self.k.lock();
        let st = &mut *guard;
        let what = format!(
            "ctx {ctx}: SUBMIT_3D (command {})",
            cmds.first().unwrap_or(&0)
        );
        *st.commands
            .entry(cmds.first().copied().unwrap_or(0))
            .or_default() += 1;
        match ring {
            None => {
                let resp = st.vm.submit_3d_wait(ctx, cmds, None);
                Self::check(st, &what, &resp, RESP_OK_NODATA);
            }
            Some(r) if self.poll_mask & (1 << r) != 0 => {
                let fence = st.vm.next_fence_id();
                let head = st.vm.submit_3d(ctx, cmds, Some((fence, Some(r as u8))));
                let tx = self.events_tx.try_clone().expect("dup event socket");
                st.polls.push((head, ctx, tx));
            }
            Some(r) => {
                let fence = st.vm.next_fence_id();
                let resp = st
                    .vm
                    .submit_3d_wait(ctx, cmds, Some((fence, Some(r as u8))));
                Self::check(st, &what, &resp, RESP_OK_NODATA);
            }
        }
        Ok(())
    }

    fn wait(&mut self, _bo: u32) -> Result<(), DeviceError> {
        // Fenced query-ring submissions were waited for in `execbuffer`.
        Ok(())
    }

    fn resource_info(&mut self, bo: u32) -> Result<ResourceInfo, DeviceError> {
        let b = self
            .bos
            .get(&bo)
            .ok_or_else(|| errno("RESOURCE_INFO", libc::ENOENT))?;
        Ok(ResourceInfo {
            res_handle: b.res,
            size: b.size as u32,
            blob_mem: b.blob_mem,
        })
    }

    fn export_fd(&mut self, bo: u32) -> Result<OwnedFd, DeviceError> {
        let b = self
            .bos
            .get_mut(&bo)
            .ok_or_else(|| errno("PRIME_HANDLE_TO_FD", libc::ENOENT))?;
        let st = self.k.lock();
        let data = match &b.kind {
            BoKind::Guest(g) => st.vm.read_blob(g, 0, g.size as usize),
            BoKind::Host { offset: Some(o) } => st.vm.shm_read(*o, b.size as usize),
            BoKind::Host { offset: None } => return Err(errno("PRIME_HANDLE_TO_FD", libc::EINVAL)),
        };
        b.exported = true;
        Ok(OwnedFd::from(memfd_with(&data)))
    }

    fn import_fd(&mut self, _fd: BorrowedFd<'_>) -> Result<u32, DeviceError> {
        Err(errno("PRIME_FD_TO_HANDLE", libc::EINVAL))
    }

    fn gem_close(&mut self, bo: u32) -> Result<(), DeviceError> {
        let ctx = self.ctx("GEM_CLOSE")?;
        let b = self
            .bos
            .remove(&bo)
            .ok_or_else(|| errno("GEM_CLOSE", libc::EINVAL))?;
        Self::release(&mut self.k.lock(), ctx, b);
        Ok(())
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }

    fn read_events(&mut self, out: &mut Vec<u32>) -> Result<(), DeviceError> {
        let mut buf = [0u8; 256];
        loop {
            match (&self.events).read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => proxy::kernel::parse_events(&buf[..n], out),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(DeviceError::new("read", e)),
            }
        }
    }
}

// ---- fixture ---------------------------------------------------------------------------------

struct Fx {
    _daemon: Daemon,
    kernel: Arc<FakeKernel>,
    host_listener: UnixListener,
    proxy_path: PathBuf,
    _proxy_dir: TempDir,
}

/// A daemon serving `channel` on a test listener, a VM, and a proxy for `channel` on it.
fn setup(channel: u32) -> Fx {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = temp_dir();
    let (path, host_listener) = channel_listener(dir.path());
    let daemon = Daemon::start_in(
        dir,
        [
            "--channel".to_string(),
            format!("{channel}:{}", path.display()),
        ],
    );
    let vm = TestVm::connect(daemon.socket_path());
    let kernel = FakeKernel::new(vm);
    let proxy_dir = temp_dir();
    let proxy_path = proxy_dir.path().join("proxy.sock");
    let listener = UnixListener::bind(&proxy_path).expect("bind the proxy socket");
    let k = kernel.clone();
    let config = ProxyConfig {
        channel_type: channel,
        skip_capset_check: false,
    };
    thread::Builder::new()
        .name("proxy-accept".into())
        .spawn(move || proxy::serve(listener, config, move || Ok(FakeGpu::new(k.clone()))))
        .expect("spawn the proxy");
    Fx {
        _daemon: daemon,
        kernel,
        host_listener,
        proxy_path,
        _proxy_dir: proxy_dir,
    }
}

impl Fx {
    /// A client connection and the host service's end of its channel.
    fn connect(&self) -> (UnixStream, UnixStream) {
        let client = UnixStream::connect(&self.proxy_path).expect("connect to the proxy");
        let host = accept_timeout(&self.host_listener, T)
            .expect("the proxy's context did not reach the host service");
        (client, host)
    }

    #[track_caller]
    fn assert_no_host_errors(&self) {
        let errors = self.kernel.host_errors();
        assert!(errors.is_empty(), "the host refused commands: {errors:#?}");
    }
}

/// Reads until end of file, within `T`.
fn read_to_eof(r: &mut impl Read) -> Vec<u8> {
    read_to_end_timeout(r, T)
}

fn set_timeout(s: &UnixStream) {
    s.set_read_timeout(Some(T)).unwrap();
}

// ---- tests -----------------------------------------------------------------------------------

#[test]
fn bytes_flow_both_ways_at_once_exactly() {
    let fx = setup(2);
    let (client, host) = fx.connect();
    set_timeout(&client);
    set_timeout(&host);
    let up = pattern(256 * 1024, 1);
    let down = pattern(256 * 1024 + 17, 2);
    let writers = [
        (client.try_clone().unwrap(), up.clone()),
        (host.try_clone().unwrap(), down.clone()),
    ]
    .map(|(mut s, data)| thread::spawn(move || s.write_all(&data).expect("write")));
    let reader = {
        let mut host = host.try_clone().unwrap();
        let n = up.len();
        thread::spawn(move || read_exact_timeout(&mut host, n, T))
    };
    let mut client_r = client.try_clone().unwrap();
    let got_down = read_exact_timeout(&mut client_r, down.len(), T);
    let got_up = reader.join().unwrap();
    for w in writers {
        w.join().unwrap();
    }
    assert!(got_up == up, "guest → host bytes differ");
    assert!(got_down == down, "host → guest bytes differ");
    fx.assert_no_host_errors();
}

#[test]
fn pipes_cross_both_ways() {
    let fx = setup(2);
    let (client, host) = fx.connect();

    // The host passes a write end: the client writes, the host reads it all.
    let (mut host_r, host_w) = pipe();
    send_with_fds(&host, b"write here", &[host_w.as_raw_fd()]);
    drop(host_w);
    let (data, mut fds) = recv_with_fds(&client, 4096, T);
    assert_eq!(data, b"write here");
    assert_eq!(fds.len(), 1, "the client gets a pipe write end");
    let to_host = pattern(100_000, 3);
    let w = File::from(fds.pop().unwrap());
    let writer = {
        let data = to_host.clone();
        thread::spawn(move || {
            let mut w = w;
            w.write_all(&data).unwrap();
        })
    };
    assert!(read_to_eof(&mut host_r) == to_host, "pipe data to the host");
    writer.join().unwrap();

    // The client passes a write end: the host writes into it, the client reads it all.
    let (mut client_r, client_w) = pipe();
    send_with_fds(&client, b"fill this", &[client_w.as_raw_fd()]);
    drop(client_w);
    let (data, mut fds) = recv_with_fds(&host, 4096, T);
    assert_eq!(data, b"fill this");
    assert_eq!(fds.len(), 1, "the host service gets a pipe write end");
    let to_client = pattern(100_000, 4);
    let mut w = File::from(fds.pop().unwrap());
    let writer = {
        let data = to_client.clone();
        thread::spawn(move || w.write_all(&data).unwrap())
    };
    assert!(
        read_to_eof(&mut client_r) == to_client,
        "pipe data to the client"
    );
    writer.join().unwrap();

    // The channel still works afterwards.
    (&client).write_all(b"after").unwrap();
    let mut host = host;
    assert_eq!(read_exact_timeout(&mut host, 5, T), b"after");
    fx.assert_no_host_errors();
}

#[test]
fn a_pipe_whose_reader_left_does_not_stall_the_channel() {
    let fx = setup(2);
    let (client, mut host) = fx.connect();
    let (client_r, client_w) = pipe();
    send_with_fds(&client, b"p", &[client_w.as_raw_fd()]);
    drop(client_w);
    drop(client_r);
    let (_, mut fds) = recv_with_fds(&host, 4096, T);
    let mut w = File::from(fds.pop().expect("a pipe write end"));
    // The host keeps writing after the guest reader left; the proxy drops it all.
    w.write_all(&pattern(200_000, 6)).unwrap();
    drop(w);
    host.write_all(b"still flowing").unwrap();
    let mut client = client;
    assert_eq!(read_exact_timeout(&mut client, 13, T), b"still flowing");
    (&client).write_all(b"and back").unwrap();
    assert_eq!(read_exact_timeout(&mut host, 8, T), b"and back");
    fx.assert_no_host_errors();
}

#[test]
fn host_memory_reaches_the_client() {
    let fx = setup(2);
    let (client, host) = fx.connect();
    let content = pattern(10_000, 5);
    let memfd = memfd_with(&content);
    send_with_fds(&host, b"m", &[memfd.as_raw_fd()]);
    let (data, mut fds) = recv_with_fds(&client, 4096, T);
    assert_eq!(data, b"m");
    assert_eq!(fds.len(), 1, "the client gets a memory fd");
    let f = File::from(fds.pop().unwrap());
    assert_eq!(f.metadata().unwrap().len(), 3 * PAGE, "page-rounded blob");
    let mut got = vec![0u8; content.len()];
    f.read_exact_at(&mut got, 0).unwrap();
    assert!(got == content, "memory content");
    fx.assert_no_host_errors();
}

#[test]
fn guest_memory_is_copied_to_the_host_once() {
    let fx = setup(2);
    let (client, host) = fx.connect();
    for (i, len) in [10_000usize, 10_000, 1, 70_000].into_iter().enumerate() {
        let content = pattern(len, 10 + i as u32);
        let memfd = memfd_with(&content);
        send_with_fds(&client, b"g", &[memfd.as_raw_fd()]);
        let (data, mut fds) = recv_with_fds(&host, 4096, T);
        assert_eq!(data, b"g");
        assert_eq!(fds.len(), 1, "the host gets a memory fd");
        let f = File::from(fds.pop().unwrap());
        assert_eq!(
            f.metadata().unwrap().len(),
            (len as u64).div_ceil(PAGE) * PAGE,
            "size from image requirements (R8, page-rounded width)"
        );
        let mut got = vec![0u8; len];
        f.read_exact_at(&mut got, 0).unwrap();
        assert!(got == content, "memory content of message {i}");
        // A snapshot: later guest writes do not reach the host.
        memfd.write_all_at(b"later", 0).unwrap();
        let mut head = [0u8; 1];
        f.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(head[0], content[0]);
    }
    fx.assert_no_host_errors();
}

#[test]
fn unsupported_descriptors_are_dropped_and_the_data_still_arrives() {
    let fx = setup(2);
    let (client, host) = fx.connect();
    let (sock, _peer) = UnixStream::pair().unwrap();
    let (pipe_r, _pipe_w) = pipe();
    let memfd = memfd_with(b"kept");
    send_with_fds(
        &client,
        b"three fds",
        &[sock.as_raw_fd(), pipe_r.as_raw_fd(), memfd.as_raw_fd()],
    );
    let (data, fds) = recv_with_fds(&host, 4096, T);
    assert_eq!(data, b"three fds");
    assert_eq!(fds.len(), 1, "only the memory crosses");
    let mut got = [0u8; 4];
    File::from(fds.into_iter().next().unwrap())
        .read_exact_at(&mut got, 0)
        .unwrap();
    assert_eq!(&got, b"kept");
    fx.assert_no_host_errors();
}

#[test]
fn host_hang_up_closes_the_client() {
    let fx = setup(2);
    let (mut client, host) = fx.connect();
    (&host).write_all(b"bye").unwrap();
    drop(host);
    set_timeout(&client);
    assert_eq!(read_to_eof(&mut client), b"bye", "data, then end of file");
    fx.assert_no_host_errors();
}

#[test]
fn client_hang_up_closes_the_host() {
    let fx = setup(2);
    let (client, mut host) = fx.connect();
    (&client).write_all(b"bye").unwrap();
    drop(client);
    set_timeout(&host);
    assert_eq!(read_to_eof(&mut host), b"bye", "data, then end of file");
    fx.assert_no_host_errors();
}

#[test]
fn half_closed_client_still_gets_the_reply() {
    let fx = setup(2);
    let (mut client, mut host) = fx.connect();
    client.write_all(b"ping").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_exact_timeout(&mut host, 4, T), b"ping");
    host.write_all(b"pong").unwrap();
    drop(host);
    set_timeout(&client);
    assert_eq!(read_to_eof(&mut client), b"pong");
    fx.assert_no_host_errors();
}

#[test]
fn a_failing_client_does_not_affect_the_others() {
    let fx = setup(2);
    let (a, mut a_host) = fx.connect();
    // The next client's context cannot be created.
    fx.kernel.lock().fail_context_init = 1;
    let mut b = UnixStream::connect(&fx.proxy_path).unwrap();
    set_timeout(&b);
    let mut buf = [0u8; 1];
    assert_eq!(b.read(&mut buf).unwrap(), 0, "the failed client is closed");
    // The first client is unaffected, and a new one works.
    (&a).write_all(b"still here").unwrap();
    assert_eq!(read_exact_timeout(&mut a_host, 10, T), b"still here");
    let (c, mut c_host) = fx.connect();
    (&c).write_all(b"new").unwrap();
    assert_eq!(read_exact_timeout(&mut c_host, 3, T), b"new");
    c_host.write_all(b"reply").unwrap();
    let mut c = c;
    assert_eq!(read_exact_timeout(&mut c, 5, T), b"reply");
    fx.assert_no_host_errors();
}

#[test]
fn capset_check() {
    let fx = setup(2);
    let mut dev = FakeGpu::new(fx.kernel.clone());
    let cfg = |channel_type, skip_capset_check| ProxyConfig {
        channel_type,
        skip_capset_check,
    };
    let info = proxy::probe(&mut dev, &cfg(2, false)).expect("channel 2 is advertised");
    assert_eq!(info.capabilities.supported_channels, 1 << 2);
    assert!(info.host_visible);
    assert!(matches!(
        proxy::probe(&mut dev, &cfg(3, false)),
        Err(SessionError::ChannelNotAdvertised {
            channel_type: 3,
            supported: 4
        })
    ));
    assert!(matches!(
        proxy::probe(&mut dev, &cfg(40, false)),
        Err(SessionError::ChannelNotAdvertisable(40))
    ));
    proxy::probe(&mut dev, &cfg(40, true)).expect("skipped");
}

#[test]
fn a_channel_the_host_refuses_is_detected_at_setup() {
    let fx = setup(2);
    // Type 3 is not configured on the host: INIT is refused there, which EXECBUFFER does not
    // report, so the proxy checks it with a query only an initialised context answers.
    let (client, _peer) = UnixStream::pair().unwrap();
    let dev = FakeGpu::new(fx.kernel.clone());
    let cfg = ProxyConfig {
        channel_type: 3,
        skip_capset_check: true,
    };
    let r = Session::open(1, cfg, dev, client);
    assert!(
        matches!(r, Err(SessionError::ChannelRefused(3))),
        "got {:?}",
        r.err()
    );
    let errors = fx.kernel.host_errors();
    assert!(
        errors.iter().any(|e| e.contains("command 1")),
        "INIT was refused: {errors:?}"
    );
    // Through the socket: the client is closed.
    let fx = setup(2);
    let config = ProxyConfig {
        channel_type: 3,
        skip_capset_check: true,
    };
    let (client, server) = UnixStream::pair().unwrap();
    let k = fx.kernel.clone();
    proxy::handle_client(
        7,
        config,
        server,
        Arc::new(move || Ok(FakeGpu::new(k.clone()))),
    );
    let mut client = client;
    set_timeout(&client);
    assert_eq!(read_to_eof(&mut client), b"");
}

// ---- eventfds (docs/guest-proxy.md, "Eventfds") ----------------------------------------------

const CMD_WRITE: u8 = 7;
const CMD_READ_EVENTFD_NEW: u8 = 11;
const CMD_READ_EVENTFD_DESTROY: u8 = 12;

impl Fx {
    /// SUBMIT_3Ds of command `cmd` so far, over every client.
    fn commands(&self, cmd: u8) -> u64 {
        self.kernel.lock().commands.get(&cmd).copied().unwrap_or(0)
    }

    fn daemon_pid(&self) -> u32 {
        self._daemon.pid()
    }
}

/// An eventfd as a host service (PipeWire) makes it.
fn host_eventfd() -> OwnedFd {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
        .expect("eventfd")
        .into()
}

fn signal(efd: &OwnedFd, value: u64) {
    nix::unistd::write(efd, &value.to_ne_bytes()).expect("eventfd write");
}

/// Reads `efd` (non-blocking) whenever it is readable and adds up what it yields, until the
/// total reaches `want` or `within` passes. A wake-up that finds the counter empty (another
/// reader took it first) is not an error.
fn collect(efd: &OwnedFd, want: u64, within: Duration) -> u64 {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = std::time::Instant::now() + within;
    let mut total = 0u64;
    while total < want && std::time::Instant::now() < deadline {
        let mut fds = [PollFd::new(efd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(100u16));
        let mut v = [0u8; 8];
        match nix::unistd::read(efd, &mut v) {
            Ok(8) => total += u64::from_ne_bytes(v),
            Ok(n) => panic!("eventfd read of {n} bytes"),
            Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => panic!("eventfd read: {e}"),
        }
    }
    total
}

/// What a descriptor is, as `/proc` names it.
fn fd_link(fd: BorrowedFd<'_>) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The kernel's id of the eventfd behind `fd` (`eventfd-id` in fdinfo, Linux 5.19 and later).
fn eventfd_id(fd: i32) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("eventfd-id:"))
        .map(|v| v.trim().to_string())
}

/// How many descriptors of this process refer to the eventfd behind `fd` (itself included):
/// the proxy runs in this process, so its copies show here.
fn eventfd_copies(fd: BorrowedFd<'_>) -> Option<usize> {
    let id = eventfd_id(fd.as_raw_fd())?;
    let n = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&n| eventfd_id(n).as_deref() == Some(id.as_str()))
        .count();
    Some(n)
}

#[track_caller]
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + T;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn eventfds_carry_wake_ups_both_ways() {
    let fx = setup(0x10);
    let (client, host) = fx.connect();
    // As in PipeWire's ClientNode.Transport: one eventfd the host signals and the client waits
    // on, one the client signals and the host waits on.
    let (wake, done) = (host_eventfd(), host_eventfd());
    send_with_fds(&host, b"transport", &[wake.as_raw_fd(), done.as_raw_fd()]);
    let (data, fds) = recv_with_fds(&client, 4096, T);
    assert_eq!(data, b"transport");
    assert_eq!(fds.len(), 2, "both eventfds reach the client, in place");
    for fd in &fds {
        assert_eq!(fd_link(fd.as_fd()), "anon_inode:[eventfd]");
    }
    let (c_wake, c_done) = (&fds[0], &fds[1]);
    // A processing cycle each round: the host wakes the client, the client answers.
    for round in 0..200u64 {
        signal(&wake, 1);
        assert_eq!(
            collect(c_wake, 1, T),
            1,
            "round {round}: the client's wake-up"
        );
        signal(c_done, 1);
        assert_eq!(collect(&done, 1, T), 1, "round {round}: the host's wake-up");
    }
    // Values arrive exactly, whole counters at a time.
    signal(&wake, 1 << 40);
    signal(&wake, 3);
    assert_eq!(collect(c_wake, (1 << 40) + 3, T), (1 << 40) + 3);
    signal(c_done, 0x00ff_0000_0000_0001);
    assert_eq!(
        collect(&done, 0x00ff_0000_0000_0001, T),
        0x00ff_0000_0000_0001
    );
    // Neither side got the other's wake-ups back.
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        collect(c_done, 1, Duration::ZERO),
        0,
        "no echo to the client"
    );
    assert_eq!(collect(&wake, 1, Duration::ZERO), 0, "no echo to the host");
    // The channel still carries bytes.
    (&client).write_all(b"after").unwrap();
    let mut host = host;
    assert_eq!(read_exact_timeout(&mut host, 5, T), b"after");
    assert_eq!(
        fx.commands(CMD_READ_EVENTFD_NEW),
        2,
        "each eventfd watched once"
    );
    fx.assert_no_host_errors();
}

#[test]
fn eventfd_floods_add_up_exactly_both_ways() {
    let fx = setup(0x10);
    let (client, host) = fx.connect();
    let efds: Vec<OwnedFd> = (0..4).map(|_| host_eventfd()).collect();
    let raw: Vec<i32> = efds.iter().map(|e| e.as_raw_fd()).collect();
    send_with_fds(&host, b"four", &raw);
    let (_, fds) = recv_with_fds(&client, 4096, T);
    assert_eq!(fds.len(), 4);
    // Eventfds 0 and 1 carry wake-ups to the client, 2 and 3 to the host; each side signals
    // 5000 times as fast as it can while the other reads.
    const N: u64 = 5000;
    let fds = Arc::new(fds);
    let efds = Arc::new(efds);
    let writers: Vec<_> = (0..4usize)
        .map(|i| {
            let (fds, efds) = (fds.clone(), efds.clone());
            thread::spawn(move || {
                let efd = if i < 2 { &efds[i] } else { &fds[i] };
                for _ in 0..N {
                    signal(efd, 1);
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..4usize)
        .map(|i| {
            let (fds, efds) = (fds.clone(), efds.clone());
            thread::spawn(move || {
                let efd = if i < 2 { &fds[i] } else { &efds[i] };
                collect(efd, N, T)
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let totals: Vec<u64> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(totals, [N; 4], "every signal once, none lost or doubled");
    thread::sleep(Duration::from_millis(100));
    for i in 0..4 {
        let (mine, theirs) = if i < 2 {
            (&fds[i], &efds[i])
        } else {
            (&efds[i], &fds[i])
        };
        assert_eq!(
            collect(mine, 1, Duration::ZERO),
            0,
            "eventfd {i}: nothing more"
        );
        assert_eq!(
            collect(theirs, 1, Duration::ZERO),
            0,
            "eventfd {i}: no echo"
        );
    }
    fx.assert_no_host_errors();
}

#[test]
fn a_host_that_does_not_read_gets_its_wake_up_later_without_a_busy_loop() {
    let fx = setup(0x10);
    let (client, host) = fx.connect();
    let done = host_eventfd();
    send_with_fds(&host, b"x", &[done.as_raw_fd()]);
    let (_, fds) = recv_with_fds(&client, 4096, T);
    assert_eq!(fds.len(), 1);
    let writes_before = fx.commands(CMD_WRITE);
    // The client signals; the host does not read for a second. The daemon's watch keeps taking
    // the value and the proxy keeps giving it back, ever more slowly.
    signal(&fds[0], 5);
    thread::sleep(Duration::from_secs(1));
    let writes = fx.commands(CMD_WRITE) - writes_before;
    assert!(
        (1..=40).contains(&writes),
        "{writes} WRITEs in a second for one wake-up"
    );
    // Then the host reads: the value is there, once.
    assert_eq!(collect(&done, 5, T), 5);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(collect(&done, 1, Duration::ZERO), 0);
    fx.assert_no_host_errors();
}

#[test]
fn eventfds_are_released_when_the_conversation_ends() {
    let fx = setup(0x10);
    let pid = fx.daemon_pid();
    let (client, host) = fx.connect();
    let before = fd_count(pid);
    let efds: Vec<OwnedFd> = (0..10).map(|_| host_eventfd()).collect();
    // A pipe write end too: the client keeps it open, which keeps the session (and its
    // context) alive after the host hangs up.
    let (mut pipe_r, pipe_w) = pipe();
    let mut raw: Vec<i32> = efds.iter().map(|e| e.as_raw_fd()).collect();
    raw.push(pipe_w.as_raw_fd());
    send_with_fds(&host, b"ten and a pipe", &raw);
    drop(pipe_w);
    let (_, mut fds) = recv_with_fds(&client, 4096, T);
    assert_eq!(fds.len(), 11);
    let pipe_to_host = File::from(fds.pop().unwrap());
    // One wake-up each way to be sure they work, then the host hangs up.
    signal(&efds[0], 1);
    assert_eq!(collect(&fds[0], 1, T), 1);
    signal(&fds[1], 1);
    assert_eq!(collect(&efds[1], 1, T), 1);
    let proxy_copies = eventfd_copies(fds[0].as_fd());
    if let Some(n) = proxy_copies {
        assert_eq!(n, 2, "the client's descriptor and the proxy's");
    }
    let held = fd_count(pid);
    assert!(held >= before + 11, "the daemon holds the 11 items");
    drop(host);
    // The proxy releases the eventfds (READ_EVENTFD_DESTROY) though the session goes on.
    wait_until("the daemon drops the eventfds", || {
        fd_count(pid) <= held - 10
    });
    assert_eq!(fx.commands(CMD_READ_EVENTFD_DESTROY), 10);
    if proxy_copies.is_some() {
        for fd in &fds {
            assert_eq!(
                eventfd_copies(fd.as_fd()),
                Some(1),
                "the proxy closed its copy"
            );
        }
    } else {
        eprintln!("no eventfd-id in fdinfo: the proxy's own copies were not counted");
    }
    // The session still relays the pipe, then ends.
    let mut w = pipe_to_host;
    w.write_all(b"still relayed").unwrap();
    drop(w);
    assert_eq!(read_to_eof(&mut pipe_r), b"still relayed");
    let mut client = client;
    set_timeout(&client);
    assert_eq!(read_to_eof(&mut client), b"", "the client sees the hang-up");
    // (`before` may or may not count the channel socket: the daemon's broker hands it over
    // around the time the host service accepts.)
    wait_until("the pipe and the context go", || fd_count(pid) <= before);
    // Signals into released eventfds go nowhere, and break nothing.
    signal(&fds[1], 1);
    assert_eq!(collect(&efds[1], 1, Duration::from_millis(200)), 0);
    fx.assert_no_host_errors();
}

#[test]
fn a_client_that_leaves_releases_its_eventfds() {
    let fx = setup(0x10);
    let pid = fx.daemon_pid();
    let (client, host) = fx.connect();
    let before = fd_count(pid);
    let efds: Vec<OwnedFd> = (0..28).map(|_| host_eventfd()).collect();
    let raw: Vec<i32> = efds.iter().map(|e| e.as_raw_fd()).collect();
    send_with_fds(&host, b"28", &raw);
    let (_, fds) = recv_with_fds(&client, 4096, T);
    assert_eq!(fds.len(), 28);
    assert!(fd_count(pid) >= before + 28);
    drop(client);
    wait_until("the daemon drops everything", || fd_count(pid) <= before);
    let mut host = host;
    set_timeout(&host);
    assert_eq!(read_to_eof(&mut host), b"");
    // The client's descriptors outlive the session, disconnected.
    signal(&fds[0], 1);
    assert_eq!(collect(&efds[0], 1, Duration::from_millis(200)), 0);
    fx.assert_no_host_errors();
}

/// An eventfd's counter without taking it (`eventfd-count` in fdinfo, hexadecimal).
fn counter_of(fd: &OwnedFd) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    let v = info
        .lines()
        .find_map(|l| l.strip_prefix("eventfd-count:"))?;
    u64::from_str_radix(v.trim(), 16).ok()
}

#[test]
fn an_eventfd_the_host_and_the_client_both_signal_is_turned_to_the_host() {
    // Like PipeWire's driving sink: host nodes signal it, so does the guest client (it got it
    // with SetActivation), and only the host reads it.
    let fx = setup(0x10);
    let (client, host) = fx.connect();
    let sink = host_eventfd();
    send_with_fds(&host, b"activation", &[sink.as_raw_fd()]);
    let (_, fds) = recv_with_fds(&client, 4096, T);
    assert_eq!(fds.len(), 1);
    let c_sink = &fds[0];
    if counter_of(c_sink).is_none() {
        eprintln!("no eventfd-count in fdinfo: the proxy cannot see this case; skipped");
        return;
    }
    // A host node signals first: the daemon's watch takes the value, and the proxy adds it for
    // the client.
    signal(&sink, 1);
    wait_until("the host's signal reaches the client's counter", || {
        counter_of(c_sink) == Some(1)
    });
    // The client signals (it never reads this eventfd), then a host node again: at that READ
    // the proxy sees more in the counter than it put there, and turns the eventfd around.
    signal(c_sink, 1);
    signal(&sink, 1);
    wait_until("the proxy takes the client's counter", || {
        counter_of(c_sink) == Some(0)
    });
    assert_eq!(
        collect(&sink, 3, T),
        3,
        "every signal, on the host side, once"
    );
    // From now on the client's signals reach the host, and the host's stay there.
    for round in 0..20 {
        signal(c_sink, 1);
        assert_eq!(collect(&sink, 1, T), 1, "round {round}: the client's");
        signal(&sink, 1);
        assert_eq!(collect(&sink, 1, T), 1, "round {round}: the host's own");
    }
    thread::sleep(Duration::from_millis(100));
    assert_eq!(counter_of(c_sink), Some(0), "nothing left for the client");
    assert_eq!(collect(&sink, 1, Duration::ZERO), 0);
    fx.assert_no_host_errors();
}

// ---- sockets (docs/guest-proxy.md, "Sockets the host passes") -------------------------------

const DBUS: u32 = 0x12;
const CMD_ASSIGN_SOCKET_UUID: u8 = 13;

/// The host service passes `theirs` with `data`; the client receives the message and its one
/// descriptor, which must be a socket.
#[track_caller]
fn pass_socket(
    host: &UnixStream,
    client: &UnixStream,
    data: &[u8],
    theirs: UnixStream,
) -> UnixStream {
    send_with_fds(host, data, &[theirs.as_raw_fd()]);
    drop(theirs);
    let (got, mut fds) = recv_with_fds(client, 4096, T);
    assert_eq!(got, data, "the message arrives whole");
    assert_eq!(fds.len(), 1, "the socket arrives in the identifier's place");
    let fd = fds.pop().unwrap();
    let st = nix::sys::stat::fstat(&fd).unwrap();
    assert_eq!(
        st.st_mode & libc::S_IFMT,
        libc::S_IFSOCK,
        "the client gets a socket"
    );
    let s = UnixStream::from(fd);
    set_timeout(&s);
    s
}

/// `n` bytes each way at once between `a` and `b`, checked byte for byte at both ends.
#[track_caller]
fn exchange(a: &UnixStream, b: &UnixStream, n: usize, seed: u32) {
    let ab = pattern(n, seed);
    let ba = pattern(n + 13, seed + 1);
    let writers = [
        (a.try_clone().unwrap(), ab.clone()),
        (b.try_clone().unwrap(), ba.clone()),
    ]
    .map(|(mut s, data)| thread::spawn(move || s.write_all(&data).expect("write")));
    let reader = {
        let mut b = b.try_clone().unwrap();
        let n = ab.len();
        thread::spawn(move || read_exact_timeout(&mut b, n, T))
    };
    let got_ba = read_exact_timeout(&mut a.try_clone().unwrap(), ba.len(), T);
    let got_ab = reader.join().unwrap();
    for w in writers {
        w.join().unwrap();
    }
    assert!(got_ab == ab, "bytes differ one way");
    assert!(got_ba == ba, "bytes differ the other way");
}

#[test]
fn a_socket_the_host_passes_reaches_the_client_and_carries_bytes_both_ways() {
    let fx = setup(DBUS);
    let (client, host) = fx.connect();
    let (theirs, remote) = UnixStream::pair().unwrap();
    set_timeout(&remote);
    let passed = pass_socket(&host, &client, b"OpenPipeWireRemote reply", theirs);
    exchange(&passed, &remote, 256 * 1024, 20);
    // The first connection goes on, independently.
    exchange(&client, &host, 10_000, 22);
    // Each socket ends on its own: the host end closing is end of file for the client's copy,
    // and the client's connection still works.
    (&remote).write_all(b"bye").unwrap();
    drop(remote);
    let mut passed = passed;
    assert_eq!(read_to_eof(&mut passed), b"bye");
    exchange(&client, &host, 100, 24);
    assert_eq!(fx.commands(CMD_ASSIGN_SOCKET_UUID), 1);
    fx.assert_no_host_errors();
}

#[test]
fn descriptors_cross_a_passed_socket_both_ways() {
    let fx = setup(DBUS);
    let (client, host) = fx.connect();
    let (theirs, remote) = UnixStream::pair().unwrap();
    set_timeout(&remote);
    // Memory next to the socket, in position.
    let before = memfd_with(b"before");
    send_with_fds(&host, b"two", &[before.as_raw_fd(), theirs.as_raw_fd()]);
    drop(theirs);
    let (data, fds) = recv_with_fds(&client, 4096, T);
    assert_eq!(data, b"two");
    assert_eq!(fds.len(), 2);
    let mut head = [0u8; 6];
    File::from(fds[0].try_clone().unwrap())
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert_eq!(&head, b"before", "memory first");
    let passed = UnixStream::from(fds.into_iter().nth(1).unwrap());
    set_timeout(&passed);

    // Host → client over the passed socket: memory and a pipe write end.
    let content = pattern(5000, 30);
    let mem = memfd_with(&content);
    let (mut host_r, host_w) = pipe();
    send_with_fds(&remote, b"node", &[mem.as_raw_fd(), host_w.as_raw_fd()]);
    drop(host_w);
    let (data, mut fds) = recv_with_fds(&passed, 4096, T);
    assert_eq!(data, b"node");
    assert_eq!(fds.len(), 2, "memory and a pipe");
    let mut w = File::from(fds.pop().unwrap());
    let mut got = vec![0u8; content.len()];
    File::from(fds.pop().unwrap())
        .read_exact_at(&mut got, 0)
        .unwrap();
    assert!(got == content, "memory content over the passed socket");
    w.write_all(b"into the host's pipe").unwrap();
    drop(w);
    assert_eq!(read_to_eof(&mut host_r), b"into the host's pipe");

    // Client → host over the passed socket: memory and a pipe write end.
    let content = pattern(3000, 31);
    let mem = memfd_with(&content);
    let (mut client_r, client_w) = pipe();
    send_with_fds(
        &passed,
        b"buffers",
        &[mem.as_raw_fd(), client_w.as_raw_fd()],
    );
    drop(client_w);
    let (data, mut fds) = recv_with_fds(&remote, 4096, T);
    assert_eq!(data, b"buffers");
    assert_eq!(fds.len(), 2, "memory and a pipe");
    let mut w = File::from(fds.pop().unwrap());
    let mut got = vec![0u8; content.len()];
    File::from(fds.pop().unwrap())
        .read_exact_at(&mut got, 0)
        .unwrap();
    assert!(got == content, "memory content to the host");
    w.write_all(b"into the client's pipe").unwrap();
    drop(w);
    assert_eq!(read_to_eof(&mut client_r), b"into the client's pipe");
    fx.assert_no_host_errors();
}

#[test]
fn a_socket_passed_over_a_passed_socket_works_too() {
    let fx = setup(DBUS);
    let (client, host) = fx.connect();
    let (theirs, remote) = UnixStream::pair().unwrap();
    set_timeout(&remote);
    let passed = pass_socket(&host, &client, b"level 1", theirs);
    let (theirs2, remote2) = UnixStream::pair().unwrap();
    set_timeout(&remote2);
    let passed2 = pass_socket(&remote, &passed, b"level 2", theirs2);
    exchange(&passed2, &remote2, 64 * 1024, 40);
    exchange(&passed, &remote, 1000, 42);
    exchange(&client, &host, 1000, 44);
    // The first-level connections may go; the nested one lives on.
    drop((client, host, passed, remote));
    exchange(&passed2, &remote2, 1000, 46);
    assert_eq!(fx.commands(CMD_ASSIGN_SOCKET_UUID), 2);
    fx.assert_no_host_errors();
}

#[test]
fn sockets_nest_at_most_max_socket_depth_deep() {
    let fx = setup(DBUS);
    let (client, host) = fx.connect();
    let mut chain = vec![(client, host)];
    for level in 1..=proxy::session::MAX_SOCKET_DEPTH {
        let (c, h) = chain.last().unwrap();
        let (theirs, remote) = UnixStream::pair().unwrap();
        set_timeout(&remote);
        let passed = pass_socket(h, c, format!("level {level}").as_bytes(), theirs);
        chain.push((passed, remote));
    }
    // One more level is refused: that connection is hung up, not given the message without it.
    let (c, h) = chain.last().unwrap();
    let (theirs, _remote) = UnixStream::pair().unwrap();
    send_with_fds(h, b"too deep", &[theirs.as_raw_fd()]);
    let mut c = c.try_clone().unwrap();
    set_timeout(&c);
    assert_eq!(
        read_to_eof(&mut c),
        b"",
        "hung up, the message not delivered"
    );
    let mut h = h.try_clone().unwrap();
    set_timeout(&h);
    assert_eq!(read_to_eof(&mut h), b"", "the host end sees the hang-up");
    // The levels above are unaffected.
    let (c, h) = &chain[chain.len() - 2];
    exchange(c, h, 100, 50);
    fx.assert_no_host_errors();
}

#[test]
fn a_socket_that_cannot_get_a_context_hangs_the_client_up() {
    let fx = setup(DBUS);
    let (client, host) = fx.connect();
    // The passed socket's context cannot be created.
    fx.kernel.lock().fail_context_init = 1;
    let (theirs, _remote) = UnixStream::pair().unwrap();
    send_with_fds(&host, b"OpenPipeWireRemote reply", &[theirs.as_raw_fd()]);
    let mut client = client;
    set_timeout(&client);
    assert_eq!(
        read_to_eof(&mut client),
        b"",
        "hung up, the message not delivered"
    );
    let mut host = host;
    set_timeout(&host);
    assert_eq!(
        read_to_eof(&mut host),
        b"",
        "the host service sees the hang-up"
    );
    assert_eq!(
        fx.commands(CMD_ASSIGN_SOCKET_UUID),
        0,
        "the new context failed before the socket was parked: nothing is left parked"
    );
    // Other clients are unaffected, and sockets pass again.
    let (client, host) = fx.connect();
    let (theirs, remote) = UnixStream::pair().unwrap();
    set_timeout(&remote);
    let passed = pass_socket(&host, &client, b"again", theirs);
    exchange(&passed, &remote, 100, 60);
    fx.assert_no_host_errors();
}

#[test]
fn a_socket_on_a_channel_that_does_not_carry_sockets_hangs_the_client_up() {
    // Channel 2's fd policy leaves sockets out: the daemon hangs the channel up itself.
    let fx = setup(2);
    let (client, host) = fx.connect();
    let (theirs, _remote) = UnixStream::pair().unwrap();
    send_with_fds(&host, b"no sockets here", &[theirs.as_raw_fd()]);
    let mut client = client;
    set_timeout(&client);
    assert_eq!(
        read_to_eof(&mut client),
        b"",
        "hung up, the message not delivered"
    );
    assert_eq!(fx.commands(CMD_ASSIGN_SOCKET_UUID), 0);
    fx.assert_no_host_errors();
}

/// A context the test drives itself on channel 0x12, as a guest that parks sockets and never
/// adopts them would: the host passes `n` sockets and the context parks each under a uuid of
/// its own. Returns the context (it must stay open) and the host ends.
fn park_sockets(fx: &Fx, n: usize) -> (FakeGpu, UnixStream, Vec<UnixStream>) {
    use cross_domain_proxy::wire::{self, ChannelMessage};
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut dev = FakeGpu::new(fx.kernel.clone());
    dev.context_init(&[
        (context_param::CAPSET_ID, 5),
        (context_param::NUM_RINGS, 2),
        (context_param::POLL_RINGS_MASK, 1 << 1),
    ])
    .unwrap();
    let ring = BlobCreate {
        blob_mem: BLOB_MEM_GUEST,
        blob_flags: BLOB_FLAG_USE_MAPPABLE,
        size: PAGE,
        blob_id: 0,
    };
    let query = dev.create_blob(&ring).unwrap();
    let channel = dev.create_blob(&ring).unwrap();
    let map = dev.map(channel.bo_handle, PAGE as usize).unwrap();
    let init = wire::init(query.res_handle, channel.res_handle, DBUS);
    dev.execbuffer(&init, None, &[]).unwrap();
    let host = accept_timeout(&fx.host_listener, T).expect("the test context's channel");
    let mut remotes = Vec::new();
    let mut parked = 0usize;
    while parked < n {
        let batch = (n - parked).min(28);
        let pairs: Vec<_> = (0..batch).map(|_| UnixStream::pair().unwrap()).collect();
        let fds: Vec<_> = pairs.iter().map(|(t, _)| t.as_raw_fd()).collect();
        send_with_fds(&host, b"sockets", &fds);
        remotes.extend(pairs.into_iter().map(|(_, r)| r));
        map.write(0, &[0u8; 8]).unwrap();
        dev.execbuffer(&wire::poll(), Some(1), &[]).unwrap();
        let mut pfd = [PollFd::new(dev.event_fd(), PollFlags::POLLIN)];
        poll(&mut pfd, PollTimeout::from(10_000u16)).unwrap();
        let mut events = Vec::new();
        dev.read_events(&mut events).unwrap();
        assert_eq!(events, [0x9000_0000], "the POLL completes");
        let mut msg = vec![0u8; PAGE as usize];
        map.read(0, &mut msg).unwrap();
        let Ok(ChannelMessage::Receive { ids, .. }) = wire::decode_channel(&msg) else {
            panic!("expected a RECEIVE");
        };
        assert_eq!(ids.len(), batch);
        for ident in ids {
            assert_eq!(ident.kind, 7, "a socket identifier");
            parked += 1;
            let mut uuid = [0xa5; 16];
            uuid[..8].copy_from_slice(&(parked as u64).to_le_bytes());
            dev.execbuffer(&wire::assign_socket_uuid(uuid, ident.id), None, &[])
                .unwrap();
        }
    }
    (dev, host, remotes)
}

#[test]
fn a_socket_the_host_will_not_park_hangs_the_client_up() {
    let fx = setup(DBUS);
    // The VM's table of parked sockets is full (64, docs/protocol.md §3.10).
    let _parked = park_sockets(&fx, 64);
    fx.assert_no_host_errors();
    let (client, host) = fx.connect();
    let (theirs, _remote) = UnixStream::pair().unwrap();
    send_with_fds(&host, b"OpenPipeWireRemote reply", &[theirs.as_raw_fd()]);
    let mut client = client;
    set_timeout(&client);
    assert_eq!(
        read_to_eof(&mut client),
        b"",
        "hung up, the message not delivered"
    );
    let errors = fx.kernel.host_errors();
    assert!(
        errors.iter().any(|e| e.contains("(command 13)")),
        "the ASSIGN was refused: {errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("(command 1)")),
        "so was the INIT naming its uuid: {errors:?}"
    );
}
