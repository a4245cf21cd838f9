//! What the hosts' tables say, read from the files and the kernel objects the agents
//! keep: declared overlay/LB state per host, FDB entries on each network's VXLAN device.
//! Shared by the lab tests of a host that dies, returns or is cut off.
use std::net::Ipv4Addr;

pub use xtask::lab::tables::{array, declared, read_json};

use crate::{lab, LabGuard};

/// What a host's tables say about another host: remote endpoints with that VTEP and LB
/// backends on it in the declared state, and FDB entries towards it on the VXLAN
/// devices of the host's network namespaces (the kernel's side of the same).
pub fn mentions(lab: &LabGuard, h: &lab::HostState, node: Ipv4Addr) -> Vec<String> {
    let node = node.to_string();
    let mut found = Vec::new();
    let netns = std::fs::read_dir(h.run_dir.join("netns"))
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    for ns in netns {
        let net = format!("--net={}", ns.display());
        let out = lab.exec(
            &h.name,
            &["nsenter", &net, "bridge", "fdb", "show", "dev", "vxlan0"],
        );
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if l.contains(&format!("dst {node} ")) && !l.starts_with("00:00:00:00:00:00") {
                found.push(format!("{}: fdb {l}", ns.display()));
            }
        }
    }
    for e in array(&declared(h, "overlay.json"), "remote_endpoints") {
        if e["vtep"] == node.as_str() {
            found.push(format!("remote endpoint {e}"));
        }
    }
    for s in array(&declared(h, "lb.json"), "services") {
        for b in array(s, "backends") {
            if b["node"] == node.as_str() {
                found.push(format!("{} backend {b}", s["name"]));
            }
        }
    }
    found
}

/// Every host's remote endpoints, per network it has, are exactly the other hosts'
/// local endpoints on that network (by address and VTEP); Err says where not.
pub fn tables_agree(lab: &LabGuard) -> Result<(), String> {
    lab::tables::tables_agree(&lab.state)
}
