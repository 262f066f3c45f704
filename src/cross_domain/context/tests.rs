//! Unit tests of `Context`: INIT, SEND with read pipes and POLL delivery through a
//! substitute connector, teardown, and command-size errors.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::cross_domain::env::{submission, Connector, TestEnv};
use crate::cross_domain::io as cdio;

const STREAM: u64 = 0x1_0000;
const QUERY: u64 = 0x1_2000;
const CHANNEL: u64 = 0x1_4000;

/// Resource 1 is the query ring, 2 the channel ring.
struct Rings(SgList, SgList);

impl ResourceView for Rings {
    fn lookup(&self, res_id: u32) -> Lookup<'_> {
        match res_id {
            1 => Lookup::Guest(&self.0),
            2 => Lookup::Guest(&self.1),
            _ => Lookup::NotAttached,
        }
    }
}

/// Hands out one end of a socket pair (once).
struct Pair(Mutex<Option<OwnedFd>>);

impl Connector for Pair {
    fn connect(&self, _: u32, _: &Path) -> std::io::Result<OwnedFd> {
        Ok(self.0.lock().unwrap().take().unwrap())
    }
}

struct Fixture {
    t: TestEnv,
    rings: Rings,
    ctx: Context,
    host: UnixStream,
}

impl Fixture {
    /// A context after INIT on channel 2, and the host end of its channel.
    fn new() -> Self {
        let (a, host) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut channels = ChannelTable::new();
        channels.insert(2, "/run/test.sock".into()).unwrap();
        let t = TestEnv::with(channels, Arc::new(Pair(Mutex::new(Some(a.into())))));
        let rings = Rings(t.sg(QUERY, &[0; 4096]), t.sg(CHANNEL, &[0; 4096]));
        let mut f = Fixture {
            t,
            rings,
            ctx: Context::new(5, "test".into()),
            host,
        };
        let init = Init {
            hdr: header(CMD_INIT, std::mem::size_of::<Init>()),
            query_ring_id: 1,
            channel_ring_id: 2,
            channel_type: 2,
        };
        f.submit(init.as_slice()).unwrap();
        f
    }

    fn submit(&mut self, cmds: &[u8]) -> Result<(), CtxError> {
        let stream = self.t.sg(STREAM, cmds);
        let mut sub = submission(None);
        sub.images_left = 10;
        let mut env = self.t.env();
        self.ctx
            .submit(&mut env, &mut sub, &self.rings, &stream, 0, cmds.len())
    }

    /// Hand every ready epoll event to the context, then POLL once: the message written,
    /// as (cmd, identifier of a READ, data length).
    fn poll(&mut self) -> Option<(u8, u32, usize)> {
        for (token, events) in self.t.ready() {
            let (ctx, src) = crate::cross_domain::token_parts(token);
            assert_eq!(ctx, 5);
            self.ctx.on_event(&mut self.t.env(), src, events);
        }
        self.ctx.arm_poll(1);
        self.ctx.try_deliver(&mut self.t.env())?;
        let hdr: CmdHeader = self.t.mem.read_obj(GuestAddress(CHANNEL)).unwrap();
        Some(match hdr.cmd {
            CMD_READ => {
                let r: ReadWrite = self.t.mem.read_obj(GuestAddress(CHANNEL)).unwrap();
                (CMD_READ, r.identifier, r.opaque_data_size as usize)
            }
            cmd => {
                let r: SendReceive = self.t.mem.read_obj(GuestAddress(CHANNEL)).unwrap();
                (cmd, 0, r.opaque_data_size as usize)
            }
        })
    }
}

fn header(cmd: u8, size: usize) -> CmdHeader {
    CmdHeader {
        cmd,
        cmd_size: size as u16,
        ..Default::default()
    }
}

/// SEND `data` with one READ_PIPE identifier `id`.
fn send_with_read_pipe(id: u32, data: &[u8]) -> Vec<u8> {
    let mut s = SendReceive {
        hdr: header(CMD_SEND, std::mem::size_of::<SendReceive>() + data.len()),
        num_identifiers: 1,
        opaque_data_size: data.len() as u32,
        ..Default::default()
    };
    s.identifiers[0] = id;
    s.identifier_types[0] = ID_TYPE_READ_PIPE;
    let mut v = s.as_slice().to_vec();
    v.extend_from_slice(data);
    v
}

#[test]
fn the_channel_and_a_read_pipe_take_turns_until_the_pipe_hangs_up() {
    let mut f = Fixture::new();
    f.submit(&send_with_read_pipe(0x8000_0001, b"abc")).unwrap();
    // The host gets the bytes and the write end of the pipe.
    let mut buf = [0u8; 16];
    let iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    let (mut fds, mut cmsg) = (Vec::new(), cdio::CmsgBuf::default());
    cdio::recv_with_fds(f.host.as_fd(), &iov, &mut fds, &mut cmsg).unwrap();
    assert_eq!((&buf[..3], fds.len()), (&b"abc"[..], 1));
    let mut pipe = std::fs::File::from(fds.pop().unwrap());
    // Both sources have far more than one message's worth.
    pipe.write_all(&[1u8; 10_000]).unwrap();
    (&f.host).write_all(&[2u8; 10_000]).unwrap();
    let got: Vec<_> = (0..4).map(|_| f.poll().unwrap()).collect();
    assert_eq!(
        got,
        [
            (CMD_RECEIVE, 0, MAX_RECEIVE_DATA),
            (CMD_READ, 0x8000_0001, 4072),
            (CMD_RECEIVE, 0, MAX_RECEIVE_DATA),
            (CMD_READ, 0x8000_0001, 4072),
        ]
    );
    // The pipe's writer goes: both sources finish their data in turn, then the pipe's
    // hang-up comes while the channel has nothing, and then nothing at all.
    drop(pipe);
    let rest = |total, per| total - 2 * per;
    assert_eq!(
        f.poll(),
        Some((CMD_RECEIVE, 0, rest(10_000, MAX_RECEIVE_DATA)))
    );
    assert_eq!(f.poll(), Some((CMD_READ, 0x8000_0001, rest(10_000, 4072))));
    assert_eq!(f.poll(), Some((CMD_READ, 0x8000_0001, 0)));
    assert_eq!(f.poll(), None);
    assert!(
        f.ctx.items.get(0x8000_0001).is_none(),
        "closed after its hang-up"
    );
    assert_eq!(f.ctx.delivery.len(), 1, "only the channel is left");
    // A new read pipe joins the rotation with the next id.
    f.submit(&send_with_read_pipe(0x8000_0002, b"d")).unwrap();
    assert_eq!(f.ctx.delivery.len(), 2);
}

#[test]
fn teardown_closes_the_channel_and_pipes_but_keeps_the_image_count() {
    let mut f = Fixture::new();
    let q = GetImageRequirements {
        hdr: header(CMD_GET_IMAGE_REQUIREMENTS, 24),
        width: 64,
        height: 64,
        drm_format: u32::from_le_bytes(*b"XR24"),
        flags: 0,
    };
    f.submit(q.as_slice()).unwrap();
    f.submit(&send_with_read_pipe(0x8000_0001, b"x")).unwrap();
    assert_eq!((f.ctx.image_count(), f.ctx.item_count()), (1, 1));
    f.ctx.arm_poll(9);
    let epoll = f.t.shared.epoll();
    assert_eq!(f.ctx.teardown(epoll, &mut f.t.released), Some(9));
    assert_eq!((f.ctx.image_count(), f.ctx.item_count()), (1, 0));
    assert!(f.t.ready().is_empty(), "nothing watched any more");
    // The host sees the hang-up.
    let mut buf = [0u8; 8];
    assert_eq!(std::io::Read::read(&mut f.host, &mut buf).unwrap(), 1);
    assert_eq!(std::io::Read::read(&mut f.host, &mut buf).unwrap(), 0);
}

#[test]
fn bad_sizes_report_the_offset_in_the_command_stream() {
    let mut f = Fixture::new();
    // A POLL, then a WRITE too short for its struct.
    let mut cmds = header(CMD_POLL, 16).as_slice().to_vec();
    cmds.extend_from_slice(&[0; 8]);
    cmds.extend_from_slice(header(CMD_WRITE, 16).as_slice());
    cmds.extend_from_slice(&[0; 8]);
    match f.submit(&cmds) {
        Err(CtxError::BadCmdSize {
            offset: 16,
            size: 16,
            remaining: 16,
        }) => {}
        other => panic!("{other:?}"),
    }
    // A header cut short at the end of the stream.
    match f.submit(&cmds[..20]) {
        Err(CtxError::BadCmdSize {
            offset: 16,
            size: 4,
            remaining: 4,
        }) => {}
        other => panic!("{other:?}"),
    }
}

/// A SEND naming a kind the channel's policy does not carry fails before anything is sent, and
/// consumes no read-pipe id.
#[test]
fn a_send_of_a_kind_the_channel_does_not_carry_is_refused() {
    let mut f = Fixture::new();
    let set = |f: &mut Fixture, p: FdPolicy| {
        f.ctx
            .conn
            .as_mut()
            .and_then(|c| c.channel.as_mut())
            .unwrap()
            .set_policy(p)
    };
    set(&mut f, FdPolicy::NONE);
    let r = f.submit(&send_with_read_pipe(0x8000_0001, b"abc"));
    assert!(
        matches!(
            r,
            Err(CtxError::NotCarried {
                class: FdClass::Pipe,
                ..
            })
        ),
        "{r:?}"
    );
    let mut blob = SendReceive {
        hdr: header(CMD_SEND, std::mem::size_of::<SendReceive>() + 1),
        num_identifiers: 1,
        opaque_data_size: 1,
        ..Default::default()
    };
    blob.identifiers[0] = 3;
    blob.identifier_types[0] = ID_TYPE_VIRTGPU_BLOB;
    let mut cmd = blob.as_slice().to_vec();
    cmd.push(b'x');
    let r = f.submit(&cmd);
    assert!(
        matches!(
            r,
            Err(CtxError::NotCarried {
                class: FdClass::Memory,
                ..
            })
        ),
        "{r:?}"
    );
    // Memory alone: the blob goes on to the usual checks, the pipe is still refused.
    set(&mut f, FdPolicy::NONE.with(FdClass::Memory));
    assert!(matches!(
        f.submit(&cmd),
        Err(CtxError::ResourceNotAttached(3))
    ));
    assert!(matches!(
        f.submit(&send_with_read_pipe(0x8000_0001, b"abc")),
        Err(CtxError::NotCarried { .. })
    ));
    f.host.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 8];
    assert!(
        std::io::Read::read(&mut f.host, &mut buf).is_err(),
        "nothing was sent"
    );
    // Allowed again, the guest's first read-pipe id is still the next one.
    set(&mut f, FdPolicy::default_for(2));
    f.submit(&send_with_read_pipe(0x8000_0001, b"abc")).unwrap();
}
