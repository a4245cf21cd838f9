//! Docker's list filters (`-f key=value` on the CLI, `filters={...}` on the Engine API):
//! which keys each list takes and what each key matches, in one place so `shoal ... ls
//! -f` and `docker ... ls -f` through the Engine API select the same objects.

use std::collections::{BTreeMap, BTreeSet};

use shoal_cluster::store::{Network, Service, ServiceMode, Task};

use crate::api::NodeView;

/// Filter key -> the values given for it (a key given twice matches either value).
pub type Filters = BTreeMap<String, BTreeSet<String>>;

/// The keys `node ls` takes.
pub const NODE_KEYS: &[&str] = &["id", "membership", "name", "node.label", "role"];
/// The keys `service ls` takes.
pub const SERVICE_KEYS: &[&str] = &["id", "label", "mode", "name"];
/// The keys `service ps` and `node ps` take (the Engine API's `/tasks` also `service`).
pub const TASK_KEYS: &[&str] = &["desired-state", "id", "label", "name", "node", "service"];
/// The keys `network ls` takes for the swarm's networks (the Engine API also
/// `dangling`, which only dockerd's local networks can match).
pub const NETWORK_KEYS: &[&str] = &["driver", "id", "label", "name", "scope", "type"];

/// The CLI's `-f KEY=VALUE` arguments as filters; a key not in `allowed` is refused in
/// the daemon's words (`invalid filter 'x'`).
pub fn from_args(args: &[String], allowed: &[&str]) -> Result<Filters, String> {
    let mut out = Filters::new();
    for arg in args {
        let Some((key, value)) = arg.split_once('=') else {
            return Err(format!(
                "bad format of filter (expected name=value): {arg:?}"
            ));
        };
        let key = key.trim().to_lowercase();
        out.entry(key).or_default().insert(value.trim().to_owned());
    }
    check(&out, allowed)?;
    Ok(out)
}

/// Refuses keys not in `allowed` and values a key cannot take, in Docker's words.
pub fn check(filters: &Filters, allowed: &[&str]) -> Result<(), String> {
    for (key, values) in filters {
        if key == "label" && allowed == NODE_KEYS {
            return Err(
                "invalid filter 'label': it matches a node's engine labels, which \
                 shoal nodes do not report; node.label=KEY[=VALUE] matches the node's labels"
                    .into(),
            );
        }
        if !allowed.contains(&key.as_str()) {
            return Err(format!("invalid filter '{key}'"));
        }
        match key.as_str() {
            "desired-state" => {
                for v in values {
                    if !matches!(v.as_str(), "running" | "shutdown" | "accepted") {
                        return Err(format!(
                            "invalid filter 'desired-state={v}': running, shutdown or accepted"
                        ));
                    }
                }
            }
            "role" => {
                for v in values {
                    if !matches!(v.as_str(), "manager" | "worker") {
                        return Err(format!("invalid role filter '{v}'"));
                    }
                }
            }
            "membership" => {
                for v in values {
                    if !matches!(v.as_str(), "accepted" | "pending") {
                        return Err(format!("invalid membership filter '{v}'"));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Some value in `set` is a prefix of `value`.
pub fn prefix_of(set: &BTreeSet<String>, value: &str) -> bool {
    set.iter().any(|p| value.starts_with(p.as_str()))
}

/// Docker's `label` filter: every `KEY` present, every `KEY=VALUE` equal.
pub fn labels_match(labels: &BTreeMap<String, String>, want: &BTreeSet<String>) -> bool {
    want.iter().all(|l| match l.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(l),
    })
}

/// `node ls` (`GET /nodes`): ID and hostname by prefix, the role, the node's own labels
/// (`node.label`); every node of a shoal swarm has been accepted.
pub fn node_matches(n: &NodeView, f: &Filters) -> bool {
    f.iter().all(|(key, want)| match key.as_str() {
        "id" => prefix_of(want, &n.id),
        "name" => prefix_of(want, &n.hostname),
        "role" => want.contains(n.role.as_str()),
        "membership" => want.contains("accepted"),
        "node.label" => labels_match(&n.labels, want),
        _ => true,
    })
}

/// Docker's name for a service's mode, as the `mode` filter takes it.
pub fn mode_name(mode: &ServiceMode) -> &'static str {
    match mode {
        ServiceMode::Replicated { .. } => "replicated",
        ServiceMode::Global => "global",
        ServiceMode::ReplicatedJob { .. } => "replicated-job",
        ServiceMode::GlobalJob => "global-job",
    }
}

/// `service ls` (`GET /services`).
pub fn service_matches(s: &Service, f: &Filters) -> bool {
    f.iter().all(|(key, want)| match key.as_str() {
        "id" => prefix_of(want, &s.id),
        "name" => prefix_of(want, &s.spec.name),
        "label" => labels_match(&s.spec.labels, want),
        "mode" => want.contains(mode_name(&s.spec.mode)),
        _ => true,
    })
}

/// `service ps` and `node ps` (`GET /tasks`); `nodes` maps node IDs to hostnames.
pub fn task_matches(
    t: &Task,
    services: &[Service],
    nodes: &BTreeMap<String, String>,
    f: &Filters,
) -> bool {
    let service = services.iter().find(|s| s.id == t.service_id);
    f.iter().all(|(key, want)| match key.as_str() {
        "id" => prefix_of(want, &t.id),
        "service" => service.is_some_and(|s| {
            want.iter()
                .any(|w| s.spec.name == *w || s.id.starts_with(w.as_str()))
        }),
        "node" => t.node_id.as_deref().is_some_and(|id| {
            want.iter()
                .any(|w| id.starts_with(w.as_str()) || nodes.get(id).is_some_and(|h| h == w))
        }),
        "desired-state" => want.iter().any(|w| match w.as_str() {
            // Docker's "accepted" covers what is to run.
            "running" | "accepted" => !t.desired_state.is_terminal(),
            "shutdown" => t.desired_state.is_terminal(),
            _ => false,
        }),
        "name" => service.is_some_and(|s| {
            let name = t.display_name(&s.spec.name);
            want.iter().any(|w| name.starts_with(w.as_str()))
        }),
        // As swarmkit: a task's labels are its service's.
        "label" => service.is_some_and(|s| labels_match(&s.spec.labels, want)),
        _ => true,
    })
}

/// `network ls` (`GET /networks`) for the swarm's networks: the name by substring and
/// the ID by prefix (as dockerd), scope `swarm`, type `custom`.
pub fn network_matches(n: &Network, f: &Filters) -> bool {
    f.iter().all(|(key, want)| match key.as_str() {
        "name" => want.iter().any(|w| n.name.contains(w.as_str())),
        "id" => prefix_of(want, &n.id),
        "driver" => want.contains(&n.driver),
        "scope" => want.contains("swarm"),
        "type" => want.contains("custom"),
        "label" => labels_match(&n.labels, want),
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cli_arguments_become_filters_and_unknown_keys_are_refused() {
        let f = from_args(&args(&["name=web", "name=db", "mode=global"]), SERVICE_KEYS).unwrap();
        assert_eq!(f["name"].len(), 2);
        assert!(f["mode"].contains("global"));
        assert_eq!(
            from_args(&args(&["x=1"]), SERVICE_KEYS).unwrap_err(),
            "invalid filter 'x'"
        );
        assert!(from_args(&args(&["name"]), SERVICE_KEYS)
            .unwrap_err()
            .starts_with("bad format of filter"));
        assert!(from_args(&args(&["desired-state=done"]), TASK_KEYS).is_err());
        assert!(from_args(&args(&["role=boss"]), NODE_KEYS).is_err());
        assert!(from_args(&args(&["label=a"]), NODE_KEYS)
            .unwrap_err()
            .contains("node.label"));
    }

    #[test]
    fn labels_match_keys_and_pairs() {
        let labels: BTreeMap<String, String> = [("tier".into(), "web".into())].into();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert!(labels_match(&labels, &set(&["tier"])));
        assert!(labels_match(&labels, &set(&["tier=web"])));
        assert!(!labels_match(&labels, &set(&["tier=db"])));
        assert!(!labels_match(&labels, &set(&["tier", "zone"])));
    }

    #[test]
    fn nodes_match_by_prefix_role_and_label() {
        let n = NodeView {
            id: "abc123".into(),
            hostname: "h1".into(),
            role: crate::api::NodeRole::Worker,
            availability: crate::api::Availability::Active,
            status: crate::api::NodeStatus::Ready,
            manager_status: None,
            engine_version: String::new(),
            resources: Default::default(),
            addr: String::new(),
            labels: [("zone".into(), "a".into())].into(),
            version: 0,
        };
        let f = |a: &[&str]| from_args(&args(a), NODE_KEYS).unwrap();
        assert!(node_matches(&n, &f(&["id=abc", "name=h", "role=worker"])));
        assert!(!node_matches(&n, &f(&["role=manager"])));
        assert!(node_matches(&n, &f(&["node.label=zone=a"])));
        assert!(!node_matches(&n, &f(&["node.label=zone=b"])));
        assert!(node_matches(&n, &f(&["membership=accepted"])));
        assert!(!node_matches(&n, &f(&["membership=pending"])));
    }
}
