//! What a guest may ask for that this daemon cannot serve (docs/protocol.md §3.8, §3.10, §5.4):
//! the libkrun and magma extensions that need the VMM's virtio-fs export table (futexes,
//! virtio-fs files), which a standalone vhost-user GPU device cannot reach, and the ones no
//! host implements (sync objects).
//!
//! Each request for one fails as a whole with an error response ([`CtxError::Unserved`]), as
//! before any of them was known. [`Told`] logs the first refusal of each kind in a context
//! with what is missing, so that the operator learns why a guest feature fails without a line
//! per request (the device still logs each refused request through its rate limiter). This
//! module owns those explanations; it never decides what is served.

use std::fmt;

use super::error::CtxError;
use super::protocol::{ID_TYPE_SHM_LIBKRUN, ID_TYPE_VIRTGPU_SYNC, ID_TYPE_VIRTIO_FS_BLOB};
use crate::guest_warn;
use crate::ratelimit::GuestLog;

/// A feature the guest asked for that the daemon cannot serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unserved {
    /// SEND identifier type 2 (VIRTGPU_SYNC).
    SyncObject,
    /// SEND identifier type 5 (libkrun's SHM: a futex's backing file).
    FutexFile,
    /// SEND identifier type 6 (magma's VIRTIO_FS_BLOB: an imported virtio-fs file).
    VirtioFsFile,
    /// Commands 8–10 (libkrun's futexes, magma's atomic memory sentinels).
    Futex,
    /// Command 12 of 32 bytes (magma's IMPORT_VIRTIOFS_HANDLE).
    VirtioFsImport,
}

impl Unserved {
    /// The unserved feature a SEND identifier of type `ty` asks for, if it is one.
    pub fn in_send(ty: u32) -> Option<Unserved> {
        match ty {
            ID_TYPE_VIRTGPU_SYNC => Some(Unserved::SyncObject),
            ID_TYPE_SHM_LIBKRUN => Some(Unserved::FutexFile),
            ID_TYPE_VIRTIO_FS_BLOB => Some(Unserved::VirtioFsFile),
            _ => None,
        }
    }

    /// What was asked for, as the error names it.
    fn name(self) -> &'static str {
        match self {
            Unserved::SyncObject => "SEND identifier type 2 (VIRTGPU_SYNC)",
            Unserved::FutexFile => "SEND identifier type 5 (libkrun SHM, a futex file)",
            Unserved::VirtioFsFile => "SEND identifier type 6 (magma VIRTIO_FS_BLOB)",
            Unserved::Futex => "futex commands 8-10",
            Unserved::VirtioFsImport => "command 12 of 32 bytes (magma IMPORT_VIRTIOFS_HANDLE)",
        }
    }

    /// What is missing for it, and what it breaks in the guest.
    fn missing(self) -> &'static str {
        macro_rules! virtio_fs {
            ($what:literal) => {
                concat!(
                    $what,
                    "it needs the virtio-fs export table of the VMM's own virtio-fs server \
                     (libkrun), which a standalone vhost-user GPU device cannot reach"
                )
            };
        }
        match self {
            Unserved::SyncObject => "no host implements sync objects",
            Unserved::FutexFile | Unserved::Futex => {
                virtio_fs!("X11 DRI3 fences through muvm fail (the client is closed); ")
            }
            Unserved::VirtioFsFile | Unserved::VirtioFsImport => virtio_fs!(""),
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Unserved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kinds of [`Unserved`] already logged for one context.
#[derive(Debug, Default)]
pub(super) struct Told(u8);

impl Told {
    /// The error refusing `what` in context `ctx_id` (named `name` by the guest), logged with
    /// what is missing the first time this context asks for it (through the guest log's rate
    /// limiter: a guest that makes context after context still cannot flood the log).
    pub fn refuse(
        &mut self,
        what: Unserved,
        ctx_id: u32,
        name: &str,
        log: &mut GuestLog,
    ) -> CtxError {
        if self.0 & what.bit() == 0 {
            self.0 |= what.bit();
            guest_warn!(
                log,
                "ctx {ctx_id} ({name}): the guest uses {what}, which this daemon cannot serve: \
                 {}; refused (logged once per context)",
                what.missing()
            );
        }
        CtxError::Unserved(what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_bit() {
        let all = [
            Unserved::SyncObject,
            Unserved::FutexFile,
            Unserved::VirtioFsFile,
            Unserved::Futex,
            Unserved::VirtioFsImport,
        ];
        let mut seen = 0u8;
        for u in all {
            assert_eq!(seen & u.bit(), 0, "{u} shares a bit");
            seen |= u.bit();
        }
        let (mut told, mut log) = (Told::default(), GuestLog::new(1));
        for u in all {
            let e = told.refuse(u, 1, "t", &mut log);
            assert!(matches!(e, CtxError::Unserved(x) if x == u));
        }
        assert_eq!(told.0, seen);
        assert_eq!(Unserved::in_send(2), Some(Unserved::SyncObject));
        assert_eq!(Unserved::in_send(5), Some(Unserved::FutexFile));
        assert_eq!(Unserved::in_send(6), Some(Unserved::VirtioFsFile));
        assert_eq!(Unserved::in_send(7), None);
    }
}
