//! Admitting nodes, on the leader: a join (token checked, node recorded, certificate
//! issued) and a certificate renewal, both answered with a [`Grant`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{
    fresh_raft_id, issue_options, manager_addrs, manager_ids, now_ms, other, pki_role, store_role,
    tokens_of, Core, Runtime, Signers,
};
use crate::manager::wire::{Grant, NextCaPem, Reply, Response, WireError};
use crate::manager::{NodeInfo, Role, Timings};
use crate::pki::{new_node_id, ClusterCa, IssueOptions, NodeCertificate, NodeCsr};
use crate::store::{
    ApplyResult, Availability, ClusterState, Command, Node, NodeStatus, NodeTls, RaftId,
};
use crate::token::TokenError;

/// The role `token` admits to, by the join tokens in `state`.
pub(crate) fn check_token(state: &ClusterState, token: &str) -> Result<Role, WireError> {
    let tokens = tokens_of(state).map_err(other)?;
    tokens.check(token, None).map_err(|e| match e {
        TokenError::WrongCluster => WireError::CaMismatch,
        TokenError::Invalid | TokenError::WrongRole { .. } => WireError::BadToken,
        e => WireError::MalformedToken {
            detail: e.to_string(),
        },
    })
}

/// What a join with a valid token brings, checked before anything is recorded: its
/// advertise address, and its CSR read and checked (its signature, the node ID) by
/// issuing a certificate that is thrown away. The CSR and the options to issue with.
pub(crate) fn check_join_request(
    ca: &ClusterCa,
    timings: &Timings,
    role: Role,
    node_id: &str,
    csr_pem: &str,
    advertise: &str,
) -> Result<(NodeCsr, IssueOptions), WireError> {
    let csr = NodeCsr::from_pem(csr_pem).map_err(other)?;
    let addr: SocketAddr = advertise
        .parse()
        .map_err(|_| other(format!("bad advertise address {advertise:?}")))?;
    let options = issue_options(timings, role, Some(addr));
    ca.issue(&csr, node_id, role, &options).map_err(other)?;
    Ok((csr, options))
}

/// The certificate issuer and trust of a node granted by `signers` (what its heartbeats
/// will report).
fn granted_tls(signers: &Signers) -> NodeTls {
    let target = signers.target();
    NodeTls {
        cert_issuer: signers.signing().digest(),
        trust_root: target.root,
        trust_next: target.next,
    }
}

impl Runtime {
    /// A grant of `cert` (signed by `signers`' signing CA), with the roots to trust; a
    /// manager also gets the root's key.
    #[allow(clippy::too_many_arguments)]
    fn grant(
        &self,
        core: &Core,
        signers: &Signers,
        node_id: &str,
        cert: NodeCertificate,
        role: Role,
        raft_id: Option<RaftId>,
        state: &ClusterState,
    ) -> Grant {
        Grant {
            node_id: node_id.to_string(),
            cert_pem: cert.pem(),
            ca_pem: signers.root.cert_pem(),
            ca_key_pem: (role == Role::Manager).then(|| signers.root.key_pem_secret()),
            raft_id,
            managers: manager_addrs(state, core),
            manager_ids: manager_ids(state),
            server_time_ms: now_ms(),
            next_ca: signers.next.as_ref().map(|(ca, next)| NextCaPem {
                cert_pem: ca.cert_pem(),
                cross_signed_pem: next.cross_signed_pem(),
            }),
        }
    }

    /// A join. The token is checked first, against this member's own copy of the
    /// store (no quorum read, no write, nothing parsed but the request itself, for a
    /// caller who has proven nothing yet); then again against the leader's current state
    /// (it may have been rotated meanwhile). The node is recorded before its certificate
    /// is issued, so no certificate ever names a node the store does not know.
    pub(super) async fn do_join(
        self: &Arc<Self>,
        core: &Core,
        token: String,
        csr_pem: String,
        info: NodeInfo,
        advertise: String,
    ) -> Reply {
        self.join_requests.fetch_add(1, Ordering::Relaxed);
        let checked = core
            .store
            .read_stale_with(|state| check_token(state, &token));
        let role = match checked {
            Ok(role) => role,
            Err(e) => {
                tracing::info!(hostname = %info.hostname, "join refused: invalid token");
                return Err(e);
            }
        };
        let state = self.read_state().await.map_err(WireError::from)?;
        if check_token(&state, &token)? != role {
            return Err(WireError::BadToken);
        }
        drop(token);
        let node_id = new_node_id();
        let signers = core.signers();
        // The CSR is checked (its signature, the node ID) before anything is recorded.
        let (csr, options) = check_join_request(
            signers.signing(),
            &self.timings,
            role,
            &node_id,
            &csr_pem,
            &advertise,
        )?;
        let raft_id = (role == Role::Manager).then(|| fresh_raft_id(&state));
        let node = Node {
            id: node_id.clone(),
            hostname: info.hostname.clone(),
            role: store_role(role),
            availability: Availability::Active,
            status: NodeStatus::Ready,
            advertise_addr: advertise,
            data_path_addr: info.data_path_addr,
            engine_version: info.engine_version.clone(),
            resources: info.resources,
            labels: BTreeMap::new(),
            raft_id,
            // A joining node registers its gossip key once its gossip starts.
            gossip: None,
            version: 0,
            // What the grant below gives it: its first heartbeat then writes nothing.
            tls: Some(Box::new(granted_tls(&signers))),
            wireguard_rotation: 0,
        };
        let applied = self
            .execute(Command::UpsertNode { node })
            .await
            .map_err(WireError::from)?;
        if let ApplyResult::Rejected { rejection, .. } = applied {
            return Err(WireError::Rejected { rejection });
        }
        let cert = signers
            .signing()
            .issue(&csr, &node_id, role, &options)
            .map_err(other)?;
        tracing::info!(node = %node_id, hostname = %info.hostname, %role, "node joined");
        Ok(Response::Granted(self.grant(
            core, &signers, &node_id, cert, role, raft_id, &state,
        )))
    }

    pub(super) async fn do_renew(
        self: &Arc<Self>,
        core: &Core,
        node_id: &str,
        csr_pem: &str,
    ) -> Reply {
        let state = self.read_state().await.map_err(WireError::from)?;
        let node = state
            .nodes
            .get(node_id)
            .ok_or_else(|| WireError::UnknownNode {
                node: node_id.to_string(),
            })?;
        let role = pki_role(node.role);
        let csr = NodeCsr::from_pem(csr_pem).map_err(other)?;
        let addr = node.advertise_addr.parse().ok();
        let signers = core.signers();
        let cert = signers
            .signing()
            .issue(
                &csr,
                node_id,
                role,
                &issue_options(&self.timings, role, addr),
            )
            .map_err(other)?;
        Ok(Response::Granted(self.grant(
            core,
            &signers,
            node_id,
            cert,
            role,
            node.raft_id,
            &state,
        )))
    }
}
