//! A hostile host service: odd fds, too many fds, a huge memfd, a hang-up in the middle of a
//! stream, and a flood faster than the guest polls. The daemon stays bounded, closes what it
//! refuses, and the guest sees well-formed messages or an EOF.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn odd_fds_too_many_fds_a_huge_memfd_a_flood_and_a_hang_up() {
    let dir = temp_dir();
    let (path, l) = channel_listener(dir.path());
    let daemon = Daemon::builder()
        .dir(dir)
        .rust_log("warn")
        .args(["--channel".to_string(), format!("2:{}", path.display())])
        .spawn();
    let mut vm = TestVm::connect(daemon.socket_path());
    let ctx = CrossDomainContext::open(&mut vm, 1, 2);
    let host = accept_timeout(&l, T).expect("channel");
    host.set_nonblocking(false).unwrap();
    let pid = daemon.pid();
    let fds_before = fd_count(pid);

    // 40 fds in one message: pipes' write ends, a directory, sockets, an eventfd, read ends,
    // and a sparse 1 GiB memfd. At most 28 arrive; the unusable ones are closed.
    let huge = memfd_with(b"");
    huge.set_len(1 << 30).unwrap();
    let dir = std::fs::File::open("/").unwrap();
    let efd = nix::sys::eventfd::EventFd::new().unwrap();
    let (sa, _sb) = UnixStream::pair().unwrap();
    let mut keep = Vec::new();
    let mut raw = vec![
        huge.as_raw_fd(),
        dir.as_raw_fd(),
        efd.as_raw_fd(),
        sa.as_raw_fd(),
    ];
    for _ in 0..18 {
        let (r, w) = pipe();
        raw.push(w.as_raw_fd());
        raw.push(r.as_raw_fd());
        keep.push((r, w));
    }
    assert_eq!(raw.len(), 40);
    send_with_fds(&host, b"many", &raw);
    match ctx.recv(&mut vm, T) {
        ChannelMsg::Receive { ids, data } => {
            assert_eq!(data, b"many");
            assert!(ids.len() <= CD_MAX_IDENTIFIERS);
            assert_eq!(ids[0].1, CD_ID_TYPE_VIRTGPU_BLOB);
            assert_eq!(ids[0].2, 1 << 30, "the sparse 1 GiB memfd");
            assert!(
                ids[1..]
                    .iter()
                    .all(|&(_, ty, _)| ty == CD_ID_TYPE_WRITE_PIPE),
                "only usable fds are announced: {ids:?}"
            );
        }
        other => panic!("expected RECEIVE, got {other:?}"),
    }
    assert!(daemon.wait_for_log("more than 28 fds", T));

    // A flood: 64 MiB written as fast as the socket takes it while the guest polls slowly.
    let rss_before = rss_kib(pid);
    let mut flood_host = host.try_clone().unwrap();
    let flooder = std::thread::spawn(move || {
        let chunk = vec![0x5au8; 65536];
        let mut sent = 0usize;
        while sent < 64 << 20 {
            match flood_host.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let mut got = 0usize;
    while got < 4 << 20 {
        match ctx.recv(&mut vm, T) {
            ChannelMsg::Receive { data, .. } => {
                assert!(data.len() <= 3744);
                assert!(data.iter().all(|&b| b == 0x5a));
                got += data.len();
            }
            other => panic!("expected RECEIVE, got {other:?}"),
        }
        if got % (1 << 20) < 3744 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let rss_flood = rss_kib(pid);
    // The daemon reads only what the guest polls for: the rest waits in the host's socket.
    assert!(
        rss_flood < rss_before + 2048,
        "RSS grew from {rss_before} to {rss_flood} KiB during the flood"
    );
    // The host hangs up in the middle of its stream (the flooder's clone closes when it is
    // done): the guest drains what was sent, then sees exactly one EOF.
    drop(host);
    let mut eof = false;
    let mut more = 0usize;
    while !eof {
        match ctx.recv(&mut vm, T) {
            ChannelMsg::Receive { data, ids } if data.is_empty() && ids.is_empty() => eof = true,
            ChannelMsg::Receive { data, .. } => {
                more += data.len();
                if more > (64 << 20) {
                    panic!("more data than was sent");
                }
            }
            other => panic!("expected RECEIVE, got {other:?}"),
        }
    }
    let sent = flooder.join().unwrap();
    assert_eq!(
        got + more,
        sent,
        "every flooded byte arrives once, in order"
    );
    drop(keep);
    // Everything the daemon refused or took is released with the context.
    assert_ok(&vm.ctx_destroy(1), "CTX_DESTROY");
    let deadline = Instant::now() + T;
    while fd_count(pid) > fds_before - 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        fd_count(pid) < fds_before,
        "fds {} after destroy, {} with the context",
        fd_count(pid),
        fds_before
    );
}
