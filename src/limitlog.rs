//! Which resource limits a guest has already run into, per context, so that each limit is
//! reported once per context rather than once per refused request.
//!
//! This module owns [`LimitKind`] (the fixed set of limits a guest can hit, named as in the
//! "Limits" table of docs/security.md) and [`LimitLog`], the record of `(limit, context)` pairs
//! already reported. The log lines themselves are written by
//! [`GuestLog::limit_hit`](crate::ratelimit::GuestLog::limit_hit).
//!
//! Keys are context ids. VM-wide limits (contexts, resources, backing entries) hit by a request
//! that names a live context count for that context; requests that name no live context
//! (ctx_id 0, a destroyed or never-created context, a CTX_CREATE refused by the contexts limit)
//! all count as context 0. The caller maps them; [`LimitLog`] does not know which contexts
//! live.
//!
//! Memory is bounded: at most `max_contexts + 1` context ids are remembered (the live
//! contexts and 0), each with one bit per [`LimitKind`]. A context's record is dropped when the
//! context is destroyed ([`LimitLog::forget`]) and all of them when the device resets
//! ([`LimitLog::clear`]), so a new context that reuses an id is reported again. Should a caller
//! pass more distinct ids than that, the extra ones are not remembered and every hit for them
//! counts as a first hit (the rate limiter still bounds the lines).

use std::collections::HashMap;
use std::fmt;

/// A limit on what the guest may make the device hold (see docs/security.md, "Limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// `Limits::max_contexts`.
    ContextsPerVm,
    /// `Limits::max_resources`.
    ResourcesPerVm,
    /// `Limits::max_entries_per_resource`.
    EntriesPerResource,
    /// `Limits::max_total_entries`.
    EntriesPerVm,
    /// `Limits::max_attached_per_context`.
    AttachedPerContext,
    /// `MAX_ITEMS`: received fds and pipes held by one context.
    ItemsPerContext,
    /// `MAX_IMAGE_REQUIREMENTS`: distinct image requirements stored by one context.
    ImageRequirementsPerContext,
    /// `MAX_IMAGE_REQUIREMENTS_PER_VM`: image requirements stored by all contexts.
    ImageRequirementsPerVm,
    /// `MAX_BACKLOG_BYTES`: bytes queued towards one slow host peer (channel socket or pipe).
    QueuedBytes,
    /// `MAX_PARKED_SOCKETS`: sockets parked by ASSIGN_SOCKET_UUID in one VM.
    ParkedSocketsPerVm,
    /// `Limits::max_mappings`: blobs mapped in the host-visible region at once.
    MappingsPerVm,
}

impl LimitKind {
    /// Every limit, in declaration order.
    pub const ALL: [LimitKind; 11] = [
        LimitKind::ContextsPerVm,
        LimitKind::ResourcesPerVm,
        LimitKind::EntriesPerResource,
        LimitKind::EntriesPerVm,
        LimitKind::AttachedPerContext,
        LimitKind::ItemsPerContext,
        LimitKind::ImageRequirementsPerContext,
        LimitKind::ImageRequirementsPerVm,
        LimitKind::QueuedBytes,
        LimitKind::ParkedSocketsPerVm,
        LimitKind::MappingsPerVm,
    ];

    /// The limit's name, as in the table of docs/security.md.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::ContextsPerVm => "contexts per VM",
            LimitKind::ResourcesPerVm => "resources per VM",
            LimitKind::EntriesPerResource => "backing entries per resource",
            LimitKind::EntriesPerVm => "backing entries per VM",
            LimitKind::AttachedPerContext => "resources attached to one context",
            LimitKind::ItemsPerContext => "items per context",
            LimitKind::ImageRequirementsPerContext => "image requirements per context",
            LimitKind::ImageRequirementsPerVm => "image requirements per VM",
            LimitKind::QueuedBytes => "bytes queued towards a host peer",
            LimitKind::ParkedSocketsPerVm => "parked sockets per VM",
            LimitKind::MappingsPerVm => "mappings per VM",
        }
    }

    fn bit(self) -> Reported {
        1 << (self as u32)
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One bit per [`LimitKind`].
type Reported = u16;

// Every kind has its bit.
const _: () = assert!(LimitKind::ALL.len() <= Reported::BITS as usize);

/// The `(limit, context)` pairs already reported (see the module documentation).
#[derive(Debug)]
pub struct LimitLog {
    reported: HashMap<u32, Reported>,
    /// Most context ids remembered: the device's context limit plus context 0.
    capacity: usize,
}

impl LimitLog {
    /// A log for a device with at most `max_contexts` live contexts.
    pub fn new(max_contexts: usize) -> Self {
        LimitLog {
            reported: HashMap::new(),
            capacity: max_contexts.saturating_add(1),
        }
    }

    /// Records a hit of `kind` for context `ctx_id`; true if it is the first since the context
    /// was created (or the device reset), i.e. the hit that deserves a warning.
    pub fn first_hit(&mut self, ctx_id: u32, kind: LimitKind) -> bool {
        let bit = kind.bit();
        if let Some(bits) = self.reported.get_mut(&ctx_id) {
            let first = *bits & bit == 0;
            *bits |= bit;
            return first;
        }
        if self.reported.len() < self.capacity {
            self.reported.insert(ctx_id, bit);
        }
        true
    }

    /// Forgets context `ctx_id` (it was destroyed): its next hits are first hits again.
    pub fn forget(&mut self, ctx_id: u32) {
        self.reported.remove(&ctx_id);
    }

    /// Forgets everything (device reset).
    pub fn clear(&mut self) {
        self.reported.clear();
    }

    /// Number of context ids remembered (at most `max_contexts + 1`).
    pub fn tracked(&self) -> usize {
        self.reported.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_hit_per_limit_and_context() {
        let mut log = LimitLog::new(16);
        assert!(log.first_hit(1, LimitKind::ItemsPerContext));
        assert!(!log.first_hit(1, LimitKind::ItemsPerContext));
        assert!(!log.first_hit(1, LimitKind::ItemsPerContext));
        // Another limit in the same context, the same limit in another context.
        assert!(log.first_hit(1, LimitKind::QueuedBytes));
        assert!(log.first_hit(2, LimitKind::ItemsPerContext));
        assert!(!log.first_hit(2, LimitKind::ItemsPerContext));
        assert!(!log.first_hit(1, LimitKind::QueuedBytes));
        assert_eq!(log.tracked(), 2);
    }

    #[test]
    fn every_kind_is_separate() {
        let mut log = LimitLog::new(1);
        for kind in LimitKind::ALL {
            assert!(log.first_hit(0, kind), "{kind}");
        }
        for kind in LimitKind::ALL {
            assert!(!log.first_hit(0, kind), "{kind}");
        }
        let names: std::collections::HashSet<_> = LimitKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), LimitKind::ALL.len());
    }

    #[test]
    fn names_are_those_of_the_limits_table_in_security_md() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md"))
            .expect("read docs/security.md");
        for kind in LimitKind::ALL {
            assert!(
                doc.contains(&format!("\n| {kind} |")),
                "docs/security.md has no \"Limits\" row for \"{kind}\""
            );
        }
    }

    #[test]
    fn forget_and_clear_report_again() {
        let mut log = LimitLog::new(16);
        assert!(log.first_hit(3, LimitKind::AttachedPerContext));
        assert!(log.first_hit(4, LimitKind::AttachedPerContext));
        log.forget(3);
        assert!(log.first_hit(3, LimitKind::AttachedPerContext));
        assert!(!log.first_hit(4, LimitKind::AttachedPerContext));
        log.clear();
        assert_eq!(log.tracked(), 0);
        assert!(log.first_hit(4, LimitKind::AttachedPerContext));
    }

    #[test]
    fn memory_stays_bounded_under_many_context_ids() {
        let mut log = LimitLog::new(4);
        for id in 0..10_000u32 {
            for kind in LimitKind::ALL {
                log.first_hit(id, kind);
            }
        }
        assert_eq!(log.tracked(), 5);
        // Ids remembered before the log filled keep their record; later ones are first hits.
        assert!(!log.first_hit(0, LimitKind::ContextsPerVm));
        assert!(log.first_hit(9_999, LimitKind::ContextsPerVm));
        assert_eq!(log.tracked(), 5);
        // A destroyed context frees its slot.
        log.forget(2);
        assert!(log.first_hit(9_999, LimitKind::ContextsPerVm));
        assert!(!log.first_hit(9_999, LimitKind::ContextsPerVm));
    }
}
