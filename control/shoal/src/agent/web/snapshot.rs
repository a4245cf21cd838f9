//! What the cluster page shows, as one JSON document made from a manager's copy of the
//! store: nodes (with the managers' Raft standing), services with their published ports,
//! and the tasks that are meant to run or still do, each on its node. Pure, so the page's
//! content is unit-tested without a cluster.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use shoal_cluster::{
    manager::{ManagerStatus, TrafficRates},
    store::{ClusterState, Protocol, PublishMode, ServiceMode, Task, TaskState},
};

/// The page's document for `state`, as manager `self_id` sees it (`managers`: each
/// manager's standing, from [`shoal_cluster::manager::Manager::manager_status`];
/// `rates`: each node's traffic per second, from the leader's heartbeat answers).
pub fn snapshot(
    state: &ClusterState,
    managers: &BTreeMap<String, ManagerStatus>,
    rates: &BTreeMap<String, TrafficRates>,
    self_id: &str,
) -> Value {
    let nodes: Vec<Value> = state
        .nodes
        .values()
        .map(|n| {
            json!({
                "id": n.id,
                "hostname": n.hostname,
                "role": n.role,
                "availability": n.availability,
                "state": n.status,
                "address": advertised_ip(&n.advertise_addr),
                "manager_status": managers.get(&n.id).map(|m| m.to_string()),
                "self": n.id == self_id,
                "traffic": rates.get(&n.id),
            })
        })
        .collect();
    let services: Vec<Value> = state
        .services
        .values()
        .map(|s| {
            let (mode, replicas) = match s.spec.mode {
                ServiceMode::Replicated { replicas } => ("replicated", Some(replicas)),
                ServiceMode::Global => ("global", None),
                ServiceMode::ReplicatedJob { .. } => ("replicated-job", None),
                ServiceMode::GlobalJob => ("global-job", None),
            };
            let running = state
                .service_tasks(&s.id)
                .filter(|t| {
                    t.desired_state == TaskState::Running && t.status.state == TaskState::Running
                })
                .count();
            let ports: Vec<Value> = s
                .spec
                .ports
                .iter()
                .map(|p| {
                    json!({
                        "published": p.published,
                        "target": p.target,
                        "protocol": match p.protocol { Protocol::Tcp => "tcp", Protocol::Udp => "udp" },
                        "mode": match p.mode { PublishMode::Ingress => "ingress", PublishMode::Host => "host" },
                    })
                })
                .collect();
            json!({
                "id": s.id,
                "name": s.spec.name,
                "image": s.spec.image,
                "mode": mode,
                "replicas": replicas,
                "running": running,
                "ports": ports,
            })
        })
        .collect();
    let tasks: Vec<Value> = state
        .tasks
        .values()
        .filter(|t| shown(t))
        .filter_map(|t| {
            let service = state.services.get(&t.service_id)?;
            Some(json!({
                "id": t.id,
                "service_id": t.service_id,
                "service": service.spec.name,
                "name": t.display_name(&service.spec.name),
                "slot": t.slot,
                "node_id": t.node_id,
                "state": t.status.state,
                "desired_state": t.desired_state,
                "message": t.status.message,
                "error": t.status.err,
                "image": t.spec.as_ref().map_or(&service.spec.image, |s| &s.image),
            }))
        })
        .collect();
    json!({
        "version": state.version,
        "manager": self_id,
        "nodes": nodes,
        "services": services,
        "tasks": tasks,
    })
}

/// The IP of a node's advertise address (`IP:PORT` or a bare IP): where its published
/// ports answer.
fn advertised_ip(addr: &str) -> String {
    addr.parse::<std::net::SocketAddr>()
        .map_or_else(|_| addr.to_owned(), |a| a.ip().to_string())
}

/// A task the picture shows: one meant to run (pending ones included), or one that
/// still runs while it is being stopped. History (ended tasks) is `service ps`'s.
fn shown(t: &Task) -> bool {
    t.desired_state <= TaskState::Running || !t.status.state.is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_cluster::store::{Node, Service, ServiceSpec};

    fn state() -> ClusterState {
        let mut state: ClusterState = serde_json::from_value(json!({
            "version": 7,
            "nodes": {},
            "networks": {},
            "tokens": null,
        }))
        .expect("an empty state");
        for (id, host, role) in [("n1", "h1", "manager"), ("n2", "h2", "worker")] {
            let node: Node = serde_json::from_value(json!({
                "id": id, "hostname": host, "role": role, "status": "ready",
                "advertise_addr": format!("192.168.77.1{}:2377", &id[1..]),
            }))
            .expect("a node");
            state.nodes.insert(id.into(), node);
        }
        let spec: ServiceSpec = serde_json::from_value(json!({
            "name": "web", "image": "shoal/web:1",
            "mode": {"replicated": {"replicas": 3}},
            "ports": [{"protocol": "tcp", "target": 80, "published": 8080}],
        }))
        .expect("a spec");
        let service: Service =
            serde_json::from_value(json!({"id": "s1", "spec": spec})).expect("a service");
        state.services.insert("s1".into(), service);
        for (id, slot, node, state_, desired) in [
            ("t1", 1, Some("n1"), "running", "running"),
            ("t2", 2, Some("n2"), "starting", "running"),
            ("t3", 3, None, "pending", "running"),
            ("t0", 1, Some("n1"), "shutdown", "shutdown"),
            ("t4", 2, Some("n2"), "running", "shutdown"),
        ] {
            let task: Task = serde_json::from_value(json!({
                "id": id, "service_id": "s1", "slot": slot, "node_id": node,
                "desired_state": desired, "status": {"state": state_},
            }))
            .expect("a task");
            state.tasks.insert(id.into(), task);
        }
        state
    }

    #[test]
    fn the_page_shows_nodes_services_and_the_tasks_meant_to_run_or_still_running() {
        let managers = BTreeMap::from([("n1".to_string(), ManagerStatus::Leader)]);
        let rates = BTreeMap::from([(
            "n2".to_string(),
            TrafficRates {
                mesh_flows_per_s: 12.5,
                mesh_bytes_per_s: 4096.0,
                vip_connects_per_s: 0.5,
            },
        )]);
        let doc = snapshot(&state(), &managers, &rates, "n1");
        assert_eq!(doc["version"], 7);
        assert_eq!(doc["nodes"][0]["hostname"], "h1");
        assert_eq!(doc["nodes"][0]["manager_status"], "Leader");
        assert_eq!(doc["nodes"][0]["self"], true);
        assert_eq!(doc["nodes"][1]["manager_status"], Value::Null);
        assert_eq!(doc["nodes"][1]["address"], "192.168.77.12");
        assert_eq!(doc["nodes"][0]["traffic"], Value::Null);
        assert_eq!(doc["nodes"][1]["traffic"]["mesh_flows_per_s"], 12.5);
        let web = &doc["services"][0];
        assert_eq!(web["replicas"], 3);
        assert_eq!(web["running"], 1);
        assert_eq!(web["ports"][0]["published"], 8080);
        assert_eq!(web["ports"][0]["mode"], "ingress");
        let ids: Vec<&str> = doc["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        // t0 ended (history); t4 is being stopped but still runs.
        assert_eq!(ids, ["t1", "t2", "t3", "t4"]);
        assert_eq!(doc["tasks"][0]["name"], "web.1");
        assert_eq!(doc["tasks"][2]["node_id"], Value::Null);
        assert_eq!(doc["tasks"][3]["desired_state"], "shutdown");
    }
}
