//! Large channel rings end to end through vhost-user (docs/protocol.md, "Large channel rings"):
//! a channel configured with `ring=SIZE` advertises itself in the capset's fifth word, and a
//! context that asks for it in INIT (bit 0 of the header's padding word) with a ring larger
//! than 4096 bytes gets RECEIVEs and READs that fill the ring, up to SIZE. Everything else
//! keeps the 4096-byte messages of every peer.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(10);
const LARGE: u32 = 2;
const PLAIN: u32 = 3;
const RING_64K: u64 = 64 << 10;
/// Bytes before the data of a RECEIVE and of a READ.
const SR_HDR: usize = 352;
const RW_HDR: usize = 24;

struct Setup {
    _daemon: Daemon,
    vm: TestVm,
    large: UnixListener,
    plain: UnixListener,
}

/// A daemon with channel 2 offering rings of `ring` and channel 3 without the option.
fn setup(ring: &str) -> Setup {
    let dir = temp_dir();
    let (large_path, large) = channel_listener(dir.path());
    let (plain_path, plain) = channel_listener(dir.path());
    let args = vec![
        "--channel".to_owned(),
        format!("{LARGE}:{},ring={ring}", large_path.display()),
        "--channel".to_owned(),
        format!("{PLAIN}:{}", plain_path.display()),
    ];
    let daemon = Daemon::start_in(dir, args);
    let vm = TestVm::builder().connect(daemon.socket_path());
    Setup {
        _daemon: daemon,
        vm,
        large,
        plain,
    }
}

impl Setup {
    /// A context on `channel_type` with a channel ring of `ring_size` bytes, INIT with the
    /// large-ring flag if `ask`; returns it and the host end of its channel.
    fn open(
        &mut self,
        ctx_id: u32,
        channel_type: u32,
        ring_size: u64,
        ask: bool,
    ) -> (CrossDomainContext, UnixStream) {
        let vm = &mut self.vm;
        assert_ok(&vm.ctx_create(ctx_id, CAPSET_CROSS_DOMAIN), "CTX_CREATE");
        let q = vm.next_resource_id();
        let query_ring = vm.create_guest_blob(q, 4096);
        assert_ok(&vm.ctx_attach(ctx_id, q), "attach query ring");
        let c = vm.next_resource_id();
        let channel_ring = vm.create_guest_blob(c, ring_size);
        assert_ok(&vm.ctx_attach(ctx_id, c), "attach channel ring");
        let ctx = CrossDomainContext {
            ctx_id,
            query_ring,
            channel_ring,
        };
        let mut init = cd_init(ctx.query_ring.res_id, ctx.channel_ring.res_id, channel_type);
        if ask {
            init[4..8].copy_from_slice(&1u32.to_le_bytes());
        }
        assert_ok(&ctx.submit(vm, &init), "INIT");
        let l = if channel_type == LARGE {
            &self.large
        } else {
            &self.plain
        };
        let host = accept_timeout(l, T).expect("the daemon did not connect the channel");
        host.set_nonblocking(false).unwrap();
        (ctx, host)
    }

    /// POLL, wait, and decode the whole channel ring; also returns the header's `cmd_size`.
    fn recv(&mut self, ctx: &CrossDomainContext) -> (ChannelMsg, u16) {
        let head = ctx.poll_next(&mut self.vm);
        let resp = self
            .vm
            .wait_for(CONTROLQ, head, T)
            .expect("no channel message");
        assert_ok(&resp, "POLL fence");
        let ring = self
            .vm
            .read_blob(&ctx.channel_ring, 0, ctx.channel_ring.size as usize);
        let cmd_size = u16::from_le_bytes([ring[2], ring[3]]);
        (decode_channel_msg(&ring), cmd_size)
    }

    /// Sizes of the RECEIVEs that carry `total` bytes written by the host at once.
    fn receive_sizes(
        &mut self,
        ctx: &CrossDomainContext,
        host: &mut UnixStream,
        total: usize,
    ) -> Vec<usize> {
        let payload = pattern(total, 7);
        host.write_all(&payload).unwrap();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while got.len() < total {
            match self.recv(ctx).0 {
                ChannelMsg::Receive { ids, data } => {
                    assert!(ids.is_empty());
                    sizes.push(data.len());
                    got.extend_from_slice(&data);
                }
                other => panic!("expected RECEIVE, got {other:?}"),
            }
        }
        assert_eq!(got, payload, "the bytes, in order");
        sizes
    }
}

#[test]
fn the_capset_names_the_channels_that_offer_large_rings() {
    let mut s = setup("64K");
    let info = parse_capset_info(&s.vm.get_capset_info(0));
    assert_eq!(info.max_size, 20, "four words and large_ring_channels");
    let caps = s.vm.get_capset(CAPSET_CROSS_DOMAIN, 0);
    assert_resp(&caps, RESP_OK_CAPSET, "GET_CAPSET");
    assert_eq!(caps.len(), 24 + 20);
    assert_eq!(le32(&caps, 24 + 4), (1 << LARGE) | (1 << PLAIN));
    assert_eq!(le32(&caps, 24 + 16), 1 << LARGE);
}

#[test]
fn a_context_that_asks_gets_receives_that_fill_its_ring() {
    let mut s = setup("64K");
    let (ctx, mut host) = s.open(1, LARGE, RING_64K, true);
    let full = RING_64K as usize - SR_HDR;
    assert_eq!(
        s.receive_sizes(&ctx, &mut host, 100_000),
        [full, 100_000 - full]
    );
    // 65536 bytes of command do not fit `cmd_size`: it saturates; the data size counts.
    host.write_all(&pattern(full, 1)).unwrap();
    let (msg, cmd_size) = s.recv(&ctx);
    assert!(matches!(msg, ChannelMsg::Receive { data, .. } if data.len() == full));
    assert_eq!(cmd_size, u16::MAX);
}

#[test]
fn the_ring_bounds_the_message_and_the_option_bounds_the_ring() {
    let mut s = setup("16K");
    let (small, mut host) = s.open(1, LARGE, 8 << 10, true);
    assert_eq!(
        s.receive_sizes(&small, &mut host, 10_000),
        [8192 - SR_HDR, 10_000 - (8192 - SR_HDR)]
    );
    let (big, mut host) = s.open(2, LARGE, RING_64K, true);
    assert_eq!(
        s.receive_sizes(&big, &mut host, 20_000),
        [16384 - SR_HDR, 20_000 - (16384 - SR_HDR)]
    );
}

#[test]
fn without_the_flag_or_the_option_messages_stay_at_4096_bytes() {
    let mut s = setup("64K");
    // A large ring without the flag (a guest with 64 KiB pages, say): as every peer.
    let (ctx, mut host) = s.open(1, LARGE, RING_64K, false);
    let sizes = s.receive_sizes(&ctx, &mut host, 10_000);
    assert_eq!(sizes, [3744, 3744, 10_000 - 2 * 3744]);
    // The flag on a channel without `ring=`: as every peer.
    let (ctx, mut host) = s.open(2, PLAIN, RING_64K, true);
    let sizes = s.receive_sizes(&ctx, &mut host, 10_000);
    assert_eq!(sizes, [3744, 3744, 10_000 - 2 * 3744]);
}

#[test]
fn reads_of_a_pipe_fill_a_large_ring_too() {
    let mut s = setup("64K");
    let (ctx, host) = s.open(1, LARGE, RING_64K, true);
    let pipe_id = CD_READ_PIPE_ID_BASE + 1;
    ctx.send(&mut s.vm, b"pipe", &[(pipe_id, CD_ID_TYPE_READ_PIPE)]);
    let (data, mut fds) = recv_with_fds(&host, 4096, T);
    assert_eq!(data, b"pipe");
    let payload = pattern(200_000, 3);
    let writer = {
        let fd: OwnedFd = fds.pop().expect("the write end");
        let payload = payload.clone();
        std::thread::spawn(move || std::fs::File::from(fd).write_all(&payload).unwrap())
    };
    let mut got = Vec::new();
    let mut largest = 0;
    loop {
        match s.recv(&ctx).0 {
            ChannelMsg::Read { id, hang_up, data } => {
                assert_eq!(id, pipe_id);
                assert!(data.len() <= RING_64K as usize - RW_HDR);
                largest = largest.max(data.len());
                got.extend_from_slice(&data);
                if hang_up {
                    break;
                }
            }
            other => panic!("expected READ, got {other:?}"),
        }
    }
    writer.join().unwrap();
    assert_eq!(got, payload);
    assert!(
        largest > 4072,
        "some READ used more than a 4096-byte ring: {largest}"
    );
}

#[test]
fn a_large_ring_context_gets_read_pipes_that_hold_a_ring_full() {
    let mut s = setup("1M");
    let (ctx, host) = s.open(1, LARGE, 1 << 20, true);
    let pipe_id = CD_READ_PIPE_ID_BASE + 1;
    ctx.send(&mut s.vm, b"pipe", &[(pipe_id, CD_ID_TYPE_READ_PIPE)]);
    let (_, mut fds) = recv_with_fds(&host, 4096, T);
    // 200 000 bytes fit the pipe at once (a default pipe holds 64 KiB: the writer would block).
    let payload = pattern(200_000, 5);
    let mut w = std::fs::File::from(fds.pop().expect("the write end"));
    w.write_all(&payload).unwrap();
    drop(w);
    match s.recv(&ctx).0 {
        ChannelMsg::Read { id, data, .. } => {
            assert_eq!(id, pipe_id);
            assert_eq!(data, payload, "one READ carries everything the pipe held");
        }
        other => panic!("expected READ, got {other:?}"),
    }
    match s.recv(&ctx).0 {
        ChannelMsg::Read { hang_up, data, .. } => assert!(hang_up && data.is_empty()),
        other => panic!("expected the READ with hang_up, got {other:?}"),
    }
}
