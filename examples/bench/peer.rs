//! The peer: rutabaga_gfx's cross-domain context driven in-process through its public API —
//! no virtqueues, no vhost-user, no VMM, no second process: the cheapest it can possibly be.
//!
//! What a VMM around it would do is done here as cheaply as possible: ring blobs are GUEST
//! blobs backed by page-sized buffers of this process (`RutabagaIovec`), each command is copied
//! into a reused buffer (as a VMM reads it out of a descriptor) and handed to `submit_command`,
//! a POLL is `submit_command` + `create_fence` on ring 1, and its completion arrives through
//! the fence handler, called on rutabaga's per-context worker thread, which passes the fence id
//! to this thread over a channel (the in-process stand-in for "used ring + interrupt").

use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rutabaga_gfx::{
    ResourceCreateBlob, Rutabaga, RutabagaBuilder, RutabagaFence, RutabagaHandler, RutabagaIovec,
    RutabagaPath, RUTABAGA_BLOB_FLAG_USE_MAPPABLE, RUTABAGA_BLOB_FLAG_USE_SHAREABLE,
    RUTABAGA_BLOB_MEM_GUEST, RUTABAGA_BLOB_MEM_HOST3D, RUTABAGA_CAPSET_CROSS_DOMAIN,
    RUTABAGA_FLAG_FENCE, RUTABAGA_FLAG_INFO_RING_IDX,
};
use tempfile::TempDir;

use crate::cases::*;
use crate::service;
use crate::stats::{mb_per_s, percentile};
use support::{
    accept_timeout, cd_init, cd_poll, cd_send, cd_write, channel_listener, decode_channel_msg,
    memfd_with, pipe, send_with_fds, temp_dir, ChannelMsg, CD_CHANNEL_RING, CD_ID_TYPE_READ_PIPE,
    CD_READ_PIPE_ID_BASE, CD_RING_SIZE,
};

const T: Duration = Duration::from_secs(10);
const RING: usize = CD_RING_SIZE as usize;

fn rerr(what: &str) -> impl Fn(rutabaga_gfx::RutabagaError) -> String + '_ {
    move |e| format!("rutabaga {what}: {e}")
}

fn err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// A page of this process's memory backing a GUEST ring blob. Rutabaga writes it through the
/// raw pointer we hand it; we only read it after the fence that covers the write completed.
struct Ring {
    res_id: u32,
    ptr: *mut u8,
}

impl Ring {
    fn new(res_id: u32) -> Ring {
        let b: Box<[u8]> = vec![0u8; RING].into_boxed_slice();
        Ring {
            res_id,
            ptr: Box::into_raw(b).cast::<u8>(),
        }
    }

    fn read(&self) -> Vec<u8> {
        let mut out = vec![0u8; RING];
        // SAFETY: `ptr` points at RING bytes we allocated and free only in Drop. Rutabaga
        // writes them only while handling a channel-ring fence; callers read after that
        // fence's completion was received over the fence channel, which orders the writes
        // before this read.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, out.as_mut_ptr(), RING) };
        out
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from Box::into_raw of a RING-byte boxed slice, is freed exactly
        // once here, and rutabaga no longer refers to it (the context and resource are gone
        // before a Ring is dropped).
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, RING)) });
    }
}

struct Ctx {
    id: u32,
    query: Ring,
    channel: Ring,
}

pub struct Peer {
    rutabaga: Rutabaga,
    fences: mpsc::Receiver<u64>,
    _dir: TempDir,
    listener: UnixListener,
    next_ctx: u32,
    next_res: u32,
    next_fence: u64,
    /// The reused command buffer (the VMM's copy of a descriptor).
    cmd: Vec<u8>,
}

impl Peer {
    pub fn new() -> Result<Peer, String> {
        let dir = temp_dir();
        let (path, listener) = channel_listener(dir.path());
        let (tx, rx) = mpsc::channel::<u64>();
        let handler = RutabagaHandler::new(move |f: RutabagaFence| {
            let _ = tx.send(f.fence_id);
        });
        let rutabaga = RutabagaBuilder::new(1 << RUTABAGA_CAPSET_CROSS_DOMAIN, handler)
            .set_rutabaga_paths(Some(vec![RutabagaPath {
                path,
                path_type: CHANNEL,
            }]))
            .build()
            .map_err(rerr("build"))?;
        Ok(Peer {
            rutabaga,
            fences: rx,
            _dir: dir,
            listener,
            next_ctx: 0,
            next_res: 0x100,
            next_fence: 0,
            cmd: Vec::with_capacity(65536),
        })
    }

    fn res_id(&mut self) -> u32 {
        self.next_res += 1;
        self.next_res
    }

    fn ring(&mut self, ctx_id: u32) -> Result<Ring, String> {
        let ring = Ring::new(self.res_id());
        self.rutabaga
            .resource_create_blob(
                0,
                ring.res_id,
                ResourceCreateBlob {
                    blob_mem: RUTABAGA_BLOB_MEM_GUEST,
                    blob_flags: RUTABAGA_BLOB_FLAG_USE_MAPPABLE,
                    blob_id: 0,
                    size: CD_RING_SIZE,
                },
                Some(vec![RutabagaIovec {
                    base: ring.ptr.cast(),
                    len: RING,
                }]),
                None,
            )
            .map_err(rerr("resource_create_blob (ring)"))?;
        if let Err(e) = self.rutabaga.context_attach_resource(ctx_id, ring.res_id) {
            // The resource still points at the page: never free it.
            std::mem::forget(ring);
            return Err(rerr("context_attach_resource")(e));
        }
        Ok(ring)
    }

    /// Copies `cmd` into the command buffer and submits it.
    fn submit(&mut self, ctx: &Ctx, cmd: &[u8]) -> Result<(), String> {
        self.cmd.clear();
        self.cmd.extend_from_slice(cmd);
        self.rutabaga
            .submit_command(ctx.id, &mut self.cmd, &[])
            .map_err(rerr("submit_command"))
    }

    fn open(&mut self) -> Result<(Ctx, UnixStream), String> {
        self.next_ctx += 1;
        let id = self.next_ctx;
        self.rutabaga
            .create_context(id, RUTABAGA_CAPSET_CROSS_DOMAIN, Some("bench"))
            .map_err(rerr("create_context"))?;
        let query = self.ring(id)?;
        let channel = self.ring(id)?;
        let ctx = Ctx { id, query, channel };
        let init = cd_init(ctx.query.res_id, ctx.channel.res_id, CHANNEL);
        let host = self.submit(&ctx, &init).and_then(|()| {
            accept_timeout(&self.listener, T).ok_or_else(|| "rutabaga did not connect".into())
        });
        match host {
            Ok(host) => {
                host.set_nonblocking(false)
                    .map_err(err("set_nonblocking"))?;
                Ok((ctx, host))
            }
            Err(e) => {
                let _ = self.close(ctx);
                Err(e)
            }
        }
    }

    /// Destroys the context and its rings. If rutabaga refuses, the ring pages are leaked
    /// rather than freed under it.
    fn close(&mut self, ctx: Ctx) -> Result<(), String> {
        let mut r = self
            .rutabaga
            .destroy_context(ctx.id)
            .map_err(rerr("destroy_context"));
        for res in [ctx.query.res_id, ctx.channel.res_id] {
            if r.is_ok() {
                r = self
                    .rutabaga
                    .unref_resource(res)
                    .map_err(rerr("unref_resource"));
            }
        }
        if r.is_err() {
            std::mem::forget(ctx);
        }
        // Fences completed by the teardown.
        while self.fences.try_recv().is_ok() {}
        r
    }

    /// POLL + a fence on the channel ring; returns the fence id.
    fn poll(&mut self, ctx: &Ctx) -> Result<u64, String> {
        self.submit(ctx, &cd_poll())?;
        self.next_fence += 1;
        let fence_id = self.next_fence;
        self.rutabaga
            .create_fence(RutabagaFence {
                flags: RUTABAGA_FLAG_FENCE | RUTABAGA_FLAG_INFO_RING_IDX,
                fence_id,
                ctx_id: ctx.id,
                ring_idx: CD_CHANNEL_RING,
            })
            .map_err(rerr("create_fence"))?;
        Ok(fence_id)
    }

    fn wait(&mut self, fence_id: u64) -> Result<(), String> {
        loop {
            match self.fences.recv_timeout(T) {
                Ok(id) if id >= fence_id => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(format!("fence {fence_id} not signalled within {T:?}")),
            }
        }
    }

    fn recv(&mut self, ctx: &Ctx) -> Result<ChannelMsg, String> {
        let f = self.poll(ctx)?;
        self.wait(f)?;
        Ok(decode_channel_msg(&ctx.channel.read()))
    }

    pub fn run(&mut self, case: Case, p: &Params) -> RepResult {
        if case == Case::Memory {
            return self.memory();
        }
        if matches!(case, Case::BulkToGuest | Case::BulkToHost) {
            return Err("n/a (bulk cases: the limit and ours only)".into());
        }
        let (ctx, host) = self.open()?;
        // The host service threads drop their end when done; this copy keeps the channel open
        // until the context is gone, so no channel hang-up overtakes the guest's last message.
        let keep = host.try_clone().map_err(err("dup"))?;
        let r = match case {
            Case::GuestToHost => self.guest_to_host(&ctx, host, p.msgs),
            Case::HostToGuest => self.host_to_guest(&ctx, host, p.msgs),
            Case::RoundTrip => self.round_trip(&ctx, host, p.rtts),
            Case::PipeRead => self.pipe_read(&ctx, host, p.pipe_bytes),
            Case::PipeWrite => self.pipe_write(&ctx, host, p.pipe_bytes),
            Case::FdPipeToGuest => self.fd_pipe_to_guest(&ctx, host, p.fd_msgs),
            Case::FdPipeToHost => self.fd_pipe_to_host(&ctx, host, p.fd_msgs),
            Case::FdMemfd => self.fd_memfd(&ctx, host, p.memfd_msgs),
            Case::BulkToGuest | Case::BulkToHost | Case::Memory => unreachable!(),
        };
        self.close(ctx)?;
        drop(keep);
        r
    }

    fn guest_to_host(&mut self, ctx: &Ctx, host: UnixStream, n: usize) -> RepResult {
        let total = (n * MSG) as u64;
        let drain = service::spawn_drain(host, total);
        let cmd = cd_send(&vec![0x5a; MSG], &[]);
        let t0 = Instant::now();
        for _ in 0..n {
            self.submit(ctx, &cmd)?;
        }
        let t1 = service::join(drain, "host drain")?;
        Ok(Outcome::new(
            vec![mb_per_s(total, (t1 - t0).as_secs_f64())],
            n,
        ))
    }

    fn host_to_guest(&mut self, ctx: &Ctx, host: UnixStream, n: usize) -> RepResult {
        let total = (n * MSG) as u64;
        let writer = service::spawn_writer(host, vec![0x5a; MSG], n);
        let t0 = Instant::now();
        let mut got = 0u64;
        let mut polls = 0usize;
        while got < total {
            match self.recv(ctx)? {
                ChannelMsg::Receive { data, .. } if !data.is_empty() => got += data.len() as u64,
                other => return Err(format!("expected RECEIVE with data, got {other:?}")),
            }
            polls += 1;
        }
        let secs = t0.elapsed().as_secs_f64();
        service::join(writer, "host writer")?;
        let mbps = mb_per_s(total, secs);
        Ok(Outcome::new(vec![mbps, mbps], polls))
    }

    fn round_trip(&mut self, ctx: &Ctx, host: UnixStream, n: usize) -> RepResult {
        let warm = n / 10;
        let echo = service::spawn_echo(host, RTT_MSG, n + warm);
        let cmd = cd_send(&[0x5a; RTT_MSG], &[]);
        let mut samples = Vec::with_capacity(n);
        let mut fence = self.poll(ctx)?;
        for i in 0..n + warm {
            let t0 = Instant::now();
            self.submit(ctx, &cmd)?;
            let mut got = 0;
            loop {
                self.wait(fence)?;
                match decode_channel_msg(&ctx.channel.read()) {
                    ChannelMsg::Receive { data, .. } if !data.is_empty() => got += data.len(),
                    other => return Err(format!("expected the echo, got {other:?}")),
                }
                if got >= RTT_MSG {
                    break;
                }
                fence = self.poll(ctx)?;
            }
            let dt = t0.elapsed();
            fence = self.poll(ctx)?;
            if i >= warm {
                samples.push(dt.as_secs_f64() * 1e6);
            }
        }
        service::join(echo, "host echo")?;
        let p50 = percentile(&mut samples, 50.0);
        let p99 = percentile(&mut samples, 99.0);
        Ok(Outcome::new(vec![p50, p99], n + warm))
    }

    fn pipe_read(&mut self, ctx: &Ctx, host: UnixStream, bytes: usize) -> RepResult {
        let writer = service::spawn_pipe_filler(host, bytes);
        let id = CD_READ_PIPE_ID_BASE + 1;
        let t0 = Instant::now();
        self.submit(ctx, &cd_send(b"r", &[(id, CD_ID_TYPE_READ_PIPE)]))?;
        let mut got = 0usize;
        let mut reads = 0usize;
        loop {
            match self.recv(ctx)? {
                ChannelMsg::Read {
                    id: rid,
                    hang_up,
                    data,
                } if rid == id => {
                    got += data.len();
                    reads += 1;
                    if hang_up {
                        break;
                    }
                }
                other => return Err(format!("expected READ, got {other:?}")),
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        service::join(writer, "host writer")?;
        if got != bytes {
            return Err(format!("read {got} of {bytes} bytes"));
        }
        Ok(Outcome::new(vec![mb_per_s(bytes as u64, secs)], reads))
    }

    fn pipe_write(&mut self, ctx: &Ctx, host: UnixStream, bytes: usize) -> RepResult {
        let (r, w) = pipe();
        send_with_fds(&host, b"w", &[std::os::fd::AsRawFd::as_raw_fd(&w)]);
        drop(w);
        let id = match self.recv(ctx)? {
            ChannelMsg::Receive { ids, .. } if ids.len() == 1 => ids[0].0,
            other => return Err(format!("expected RECEIVE with a pipe, got {other:?}")),
        };
        let reader = std::thread::spawn(move || service::drain_to_eof(r));
        let data = vec![0x5au8; bytes];
        let chunks = bytes.div_ceil(PIPE_CHUNK);
        let t0 = Instant::now();
        for (i, c) in data.chunks(PIPE_CHUNK).enumerate() {
            self.submit(ctx, &cd_write(id, c, i + 1 == chunks))?;
        }
        let (got, t1) = service::join(reader, "host reader")?;
        drop(host);
        if got != bytes as u64 {
            return Err(format!("host read {got} of {bytes} bytes"));
        }
        Ok(Outcome::new(
            vec![mb_per_s(bytes as u64, (t1 - t0).as_secs_f64())],
            chunks,
        ))
    }

    fn fd_pipe_to_guest(&mut self, ctx: &Ctx, host: UnixStream, n: usize) -> RepResult {
        let (_r, w) = pipe();
        let (credits, source) = service::spawn_fd_source(host, b"p", OwnedFd::from(w), n);
        let t0 = Instant::now();
        for _ in 0..n {
            let id = match self.recv(ctx)? {
                ChannelMsg::Receive { ids, .. } if ids.len() == 1 => ids[0].0,
                other => return Err(format!("expected RECEIVE with a pipe, got {other:?}")),
            };
            credits.give();
            self.submit(ctx, &cd_write(id, &[], true))?;
        }
        let secs = t0.elapsed().as_secs_f64();
        service::join(source, "host sender")?;
        Ok(Outcome::new(vec![n as f64 / secs], n))
    }

    fn fd_pipe_to_host(&mut self, ctx: &Ctx, host: UnixStream, n: usize) -> RepResult {
        let sink = service::spawn_fd_sink(host, n);
        let t0 = Instant::now();
        for i in 0..n {
            let id = CD_READ_PIPE_ID_BASE + 1 + i as u32;
            self.submit(ctx, &cd_send(b"p", &[(id, CD_ID_TYPE_READ_PIPE)]))?;
            match self.recv(ctx)? {
                ChannelMsg::Read {
                    id: rid,
                    hang_up: true,
                    data,
                } if rid == id && data.is_empty() => {}
                other => return Err(format!("expected READ hang_up of {id:#x}, got {other:?}")),
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        service::join(sink, "host receiver")?;
        Ok(Outcome::new(vec![n as f64 / secs], n))
    }

    fn fd_memfd(&mut self, ctx: &Ctx, host: UnixStream, n: usize) -> RepResult {
        let memfd = memfd_with(&vec![0u8; MEMFD_SIZE as usize]);
        let (credits, source) = service::spawn_fd_source(host, b"m", OwnedFd::from(memfd), n);
        let t0 = Instant::now();
        for _ in 0..n {
            let id = match self.recv(ctx)? {
                ChannelMsg::Receive { ids, .. } if ids.len() == 1 => ids[0].0,
                other => return Err(format!("expected RECEIVE with a memfd, got {other:?}")),
            };
            credits.give();
            let res = self.res_id();
            self.rutabaga
                .resource_create_blob(
                    ctx.id,
                    res,
                    ResourceCreateBlob {
                        blob_mem: RUTABAGA_BLOB_MEM_HOST3D,
                        blob_flags: RUTABAGA_BLOB_FLAG_USE_MAPPABLE
                            | RUTABAGA_BLOB_FLAG_USE_SHAREABLE,
                        blob_id: id.into(),
                        size: MEMFD_SIZE,
                    },
                    None,
                    None,
                )
                .map_err(rerr("resource_create_blob (HOST3D)"))?;
            self.rutabaga.map(res).map_err(rerr("map"))?;
            self.rutabaga.unmap(res).map_err(rerr("unmap"))?;
            self.rutabaga
                .unref_resource(res)
                .map_err(rerr("unref_resource"))?;
        }
        let secs = t0.elapsed().as_secs_f64();
        service::join(source, "host sender")?;
        Ok(Outcome::new(vec![n as f64 / secs], n))
    }

    /// In-process: only the growth of this process's RSS for RSS_CONTEXTS contexts (each with
    /// its worker thread and a POLL pending) is attributable to rutabaga.
    fn memory(&mut self) -> RepResult {
        let me = std::process::id();
        let before = crate::sys::rss(me).map_err(err("read /proc"))?;
        let mut open = Vec::with_capacity(RSS_CONTEXTS);
        for _ in 0..RSS_CONTEXTS {
            let (ctx, host) = self.open()?;
            self.poll(&ctx)?;
            open.push((ctx, host));
        }
        std::thread::sleep(Duration::from_millis(50));
        let after = crate::sys::rss(me).map_err(err("read /proc"))?;
        for (ctx, host) in open {
            drop(host);
            self.close(ctx)?;
        }
        let na = "n/a (in-process: no process of its own)".to_string();
        Ok(Outcome {
            values: vec![
                Err(na.clone()),
                Err(na.clone()),
                Err(na),
                Ok((after.total as f64 - before.total as f64) / RSS_CONTEXTS as f64),
            ],
            ops: 0,
            extra: Vec::new(),
            costs: None,
            driver_allocs: None,
        })
    }
}
