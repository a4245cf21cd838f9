//! Which task containers get (or lose) a veth into the egress bridge, and with which
//! address: pure, against the reconciler's record of what it attached.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
};

use super::{veth_name, EgressParams};
use crate::overlay::plan::ContainerNetns;

/// One task's attachment to the bridge, as its veth's alias records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub container: String,
    /// Identity of the task's network namespace (a restarted container has a new one,
    /// and its old veth went with the old namespace).
    pub netns_id: u64,
    pub ip: Ipv4Addr,
}

/// Attachments by the node's end's veth name.
pub type Attached = BTreeMap<String, Attachment>;

/// One attachment to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAttachment {
    pub veth: String,
    pub attachment: Attachment,
    pub netns_path: PathBuf,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Veths to remove (their task is gone, or runs in another namespace now).
    pub detach: Vec<String>,
    pub attach: Vec<NewAttachment>,
    /// Containers that get no attachment, with why (no free address, a name that does
    /// not fit).
    pub skipped: BTreeMap<String, String>,
}

/// The plan that attaches exactly the running task containers of `wanted` (by name,
/// with their namespaces). Kept attachments keep their addresses; a new one takes the
/// first free address after `cursor` (wrapping), so an address just given up is the
/// last to be given again (the conntrack entries of its old flows expire first);
/// `cursor` moves to the last address given.
pub fn plan(
    params: &EgressParams,
    attached: &Attached,
    wanted: &BTreeMap<String, ContainerNetns>,
    cursor: &mut Ipv4Addr,
) -> Plan {
    let mut out = Plan::default();
    let mut kept_ns: BTreeSet<u64> = BTreeSet::new();
    let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for (veth, a) in attached {
        let still = wanted
            .get(&a.container)
            .is_some_and(|ns| ns.id == a.netns_id)
            && params.subnet.contains(&a.ip)
            && a.ip != params.gateway
            && !used.contains(&a.ip);
        if still {
            kept_ns.insert(a.netns_id);
            used.insert(a.ip);
        } else {
            out.detach.push(veth.clone());
        }
    }
    let mut free = Free::new(params, *cursor);
    for (container, ns) in wanted {
        if kept_ns.contains(&ns.id) {
            continue;
        }
        let veth = match veth_name(ns.id) {
            Ok(v) => v,
            Err(e) => {
                out.skipped.insert(container.clone(), e);
                continue;
            }
        };
        let Some(ip) = free.take(&used) else {
            out.skipped.insert(
                container.clone(),
                format!("no free address in the egress subnet {}", params.subnet),
            );
            continue;
        };
        used.insert(ip);
        *cursor = ip;
        kept_ns.insert(ns.id);
        out.attach.push(NewAttachment {
            veth,
            attachment: Attachment {
                container: container.clone(),
                netns_id: ns.id,
                ip,
            },
            netns_path: ns.path.clone(),
        });
    }
    out
}

/// Task addresses in order from just after a cursor, once round.
struct Free {
    first: u32,
    last: u32,
    gateway: u32,
    next: u32,
    left: u64,
}

impl Free {
    fn new(params: &EgressParams, cursor: Ipv4Addr) -> Self {
        let net = u32::from(params.subnet.network());
        let (first, last) = (net + 1, u32::from(params.subnet.broadcast()) - 1);
        let c = u32::from(cursor);
        let next = if c >= first && c < last { c + 1 } else { first };
        Self {
            first,
            last,
            gateway: u32::from(params.gateway),
            next,
            left: u64::from(last - first + 1),
        }
    }

    fn take(&mut self, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        while self.left > 0 {
            let a = self.next;
            self.left -= 1;
            self.next = if a >= self.last { self.first } else { a + 1 };
            let ip = Ipv4Addr::from(a);
            if a != self.gateway && !used.contains(&ip) {
                return Some(ip);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(subnet: &str) -> EgressParams {
        EgressParams::new(subnet.parse().unwrap(), 1500).unwrap()
    }

    fn ns(id: u64) -> ContainerNetns {
        ContainerNetns {
            path: format!("/proc/{id}/ns/net").into(),
            id,
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn new_tasks_get_free_addresses_and_kept_ones_keep_theirs() {
        let p = params("172.18.0.0/16");
        let mut cursor = p.gateway;
        let wanted: BTreeMap<_, _> =
            [("a".to_string(), ns(0x10)), ("b".to_string(), ns(0x11))].into();
        let first = plan(&p, &Attached::new(), &wanted, &mut cursor);
        assert!(first.detach.is_empty());
        let got: Vec<_> = first
            .attach
            .iter()
            .map(|n| (n.veth.as_str(), n.attachment.ip))
            .collect();
        assert_eq!(
            got,
            [("shgw10", ip("172.18.0.2")), ("shgw11", ip("172.18.0.3"))]
        );
        assert_eq!(first.attach[0].netns_path, PathBuf::from("/proc/16/ns/net"));

        // b restarted (new namespace), a is gone, c is new.
        let attached: Attached = first
            .attach
            .iter()
            .map(|n| (n.veth.clone(), n.attachment.clone()))
            .collect();
        let wanted: BTreeMap<_, _> =
            [("b".to_string(), ns(0x21)), ("c".to_string(), ns(0x22))].into();
        let next = plan(&p, &attached, &wanted, &mut cursor);
        assert_eq!(next.detach, ["shgw10", "shgw11"]);
        let got: Vec<_> = next
            .attach
            .iter()
            .map(|n| (n.attachment.container.as_str(), n.attachment.ip))
            .collect();
        // Addresses just given up are not the next ones given.
        assert_eq!(got, [("b", ip("172.18.0.4")), ("c", ip("172.18.0.5"))]);

        // Nothing changed: nothing to do.
        let attached: Attached = next
            .attach
            .iter()
            .map(|n| (n.veth.clone(), n.attachment.clone()))
            .collect();
        assert_eq!(plan(&p, &attached, &wanted, &mut cursor), Plan::default());
    }

    #[test]
    fn a_full_subnet_skips_the_task_and_the_cursor_wraps() {
        let p = params("10.9.0.0/29"); // hosts .1-.6, gateway .1: five task addresses
        let mut cursor = ip("10.9.0.6");
        let wanted: BTreeMap<_, _> = (0..6u64).map(|i| (format!("t{i}"), ns(i + 1))).collect();
        let out = plan(&p, &Attached::new(), &wanted, &mut cursor);
        let ips: Vec<_> = out.attach.iter().map(|n| n.attachment.ip).collect();
        assert_eq!(
            ips,
            ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
                .map(ip)
                .to_vec()
        );
        assert_eq!(out.skipped.len(), 1);
        assert!(out.skipped["t5"].contains("no free address"), "{out:?}");
    }

    #[test]
    fn records_outside_the_subnet_or_doubled_are_made_again() {
        let p = params("172.18.0.0/16");
        let mut cursor = p.gateway;
        let attached: Attached = [
            (
                "shgw1".to_string(),
                Attachment {
                    container: "a".into(),
                    netns_id: 1,
                    ip: ip("10.1.0.2"),
                },
            ),
            (
                "shgw2".to_string(),
                Attachment {
                    container: "b".into(),
                    netns_id: 2,
                    ip: ip("172.18.0.1"),
                },
            ),
        ]
        .into();
        let wanted: BTreeMap<_, _> = [("a".to_string(), ns(1)), ("b".to_string(), ns(2))].into();
        let out = plan(&p, &attached, &wanted, &mut cursor);
        assert_eq!(out.detach, ["shgw1", "shgw2"]);
        assert_eq!(out.attach.len(), 2);
        assert!(out.attach.iter().all(|n| n.attachment.ip != p.gateway));
    }
}
