//! A minimal host channel service for trying the daemon: listens on a Unix socket and echoes
//! every message back to the guest, file descriptors included.
//!
//! ```sh
//! cargo run --example echo_service -- /tmp/echo.sock &
//! cargo run --release -- --socket-path /tmp/vm1-gpu.sock --channel 2:/tmp/echo.sock
//! ```
//!
//! A guest program that INITs a cross-domain context with channel type 2 then gets back what it
//! SENDs as RECEIVE messages.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

fn serve(stream: UnixStream) -> nix::Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let mut space = nix::cmsg_space!([RawFd; 32]);
        let (n, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let mut fds: Vec<OwnedFd> = Vec::new();
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(v) = c {
                    // SAFETY: the kernel installed these fds for this process just now; each is
                    // wrapped exactly once.
                    fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            (msg.bytes, fds)
        };
        if n == 0 && fds.is_empty() {
            return Ok(());
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
        let mut off = 0;
        while off < n {
            let iov = [IoSlice::new(&buf[off..n])];
            let sent = sendmsg::<()>(
                stream.as_raw_fd(),
                &iov,
                if off == 0 { cmsgs } else { &[] },
                MsgFlags::empty(),
                None,
            )?;
            off += sent;
        }
    }
}

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: echo_service SOCKET_PATH");
        std::process::exit(2);
    };
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo_service: cannot listen on {path}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("echo_service: listening on {path}");
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                std::thread::spawn(move || {
                    if let Err(e) = serve(s) {
                        eprintln!("echo_service: connection ended: {e}");
                    }
                });
            }
            Err(e) => eprintln!("echo_service: accept: {e}"),
        }
    }
}
