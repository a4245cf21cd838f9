//! Reading a network back from the kernel for a snapshot, and what a snapshot reports
//! for half-made or damaged state (see the module docs).
use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    net::Ipv4Addr,
};

use netlink_packet_route::{
    link::{InfoData, InfoKind, InfoVxlan},
    neighbour::{NeighbourFlags, NeighbourState},
    AddressFamily,
};

use super::super::{
    model::{AttachmentSpec, KernelError, NetworkObjects, NetworkSpec, RemoteEntry},
    state::Mac,
};
use super::{
    alias, io_err,
    nl::{self, NlError},
    nl_err, NetlinkKernel, BRIDGE, PIN_PREFIX, VXLAN,
};

impl NetlinkKernel {
    pub(super) fn pinned_vnis(&self) -> Result<Vec<u32>, KernelError> {
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

    pub(super) fn read_network(
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
            let encrypted = nl::link_alias(vx) == Some(crate::wireguard::VXLAN_ALIAS);
            match link {
                // An encrypted network's device has no lower device.
                None if encrypted => {
                    spec.underlay_interface = crate::wireguard::IFNAME.to_owned();
                }
                Some(_) if encrypted => ok = false,
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
