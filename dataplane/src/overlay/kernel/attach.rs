//! Attachments: the veth pair between `br0` and a container's namespace, the container
//! end configured, and the record in the bridge end's alias.
use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::super::{
    model::{AttachmentSpec, KernelError},
    netns,
};
use super::{
    alias, invalid, io_err,
    nl::{self, Conn, NlError},
    nl_err, NetlinkKernel, FIRST_NETWORK_TABLE, RULE_PREF_FIRST_NETWORK, RULE_PREF_MAIN,
};

impl NetlinkKernel {
    pub(super) fn attach(
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
                first_network_routes(&ch, index, spec.ip, gw).await?;
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

    pub(super) fn detach(&mut self, vni: u32, veth_name: &str) -> Result<(), KernelError> {
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
}

/// The first network's way out, kept for what arrives on it: the task's default route
/// is the egress bridge's (main table, made by the egress reconciler), so the first
/// network's gateway is the default route only of table [`FIRST_NETWORK_TABLE`],
/// which traffic from the task's address on that network looks up. That is how a
/// reply to the routing mesh (a client's connection to the task's ingress address) or
/// to the node's own sockets goes back through the network's bridge, where the mesh's
/// reply path takes it, while connections the task opens leave through egress. The
/// first rule lets the main table answer everything it knows more precisely than its
/// default route (the networks' subnets), so only the way out differs.
async fn first_network_routes(
    h: &Handle,
    index: u32,
    ip: Ipv4Addr,
    gw: Ipv4Addr,
) -> Result<(), KernelError> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gw)
        .output_interface(index)
        .table_id(FIRST_NETWORK_TABLE)
        .build();
    nl::add_route(h, route).await.map_err(|e| {
        nl_err(
            format!("add default route via {gw} to table {FIRST_NETWORK_TABLE}"),
            e,
        )
    })?;
    nl::add_rule(h, nl::Rule::main_without_default(RULE_PREF_MAIN))
        .await
        .map_err(|e| nl_err("add the rule that prefers the main table's own routes", e))?;
    nl::add_rule(
        h,
        nl::Rule::from_source(RULE_PREF_FIRST_NETWORK, ip, FIRST_NETWORK_TABLE),
    )
    .await
    .map_err(|e| {
        nl_err(
            format!("add the rule from {ip} to table {FIRST_NETWORK_TABLE}"),
            e,
        )
    })
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
