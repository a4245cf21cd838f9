//! Making and removing a network: its pinned namespace, `lo`, `br0` and `vxlan0`.
use std::{
    fs,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};

use super::super::{
    model::{KernelError, NetworkSpec},
    netns,
    state::Mac,
};
use super::{
    invalid, io_err,
    nl::{self, NlError},
    nl_err, NetlinkKernel, BRIDGE, VXLAN,
};

/// How long `CreateNetwork` keeps retrying while the kernel still holds the VNI for a
/// VXLAN device that is being torn down (namespace cleanup is asynchronous).
const VNI_BUSY_WAIT: Duration = Duration::from_secs(3);

impl NetlinkKernel {
    pub(super) fn create_network(&mut self, spec: &NetworkSpec) -> Result<(), KernelError> {
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
            // A fixed address: a bridge left to choose takes its ports' lowest one and
            // changes it when that port leaves or a lower one joins. The gateway's MAC
            // then changes under every task of the network, whose neighbour caches
            // send replies (the routing mesh's included) to an address nobody holds
            // until they find out, tens of seconds later.
            br.attributes.push(LinkAttribute::Address(
                Mac::from_ip(spec.gateway).0.to_vec(),
            ));
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
        // A plain network's VXLAN device is made from the host namespace on the underlay
        // interface; an encrypted one's from the WireGuard namespace, with no lower
        // device: its socket lives there and reaches only the WireGuard device.
        let (maker, wg_conn) = if spec.encrypted() {
            let wg_ns = crate::wireguard::ensure_netns(&self.netns_dir)
                .map_err(|e| io_err("make the WireGuard namespace", e))?;
            let socket = netns::in_netns_at(&wg_ns, nl::socket)
                .and_then(|r| r)
                .map_err(|e| io_err("open a netlink socket in the WireGuard namespace", e))?;
            let conn = nl::Conn::new(&self.rt, socket);
            (conn.handle.clone(), Some(conn))
        } else {
            (host.clone(), None)
        };
        let underlay = if spec.encrypted() {
            None
        } else {
            Some(
                self.rt
                    .block_on(nl::link_by_name(&host, &spec.underlay_interface))
                    .map_err(|e| {
                        nl_err(
                            format!("find underlay interface {:?}", spec.underlay_interface),
                            e,
                        )
                    })?
                    .header
                    .index,
            )
        };

        let mut vx = nl::up_message(0);
        vx.attributes.push(LinkAttribute::IfName(VXLAN.into()));
        vx.attributes.push(LinkAttribute::Mtu(spec.mtu));
        vx.attributes
            .push(LinkAttribute::NetNsFd(ns_fd.as_raw_fd()));
        vx.attributes.push(LinkAttribute::Controller(bridge));
        let mut info = vec![InfoVxlan::Id(vni), InfoVxlan::Local(spec.vtep)];
        info.extend(underlay.map(InfoVxlan::Link));
        info.extend([
            InfoVxlan::Port(spec.port),
            InfoVxlan::Learning(false),
            InfoVxlan::Proxy(true),
        ]);
        vx.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(info)),
        ]));
        let deadline = Instant::now() + VNI_BUSY_WAIT;
        loop {
            match self.rt.block_on(nl::create_link(&maker, vx.clone())) {
                Ok(()) => break,
                // The VNI is still held by a VXLAN device whose namespace the kernel is
                // tearing down (asynchronously): wait for it.
                Err(e) if e.errno == libc::EEXIST && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    if let Some(c) = wg_conn {
                        c.close(&self.rt);
                    }
                    return Err(nl_err(
                        format!(
                            "create {VXLAN} (id {vni}, local {}, dev {}, dstport {}, mtu {})",
                            spec.vtep, spec.underlay_interface, spec.port, spec.mtu
                        ),
                        e,
                    ));
                }
            }
        }
        if let Some(c) = wg_conn {
            c.close(&self.rt);
            // The mark a snapshot knows an encrypted network's device by, written last:
            // a device without it is rebuilt.
            let h = self.net(vni)?.conn.handle.clone();
            self.rt
                .block_on(async {
                    let index = nl::link_by_name(&h, VXLAN).await?.header.index;
                    let mut m = LinkMessage::default();
                    m.header.index = index;
                    m.attributes
                        .push(LinkAttribute::IfAlias(crate::wireguard::VXLAN_ALIAS.into()));
                    nl::change_link(&h, m).await
                })
                .map_err(|e| nl_err(format!("mark network {vni}'s {VXLAN} as encrypted"), e))?;
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
    pub(super) fn destroy_network(&mut self, vni: u32) -> Result<(), KernelError> {
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
}
