//! [`NetlinkKernel`]: the [`OverlayKernel`] that makes the real kernel objects, over
//! rtnetlink, and reads them back.
//!
//! Layout per network (VNI `n`), all inside the network namespace pinned at
//! `<netns_dir>/vni-<n>`:
//! - `lo` up;
//! - bridge `br0` with the network's MTU and the gateway address, up;
//! - VXLAN device `vxlan0` (id `n`, local = the node's VTEP, dev = the underlay
//!   interface, dstport, `nolearning`, `proxy`, the network's MTU), enslaved to `br0`,
//!   up. It is created by a socket in the *host* namespace with `IFLA_NET_NS_FD`
//!   naming the network namespace, so it is born inside the network namespace while
//!   its UDP socket and underlay device stay in the host namespace (what
//!   `ip link add vxlan0 netns <ns> type vxlan ...` does). No temporary device ever
//!   exists in the host namespace, so a crash cannot leave one behind there;
//! - per remote endpoint: a permanent FDB entry `mac -> vtep` (NTF_SELF) and a
//!   permanent neighbour entry `ip -> mac` on `vxlan0`;
//! - per attachment: a veth whose bridge end `<veth_name>` is on `br0` and whose other
//!   end is in the container's namespace. The bridge end's alias records the
//!   [`AttachmentSpec`](super::model::AttachmentSpec) (see `alias.rs`) and is written
//!   last, once everything else succeeded: a veth without a readable alias is a
//!   half-made attachment.
//!
//! What a snapshot reports for half-made or damaged state (always something the planner
//! will redo or remove, never something that could equal a desired state by accident):
//! - a pin that is not a usable namespace, or a namespace whose `br0`/`vxlan0` is
//!   missing or not as made (learning on, proxy off, down, not enslaved, MTUs that
//!   disagree, other than exactly one address on `br0`, VNI other than the pin's):
//!   the network with `mtu: 0` (fields that could be read are filled in, the rest zero)
//!   and no remotes or attachments; the planner deletes and recreates it;
//! - a permanent neighbour entry whose MAC has no FDB entry with exactly one IPv4
//!   destination: the remote with `vtep: 0.0.0.0`; the planner deletes it (that removes
//!   the neighbour entry and every FDB destination of the MAC) or re-adds it;
//! - an FDB entry whose MAC no neighbour entry names: not reported (the model keys
//!   remotes by IP, so it cannot be expressed). Our own ops never leave one behind (see
//!   the ordering below); a stray one only steers frames for that MAC, and the next
//!   `AddRemote` for the MAC replaces it;
//! - a veth without a readable alias: an attachment under its name with an empty spec
//!   (`mtu: 0`); one whose alias reads but that is not on `br0`, down, or with another
//!   MTU: the recorded spec with `mtu: 0`. The planner detaches (and re-attaches) it.
//!
//! Ordering inside ops keeps a crash at any point representable: `AddRemote` writes the
//! neighbour entry before the FDB entry and `DeleteRemote` removes the FDB entry before
//! the neighbour entry, so an interrupted op leaves at worst a neighbour entry without
//! FDB entry (reported with `vtep: 0.0.0.0`).
//!
//! Re-applying an op is harmless: entries are written with replace semantics, an
//! `Attach` whose veth is already complete (same record, on `br0`, up, same MTU) is left
//! alone, deletes of what is gone succeed. `DeleteNetwork` deletes the namespace's
//! devices one by one before unpinning it, so the containers' ends of the veths and the
//! VNI are gone when it returns (namespace teardown itself is asynchronous).
//!
//! The public methods are synchronous: a tokio current-thread runtime inside drives the
//! connections. Do not call them from inside another tokio runtime's worker (use
//! `spawn_blocking`).
mod alias;
mod attach;
mod conns;
mod network;
pub(crate) mod nl;
mod remote;
mod snapshot;

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
};

use tokio::runtime::Runtime;

use self::nl::{Conn, NlError};
use super::model::{KernelError, KernelState, Op, OverlayKernel};

/// Name of the bridge in every network namespace.
pub const BRIDGE: &str = "br0";
/// Name of the VXLAN device in every network namespace.
pub const VXLAN: &str = "vxlan0";
/// Pin file name prefix: `<netns_dir>/vni-<vni>`.
pub const PIN_PREFIX: &str = "vni-";
/// Routing table, in a container's namespace, holding its first network's gateway as
/// the default route for traffic from its address on that network (`attach.rs`).
pub const FIRST_NETWORK_TABLE: u32 = 100;
/// Priority of the rule that takes the main table's routes other than its default one.
pub const RULE_PREF_MAIN: u32 = 1000;
/// Priority of the rule from the first network's address to [`FIRST_NETWORK_TABLE`].
pub const RULE_PREF_FIRST_NETWORK: u32 = 1001;
/// Priority of the rules, made by the egress reconciler, that send UDP from a published
/// port's target port to [`FIRST_NETWORK_TABLE`]: the replies of a server whose socket
/// is bound to no address, whose source the kernel picks from the route.
pub const RULE_PREF_UDP_REPLIES: u32 = 1002;

/// The pin path of network `vni` under `netns_dir`.
pub fn pin_path(netns_dir: &Path, vni: u32) -> PathBuf {
    netns_dir.join(format!("{PIN_PREFIX}{vni}"))
}

/// The real overlay kernel. See the module docs for the layout it makes.
pub struct NetlinkKernel {
    rt: Runtime,
    host_netns: Option<PathBuf>,
    netns_dir: PathBuf,
    host: Option<Conn>,
    nets: HashMap<u32, NetConn>,
}

/// A cached connection into one network namespace.
struct NetConn {
    conn: Conn,
    /// Inode of the pin it was made for: a pin replaced behind our back is noticed.
    inode: u64,
    bridge: Option<u32>,
    vxlan: Option<u32>,
}

fn io_err(what: impl Into<String>, source: io::Error) -> KernelError {
    KernelError::Io {
        what: what.into(),
        source,
    }
}

fn nl_err(what: impl Into<String>, e: NlError) -> KernelError {
    KernelError::Netlink {
        what: what.into(),
        message: e.to_string(),
    }
}

fn invalid(what: impl Into<String>, message: String) -> KernelError {
    io_err(what, io::Error::new(io::ErrorKind::InvalidInput, message))
}

impl NetlinkKernel {
    /// `host_netns`: the namespace that holds the underlay interface (None: the
    /// caller's). `netns_dir`: where each network's namespace is pinned (created here).
    pub fn new(host_netns: Option<PathBuf>, netns_dir: PathBuf) -> Result<Self, KernelError> {
        fs::create_dir_all(&netns_dir)
            .map_err(|e| io_err(format!("create {}", netns_dir.display()), e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| io_err("start the netlink runtime", e))?;
        let mut k = NetlinkKernel {
            rt,
            host_netns,
            netns_dir,
            host: None,
            nets: HashMap::new(),
        };
        k.host()?;
        Ok(k)
    }

    /// Where network `vni`'s namespace is pinned.
    pub fn netns_path(&self, vni: u32) -> PathBuf {
        pin_path(&self.netns_dir, vni)
    }

    pub fn netns_dir(&self) -> &Path {
        &self.netns_dir
    }
}

impl OverlayKernel for NetlinkKernel {
    fn snapshot(&mut self) -> Result<KernelState, KernelError> {
        let mut state = KernelState::default();
        let mut underlay_names = HashMap::new();
        for vni in self.pinned_vnis()? {
            match self.read_network(vni, &mut underlay_names) {
                Ok(n) => {
                    state.networks.insert(vni, n);
                }
                // Removed while we looked.
                Err(KernelError::NoSuchNetwork { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // Connections to networks that are gone would keep their namespaces alive.
        let stale: Vec<u32> = self
            .nets
            .keys()
            .filter(|v| !state.networks.contains_key(v))
            .copied()
            .collect();
        for vni in stale {
            self.forget(vni);
        }
        Ok(state)
    }

    fn apply(&mut self, op: &Op) -> Result<(), KernelError> {
        match op {
            Op::CreateNetwork(spec) => self.create_network(spec),
            Op::DeleteNetwork { vni } => self.destroy_network(*vni),
            Op::AddRemote { vni, ip, entry } => self.add_remote(*vni, *ip, entry),
            Op::DeleteRemote { vni, ip, entry } => self.delete_remote(*vni, *ip, entry),
            Op::Attach {
                vni,
                veth_name,
                spec,
                netns_path,
            } => self.attach(*vni, veth_name, spec, netns_path),
            Op::Detach { vni, veth_name } => self.detach(*vni, veth_name),
        }
    }
}

impl Drop for NetlinkKernel {
    fn drop(&mut self) {
        let vnis: Vec<u32> = self.nets.keys().copied().collect();
        for vni in vnis {
            self.forget(vni);
        }
        if let Some(h) = self.host.take() {
            h.close(&self.rt);
        }
    }
}
