//! Which store version this node's dataplane follows whole: the executor publishes
//! declared states, each computed from a store version, and the reconcilers say which
//! declared version each has applied ([`Readiness::applied_version`]: the overlay, the
//! service VIPs, the routing mesh and DNS); the store version is the newest one whose
//! declared state all of them hold.
//!
//! A declared state that does not change while the store moves on (most store changes
//! concern other nodes) stands for every store version it was computed from since: the
//! node follows them all once it is applied. Only versions the executor computed count
//! (it may skip some between two fetches): a skipped one may have declared something
//! else.

use std::collections::VecDeque;

use shoal_dataplane::reconcile::ready::Readiness;

/// The declared versions published, each with the newest store version it was computed
/// from, oldest first; those older than what the reconcilers have applied are dropped.
#[derive(Debug, Default)]
pub(super) struct AppliedStore {
    published: VecDeque<(u64, u64)>,
}

impl AppliedStore {
    /// Declared version `declared` is what store version `store` makes of this node
    /// (published now, or unchanged from before).
    pub(super) fn computed(&mut self, declared: u64, store: u64) {
        match self.published.back_mut() {
            Some((d, s)) if *d == declared => *s = (*s).max(store),
            _ => self.published.push_back((declared, store)),
        }
    }

    /// The newest store version whose declared state the reconcilers have all applied
    /// (`ready`), or, with no dataplane following the executor (None), the newest one
    /// computed; 0 before any.
    pub(super) fn store_version(&mut self, ready: Option<&Readiness>) -> u64 {
        let Some(ready) = ready else {
            return self.published.back().map_or(0, |(_, s)| *s);
        };
        let applied = ready.applied_version();
        // Applied versions only grow: entries before the newest applied one are done.
        while self.published.len() > 1 && self.published[1].0 <= applied {
            self.published.pop_front();
        }
        match self.published.front() {
            Some((d, s)) if *d <= applied => *s,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(version: u64) -> Readiness {
        Readiness {
            overlay_version: version,
            vip_version: version,
            mesh_version: version,
            dns_version: version,
            ..Default::default()
        }
    }

    #[test]
    fn the_store_version_is_the_newest_whose_declared_state_is_applied_everywhere() {
        let mut a = AppliedStore::default();
        assert_eq!(a.store_version(Some(&applied(0))), 0);
        a.computed(1, 10);
        assert_eq!(a.store_version(Some(&applied(0))), 0, "nothing applied yet");
        // The store moves on without changing what this node declares.
        a.computed(1, 12);
        a.computed(2, 15);
        assert_eq!(a.store_version(Some(&applied(1))), 12);
        let mut mixed = applied(2);
        mixed.mesh_version = 1;
        assert_eq!(
            a.store_version(Some(&mixed)),
            12,
            "the mesh has not applied version 2 yet"
        );
        assert_eq!(a.store_version(Some(&applied(2))), 15);
        a.computed(2, 18);
        assert_eq!(a.store_version(Some(&applied(2))), 18);
        assert_eq!(a.published.len(), 1, "older entries are dropped");
    }

    #[test]
    fn without_a_dataplane_the_newest_computed_version_counts() {
        let mut a = AppliedStore::default();
        assert_eq!(a.store_version(None), 0);
        a.computed(1, 10);
        a.computed(2, 14);
        assert_eq!(a.store_version(None), 14);
    }
}
