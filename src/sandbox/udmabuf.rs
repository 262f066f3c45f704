//! The sandbox's allowance for `/dev/udmabuf` (`--partial-pages udmabuf` or `auto` with the
//! device present; docs/pipewire.md): the daemon's `ioctl` rule gains exactly one more case,
//! `UDMABUF_CREATE` on the one fd opened at start-up. Nothing else of the device is reachable:
//! no other request (not `UDMABUF_CREATE_LIST`), no other fd, and no `open` after start-up.
//!
//! This module only widens the rule; it never opens the device
//! ([`crate::config::resolve_partial_pages`] does, before the sandbox).

use std::os::fd::RawFd;

use super::seccomp::{Arg, Syscall, When};
use crate::cross_domain::udmabuf::UDMABUF_CREATE;

/// What the widened rule says about itself in the allow-list.
const WHO: &str = "FIONBIO on any fd: non-blocking mode of sockets (std) and pipes; \
                   UDMABUF_CREATE on the /dev/udmabuf fd opened at start-up only: a dma-buf of \
                   received memory that is not whole pages";

/// Widens the `ioctl` entry of the daemon's allow-list `list` so that `UDMABUF_CREATE` on
/// `fd` is allowed besides what the entry already allows. The conditions are built once at
/// start-up and live for the process (the filter's rules are `'static` data).
pub fn allow_udmabuf(list: &mut [Syscall], fd: RawFd) {
    let Ok(fd) = u64::try_from(fd) else {
        return;
    };
    for s in list.iter_mut().filter(|s| s.nr == libc::SYS_ioctl) {
        let mut cases: Vec<&'static [Arg]> = match s.when {
            When::OneOf(index, values) => values
                .iter()
                .map(|&v| &*Box::leak(Box::new([Arg::Eq(index, v)])) as &'static [Arg])
                .collect(),
            When::AnyOf(lists) => lists.to_vec(),
            When::All(args) => vec![args],
            // Already any request on any fd.
            When::Always => return,
        };
        cases.push(Box::leak(Box::new([
            Arg::Eq(0, fd),
            Arg::Eq(1, u64::from(UDMABUF_CREATE)),
        ])));
        s.when = When::AnyOf(Box::leak(cases.into_boxed_slice()));
        s.who = WHO;
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, OwnedFd};

    use seccompiler::SeccompAction;

    use super::super::seccomp::{self, daemon_syscalls, DAEMON_REFUSED};
    use super::*;
    use crate::config::SeccompMode;

    fn widened(fd: RawFd) -> Vec<Syscall> {
        let mut list = daemon_syscalls();
        allow_udmabuf(&mut list, fd);
        list
    }

    /// The listing: the same calls (ioctl was already one of them), the ioctl entry now names
    /// the device fd and the request number, and the filter builds.
    #[test]
    // The request type is `c_ulong` with glibc but `c_int` with musl; the cast serves both.
    #[allow(clippy::unnecessary_cast)]
    fn the_listing_gains_one_case_of_ioctl_and_no_call() {
        let list = widened(7);
        assert_eq!(
            seccomp::allowed_count(&list),
            seccomp::allowed_count(&daemon_syscalls())
        );
        let ioctl = list.iter().find(|s| s.name == "ioctl").unwrap();
        let When::AnyOf(cases) = ioctl.when else {
            panic!("{:?}", ioctl.when);
        };
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[0], [Arg::Eq(1, libc::FIONBIO as u64)]);
        assert_eq!(cases[1], [Arg::Eq(0, 7), Arg::Eq(1, 0x4018_7542)]);
        assert!(ioctl.who.contains("UDMABUF_CREATE"));
        assert!(seccomp::build(&list, DAEMON_REFUSED, SeccompMode::Kill, 1).is_ok());
        // A negative fd (never opened) widens nothing.
        let mut list = daemon_syscalls();
        allow_udmabuf(&mut list, -1);
        let ioctl = list.iter().find(|s| s.name == "ioctl").unwrap();
        assert!(matches!(ioctl.when, When::OneOf(..)));
    }

    /// On one thread, with violations failing with EPERM: UDMABUF_CREATE passes the filter on
    /// the device fd only (the stand-in, /dev/null, then answers ENOTTY), not on another fd,
    /// and no other request passes on the device fd; FIONBIO still works.
    #[test]
    fn only_udmabuf_create_on_the_device_fd_passes() {
        let dev: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let other: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let (dev_fd, other_fd) = (dev.as_raw_fd(), other.as_raw_fd());
        let programs = seccomp::build_with(
            &widened(dev_fd),
            DAEMON_REFUSED,
            SeccompAction::Errno(libc::EPERM as u32),
            std::process::id(),
        )
        .unwrap();
        let outcome = std::thread::spawn(move || {
            for p in &programs {
                seccompiler::apply_filter(p).unwrap();
            }
            let arg = [0u8; 24];
            let mut seen = Vec::new();
            for (fd, request) in [
                (dev_fd, UDMABUF_CREATE),
                (other_fd, UDMABUF_CREATE),
                // UDMABUF_CREATE_LIST: _IOW('u', 0x43, 8 bytes).
                (dev_fd, 0x4008_7543),
                (dev_fd, libc::FIONBIO as u32),
            ] {
                // SAFETY: ioctls on /dev/null with a 24-byte buffer that outlives the call;
                // /dev/null reads and writes nothing through it.
                let r = unsafe { libc::ioctl(fd, request as _, arg.as_ptr()) };
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                seen.push((r, if r < 0 { errno } else { 0 }));
            }
            seen
        })
        .join()
        .unwrap();
        assert_eq!(
            outcome,
            [
                (-1, libc::ENOTTY),
                (-1, libc::EPERM),
                (-1, libc::EPERM),
                (0, 0)
            ]
        );
    }
}
