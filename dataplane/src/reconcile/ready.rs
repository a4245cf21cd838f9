//! What the reconcilers have made ready for each local container, so the executor can
//! start a task's process only once its network is in place (interfaces, addresses and
//! routes; its egress veth and default route; the DNS listener its resolv.conf names;
//! the VIP maps scoping its namespace); and which declared state the node's traffic
//! follows whole, so the executor can tell when a task told to stop gets no new
//! connection here ([`Readiness::applied_version`]).
//!
//! ```text
//!  overlay ── attached containers ──┐
//!  VIPs    ── scoped containers   ──┤
//!  mesh    ── (version only)      ──┼─▶ one watch of Readiness ─▶ executor: wait_ready,
//!  egress  ── attached containers ──┤                             applied_version
//!  DNS     ── serving networks    ──┘
//! ```
//! Each reconciler writes only its own field, after an apply, and only when it changed.
//! Containers are named as the overlay's local endpoints name them and carry the
//! identity of the namespace they were made ready in, so a container made again under
//! the same name is not taken for ready until its new namespace is.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;

/// What is ready on this node now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Containers whose every declared endpoint is attached (veth, address, route), by
    /// name, with the identity of the namespace they are attached in.
    pub attached: BTreeMap<String, u64>,
    /// Containers whose namespace the VIP maps scope to the VIPs of their networks, by
    /// name, with the namespace identity.
    pub vip_scoped: BTreeMap<String, u64>,
    /// Containers egress has given their veth into the gateway bridge (and so their
    /// default route), by name, with the namespace identity.
    pub egress_attached: BTreeMap<String, u64>,
    /// Networks (by ID) whose DNS listener serves on their gateway, and the egress
    /// bridge's listener ([`super::dns::EGRESS_LISTENER`]) once it serves.
    pub dns_serving: BTreeSet<String>,
    /// The [`super::DeclaredNode::version`] each reconciler last applied whole (its
    /// remote endpoints, backends and records too).
    pub overlay_version: u64,
    pub vip_version: u64,
    pub mesh_version: u64,
    pub dns_version: u64,
}

/// The reconcilers' side: each updates its own field.
pub type ReadinessSender = Arc<watch::Sender<Readiness>>;
/// The executor's side.
pub type ReadinessWatch = watch::Receiver<Readiness>;

/// A new readiness channel, nothing ready.
pub fn channel() -> (ReadinessSender, ReadinessWatch) {
    let (tx, rx) = watch::channel(Readiness::default());
    (Arc::new(tx), rx)
}

/// Replaces one field through `update`, waking waiters only if it changed.
pub fn publish(tx: &ReadinessSender, update: impl FnOnce(&mut Readiness)) {
    tx.send_if_modified(|r| {
        let before = r.clone();
        update(r);
        *r != before
    });
}

/// What a task's process needs before it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The container holding the namespace (as the overlay's local endpoints name it).
    pub container: String,
    /// Identity of its namespace now.
    pub netns_id: u64,
    /// Whether the task is on a network (then the overlay attaches it, the VIP maps
    /// scope it, and the reconcilers must have applied `version`). Every task gets
    /// egress.
    pub on_overlay: bool,
    /// Where the container's resolver listens: its first network, or the egress
    /// listener for a task with no network; None: no resolver of the node's.
    pub dns_network: Option<String>,
    /// The declared state's version that holds everything the task should find (its
    /// peers' endpoints, the backends of the VIPs it may use, the names it may ask).
    pub version: u64,
}

impl Readiness {
    /// The declared version that the overlay, the service VIPs, the routing mesh and DNS
    /// have all applied whole (0: not every one has applied any): every version up to it
    /// is in force for the node's traffic, so a backend it withdrew gets no new
    /// connection through this node, nor a record from its resolver. Egress is not
    /// counted: it carries no service traffic.
    pub fn applied_version(&self) -> u64 {
        self.overlay_version
            .min(self.vip_version)
            .min(self.mesh_version)
            .min(self.dns_version)
    }

    /// What `wanted` still lacks, in words; empty once it is ready.
    pub fn missing(&self, wanted: &Wanted) -> Vec<String> {
        let mut out = Vec::new();
        let same = |m: &BTreeMap<String, u64>| m.get(&wanted.container) == Some(&wanted.netns_id);
        let behind = |what: &str, version: u64| {
            (version < wanted.version).then(|| {
                format!(
                    "the {what} reconciler has applied declared state {version}, not yet {}",
                    wanted.version
                )
            })
        };
        if wanted.on_overlay {
            if !same(&self.attached) {
                out.push("the overlay has not attached its namespace".to_owned());
            }
            out.extend(behind("overlay", self.overlay_version));
            if !same(&self.vip_scoped) {
                out.push("the service VIP maps do not scope its namespace".to_owned());
            }
            out.extend(behind("VIP", self.vip_version));
        }
        if !same(&self.egress_attached) {
            out.push("egress has not attached its namespace".to_owned());
        }
        if let Some(net) = &wanted.dns_network {
            if !self.dns_serving.contains(net) {
                out.push(format!("DNS is not serving on network {net}"));
            }
        }
        if wanted.on_overlay {
            out.extend(behind("DNS", self.dns_version));
        }
        out
    }
}

/// Waits until `wanted` is ready, at most `timeout`; the error says what was missing.
pub async fn wait_ready(
    watch: &mut ReadinessWatch,
    wanted: &Wanted,
    timeout: Duration,
) -> Result<(), String> {
    let ready = tokio::time::timeout(timeout, async {
        watch
            .wait_for(|r| r.missing(wanted).is_empty())
            .await
            .map(|_| ())
    })
    .await;
    match ready {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("the dataplane stopped".to_owned()),
        Err(_) => Err(format!(
            "network not ready after {timeout:?}: {}",
            watch.borrow().missing(wanted).join("; ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> Wanted {
        Wanted {
            container: "web.1.t1.sandbox".into(),
            netns_id: 7,
            on_overlay: true,
            dns_network: Some("front".into()),
            version: 3,
        }
    }

    fn ready() -> Readiness {
        Readiness {
            attached: [("web.1.t1.sandbox".to_owned(), 7)].into(),
            vip_scoped: [("web.1.t1.sandbox".to_owned(), 7)].into(),
            egress_attached: [("web.1.t1.sandbox".to_owned(), 7)].into(),
            dns_serving: ["front".to_owned()].into(),
            overlay_version: 3,
            vip_version: 4,
            mesh_version: 3,
            dns_version: 3,
        }
    }

    #[test]
    fn the_applied_version_is_the_one_every_traffic_reconciler_has_reached() {
        assert_eq!(Readiness::default().applied_version(), 0);
        let mut r = ready();
        assert_eq!(
            r.applied_version(),
            3,
            "the VIPs being ahead does not count"
        );
        r.mesh_version = 2;
        assert_eq!(r.applied_version(), 2, "the mesh holds it back");
        r.mesh_version = 9;
        r.dns_version = 0;
        assert_eq!(r.applied_version(), 0, "DNS has applied nothing yet");
        r.dns_version = 9;
        r.overlay_version = 9;
        r.egress_attached.clear();
        assert_eq!(r.applied_version(), 4, "egress does not count");
    }

    #[test]
    fn ready_only_when_every_part_holds_this_namespace() {
        assert!(ready().missing(&wanted()).is_empty());
        let mut stale = ready();
        stale.attached.insert("web.1.t1.sandbox".into(), 6);
        assert_eq!(
            stale.missing(&wanted()),
            ["the overlay has not attached its namespace"],
            "an earlier namespace under the same name does not count"
        );
        let mut old = ready();
        old.vip_version = 2;
        assert_eq!(
            old.missing(&wanted()),
            ["the VIP reconciler has applied declared state 2, not yet 3"],
            "maps written from an older declared state may lack the task's backends"
        );
        let none = Readiness::default().missing(&wanted());
        assert_eq!(none.len(), 7, "{none:?}");
        assert!(none[5].contains("front"), "{none:?}");
        let mut no_route = ready();
        no_route.egress_attached.clear();
        assert_eq!(
            no_route.missing(&wanted()),
            ["egress has not attached its namespace"],
            "a task's default route is egress's"
        );
    }

    #[test]
    fn a_task_with_no_network_waits_for_egress_and_its_listener_only() {
        let lone = Wanted {
            container: "lone.1.t2.sandbox".into(),
            netns_id: 9,
            on_overlay: false,
            dns_network: Some(crate::reconcile::dns::EGRESS_LISTENER.into()),
            version: 5,
        };
        let mut r = Readiness::default();
        assert_eq!(
            r.missing(&lone),
            [
                "egress has not attached its namespace".to_owned(),
                "DNS is not serving on network @egress".to_owned()
            ]
        );
        r.egress_attached.insert("lone.1.t2.sandbox".into(), 9);
        r.dns_serving.insert("@egress".into());
        assert!(
            r.missing(&lone).is_empty(),
            "the overlay's, VIPs' and DNS records' versions do not concern it: {:?}",
            r.missing(&lone)
        );
    }

    #[tokio::test]
    async fn waiting_ends_when_the_last_part_is_published_or_times_out() {
        let (tx, mut rx) = channel();
        let waiter = {
            let mut rx = rx.clone();
            tokio::spawn(
                async move { wait_ready(&mut rx, &wanted(), Duration::from_secs(5)).await },
            )
        };
        let all = ready();
        publish(&tx, |r| {
            r.attached = all.attached.clone();
            r.overlay_version = 3;
        });
        publish(&tx, |r| {
            r.vip_scoped = all.vip_scoped.clone();
            r.vip_version = 3;
        });
        publish(&tx, |r| r.egress_attached = all.egress_attached.clone());
        publish(&tx, |r| r.dns_serving = all.dns_serving.clone());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        publish(&tx, |r| r.dns_version = 3);
        assert_eq!(waiter.await.unwrap(), Ok(()));

        publish(&tx, |r| r.dns_serving.clear());
        let err = wait_ready(&mut rx, &wanted(), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "network not ready after 50ms: DNS is not serving on network front"
        );
    }
}
