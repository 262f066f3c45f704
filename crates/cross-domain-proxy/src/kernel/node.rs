//! Finding the virtio-gpu render node at start-up: the node named with `--device`, or else the
//! first `renderD*` node of the DRI directory whose driver is `virtio_gpu`.
//!
//! This module owns the start-up diagnosis "is this a guest with a virtio-gpu device?". Its
//! errors say what is missing, why each node it looked at does not do, and where the proxy must
//! run: the common mistake is starting it on the host, which has no virtio-gpu node (or only
//! other GPUs). It opens nothing but the nodes it is given or finds, and it never decides on
//! anything but the driver's name; whether the device can carry a channel is the session's probe.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::{KernelDevice, VIRTIO_GPU_DRIVER};
use crate::device::DeviceError;

/// Where DRM nodes live.
pub const DRI_DIR: &str = "/dev/dri";

/// What a user who sees "no virtio-gpu render node" most likely has to do.
pub const GUEST_HINT: &str = "run this inside the guest, with the virtio_gpu driver loaded";

/// What to do when a node could not even be asked for its driver.
const ACCESS_HINT: &str = "run this as a user that may open the node (root, or a member of its \
                           group), or name the virtio-gpu node with --device";

/// Why one node is not a usable virtio-gpu node.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("does not exist")]
    Missing,
    #[error("is not a DRM device ({0})")]
    NotDrm(DeviceError),
    #[error("is driven by {0:?}, not {VIRTIO_GPU_DRIVER}")]
    OtherDriver(String),
    #[error("cannot be opened ({0})")]
    Open(DeviceError),
}

/// No usable virtio-gpu render node.
#[derive(Debug)]
pub enum NodeError {
    /// No `renderD*` node in the directory is driven by virtio_gpu (`rejected` says why each
    /// one that is there does not do).
    NotFound {
        dir: PathBuf,
        rejected: Vec<(PathBuf, Rejection)>,
    },
    /// The node named with `--device` cannot be used.
    Unusable { path: PathBuf, why: Rejection },
}

impl std::error::Error for NodeError {}

/// The advice that fits these rejections: a node that could not be opened may still be the
/// virtio-gpu one, anything else means this is not a guest with virtio-gpu.
fn hint<'a>(mut rejections: impl Iterator<Item = &'a Rejection>) -> &'static str {
    if rejections.any(|r| matches!(r, Rejection::Open(_))) {
        ACCESS_HINT
    } else {
        GUEST_HINT
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::NotFound { dir, rejected } => {
                write!(f, "no virtio-gpu render node ({}/renderD*)", dir.display())?;
                for (i, (path, why)) in rejected.iter().enumerate() {
                    let sep = if i == 0 { ": " } else { "; " };
                    write!(f, "{sep}{} {why}", path.display())?;
                }
                write!(f, ": {}", hint(rejected.iter().map(|(_, why)| why)))
            }
            NodeError::Unusable { path, why } => write!(
                f,
                "no virtio-gpu render node: --device {} {why}: {}",
                path.display(),
                hint(std::iter::once(why))
            ),
        }
    }
}

/// Opens `path` if it is a virtio-gpu DRM node, or says why it is not.
pub fn try_open(path: &Path) -> Result<KernelDevice, Rejection> {
    let dev = KernelDevice::open_unchecked(path).map_err(|e| {
        if e.source.kind() == io::ErrorKind::NotFound {
            Rejection::Missing
        } else {
            Rejection::Open(e)
        }
    })?;
    let name = dev.driver_name().map_err(Rejection::NotDrm)?;
    if name != VIRTIO_GPU_DRIVER {
        return Err(Rejection::OtherDriver(name));
    }
    Ok(dev)
}

/// Opens the node the user named with `--device`.
pub fn open(path: &Path) -> Result<KernelDevice, NodeError> {
    try_open(path).map_err(|why| NodeError::Unusable {
        path: path.to_path_buf(),
        why,
    })
}

/// The `renderD*` nodes of `dir`, by number. A directory that cannot be read has none: no DRI
/// directory means no GPU at all.
fn render_nodes(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut nodes: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let minor = name.to_str()?.strip_prefix("renderD")?.parse().ok()?;
            Some((minor, e.path()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, path)| path).collect()
}

/// The first `renderD*` node of `dir` driven by virtio_gpu, opened.
pub fn find(dir: &Path) -> Result<(PathBuf, KernelDevice), NodeError> {
    let mut rejected = Vec::new();
    for path in render_nodes(dir) {
        match try_open(&path) {
            Ok(dev) => return Ok((path, dev)),
            Err(why) => rejected.push((path, why)),
        }
    }
    Err(NodeError::NotFound {
        dir: dir.to_path_buf(),
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty directory under the system's temporary directory.
    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cross-domain-proxy-node-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_empty_directory_has_no_node_and_says_where_to_run() {
        let dir = scratch_dir("empty");
        let e = find(&dir).expect_err("no node in an empty directory");
        assert_eq!(
            e.to_string(),
            format!(
                "no virtio-gpu render node ({}/renderD*): {GUEST_HINT}",
                dir.display()
            )
        );
        let missing = dir.join("missing");
        let e = find(&missing).expect_err("no node without a directory");
        assert!(e.to_string().ends_with(GUEST_HINT), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nodes_that_are_not_drm_devices_are_named() {
        let dir = scratch_dir("files");
        // Not render nodes by name: ignored.
        std::fs::write(dir.join("card0"), b"").unwrap();
        std::fs::write(dir.join("renderDx"), b"").unwrap();
        // Render nodes by name, but regular files: DRM_IOCTL_VERSION fails.
        std::fs::write(dir.join("renderD129"), b"").unwrap();
        std::fs::write(dir.join("renderD128"), b"").unwrap();
        assert_eq!(
            render_nodes(&dir),
            vec![dir.join("renderD128"), dir.join("renderD129")]
        );
        let e = find(&dir).expect_err("regular files are not DRM devices");
        let text = e.to_string();
        let n128 = text.find("renderD128 is not a DRM device").expect(&text);
        let n129 = text.find("renderD129 is not a DRM device").expect(&text);
        assert!(n128 < n129, "{text}");
        assert!(text.ends_with(GUEST_HINT), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_named_node_says_why_it_does_not_do() {
        let e = open(Path::new("/nonexistent-cross-domain-proxy/renderD128"))
            .expect_err("a missing node");
        assert_eq!(
            e.to_string(),
            format!(
                "no virtio-gpu render node: --device \
                 /nonexistent-cross-domain-proxy/renderD128 does not exist: {GUEST_HINT}"
            )
        );
        let e = open(Path::new("/dev/null")).expect_err("/dev/null");
        let text = e.to_string();
        assert!(
            text.starts_with("no virtio-gpu render node: --device /dev/null is not a DRM device"),
            "{text}"
        );
    }

    #[test]
    fn a_node_that_cannot_be_opened_gets_the_access_hint() {
        let rejected = [Rejection::Open(DeviceError::new(
            "open",
            io::Error::from_raw_os_error(libc::EACCES),
        ))];
        assert_eq!(hint(rejected.iter()), ACCESS_HINT);
        assert_eq!(hint([Rejection::Missing].iter()), GUEST_HINT);
    }
}
