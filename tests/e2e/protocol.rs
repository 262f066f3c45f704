//! What the end-to-end test's guest client (examples/e2e_guest_client.rs) and host service
//! (examples/e2e_host_service.rs) say to each other through cross-domain-proxy and the daemon.
//! Both include this file with `#[path]`; run.sh describes the whole test.
//!
//! The connection is a byte stream: the proxy and the daemon keep the order of bytes but not
//! the boundaries of messages, and a file descriptor travels with the first byte of the message
//! it was sent with. So the two sides exchange fixed sizes, and every message that carries a
//! descriptor starts with an 8-byte [`Header`] (4-byte tag, little-endian u32 length) that the
//! receiver reads on its own before it looks for the descriptor.
//!
//! Channel 2, in order (G = guest client, H = host service):
//! 1. G→H [`C2_BYTES`] of `pattern(SEED_C2)`; H echoes each chunk as it arrives.
//! 2. G→H the [`C2_BYTES`] it got back. Check (a): both copies equal the pattern.
//!
//! Then H sends requests, each a [`Header`], and G answers each one before the next:
//! - `PIPE` + the write end of a host pipe: G writes `pattern(SEED_PIPE, len)` into the
//!   descriptor it gets and closes it. Check (b): H reads exactly that, then end of file.
//! - `MEMF` + a host memfd: G maps the descriptor it gets and answers `MDAT` + the first `len`
//!   bytes it sees (or `GERR` + why not). Check (c): a [`MEMFD_BYTES`] memfd holding
//!   `pattern(SEED_MEMFD)`. Check (h): the same with [`ODD_MEMFD_BYTES`], a size that is not a
//!   page multiple (as Wayland keymaps are).
//! - `MCHG`: H has rewritten the memfd of the last `MEMF` with `pattern(SEED_MEMFD_LIVE)`; G maps
//!   the descriptor it kept again and answers like `MEMF`. Check (i): the memory is shared, not
//!   copied when it was sent.
//! - `GPIP`: G answers `GPIP` + the write end of a guest pipe; H writes
//!   `pattern(SEED_GUEST_PIPE, len)` into the descriptor it gets and closes it; G reads to end of
//!   file (or for [`GUEST_WAIT`]) and answers `GPDT` + what it read. Check (f).
//! - `GMEM`: G answers `GMEM` + a guest memfd holding `pattern(SEED_GUEST_MEMFD, len)`, which H
//!   maps. Check (g).
//! - `DONE`: G answers `BYE!`; both close.
//!
//! Channel 0x12, at the same time as channel 2: G→H [`C12_BYTES`] of `pattern(SEED_C12)`, H
//! echoes, G sends the echo back. Check (d): intact, and H saw both channels in the middle of
//! their first transfer at once.
//!
//! Then H hands G a connected socket, as a portal hands out a PipeWire remote (check (l); the
//! daemon passes it as identifier type 7, cross-domain-proxy bridges it through a context of its
//! own):
//! 1. H→G `SOCK` + one end of a host socket pair. G answers on the 0x12 connection `SOCK` (it
//!    got a socket) or `GERR` + why not; then, on the passed socket:
//! 2. G→H and H→G at the same time [`SOCK_BYTES`] of `pattern(SEED_SOCK_UP)` and
//!    `pattern(SEED_SOCK_DOWN)`; then G→H the [`SOCK_BYTES`] it received.
//! 3. G→H `SMEM` + a guest memfd holding `pattern(SEED_SOCK_MEMFD, len)`, which H maps.
//! 4. H→G `SPIP` + the write end of a host pipe: G writes `pattern(SEED_SOCK_PIPE, len)` into it
//!    and closes it; H reads to end of file.
//! 5. H→G `DONE`, G→H `BYE!`, both close the passed socket; then `DONE`/`BYE!` on 0x12.
//!
//! H judges every byte at its end.
//!
//! The programs use only the standard library (the few system calls it lacks are declared in
//! [`sys`]), so run.sh builds them with a plain `rustc` in seconds; as examples of the package
//! they are also built and linted by `cargo test`/`cargo clippy --all-targets`.

// Each program uses a different part of this file.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

pub const C2_BYTES: usize = 1 << 20;
pub const C12_BYTES: usize = 256 << 10;
/// Odd sizes on purpose: neither a page nor a ring multiple.
pub const PIPE_BYTES: usize = 200_000;
pub const MEMFD_BYTES: usize = 64 << 10;
pub const ODD_MEMFD_BYTES: usize = 70_000;
pub const GUEST_PIPE_BYTES: usize = 150_000;
pub const GUEST_MEMFD_BYTES: usize = 50_000;
pub const SOCK_BYTES: usize = 256 << 10;
pub const SOCK_MEMFD_BYTES: usize = 30_000;
pub const SOCK_PIPE_BYTES: usize = 100_000;

pub const SEED_C2: u64 = 2;
pub const SEED_C12: u64 = 0x12;
pub const SEED_PIPE: u64 = 0xb;
pub const SEED_MEMFD: u64 = 0xc;
pub const SEED_MEMFD_LIVE: u64 = 0x1c;
pub const SEED_ODD_MEMFD: u64 = 0x2c;
pub const SEED_GUEST_PIPE: u64 = 0xf;
pub const SEED_GUEST_MEMFD: u64 = 0x6;
pub const SEED_SOCK_UP: u64 = 0x51;
pub const SEED_SOCK_DOWN: u64 = 0x52;
pub const SEED_SOCK_MEMFD: u64 = 0x53;
pub const SEED_SOCK_PIPE: u64 = 0x54;

pub const PIPE: [u8; 4] = *b"PIPE";
pub const MEMF: [u8; 4] = *b"MEMF";
pub const MDAT: [u8; 4] = *b"MDAT";
pub const MCHG: [u8; 4] = *b"MCHG";
pub const GERR: [u8; 4] = *b"GERR";
pub const GPIP: [u8; 4] = *b"GPIP";
pub const GPDT: [u8; 4] = *b"GPDT";
pub const GMEM: [u8; 4] = *b"GMEM";
pub const SOCK: [u8; 4] = *b"SOCK";
pub const SMEM: [u8; 4] = *b"SMEM";
pub const SPIP: [u8; 4] = *b"SPIP";
pub const DONE: [u8; 4] = *b"DONE";
pub const BYE: [u8; 4] = *b"BYE!";

/// How long the guest waits for the end of file on its own pipe (the host waits longer).
pub const GUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `len` deterministic bytes (xorshift64*), different for every seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Where `got` first differs from `want`, as text for a verdict; `None` if they are equal.
pub fn first_difference(got: &[u8], want: &[u8]) -> Option<String> {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        return Some(format!(
            "byte {i} differs (got {:#04x}, want {:#04x})",
            got[i], want[i]
        ));
    }
    if got.len() != want.len() {
        return Some(format!("{} bytes instead of {}", got.len(), want.len()));
    }
    None
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub tag: [u8; 4],
    pub len: u32,
}

impl Header {
    pub const SIZE: usize = 8;

    pub fn new(tag: [u8; 4], len: usize) -> Header {
        Header {
            tag,
            len: u32::try_from(len).expect("message length fits in u32"),
        }
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        b[..4].copy_from_slice(&self.tag);
        b[4..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; Self::SIZE]) -> Header {
        Header {
            tag: [b[0], b[1], b[2], b[3]],
            len: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    pub fn tag_text(&self) -> String {
        String::from_utf8_lossy(&self.tag).into_owned()
    }
}

/// A Unix stream that keeps the descriptors arriving with the bytes it reads, in order, until
/// the caller takes them.
pub struct FdStream {
    pub sock: UnixStream,
    fds: VecDeque<OwnedFd>,
}

impl FdStream {
    pub fn new(sock: UnixStream) -> FdStream {
        FdStream {
            sock,
            fds: VecDeque::new(),
        }
    }

    /// Reads exactly `buf.len()` bytes (end of file first is `UnexpectedEof`).
    pub fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut off = 0;
        while off < buf.len() {
            match sys::recv_with_fds(self.sock.as_fd(), &mut buf[off..], &mut self.fds) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("end of stream after {off} of {} bytes", buf.len()),
                    ))
                }
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn read_vec(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0; len];
        self.read_exact(&mut v)?;
        Ok(v)
    }

    pub fn read_header(&mut self) -> io::Result<Header> {
        let mut b = [0; Header::SIZE];
        self.read_exact(&mut b)?;
        Ok(Header::decode(&b))
    }

    /// Reads a header and checks its tag.
    pub fn expect(&mut self, tag: [u8; 4]) -> io::Result<Header> {
        let h = self.read_header()?;
        if h.tag != tag {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "expected {}, got {} (length {})",
                    String::from_utf8_lossy(&tag),
                    h.tag_text(),
                    h.len
                ),
            ));
        }
        Ok(h)
    }

    /// The oldest descriptor received and not yet taken.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }

    /// Sends `data`, with `fd` attached to its first byte.
    pub fn send(&self, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let mut off = 0;
        if let Some(fd) = fd {
            loop {
                match sys::send_with_fd(self.sock.as_fd(), data, fd) {
                    Ok(n) => {
                        off = n;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        (&self.sock).write_all(&data[off..])
    }

    pub fn send_header(
        &self,
        tag: [u8; 4],
        len: usize,
        fd: Option<BorrowedFd<'_>>,
    ) -> io::Result<()> {
        self.send(&Header::new(tag, len).encode(), fd)
    }
}

/// The system calls the standard library does not offer, for 64-bit Linux with glibc (the
/// layouts below are glibc's), behind safe functions.
pub mod sys {
    use std::collections::VecDeque;
    use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

    #[repr(C)]
    struct IoVec {
        base: *mut c_void,
        len: usize,
    }

    /// `struct msghdr` of 64-bit Linux.
    #[repr(C)]
    struct MsgHdr {
        name: *mut c_void,
        namelen: u32,
        iov: *mut IoVec,
        iovlen: usize,
        control: *mut c_void,
        controllen: usize,
        flags: c_int,
    }

    /// `struct cmsghdr` of 64-bit Linux; the data follows at `CMSG_HDR` bytes.
    #[repr(C)]
    struct CmsgHdr {
        len: usize,
        level: c_int,
        kind: c_int,
    }
    const CMSG_HDR: usize = std::mem::size_of::<CmsgHdr>();
    const fn cmsg_align(n: usize) -> usize {
        (n + 7) & !7
    }

    const SOL_SOCKET: c_int = 1;
    const SCM_RIGHTS: c_int = 1;
    const MSG_CTRUNC: c_int = 0x8;
    const MSG_NOSIGNAL: c_int = 0x4000;
    const MSG_CMSG_CLOEXEC: c_int = 0x4000_0000;
    const O_CLOEXEC: c_int = 0o2_000_000;
    const MFD_CLOEXEC: c_uint = 1;
    const PROT_READ: c_int = 1;
    const MAP_SHARED: c_int = 1;

    extern "C" {
        fn recvmsg(fd: c_int, msg: *mut MsgHdr, flags: c_int) -> isize;
        fn sendmsg(fd: c_int, msg: *const MsgHdr, flags: c_int) -> isize;
        fn pipe2(fds: *mut c_int, flags: c_int) -> c_int;
        fn memfd_create(name: *const c_char, flags: c_uint) -> c_int;
        fn mmap(
            addr: *mut c_void,
            len: usize,
            prot: c_int,
            flags: c_int,
            fd: c_int,
            off: i64,
        ) -> *mut c_void;
        fn munmap(addr: *mut c_void, len: usize) -> c_int;
    }

    fn check(r: isize) -> io::Result<usize> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }

    /// One `recvmsg` into `buf`; descriptors that came with the bytes go to the back of `fds`.
    pub fn recv_with_fds(
        sock: BorrowedFd<'_>,
        buf: &mut [u8],
        fds: &mut VecDeque<OwnedFd>,
    ) -> io::Result<usize> {
        let mut control = [0u64; 32];
        let mut iov = IoVec {
            base: buf.as_mut_ptr().cast(),
            len: buf.len(),
        };
        let mut msg = MsgHdr {
            name: std::ptr::null_mut(),
            namelen: 0,
            iov: &mut iov,
            iovlen: 1,
            control: control.as_mut_ptr().cast(),
            controllen: std::mem::size_of_val(&control),
            flags: 0,
        };
        // SAFETY: `msg` points at one buffer of `iov.len` writable bytes and at `controllen`
        // writable control bytes, all alive for the call.
        let n = check(unsafe { recvmsg(sock.as_raw_fd(), &mut msg, MSG_CMSG_CLOEXEC) })?;
        let control_bytes = msg.controllen.min(std::mem::size_of_val(&control));
        let base = control.as_ptr().cast::<u8>();
        let mut off = 0;
        while off + CMSG_HDR <= control_bytes {
            // SAFETY: `off + CMSG_HDR <= control_bytes`, inside `control`, which is 8-aligned,
            // and `off` is a multiple of 8: a whole, aligned header the kernel wrote.
            let h = unsafe { &*base.add(off).cast::<CmsgHdr>() };
            if h.len < CMSG_HDR || off + h.len > control_bytes {
                break;
            }
            if h.level == SOL_SOCKET && h.kind == SCM_RIGHTS {
                let count = (h.len - CMSG_HDR) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    // SAFETY: inside this message's data, which the kernel filled with
                    // `count` descriptors; read unaligned in case of odd layouts.
                    let fd: RawFd = unsafe {
                        base.add(off + CMSG_HDR + i * std::mem::size_of::<RawFd>())
                            .cast::<RawFd>()
                            .read_unaligned()
                    };
                    // SAFETY: the kernel installed this descriptor in this process for this
                    // message; it is wrapped exactly once.
                    fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
            off += cmsg_align(h.len);
        }
        if msg.flags & MSG_CTRUNC != 0 {
            return Err(io::Error::other("descriptors lost: control data truncated"));
        }
        Ok(n)
    }

    /// One `sendmsg` of (a prefix of) `data` with `fd` attached.
    pub fn send_with_fd(
        sock: BorrowedFd<'_>,
        data: &[u8],
        fd: BorrowedFd<'_>,
    ) -> io::Result<usize> {
        let mut control = [0u64; 3]; // CMSG_SPACE(sizeof(int)) = 24
        let h = CmsgHdr {
            len: CMSG_HDR + std::mem::size_of::<RawFd>(),
            level: SOL_SOCKET,
            kind: SCM_RIGHTS,
        };
        // SAFETY: `control` is 24 bytes, 8-aligned: room for the header and one descriptor.
        unsafe {
            control.as_mut_ptr().cast::<CmsgHdr>().write(h);
            control
                .as_mut_ptr()
                .cast::<u8>()
                .add(CMSG_HDR)
                .cast::<RawFd>()
                .write_unaligned(fd.as_raw_fd());
        }
        let mut iov = IoVec {
            base: data.as_ptr() as *mut c_void,
            len: data.len(),
        };
        let msg = MsgHdr {
            name: std::ptr::null_mut(),
            namelen: 0,
            iov: &mut iov,
            iovlen: 1,
            control: control.as_mut_ptr().cast(),
            controllen: std::mem::size_of_val(&control),
            flags: 0,
        };
        // SAFETY: `msg` points at `data` (only read by sendmsg) and at the control bytes built
        // above, all alive for the call.
        check(unsafe { sendmsg(sock.as_raw_fd(), &msg, MSG_NOSIGNAL) })
    }

    /// A pipe, `(read end, write end)`, close-on-exec.
    pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [-1; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        check(unsafe { pipe2(fds.as_mut_ptr(), O_CLOEXEC) } as isize)?;
        // SAFETY: pipe2 succeeded: both are new descriptors owned by nobody else.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    }

    /// An empty memfd, close-on-exec.
    pub fn memfd(name: &CStr) -> io::Result<OwnedFd> {
        // SAFETY: `name` is a valid C string.
        let fd = check(unsafe { memfd_create(name.as_ptr(), MFD_CLOEXEC) } as isize)?;
        // SAFETY: a new descriptor owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    /// The first `len` bytes of `fd`, read through a shared read-only mapping (as a client of
    /// the memory would, and the only way into a dma-buf).
    pub fn read_mapped(fd: BorrowedFd<'_>, len: usize) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let map_len = len.next_multiple_of(4096);
        // SAFETY: a new mapping at an address the kernel chooses; nothing else is affected.
        let p = unsafe {
            mmap(
                std::ptr::null_mut(),
                map_len,
                PROT_READ,
                MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p as isize == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the mapping is readable for `map_len >= len` bytes; pages past the end of the
        // object would fault, so callers pass a `len` the object holds.
        let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }.to_vec();
        // SAFETY: unmaps exactly the mapping made above; `bytes` is a copy.
        unsafe { munmap(p, map_len) };
        Ok(bytes)
    }
}
