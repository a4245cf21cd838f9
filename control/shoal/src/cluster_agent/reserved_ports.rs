//! Ports a service may not publish: the cluster's own. The routing mesh answers a
//! published port on every node's addresses in XDP, before the host's sockets see the
//! frame, so publishing 2377 would take the managers' port away from them (and with it
//! any way back without a quorum), publishing the gossip or the data-path port would
//! cut the nodes off from each other. Refused whatever the protocol: they are the ports
//! a firewall opens between the nodes, and a service has the rest of the range.

use std::collections::BTreeMap;

use shoal_cluster::store::{ClusterState, ServiceSpec};

use crate::api::ApiError;

/// The managers' cluster port (joins, Raft, heartbeats), Swarm's.
pub const CLUSTER_PORT: u16 = 2377;
/// The gossip port, Swarm's.
pub const GOSSIP_PORT: u16 = 7946;
/// The VXLAN port unless `swarm init --data-path-port` names another, Swarm's.
pub const DATA_PATH_PORT: u16 = 4789;

/// The ports this agent itself listens on, besides what the store says.
#[derive(Clone, Copy, Debug)]
pub struct AgentPorts {
    /// Where a manager listens (`--cluster-listen`).
    pub cluster: u16,
    /// Where gossip listens (`--gossip-listen`); every node uses the same port.
    pub gossip: Option<u16>,
}

/// The ports no service may publish, each with why.
#[derive(Clone, Debug, Default)]
pub struct ReservedPorts {
    ports: BTreeMap<u16, String>,
}

impl ReservedPorts {
    /// The fixed ports, the swarm's data-path port, every node's cluster port (from its
    /// advertise address) and this agent's own.
    pub fn new(state: &ClusterState, agent: AgentPorts) -> Self {
        let mut ports = BTreeMap::new();
        let mut add = |port: u16, why: String| {
            ports.entry(port).or_insert(why);
        };
        add(
            CLUSTER_PORT,
            "the managers' cluster port (joins, Raft, heartbeats)".into(),
        );
        add(GOSSIP_PORT, "the gossip port".into());
        add(DATA_PATH_PORT, "the VXLAN data-path port".into());
        if let Some(port) = state.cluster.as_ref().map(|c| c.data_path_port) {
            if port != 0 {
                add(port, "this swarm's data-path (VXLAN) port".into());
                if let Some(wg) = port.checked_add(1) {
                    add(
                        wg,
                        "this swarm's WireGuard port (encrypted overlay networks)".into(),
                    );
                }
            }
        }
        add(
            DATA_PATH_PORT + 1,
            "the WireGuard port (encrypted overlay networks)".into(),
        );
        for n in state.nodes.values() {
            if let Ok(addr) = n.advertise_addr.parse::<std::net::SocketAddr>() {
                add(
                    addr.port(),
                    format!("the cluster port of node {}", n.hostname),
                );
            }
        }
        add(agent.cluster, "this agent's cluster port".into());
        if let Some(port) = agent.gossip {
            add(port, "the gossip port".into());
        }
        add(
            shoal_cluster::manager::NODE_PORT,
            "the node port (managers asking for a node's task logs)".into(),
        );
        Self { ports }
    }

    /// Refuses a spec publishing a reserved port, with why, in one line.
    pub fn check(&self, spec: &ServiceSpec) -> Result<(), ApiError> {
        for p in &spec.ports {
            if let Some(why) = self.ports.get(&p.published) {
                return Err(ApiError::new(format!(
                    "port {} cannot be published: it is {why}, and the routing mesh would take it from the cluster",
                    p.published
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shoal_cluster::store::{Availability, ClusterSpec, Node, NodeStatus, Protocol, Role};

    use super::*;

    fn spec(published: &[(u16, Protocol)]) -> ServiceSpec {
        let ports: Vec<(Protocol, u16, u16)> =
            published.iter().map(|&(p, proto)| (proto, 80, p)).collect();
        crate::cluster_agent::services::tests::spec("web", &ports)
    }

    fn state() -> ClusterState {
        let mut s = ClusterState {
            cluster: Some(ClusterSpec {
                data_path_port: 4790,
                ..Default::default()
            }),
            ..Default::default()
        };
        s.nodes.insert(
            "n1".into(),
            Node {
                id: "n1".into(),
                hostname: "h1".into(),
                role: Role::Manager,
                availability: Availability::Active,
                status: NodeStatus::Ready,
                advertise_addr: "192.168.77.11:2477".into(),
                data_path_addr: None,
                engine_version: String::new(),
                resources: Default::default(),
                labels: BTreeMap::new(),
                raft_id: None,
                gossip: None,
                version: 0,
                tls: None,
                wireguard_rotation: 0,
            },
        );
        s
    }

    #[test]
    fn the_node_port_is_refused() {
        let reserved = ReservedPorts::new(
            &state(),
            AgentPorts {
                cluster: 2377,
                gossip: None,
            },
        );
        let e = reserved
            .check(&spec(&[(2391, Protocol::Tcp)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("port 2391 cannot be published: it is the node port"),
            "{e}"
        );
    }

    #[test]
    fn the_clusters_ports_are_refused_with_why_whatever_the_protocol() {
        let reserved = ReservedPorts::new(
            &state(),
            AgentPorts {
                cluster: 2378,
                gossip: Some(7947),
            },
        );
        for (port, why) in [
            (2377, "the managers' cluster port"),
            (7946, "the gossip port"),
            (4789, "the VXLAN data-path port"),
            (4790, "this swarm's data-path (VXLAN) port"),
            (4791, "this swarm's WireGuard port"),
            (2477, "the cluster port of node h1"),
            (2378, "this agent's cluster port"),
            (7947, "the gossip port"),
        ] {
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                let e = reserved.check(&spec(&[(port, protocol)])).unwrap_err();
                let text = e.to_string();
                assert!(
                    text.starts_with(&format!("port {port} cannot be published: it is {why}")),
                    "{text}"
                );
                assert!(!text.contains('\n'), "one line: {text}");
            }
        }
        assert!(reserved
            .check(&spec(&[(80, Protocol::Tcp), (8080, Protocol::Udp)]))
            .is_ok());
    }
}
