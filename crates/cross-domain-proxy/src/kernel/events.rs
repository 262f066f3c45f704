//! The DRM file's event queue: splitting what `read(2)` returns into `drm_event`s.
//!
//! This module owns the parsing only (no system calls, no unsafe code): the bytes come from
//! [`super::KernelDevice`]'s non-blocking reads. The kernel writes whole events, but the parser
//! still never trusts a length: a malformed tail is dropped, never read past.
#![forbid(unsafe_code)]

/// `struct drm_event`, the header of every event read from a DRM file.
pub const DRM_EVENT_HEADER: usize = 8;

/// Appends the types of the `drm_event`s in `buf` (each `{u32 type; u32 length}` plus
/// payload, `length` covering both) to `out`. A malformed tail is ignored.
pub fn parse_events(buf: &[u8], out: &mut Vec<u32>) {
    let mut off = 0;
    while buf.len() - off >= DRM_EVENT_HEADER {
        let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let ty = word(off);
        let len = word(off + 4) as usize;
        if len < DRM_EVENT_HEADER || len > buf.len() - off {
            return;
        }
        out.push(ty);
        off += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_by_length() {
        let mut buf = Vec::new();
        for (ty, len) in [(0x9000_0000u32, 8u32), (0x01, 32), (0x9000_0000, 8)] {
            buf.extend_from_slice(&ty.to_ne_bytes());
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.resize(buf.len() + len as usize - 8, 0);
        }
        // A truncated trailing header is ignored, as is a bogus length.
        buf.extend_from_slice(&[1, 2, 3]);
        let mut out = Vec::new();
        parse_events(&buf, &mut out);
        assert_eq!(out, vec![0x9000_0000, 0x01, 0x9000_0000]);
        let mut bad = Vec::new();
        bad.extend_from_slice(&7u32.to_ne_bytes());
        bad.extend_from_slice(&4u32.to_ne_bytes());
        out.clear();
        parse_events(&bad, &mut out);
        assert!(out.is_empty());
    }
}
