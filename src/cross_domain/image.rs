//! Image requirements for GET_IMAGE_REQUIREMENTS on a host without a GPU: the linear layouts of
//! the system allocator (docs/protocol.md §7.2). Pure arithmetic, no I/O; every overflow is
//! an error.

use super::protocol::ImageRequirements;

/// `map_info` cache type of system-allocator memory (`VIRTIO_GPU_MAP_CACHE_CACHED`).
pub const MAP_CACHE_CACHED: u32 = 1;

/// A supported DRM fourcc and its planes: bytes per pixel and (horizontal, vertical)
/// subsampling per plane.
struct Format {
    fourcc: u32,
    planes: &'static [(u32, u32, u32)],
}

const fn fourcc(s: &[u8; 4]) -> u32 {
    (s[0] as u32) | ((s[1] as u32) << 8) | ((s[2] as u32) << 16) | ((s[3] as u32) << 24)
}

const FORMATS: &[Format] = &[
    Format {
        fourcc: fourcc(b"R8  "),
        planes: &[(1, 1, 1)],
    },
    Format {
        fourcc: fourcc(b"RG16"),
        planes: &[(2, 1, 1)],
    },
    Format {
        fourcc: fourcc(b"BG24"),
        planes: &[(3, 1, 1)],
    },
    Format {
        fourcc: fourcc(b"XR24"),
        planes: &[(4, 1, 1)],
    },
    Format {
        fourcc: fourcc(b"XB24"),
        planes: &[(4, 1, 1)],
    },
    Format {
        fourcc: fourcc(b"AR24"),
        planes: &[(4, 1, 1)],
    },
    Format {
        fourcc: fourcc(b"AB24"),
        planes: &[(4, 1, 1)],
    },
    Format {
        fourcc: fourcc(b"XR30"),
        planes: &[(4, 1, 1)],
    },
    Format {
        fourcc: fourcc(b"XB30"),
        planes: &[(4, 1, 1)],
    },
    Format {
        fourcc: fourcc(b"AR30"),
        planes: &[(4, 1, 1)],
    },
    Format {
        fourcc: fourcc(b"AB30"),
        planes: &[(4, 1, 1)],
    },
    Format {
        fourcc: fourcc(b"AB4H"),
        planes: &[(8, 1, 1)],
    },
    Format {
        fourcc: fourcc(b"NV12"),
        planes: &[(1, 1, 1), (2, 2, 2)],
    },
    Format {
        fourcc: fourcc(b"YV12"),
        planes: &[(1, 1, 1), (1, 2, 2), (1, 2, 2)],
    },
];

/// Every supported fourcc, in table order.
pub fn supported_formats() -> impl Iterator<Item = u32> {
    FORMATS.iter().map(|f| f.fourcc)
}

/// Why requirements cannot be computed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("unsupported DRM format {0:#010x}")]
    UnsupportedFormat(u32),
    #[error("{width}x{height} is an empty image")]
    Empty { width: u32, height: u32 },
    #[error("{width}x{height} overflows a 32-bit size")]
    Overflow { width: u32, height: u32 },
}

/// The layout of a `width` x `height` image of `drm_format`, with `size` rounded up to
/// `page_size`. `blob_id` is left 0 for the caller to fill in.
pub fn requirements(
    width: u32,
    height: u32,
    drm_format: u32,
    page_size: u64,
) -> Result<ImageRequirements, ImageError> {
    let fmt = FORMATS
        .iter()
        .find(|f| f.fourcc == drm_format)
        .ok_or(ImageError::UnsupportedFormat(drm_format))?;
    if width == 0 || height == 0 {
        return Err(ImageError::Empty { width, height });
    }
    let overflow = ImageError::Overflow { width, height };
    let mut reqs = ImageRequirements {
        map_info: MAP_CACHE_CACHED,
        memory_idx: -1,
        physical_device_idx: -1,
        ..Default::default()
    };
    let mut offset = 0u32;
    for (p, &(bpp, hsub, vsub)) in fmt.planes.iter().enumerate() {
        let stride = bpp
            .checked_mul(width / hsub)
            .ok_or_else(|| overflow.clone())?;
        let plane = (height / vsub)
            .checked_mul(stride)
            .ok_or_else(|| overflow.clone())?;
        reqs.strides[p] = stride;
        reqs.offsets[p] = offset;
        offset = offset.checked_add(plane).ok_or_else(|| overflow.clone())?;
    }
    let size = u64::from(offset);
    reqs.size = size.div_ceil(page_size) * page_size;
    Ok(reqs)
}

/// The host's page size.
pub use cross_domain_protocol::page_size as host_page_size;

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &[u8; 4]) -> u32 {
        fourcc(s)
    }

    #[test]
    fn fourcc_values_match_the_table() {
        assert_eq!(f(b"R8  "), 0x2020_3852);
        assert_eq!(f(b"RG16"), 0x3631_4752);
        assert_eq!(f(b"BG24"), 0x3432_4742);
        assert_eq!(f(b"XR24"), 0x3432_5258);
        assert_eq!(f(b"AB4H"), 0x4834_4241);
        assert_eq!(f(b"NV12"), 0x3231_564e);
        assert_eq!(f(b"YV12"), 0x3231_5659);
        assert_eq!(supported_formats().count(), 14);
    }

    // Worked examples of docs/protocol.md §7.2 (before page rounding; with 4 KiB pages all
    // are 4096).
    #[test]
    fn worked_examples() {
        let r = requirements(10, 10, f(b"R8  "), 4096).unwrap();
        assert_eq!((r.strides[0], r.size), (10, 4096));
        let r = requirements(10, 10, f(b"XR24"), 4096).unwrap();
        assert_eq!(r.strides[0], 40);
        let r = requirements(10, 10, f(b"NV12"), 4096).unwrap();
        assert_eq!(r.strides, [10, 10, 0, 0]);
        assert_eq!(r.offsets, [0, 100, 0, 0]);
        let r = requirements(10, 10, f(b"YV12"), 4096).unwrap();
        assert_eq!(r.strides, [10, 5, 5, 0]);
        assert_eq!(r.offsets, [0, 100, 125, 0]);
        assert_eq!(r.size, 4096);
        let r = requirements(1920, 1080, f(b"XR24"), 4096).unwrap();
        assert_eq!((r.strides[0], r.size), (7680, 8_294_400));
        assert_eq!(
            (r.map_info, r.memory_idx, r.physical_device_idx),
            (1, -1, -1)
        );
        assert_eq!(r.modifier, 0);
    }

    #[test]
    fn rounding_and_errors() {
        // Odd sizes: integer division of subsampled planes, no stride alignment.
        let r = requirements(17, 9, f(b"NV12"), 4096).unwrap();
        assert_eq!(r.strides, [17, 16, 0, 0]);
        assert_eq!(r.offsets, [0, 153, 0, 0]);
        let r = requirements(1, 1, f(b"AB4H"), 16384).unwrap();
        assert_eq!(r.size, 16384);
        assert_eq!(
            requirements(1, 1, 0x3031_3050, 4096).unwrap_err(),
            ImageError::UnsupportedFormat(0x3031_3050)
        );
        assert!(matches!(
            requirements(u32::MAX, 2, f(b"XR24"), 4096),
            Err(ImageError::Overflow { .. })
        ));
        assert!(matches!(
            requirements(0, 5, f(b"XR24"), 4096),
            Err(ImageError::Empty { .. })
        ));
        assert!(matches!(
            requirements(65536, 65536, f(b"XR24"), 4096),
            Err(ImageError::Overflow { .. })
        ));
    }
}
