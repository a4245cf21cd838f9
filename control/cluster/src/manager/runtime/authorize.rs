//! Who may ask what. A caller is named by its certificate (node ID and role, checked by
//! TLS against the cluster CA), but a certificate stays valid for months after the node
//! it names was removed or demoted. So every request is also checked against the store:
//! the caller must still be a member, not revoked ([`ClusterState::removed_nodes`]), and
//! hold the role its request needs there as well as in its certificate. A demoted
//! manager's manager certificate therefore counts as a worker's (it keeps working as a
//! worker until it renews), and a removed node's certificate counts for nothing.

use crate::manager::wire::WireError;
use crate::manager::Role;
use crate::pki::PeerIdentity;
use crate::store::ClusterState;

/// How a caller unknown to this member's copy of the store is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unknown {
    /// Refused: requests served by the leader, whose copy records every member that
    /// was ever admitted (a node is recorded before its certificate is issued).
    Refuse,
    /// Let through: Raft messages, which a member must take from a manager it has not
    /// heard of yet (its copy of the store is behind, e.g. just restarted; refusing
    /// would keep it behind for good). Revoked and demoted nodes are still refused.
    Admit,
}

/// Whether `peer` may make a call that needs `needed`, as far as `state` says.
pub(super) fn authorize(
    state: &ClusterState,
    peer: &PeerIdentity,
    needed: Role,
    unknown: Unknown,
) -> Result<(), WireError> {
    let id = peer.node_id();
    let refuse = |detail: String| Err(WireError::Unauthorized { detail });
    if !peer.role().allows(needed) {
        return refuse(format!(
            "node {id} holds a {} certificate; this needs a {needed}",
            peer.role()
        ));
    }
    if state.removed_nodes.contains_key(id) {
        return refuse(format!(
            "node {id} was removed from the cluster; its certificate is revoked"
        ));
    }
    let Some(node) = state.nodes.get(id) else {
        return match unknown {
            Unknown::Admit => Ok(()),
            Unknown::Refuse => refuse(format!("node {id} is not a member of this cluster")),
        };
    };
    let role = super::pki_role(node.role);
    if !role.allows(needed) {
        return refuse(format!(
            "node {id} is a {role} now; its {} certificate no longer counts for this",
            peer.role()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{ClusterCa, IssueOptions, NodeIdentity};
    use crate::store::{Availability, Node, NodeStatus, RemovedNode};

    fn peer(ca: &ClusterCa, id: &str, role: Role) -> PeerIdentity {
        let (key, csr) = NodeIdentity::generate_key_and_csr(id).unwrap();
        let cert = ca.issue(&csr, id, role, &IssueOptions::default()).unwrap();
        NodeIdentity::new(key, cert, ca.certificate().clone())
            .unwrap()
            .peer_identity()
    }

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        for (id, role) in [
            ("manager1", crate::store::Role::Manager),
            ("worker1", crate::store::Role::Worker),
            ("demoted1", crate::store::Role::Worker),
        ] {
            s.nodes.insert(
                id.into(),
                Node {
                    id: id.into(),
                    hostname: id.into(),
                    role,
                    availability: Availability::Active,
                    status: NodeStatus::Ready,
                    advertise_addr: "10.0.0.1:2377".into(),
                    data_path_addr: None,
                    engine_version: String::new(),
                    resources: Default::default(),
                    labels: Default::default(),
                    raft_id: None,
                    gossip: None,
                    version: 1,
                    tls: None,
                    wireguard_rotation: 0,
                },
            );
        }
        s.removed_nodes.insert(
            "removed1".into(),
            RemovedNode {
                at_ms: 1,
                until_ms: u64::MAX,
            },
        );
        s
    }

    fn refused(r: Result<(), WireError>) -> String {
        match r {
            Err(WireError::Unauthorized { detail }) => detail,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn members_get_what_their_role_allows() {
        let ca = ClusterCa::new("c1").unwrap();
        let s = state();
        let manager = peer(&ca, "manager1", Role::Manager);
        let worker = peer(&ca, "worker1", Role::Worker);
        for unknown in [Unknown::Refuse, Unknown::Admit] {
            assert!(authorize(&s, &manager, Role::Manager, unknown).is_ok());
            assert!(authorize(&s, &manager, Role::Worker, unknown).is_ok());
            assert!(authorize(&s, &worker, Role::Worker, unknown).is_ok());
            let why = refused(authorize(&s, &worker, Role::Manager, unknown));
            assert!(why.contains("worker certificate"), "{why}");
        }
    }

    #[test]
    fn a_demoted_managers_certificate_counts_as_a_workers() {
        let ca = ClusterCa::new("c1").unwrap();
        let s = state();
        let old = peer(&ca, "demoted1", Role::Manager);
        for unknown in [Unknown::Refuse, Unknown::Admit] {
            let why = refused(authorize(&s, &old, Role::Manager, unknown));
            assert!(why.contains("is a worker now"), "{why}");
            assert!(authorize(&s, &old, Role::Worker, unknown).is_ok());
        }
        // A promoted worker's old certificate serves worker calls until it renews, and
        // no more: the certificate's role counts too.
        let mut promoted = s.clone();
        promoted.nodes.get_mut("worker1").unwrap().role = crate::store::Role::Manager;
        let worker = peer(&ca, "worker1", Role::Worker);
        assert!(authorize(&promoted, &worker, Role::Worker, Unknown::Refuse).is_ok());
        refused(authorize(
            &promoted,
            &worker,
            Role::Manager,
            Unknown::Refuse,
        ));
    }

    #[test]
    fn removed_and_unknown_nodes_are_refused() {
        let ca = ClusterCa::new("c1").unwrap();
        let s = state();
        for role in [Role::Manager, Role::Worker] {
            let removed = peer(&ca, "removed1", role);
            for unknown in [Unknown::Refuse, Unknown::Admit] {
                let why = refused(authorize(&s, &removed, Role::Worker, unknown));
                assert!(why.contains("revoked"), "{why}");
            }
        }
        let stranger = peer(&ca, "stranger1", Role::Manager);
        let why = refused(authorize(&s, &stranger, Role::Worker, Unknown::Refuse));
        assert!(why.contains("not a member"), "{why}");
        // A manager this member's copy has not recorded yet may still send Raft messages.
        assert!(authorize(&s, &stranger, Role::Manager, Unknown::Admit).is_ok());
        // A removed node stays refused once it is listed again by a stale copy.
        let mut listed = s.clone();
        listed.nodes.insert(
            "removed1".into(),
            Node {
                id: "removed1".into(),
                ..s.nodes["manager1"].clone()
            },
        );
        refused(authorize(
            &listed,
            &peer(&ca, "removed1", Role::Manager),
            Role::Manager,
            Unknown::Admit,
        ));
    }
}
