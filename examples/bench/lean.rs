//! Our daemon's cases driven by the cheap guest driver (`driver.rs`): the same requests, in
//! the same order and with the same pipelining as the test frontend's cases in `ours.rs`,
//! but pre-encoded in guest memory and offered again, so nothing is allocated per request.
//! Each case counts the driver thread's allocations in its loop.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crate::alloc;
use crate::cases::*;
use crate::driver::{Msg, Poll, Request, Window};
use crate::ours::{check_type, T, WINDOW};
use crate::service;
use crate::stats::{mb_per_s, percentile};
use support::*;

/// Byte offset of the command stream in a SUBMIT_3D request (after its 32-byte header).
const CMDS: u64 = 32;

pub fn run(
    vm: &mut TestVm,
    ctx: &CrossDomainContext,
    case: Case,
    host: UnixStream,
    p: &Params,
) -> RepResult {
    match case {
        Case::GuestToHost => guest_to_host(vm, ctx, host, p.msgs),
        Case::HostToGuest => host_to_guest(vm, ctx, host, p.msgs),
        Case::RoundTrip => round_trip(vm, ctx, host, p.rtts),
        Case::PipeRead => pipe_read(vm, ctx, host, p.pipe_bytes),
        Case::PipeWrite => pipe_write(vm, ctx, host, p.pipe_bytes),
        Case::FdPipeToGuest => fd_pipe_to_guest(vm, ctx, host, p.fd_msgs),
        Case::FdPipeToHost => fd_pipe_to_host(vm, ctx, host, p.fd_msgs),
        Case::FdMemfd => fd_memfd(vm, ctx, host, p.memfd_msgs),
        Case::BulkToGuest | Case::BulkToHost => unreachable!("see `bulk`"),
        Case::Memory => unreachable!("the memory case has no traffic"),
    }
}

/// Up to WINDOW unfenced requests in flight after each submission, as `ours::Pipeline`
/// keeps them (it offers the next one and then waits for the oldest beyond WINDOW).
fn window(vm: &mut TestVm, ctx: &CrossDomainContext, cmds: &[u8], what: &'static str) -> Window {
    Window::submit_3d(vm, ctx.ctx_id, cmds, WINDOW + 1, what)
}

fn unexpected(what: &str, got: &Msg) -> String {
    format!("expected {what}, got {got:?}")
}

/// Pipelined SENDs of MSG bytes; a host thread drains the socket.
fn guest_to_host(
    vm: &mut TestVm,
    ctx: &CrossDomainContext,
    host: UnixStream,
    n: usize,
) -> RepResult {
    sends(vm, ctx, host, n, MSG)
}

/// `n` pipelined SENDs of `size` bytes; a host thread drains the socket.
fn sends(
    vm: &mut TestVm,
    ctx: &CrossDomainContext,
    host: UnixStream,
    n: usize,
    size: usize,
) -> RepResult {
    let total = (n * size) as u64;
    let drain = service::spawn_drain(host, total);
    let mut win = window(
        vm,
        ctx,
        &cd_send(&vec![0x5a; size], &[]),
        "unfenced SUBMIT_3D",
    );
    let allocs = alloc::Span::start();
    let t0 = Instant::now();
    for _ in 0..n {
        win.submit(vm, T, |_, _| {})?;
    }
    win.drain(vm, T)?;
    let allocs = allocs.stop();
    let t1 = service::join(drain, "host drain")?;
    win.release(vm);
    Ok(Outcome::new(vec![mb_per_s(total, (t1 - t0).as_secs_f64())], n).allocs(allocs))
}

/// A host thread writes `n` messages of MSG bytes; the guest POLLs and reads RECEIVEs.
fn host_to_guest(
    vm: &mut TestVm,
    ctx: &CrossDomainContext,
    host: UnixStream,
    n: usize,
) -> RepResult {
    let total = (n * MSG) as u64;
    let writer = service::spawn_writer(host, vec![0x5a; MSG], n);
    let mut poll = Poll::new(vm, ctx);
    let allocs = alloc::Span::start();
    let t0 = Instant::now();
    let mut got = 0u64;
    let mut polls = 0usize;
    while got < total {
        poll.arm(vm);
        match poll.wait(vm, T)? {
            Msg::Receive { data, .. } if !data.is_empty() => got += data.len() as u64,
            other => return Err(unexpected("RECEIVE with data", &other)),
        }
        polls += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let allocs = allocs.stop();
    service::join(writer, "host writer")?;
    poll.release(vm);
    let mbps = mb_per_s(total, secs);
    Ok(Outcome::new(vec![mbps, mbps], polls).allocs(allocs))
}

/// SEND 64 B → host echo thread → POLL fence → RECEIVE; the POLL is armed before the SEND,
/// as sommelier keeps one pending.
fn round_trip(vm: &mut TestVm, ctx: &CrossDomainContext, host: UnixStream, n: usize) -> RepResult {
    let warm = n / 10;
    let echo = service::spawn_echo(host, RTT_MSG, n + warm);
    let mut send = Request::submit_3d(vm, ctx.ctx_id, &cd_send(&[0x5a; RTT_MSG], &[]), None);
    let mut poll = Poll::new(vm, ctx);
    let mut samples = Vec::with_capacity(n);
    let allocs = alloc::Span::start();
    poll.arm(vm);
    for i in 0..n + warm {
        let t0 = Instant::now();
        send.offer(vm);
        let mut got = 0;
        loop {
            match poll.wait(vm, T)? {
                Msg::Receive { data, .. } if !data.is_empty() => got += data.len(),
                other => return Err(unexpected("the echo", &other)),
            }
            if got >= RTT_MSG {
                break;
            }
            poll.arm(vm);
        }
        let dt = t0.elapsed();
        // Re-arm outside the timed span, as the guest does right after reading the ring
        // (not after the last one: a fixed chain must complete before it is released).
        if i + 1 < n + warm {
            poll.arm(vm);
        }
        send.wait_ok(vm, T, "SEND")?;
        if i >= warm {
            samples.push(dt.as_secs_f64() * 1e6);
        }
    }
    let allocs = allocs.stop();
    service::join(echo, "host echo")?;
    send.release(vm);
    poll.release(vm);
    let p50 = percentile(&mut samples, 50.0);
    let p99 = percentile(&mut samples, 99.0);
    Ok(Outcome::new(vec![p50, p99], n + warm).allocs(allocs))
}

/// SEND with a READ_PIPE identifier; the host writes `bytes` into the write end it
/// received; the guest POLLs and collects READs until hang_up.
fn pipe_read(
    vm: &mut TestVm,
    ctx: &CrossDomainContext,
    host: UnixStream,
    bytes: usize,
) -> RepResult {
    pipe_read_ring(vm, ctx, host, bytes, CD_RING_SIZE as usize)
}

/// [`pipe_read`] into a channel ring of `ring` bytes.
fn pipe_read_ring(
    vm: &mut TestVm,
    ctx: &CrossDomainContext,
    host: UnixStream,
    bytes: usize,
    ring: usize,
) -> RepResult {
    let writer = service::spawn_pipe_filler(host, bytes);
    let id = CD_READ_PIPE_ID_BASE + 1;
    let cmd = cd_send(b"r", &[(id, CD_ID_TYPE_READ_PIPE)]);
    let mut send = Request::submit_3d(vm, ctx.ctx_id, &cmd, None);
    let mut poll = Poll::with_ring(vm, ctx, ring);
    let allocs = alloc::Span::start();
    let t0 = Instant::now();
    send.offer(vm);
    let mut got = 0usize;
    let mut reads = 0usize;
    loop {
        poll.arm(vm);
        match poll.wait(vm, T)? {
            Msg::Read {
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
            other => return Err(unexpected("READ", &other)),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    send.wait_ok(vm, T, "SEND (READ_PIPE)")?;
    let allocs = allocs.stop();
    service::join(writer, "host writer")?;
    send.release(vm);
    poll.release(vm);
    if got != bytes {
        return Err(format!("read {got} of {bytes} bytes"));
    }
    Ok(Outcome::new(vec![mb_per_s(bytes as u64, secs)], reads).allocs(allocs))
}

/// The host passes a pipe's write end; the guest WRITEs PIPE_CHUNK-byte pieces
/// (pipelined), the last with hang_up; a host thread reads to EOF.
fn pipe_write(
    vm: &mut TestVm,
    ctx: &CrossDomainContext,
    host: UnixStream,
    bytes: usize,
) -> RepResult {
    pipe_write_sized(vm, ctx, host, bytes, PIPE_CHUNK)
}

/// [`pipe_write`] in pieces of `chunk` bytes.
fn pipe_write_sized(
    vm: &mut TestVm,
    ctx: &CrossDomainContext,
    host: UnixStream,
    bytes: usize,
    chunk: usize,
) -> RepResult {
    let (r, w) = pipe();
    send_with_fds(&host, b"w", &[w.as_raw_fd()]);
    drop(w);
    let mut poll = Poll::new(vm, ctx);
    poll.arm(vm);
    let id = match poll.wait(vm, T)? {
        Msg::Receive {
            num_ids: 1,
            first_id,
            ..
        } => first_id,
        other => return Err(unexpected("RECEIVE with a pipe", &other)),
    };
    poll.release(vm);
    let reader = std::thread::spawn(move || service::drain_to_eof(r));
    let chunks = bytes.div_ceil(chunk);
    let mut win = window(vm, ctx, &cd_write(id, &vec![0x5a; chunk], false), "WRITE");
    let allocs = alloc::Span::start();
    let t0 = Instant::now();
    for i in 0..chunks {
        let len = chunk.min(bytes - i * chunk);
        let last = i + 1 == chunks;
        win.submit(vm, T, |vm, req| {
            if last {
                // hang_up @12 of the WRITE; a shorter last piece changes the sizes too.
                req.patch(CMDS + 12, &1u32.to_le_bytes());
                if len != chunk {
                    let size = CD_RW_HEADER + len;
                    req.patch(24, &(size as u32).to_le_bytes());
                    req.patch(CMDS + 2, &(size as u16).to_le_bytes());
                    req.patch(CMDS + 16, &(len as u32).to_le_bytes());
                    req.set_part_len(vm, 1, size as u32);
                }
            }
        })?;
    }
    win.drain(vm, T)?;
    let allocs = allocs.stop();
    let (got, t1) = service::join(reader, "host reader")?;
    drop(host);
    win.release(vm);
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
    vm: &mut TestVm,
    ctx: &CrossDomainContext,
    host: UnixStream,
    n: usize,
) -> RepResult {
    let (_r, w) = pipe();
    let (credits, source) = service::spawn_fd_source(host, b"p", OwnedFd::from(w), n);
    let mut poll = Poll::new(vm, ctx);
    let mut win = window(vm, ctx, &cd_write(0, &[], true), "WRITE hang_up");
    let allocs = alloc::Span::start();
    let t0 = Instant::now();
    for _ in 0..n {
        poll.arm(vm);
        let id = match poll.wait(vm, T)? {
            Msg::Receive {
                num_ids: 1,
                first_id,
                ..
            } => first_id,
            other => return Err(unexpected("RECEIVE with a pipe", &other)),
        };
        credits.give();
        // identifier @8 of the WRITE
        win.submit(vm, T, |_, req| req.patch(CMDS + 8, &id.to_le_bytes()))?;
    }
    win.drain(vm, T)?;
    let secs = t0.elapsed().as_secs_f64();
    let allocs = allocs.stop();
    service::join(source, "host sender")?;
    poll.release(vm);
    win.release(vm);
    Ok(Outcome::new(vec![n as f64 / secs], n).allocs(allocs))
}

/// Per message: SEND with a new READ_PIPE identifier; the host receives the write end and
/// closes it; the guest POLLs and gets the READ with hang_up.
fn fd_pipe_to_host(
    vm: &mut TestVm,
    ctx: &CrossDomainContext,
    host: UnixStream,
    n: usize,
) -> RepResult {
    let sink = service::spawn_fd_sink(host, n);
    let cmd = cd_send(b"p", &[(0, CD_ID_TYPE_READ_PIPE)]);
    let mut win = window(vm, ctx, &cmd, "SEND (READ_PIPE)");
    let mut poll = Poll::new(vm, ctx);
    let allocs = alloc::Span::start();
    let t0 = Instant::now();
    for i in 0..n {
        let id = CD_READ_PIPE_ID_BASE + 1 + i as u32;
        win.submit(vm, T, |_, req| {
            req.patch(CMDS + CD_SR_IDS as u64, &id.to_le_bytes())
        })?;
        poll.arm(vm);
        match poll.wait(vm, T)? {
            Msg::Read {
                id: rid,
                hang_up: true,
                data,
            } if rid == id && data.is_empty() => {}
            other => return Err(unexpected(&format!("READ hang_up of {id:#x}"), &other)),
        }
    }
    win.drain(vm, T)?;
    let secs = t0.elapsed().as_secs_f64();
    let allocs = allocs.stop();
    service::join(sink, "host receiver")?;
    poll.release(vm);
    win.release(vm);
    Ok(Outcome::new(vec![n as f64 / secs], n).allocs(allocs))
}

/// Per message: the host passes a memfd; the guest RECEIVEs it, creates a HOST3D blob from
/// it, maps it into the host-visible region, unmaps it and drops it.
fn fd_memfd(vm: &mut TestVm, ctx: &CrossDomainContext, host: UnixStream, n: usize) -> RepResult {
    let memfd = memfd_with(&vec![0u8; MEMFD_SIZE as usize]);
    let (credits, source) = service::spawn_fd_source(host, b"m", OwnedFd::from(memfd), n);
    let create = CreateBlob {
        ctx_id: ctx.ctx_id,
        res_id: 0,
        blob_mem: BLOB_MEM_HOST3D,
        blob_flags: BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE,
        blob_id: 0,
        size: MEMFD_SIZE,
        entries: Vec::new(),
        nr_entries: None,
    };
    // Room for OK_RESOURCE_PLANE_INFO, as the test frontend leaves.
    let mut create = Request::new(vm, &[&create.body()], 128);
    let mut map = Request::new(vm, &[&req_resource_map_blob(0, 0)], MAP_INFO_SIZE);
    let mut unmap = Request::new(vm, &[&req_resource_unmap_blob(0)], HDR_SIZE as u32);
    let mut unref = Request::new(vm, &[&req_resource_unref(0)], HDR_SIZE as u32);
    let mut poll = Poll::new(vm, ctx);
    let allocs = alloc::Span::start();
    let t0 = Instant::now();
    for i in 0..n {
        poll.arm(vm);
        let id = match poll.wait(vm, T)? {
            Msg::Receive {
                num_ids: 1,
                first_id,
                ..
            } => first_id,
            other => return Err(unexpected("RECEIVE with a memfd", &other)),
        };
        credits.give();
        let res = vm.next_resource_id().to_le_bytes();
        // resource_id @24 in all four; blob_id @40 in CREATE_BLOB.
        create.patch(24, &res);
        create.patch(40, &u64::from(id).to_le_bytes());
        create.offer(vm);
        check_type(create.wait(vm, T)?, "RESOURCE_CREATE_BLOB (HOST3D)")?;
        map.patch(24, &res);
        map.offer(vm);
        let t = map.wait(vm, T)?;
        if t != RESP_OK_MAP_INFO {
            unref.patch(24, &res);
            unref.offer(vm);
            let _ = unref.wait(vm, T);
            drop(credits);
            let _ = source.join();
            return Err(format!(
                "n/a (RESOURCE_MAP_BLOB answered {} at message {i}: the test frontend does \
                 not serve SHMEM_MAP yet)",
                resp_name(t)
            ));
        }
        unmap.patch(24, &res);
        unmap.offer(vm);
        unmap.wait_ok(vm, T, "RESOURCE_UNMAP_BLOB")?;
        unref.patch(24, &res);
        unref.offer(vm);
        unref.wait_ok(vm, T, "RESOURCE_UNREF")?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let allocs = allocs.stop();
    service::join(source, "host sender")?;
    for r in [create, map, unmap, unref] {
        r.release(vm);
    }
    poll.release(vm);
    Ok(Outcome::new(vec![n as f64 / secs], n).allocs(allocs))
}

/// The bulk cases on one context: `[stream, pipe]` in MB/s. Host→guest ([`Case::BulkToGuest`]):
/// a host thread streams `bytes` over the channel, which the guest reads in RECEIVEs, then
/// fills a read pipe, which the guest reads in READs; with `large` the context has a
/// [`LARGE_RING`]-byte ring. Guest→host ([`Case::BulkToHost`]): pipelined SENDs, then WRITEs
/// into a pipe the host passed, of [`MSG`] and [`PIPE_CHUNK`] bytes, or [`BULK_MSG`] with
/// `large`.
pub fn bulk(
    vm: &mut TestVm,
    ctx: &CrossDomainContext,
    case: Case,
    host: UnixStream,
    bytes: usize,
    large: bool,
) -> Result<Vec<f64>, String> {
    let dup = || host.try_clone().map_err(|e| format!("dup: {e}"));
    let value = |r: RepResult| -> Result<f64, String> {
        match r?.values.first() {
            Some(Ok(v)) => Ok(*v),
            _ => Err("no value".into()),
        }
    };
    match case {
        Case::BulkToGuest => {
            let ring = if large {
                LARGE_RING
            } else {
                CD_RING_SIZE as usize
            };
            let stream = stream_to_guest(vm, ctx, dup()?, bytes, ring)?;
            let pipe = value(pipe_read_ring(vm, ctx, dup()?, bytes, ring))?;
            Ok(vec![stream, pipe])
        }
        Case::BulkToHost => {
            let (send, write) = if large {
                (BULK_MSG, BULK_MSG)
            } else {
                (MSG, PIPE_CHUNK)
            };
            let stream = value(sends(vm, ctx, dup()?, bytes / send, send))?;
            let pipe = value(pipe_write_sized(vm, ctx, dup()?, bytes, write))?;
            Ok(vec![stream, pipe])
        }
        _ => Err(format!("{} is not a bulk case", case.key())),
    }
}

/// A host thread writes `bytes` in 1 MiB writes; the guest POLLs and reads RECEIVEs from a
/// `ring`-byte channel ring until all arrived.
fn stream_to_guest(
    vm: &mut TestVm,
    ctx: &CrossDomainContext,
    host: UnixStream,
    bytes: usize,
    ring: usize,
) -> Result<f64, String> {
    const CHUNK: usize = 1 << 20;
    let writer = service::spawn_writer(host, vec![0x5a; CHUNK], bytes.div_ceil(CHUNK));
    let total = (bytes.div_ceil(CHUNK) * CHUNK) as u64;
    let mut poll = Poll::with_ring(vm, ctx, ring);
    let t0 = Instant::now();
    let mut got = 0u64;
    while got < total {
        poll.arm(vm);
        match poll.wait(vm, T)? {
            Msg::Receive { data, .. } if !data.is_empty() => got += data.len() as u64,
            other => return Err(unexpected("RECEIVE with data", &other)),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    service::join(writer, "host writer")?;
    poll.release(vm);
    Ok(mb_per_s(total, secs))
}
