//! The node's own loop: a heartbeat to the leader every interval, then whatever its
//! answer calls for (the managers list, a promotion or demotion, a root CA rotation to
//! follow), and certificate renewal.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::TcpListener;

use super::ca::{ca_change_due, tls_of, CaTarget};
use super::{lock, with_port, Runtime};
use crate::manager::wire::{Grant, HeartbeatAck, Request, Response};
use crate::manager::{keys, persist};
use crate::manager::{ClusterError, Role};
use crate::pki::{ClusterCa, NodeCertificate, NodeIdentity};

use crate::store::RaftId;

impl Runtime {
    /// One heartbeat and what its answer calls for. True when the node renewed to follow
    /// a root CA rotation: the next heartbeat should go at once, to report it (the
    /// rotation waits for every node's report).
    pub(super) async fn heartbeat_once(self: &Arc<Self>) -> bool {
        let mut report_now = false;
        let info = lock(&self.local).info.clone();
        let tls = Some(tls_of(&self.identity()));
        let traffic = *lock(&self.traffic_out);
        let call = self.call_leader(Request::Heartbeat {
            node: info,
            tls,
            traffic,
        });
        match tokio::time::timeout(2 * self.timings.request_timeout, call).await {
            Ok(Ok(Response::Heartbeat(ack))) => {
                self.known_managers.set(&ack.manager_ids);
                *lock(&self.rates_in) = ack.rates.clone();
                let own = lock(&self.local).advertise.to_string();
                let managers: Vec<String> = ack
                    .managers
                    .iter()
                    .filter(|m| **m != own)
                    .cloned()
                    .collect();
                let changed = managers != lock(&self.local).managers;
                if !managers.is_empty() && changed {
                    let _ = self.update_local(|l| l.managers = managers);
                }
                self.reconcile_role(&ack).await;
                if let Some(target) = &ack.ca {
                    report_now = self.follow_root(target).await;
                }
            }
            Ok(Ok(_)) => tracing::debug!("unexpected answer to a heartbeat"),
            Ok(Err(e)) => tracing::debug!(error = %e, "heartbeat failed"),
            Err(_) => tracing::debug!("heartbeat timed out"),
        }
        if self.identity().needs_renewal(SystemTime::now()) {
            let _guard = self.transition.lock().await;
            match self.renew().await {
                Ok(_) => tracing::info!("node certificate renewed"),
                Err(e) => tracing::warn!(error = %e, "certificate renewal failed; will retry"),
            }
        }
        report_now
    }

    /// Follows the role the store gives this node (promotion, demotion).
    async fn reconcile_role(self: &Arc<Self>, ack: &HeartbeatAck) {
        let _guard = self.transition.lock().await;
        let core = self.core();
        let result = match (ack.role, core) {
            (Role::Manager, None) => self.become_manager(ack.raft_id).await,
            (Role::Worker, Some(_)) => self.become_worker().await,
            (Role::Worker, None) if self.identity().role() == Role::Manager => {
                self.renew().await.map(|_| ())
            }
            // Demoted and promoted again between two heartbeats: the member running
            // here was taken out of the group, and the promotion waits for a fresh one
            // under its new Raft ID.
            (Role::Manager, Some(core)) if ack.raft_id.is_some_and(|id| id != core.raft_id) => {
                self.rejoin_as_manager(core.raft_id, ack.raft_id).await
            }
            (Role::Manager, Some(core)) => {
                let st = core.store.status();
                if !st.voters.contains_key(&core.raft_id) && !st.learners.contains(&core.raft_id) {
                    // Joined or promoted, but not in the group yet: ask again.
                    self.announce_manager().await
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, role = %ack.role, "could not take the role the managers gave this node");
        }
    }

    /// A root CA rotation started or ended: a certificate of the root that signs now,
    /// and the roots to trust, come with a renewal. True when this node renewed.
    async fn follow_root(self: &Arc<Self>, target: &CaTarget) -> bool {
        if !ca_change_due(&self.identity(), target) {
            return false;
        }
        let _guard = self.transition.lock().await;
        if !ca_change_due(&self.identity(), target) {
            return false;
        }
        match self.renew().await {
            Ok(_) => {
                let identity = self.identity();
                tracing::info!(
                    issuer = %identity.issuer().digest(),
                    root = %identity.ca().digest(),
                    rotating = identity.trust().next().is_some(),
                    "root CA rotation: node certificate and trust renewed"
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "root CA rotation: renewal failed; will retry");
                false
            }
        }
    }

    async fn renew(self: &Arc<Self>) -> Result<Grant, ClusterError> {
        let (key, csr) = NodeIdentity::generate_key_and_csr(&self.node_id)?;
        let grant = match self
            .call_leader(Request::Renew { csr_pem: csr.pem() })
            .await?
        {
            Response::Granted(g) => g,
            _ => return Err(ClusterError::Protocol("unexpected answer to renew".into())),
        };
        self.known_managers.set(&grant.manager_ids);
        // The roots come with the grant; a node moves only to roots it trusts already
        // (a next root is vouched for by the root it has).
        let trust = grant.trust()?;
        self.identity().trust().accepts(&trust)?;
        let identity =
            NodeIdentity::with_trust(key, NodeCertificate::from_pem(&grant.cert_pem)?, trust)?;
        if let Some(key) = &grant.ca_key_pem {
            let ca = ClusterCa::from_pem(&identity.ca().pem(), key)?;
            persist::save_ca(&self.dir, &ca, &self.require_data_key()?)?;
        }
        self.set_identity(identity)?;
        Ok(grant)
    }

    async fn become_manager(self: &Arc<Self>, raft_id: Option<RaftId>) -> Result<(), ClusterError> {
        let raft_id =
            raft_id.ok_or_else(|| ClusterError::Protocol("promoted without a Raft ID".into()))?;
        // The data key first: the manager's certificate key and the CA key are saved
        // sealed with it. A local KEK until the store says whether autolock is on.
        if lock(&self.keys).is_none() {
            let manager_keys = keys::create(&self.dir, None)?;
            *lock(&self.keys) = Some(manager_keys);
        }
        let grant = self.renew().await?;
        let key = grant
            .ca_key_pem
            .ok_or_else(|| ClusterError::Protocol("a manager grant without the CA key".into()))?;
        let ca = ClusterCa::from_pem(&self.identity().ca().pem(), &key)?;
        let _ = std::fs::remove_dir_all(persist::raft_dir(&self.dir));
        let listen = lock(&self.local).listen;
        let listener = TcpListener::bind(listen).await?;
        let listen = listener.local_addr()?;
        self.update_local(|l| {
            l.listen = listen;
            l.advertise = with_port(l.advertise, listen.port());
            l.raft_id = Some(raft_id);
        })?;
        self.start_core(raft_id, ca, listener, None).await?;
        tracing::info!(node = %self.node_id, "promoted: running as a manager");
        self.announce_manager().await
    }

    /// Stops the Raft member running under `old` and starts a fresh one under `new`
    /// (its log dropped: the group took the old member out).
    async fn rejoin_as_manager(
        self: &Arc<Self>,
        old: RaftId,
        new: Option<RaftId>,
    ) -> Result<(), ClusterError> {
        tracing::info!(node = %self.node_id, old, new = ?new,
            "promoted again under a new Raft ID: the manager role starts afresh");
        self.stop_core().await;
        self.update_local(|l| l.raft_id = None)?;
        self.become_manager(new).await
    }

    async fn become_worker(self: &Arc<Self>) -> Result<(), ClusterError> {
        self.stop_core().await;
        let _ = std::fs::remove_dir_all(persist::raft_dir(&self.dir));
        persist::remove_ca_key(&self.dir);
        self.update_local(|l| l.raft_id = None)?;
        tracing::info!(node = %self.node_id, "demoted: running as a worker");
        // Saving the worker's identity drops the data key (`set_identity`).
        self.renew().await.map(|_| ())
    }
}
