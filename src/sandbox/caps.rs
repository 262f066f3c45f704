//! No new privileges, and no capabilities.
//!
//! [`no_new_privs`] sets `PR_SET_NO_NEW_PRIVS`: from then on no `execve` can grant privileges
//! (set-user-ID bits, file capabilities), and unprivileged processes may install seccomp
//! filters and Landlock rulesets. [`drop_all`] empties every capability set of the process:
//! bounding (when it may, that is with `CAP_SETPCAP`), ambient, inheritable, permitted and
//! effective. A daemon started as root keeps uid 0 but loses what makes root powerful; in
//! particular without `CAP_DAC_OVERRIDE` it can no longer connect to sockets of other users
//! that their permissions do not open to it (run it as the socket's owner instead).
//!
//! Plain `prctl(2)` and `capget(2)`/`capset(2)` calls: small enough not to need a crate.

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets as two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// `CAP_SETPCAP`, needed to drop from the bounding set.
const CAP_SETPCAP: u32 = 8;
/// Higher than any capability number Linux will define (63 fits the 64-bit sets).
const MAX_CAP: u32 = 63;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets `PR_SET_NO_NEW_PRIVS` for the calling thread (and the threads it starts).
pub fn no_new_privs() -> io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn capget() -> io::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and `data` are valid for the kernel to read and write; version 3 takes
    // an array of two `CapData`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

fn capset(data: &[CapData; 2]) -> io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: as in `capget`; the kernel only reads `data`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn in_bounding_set(cap: u32) -> Option<bool> {
    // SAFETY: PR_CAPBSET_READ takes integer arguments only; it fails with EINVAL past the last
    // capability the kernel knows.
    match unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } {
        r if r < 0 => None,
        r => Some(r == 1),
    }
}

/// What [`drop_all`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// The process had a capability in its effective, permitted or inheritable set.
    pub had_any: bool,
    /// The bounding set was emptied (possible only with `CAP_SETPCAP`; without it, no new
    /// privileges keeps `execve` from using the bounding set anyway).
    pub bounding_cleared: bool,
}

/// Empties every capability set of the calling thread (and the threads it starts), and
/// checks that the effective, permitted and inheritable sets are empty afterwards.
pub fn drop_all() -> io::Result<Dropped> {
    let before = capget()?;
    let had_any = before.iter().any(|d| *d != CapData::default());
    let has_setpcap = before[0].effective & (1 << CAP_SETPCAP) != 0;
    let mut bounding_cleared = false;
    if has_setpcap {
        for cap in 0..=MAX_CAP {
            match in_bounding_set(cap) {
                None => break,
                Some(false) => {}
                Some(true) => {
                    // SAFETY: PR_CAPBSET_DROP takes integer arguments only.
                    let r = unsafe {
                        libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0)
                    };
                    if r != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
        }
        bounding_cleared = true;
    }
    // SAFETY: PR_CAP_AMBIENT takes integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // EINVAL: a kernel without ambient capabilities (before 4.3), so nothing to clear.
    if r != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::last_os_error());
    }
    // Skipped when there is nothing to drop: a service manager may forbid capset (systemd's
    // `SystemCallFilter=~@privileged`) to a process that has no capabilities anyway.
    if had_any {
        capset(&[CapData::default(); 2])?;
    }
    if capget()?.iter().any(|d| *d != CapData::default()) {
        return Err(io::Error::other("capabilities remain after dropping them"));
    }
    Ok(Dropped {
        had_any,
        bounding_cleared,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a thread of its own (capabilities are per thread): afterwards nothing is left, and
    /// a second drop finds nothing.
    #[test]
    fn drop_all_empties_the_sets() {
        let (first, second, after) = std::thread::spawn(|| {
            let first = drop_all().unwrap();
            let second = drop_all().unwrap();
            (first, second, capget().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(after, [CapData::default(); 2]);
        assert!(!second.had_any);
        // As root the first call found and cleared capabilities, bounding set included.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 && first.had_any {
            assert!(first.bounding_cleared);
        }
    }
}
