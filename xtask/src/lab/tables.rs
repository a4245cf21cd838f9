//! What the hosts' agents computed, read from the declared state each dumps
//! (`overlay.json`, `lb.json`, `dns.json` under its data dir): shared by the lab tests
//! of a host that dies, returns or is cut off, and by `cargo xtask chaos`.
use std::collections::BTreeSet;

use super::{agent, HostState, LabState};

/// A JSON file's content (null if it is missing or not JSON).
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// One of the declared-state files of a host's agent.
pub fn declared(h: &HostState, file: &str) -> serde_json::Value {
    read_json(&agent::declared_dir(h).join(file))
}

/// The array at `key` of a JSON object (empty if there is none).
pub fn array<'a>(v: &'a serde_json::Value, key: &str) -> Vec<&'a serde_json::Value> {
    v[key]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// Every host's remote endpoints, per network it has, are exactly the other hosts'
/// local endpoints on that network (by address and VTEP); Err says where not.
pub fn tables_agree(state: &LabState) -> Result<(), String> {
    let hosts = &state.hosts;
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
