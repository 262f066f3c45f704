//! Scanouts: which resource each one shows.
//!
//! The device has no display: it only keeps the scanout → resource assignments a guest makes,
//! so that the ids it uses are checked as a real device would check them. This module owns the
//! number of scanouts, the assignments and the rectangle check shared with 2D transfers. It
//! must never look resources up (the coordinator checks them first, so their errors come
//! first).

use super::error::GpuError;
use super::protocol::{Rect, MAX_SCANOUTS};

/// The scanouts and the resource each one shows (0: none).
pub(super) struct Scanouts {
    count: u32,
    shown: [u32; MAX_SCANOUTS],
}

impl Scanouts {
    /// `count` scanouts (at most the virtio specification's [`MAX_SCANOUTS`]), showing nothing.
    pub(super) fn new(count: u32) -> Self {
        Scanouts {
            count: count.min(MAX_SCANOUTS as u32),
            shown: [0; MAX_SCANOUTS],
        }
    }

    /// Number of scanouts.
    pub(super) fn count(&self) -> u32 {
        self.count
    }

    /// Fails with `InvalidScanout` unless `id` names a scanout.
    pub(super) fn check(&self, id: u32) -> Result<(), GpuError> {
        if id >= self.count {
            return Err(GpuError::InvalidScanout(id));
        }
        Ok(())
    }

    /// Scanout `id` (checked) shows resource `res_id` (0: none).
    pub(super) fn set(&mut self, id: u32, res_id: u32) -> Result<(), GpuError> {
        self.check(id)?;
        if let Some(s) = self.shown.get_mut(id as usize) {
            *s = res_id;
        }
        Ok(())
    }

    /// Resource `res_id` is gone: no scanout shows it any more.
    pub(super) fn forget_resource(&mut self, res_id: u32) {
        for s in self.shown.iter_mut() {
            if *s == res_id {
                *s = 0;
            }
        }
    }

    /// No scanout shows anything.
    pub(super) fn clear(&mut self) {
        self.shown = [0; MAX_SCANOUTS];
    }
}

/// Fails unless rectangle `r` lies inside a `w` x `h` resource.
pub(super) fn check_rect(r: &Rect, w: u32, h: u32) -> Result<(), GpuError> {
    let x_end = r.x.checked_add(r.width);
    let y_end = r.y.checked_add(r.height);
    match (x_end, y_end) {
        (Some(x), Some(y)) if x <= w && y <= h => Ok(()),
        _ => Err(GpuError::InvalidParameter("rectangle outside the resource")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanout_ids_are_checked() {
        let mut s = Scanouts::new(100);
        assert_eq!(s.count(), MAX_SCANOUTS as u32);
        let mut s1 = Scanouts::new(1);
        s1.set(0, 4).unwrap();
        assert!(matches!(s1.set(1, 4), Err(GpuError::InvalidScanout(1))));
        s.set(15, 4).unwrap();
        s.set(3, 5).unwrap();
        s.forget_resource(4);
        assert_eq!(s.shown[15], 0);
        assert_eq!(s.shown[3], 5);
        s.clear();
        assert_eq!(s.shown, [0; MAX_SCANOUTS]);
        assert!(matches!(
            Scanouts::new(0).check(0),
            Err(GpuError::InvalidScanout(0))
        ));
    }

    #[test]
    fn rectangles_must_fit_without_overflow() {
        let r = |x, y, width, height| Rect {
            x,
            y,
            width,
            height,
        };
        assert!(check_rect(&r(0, 0, 8, 8), 8, 8).is_ok());
        assert!(check_rect(&r(4, 4, 4, 4), 8, 8).is_ok());
        assert!(check_rect(&r(4, 0, 5, 1), 8, 8).is_err());
        assert!(check_rect(&r(0, 8, 1, 1), 8, 8).is_err());
        assert!(check_rect(&r(u32::MAX, 0, 2, 1), u32::MAX, 8).is_err());
    }
}
