//! `--partial-pages MODE`: what the operator says about the VMM and the host kernel, and the
//! start-up step that turns it into the device's [`PartialPages`] setting.
//!
//! This module owns the one file access of the setting, opening `/dev/udmabuf`, which happens
//! at start-up, before the sandbox (the sandbox then allows exactly the udmabuf request on
//! that fd). It never opens anything later, and it logs which mode is in effect.

use log::info;

use super::{ConfigError, PARTIAL_PAGES_FLAG};
use crate::cross_domain::udmabuf::{UdmabufDevice, UDMABUF_PATH};
use crate::cross_domain::PartialPages;

/// `--partial-pages` as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PartialPagesMode {
    /// `refuse` (the default): [`PartialPages::Refuse`].
    #[default]
    Refuse,
    /// `map`: [`PartialPages::MapPastEnd`].
    Map,
    /// `udmabuf`: [`PartialPages::Udmabuf`]; `/dev/udmabuf` must open, or the configuration
    /// is rejected.
    Udmabuf,
    /// `auto`: [`PartialPages::Udmabuf`] when `/dev/udmabuf` opens, [`PartialPages::Refuse`]
    /// otherwise. Never `map`, which only the operator can know is safe.
    Auto,
}

impl PartialPagesMode {
    /// The mode as the flag spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Refuse => "refuse",
            Self::Map => "map",
            Self::Udmabuf => "udmabuf",
            Self::Auto => "auto",
        }
    }
}

/// Parses `--partial-pages MODE`: `refuse`, `map`, `udmabuf` or `auto`. Touches nothing.
pub fn parse_partial_pages(s: &str) -> Result<PartialPagesMode, ConfigError> {
    match s {
        "refuse" => Ok(PartialPagesMode::Refuse),
        "map" => Ok(PartialPagesMode::Map),
        "udmabuf" => Ok(PartialPagesMode::Udmabuf),
        "auto" => Ok(PartialPagesMode::Auto),
        _ => Err(ConfigError::InvalidPartialPages {
            flag: PARTIAL_PAGES_FLAG,
            value: s.to_owned(),
        }),
    }
}

/// The device setting for `mode`, opening `/dev/udmabuf` where the mode needs it (call once,
/// at start-up, before the sandbox), and the log line saying which mode is in effect.
pub fn resolve_partial_pages(mode: PartialPagesMode) -> Result<PartialPages, ConfigError> {
    resolve_with(mode, UdmabufDevice::open)
}

fn resolve_with(
    mode: PartialPagesMode,
    open: impl FnOnce() -> std::io::Result<UdmabufDevice>,
) -> Result<PartialPages, ConfigError> {
    let pages = match mode {
        PartialPagesMode::Refuse => PartialPages::Refuse,
        PartialPagesMode::Map => PartialPages::MapPastEnd,
        PartialPagesMode::Udmabuf => match open() {
            Ok(dev) => PartialPages::Udmabuf(dev.leak()),
            Err(e) => {
                return Err(ConfigError::UdmabufUnavailable {
                    flag: PARTIAL_PAGES_FLAG,
                    value: mode.name().to_owned(),
                    reason: format!("cannot open {UDMABUF_PATH}: {e}"),
                })
            }
        },
        PartialPagesMode::Auto => match open() {
            Ok(dev) => PartialPages::Udmabuf(dev.leak()),
            Err(e) => {
                info!("--partial-pages auto: cannot open {UDMABUF_PATH}: {e}; using 'refuse'");
                PartialPages::Refuse
            }
        },
    };
    info!("{}", describe(mode, pages));
    Ok(pages)
}

/// The start-up line naming the partial-page mode in effect.
fn describe(mode: PartialPagesMode, pages: PartialPages) -> String {
    let what = match pages {
        PartialPages::Refuse => "shared memory that is not whole pages and cannot grow is refused",
        PartialPages::MapPastEnd => {
            "memory that is not whole pages is mapped past its end (crosvm, libkrun only)"
        }
        PartialPages::Udmabuf(_) => {
            "shared memory that is not whole pages and cannot grow is mapped through a udmabuf \
             (/dev/udmabuf opened)"
        }
    };
    if mode == PartialPagesMode::Auto {
        format!("partial pages: {} (auto): {what}", pages.name())
    } else {
        format!("partial pages: {}: {what}", pages.name())
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn absent() -> io::Result<UdmabufDevice> {
        Err(io::Error::from_raw_os_error(libc::ENOENT))
    }

    #[test]
    fn every_mode_parses_and_nothing_else() {
        for (text, mode) in [
            ("refuse", PartialPagesMode::Refuse),
            ("map", PartialPagesMode::Map),
            ("udmabuf", PartialPagesMode::Udmabuf),
            ("auto", PartialPagesMode::Auto),
        ] {
            assert_eq!(parse_partial_pages(text).unwrap(), mode);
            assert_eq!(mode.name(), text);
        }
        for bad in ["", "Refuse", "yes", "udmabuf ", "map,udmabuf"] {
            let e = parse_partial_pages(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--partial-pages '{bad}'")), "{e}");
            assert!(e.contains("'udmabuf'") && e.contains("'auto'"), "{e}");
        }
    }

    #[test]
    fn a_missing_device_is_a_configuration_error_only_when_asked_for() {
        let e = resolve_with(PartialPagesMode::Udmabuf, absent)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--partial-pages 'udmabuf': cannot open /dev/udmabuf: "),
            "{e}"
        );
        assert!(e.contains("os error 2"), "names the errno: {e}");
        assert_eq!(
            resolve_with(PartialPagesMode::Auto, absent).unwrap(),
            PartialPages::Refuse
        );
        assert_eq!(
            resolve_with(PartialPagesMode::Refuse, || panic!("not opened")).unwrap(),
            PartialPages::Refuse
        );
        assert_eq!(
            resolve_with(PartialPagesMode::Map, || panic!("not opened")).unwrap(),
            PartialPages::MapPastEnd
        );
    }

    #[test]
    fn an_open_device_is_used_in_udmabuf_and_auto_modes() {
        for mode in [PartialPagesMode::Udmabuf, PartialPagesMode::Auto] {
            let dev = UdmabufDevice::for_tests();
            let fd = dev.raw_fd();
            let pages = resolve_with(mode, || {
                // A second handle on the same stand-in, as `open` would return.
                Ok(UdmabufDevice::from_fd(
                    std::fs::File::open("/dev/null")?.into(),
                ))
            })
            .unwrap();
            assert!(matches!(pages, PartialPages::Udmabuf(_)), "{pages:?}");
            assert_ne!(pages.udmabuf_fd(), Some(fd));
            assert!(describe(mode, pages).contains("udmabuf"));
        }
        assert!(describe(PartialPagesMode::Auto, PartialPages::Refuse)
            .starts_with("partial pages: refuse (auto)"));
    }
}
