//! Our daemon: the real binary in its own process, driven through vhost-user by the test
//! frontend (tests/support: a fake VMM with split virtqueues and a guest driver).
//!
//! The guest driver behaves like Linux's virtio-gpu driver: unfenced SUBMIT_3Ds (SEND, WRITE)
//! are not waited for one by one — up to [`WINDOW`] are in flight — while POLL is fenced and
//! waited for, one message per fence. EVENT_IDX is negotiated, as Linux does.
//!
//! Two guest drivers: the cheap one (`driver.rs`, cases in `lean.rs`; the default), which
//! allocates nothing per request, and the test frontend's general one (the cases below,
//! `--driver frontend`), which allocates, poisons and copies every buffer as the integration
//! tests want. Both send the same requests in the same order.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::alloc;
use crate::cases::*;
use crate::counters;
use crate::service;
use crate::stats::{mb_per_s, percentile};
use support::*;

/// How long any single wait may take before the case is declared broken.
pub const T: Duration = Duration::from_secs(10);
/// Unfenced requests the guest driver keeps in flight.
pub const WINDOW: usize = 32;

/// Which guest driver sends the requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// Pre-encoded requests in reused buffers (`driver.rs`): nothing allocated per request.
    Lean,
    /// The test frontend's general driver, as the integration tests use it.
    Frontend,
}

impl Driver {
    pub fn key(self) -> &'static str {
        match self {
            Driver::Lean => "lean",
            Driver::Frontend => "frontend",
        }
    }
}

/// A running daemon, a connected fake VM and the host listener of the channel.
pub struct Ours {
    bin: PathBuf,
    driver: Driver,
    daemon: Daemon,
    vm: TestVm,
    listener: UnixListener,
    /// The daemon also serves [`LARGE_CHANNEL`] with `ring=1M` (started so for the bulk
    /// cases only, so that other daemons, without the option, can be measured too).
    large: bool,
}

/// Requests submitted without waiting, collected (and checked) once more than [`WINDOW`] are
/// outstanding.
struct Pipeline {
    heads: VecDeque<u16>,
}

impl Pipeline {
    fn new() -> Self {
        Pipeline {
            heads: VecDeque::with_capacity(WINDOW + 1),
        }
    }

    fn push(&mut self, vm: &mut TestVm, head: u16) -> Result<(), String> {
        self.heads.push_back(head);
        while self.heads.len() > WINDOW {
            self.collect_one(vm)?;
        }
        Ok(())
    }

    fn collect_one(&mut self, vm: &mut TestVm) -> Result<(), String> {
        let Some(h) = self.heads.pop_front() else {
            return Ok(());
        };
        let resp = vm
            .wait_for(CONTROLQ, h, T)
            .ok_or_else(|| format!("no response to an unfenced submit within {T:?}"))?;
        check_ok(&resp, "unfenced SUBMIT_3D")
    }

    fn drain(&mut self, vm: &mut TestVm) -> Result<(), String> {
        while !self.heads.is_empty() {
            self.collect_one(vm)?;
        }
        Ok(())
    }
}

fn check_ok(resp: &[u8], what: &str) -> Result<(), String> {
    check_type(resp_type(resp), what)
}

/// OK_NODATA, or an error saying what came instead.
pub fn check_type(t: u32, what: &str) -> Result<(), String> {
    match t {
        RESP_OK_NODATA => Ok(()),
        RESP_ERR_OUT_OF_MEMORY => Err(format!(
            "{what} answered ERR_OUT_OF_MEMORY: the host service fell {} MiB behind and the \
             daemon's bounded backlog refused the message (rutabaga blocks instead)",
            vhost_user_cross_domain::cross_domain::MAX_BACKLOG_BYTES >> 20
        )),
        t => Err(format!("{what} answered {} ({t:#x})", resp_name(t))),
    }
}

fn err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn spawn_daemon(bin: &Path, large: bool) -> (Daemon, UnixListener) {
    let dir = temp_dir();
    let (path, listener) = channel_listener(dir.path());
    let mut daemon = Daemon::builder().bin(bin).dir(dir).channel(CHANNEL, &path);
    if large {
        // The same host listener, with large rings (docs/protocol.md, "Large channel rings").
        daemon = daemon.arg("--channel").arg(format!(
            "{LARGE_CHANNEL}:{},ring={}K",
            path.display(),
            LARGE_RING >> 10
        ));
    }
    let daemon = daemon
        .rust_log("warn")
        .socket_timeout(Duration::from_secs(60))
        .spawn();
    (daemon, listener)
}

fn connect(daemon: &Daemon) -> TestVm {
    TestVm::builder()
        .event_idx(true)
        .connect_timeout(Duration::from_secs(60))
        .connect(daemon.socket_path())
}

impl Ours {
    /// Starts the daemon (inheriting this thread's CPU affinity) and connects a VM.
    pub fn start(bin: &Path, driver: Driver) -> Ours {
        Self::start_with(bin, driver, false)
    }

    fn start_with(bin: &Path, driver: Driver, large: bool) -> Ours {
        let (daemon, listener) = spawn_daemon(bin, large);
        let vm = connect(&daemon);
        Ours {
            bin: bin.to_owned(),
            driver,
            daemon,
            vm,
            listener,
            large,
        }
    }

    /// Opens a context on [`LARGE_CHANNEL`] with a [`LARGE_RING`]-byte channel ring, asking
    /// for large rings in INIT (bit 0 of the header's padding word).
    fn open_large(&mut self) -> Result<(CrossDomainContext, UnixStream), String> {
        let vm = &mut self.vm;
        let id = vm.next_ctx_id();
        check_ok(&vm.ctx_create(id, CAPSET_CROSS_DOMAIN), "CTX_CREATE")?;
        let q = vm.next_resource_id();
        let query_ring = vm.create_guest_blob(q, CD_RING_SIZE);
        check_ok(&vm.ctx_attach(id, q), "CTX_ATTACH_RESOURCE")?;
        let c = vm.next_resource_id();
        // One guest range, as the lean driver's POLL reads the ring (a guest kernel maps the
        // pages contiguously for the program anyway).
        vm.set_blob_pieces(1);
        let channel_ring = vm.create_guest_blob(c, LARGE_RING as u64);
        vm.set_blob_pieces(2);
        check_ok(&vm.ctx_attach(id, c), "CTX_ATTACH_RESOURCE")?;
        let ctx = CrossDomainContext {
            ctx_id: id,
            query_ring,
            channel_ring,
        };
        let mut init = cd_init(q, c, LARGE_CHANNEL);
        init[4..8].copy_from_slice(&1u32.to_le_bytes());
        check_ok(&ctx.submit(vm, &init), "INIT (large ring)")?;
        let host = accept_timeout(&self.listener, T).ok_or("the daemon did not connect")?;
        host.set_nonblocking(false)
            .map_err(err("set_nonblocking"))?;
        Ok((ctx, host))
    }

    /// The bulk cases: each transfer with 4 KiB-ring (or protocol-sized) messages on a
    /// context of [`CHANNEL`], then with large ones on a context of [`LARGE_CHANNEL`].
    fn bulk(&mut self, case: Case, p: &Params) -> RepResult {
        if self.driver != Driver::Lean {
            return Err("n/a (the bulk cases have the lean driver only)".into());
        }
        if !self.large {
            *self = Self::start_with(&self.bin.clone(), self.driver, true);
        }
        let span = counters::Span::start(self.daemon.pid(), p.count_syscalls);
        let mut values = Vec::new();
        for large in [false, true] {
            let (ctx, host) = if large {
                self.open_large()?
            } else {
                self.open()?
            };
            let keep = host.try_clone().map_err(err("dup"))?;
            let r = crate::lean::bulk(&mut self.vm, &ctx, case, host, p.bulk_bytes, large);
            self.close(ctx)?;
            drop(keep);
            values.extend(r?);
        }
        let costs = span.stop();
        // Stream and pipe, small then large: reorder to the metrics' order.
        let v = |i: usize| values[i];
        let mut o = Outcome::new(vec![v(0), v(2), v(1), v(3)], 0);
        o.costs = Some(costs);
        Ok(o)
    }

    /// Opens a context on the channel and accepts the daemon's connection to the host service.
    fn open(&mut self) -> Result<(CrossDomainContext, UnixStream), String> {
        let id = self.vm.next_ctx_id();
        let ctx = CrossDomainContext::open(&mut self.vm, id, CHANNEL);
        let host = accept_timeout(&self.listener, T).ok_or("the daemon did not connect")?;
        host.set_nonblocking(false)
            .map_err(err("set_nonblocking"))?;
        Ok((ctx, host))
    }

    /// Destroys a context (completing any POLL still pending) and frees its rings.
    fn close(&mut self, ctx: CrossDomainContext) -> Result<(), String> {
        let rings = [ctx.query_ring.clone(), ctx.channel_ring.clone()];
        check_ok(&ctx.destroy(&mut self.vm), "CTX_DESTROY")?;
        for r in rings {
            check_ok(&self.vm.resource_unref(r.res_id), "RESOURCE_UNREF")?;
            self.vm.free_blob_memory(&r);
        }
        Ok(())
    }

    pub fn run(&mut self, case: Case, p: &Params) -> RepResult {
        if case == Case::Memory {
            return memory(&self.bin);
        }
        if !self.daemon.is_running() {
            return Err("the daemon exited".into());
        }
        if matches!(case, Case::BulkToGuest | Case::BulkToHost) {
            return self.bulk(case, p);
        }
        let (ctx, host) = self.open()?;
        // The host service threads drop their end when done; this copy keeps the channel open
        // until the context is gone, so no channel hang-up overtakes the guest's last message.
        let keep = host.try_clone().map_err(err("dup"))?;
        let before = self.vm.queue_stats(CONTROLQ);
        // Costs over the traffic only: context set-up and tear-down are not the case's.
        let span = counters::Span::start(self.daemon.pid(), p.count_syscalls);
        let r = match self.driver {
            Driver::Lean => crate::lean::run(&mut self.vm, &ctx, case, host, p),
            Driver::Frontend => self.frontend(&ctx, host, case, p),
        };
        let costs = span.stop();
        let after = self.vm.queue_stats(CONTROLQ);
        self.close(ctx)?;
        drop(keep);
        r.map(|mut o| {
            if o.ops > 0 {
                let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / o.ops as f64;
                o.extra = vec![
                    ("requests", per(after.submitted, before.submitted)),
                    ("kicks", per(after.kicks, before.kicks)),
                    ("interrupts", per(after.interrupts, before.interrupts)),
                ];
            }
            o.costs = Some(costs);
            o
        })
    }

    /// The cases with the test frontend's driver.
    fn frontend(
        &mut self,
        ctx: &CrossDomainContext,
        host: UnixStream,
        case: Case,
        p: &Params,
    ) -> RepResult {
        match case {
            Case::GuestToHost => self.guest_to_host(ctx, host, p.msgs),
            Case::HostToGuest => self.host_to_guest(ctx, host, p.msgs),
            Case::RoundTrip => self.round_trip(ctx, host, p.rtts),
            Case::PipeRead => self.pipe_read(ctx, host, p.pipe_bytes),
            Case::PipeWrite => self.pipe_write(ctx, host, p.pipe_bytes),
            Case::FdPipeToGuest => self.fd_pipe_to_guest(ctx, host, p.fd_msgs),
            Case::FdPipeToHost => self.fd_pipe_to_host(ctx, host, p.fd_msgs),
            Case::FdMemfd => self.fd_memfd(ctx, host, p.memfd_msgs),
            Case::BulkToGuest | Case::BulkToHost | Case::Memory => unreachable!(),
        }
    }

    /// Pipelined SENDs of MSG bytes; a host thread drains the socket.
    fn guest_to_host(&mut self, ctx: &CrossDomainContext, host: UnixStream, n: usize) -> RepResult {
        let total = (n * MSG) as u64;
        let drain = service::spawn_drain(host, total);
        let cmd = cd_send(&vec![0x5a; MSG], &[]);
        let mut pipe = Pipeline::new();
        let allocs = alloc::Span::start();
        let t0 = Instant::now();
        for _ in 0..n {
            let h = self.vm.submit_3d(ctx.ctx_id, &cmd, None);
            pipe.push(&mut self.vm, h)?;
        }
        pipe.drain(&mut self.vm)?;
        let allocs = allocs.stop();
        let t1 = service::join(drain, "host drain")?;
        Ok(Outcome::new(vec![mb_per_s(total, (t1 - t0).as_secs_f64())], n).allocs(allocs))
    }

    /// A host thread writes `n` messages of MSG bytes; the guest POLLs and reads RECEIVEs.
    fn host_to_guest(&mut self, ctx: &CrossDomainContext, host: UnixStream, n: usize) -> RepResult {
        let total = (n * MSG) as u64;
        let writer = service::spawn_writer(host, vec![0x5a; MSG], n);
        let allocs = alloc::Span::start();
        let t0 = Instant::now();
        let mut got = 0u64;
        let mut polls = 0usize;
        while got < total {
            match ctx.recv(&mut self.vm, T) {
                ChannelMsg::Receive { data, .. } if !data.is_empty() => got += data.len() as u64,
                other => return Err(format!("expected RECEIVE with data, got {other:?}")),
            }
            polls += 1;
        }
        let secs = t0.elapsed().as_secs_f64();
        let allocs = allocs.stop();
        service::join(writer, "host writer")?;
        let mbps = mb_per_s(total, secs);
        Ok(Outcome::new(vec![mbps, mbps], polls).allocs(allocs))
    }

    /// SEND 64 B → host echo thread → POLL fence → RECEIVE; the POLL is armed before the SEND,
    /// as sommelier keeps one pending.
    fn round_trip(&mut self, ctx: &CrossDomainContext, host: UnixStream, n: usize) -> RepResult {
        let warm = n / 10;
        let echo = service::spawn_echo(host, RTT_MSG, n + warm);
        let cmd = cd_send(&[0x5a; RTT_MSG], &[]);
        let mut samples = Vec::with_capacity(n);
        let allocs = alloc::Span::start();
        let mut poll = ctx.poll_next(&mut self.vm);
        for i in 0..n + warm {
            let t0 = Instant::now();
            let send = self.vm.submit_3d(ctx.ctx_id, &cmd, None);
            let mut got = 0;
            loop {
                match ctx.wait_poll(&mut self.vm, poll, T) {
                    Some(ChannelMsg::Receive { data, .. }) if !data.is_empty() => got += data.len(),
                    other => return Err(format!("expected the echo, got {other:?}")),
                }
                if got >= RTT_MSG {
                    break;
                }
                poll = ctx.poll_next(&mut self.vm);
            }
            let dt = t0.elapsed();
            // Re-arm outside the timed span, as the guest does right after reading the ring.
            poll = ctx.poll_next(&mut self.vm);
            let resp = self
                .vm
                .wait_for(CONTROLQ, send, T)
                .ok_or("SEND: no response")?;
            check_ok(&resp, "SEND")?;
            if i >= warm {
                samples.push(dt.as_secs_f64() * 1e6);
            }
        }
        self.vm.discard(CONTROLQ, poll);
        let allocs = allocs.stop();
        service::join(echo, "host echo")?;
        let p50 = percentile(&mut samples, 50.0);
        let p99 = percentile(&mut samples, 99.0);
        Ok(Outcome::new(vec![p50, p99], n + warm).allocs(allocs))
    }

    /// SEND with a READ_PIPE identifier; the host writes `bytes` into the write end it
    /// received; the guest POLLs and collects READs until hang_up.
    fn pipe_read(&mut self, ctx: &CrossDomainContext, host: UnixStream, bytes: usize) -> RepResult {
        let writer = service::spawn_pipe_filler(host, bytes);
        let id = CD_READ_PIPE_ID_BASE + 1;
        let allocs = alloc::Span::start();
        let t0 = Instant::now();
        let h = self.vm.submit_3d(
            ctx.ctx_id,
            &cd_send(b"r", &[(id, CD_ID_TYPE_READ_PIPE)]),
            None,
        );
        let mut pipe = Pipeline::new();
        pipe.push(&mut self.vm, h)?;
        let mut got = 0usize;
        let mut reads = 0usize;
        loop {
            match ctx.recv(&mut self.vm, T) {
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
        pipe.drain(&mut self.vm)?;
        let allocs = allocs.stop();
        service::join(writer, "host writer")?;
        if got != bytes {
            return Err(format!("read {got} of {bytes} bytes"));
        }
        Ok(Outcome::new(vec![mb_per_s(bytes as u64, secs)], reads).allocs(allocs))
    }

    /// The host passes a pipe's write end; the guest WRITEs PIPE_CHUNK-byte pieces
    /// (pipelined), the last with hang_up; a host thread reads to EOF.
    fn pipe_write(
        &mut self,
        ctx: &CrossDomainContext,
        host: UnixStream,
        bytes: usize,
    ) -> RepResult {
        let (r, w) = pipe();
        send_with_fds(&host, b"w", &[w.as_raw_fd()]);
        drop(w);
        let id = match ctx.recv(&mut self.vm, T) {
            ChannelMsg::Receive { ids, .. } if ids.len() == 1 => ids[0].0,
            other => return Err(format!("expected RECEIVE with a pipe, got {other:?}")),
        };
        let reader = std::thread::spawn(move || service::drain_to_eof(r));
        let data = vec![0x5au8; bytes];
        let chunks = bytes.div_ceil(PIPE_CHUNK);
        let mut pipe = Pipeline::new();
        let allocs = alloc::Span::start();
        let t0 = Instant::now();
        for (i, c) in data.chunks(PIPE_CHUNK).enumerate() {
            let h = self
                .vm
                .submit_3d(ctx.ctx_id, &cd_write(id, c, i + 1 == chunks), None);
            pipe.push(&mut self.vm, h)?;
        }
        pipe.drain(&mut self.vm)?;
        let allocs = allocs.stop();
        let (got, t1) = service::join(reader, "host reader")?;
        drop(host);
        if got != bytes as u64 {
            return Err(format!("host read {got} of {bytes} bytes"));
        }
        Ok(Outcome::new(
            vec![mb_per_s(bytes as u64, (t1 - t0).as_secs_f64())],
            chunks,
        )
        .allocs(allocs))
    }

    /// Per message: the host passes a pipe write end; the guest RECEIVEs it and releases it
    /// with an empty WRITE carrying hang_up (pipelined, not waited for).
    fn fd_pipe_to_guest(
        &mut self,
        ctx: &CrossDomainContext,
        host: UnixStream,
        n: usize,
    ) -> RepResult {
        let (_r, w) = pipe();
        let (credits, source) = service::spawn_fd_source(host, b"p", OwnedFd::from(w), n);
        let mut pipe = Pipeline::new();
        let allocs = alloc::Span::start();
        let t0 = Instant::now();
        for _ in 0..n {
            let id = match ctx.recv(&mut self.vm, T) {
                ChannelMsg::Receive { ids, .. } if ids.len() == 1 => ids[0].0,
                other => return Err(format!("expected RECEIVE with a pipe, got {other:?}")),
            };
            credits.give();
            let h = self
                .vm
                .submit_3d(ctx.ctx_id, &cd_write(id, &[], true), None);
            pipe.push(&mut self.vm, h)?;
        }
        pipe.drain(&mut self.vm)?;
        let secs = t0.elapsed().as_secs_f64();
        let allocs = allocs.stop();
        service::join(source, "host sender")?;
        Ok(Outcome::new(vec![n as f64 / secs], n).allocs(allocs))
    }

    /// Per message: SEND with a new READ_PIPE identifier; the host receives the write end and
    /// closes it; the guest POLLs and gets the READ with hang_up.
    fn fd_pipe_to_host(
        &mut self,
        ctx: &CrossDomainContext,
        host: UnixStream,
        n: usize,
    ) -> RepResult {
        let sink = service::spawn_fd_sink(host, n);
        let mut pipe = Pipeline::new();
        let allocs = alloc::Span::start();
        let t0 = Instant::now();
        for i in 0..n {
            let id = CD_READ_PIPE_ID_BASE + 1 + i as u32;
            let h = self.vm.submit_3d(
                ctx.ctx_id,
                &cd_send(b"p", &[(id, CD_ID_TYPE_READ_PIPE)]),
                None,
            );
            pipe.push(&mut self.vm, h)?;
            match ctx.recv(&mut self.vm, T) {
                ChannelMsg::Read {
                    id: rid,
                    hang_up: true,
                    data,
                } if rid == id && data.is_empty() => {}
                other => return Err(format!("expected READ hang_up of {id:#x}, got {other:?}")),
            }
        }
        pipe.drain(&mut self.vm)?;
        let secs = t0.elapsed().as_secs_f64();
        let allocs = allocs.stop();
        service::join(sink, "host receiver")?;
        Ok(Outcome::new(vec![n as f64 / secs], n).allocs(allocs))
    }

    /// Per message: the host passes a memfd; the guest RECEIVEs it, creates a HOST3D blob from
    /// it, maps it into the host-visible region, unmaps it and drops it.
    fn fd_memfd(&mut self, ctx: &CrossDomainContext, host: UnixStream, n: usize) -> RepResult {
        let memfd = memfd_with(&vec![0u8; MEMFD_SIZE as usize]);
        let (credits, source) = service::spawn_fd_source(host, b"m", OwnedFd::from(memfd), n);
        let flags = BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE;
        let allocs = alloc::Span::start();
        let t0 = Instant::now();
        for i in 0..n {
            let id = match ctx.recv(&mut self.vm, T) {
                ChannelMsg::Receive { ids, .. } if ids.len() == 1 => ids[0].0,
                other => return Err(format!("expected RECEIVE with a memfd, got {other:?}")),
            };
            credits.give();
            let res = self.vm.next_resource_id();
            let r = self
                .vm
                .create_host_blob(ctx.ctx_id, res, id.into(), MEMFD_SIZE, flags);
            check_ok(&r, "RESOURCE_CREATE_BLOB (HOST3D)")?;
            let r = self.vm.resource_map_blob(res, 0);
            if resp_type(&r) != RESP_OK_MAP_INFO {
                let _ = self.vm.resource_unref(res);
                drop(credits);
                let _ = source.join();
                return Err(format!(
                    "n/a (RESOURCE_MAP_BLOB answered {} at message {i}: the test frontend does \
                     not serve SHMEM_MAP yet)",
                    resp_name(resp_type(&r))
                ));
            }
            check_ok(&self.vm.resource_unmap_blob(res), "RESOURCE_UNMAP_BLOB")?;
            check_ok(&self.vm.resource_unref(res), "RESOURCE_UNREF")?;
        }
        let secs = t0.elapsed().as_secs_f64();
        let allocs = allocs.stop();
        service::join(source, "host sender")?;
        Ok(Outcome::new(vec![n as f64 / secs], n).allocs(allocs))
    }
}

/// A fresh daemon: VmRSS once the VMM is connected, and with RSS_CONTEXTS contexts connected
/// to the host service, each with a POLL pending (as sommelier keeps one).
fn memory(bin: &Path) -> RepResult {
    let (mut daemon, listener) = spawn_daemon(bin, false);
    let mut vm = connect(&daemon);
    // Let the daemon finish the handshake's work before reading /proc.
    std::thread::sleep(Duration::from_millis(50));
    let idle = crate::sys::rss(daemon.pid()).map_err(err("read /proc"))?;
    let mut hosts = Vec::with_capacity(RSS_CONTEXTS);
    let mut polls = Vec::with_capacity(RSS_CONTEXTS);
    for _ in 0..RSS_CONTEXTS {
        let id = vm.next_ctx_id();
        let ctx = CrossDomainContext::open(&mut vm, id, CHANNEL);
        hosts.push(accept_timeout(&listener, T).ok_or("the daemon did not connect")?);
        polls.push(ctx.poll_next(&mut vm));
    }
    std::thread::sleep(Duration::from_millis(50));
    let busy = crate::sys::rss(daemon.pid()).map_err(err("read /proc"))?;
    daemon.assert_running();
    drop(hosts);
    drop(vm);
    Ok(Outcome::new(
        vec![
            idle.total as f64 / 1024.0,
            busy.total as f64 / 1024.0,
            busy.anon as f64 / 1024.0,
            (busy.total as f64 - idle.total as f64) / RSS_CONTEXTS as f64,
        ],
        0,
    ))
}
