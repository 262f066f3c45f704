//! The table of live contexts and what each has attached.
//!
//! Owns the contexts by id (each a cross-domain context and the set of resources attached to
//! it), the checks on creating one (id, capset, debug name, the per-VM limit) and on attaching
//! resources (the per-context limit). It must never check that a resource exists (the
//! coordinator asks `resources.rs` first, so that error comes first), tear a context down, or
//! complete its fences: removing one hands it back to the coordinator, which does both.

use log::debug;

use super::error::GpuError;
use super::protocol::*;
use super::Limits;
use crate::cross_domain::Context;
use crate::idmap::{IdMap, IdSet};
use crate::limitlog::LimitKind;

/// A live context.
pub(super) struct Ctx {
    pub cd: Context,
    /// Resources attached to it: the only ones its command stream may name.
    pub attached: IdSet<u32>,
}

/// The live contexts by id.
pub(super) struct Contexts {
    contexts: IdMap<u32, Ctx>,
    limits: Limits,
}

impl Contexts {
    pub(super) fn new(limits: Limits) -> Self {
        Contexts {
            contexts: IdMap::default(),
            limits,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.contexts.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }

    pub(super) fn contains(&self, ctx_id: u32) -> bool {
        self.contexts.contains_key(&ctx_id)
    }

    /// The ids of all live contexts.
    pub(super) fn ids(&self) -> Vec<u32> {
        self.contexts.keys().copied().collect()
    }

    /// Context `ctx_id`, if it is live.
    pub(super) fn get_mut(&mut self, ctx_id: u32) -> Option<&mut Ctx> {
        self.contexts.get_mut(&ctx_id)
    }

    /// Context `ctx_id`, or `InvalidContext`.
    pub(super) fn live(&mut self, ctx_id: u32) -> Result<&mut Ctx, GpuError> {
        self.contexts
            .get_mut(&ctx_id)
            .ok_or(GpuError::InvalidContext(ctx_id))
    }

    /// Take context `ctx_id` out of the table (for the caller to tear down).
    pub(super) fn remove(&mut self, ctx_id: u32) -> Option<Ctx> {
        self.contexts.remove(&ctx_id)
    }

    /// CTX_CREATE.
    pub(super) fn create(&mut self, ctx_id: u32, b: &CtxCreate) -> Result<(), GpuError> {
        if ctx_id == 0 {
            return Err(GpuError::InvalidContext(0));
        }
        if self.contexts.contains_key(&ctx_id) {
            return Err(GpuError::ContextExists(ctx_id));
        }
        let capset = b.context_init & CONTEXT_INIT_CAPSET_ID_MASK;
        if capset != 0 && capset != CAPSET_CROSS_DOMAIN {
            return Err(GpuError::InvalidParameter(
                "only the cross-domain capset (5) is supported",
            ));
        }
        if b.nlen as usize > b.debug_name.len() {
            return Err(GpuError::InvalidParameter(
                "debug name longer than 64 bytes",
            ));
        }
        if self.contexts.len() >= self.limits.max_contexts {
            return Err(GpuError::Limit(
                LimitKind::ContextsPerVm,
                self.limits.max_contexts,
            ));
        }
        let name = String::from_utf8_lossy(&b.debug_name[..b.nlen as usize]).into_owned();
        debug!("ctx {ctx_id}: created ({name})");
        self.contexts.insert(
            ctx_id,
            Ctx {
                cd: Context::new(ctx_id, name),
                attached: IdSet::default(),
            },
        );
        Ok(())
    }

    /// CTX_ATTACH_RESOURCE of the (existing) resource `res_id`.
    pub(super) fn attach(&mut self, ctx_id: u32, res_id: u32) -> Result<(), GpuError> {
        let max = self.limits.max_attached_per_context;
        let ctx = self.live(ctx_id)?;
        if ctx.attached.len() >= max && !ctx.attached.contains(&res_id) {
            return Err(GpuError::Limit(LimitKind::AttachedPerContext, max));
        }
        ctx.attached.insert(res_id);
        Ok(())
    }

    /// CTX_DETACH_RESOURCE.
    pub(super) fn detach(&mut self, ctx_id: u32, res_id: u32) -> Result<(), GpuError> {
        let ctx = self.live(ctx_id)?;
        if !ctx.attached.remove(&res_id) {
            return Err(GpuError::InvalidResource(res_id));
        }
        Ok(())
    }

    /// Resource `res_id` is gone: detach it everywhere.
    pub(super) fn forget_resource(&mut self, res_id: u32) {
        for ctx in self.contexts.values_mut() {
            ctx.attached.remove(&res_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(c: &mut Contexts, id: u32, context_init: u32, nlen: u32) -> Result<(), GpuError> {
        let b = CtxCreate {
            nlen,
            context_init,
            ..Default::default()
        };
        c.create(id, &b)
    }

    #[test]
    fn creation_checks_id_capset_name_and_limit() {
        let limits = Limits {
            max_contexts: 2,
            ..Limits::default()
        };
        let mut c = Contexts::new(limits);
        assert!(matches!(
            create(&mut c, 0, 0, 0),
            Err(GpuError::InvalidContext(0))
        ));
        assert!(matches!(
            create(&mut c, 1, 4, 0),
            Err(GpuError::InvalidParameter(_))
        ));
        assert!(matches!(
            create(&mut c, 1, 0, 65),
            Err(GpuError::InvalidParameter(_))
        ));
        create(&mut c, 1, CAPSET_CROSS_DOMAIN, 64).unwrap();
        assert!(matches!(
            create(&mut c, 1, 0, 0),
            Err(GpuError::ContextExists(1))
        ));
        create(&mut c, 2, 0, 0).unwrap();
        assert!(matches!(
            create(&mut c, 3, 0, 0),
            Err(GpuError::Limit(LimitKind::ContextsPerVm, 2))
        ));
        assert_eq!(c.len(), 2);
        let mut ids = c.ids();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2]);
        assert!(c.remove(1).is_some());
        assert!(!c.contains(1));
        create(&mut c, 3, 0, 0).unwrap();
    }

    #[test]
    fn attachments_are_bounded_per_context() {
        let limits = Limits {
            max_attached_per_context: 2,
            ..Limits::default()
        };
        let mut c = Contexts::new(limits);
        assert!(matches!(c.attach(1, 5), Err(GpuError::InvalidContext(1))));
        create(&mut c, 1, 0, 0).unwrap();
        create(&mut c, 2, 0, 0).unwrap();
        c.attach(1, 5).unwrap();
        c.attach(1, 6).unwrap();
        // Attaching again is no new attachment.
        c.attach(1, 6).unwrap();
        assert!(matches!(
            c.attach(1, 7),
            Err(GpuError::Limit(LimitKind::AttachedPerContext, 2))
        ));
        c.attach(2, 5).unwrap();
        c.detach(1, 6).unwrap();
        assert!(matches!(c.detach(1, 6), Err(GpuError::InvalidResource(6))));
        c.attach(1, 7).unwrap();
        c.forget_resource(5);
        assert!(matches!(c.detach(1, 5), Err(GpuError::InvalidResource(5))));
        assert!(matches!(c.detach(2, 5), Err(GpuError::InvalidResource(5))));
        assert!(!c.is_empty());
    }
}
