//! Remote endpoints: the permanent neighbour (`ip -> mac`) and FDB (`mac -> vtep`)
//! entries on `vxlan0`, written and removed in the order the module docs describe.
use std::net::Ipv4Addr;

use netlink_packet_route::{
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    AddressFamily, RouteNetlinkMessage,
};
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_REPLACE};

use super::super::{
    model::{KernelError, RemoteEntry},
    state::Mac,
};
use super::{nl, nl_err, NetlinkKernel};

impl NetlinkKernel {
    pub(super) fn add_remote(
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

    pub(super) fn delete_remote(
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
