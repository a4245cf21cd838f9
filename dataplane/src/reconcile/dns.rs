//! The embedded resolver as the agent runs it: one listener (UDP and TCP, port 53) per
//! overlay network present on this node, on the network's gateway address, made inside
//! the network's namespace (a socket stays in the namespace it was made in, so a
//! query's arrival socket says which network it came from); and the record table,
//! swapped whole when the declared DNS state changes, so the next query sees the
//! change. A listener that cannot be started is tried again every 2 s.
use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::Arc,
    time::Duration,
};

use serde::Serialize;
use shoal_dns::{
    forward::Forwarder,
    records::{DnsState, SharedTable},
    server::{DnsServer, NetworkListener, ServerConfig},
};
use tracing::{info, warn};

use super::{
    ready::{self, ReadinessSender},
    runner::{Cue, Reconcile},
    DeclaredNode, PresentNetwork,
};
use crate::overlay::netns;

/// DNS port on each network's gateway.
pub const DNS_PORT: u16 = 53;
/// The listener for tasks with no network, on the egress bridge's gateway in the node's
/// namespace: its ID (no network name can start with `@`, so it scopes no records:
/// every name asked there is forwarded).
pub const EGRESS_LISTENER: &str = "@egress";

/// The egress listener on `gateway`, as the reconciler takes it. Its namespace is the
/// node's: that of the reconciler's own thread, which opens the path.
pub fn egress_listener(gateway: std::net::Ipv4Addr) -> PresentNetwork {
    PresentNetwork {
        id: EGRESS_LISTENER.into(),
        vni: 0,
        gateway,
        netns_path: "/proc/thread-self/ns/net".into(),
        endpoints: Default::default(),
    }
}
/// How often listeners that could not start are tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Starts and stops the listeners.
pub trait ListenerHost {
    type Server;
    fn start(&mut self, net: &PresentNetwork) -> Result<Self::Server, String>;
    fn stop(&mut self, server: Self::Server);
}

/// The real listeners: sockets bound in each network's namespace, served by
/// shoal-dns on the reconciler thread's runtime.
pub struct Resolver {
    pub table: Arc<SharedTable>,
    pub forwarder: Forwarder,
    pub config: ServerConfig,
    /// What every network's listeners count (the agent's metrics read it).
    pub stats: Arc<shoal_dns::stats::DnsStats>,
}

impl ListenerHost for Resolver {
    type Server = DnsServer;

    fn start(&mut self, net: &PresentNetwork) -> Result<DnsServer, String> {
        let addr = SocketAddr::from((net.gateway, DNS_PORT));
        let (udp, tcp) = netns::in_netns_at(&net.netns_path, || -> std::io::Result<_> {
            Ok((UdpSocket::bind(addr)?, TcpListener::bind(addr)?))
        })
        .map_err(|e| format!("entering {}: {e}", net.netns_path.display()))?
        .map_err(|e| format!("binding {addr} in network {}: {e}", net.id))?;
        DnsServer::serve_counted(
            vec![NetworkListener {
                network: net.id.clone(),
                udp,
                tcp,
            }],
            self.table.clone(),
            self.forwarder.clone(),
            self.config.clone(),
            self.stats.clone(),
        )
        .map_err(|e| format!("starting the DNS server: {e}"))
    }

    fn stop(&mut self, server: DnsServer) {
        // Within the reconciler thread's runtime: the grace for answers in flight runs
        // there while the reconciler goes on.
        tokio::spawn(server.shutdown());
    }
}

/// Which listeners to stop (by network ID) and which to start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListenerPlan {
    pub stop: Vec<String>,
    pub start: Vec<PresentNetwork>,
}

/// Listeners for exactly the networks in `present`: a network gone, or made again with
/// another gateway or namespace, loses its listener; a new one gets one (endpoints
/// coming and going on a network leave its listener alone).
pub fn plan(
    running: &BTreeMap<String, PresentNetwork>,
    present: &[PresentNetwork],
) -> ListenerPlan {
    let stop: Vec<String> = running
        .iter()
        .filter(|(id, net)| !present.iter().any(|p| &p.id == *id && p.same_place(net)))
        .map(|(id, _)| id.clone())
        .collect();
    let start = present
        .iter()
        .filter(|p| stop.contains(&p.id) || !running.contains_key(&p.id))
        .cloned()
        .collect();
    ListenerPlan { stop, start }
}

/// What `dns.json` holds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DnsStatus {
    /// Networks served, by ID.
    pub serving: Vec<String>,
    /// Networks whose listener could not start, with why (tried again).
    pub failed: BTreeMap<String, String>,
    pub services: usize,
    /// Why the latest declared DNS state was refused (the last good records stay).
    pub refused: Option<String>,
}

impl super::runner::Report for DnsStatus {
    fn failures(&self) -> usize {
        self.failed.len()
    }
    fn refused(&self) -> bool {
        self.refused.is_some()
    }
}

/// The DNS reconciler.
pub struct DnsReconciler<H: ListenerHost> {
    host: H,
    table: Arc<SharedTable>,
    servers: BTreeMap<String, (PresentNetwork, H::Server)>,
    status: DnsStatus,
    /// The records last offered to the table.
    records: Option<DnsState>,
    /// Listeners wanted whatever networks are present (the egress bridge's).
    fixed: Vec<PresentNetwork>,
    /// Where the networks served are told; None: nowhere.
    ready: Option<ReadinessSender>,
}

impl<H: ListenerHost> DnsReconciler<H> {
    /// `table` is the one `host`'s servers answer from.
    pub fn new(host: H, table: Arc<SharedTable>) -> Self {
        Self {
            host,
            table,
            servers: BTreeMap::new(),
            status: DnsStatus::default(),
            records: None,
            fixed: Vec::new(),
            ready: None,
        }
    }

    /// Also serves `listener` (e.g. [`egress_listener`]), tried again like the others
    /// until it starts.
    pub fn with_listener(mut self, listener: PresentNetwork) -> Self {
        self.fixed.push(listener);
        self
    }

    /// Tells `ready` which networks are served after each pass (the executor starts a
    /// task's process once its resolver answers).
    pub fn with_readiness(mut self, ready: ReadinessSender) -> Self {
        self.ready = Some(ready);
        self
    }

    fn update_records(&mut self, state: &DnsState) -> bool {
        if self.records.as_ref() == Some(state) {
            return false;
        }
        self.records = Some(state.clone());
        match self.table.update(state) {
            Ok(()) => {
                info!(services = state.services.len(), "DNS records updated");
                self.status.refused = None;
                self.status.services = state.services.len();
            }
            Err(e) => {
                warn!(error = %e, "declared DNS state refused; the last good records stay");
                self.status.refused = Some(e.to_string());
            }
        }
        true
    }

    fn follow_networks(&mut self, present: &[PresentNetwork]) -> bool {
        let running: BTreeMap<String, PresentNetwork> = self
            .servers
            .iter()
            .map(|(id, (net, _))| (id.clone(), net.clone()))
            .collect();
        let plan = plan(&running, present);
        let mut changed = false;
        for id in &plan.stop {
            if let Some((net, server)) = self.servers.remove(id) {
                self.host.stop(server);
                info!(network = %id, gateway = %net.gateway, "DNS stopped");
                changed = true;
            }
        }
        let before = self.status.failed.clone();
        self.status
            .failed
            .retain(|id, _| present.iter().any(|p| &p.id == id));
        for net in plan.start {
            match self.host.start(&net) {
                Ok(server) => {
                    info!(network = %net.id, gateway = %net.gateway, "DNS serving");
                    self.status.failed.remove(&net.id);
                    self.servers.insert(net.id.clone(), (net, server));
                    changed = true;
                }
                Err(e) => {
                    if self.status.failed.get(&net.id) != Some(&e) {
                        warn!(network = %net.id, error = %e, "DNS not serving; trying again");
                    }
                    self.status.failed.insert(net.id.clone(), e);
                }
            }
        }
        changed || before != self.status.failed
    }
}

impl<H: ListenerHost + 'static> Reconcile for DnsReconciler<H> {
    type Status = DnsStatus;

    fn reconcile(
        &mut self,
        declared: Option<&DeclaredNode>,
        present: &[PresentNetwork],
        _cue: Cue,
    ) -> Option<DnsStatus> {
        let records = declared
            .and_then(|d| d.dns.as_ref())
            .is_some_and(|dns| self.update_records(dns));
        let mut wanted = present.to_vec();
        wanted.extend(self.fixed.iter().cloned());
        let networks = self.follow_networks(&wanted);
        if let Some(tx) = &self.ready {
            let serving = self.servers.keys().cloned().collect();
            // The records in force are the declared ones unless they were refused.
            let taken = declared
                .filter(|d| d.dns.is_some() && self.status.refused.is_none())
                .map(|d| d.version);
            ready::publish(tx, |r| {
                r.dns_serving = serving;
                if let Some(v) = taken {
                    r.dns_version = v;
                }
            });
        }
        (records || networks).then(|| {
            self.status.serving = self.servers.keys().cloned().collect();
            self.status.clone()
        })
    }

    fn period(&self) -> Duration {
        RETRY_EVERY
    }
}

#[cfg(test)]
mod tests {
    use shoal_dns::records::RecordTable;

    use super::*;

    fn net(id: &str, vni: u32, gateway: &str) -> PresentNetwork {
        PresentNetwork {
            id: id.into(),
            vni,
            gateway: gateway.parse().unwrap(),
            netns_path: format!("/run/x/vni-{vni}").into(),
            endpoints: Default::default(),
        }
    }

    #[test]
    fn the_plan_starts_new_networks_and_restarts_changed_ones() {
        let running: BTreeMap<_, _> = [
            ("a".to_string(), net("a", 1, "10.0.1.1")),
            ("b".to_string(), net("b", 2, "10.0.2.1")),
            ("c".to_string(), net("c", 3, "10.0.3.1")),
        ]
        .into();
        // a's endpoints changed: its listener stays.
        let mut a = net("a", 1, "10.0.1.1");
        a.endpoints.insert("10.0.1.7".parse().unwrap());
        let present = [a, net("b", 2, "10.0.2.254"), net("d", 4, "10.0.4.1")];
        let p = plan(&running, &present);
        assert_eq!(p.stop, ["b", "c"]);
        assert_eq!(
            p.start,
            [net("b", 2, "10.0.2.254"), net("d", 4, "10.0.4.1")]
        );
    }

    #[derive(Default)]
    struct FakeHost {
        fail: bool,
        started: Vec<String>,
        stopped: Vec<String>,
    }

    impl ListenerHost for FakeHost {
        type Server = String;
        fn start(&mut self, net: &PresentNetwork) -> Result<String, String> {
            if self.fail {
                return Err("address in use".into());
            }
            self.started.push(net.id.clone());
            Ok(net.id.clone())
        }
        fn stop(&mut self, server: String) {
            self.stopped.push(server);
        }
    }

    #[test]
    fn a_listener_that_fails_is_retried_and_records_follow_the_declared_state() {
        let table = Arc::new(SharedTable::new(
            RecordTable::build(&DnsState::default()).unwrap(),
        ));
        let host = FakeHost {
            fail: true,
            ..Default::default()
        };
        let (ready_tx, ready) = super::ready::channel();
        let mut r = DnsReconciler::new(host, table).with_readiness(ready_tx);
        let s = r
            .reconcile(None, &[net("a", 1, "10.0.1.1")], Cue::Present)
            .unwrap();
        assert!(s.serving.is_empty());
        assert!(ready.borrow().dns_serving.is_empty());
        assert_eq!(s.failed["a"], "address in use");
        // Same failure again: nothing new to report.
        assert!(r
            .reconcile(None, &[net("a", 1, "10.0.1.1")], Cue::Timer)
            .is_none());
        r.host.fail = false;
        let s = r
            .reconcile(None, &[net("a", 1, "10.0.1.1")], Cue::Timer)
            .unwrap();
        assert_eq!(s.serving, ["a"]);
        assert!(s.failed.is_empty());
        assert!(ready.borrow().dns_serving.contains("a"));

        let d = DeclaredNode {
            dns: Some(DnsState::default()),
            version: 2,
            ..Default::default()
        };
        let s = r.reconcile(Some(&d), &[], Cue::Declared).unwrap();
        assert_eq!(ready.borrow().dns_version, 2);
        assert!(s.serving.is_empty());
        assert_eq!(r.host.stopped, ["a"]);
        assert!(s.refused.is_none());
    }
}
