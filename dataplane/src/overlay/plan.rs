//! From declared state to kernel ops, without touching the kernel.
//!
//! [`desired`] turns a validated [`OverlayState`] plus what the node knows (its VTEP,
//! underlay MTU, and where each running container's namespace is) into the
//! [`KernelState`] that should exist. [`diff`] compares it with what is applied and
//! returns the ops that close the gap, touching nothing that is already right: a change
//! of one endpoint yields only that endpoint's ops.
use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use super::{
    model::{AttachmentSpec, KernelState, NetworkObjects, NetworkSpec, Op, RemoteEntry},
    state::{overlay_mtu, Mac, Network, OverlayState},
};

/// What the node itself contributes to every network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeParams {
    pub vtep: Ipv4Addr,
    pub underlay_interface: String,
    pub underlay_mtu: u32,
    /// VXLAN UDP port (Swarm's `--data-path-port`).
    pub port: u16,
}

/// Where a running container's network namespace is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerNetns {
    pub path: PathBuf,
    /// [`super::netns::identity`] of the namespace.
    pub id: u64,
}

/// The desired kernel state, plus the namespace path of every attachment (paths are
/// how to reach a container now, not part of what is compared).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub kernel: KernelState,
    pub netns_paths: BTreeMap<String, PathBuf>,
    /// Declared containers that are not running here now (skipped until they are).
    pub absent_containers: Vec<String>,
}

/// Name of the bridge-side veth of `container` on network `vni`: stable across
/// restarts of the container and unique within the network's namespace.
pub fn veth_name(container: &str) -> String {
    // FNV-1a: tiny, stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in container.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("ve{h:08x}")
}

/// Builds the desired kernel state. `state` must have passed `validate()`.
/// `netns_of` says where a declared container's namespace is, or None if it is not
/// running here. A network exists on the node only while a running local container is
/// attached to it (remote endpoints alone do not make one).
pub fn desired(
    state: &OverlayState,
    node: &NodeParams,
    netns_of: impl FnMut(&str) -> Option<ContainerNetns>,
) -> Desired {
    desired_keeping(state, node, netns_of, &[])
}

/// [`desired`], with the declared networks named in `kept` made on the node even while
/// no running local container is attached to them. The ingress network is one: the
/// routing mesh's replies leave through its namespace, and a node whose only ingress
/// task is replaced (a node back from Down gets a new task, as in Swarm) would
/// otherwise lose the namespace, its reply path and its DNS between the old task's stop
/// and the new one's start.
pub fn desired_keeping(
    state: &OverlayState,
    node: &NodeParams,
    mut netns_of: impl FnMut(&str) -> Option<ContainerNetns>,
    kept: &[String],
) -> Desired {
    let mut out = Desired::default();
    for (container, endpoints) in state.containers() {
        let Some(ns) = netns_of(container) else {
            out.absent_containers.push(container.to_owned());
            continue;
        };
        for (index, ep) in endpoints.iter().enumerate() {
            let Some(net) = state.network(&ep.network) else {
                continue; // validate() rules this out
            };
            let mtu = overlay_mtu(net, node.underlay_mtu);
            let objects = out
                .kernel
                .networks
                .entry(net.vni)
                .or_insert_with(|| network_objects(net, node));
            let veth = veth_name(container);
            objects.attachments.insert(
                veth.clone(),
                AttachmentSpec {
                    container: container.to_owned(),
                    netns_id: ns.id,
                    ifname: format!("eth{index}"),
                    ip: ep.ip,
                    prefix_len: net.subnet.prefix_len(),
                    mac: ep.mac.unwrap_or_else(|| Mac::from_ip(ep.ip)),
                    default_gateway: (index == 0).then_some(net.gateway),
                    mtu,
                },
            );
            out.netns_paths
                .insert(attachment_key(net.vni, &veth), ns.path.clone());
        }
    }
    for name in kept {
        if let Some(net) = state.network(name) {
            out.kernel
                .networks
                .entry(net.vni)
                .or_insert_with(|| network_objects(net, node));
        }
    }
    for r in &state.remote_endpoints {
        let Some(net) = state.network(&r.network) else {
            continue;
        };
        if let Some(objects) = out.kernel.networks.get_mut(&net.vni) {
            objects.remotes.insert(
                r.ip,
                RemoteEntry {
                    mac: r.mac.unwrap_or_else(|| Mac::from_ip(r.ip)),
                    vtep: r.vtep,
                },
            );
        }
    }
    out
}

/// A network's devices on this node, with nothing attached yet.
fn network_objects(net: &Network, node: &NodeParams) -> NetworkObjects {
    NetworkObjects {
        spec: NetworkSpec {
            vni: net.vni,
            gateway: net.gateway,
            prefix_len: net.subnet.prefix_len(),
            mtu: overlay_mtu(net, node.underlay_mtu),
            port: node.port,
            vtep: node.vtep,
            // An encrypted network's VXLAN traffic goes through the WireGuard device
            // (its socket lives in that namespace).
            underlay_interface: if net.encrypted {
                crate::wireguard::IFNAME.to_owned()
            } else {
                node.underlay_interface.clone()
            },
        },
        remotes: BTreeMap::new(),
        attachments: BTreeMap::new(),
    }
}

fn attachment_key(vni: u32, veth: &str) -> String {
    format!("{vni}/{veth}")
}

/// The ops that turn `applied` into `desired.kernel`, in a safe order: removals first
/// (so an address or MAC moving between endpoints never collides), then networks,
/// attachments and remote entries.
pub fn diff(desired: &Desired, applied: &KernelState) -> Vec<Op> {
    let mut removals = Vec::new();
    let mut additions = Vec::new();
    for (vni, have) in &applied.networks {
        match desired.kernel.networks.get(vni) {
            None => removals.push(Op::DeleteNetwork { vni: *vni }),
            Some(want) if want.spec != have.spec => {
                // Devices made with other parameters: make them again, with everything
                // that hangs off them.
                removals.push(Op::DeleteNetwork { vni: *vni });
                additions.extend(create_all(desired, want));
            }
            Some(want) => {
                for (ip, entry) in &have.remotes {
                    if want.remotes.get(ip) != Some(entry) {
                        removals.push(Op::DeleteRemote {
                            vni: *vni,
                            ip: *ip,
                            entry: *entry,
                        });
                    }
                }
                for (veth, spec) in &have.attachments {
                    if want.attachments.get(veth) != Some(spec) {
                        removals.push(Op::Detach {
                            vni: *vni,
                            veth_name: veth.clone(),
                        });
                    }
                }
                for (veth, spec) in &want.attachments {
                    if have.attachments.get(veth) != Some(spec) {
                        additions.push(attach_op(desired, *vni, veth, spec));
                    }
                }
                for (ip, entry) in &want.remotes {
                    if have.remotes.get(ip) != Some(entry) {
                        additions.push(Op::AddRemote {
                            vni: *vni,
                            ip: *ip,
                            entry: *entry,
                        });
                    }
                }
            }
        }
    }
    for (vni, want) in &desired.kernel.networks {
        if !applied.networks.contains_key(vni) {
            additions.extend(create_all(desired, want));
        }
    }
    removals.extend(additions);
    removals
}

/// The containers whose every desired attachment `applied` holds exactly (on a network
/// made as desired), by name, with the identity of their namespace: the ones whose
/// interfaces, addresses and routes are in place.
pub fn attached(desired: &KernelState, applied: &KernelState) -> BTreeMap<String, u64> {
    let mut all: BTreeMap<&str, (u64, bool)> = BTreeMap::new();
    for (vni, want) in &desired.networks {
        let have = applied.networks.get(vni).filter(|h| h.spec == want.spec);
        for (veth, spec) in &want.attachments {
            let made = have.is_some_and(|h| h.attachments.get(veth) == Some(spec));
            let entry = all.entry(&spec.container).or_insert((spec.netns_id, true));
            entry.1 &= made && entry.0 == spec.netns_id;
        }
    }
    all.into_iter()
        .filter(|(_, (_, made))| *made)
        .map(|(name, (id, _))| (name.to_owned(), id))
        .collect()
}

fn create_all(desired: &Desired, want: &NetworkObjects) -> Vec<Op> {
    let vni = want.spec.vni;
    let mut ops = vec![Op::CreateNetwork(want.spec.clone())];
    ops.extend(
        want.attachments
            .iter()
            .map(|(veth, spec)| attach_op(desired, vni, veth, spec)),
    );
    ops.extend(want.remotes.iter().map(|(ip, entry)| Op::AddRemote {
        vni,
        ip: *ip,
        entry: *entry,
    }));
    ops
}

fn attach_op(desired: &Desired, vni: u32, veth: &str, spec: &AttachmentSpec) -> Op {
    Op::Attach {
        vni,
        veth_name: veth.to_owned(),
        spec: spec.clone(),
        netns_path: desired
            .netns_paths
            .get(&attachment_key(vni, veth))
            .cloned()
            .unwrap_or_default(),
    }
}

/// Updates `applied` as if `op` had succeeded, so the reconciler's record of the kernel
/// stays exact without reading it back after every change.
pub fn record(applied: &mut KernelState, op: &Op) {
    match op {
        Op::CreateNetwork(spec) => {
            applied.networks.insert(
                spec.vni,
                NetworkObjects {
                    spec: spec.clone(),
                    remotes: BTreeMap::new(),
                    attachments: BTreeMap::new(),
                },
            );
        }
        Op::DeleteNetwork { vni } => {
            applied.networks.remove(vni);
        }
        Op::AddRemote { vni, ip, entry } => {
            if let Some(n) = applied.networks.get_mut(vni) {
                n.remotes.insert(*ip, *entry);
            }
        }
        Op::DeleteRemote { vni, ip, .. } => {
            if let Some(n) = applied.networks.get_mut(vni) {
                n.remotes.remove(ip);
            }
        }
        Op::Attach {
            vni,
            veth_name,
            spec,
            ..
        } => {
            if let Some(n) = applied.networks.get_mut(vni) {
                n.attachments.insert(veth_name.clone(), spec.clone());
            }
        }
        Op::Detach { vni, veth_name } => {
            if let Some(n) = applied.networks.get_mut(vni) {
                n.attachments.remove(veth_name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::state::{LocalEndpoint, Network, RemoteEndpoint};

    fn node() -> NodeParams {
        NodeParams {
            vtep: "192.168.77.11".parse().unwrap(),
            underlay_interface: "eth0".into(),
            underlay_mtu: 1500,
            port: 4789,
        }
    }

    fn net(id: &str, vni: u32, subnet: &str, gw: &str) -> Network {
        Network {
            id: id.into(),
            vni,
            subnet: subnet.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            mtu: None,
            encrypted: false,
        }
    }

    fn local(network: &str, container: &str, ip: &str) -> LocalEndpoint {
        LocalEndpoint {
            network: network.into(),
            container: container.into(),
            ip: ip.parse().unwrap(),
            mac: None,
        }
    }

    fn remote(network: &str, ip: &str, vtep: &str) -> RemoteEndpoint {
        RemoteEndpoint {
            network: network.into(),
            ip: ip.parse().unwrap(),
            mac: None,
            vtep: vtep.parse().unwrap(),
        }
    }

    fn running(c: &str) -> Option<ContainerNetns> {
        Some(ContainerNetns {
            path: format!("/proc/{}/ns/net", c.len()).into(),
            id: 1000 + c.len() as u64,
        })
    }

    fn base() -> OverlayState {
        OverlayState {
            networks: vec![
                net("web", 4097, "10.0.9.0/24", "10.0.9.1"),
                net("db", 4098, "10.0.10.0/24", "10.0.10.1"),
            ],
            local_endpoints: vec![local("web", "c1", "10.0.9.2")],
            remote_endpoints: vec![
                remote("web", "10.0.9.3", "192.168.77.12"),
                remote("web", "10.0.9.4", "192.168.77.13"),
                remote("db", "10.0.10.3", "192.168.77.12"),
            ],
        }
    }

    /// Applies `ops` to `applied` as the kernel would, for checking convergence.
    fn run(applied: &mut KernelState, ops: &[Op]) {
        for op in ops {
            record(applied, op);
        }
    }

    /// Diffs and applies: `applied` becomes `d.kernel`.
    fn converge(applied: &mut KernelState, d: &Desired) {
        let ops = diff(d, applied);
        run(applied, &ops);
    }

    #[test]
    fn networks_exist_only_with_a_running_local_container() {
        let s = base();
        s.validate().unwrap();
        let d = desired(&s, &node(), running);
        assert_eq!(
            d.kernel.networks.keys().copied().collect::<Vec<_>>(),
            vec![4097]
        );
        let web = &d.kernel.networks[&4097];
        assert_eq!(
            web.remotes.len(),
            2,
            "db's remote must not appear: no local endpoint"
        );
        assert_eq!(web.spec.mtu, 1450);
        let att = &web.attachments[&veth_name("c1")];
        assert_eq!(att.ifname, "eth0");
        assert_eq!(att.default_gateway, Some("10.0.9.1".parse().unwrap()));
        assert_eq!(att.mac.to_string(), "02:42:0a:00:09:02");

        let d = desired(&s, &node(), |_| None);
        assert!(
            d.kernel.networks.is_empty(),
            "no running container: no network"
        );
        assert_eq!(d.absent_containers, vec!["c1".to_string()]);
    }

    #[test]
    fn from_nothing_creates_then_attaches_then_adds_remotes() {
        let d = desired(&base(), &node(), running);
        let ops = diff(&d, &KernelState::default());
        assert!(matches!(ops[0], Op::CreateNetwork(ref s) if s.vni == 4097));
        assert!(
            matches!(ops[1], Op::Attach { ref netns_path, .. } if netns_path.to_str() == Some("/proc/2/ns/net"))
        );
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::AddRemote { .. }))
                .count(),
            2
        );
        assert_eq!(ops.len(), 4);
    }

    #[test]
    fn same_state_twice_changes_nothing() {
        let d = desired(&base(), &node(), running);
        let mut applied = KernelState::default();
        converge(&mut applied, &d);
        assert_eq!(applied, d.kernel);
        assert_eq!(diff(&d, &applied), vec![]);
    }

    #[test]
    fn one_endpoint_change_touches_only_its_entries() {
        let mut s = base();
        for i in 10..250 {
            s.remote_endpoints
                .push(remote("web", &format!("10.0.9.{i}"), "192.168.77.12"));
        }
        let d = desired(&s, &node(), running);
        let mut applied = KernelState::default();
        converge(&mut applied, &d);

        // One endpoint moves to another node: one delete, one add, nothing else.
        let moved = s
            .remote_endpoints
            .iter_mut()
            .find(|r| r.ip.to_string() == "10.0.9.77")
            .unwrap();
        moved.vtep = "192.168.77.13".parse().unwrap();
        let d2 = desired(&s, &node(), running);
        let ops = diff(&d2, &applied);
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(matches!(ops[0], Op::DeleteRemote { ip, .. } if ip.to_string() == "10.0.9.77"));
        assert!(
            matches!(ops[1], Op::AddRemote { ip, entry, .. } if ip.to_string() == "10.0.9.77" && entry.vtep.to_string() == "192.168.77.13")
        );

        // One endpoint leaves.
        s.remote_endpoints
            .retain(|r| r.ip.to_string() != "10.0.9.78");
        let ops = diff(&desired(&s, &node(), running), &applied);
        assert_eq!(
            ops.len(),
            3,
            "move (delete + add) and leave (delete), each only its own: {ops:?}"
        );
    }

    #[test]
    fn restarted_container_is_attached_again() {
        let s = base();
        let d = desired(&s, &node(), running);
        let mut applied = KernelState::default();
        converge(&mut applied, &d);
        let restarted = |c: &str| {
            Some(ContainerNetns {
                path: "/proc/999/ns/net".into(),
                id: 5555 + c.len() as u64,
            })
        };
        let ops = diff(&desired(&s, &node(), restarted), &applied);
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(matches!(ops[0], Op::Detach { .. }));
        assert!(
            matches!(ops[1], Op::Attach { ref netns_path, .. } if netns_path.to_str() == Some("/proc/999/ns/net"))
        );
    }

    #[test]
    fn last_endpoint_leaving_removes_the_network() {
        let mut s = base();
        let mut applied = KernelState::default();
        converge(&mut applied, &desired(&s, &node(), running));
        s.local_endpoints.clear();
        let ops = diff(&desired(&s, &node(), running), &applied);
        assert_eq!(ops, vec![Op::DeleteNetwork { vni: 4097 }]);
    }

    #[test]
    fn a_kept_network_stays_without_a_local_endpoint_and_gets_its_remotes() {
        let mut s = base();
        let mut applied = KernelState::default();
        let kept = ["web".to_string()];
        converge(&mut applied, &desired_keeping(&s, &node(), running, &kept));
        s.local_endpoints.clear();
        let d = desired_keeping(&s, &node(), running, &kept);
        let net = &d.kernel.networks[&4097];
        assert!(net.attachments.is_empty());
        assert_eq!(net.remotes.len(), 2, "web's remote endpoints");
        let ops = diff(&d, &applied);
        assert!(
            ops.iter().all(|op| matches!(op, Op::Detach { .. })),
            "only the endpoint goes, not the network: {ops:?}"
        );
        // Not kept any more: it goes as any network with no local endpoint.
        run(&mut applied, &ops);
        let ops = diff(&desired_keeping(&s, &node(), running, &[]), &applied);
        assert_eq!(ops, vec![Op::DeleteNetwork { vni: 4097 }]);
        // A kept name that is not declared makes nothing.
        let d = desired_keeping(&s, &node(), running, &["nowhere".to_string()]);
        assert!(d.kernel.networks.is_empty());
    }

    #[test]
    fn changed_network_parameters_rebuild_the_network() {
        let mut s = base();
        let mut applied = KernelState::default();
        converge(&mut applied, &desired(&s, &node(), running));
        s.networks[0].mtu = Some(1400);
        let d = desired(&s, &node(), running);
        let ops = diff(&d, &applied);
        assert_eq!(ops[0], Op::DeleteNetwork { vni: 4097 });
        assert!(matches!(ops[1], Op::CreateNetwork(ref spec) if spec.mtu == 1400));
        run(&mut applied, &ops);
        assert_eq!(applied, d.kernel);
    }

    #[test]
    fn second_network_gives_eth1_without_default_route() {
        let mut s = base();
        s.local_endpoints.push(local("db", "c1", "10.0.10.2"));
        let d = desired(&s, &node(), running);
        let db = &d.kernel.networks[&4098].attachments[&veth_name("c1")];
        assert_eq!(db.ifname, "eth1");
        assert_eq!(db.default_gateway, None);
        assert_eq!(d.kernel.networks[&4098].remotes.len(), 1);
    }

    #[test]
    fn a_container_is_attached_once_all_its_endpoints_are() {
        let mut s = base();
        s.local_endpoints.push(local("db", "c1", "10.0.10.2"));
        s.local_endpoints.push(local("web", "c22", "10.0.9.5"));
        let d = desired(&s, &node(), running);
        let mut applied = KernelState::default();
        assert!(attached(&d.kernel, &applied).is_empty());

        // Everything but c1's second network.
        let ops = diff(&d, &applied);
        let partial: Vec<Op> = ops
            .into_iter()
            .filter(|o| !matches!(o, Op::Attach { vni: 4098, .. }))
            .collect();
        run(&mut applied, &partial);
        assert_eq!(
            attached(&d.kernel, &applied),
            BTreeMap::from([("c22".to_owned(), 1003)]),
            "c1 lacks db"
        );

        converge(&mut applied, &d);
        assert_eq!(
            attached(&d.kernel, &applied),
            BTreeMap::from([("c1".to_owned(), 1002), ("c22".to_owned(), 1003)])
        );

        // c1 restarted: a new namespace is not attached until it is made again.
        let d2 = desired(&s, &node(), |c| {
            running(c).map(|mut ns| {
                ns.id += 100;
                ns
            })
        });
        assert!(attached(&d2.kernel, &applied).is_empty());
    }

    #[test]
    fn veth_names_fit_and_are_stable() {
        let n = veth_name("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        assert!(n.len() <= 15);
        assert_eq!(
            n,
            veth_name("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert_ne!(veth_name("a"), veth_name("b"));
    }
}
