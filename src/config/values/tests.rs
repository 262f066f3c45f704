//! Unit tests of the flag value parsers.

use super::*;
use crate::config::*;
#[test]
fn scanouts() {
    for n in 0..=MAX_SCANOUTS {
        assert_eq!(parse_scanouts(&n.to_string()).unwrap(), n);
    }
    assert_eq!(parse_scanouts("01").unwrap(), 1);
    for s in ["17", "-1", "+1", "", "one", "0x1", "4294967296", " 1"] {
        let e = parse_scanouts(s).unwrap_err();
        assert!(
            matches!(e, ConfigError::InvalidScanouts { .. }),
            "{s}: {e:?}"
        );
    }
    assert_eq!(
        parse_scanouts("17").unwrap_err().to_string(),
        "--scanouts '17': expected a number from 0 to 16"
    );
}

#[test]
fn shm_sizes() {
    let page = 4096;
    let ok = |s: &str| parse_shm_size_with_page(s, page).unwrap();
    assert_eq!(ok("8G"), 8 << 30);
    assert_eq!(ok("8g"), 8 << 30);
    assert_eq!(ok("512M"), 512 << 20);
    assert_eq!(ok("512m"), 512 << 20);
    assert_eq!(ok("4K"), 4096);
    assert_eq!(ok("64k"), 64 << 10);
    assert_eq!(ok("4096"), 4096);
    assert_eq!(ok("8589934592"), 8 << 30);
    assert_eq!(ok("016M"), 16 << 20);
    // The largest value allowed, and the binary unit spellings.
    assert_eq!(ok("1024G"), MAX_SHM_SIZE);
    assert_eq!(ok("8GiB"), 8 << 30);
    assert_eq!(ok("8gib"), 8 << 30);
    assert_eq!(ok("512MiB"), 512 << 20);
    assert_eq!(ok("64KiB"), 64 << 10);
    assert_eq!(ok("4kIB"), 4096);
    // Page size 16 KiB (some arm64 hosts).
    assert_eq!(parse_shm_size_with_page("16K", 16384).unwrap(), 16384);
    // The default is a valid value.
    assert_eq!(ok("8G"), DEFAULT_SHM_SIZE);
    // The real host page size divides the default.
    assert_eq!(parse_shm_size("8G").unwrap(), DEFAULT_SHM_SIZE);
}

#[test]
fn bad_shm_sizes() {
    let problem = |s: &str| match parse_shm_size_with_page(s, 4096).unwrap_err() {
        ConfigError::InvalidShmSize { reason, value, .. } => {
            assert_eq!(value, s);
            reason
        }
        e => panic!("{s}: {e:?}"),
    };
    for s in [
        "", "G", "x", "8T", "8GB", "8 G", " 8G", "-1", "+4096", "0x1000", "1.5G", "8Gg", "8iB",
        "GiB", "8 GiB", "8GiBB", "8TiB", "8Bi",
    ] {
        assert_eq!(problem(s), ShmSizeProblem::Syntax, "{s:?}");
    }
    for s in ["0", "0G", "000K"] {
        assert_eq!(problem(s), ShmSizeProblem::Zero, "{s:?}");
    }
    for s in [
        "17179869184G",
        "18446744073709551616",
        "99999999999999999999999M",
    ] {
        assert_eq!(problem(s), ShmSizeProblem::TooLarge, "{s:?}");
    }
    // Fits in 64 bits, but is more than any guest needs.
    for s in ["1025G", "17179869183G", "1048577M", "1099511631872"] {
        assert_eq!(problem(s), ShmSizeProblem::AboveMaximum, "{s:?}");
    }
    assert_eq!(
        parse_shm_size_with_page("2048GiB", 4096)
            .unwrap_err()
            .to_string(),
        "--shm-size '2048GiB': the size must be at most 1024G (1 TiB)"
    );
    for s in ["1", "4095", "1K", "6K", "4097"] {
        assert_eq!(
            problem(s),
            ShmSizeProblem::NotPageMultiple { page_size: 4096 },
            "{s:?}"
        );
    }
    assert!(parse_shm_size_with_page("8K", 16384).is_err());
    assert_eq!(
        parse_shm_size_with_page("5000", 4096)
            .unwrap_err()
            .to_string(),
        "--shm-size '5000': the size must be a multiple of the host page size (4096 bytes)"
    );
    assert_eq!(
        parse_shm_size_with_page("0", 4096).unwrap_err().to_string(),
        "--shm-size '0': the size must not be zero"
    );
    assert_eq!(
        parse_shm_size_with_page("8T", 4096)
            .unwrap_err()
            .to_string(),
        "--shm-size '8T': expected a byte count with an optional K, M or G suffix (binary \
         units), for example 8G"
    );
}

#[test]
fn fds() {
    assert_eq!(parse_fd("0").unwrap(), 0);
    assert_eq!(parse_fd("3").unwrap(), 3);
    assert_eq!(parse_fd("0042").unwrap(), 42);
    assert_eq!(parse_fd("2147483647").unwrap(), i32::MAX);
    for s in ["", "-1", "+3", " 3", "3 ", "x", "0x3", "2147483648", "3.0"] {
        let e = parse_fd(s).unwrap_err();
        assert!(matches!(e, ConfigError::InvalidFd { .. }), "{s}: {e:?}");
    }
    assert_eq!(
        parse_fd("x").unwrap_err().to_string(),
        "--fd 'x': expected a file descriptor number, for example 3"
    );
    assert_eq!(
        unusable_fd(9, FdError::NotOpen).to_string(),
        "--fd '9': not an open file descriptor"
    );
}

#[test]
fn sandbox_modes() {
    assert_eq!(parse_sandbox("on").unwrap(), SandboxMode::On);
    assert_eq!(parse_sandbox("none").unwrap(), SandboxMode::None);
    assert_eq!(SandboxMode::default(), SandboxMode::On);
    for bad in ["", "off", "None", "ON", "no", " none"] {
        let e = parse_sandbox(bad).unwrap_err();
        assert!(
            matches!(e, ConfigError::InvalidSandbox { .. }),
            "{bad}: {e:?}"
        );
        let text = e.to_string();
        assert!(text.starts_with(&format!("--sandbox '{bad}': ")), "{text}");
    }
}

#[test]
fn seccomp_modes() {
    assert_eq!(parse_seccomp("kill").unwrap(), SeccompMode::Kill);
    assert_eq!(parse_seccomp("log").unwrap(), SeccompMode::Log);
    assert_eq!(SeccompMode::default(), SeccompMode::Kill);
    for bad in ["", "trap", "allow", "Kill", "errno"] {
        let e = parse_seccomp(bad).unwrap_err();
        assert!(
            matches!(e, ConfigError::InvalidSeccomp { .. }),
            "{bad}: {e:?}"
        );
        let text = e.to_string();
        assert!(text.starts_with(&format!("--seccomp '{bad}': ")), "{text}");
    }
}
