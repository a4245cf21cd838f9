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
//!   [`AttachmentSpec`] (see `alias.rs`) and is written last, once everything else
//!   succeeded: a veth without a readable alias is a half-made attachment.
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
mod nl;

use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use netlink_packet_route::{
    link::{InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    AddressFamily, RouteNetlinkMessage,
};
use rtnetlink::{
    packet_core::{NLM_F_CREATE, NLM_F_REPLACE},
    Handle, RouteMessageBuilder,
};
use tokio::runtime::Runtime;

use self::nl::{Conn, NlError};
use super::{
    model::{
        AttachmentSpec, KernelError, KernelState, NetworkObjects, NetworkSpec, Op, OverlayKernel,
        RemoteEntry,
    },
    netns,
    state::Mac,
};

/// Name of the bridge in every network namespace.
pub const BRIDGE: &str = "br0";
/// Name of the VXLAN device in every network namespace.
pub const VXLAN: &str = "vxlan0";
/// Pin file name prefix: `<netns_dir>/vni-<vni>`.
pub const PIN_PREFIX: &str = "vni-";
/// How long `CreateNetwork` keeps retrying while the kernel still holds the VNI for a
/// VXLAN device that is being torn down (namespace cleanup is asynchronous).
const VNI_BUSY_WAIT: Duration = Duration::from_secs(3);

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

    fn host(&mut self) -> Result<Handle, KernelError> {
        if let Some(c) = &self.host {
            return Ok(c.handle.clone());
        }
        let socket = match &self.host_netns {
            None => nl::socket(),
            Some(p) => netns::in_netns_at(p, nl::socket).and_then(|r| r),
        }
        .map_err(|e| io_err("open a netlink socket in the host namespace", e))?;
        let conn = Conn::new(&self.rt, socket);
        let h = conn.handle.clone();
        self.host = Some(conn);
        Ok(h)
    }

    /// The cached connection into network `vni`'s namespace, made if needed.
    fn net(&mut self, vni: u32) -> Result<&mut NetConn, KernelError> {
        let path = self.netns_path(vni);
        let inode = match netns::inode(&path) {
            Ok(i) => i,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(vni);
                return Err(KernelError::NoSuchNetwork { vni });
            }
            Err(e) => return Err(io_err(format!("stat {}", path.display()), e)),
        };
        if self.nets.get(&vni).is_some_and(|n| n.inode != inode) {
            self.forget(vni);
        }
        if !self.nets.contains_key(&vni) {
            let socket = netns::in_netns_at(&path, nl::socket)
                .and_then(|r| r)
                .map_err(|e| {
                    io_err(
                        format!(
                            "open a netlink socket in network namespace {}",
                            path.display()
                        ),
                        e,
                    )
                })?;
            let conn = Conn::new(&self.rt, socket);
            self.nets.insert(
                vni,
                NetConn {
                    conn,
                    inode,
                    bridge: None,
                    vxlan: None,
                },
            );
        }
        Ok(self.nets.get_mut(&vni).expect("inserted above"))
    }

    /// Drops the cached connection into network `vni`'s namespace (its socket would
    /// keep the namespace alive).
    fn forget(&mut self, vni: u32) {
        if let Some(n) = self.nets.remove(&vni) {
            n.conn.close(&self.rt);
        }
    }

    /// Handle and index of `vxlan0` (cached) in network `vni`.
    fn vxlan(&mut self, vni: u32) -> Result<(Handle, u32), KernelError> {
        let n = self.net(vni)?;
        let h = n.conn.handle.clone();
        if let Some(i) = n.vxlan {
            return Ok((h, i));
        }
        let index = self
            .rt
            .block_on(nl::link_by_name(&h, VXLAN))
            .map_err(|e| nl_err(format!("find {VXLAN} of network {vni}"), e))?
            .header
            .index;
        self.net(vni)?.vxlan = Some(index);
        Ok((h, index))
    }

    /// Handle and index of `br0` (cached) in network `vni`.
    fn bridge(&mut self, vni: u32) -> Result<(Handle, u32), KernelError> {
        let n = self.net(vni)?;
        let h = n.conn.handle.clone();
        if let Some(i) = n.bridge {
            return Ok((h, i));
        }
        let index = self
            .rt
            .block_on(nl::link_by_name(&h, BRIDGE))
            .map_err(|e| nl_err(format!("find {BRIDGE} of network {vni}"), e))?
            .header
            .index;
        self.net(vni)?.bridge = Some(index);
        Ok((h, index))
    }

    fn forget_indexes(&mut self, vni: u32) {
        if let Some(n) = self.nets.get_mut(&vni) {
            n.bridge = None;
            n.vxlan = None;
        }
    }

    // ---- networks ----

    fn create_network(&mut self, spec: &NetworkSpec) -> Result<(), KernelError> {
        let vni = spec.vni;
        if vni == 0 || vni > 0xff_ffff {
            return Err(invalid(
                format!("create network {vni}"),
                format!("VNI {vni} is outside 1..=16777215"),
            ));
        }
        let path = self.netns_path(vni);
        if fs::symlink_metadata(&path).is_ok() {
            // A half-made earlier attempt, or a network being made again.
            self.destroy_network(vni)?;
        }
        fs::create_dir_all(&self.netns_dir)
            .map_err(|e| io_err(format!("create {}", self.netns_dir.display()), e))?;
        netns::create_pinned(&path)
            .map_err(|e| io_err(format!("create network {vni}'s namespace"), e))?;
        let made = self.build_network(spec, &path);
        if made.is_err() {
            if let Err(e) = self.destroy_network(vni) {
                tracing::warn!(vni, error = %e, "cleaning up a half-made network failed");
            }
        }
        made
    }

    fn build_network(&mut self, spec: &NetworkSpec, path: &Path) -> Result<(), KernelError> {
        let vni = spec.vni;
        let host = self.host()?;
        let h = self.net(vni)?.conn.handle.clone();
        let ns_fd: OwnedFd =
            netns::open(path).map_err(|e| io_err(format!("open {}", path.display()), e))?;
        let bridge = self.rt.block_on(async {
            let lo = nl::link_by_name(&h, "lo")
                .await
                .map_err(|e| nl_err("find lo", e))?;
            nl::set_link(&h, nl::up_message(lo.header.index))
                .await
                .map_err(|e| nl_err("set lo up", e))?;

            let mut br = nl::up_message(0);
            br.attributes.push(LinkAttribute::IfName(BRIDGE.into()));
            br.attributes.push(LinkAttribute::Mtu(spec.mtu));
            br.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                    InfoKind::Bridge,
                )]));
            nl::create_link(&h, br)
                .await
                .map_err(|e| nl_err(format!("create {BRIDGE} (mtu {})", spec.mtu), e))?;
            let bridge = nl::link_by_name(&h, BRIDGE)
                .await
                .map_err(|e| nl_err(format!("find {BRIDGE}"), e))?
                .header
                .index;
            nl::add_address(&h, bridge, spec.gateway, spec.prefix_len)
                .await
                .map_err(|e| {
                    nl_err(
                        format!("add {}/{} to {BRIDGE}", spec.gateway, spec.prefix_len),
                        e,
                    )
                })?;
            Ok::<_, KernelError>(bridge)
        })?;
        let underlay = self
            .rt
            .block_on(nl::link_by_name(&host, &spec.underlay_interface))
            .map_err(|e| {
                nl_err(
                    format!("find underlay interface {:?}", spec.underlay_interface),
                    e,
                )
            })?
            .header
            .index;

        let mut vx = nl::up_message(0);
        vx.attributes.push(LinkAttribute::IfName(VXLAN.into()));
        vx.attributes.push(LinkAttribute::Mtu(spec.mtu));
        vx.attributes
            .push(LinkAttribute::NetNsFd(ns_fd.as_raw_fd()));
        vx.attributes.push(LinkAttribute::Controller(bridge));
        vx.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(vni),
                InfoVxlan::Local(spec.vtep),
                InfoVxlan::Link(underlay),
                InfoVxlan::Port(spec.port),
                InfoVxlan::Learning(false),
                InfoVxlan::Proxy(true),
            ])),
        ]));
        let deadline = Instant::now() + VNI_BUSY_WAIT;
        loop {
            match self.rt.block_on(nl::create_link(&host, vx.clone())) {
                Ok(()) => break,
                // The VNI is still held by a VXLAN device whose namespace the kernel is
                // tearing down (asynchronously): wait for it.
                Err(e) if e.errno == libc::EEXIST && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(nl_err(
                        format!(
                            "create {VXLAN} (id {vni}, local {}, dev {}, dstport {}, mtu {})",
                            spec.vtep, spec.underlay_interface, spec.port, spec.mtu
                        ),
                        e,
                    ))
                }
            }
        }
        drop(ns_fd);
        let n = self.net(vni)?;
        n.bridge = Some(bridge);
        n.vxlan = None;
        Ok(())
    }

    /// Removes network `vni`'s namespace. Its devices are deleted first, one by one, so
    /// that they are gone when this returns (namespace teardown is asynchronous, and a
    /// VXLAN device still being torn down holds its VNI): the containers' ends of the
    /// veths vanish with them.
    fn destroy_network(&mut self, vni: u32) -> Result<(), KernelError> {
        let path = self.netns_path(vni);
        if fs::symlink_metadata(&path).is_err() {
            self.forget(vni);
            return Ok(());
        }
        match self.net(vni) {
            Ok(n) => {
                let h = n.conn.handle.clone();
                let deleted = self.rt.block_on(async {
                    let links = nl::links(&h).await?;
                    // Veths first (their other ends are in containers), then the rest.
                    let mut order: Vec<&LinkMessage> = links
                        .iter()
                        .filter(|l| nl::link_name(l) != Some("lo"))
                        .collect();
                    order.sort_by_key(|l| nl::link_kind(l) != Some(&InfoKind::Veth));
                    for l in order {
                        nl::delete_link(&h, l.header.index).await?;
                    }
                    Ok::<_, NlError>(())
                });
                if let Err(e) = deleted {
                    tracing::warn!(vni, error = %e, "deleting a network's devices failed; removing its namespace anyway");
                }
            }
            Err(e) => {
                tracing::debug!(vni, error = %e, "network namespace not usable; removing its pin");
            }
        }
        self.forget(vni);
        netns::remove_pinned(&path)
            .map_err(|e| io_err(format!("remove network {vni}'s namespace"), e))
    }

    // ---- remotes ----

    fn add_remote(
        &mut self,
        vni: u32,
        ip: Ipv4Addr,
        entry: &RemoteEntry,
    ) -> Result<(), KernelError> {
        let (h, vx) = self.vxlan(vni)?;
        let neigh = neigh_message(vx, ip, entry.mac);
        let fdb = fdb_message(vx, entry.mac, Some(entry.vtep));
        let r = self.rt.block_on(async {
            nl::neighbour_request(
                &h,
                RouteNetlinkMessage::NewNeighbour(neigh),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .await
            .map_err(|e| {
                nl_err(
                    format!("network {vni}: neighbour {ip} lladdr {}", entry.mac),
                    e,
                )
            })?;
            nl::neighbour_request(
                &h,
                RouteNetlinkMessage::NewNeighbour(fdb),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .await
            .map_err(|e| {
                nl_err(
                    format!("network {vni}: fdb {} dst {}", entry.mac, entry.vtep),
                    e,
                )
            })
        });
        if r.is_err() {
            self.forget_indexes(vni);
        }
        r
    }

    fn delete_remote(
        &mut self,
        vni: u32,
        ip: Ipv4Addr,
        entry: &RemoteEntry,
    ) -> Result<(), KernelError> {
        let (h, vx) = match self.vxlan(vni) {
            Ok(x) => x,
            // No network, no entries.
            Err(KernelError::NoSuchNetwork { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        // An unspecified VTEP (what a snapshot reports for a half-made remote) removes
        // every destination of the MAC.
        let dst = (!entry.vtep.is_unspecified()).then_some(entry.vtep);
        let fdb = fdb_message(vx, entry.mac, dst);
        let r = self.rt.block_on(async {
            match nl::neighbour_request(&h, RouteNetlinkMessage::DelNeighbour(fdb), 0).await {
                Err(e) if !e.is_gone() => {
                    return Err(nl_err(
                        format!("network {vni}: delete fdb {} dst {}", entry.mac, entry.vtep),
                        e,
                    ))
                }
                _ => {}
            }
            // Only the neighbour entry this remote made: ip -> its MAC.
            let current = nl::neighbour(&h, vx, ip)
                .await
                .map_err(|e| nl_err(format!("network {vni}: read neighbour {ip}"), e))?;
            if current.is_some_and(|n| nl::neigh_lladdr(&n) == Some(entry.mac.0)) {
                let mut del = NeighbourMessage::default();
                del.header.family = AddressFamily::Inet;
                del.header.ifindex = vx;
                del.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
                match nl::neighbour_request(&h, RouteNetlinkMessage::DelNeighbour(del), 0).await {
                    Err(e) if !e.is_gone() => {
                        return Err(nl_err(format!("network {vni}: delete neighbour {ip}"), e))
                    }
                    _ => {}
                }
            }
            Ok(())
        });
        if r.is_err() {
            self.forget_indexes(vni);
        }
        r
    }

    // ---- attachments ----

    fn attach(
        &mut self,
        vni: u32,
        veth_name: &str,
        spec: &AttachmentSpec,
        netns_path: &Path,
    ) -> Result<(), KernelError> {
        let what = || format!("attach {} to network {vni} as {veth_name}", spec.container);
        let alias = alias::encode(spec).map_err(|m| invalid(what(), m))?;
        alias::check_ifname("bridge-side veth name", veth_name).map_err(|m| invalid(what(), m))?;
        let gone = || KernelError::ContainerGone {
            container: spec.container.clone(),
        };
        let container_ns = netns::open(netns_path).map_err(|_| gone())?;
        if netns::identity_of(&container_ns).ok() != Some(spec.netns_id) {
            return Err(gone());
        }
        let (h, bridge) = self.bridge(vni)?;

        // A veth of that name already there is either this very attachment, complete
        // (then there is nothing to do: attaching is idempotent and does not disturb
        // the container), or a half-made earlier attempt or an attachment being
        // replaced (then it goes).
        let existing = match self.rt.block_on(nl::link_by_name(&h, veth_name)) {
            Ok(l) => Some(l),
            Err(e) if e.is_gone() => None,
            Err(e) => return Err(nl_err(format!("{}: look for {veth_name}", what()), e)),
        };
        if let Some(l) = existing {
            if nl::link_kind(&l) != Some(&InfoKind::Veth) {
                return Err(invalid(
                    what(),
                    format!("{veth_name} exists in the network's namespace and is not a veth"),
                ));
            }
            if nl::link_alias(&l) == Some(alias.as_str())
                && nl::link_master(&l) == Some(bridge)
                && nl::is_up(&l)
                && nl::link_mtu(&l) == Some(spec.mtu)
            {
                return Ok(());
            }
            self.rt
                .block_on(nl::delete_link(&h, l.header.index))
                .map_err(|e| nl_err(format!("{}: remove the old {veth_name}", what()), e))?;
        }

        let temp = temp_ifname();
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(temp.clone()));
        peer.attributes.push(LinkAttribute::Mtu(spec.mtu));
        peer.attributes
            .push(LinkAttribute::Address(spec.mac.0.to_vec()));
        peer.attributes
            .push(LinkAttribute::NetNsFd(container_ns.as_raw_fd()));
        let mut veth = LinkMessage::default();
        veth.attributes
            .push(LinkAttribute::IfName(veth_name.into()));
        veth.attributes.push(LinkAttribute::Mtu(spec.mtu));
        veth.attributes.push(LinkAttribute::Controller(bridge));
        veth.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        if let Err(e) = self.rt.block_on(nl::create_link(&h, veth)) {
            self.forget_indexes(vni);
            return Err(if container_gone(netns_path, spec.netns_id) {
                gone()
            } else {
                nl_err(format!("{}: create the veth pair", what()), e)
            });
        }

        let mut made = self.plumb(&h, veth_name, &temp, &alias, spec, &container_ns);
        drop(container_ns);
        // Our open fd kept the namespace alive while we worked: if the container went
        // meanwhile, the pair would die with the namespace right after; undo it now.
        if made.is_ok() && container_gone(netns_path, spec.netns_id) {
            made = Err(gone());
        }
        if let Err(e) = made {
            if let Err(del) = self.rt.block_on(nl::delete_link_by_name(&h, veth_name)) {
                tracing::warn!(vni, veth_name, error = %del, "removing a half-made veth failed");
            }
            return Err(if container_gone(netns_path, spec.netns_id) {
                gone()
            } else {
                e
            });
        }
        Ok(())
    }

    /// Everything after the veth pair exists: bridge side up, container side named,
    /// addressed and routed, and last the record in the bridge side's alias.
    fn plumb(
        &mut self,
        h: &Handle,
        veth_name: &str,
        temp: &str,
        alias: &str,
        spec: &AttachmentSpec,
        container_ns: &OwnedFd,
    ) -> Result<(), KernelError> {
        let ours = self
            .rt
            .block_on(async {
                let index = nl::link_by_name(h, veth_name).await?.header.index;
                nl::set_link(h, nl::up_message(index)).await?;
                Ok::<_, NlError>(index)
            })
            .map_err(|e| nl_err(format!("set {veth_name} up"), e))?;

        let socket = netns::in_netns(container_ns, nl::socket)
            .and_then(|r| r)
            .map_err(|e| {
                io_err(
                    format!(
                        "open a netlink socket in container {}'s namespace",
                        spec.container
                    ),
                    e,
                )
            })?;
        let c = Conn::new(&self.rt, socket);
        let ch = c.handle.clone();
        let configured = self.rt.block_on(async {
            let index = nl::link_by_name(&ch, temp)
                .await
                .map_err(|e| nl_err(format!("find {temp} in the container"), e))?
                .header
                .index;
            let mut rename = nl::up_message(index);
            rename
                .attributes
                .push(LinkAttribute::IfName(spec.ifname.clone()));
            nl::set_link(&ch, rename).await.map_err(|e| {
                nl_err(format!("rename {temp} to {} and set it up", spec.ifname), e)
            })?;
            nl::add_address(&ch, index, spec.ip, spec.prefix_len)
                .await
                .map_err(|e| {
                    nl_err(
                        format!("add {}/{} to {}", spec.ip, spec.prefix_len, spec.ifname),
                        e,
                    )
                })?;
            let lo = nl::link_by_name(&ch, "lo")
                .await
                .map_err(|e| nl_err("find lo in the container", e))?;
            nl::set_link(&ch, nl::up_message(lo.header.index))
                .await
                .map_err(|e| nl_err("set lo up in the container", e))?;
            if let Some(gw) = spec.default_gateway {
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gw)
                    .output_interface(index)
                    .build();
                nl::add_route(&ch, route)
                    .await
                    .map_err(|e| nl_err(format!("add default route via {gw}"), e))?;
            }
            Ok::<_, KernelError>(())
        });
        c.close(&self.rt);
        configured?;

        let mut record = nl::up_message(ours);
        record.attributes.push(LinkAttribute::IfAlias(alias.into()));
        self.rt
            .block_on(nl::set_link(h, record))
            .map_err(|e| nl_err(format!("record the attachment on {veth_name}"), e))
    }

    fn detach(&mut self, vni: u32, veth_name: &str) -> Result<(), KernelError> {
        let h = match self.net(vni) {
            Ok(n) => n.conn.handle.clone(),
            Err(KernelError::NoSuchNetwork { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.rt
            .block_on(async {
                match nl::link_by_name(&h, veth_name).await {
                    // Only ever a veth: never br0, vxlan0 or lo by a wrong name.
                    Ok(l) if nl::link_kind(&l) == Some(&InfoKind::Veth) => {
                        nl::delete_link(&h, l.header.index).await
                    }
                    Ok(_) => Ok(()),
                    Err(e) if e.is_gone() => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .map_err(|e| nl_err(format!("network {vni}: delete {veth_name}"), e))
    }

    // ---- reading back ----

    fn pinned_vnis(&self) -> Result<Vec<u32>, KernelError> {
        let entries = match fs::read_dir(&self.netns_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("list {}", self.netns_dir.display()), e)),
        };
        let mut vnis = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| io_err(format!("list {}", self.netns_dir.display()), e))?;
            let name = entry.file_name();
            let Some(vni) = name
                .to_str()
                .and_then(|n| n.strip_prefix(PIN_PREFIX))
                .and_then(|v| v.parse::<u32>().ok())
            else {
                continue;
            };
            // Only the canonical spelling is ours ("vni-7", not "vni-007").
            if name.to_str() == Some(&format!("{PIN_PREFIX}{vni}")) {
                vnis.push(vni);
            }
        }
        vnis.sort_unstable();
        Ok(vnis)
    }

    fn read_network(
        &mut self,
        vni: u32,
        underlay_names: &mut HashMap<u32, String>,
    ) -> Result<NetworkObjects, KernelError> {
        let h = match self.net(vni) {
            Ok(n) => n.conn.handle.clone(),
            Err(KernelError::NoSuchNetwork { vni }) => {
                return Err(KernelError::NoSuchNetwork { vni })
            }
            // A pin that is not a namespace (half-made): a network to make again.
            Err(e) => {
                tracing::debug!(vni, error = %e, "network namespace not usable");
                return Ok(broken(NetworkSpec {
                    vni,
                    ..unknown_spec()
                }));
            }
        };
        let (links, addresses, neighbours, fdb) = self
            .rt
            .block_on(async {
                let links = nl::links(&h).await?;
                let addresses = nl::ipv4_addresses(&h).await?;
                let neighbours = nl::neighbours(&h, AddressFamily::Inet).await?;
                let fdb = nl::neighbours(&h, AddressFamily::Bridge).await?;
                Ok::<_, NlError>((links, addresses, neighbours, fdb))
            })
            .map_err(|e| nl_err(format!("read network {vni}"), e))?;

        let by_name = |name: &str, kind: InfoKind| {
            links
                .iter()
                .find(|l| nl::link_name(l) == Some(name) && nl::link_kind(l) == Some(&kind))
        };
        let br = by_name(BRIDGE, InfoKind::Bridge);
        let vx = by_name(VXLAN, InfoKind::Vxlan);

        let mut spec = NetworkSpec {
            vni,
            ..unknown_spec()
        };
        let mut ok = br.is_some() && vx.is_some();
        if let Some(br) = br {
            spec.mtu = nl::link_mtu(br).unwrap_or(0);
            ok &= nl::is_up(br);
            let mut on_br = addresses.iter().filter(|a| a.0 == br.header.index);
            match (on_br.next(), on_br.next()) {
                (Some(&(_, ip, len)), None) => {
                    spec.gateway = ip;
                    spec.prefix_len = len;
                }
                _ => ok = false,
            }
        }
        if let Some(vx) = vx {
            ok &= nl::is_up(vx)
                && br.is_some_and(|br| nl::link_master(vx) == Some(br.header.index))
                && nl::link_mtu(vx) == Some(spec.mtu);
            let info: &[InfoVxlan] = match nl::link_info_data(vx) {
                Some(InfoData::Vxlan(i)) => i,
                _ => &[],
            };
            let (mut id, mut learning, mut proxy, mut link, mut group) =
                (None, None, None, None, false);
            for i in info {
                match i {
                    InfoVxlan::Id(v) => id = Some(*v),
                    InfoVxlan::Local(v) => spec.vtep = *v,
                    InfoVxlan::Port(v) => spec.port = *v,
                    InfoVxlan::Link(v) => link = Some(*v),
                    InfoVxlan::Learning(v) => learning = Some(*v),
                    InfoVxlan::Proxy(v) => proxy = Some(*v),
                    InfoVxlan::Group(g) => group |= !g.is_unspecified(),
                    InfoVxlan::Group6(g) => group |= !g.is_unspecified(),
                    _ => {}
                }
            }
            ok &= id == Some(vni) && learning == Some(false) && proxy == Some(true) && !group;
            match link {
                Some(index) => {
                    if let Some(name) = underlay_names.get(&index) {
                        spec.underlay_interface = name.clone();
                    } else {
                        let host = self.host()?;
                        match self.rt.block_on(nl::link_by_index(&host, index)) {
                            Ok(l) => {
                                let name = nl::link_name(&l).unwrap_or_default().to_owned();
                                underlay_names.insert(index, name.clone());
                                spec.underlay_interface = name;
                            }
                            Err(e) if e.is_gone() => ok = false,
                            Err(e) => {
                                return Err(nl_err(
                                    format!("network {vni}: find underlay interface {index}"),
                                    e,
                                ))
                            }
                        }
                    }
                }
                None => ok = false,
            }
        }
        if !ok {
            return Ok(broken(spec));
        }
        let br = br.expect("checked").header.index;
        let vx = vx.expect("checked").header.index;

        // FDB: MAC -> destinations, only vxlan0's own entries that have one.
        let mut dsts: HashMap<[u8; 6], Vec<Option<Ipv4Addr>>> = HashMap::new();
        for f in &fdb {
            if f.header.ifindex != vx
                || !f.header.flags.contains(NeighbourFlags::Own)
                || !nl::neigh_has_dst(f)
            {
                continue;
            }
            let Some(mac) = nl::neigh_lladdr(f).filter(|m| *m != [0; 6]) else {
                continue;
            };
            dsts.entry(mac).or_default().push(nl::neigh_ipv4_dst(f));
        }
        let mut remotes = BTreeMap::new();
        for n in &neighbours {
            if n.header.ifindex != vx || n.header.state != NeighbourState::Permanent {
                continue;
            }
            let (Some(ip), Some(mac)) = (nl::neigh_ipv4_dst(n), nl::neigh_lladdr(n)) else {
                continue;
            };
            let vtep = match dsts.get(&mac).map(Vec::as_slice) {
                Some([Some(vtep)]) => *vtep,
                // No FDB entry, several, or not IPv4: half-made.
                _ => Ipv4Addr::UNSPECIFIED,
            };
            remotes.insert(
                ip,
                RemoteEntry {
                    mac: Mac(mac),
                    vtep,
                },
            );
        }

        let mut attachments = BTreeMap::new();
        for l in &links {
            if nl::link_kind(l) != Some(&InfoKind::Veth) {
                continue;
            }
            let Some(name) = nl::link_name(l) else {
                continue;
            };
            // The routing mesh's reply veth is not an attachment (lb::mesh_reply).
            if name == crate::lb::mesh_reply::NETNS_VETH {
                continue;
            }
            let a = match nl::link_alias(l).and_then(alias::parse) {
                Some(mut a) => {
                    let sound = nl::link_master(l) == Some(br)
                        && nl::is_up(l)
                        && nl::link_mtu(l) == Some(a.mtu);
                    if !sound {
                        a.mtu = 0;
                    }
                    a
                }
                None => unknown_attachment(),
            };
            attachments.insert(name.to_owned(), a);
        }
        Ok(NetworkObjects {
            spec,
            remotes,
            attachments,
        })
    }
}

/// What a snapshot reports for fields it could not read.
fn unknown_spec() -> NetworkSpec {
    NetworkSpec {
        vni: 0,
        gateway: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
        mtu: 0,
        port: 0,
        vtep: Ipv4Addr::UNSPECIFIED,
        underlay_interface: String::new(),
    }
}

/// A network that has to be made again: MTU 0 never equals a desired spec.
fn broken(spec: NetworkSpec) -> NetworkObjects {
    NetworkObjects {
        spec: NetworkSpec { mtu: 0, ..spec },
        remotes: BTreeMap::new(),
        attachments: BTreeMap::new(),
    }
}

/// A veth without a readable record: never equal to a desired attachment.
fn unknown_attachment() -> AttachmentSpec {
    AttachmentSpec {
        container: String::new(),
        netns_id: 0,
        ifname: String::new(),
        ip: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
        mac: Mac([0; 6]),
        default_gateway: None,
        mtu: 0,
    }
}

fn neigh_message(vx: u32, ip: Ipv4Addr, mac: Mac) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = vx;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    m
}

/// `bridge fdb ... <mac> dev vxlan0 [dst <vtep>] self permanent`.
fn fdb_message(vx: u32, mac: Mac, dst: Option<Ipv4Addr>) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = vx;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    if let Some(dst) = dst {
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
    }
    m
}

/// True when the namespace at `path` is not the one with identity `id` any more.
fn container_gone(path: &Path, id: u64) -> bool {
    netns::identity(path).ok() != Some(id)
}

/// A name for the container end of a new veth until it is renamed: unique enough
/// that it never meets another one in the same container.
fn temp_ifname() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("shp{:012x}", h.finish() & 0xffff_ffff_ffff)
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
