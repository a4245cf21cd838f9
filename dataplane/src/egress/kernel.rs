//! The egress bridge, its NAT and the tasks' veths, as the kernel holds them:
//! [`EgressKernel`] and its real form over rtnetlink, [`NetlinkEgress`].
//!
//! The node's end of each veth records the attachment in its alias
//! (`shoal-egress1 <container> <namespace identity> <address>`), written last, once
//! everything else is in place: a restarted agent adopts what the aliases say, and a
//! veth of ours without one (or no longer on the bridge, or down) is half made and
//! removed.
use crate::sysctl::SysctlJournal;
use std::{
    collections::BTreeSet,
    fs,
    net::Ipv4Addr,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkInfo, LinkMessage,
};
use rtnetlink::{Handle, RouteMessageBuilder};
use serde::Serialize;
use tokio::runtime::Runtime;

use super::{
    mac_of, nat,
    plan::{Attached, Attachment},
    EgressParams, BRIDGE, CONTAINER_IFNAME, VETH_PREFIX,
};
use crate::overlay::{
    kernel::{
        nl::{self, Conn, NlError, Rule},
        FIRST_NETWORK_TABLE, RULE_PREF_UDP_REPLIES,
    },
    netns,
};

/// The tag that starts every alias this module writes.
const TAG: &str = "shoal-egress1";

/// A kernel setting the egress changed: what it was and what it is now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SysctlChange {
    pub key: String,
    pub was: String,
    pub now: String,
}

/// Why an attachment could not be made.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachError {
    /// The container stopped (its namespace is gone or another one): nothing is left.
    ContainerGone,
    Failed(String),
}

/// What the egress reconciler changes in the kernel.
pub trait EgressKernel {
    /// Makes the bridge (address, MTU, up) and turns forwarding on; returns the
    /// settings it changed.
    fn ensure_bridge(&mut self, params: &EgressParams) -> Result<Vec<SysctlChange>, String>;
    /// Makes the NAT chain hold exactly the egress rule.
    fn ensure_nat(&mut self, params: &EgressParams) -> Result<(), String>;
    /// The attachments the veths record; removes veths of ours that record none (half
    /// made, or damaged).
    fn snapshot(&mut self) -> Result<Attached, String>;
    /// Makes the veth `veth` for `attachment`, whose namespace is at `netns_path`.
    /// Idempotent: a complete one is left alone.
    fn attach(
        &mut self,
        params: &EgressParams,
        veth: &str,
        attachment: &Attachment,
        netns_path: &Path,
    ) -> Result<(), AttachError>;
    /// Removes the veth `veth` (gone already is fine).
    fn detach(&mut self, veth: &str) -> Result<(), String>;
    /// Makes the rules that send UDP from `ports` back through the task's first network
    /// exactly these, in the task's namespace (at `netns_path`, identity `netns_id`).
    fn sync_udp_reply_ports(
        &mut self,
        netns_path: &Path,
        netns_id: u64,
        ports: &BTreeSet<u16>,
    ) -> Result<(), AttachError>;
}

/// The alias recording `a`.
fn alias(a: &Attachment) -> String {
    format!("{TAG} {} {} {}", a.container, a.netns_id, a.ip)
}

/// The attachment an alias records; None for anything [`alias`] did not write.
fn parse_alias(text: &str) -> Option<Attachment> {
    let mut f = text.split(' ');
    let (Some(TAG), Some(container), Some(ns), Some(ip), None) =
        (f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return None;
    };
    let a = Attachment {
        container: container.to_owned(),
        netns_id: ns.parse().ok()?,
        ip: ip.parse().ok()?,
    };
    (alias(&a) == text && !container.is_empty()).then_some(a)
}

/// The real kernel: rtnetlink in the node's namespace (the calling thread's when made)
/// and in each task's, `nft` for the NAT, /proc/sys for forwarding.
pub struct NetlinkEgress {
    rt: Runtime,
    /// The node's namespace; its task ends with the runtime.
    host: Conn,
    /// Where the forwarding sysctls' first values are recorded.
    sysctls: SysctlJournal,
}

fn nl_err(what: impl std::fmt::Display, e: NlError) -> String {
    format!("{what}: {e}")
}

impl NetlinkEgress {
    /// Opens netlink in the calling thread's namespace (the node's).
    pub fn new(sysctls: SysctlJournal) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| format!("starting the netlink runtime: {e}"))?;
        let socket = nl::socket().map_err(|e| format!("opening netlink: {e}"))?;
        let host = Conn::new(&rt, socket);
        Ok(Self { rt, host, sysctls })
    }

    fn h(&self) -> Handle {
        self.host.handle.clone()
    }

    fn bridge_index(&self) -> Result<Option<u32>, String> {
        match self.rt.block_on(nl::link_by_name(&self.h(), BRIDGE)) {
            Ok(l) if nl::link_kind(&l) == Some(&InfoKind::Bridge) => Ok(Some(l.header.index)),
            Ok(_) => Err(format!(
                "{BRIDGE} exists and is not a bridge: remove it or choose another host"
            )),
            Err(e) if e.is_gone() => Ok(None),
            Err(e) => Err(nl_err(format!("looking for {BRIDGE}"), e)),
        }
    }

    /// Everything after the pair exists: the task's end named, addressed and routed,
    /// then the node's end up, isolated and recorded.
    fn plumb(
        &self,
        params: &EgressParams,
        veth: &str,
        temp: &str,
        a: &Attachment,
        container_ns: &OwnedFd,
    ) -> Result<(), String> {
        let socket = netns::in_netns(container_ns, nl::socket)
            .and_then(|r| r)
            .map_err(|e| format!("opening netlink in {}'s namespace: {e}", a.container))?;
        let c = Conn::new(&self.rt, socket);
        let ch = c.handle.clone();
        let prefix_len = params.subnet.prefix_len();
        let gateway = params.gateway;
        let configured = self.rt.block_on(async {
            let index = nl::link_by_name(&ch, temp)
                .await
                .map_err(|e| nl_err(format!("finding {temp} in the task"), e))?
                .header
                .index;
            let mut rename = nl::up_message(index);
            rename
                .attributes
                .push(LinkAttribute::IfName(CONTAINER_IFNAME.into()));
            nl::set_link(&ch, rename)
                .await
                .map_err(|e| nl_err(format!("renaming {temp} to {CONTAINER_IFNAME}"), e))?;
            nl::add_address(&ch, index, a.ip, prefix_len)
                .await
                .map_err(|e| nl_err(format!("adding {}/{prefix_len}", a.ip), e))?;
            let lo = nl::link_by_name(&ch, "lo")
                .await
                .map_err(|e| nl_err("finding lo in the task", e))?;
            nl::set_link(&ch, nl::up_message(lo.header.index))
                .await
                .map_err(|e| nl_err("setting lo up in the task", e))?;
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .output_interface(index)
                .build();
            nl::add_route(&ch, route)
                .await
                .map_err(|e| nl_err(format!("adding the default route via {gateway}"), e))
        });
        c.close(&self.rt);
        configured?;

        let h = self.h();
        self.rt.block_on(async {
            let index = nl::link_by_name(&h, veth)
                .await
                .map_err(|e| nl_err(format!("finding {veth}"), e))?
                .header
                .index;
            nl::set_link(&h, nl::up_message(index))
                .await
                .map_err(|e| nl_err(format!("setting {veth} up"), e))?;
            let mut isolate = LinkMessage::default();
            isolate.header.index = index;
            isolate.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::PortKind(InfoPortKind::Bridge),
                LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::Isolated(
                    true,
                )])),
            ]));
            nl::change_link(&h, isolate)
                .await
                .map_err(|e| nl_err(format!("isolating {veth} on {BRIDGE}"), e))?;
            let mut record = nl::up_message(index);
            record.attributes.push(LinkAttribute::IfAlias(alias(a)));
            nl::set_link(&h, record)
                .await
                .map_err(|e| nl_err(format!("recording the attachment on {veth}"), e))
        })
    }
}

/// Sets the sysctl `key` (dotted) to `value` through the agent's journal, which records
/// the value it had first so that `shoal agent cleanup` can put it back.
fn set_sysctl(
    journal: &SysctlJournal,
    key: &str,
    value: &str,
) -> Result<Option<SysctlChange>, String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let was = fs::read_to_string(&path)
        .map_err(|e| format!("reading {path}: {e}"))?
        .trim()
        .to_owned();
    let changed = journal
        .set(&key.replace('.', "/"), value)
        .map_err(|e| e.to_string())?;
    Ok(changed.then(|| SysctlChange {
        key: key.to_owned(),
        was,
        now: value.to_owned(),
    }))
}

impl EgressKernel for NetlinkEgress {
    fn ensure_bridge(&mut self, params: &EgressParams) -> Result<Vec<SysctlChange>, String> {
        let h = self.h();
        let index = match self.bridge_index()? {
            Some(i) => i,
            None => {
                let mut m = LinkMessage::default();
                m.attributes.push(LinkAttribute::IfName(BRIDGE.into()));
                m.attributes.push(LinkAttribute::Mtu(params.mtu));
                // A MAC of its own: a bridge without one takes its lowest port's, and
                // changes it as tasks come and go (stale in every task's neighbours).
                m.attributes
                    .push(LinkAttribute::Address(mac_of(params.gateway).to_vec()));
                m.attributes
                    .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                        InfoKind::Bridge,
                    )]));
                match self.rt.block_on(nl::create_link(&h, m)) {
                    Ok(()) => {}
                    Err(e) if e.errno == libc::EEXIST => {}
                    Err(e) => return Err(nl_err(format!("creating {BRIDGE}"), e)),
                }
                self.bridge_index()?
                    .ok_or_else(|| format!("{BRIDGE} vanished right after it was made"))?
            }
        };
        let prefix_len = params.subnet.prefix_len();
        self.rt
            .block_on(async {
                let link = nl::link_by_index(&h, index).await?;
                if nl::link_mtu(&link) != Some(params.mtu) {
                    let mut m = LinkMessage::default();
                    m.header.index = index;
                    m.attributes.push(LinkAttribute::Mtu(params.mtu));
                    nl::set_link(&h, m).await?;
                }
                let addrs = nl::ipv4_addresses(&h).await?;
                for (i, ip, len) in addrs.iter().copied() {
                    if i == index && (ip, len) != (params.gateway, prefix_len) {
                        nl::delete_address(&h, index, ip, len).await?;
                    }
                }
                if !addrs.contains(&(index, params.gateway, prefix_len)) {
                    nl::add_address(&h, index, params.gateway, prefix_len).await?;
                }
                nl::set_link(&h, nl::up_message(index)).await
            })
            .map_err(|e| nl_err(format!("setting up {BRIDGE}"), e))?;
        // Forwarding: out of the bridge, and back in from wherever the replies arrive
        // (the interface of the node's route to the destination), as Docker does.
        let mut changed = Vec::new();
        for key in [
            "net.ipv4.ip_forward".to_string(),
            format!("net.ipv4.conf.{BRIDGE}.forwarding"),
        ] {
            changed.extend(set_sysctl(&self.sysctls, &key, "1")?);
        }
        Ok(changed)
    }

    fn ensure_nat(&mut self, params: &EgressParams) -> Result<(), String> {
        nat::apply(params)
    }

    fn snapshot(&mut self) -> Result<Attached, String> {
        let h = self.h();
        let bridge = self.bridge_index()?;
        let links = self
            .rt
            .block_on(nl::links(&h))
            .map_err(|e| nl_err("listing links", e))?;
        let mut out = Attached::new();
        for l in links {
            let Some(name) = nl::link_name(&l) else {
                continue;
            };
            let recorded = nl::link_alias(&l).and_then(parse_alias);
            let ours = name.starts_with(VETH_PREFIX)
                && nl::link_kind(&l) == Some(&InfoKind::Veth)
                && (recorded.is_some() || (bridge.is_some() && nl::link_master(&l) == bridge));
            if !ours {
                continue;
            }
            match recorded {
                Some(a) if bridge.is_some() && nl::link_master(&l) == bridge && nl::is_up(&l) => {
                    out.insert(name.to_owned(), a);
                }
                _ => {
                    let name = name.to_owned();
                    self.rt
                        .block_on(nl::delete_link(&h, l.header.index))
                        .map_err(|e| nl_err(format!("removing the half-made {name}"), e))?;
                }
            }
        }
        Ok(out)
    }

    fn attach(
        &mut self,
        params: &EgressParams,
        veth: &str,
        a: &Attachment,
        netns_path: &Path,
    ) -> Result<(), AttachError> {
        let failed = |m: String| AttachError::Failed(format!("{} ({veth}): {m}", a.container));
        let container_ns = netns::open(netns_path).map_err(|_| AttachError::ContainerGone)?;
        if netns::identity_of(&container_ns).ok() != Some(a.netns_id) {
            return Err(AttachError::ContainerGone);
        }
        let bridge = self
            .bridge_index()
            .map_err(failed)?
            .ok_or_else(|| failed(format!("{BRIDGE} does not exist")))?;
        let h = self.h();
        let record = alias(a);
        match self.rt.block_on(nl::link_by_name(&h, veth)) {
            Ok(l) => {
                let complete = nl::link_kind(&l) == Some(&InfoKind::Veth)
                    && nl::link_alias(&l) == Some(record.as_str())
                    && nl::link_master(&l) == Some(bridge)
                    && nl::is_up(&l);
                if complete {
                    return Ok(());
                }
                if nl::link_kind(&l) != Some(&InfoKind::Veth) {
                    return Err(failed(format!("{veth} exists and is not a veth")));
                }
                self.rt
                    .block_on(nl::delete_link(&h, l.header.index))
                    .map_err(|e| failed(nl_err(format!("removing the old {veth}"), e)))?;
            }
            Err(e) if e.is_gone() => {}
            Err(e) => return Err(failed(nl_err(format!("looking for {veth}"), e))),
        }

        let temp = temp_ifname(a.netns_id);
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(temp.clone()));
        peer.attributes.push(LinkAttribute::Mtu(params.mtu));
        peer.attributes
            .push(LinkAttribute::Address(mac_of(a.ip).to_vec()));
        peer.attributes
            .push(LinkAttribute::NetNsFd(container_ns.as_raw_fd()));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(veth.into()));
        m.attributes.push(LinkAttribute::Mtu(params.mtu));
        m.attributes.push(LinkAttribute::Controller(bridge));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        if let Err(e) = self.rt.block_on(nl::create_link(&h, m)) {
            return Err(if gone(netns_path, a.netns_id) {
                AttachError::ContainerGone
            } else {
                failed(nl_err("creating the veth pair", e))
            });
        }
        let mut made = self.plumb(params, veth, &temp, a, &container_ns);
        drop(container_ns);
        // Our open descriptor kept the namespace alive while we worked: a container
        // that stopped meanwhile would take the pair along right after.
        if made.is_ok() && gone(netns_path, a.netns_id) {
            made = Err("gone".into());
        }
        if let Err(e) = made {
            if let Err(del) = self.rt.block_on(nl::delete_link_by_name(&h, veth)) {
                tracing::warn!(veth, error = %del, "removing a half-made egress veth failed");
            }
            return Err(if gone(netns_path, a.netns_id) {
                AttachError::ContainerGone
            } else {
                failed(e)
            });
        }
        Ok(())
    }

    fn detach(&mut self, veth: &str) -> Result<(), String> {
        let h = self.h();
        self.rt
            .block_on(async {
                match nl::link_by_name(&h, veth).await {
                    // Only ever one of our veths, never another device by a wrong name.
                    Ok(l)
                        if nl::link_kind(&l) == Some(&InfoKind::Veth)
                            && veth.starts_with(VETH_PREFIX) =>
                    {
                        nl::delete_link(&h, l.header.index).await
                    }
                    Ok(_) => Ok(()),
                    Err(e) if e.is_gone() => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .map_err(|e| nl_err(format!("removing {veth}"), e))
    }

    fn sync_udp_reply_ports(
        &mut self,
        netns_path: &Path,
        netns_id: u64,
        ports: &BTreeSet<u16>,
    ) -> Result<(), AttachError> {
        let container_ns = netns::open(netns_path).map_err(|_| AttachError::ContainerGone)?;
        if netns::identity_of(&container_ns).ok() != Some(netns_id) {
            return Err(AttachError::ContainerGone);
        }
        self.sync_rules(&container_ns, ports).map_err(|e| {
            if gone(netns_path, netns_id) {
                AttachError::ContainerGone
            } else {
                AttachError::Failed(e)
            }
        })
    }
}

impl NetlinkEgress {
    fn sync_rules(&self, container_ns: &OwnedFd, ports: &BTreeSet<u16>) -> Result<(), String> {
        let socket = netns::in_netns(container_ns, nl::socket)
            .and_then(|r| r)
            .map_err(|e| format!("opening netlink in the task's namespace: {e}"))?;
        let c = Conn::new(&self.rt, socket);
        let ch = c.handle.clone();
        let synced = self.rt.block_on(async {
            let have: Vec<Rule> = nl::rules(&ch)
                .await
                .map_err(|e| nl_err("listing the task's rules", e))?
                .into_iter()
                .filter(|r| r.priority == RULE_PREF_UDP_REPLIES)
                .collect();
            for r in &have {
                let wanted = r.table == FIRST_NETWORK_TABLE
                    && r.from.is_none()
                    && r.suppress_prefix_len.is_none()
                    && r.udp_sport.is_some_and(|p| ports.contains(&p));
                if !wanted {
                    nl::delete_rule(&ch, *r)
                        .await
                        .map_err(|e| nl_err("removing a UDP reply rule", e))?;
                }
            }
            for &port in ports {
                let rule = Rule::udp_from_port(RULE_PREF_UDP_REPLIES, port, FIRST_NETWORK_TABLE);
                if !have.contains(&rule) {
                    nl::add_rule(&ch, rule).await.map_err(|e| {
                        nl_err(format!("adding the UDP reply rule for port {port}"), e)
                    })?;
                }
            }
            Ok::<(), String>(())
        });
        c.close(&self.rt);
        synced
    }
}

/// True when the namespace at `path` is not the one with identity `id` any more.
fn gone(path: &Path, id: u64) -> bool {
    netns::identity(path).ok() != Some(id)
}

/// The task end's name until it is renamed: unique in the task's namespace.
fn temp_ifname(netns_id: u64) -> String {
    format!("shge{:x}", netns_id & 0xfff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_read_back_exactly_and_nothing_else_reads() {
        let a = Attachment {
            container: "web.1.abc".into(),
            netns_id: 4026532001,
            ip: Ipv4Addr::new(172, 18, 0, 7),
        };
        let text = alias(&a);
        assert_eq!(text, "shoal-egress1 web.1.abc 4026532001 172.18.0.7");
        assert_eq!(parse_alias(&text), Some(a));
        for bad in [
            "",
            "shoal-egress1 web 1",
            "shoal-egress1 web 1 172.18.0.7 x",
            "shoal-egress1 web x 172.18.0.7",
            "shoal-egress1 web 01 172.18.0.7",
            "shoal1 web 1 172.18.0.7",
        ] {
            assert_eq!(parse_alias(bad), None, "{bad:?}");
        }
    }
}
