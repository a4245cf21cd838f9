//! A node's declared network state, computed from the cluster store.
//!
//! Each node's executor turns what the store says into the three declared states its
//! dataplane follows (overlay, DNS, load balancing) and publishes them to the agent's
//! pipeline ([`crate::pipeline`]) as one in-memory value. Networks are named by their
//! store name.
//!
//! - Overlay: the networks of this node's tasks (and `ingress` on every node as soon as
//!   a service publishes a port in ingress mode), this node's tasks as local endpoints in
//!   their attachment order (ingress first: the first network carries the default
//!   route), and every task elsewhere on those networks as a remote endpoint at its
//!   node's address. With gossip running ([`compute_with`]), a task on another node
//!   counts only while that node gossips an endpoint of it (here, in the LB backends and
//!   in the DNS records too): the store says what should exist, gossip what runs. A
//!   service gossip would leave with no running task keeps the ones the store has on
//!   Ready nodes (gossip lags while agents restart).
//! - DNS: every service on a network present here, its VIPs on those networks and its
//!   running tasks' addresses.
//! - Load balancing: the same services with their VIPs, published ports and backends
//!   (running tasks healthy; tasks told to stop that still run draining).
//! - Egress: the containers of this node's tasks, with a network or without.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use shoal_cluster::store::{self, ClusterState, NodeStatus, PublishMode, Service, Task, TaskState};
use shoal_dataplane::{lb::state as lb, overlay::state as overlay};
use shoal_dns::records as dns;

use crate::scheduler::effective_networks;

/// The three declared states of one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeState {
    pub overlay: overlay::OverlayState,
    pub dns: dns::DnsState,
    pub lb: lb::LbState,
    /// The cluster's VXLAN port (`swarm init --data-path-port`), which every node
    /// follows; None: the store has none (the agent's own then).
    pub data_path_port: Option<u16>,
    /// This node's `--data-path-addr`, when it joined with one; None: the agent's
    /// underlay address carries the overlay.
    pub data_path_addr: Option<Ipv4Addr>,
    /// Every node's data-path address (IPv4): the only sources this node accepts VXLAN
    /// from (the data path's guard). A node is in it from its join until `node rm`,
    /// whatever its status: one marked Down may still be sending (a partition from the
    /// managers only), and one back from Down must not lose frames until the store says
    /// Ready again. A node that left with `swarm leave` is listed Down until removed, as
    /// in Swarm, and stays in it until then.
    pub cluster_vteps: BTreeSet<Ipv4Addr>,
    /// The WireGuard public key of every other node that registered one, by its
    /// data-path address (IPv4): the peers of this node's encrypted networks. A node is
    /// in it from its registration until `node rm`.
    pub wireguard_peers: BTreeMap<Ipv4Addr, String>,
    /// How many new WireGuard keys this node was asked for (`node update
    /// --rotate-wireguard-key`).
    pub wireguard_rotation: u64,
    /// The sandboxes of this node's active tasks (the containers holding their
    /// namespaces), on a network or not: each one gets egress once it runs, before the
    /// task's own process starts in it.
    pub task_containers: BTreeSet<String>,
    /// Endpoints left out because a newer task's endpoint claims the same network and
    /// address ([`one_endpoint_per_address`]): the caller says so in the log when the
    /// set changes, not at every computation.
    pub address_conflicts: BTreeSet<(String, Ipv4Addr)>,
}

/// A node's data-path address: `data_path_addr`, else the advertise address's IP.
fn vtep(state: &ClusterState, node_id: &str) -> Option<Ipv4Addr> {
    match state.nodes.get(node_id)?.data_path_ip()? {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }
}

/// A task that has (or is getting) a container: placed and not ended. A task told to
/// stop stays attached to its networks until its container has stopped: it gets no new
/// connections (no DNS record, a draining backend), but the ones it has keep flowing
/// through the stop grace period instead of being cut when the stop is decided. Its
/// addresses stay its own until then too (the allocator holds a task's addresses until
/// it ends).
fn active(t: &Task) -> bool {
    t.node_id.is_some() && t.status.state >= TaskState::Assigned && !t.status.state.is_terminal()
}

/// The name of the service `t` belongs to: the service's, else (the service was removed
/// and its tasks are stopping) the one in the spec the task was made from.
fn service_name<'a>(services: &BTreeMap<&str, &'a Service>, t: &'a Task) -> Option<&'a str> {
    match services.get(t.service_id.as_str()) {
        Some(s) => Some(s.spec.name.as_str()),
        None => t.spec.as_ref().map(|s| s.name.as_str()),
    }
}

fn node_ready(state: &ClusterState, node: Option<&String>) -> bool {
    node.and_then(|n| state.nodes.get(n))
        .is_some_and(|n| n.status == NodeStatus::Ready)
}

fn lb_protocol(p: store::Protocol) -> lb::Protocol {
    match p {
        store::Protocol::Tcp => lb::Protocol::Tcp,
        store::Protocol::Udp => lb::Protocol::Udp,
    }
}

/// Keeps one endpoint per address and network, the newest task's (each endpoint comes
/// with its task's creation time; attached containers with 0). The store never gives
/// one address to two live tasks, but this node's view can still hold an ended task as
/// live (its end not yet committed) while the address went to its replacement: the
/// overlay refuses a state with one address twice as a whole, so one stale task would
/// cut every network of this node. The stale endpoint goes instead; the third value
/// names the network and address of each one left out.
#[allow(clippy::type_complexity)]
fn one_endpoint_per_address<L, R>(
    local: Vec<(u64, L)>,
    remote: Vec<(u64, R)>,
    local_key: impl Fn(&L) -> (&str, Ipv4Addr),
    remote_key: impl Fn(&R) -> (&str, Ipv4Addr),
) -> (Vec<L>, Vec<R>, BTreeSet<(String, Ipv4Addr)>) {
    let mut newest: HashMap<(String, Ipv4Addr), u64> = HashMap::new();
    let mut note = |created: u64, (network, ip): (&str, Ipv4Addr)| {
        let n = newest.entry((network.to_owned(), ip)).or_insert(created);
        *n = (*n).max(created);
    };
    local.iter().for_each(|(c, e)| note(*c, local_key(e)));
    remote.iter().for_each(|(c, e)| note(*c, remote_key(e)));
    let mut taken: HashSet<(String, Ipv4Addr)> = HashSet::new();
    let mut conflicts = BTreeSet::new();
    let mut keep = |created: u64, (network, ip): (&str, Ipv4Addr)| {
        let key = (network.to_owned(), ip);
        let kept = newest.get(&key) == Some(&created) && taken.insert(key.clone());
        if !kept {
            conflicts.insert(key);
        }
        kept
    };
    let local = local
        .into_iter()
        .filter(|(c, e)| keep(*c, local_key(e)))
        .map(|(_, e)| e)
        .collect();
    let remote = remote
        .into_iter()
        .filter(|(c, e)| keep(*c, remote_key(e)))
        .map(|(_, e)| e)
        .collect();
    (local, remote, conflicts)
}

/// Computes the declared states of node `node_id` from the store alone.
pub fn compute(state: &ClusterState, node_id: &str) -> NodeState {
    compute_with(state, node_id, None)
}

/// Computes the declared states of node `node_id`. With a gossip table, a task on
/// another node counts (remote endpoint, LB backend, DNS record) only while its node
/// gossips an endpoint of it: the store says what should exist, gossip what runs;
/// except that a service left with no running task that way keeps the store's.
pub fn compute_with(
    state: &ClusterState,
    node_id: &str,
    gossip: Option<&shoal_gossip::EndpointTable>,
) -> NodeState {
    let gossiped: Option<BTreeSet<(String, String)>> = gossip.map(|table| {
        table
            .iter()
            .filter_map(|e| Some((e.node.to_string(), e.endpoint.task?)))
            .collect()
    });
    let reported = |t: &Task| -> bool {
        match (t.node_id.as_deref(), &gossiped) {
            (Some(n), _) if n == node_id => true,
            (_, None) => true,
            (Some(n), Some(seen)) => seen.contains(&(n.to_owned(), t.id.clone())),
            (None, Some(_)) => false,
        }
    };
    // A service gossip would leave with no running task at all, while the store has
    // some on Ready nodes, keeps those: gossip lags the store whenever a node's agent
    // restarts (its old run is withdrawn once silent, its new one is taken once the
    // store's copy here names its key), and two of a service's nodes in such a moment
    // at once left its VIP with no backend: every connection refused. Sending to tasks
    // the store says run serves no worse than sending nowhere (as
    // `LbState::drain_unreachable` keeps a service's last backends), and a node the
    // managers find dead is marked Down, which ends it.
    let vouched: HashSet<&str> = match &gossiped {
        None => HashSet::new(),
        Some(_) => state
            .services
            .keys()
            .flat_map(|id| {
                let serving: Vec<&Task> = state
                    .service_tasks(id)
                    .filter(|t| {
                        t.status.state == TaskState::Running
                            && t.desired_state == TaskState::Running
                            && node_ready(state, t.node_id.as_ref())
                    })
                    .collect();
                match serving.iter().any(|t| reported(t)) {
                    true => Vec::new(),
                    false => serving.into_iter().map(|t| t.id.as_str()).collect(),
                }
            })
            .collect(),
    };
    let counts = |t: &Task| reported(t) || vouched.contains(t.id.as_str());
    let net_name = |id: &str| state.networks.get(id).map(|n| n.name.clone());
    let services: BTreeMap<&str, &Service> = state
        .services
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let ingress = state.networks.values().find(|n| n.ingress);
    // Host-mode ports go through the mesh too (to this node's tasks only), so any
    // published port brings in ingress.
    let any_ingress_port = state.services.values().any(|s| !s.spec.ports.is_empty());

    // Networks present here: those of local tasks, and ingress when ports are published.
    let mut local_nets: BTreeSet<String> = BTreeSet::new();
    let mut local_endpoints = Vec::new();
    let mut task_containers = BTreeSet::new();
    for t in state.tasks.values() {
        if t.node_id.as_deref() != Some(node_id) || !active(t) {
            continue;
        }
        let Some(service_name) = service_name(&services, t) else {
            continue;
        };
        // The sandbox holds the task's namespace (the task's container joins it).
        let container = crate::sandbox::name(&t.container_name(service_name));
        task_containers.insert(container.clone());
        for a in &t.networks {
            let (Some(name), ip) = (net_name(&a.network_id), a.addr.addr()) else {
                continue;
            };
            local_nets.insert(a.network_id.clone());
            local_endpoints.push((
                t.created_ms,
                overlay::LocalEndpoint {
                    network: name,
                    container: container.clone(),
                    ip,
                    mac: None,
                },
            ));
        }
    }
    // Containers of this node that are not tasks, attached to attachable networks once
    // the managers gave them an address: plumbed as a task's sandbox is, egress too.
    for a in state.attachments.values() {
        let (true, Some(addr), Some(name)) =
            (a.node_id == node_id, a.addr, net_name(&a.network_id))
        else {
            continue;
        };
        local_nets.insert(a.network_id.clone());
        task_containers.insert(a.container_id.clone());
        local_endpoints.push((
            0,
            overlay::LocalEndpoint {
                network: name,
                container: a.container_id.clone(),
                ip: addr.addr(),
                mac: None,
            },
        ));
    }
    if let (Some(ing), true) = (ingress, any_ingress_port) {
        local_nets.insert(ing.id.clone());
    }
    let networks: Vec<overlay::Network> = local_nets
        .iter()
        .filter_map(|id| {
            let n = state.networks.get(id)?;
            Some(overlay::Network {
                id: n.name.clone(),
                vni: n.vni?,
                subnet: n.subnet?,
                gateway: n.gateway?,
                mtu: None,
                encrypted: n.encrypted,
            })
        })
        .collect();
    let declared: BTreeSet<String> = networks.iter().map(|n| n.id.clone()).collect();

    let mut remote_endpoints = Vec::new();
    for t in state.tasks.values() {
        let Some(node) = t.node_id.as_deref() else {
            continue;
        };
        if node == node_id || !active(t) || !node_ready(state, t.node_id.as_ref()) || !counts(t) {
            continue;
        }
        let Some(vtep) = vtep(state, node) else {
            continue;
        };
        for a in &t.networks {
            if !local_nets.contains(&a.network_id) {
                continue;
            }
            let (Some(name), ip) = (net_name(&a.network_id), a.addr.addr()) else {
                continue;
            };
            remote_endpoints.push((
                t.created_ms,
                overlay::RemoteEndpoint {
                    network: name,
                    ip,
                    mac: None,
                    vtep,
                },
            ));
        }
    }

    // Other nodes' attached containers, once their node gossips them (as a task).
    let attached_reported = |a: &store::ContainerAttachment| -> bool {
        a.node_id == node_id
            || (node_ready(state, Some(&a.node_id))
                && gossiped
                    .as_ref()
                    .is_none_or(|seen| seen.contains(&(a.node_id.clone(), a.id.clone()))))
    };
    for a in state.attachments.values() {
        if a.node_id == node_id || !local_nets.contains(&a.network_id) || !attached_reported(a) {
            continue;
        }
        let (Some(addr), Some(name), Some(vtep)) =
            (a.addr, net_name(&a.network_id), vtep(state, &a.node_id))
        else {
            continue;
        };
        remote_endpoints.push((
            0,
            overlay::RemoteEndpoint {
                network: name,
                ip: addr.addr(),
                mac: None,
                vtep,
            },
        ));
    }
    let (local_endpoints, remote_endpoints, address_conflicts) = one_endpoint_per_address(
        local_endpoints,
        remote_endpoints,
        |e| (e.network.as_str(), e.ip),
        |e| (e.network.as_str(), e.ip),
    );

    let mut dns_services = Vec::new();
    let mut lb_services = Vec::new();
    for s in state.services.values() {
        let nets = effective_networks(state, s);
        let here: Vec<String> = nets
            .iter()
            .filter(|n| local_nets.contains(*n))
            .filter_map(|n| net_name(n))
            .collect();
        let publishes = !s.spec.ports.is_empty();
        if here.is_empty() && !publishes {
            continue;
        }
        let vips: Vec<(String, Ipv4Addr)> = s
            .endpoint
            .virtual_ips
            .iter()
            .filter(|v| local_nets.contains(&v.network_id))
            .filter_map(|v| Some((net_name(&v.network_id)?, v.addr.addr())))
            .collect();
        let endpoint_mode = s.spec.endpoint_mode;
        let running: Vec<&Task> = state
            .service_tasks(&s.id)
            .filter(|t| {
                t.status.state == TaskState::Running
                    && node_ready(state, t.node_id.as_ref())
                    && counts(t)
            })
            .collect();
        let addresses = |t: &Task| -> Vec<(String, Ipv4Addr)> {
            t.networks
                .iter()
                .filter(|a| local_nets.contains(&a.network_id))
                .filter_map(|a| Some((net_name(&a.network_id)?, a.addr.addr())))
                .collect()
        };
        if !here.is_empty() {
            let dns_networks: Vec<String> = match endpoint_mode {
                store::EndpointMode::Vip => vips.iter().map(|(n, _)| n.clone()).collect(),
                store::EndpointMode::Dnsrr => here.clone(),
            };
            // `--network name=NET,alias=A`, on the networks the service's name is
            // answered on here.
            let aliases = s
                .spec
                .network_aliases
                .iter()
                .filter_map(|(id, names)| Some((net_name(id)?, names)))
                .filter(|(net, _)| dns_networks.contains(net))
                .flat_map(|(net, names)| {
                    names.iter().map(move |a| dns::NetAlias {
                        network: net.clone(),
                        alias: a.clone(),
                    })
                })
                .collect();
            dns_services.push(dns::Service {
                name: s.spec.name.clone(),
                stack: None,
                endpoint_mode: match endpoint_mode {
                    store::EndpointMode::Vip => dns::EndpointMode::Vip,
                    store::EndpointMode::Dnsrr => dns::EndpointMode::Dnsrr,
                },
                vips: vips
                    .iter()
                    .map(|(n, ip)| dns::NetAddr {
                        network: n.clone(),
                        ip: (*ip).into(),
                    })
                    .collect(),
                networks: dns_networks,
                aliases,
                tasks: running
                    .iter()
                    .filter(|t| t.desired_state == TaskState::Running)
                    .map(|t| dns::Task {
                        id: t.id.clone(),
                        slot: (t.slot > 0).then(|| t.slot.min(u32::MAX as u64) as u32),
                        healthy: true,
                        // The spec the task runs (`--dns`): its own resolvers.
                        nameservers: t
                            .spec
                            .as_deref()
                            .unwrap_or(&s.spec)
                            .container
                            .dns
                            .nameservers
                            .iter()
                            .filter_map(|n| n.parse().ok())
                            .collect(),
                        addresses: addresses(t)
                            .into_iter()
                            .map(|(n, ip)| dns::NetAddr {
                                network: n,
                                ip: ip.into(),
                            })
                            .collect(),
                    })
                    .filter(|t| !t.addresses.is_empty())
                    .collect(),
            });
        }
        let ingress_name = ingress.map(|n| n.name.clone());
        let mut required: Vec<String> = vips.iter().map(|(n, _)| n.clone()).collect();
        if publishes {
            required.extend(ingress_name.iter().cloned());
        }
        if !required.iter().all(|r| declared.contains(r)) {
            continue;
        }
        let backends = running
            .iter()
            .filter_map(|t| {
                let node = vtep(state, t.node_id.as_deref()?)?;
                let addresses: BTreeMap<String, Ipv4Addr> = addresses(t).into_iter().collect();
                if !required.iter().all(|r| addresses.contains_key(r)) {
                    return None;
                }
                Some(lb::Backend {
                    task: t.id.clone(),
                    node,
                    addresses,
                    state: if t.desired_state == TaskState::Running {
                        lb::BackendState::Healthy
                    } else {
                        lb::BackendState::Draining
                    },
                })
            })
            .collect();
        lb_services.push(lb::Service {
            id: s.id.clone(),
            name: s.spec.name.clone(),
            endpoint_mode: match endpoint_mode {
                store::EndpointMode::Vip => lb::EndpointMode::Vip,
                store::EndpointMode::Dnsrr => lb::EndpointMode::Dnsrr,
            },
            balance: lb::Balance::default(),
            vips: match endpoint_mode {
                store::EndpointMode::Vip => vips
                    .iter()
                    .map(|(n, ip)| lb::Vip {
                        network: n.clone(),
                        address: *ip,
                    })
                    .collect(),
                store::EndpointMode::Dnsrr => Vec::new(),
            },
            ports: s
                .spec
                .ports
                .iter()
                .map(|p| lb::PublishedPort {
                    protocol: lb_protocol(p.protocol),
                    published: p.published,
                    target: p.target,
                    mode: match p.mode {
                        PublishMode::Ingress => lb::PublishMode::Ingress,
                        PublishMode::Host => lb::PublishMode::Host,
                    },
                    balance: Some(match p.balance() {
                        store::PortBalance::Maglev => lb::Balance::Maglev,
                        store::PortBalance::Roundrobin => lb::Balance::RoundRobin,
                    }),
                })
                .collect(),
            backends,
        });
    }
    let ingress_network = match (ingress, any_ingress_port) {
        (Some(n), true) if declared.contains(&n.name) => Some(n.name.clone()),
        _ => None,
    };

    NodeState {
        overlay: overlay::OverlayState {
            networks,
            local_endpoints,
            remote_endpoints,
        },
        dns: dns::DnsState {
            containers: attached_containers(state, &local_nets, &dns_services, attached_reported),
            services: dns_services,
        },
        lb: lb::LbState {
            ingress_network,
            services: lb_services,
        },
        data_path_port: state
            .cluster
            .as_ref()
            .map(|c| c.data_path_port)
            .filter(|p| *p != 0),
        data_path_addr: match state.nodes.get(node_id).and_then(|n| n.data_path_addr) {
            Some(IpAddr::V4(v4)) => Some(v4),
            _ => None,
        },
        cluster_vteps: state.nodes.keys().filter_map(|n| vtep(state, n)).collect(),
        wireguard_peers: state
            .nodes
            .iter()
            .filter(|(id, _)| id.as_str() != node_id)
            .filter_map(|(id, n)| {
                let key = n.gossip.as_ref()?.wireguard.clone()?;
                Some((vtep(state, id)?, key))
            })
            .collect(),
        wireguard_rotation: state
            .nodes
            .get(node_id)
            .map_or(0, |n| u64::from(n.wireguard_rotation)),
        task_containers,
        address_conflicts,
    }
}

/// The DNS records of attached containers on the networks present here (`reported`:
/// whether one counts yet), one per container name: the same name on two nodes answers
/// with both addresses. A name or alias the resolver would refuse, or that could be a
/// task's name (`<service>.`...), is left out rather than have the whole state refused.
fn attached_containers(
    state: &ClusterState,
    local_nets: &BTreeSet<String>,
    services: &[dns::Service],
    reported: impl Fn(&store::ContainerAttachment) -> bool,
) -> Vec<dns::Container> {
    let clashes = |name: &str| {
        let name = name.to_ascii_lowercase();
        !dns::valid_name(&name)
            || services.iter().any(|s| {
                let service = s.name.to_ascii_lowercase();
                name == service || name.starts_with(&format!("{service}."))
            })
    };
    let mut by_name: BTreeMap<String, dns::Container> = BTreeMap::new();
    for a in state.attachments.values() {
        if !local_nets.contains(&a.network_id) || !reported(a) || clashes(&a.container_name) {
            continue;
        }
        let (Some(addr), Some(network)) = (a.addr, state.networks.get(&a.network_id)) else {
            continue;
        };
        let c = by_name
            .entry(a.container_name.clone())
            .or_insert_with(|| dns::Container {
                name: a.container_name.clone(),
                addresses: Vec::new(),
                aliases: Vec::new(),
            });
        c.addresses.push(dns::NetAddr {
            network: network.name.clone(),
            ip: addr.addr().into(),
        });
        for alias in a.aliases.iter().filter(|alias| !clashes(alias)) {
            let alias = dns::NetAlias {
                network: network.name.clone(),
                alias: alias.clone(),
            };
            if !c.aliases.contains(&alias) {
                c.aliases.push(alias);
            }
        }
    }
    by_name.into_values().collect()
}

/// Tasks on other nodes that the store has running on one of `networks` (store IDs), on
/// a Ready node, and that the gossip `table` does not list yet: peers a task starting
/// here now would not find (no remote endpoint, backend or record), because the news of
/// them has not reached this node.
pub fn unheard_peers(
    state: &ClusterState,
    node_id: &str,
    networks: &BTreeSet<String>,
    table: &shoal_gossip::EndpointTable,
) -> Vec<String> {
    let gossiped: BTreeSet<(String, String)> = table
        .iter()
        .filter_map(|e| Some((e.node.to_string(), e.endpoint.task?)))
        .collect();
    state
        .tasks
        .values()
        .filter(|t| t.status.state == TaskState::Running)
        .filter(|t| t.node_id.as_deref().is_some_and(|n| n != node_id))
        .filter(|t| node_ready(state, t.node_id.as_ref()))
        .filter(|t| t.networks.iter().any(|a| networks.contains(&a.network_id)))
        .filter(|t| {
            let node = t.node_id.clone().unwrap_or_default();
            !gossiped.contains(&(node, t.id.clone()))
        })
        .map(|t| t.id.clone())
        .collect()
}

/// Writes `value` as JSON to `path` atomically (temporary file, then rename), only if
/// the content differs from what is there. Returns whether it wrote.
pub fn write_if_changed<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<bool> {
    let mut body = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    body.push(b'\n');
    if fs::read(path).ok().as_deref() == Some(body.as_slice()) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        shoal_cluster::private_fs::create_dir(dir)?;
    }
    // Renamed into place: a reader sees the old file or the new one, never half. No
    // fsync: the state is computed again from the store after a crash. Owner-only, like
    // everything in the agent's data directory.
    shoal_cluster::private_fs::write_atomic(path, &body, false)?;
    Ok(true)
}

impl From<NodeState> for shoal_dataplane::reconcile::DeclaredNode {
    /// The node's declared state as the pipeline takes it (containers are the
    /// pipeline's to find).
    fn from(ns: NodeState) -> Self {
        Self {
            overlay: ns.overlay,
            dns: Some(ns.dns),
            lb: Some(ns.lb),
            data_path_port: ns.data_path_port,
            data_path_addr: ns.data_path_addr,
            cluster_vteps: Some(ns.cluster_vteps),
            wireguard_peers: Some(ns.wireguard_peers),
            wireguard_rotation: ns.wireguard_rotation,
            task_containers: ns.task_containers,
            containers: Default::default(),
            version: 0,
            store_version: 0,
        }
    }
}

#[cfg(test)]
mod tests;
