//! Revoked nodes: a node removed (`node rm`) or gone (`swarm leave`) keeps the
//! certificate it was given, valid for up to its whole lifetime. Managers refuse it by
//! its node ID, from this record in the store, until no certificate issued to it can be
//! valid any more; then the entry is dropped (a later revocation prunes it).

use serde::{Deserialize, Serialize};

/// One revoked node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedNode {
    /// When it was revoked (ms since the epoch, chosen by the proposer).
    pub at_ms: u64,
    /// Until when a certificate issued to it before `at_ms` may still be valid (ms since
    /// the epoch): the entry is kept until then.
    pub until_ms: u64,
}
