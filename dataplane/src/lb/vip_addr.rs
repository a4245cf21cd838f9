//! Each VIP as a /32 on `lo` of its network's namespace (`<netns_dir>/vni-<VNI>`), so
//! that ARP for the VIP and ICMP echo to it are answered there, and a connection to a
//! VIP that has no healthy backend is refused rather than left unanswered. The overlay
//! owns `br0`'s one address; these live on `lo`, which its reconciler does not read.
use std::{collections::BTreeSet, io, net::Ipv4Addr, path::Path};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};

use crate::overlay::netns;

/// What [`sync_addresses`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddrChanges {
    pub added: Vec<Ipv4Addr>,
    pub removed: Vec<Ipv4Addr>,
}

/// Makes the /32 addresses on `lo` of the namespace at `netns_path`, other than
/// loopback ones, exactly `want`.
pub fn sync_addresses(netns_path: &Path, want: &BTreeSet<Ipv4Addr>) -> io::Result<AddrChanges> {
    netns::in_netns_at(netns_path, || -> io::Result<AddrChanges> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(sync_here(want))
    })?
}

fn nl(e: rtnetlink::Error) -> io::Error {
    io::Error::other(e.to_string())
}

async fn sync_here(want: &BTreeSet<Ipv4Addr>) -> io::Result<AddrChanges> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let result = async {
        let lo = handle
            .link()
            .get()
            .match_name("lo")
            .execute()
            .try_next()
            .await
            .map_err(nl)?
            .ok_or_else(|| io::Error::other("no lo in the namespace"))?
            .header
            .index;
        let mut have: Vec<(Ipv4Addr, AddressMessage)> = Vec::new();
        let mut dump = handle.address().get().set_link_index_filter(lo).execute();
        while let Some(msg) = dump.try_next().await.map_err(nl)? {
            if msg.header.prefix_len != 32 {
                continue;
            }
            let ip = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(std::net::IpAddr::V4(v))
                | AddressAttribute::Address(std::net::IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            if let Some(ip) = ip.filter(|ip| !ip.is_loopback()) {
                have.push((ip, msg));
            }
        }
        let mut changes = AddrChanges::default();
        for (ip, msg) in have.iter() {
            if !want.contains(ip) {
                handle
                    .address()
                    .del(msg.clone())
                    .execute()
                    .await
                    .map_err(nl)?;
                changes.removed.push(*ip);
            }
        }
        for ip in want {
            if !have.iter().any(|(h, _)| h == ip) {
                handle
                    .address()
                    .add(lo, (*ip).into(), 32)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl)?;
                changes.added.push(*ip);
            }
        }
        Ok(changes)
    }
    .await;
    task.abort();
    result
}
