//! The overlay as the kernel holds it, in the reconciler's terms, and the operations
//! that change it. The reconciler diffs two [`KernelState`]s (desired and applied) into
//! [`Op`]s; an [`OverlayKernel`] carries them out and can read the state back.
//!
//! Per network on a node (Swarm's layout): a network namespace of its own holding a
//! bridge with the gateway address and a VXLAN device (created in the node's namespace,
//! so its UDP socket stays on the underlay, then moved in). Containers hang off the
//! bridge by veth pairs. Everything inside those namespaces is the agent's, which is
//! how a restarted agent knows what it owns.
use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use super::state::Mac;

/// One network's devices on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    pub vni: u32,
    /// Gateway address and prefix length, held by the bridge.
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    /// MTU of the bridge, the VXLAN device and every veth.
    pub mtu: u32,
    /// UDP destination port of the VXLAN device.
    pub port: u16,
    /// This node's underlay address (VXLAN source address).
    pub vtep: Ipv4Addr,
    /// Underlay interface the VXLAN device sends through; for an encrypted network the
    /// WireGuard device's ([`crate::wireguard::IFNAME`]): its VXLAN device has no lower
    /// device and its UDP socket lives in the WireGuard namespace.
    pub underlay_interface: String,
}

impl NetworkSpec {
    /// Whether the network's VXLAN traffic goes through the WireGuard device.
    pub fn encrypted(&self) -> bool {
        self.underlay_interface == crate::wireguard::IFNAME
    }
}

/// The FDB (MAC -> VTEP) and neighbour (IP -> MAC) entries of one remote endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteEntry {
    pub mac: Mac,
    pub vtep: Ipv4Addr,
}

/// One container attached to one network: a veth whose bridge end is named
/// `veth_name` in the network's namespace and whose other end is `ifname` in the
/// container's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentSpec {
    pub container: String,
    /// Identity of the container's network namespace ([`super::netns::identity`]). A
    /// restarted container has a new one, so its attachment differs and is made again.
    pub netns_id: u64,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: Mac,
    /// The container's first network only: this gateway is the way out for traffic from
    /// its address on the network (policy routing; the default route is egress's).
    pub default_gateway: Option<Ipv4Addr>,
    pub mtu: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkObjects {
    pub spec: NetworkSpec,
    /// Remote endpoints by IP.
    pub remotes: BTreeMap<Ipv4Addr, RemoteEntry>,
    /// Attachments by bridge-side veth name.
    pub attachments: BTreeMap<String, AttachmentSpec>,
}

/// Every overlay network on the node, by VNI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    pub networks: BTreeMap<u32, NetworkObjects>,
}

/// One change to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the network's namespace, bridge (with the gateway address) and VXLAN
    /// device (learning off, ARP proxy on), all up.
    CreateNetwork(NetworkSpec),
    /// Remove the network's namespace and with it every device, entry and veth in it.
    DeleteNetwork { vni: u32 },
    /// Permanent FDB entry `mac -> vtep` and permanent neighbour entry `ip -> mac`
    /// on the network's VXLAN device.
    AddRemote {
        vni: u32,
        ip: Ipv4Addr,
        entry: RemoteEntry,
    },
    /// Remove exactly the entries `AddRemote` made.
    DeleteRemote {
        vni: u32,
        ip: Ipv4Addr,
        entry: RemoteEntry,
    },
    /// Create the veth pair: `veth_name` on the bridge in the network's namespace,
    /// `spec.ifname` in the container's namespace (at `netns_path`) with the MAC,
    /// address, MTU and (first network) the routes back through it. If the container vanishes midway,
    /// nothing is left behind and the op fails with [`KernelError::ContainerGone`].
    Attach {
        vni: u32,
        veth_name: String,
        spec: AttachmentSpec,
        netns_path: PathBuf,
    },
    /// Remove the veth pair (gone already is fine: a dead container takes it along).
    Detach { vni: u32, veth_name: String },
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("container {container}'s network namespace is gone")]
    ContainerGone { container: String },
    #[error("network with VNI {vni} does not exist on this node")]
    NoSuchNetwork { vni: u32 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Netlink { what: String, message: String },
}

/// Carries out [`Op`]s and reads back what exists.
pub trait OverlayKernel {
    /// Reads every overlay network this agent owns from the kernel.
    fn snapshot(&mut self) -> Result<KernelState, KernelError>;
    /// Applies one op.
    fn apply(&mut self, op: &Op) -> Result<(), KernelError>;
}
