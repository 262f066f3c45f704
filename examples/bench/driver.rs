//! The bench's cheap guest driver: requests encoded once into guest memory and offered again
//! and again as fixed descriptor chains (`FixedChain` in tests/support/virtq.rs), so that per
//! request nothing is allocated, encoded or copied. What is left is what any guest driver
//! must do: patch the few bytes that change (a fence id, a resource id), publish the chain,
//! kick unless EVENT_IDX suppresses it, wait for the interrupt, read the used ring and the
//! response. Linux's virtio-gpu driver does about as much; the test frontend's general
//! driver (`--driver frontend`) also allocates, poisons and copies every buffer, which in
//! the pinned regime counts against the device.
//!
//! Every buffer lives in the VM's guest heap; `release` gives buffers and descriptor slots
//! back. Nothing here allocates after construction.

use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use support::*;

/// One request laid out once: its readable parts back to back in one guest buffer, a
/// writable response buffer, and a fixed chain over them.
pub struct Request {
    mem: GuestMemoryMmap,
    chain: FixedChain,
    /// Guest address and size of the request bytes (all readable parts).
    req: u64,
    req_len: u64,
    resp: u64,
    offered: bool,
}

impl Request {
    /// Lays out `parts` (one descriptor each, as Linux splits SUBMIT_3D into header and
    /// command stream) and a `resp_len`-byte response buffer.
    pub fn new(vm: &mut TestVm, parts: &[&[u8]], resp_len: u32) -> Request {
        let mem = vm.mem().clone();
        let req_len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let req = vm.alloc(req_len.max(1), 16);
        let resp = vm.alloc(u64::from(resp_len), 16);
        let mut descs = Vec::with_capacity(parts.len() + 1);
        let mut at = req;
        for (i, p) in parts.iter().enumerate() {
            vm.write_mem(at, p);
            descs.push(RawDesc::readable(at, p.len() as u32, Some(i as u16 + 1)));
            at += p.len() as u64;
        }
        descs.push(RawDesc::writable(resp, resp_len, None));
        let chain = vm.queue(CONTROLQ).reserve_fixed(&mem, &descs);
        Request {
            mem,
            chain,
            req,
            req_len,
            resp,
            offered: false,
        }
    }

    /// A SUBMIT_3D of `cmds` on `ctx_id`: the 32-byte header and the command stream as two
    /// descriptors, a 24-byte response.
    pub fn submit_3d(
        vm: &mut TestVm,
        ctx_id: u32,
        cmds: &[u8],
        fence: Option<(u64, Option<u8>)>,
    ) -> Request {
        let h = req_submit_3d_hdr(ctx_id, cmds.len() as u32, fence);
        Request::new(vm, &[&h, cmds], HDR_SIZE as u32)
    }

    /// Overwrites request bytes at `offset` (counted over all parts) while the request is
    /// not offered.
    pub fn patch(&self, offset: u64, bytes: &[u8]) {
        assert!(!self.offered, "patching an offered request");
        assert!(
            offset + bytes.len() as u64 <= self.req_len,
            "patch past the request"
        );
        self.mem
            .write_slice(bytes, GuestAddress(self.req + offset))
            .expect("patch request");
    }

    /// Sets the length of readable part `part` (the request bytes do not move).
    pub fn set_part_len(&self, vm: &mut TestVm, part: usize, len: u32) {
        assert!(!self.offered, "resizing an offered request");
        vm.queue(CONTROLQ)
            .set_fixed_len(&self.mem, &self.chain, part, len);
    }

    /// Publishes the request (and kicks unless suppressed). The response type is cleared
    /// first so a response the device did not write is not mistaken for the previous one.
    pub fn offer(&mut self, vm: &mut TestVm) {
        self.mem
            .write_obj(0u32, GuestAddress(self.resp))
            .expect("clear response");
        vm.queue(CONTROLQ).offer_fixed(&self.mem, &self.chain);
        self.offered = true;
    }

    /// Waits for the response; returns its type.
    pub fn wait(&mut self, vm: &mut TestVm, timeout: Duration) -> Result<u32, String> {
        let len = vm
            .queue(CONTROLQ)
            .wait_fixed(&self.mem, &self.chain, timeout)
            .ok_or_else(|| format!("no response within {timeout:?}"))?;
        self.offered = false;
        if (len as usize) < HDR_SIZE {
            return Err(format!("response of {len} bytes"));
        }
        let t: u32 = self
            .mem
            .read_obj(GuestAddress(self.resp))
            .expect("read response");
        Ok(u32::from_le(t))
    }

    /// Waits for the response and checks it is OK_NODATA.
    pub fn wait_ok(
        &mut self,
        vm: &mut TestVm,
        timeout: Duration,
        what: &str,
    ) -> Result<(), String> {
        let t = self.wait(vm, timeout).map_err(|e| format!("{what}: {e}"))?;
        crate::ours::check_type(t, what)
    }

    /// Gives the descriptor slots and buffers back (the request must not be offered).
    pub fn release(self, vm: &mut TestVm) {
        assert!(!self.offered, "releasing an offered request");
        vm.queue(CONTROLQ).release_fixed(self.chain);
        vm.free(self.req);
        vm.free(self.resp);
    }
}

/// Unfenced requests kept in flight without waiting, as Linux does for SEND and WRITE: a
/// ring of identical pre-encoded requests; submitting waits for the oldest (and checks it)
/// only when all are in flight.
pub struct Window {
    reqs: Vec<Request>,
    next: usize,
    in_flight: usize,
    what: &'static str,
}

impl Window {
    /// `depth` requests in flight at most, each a SUBMIT_3D of `cmds`.
    pub fn submit_3d(
        vm: &mut TestVm,
        ctx_id: u32,
        cmds: &[u8],
        depth: usize,
        what: &'static str,
    ) -> Window {
        Window {
            reqs: (0..depth)
                .map(|_| Request::submit_3d(vm, ctx_id, cmds, None))
                .collect(),
            next: 0,
            in_flight: 0,
            what,
        }
    }

    /// Lets `fill` patch the next request, then offers it; waits for the oldest first when
    /// all are in flight.
    pub fn submit(
        &mut self,
        vm: &mut TestVm,
        timeout: Duration,
        fill: impl FnOnce(&mut TestVm, &Request),
    ) -> Result<(), String> {
        if self.in_flight == self.reqs.len() {
            self.reqs[self.next].wait_ok(vm, timeout, self.what)?;
            self.in_flight -= 1;
        }
        let r = &mut self.reqs[self.next];
        fill(vm, r);
        r.offer(vm);
        self.in_flight += 1;
        self.next = (self.next + 1) % self.reqs.len();
        Ok(())
    }

    /// Waits for every request in flight, oldest first.
    pub fn drain(&mut self, vm: &mut TestVm, timeout: Duration) -> Result<(), String> {
        let n = self.reqs.len();
        while self.in_flight > 0 {
            let i = (self.next + n - self.in_flight) % n;
            self.reqs[i].wait_ok(vm, timeout, self.what)?;
            self.in_flight -= 1;
        }
        Ok(())
    }

    pub fn release(self, vm: &mut TestVm) {
        for r in self.reqs {
            r.release(vm);
        }
    }
}

/// Written over the channel ring header before each POLL, so a fence that completes without
/// a message is recognisable (the test frontend does the same).
const RING_POISON: [u8; 8] = [0xee; 8];

/// A message in the channel ring, borrowed from the driver's buffer.
#[derive(Debug)]
pub enum Msg<'a> {
    Receive {
        num_ids: u32,
        first_id: u32,
        data: &'a [u8],
    },
    Read {
        id: u32,
        hang_up: bool,
        data: &'a [u8],
    },
    /// Another command id (only printed, in error messages).
    Other(#[allow(dead_code)] u8),
    Untouched,
}

/// The channel ring's POLL: fenced on ring 1, re-armed with the next fence id each time.
pub struct Poll {
    req: Request,
    ring: u64,
    buf: Vec<u8>,
}

impl Poll {
    pub fn new(vm: &mut TestVm, ctx: &CrossDomainContext) -> Poll {
        Self::with_ring(vm, ctx, CD_RING_SIZE as usize)
    }

    /// A POLL whose channel ring has `size` bytes (a large ring: one guest range, as the
    /// test frontend allocates a blob).
    pub fn with_ring(vm: &mut TestVm, ctx: &CrossDomainContext, size: usize) -> Poll {
        let fence = Some((0, Some(CD_CHANNEL_RING)));
        Poll {
            req: Request::submit_3d(vm, ctx.ctx_id, &cd_poll(), fence),
            ring: ctx.channel_ring.gpa(),
            buf: vec![0; size],
        }
    }

    /// POLL with the VM's next fence id (one counter for every context, like Linux).
    pub fn arm(&mut self, vm: &mut TestVm) {
        let fence = vm.next_fence_id();
        self.req.patch(8, &fence.to_le_bytes());
        vm.write_mem(self.ring, &RING_POISON);
        self.req.offer(vm);
    }

    /// Waits for the fence and decodes the ring, copying only the message's bytes.
    pub fn wait(&mut self, vm: &mut TestVm, timeout: Duration) -> Result<Msg<'_>, String> {
        self.req.wait_ok(vm, timeout, "POLL fence")?;
        let mem = &self.req.mem;
        let read = |buf: &mut [u8], from: usize, to: usize| {
            mem.read_slice(&mut buf[from..to], GuestAddress(self.ring + from as u64))
                .map_err(|e| format!("read the channel ring: {e}"))
        };
        read(&mut self.buf, 0, CD_RW_HEADER)?;
        let b = &self.buf;
        if b[..8] == RING_POISON {
            return Ok(Msg::Untouched);
        }
        let ring = self.buf.len();
        match b[0] {
            CD_CMD_RECEIVE => {
                read(&mut self.buf, CD_RW_HEADER, CD_SR_DATA)?;
                let num_ids = le32(&self.buf, CD_SR_NUM_IDS);
                let size = le32(&self.buf, CD_SR_DATA_SIZE) as usize;
                if num_ids as usize > CD_MAX_IDENTIFIERS || CD_SR_DATA + size > ring {
                    return Err(format!("RECEIVE with {num_ids} ids and {size} bytes"));
                }
                read(&mut self.buf, CD_SR_DATA, CD_SR_DATA + size)?;
                Ok(Msg::Receive {
                    num_ids,
                    first_id: le32(&self.buf, CD_SR_IDS),
                    data: &self.buf[CD_SR_DATA..CD_SR_DATA + size],
                })
            }
            CD_CMD_READ => {
                let size = le32(b, 16) as usize;
                if CD_RW_HEADER + size > ring {
                    return Err(format!("READ with {size} bytes"));
                }
                read(&mut self.buf, CD_RW_HEADER, CD_RW_HEADER + size)?;
                Ok(Msg::Read {
                    id: le32(&self.buf, 8),
                    hang_up: le32(&self.buf, 12) != 0,
                    data: &self.buf[CD_RW_HEADER..CD_RW_HEADER + size],
                })
            }
            other => Ok(Msg::Other(other)),
        }
    }

    pub fn release(self, vm: &mut TestVm) {
        self.req.release(vm);
    }
}
