//! What the hosts' tables say, read from the files and the kernel objects the agents
//! keep: declared overlay/LB state per host, FDB entries on each network's VXLAN device.
//! Shared by the lab tests of a host that dies, returns or is cut off.
use std::{collections::BTreeSet, net::Ipv4Addr};

use crate::{lab, LabGuard};

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

pub fn declared(h: &lab::HostState, file: &str) -> serde_json::Value {
    read_json(&lab::agent::declared_dir(h).join(file))
}

pub fn array<'a>(v: &'a serde_json::Value, key: &str) -> Vec<&'a serde_json::Value> {
    v[key]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

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
    let hosts = &lab.state.hosts;
    let locals: Vec<BTreeSet<(String, String, String)>> = hosts
        .iter()
        .map(|h| {
            array(&declared(h, "overlay.json"), "local_endpoints")
                .into_iter()
                .map(|e| {
                    (
                        e["network"].as_str().unwrap_or("").to_string(),
                        e["ip"].as_str().unwrap_or("").to_string(),
                        h.address.to_string(),
                    )
                })
                .collect()
        })
        .collect();
    for (i, h) in hosts.iter().enumerate() {
        let overlay = declared(h, "overlay.json");
        let nets: BTreeSet<String> = array(&overlay, "networks")
            .into_iter()
            .filter_map(|n| n["id"].as_str().map(str::to_string))
            .collect();
        let have: BTreeSet<(String, String, String)> = array(&overlay, "remote_endpoints")
            .into_iter()
            .map(|e| {
                (
                    e["network"].as_str().unwrap_or("").to_string(),
                    e["ip"].as_str().unwrap_or("").to_string(),
                    e["vtep"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let want: BTreeSet<(String, String, String)> = locals
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, l)| l.iter().cloned())
            .filter(|(net, _, _)| nets.contains(net))
            .collect();
        if have != want {
            return Err(format!(
                "{}: remote endpoints {have:?}, other hosts' local endpoints on its networks {want:?}",
                h.name
            ));
        }
    }
    Ok(())
}
