//! Tests of the state machine: applying commands, refusals, versions, JSON round trips.

use super::*;
use crate::store::service::TaskState;

fn node(id: &str, role: Role) -> Node {
    Node {
        id: id.to_string(),
        hostname: format!("host-{id}"),
        role,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        advertise_addr: "192.168.77.11:2377".to_string(),
        data_path_addr: None,
        engine_version: "27.0.1".to_string(),
        resources: Default::default(),
        labels: BTreeMap::new(),
        raft_id: None,
        gossip: None,
        version: 0,
        tls: None,
        wireguard_rotation: 0,
    }
}

fn network(id: &str, name: &str) -> Network {
    Network {
        id: id.to_string(),
        name: name.to_string(),
        driver: "overlay".to_string(),
        subnet: Some("10.0.0.0/24".parse().unwrap()),
        gateway: Some("10.0.0.1".parse().unwrap()),
        vni: Some(4096),
        ingress: false,
        attachable: false,
        internal: false,
        encrypted: false,
        labels: BTreeMap::new(),
        options: BTreeMap::new(),
        version: 0,
    }
}

fn sample_service(id: &str, name: &str) -> Service {
    use super::super::service::*;
    Service {
        id: id.into(),
        spec: ServiceSpec {
            placement: Default::default(),
            name: name.into(),
            labels: BTreeMap::new(),
            image: "shoal/web:1".into(),
            args: vec![],
            env: vec![],
            mode: ServiceMode::Replicated { replicas: 3 },
            networks: vec![],
            ports: vec![],
            endpoint_mode: EndpointMode::Vip,
            constraints: vec![],
            healthcheck: None,
            restart_condition: RestartCondition::Any,
            restart_delay_ms: crate::store::DEFAULT_RESTART_DELAY_MS,
            restart_max_attempts: 0,
            restart_window_ms: 0,
            stop_grace_ms: crate::store::DEFAULT_STOP_GRACE_MS,
            container: Default::default(),
            network_aliases: Default::default(),
            update_config: Default::default(),
            secrets: Vec::new(),
            configs: Vec::new(),
            rollback_config: Default::default(),
        },
        created_ms: 0,
        updated_ms: 0,
        endpoint: Endpoint::default(),
        force_update: 0,
        registry_auth: None,
        previous_spec: None,
        update_status: None,
        job_status: None,
        version: 0,
    }
}

fn sample_task(id: &str) -> Task {
    Task {
        id: id.into(),
        service_id: "svc".into(),
        slot: 1,
        node_id: Some("n1".into()),
        desired_state: TaskState::Running,
        status: Default::default(),
        networks: vec![],
        force_update: 0,
        spec: None,
        restarts: 0,
        restart_window_start_ms: 0,
        failures_in_a_row: 0,
        job_iteration: None,
        created_ms: 0,
        version: 0,
    }
}

#[test]
fn services_keep_names_and_ports_unique_and_tasks_follow_their_service() {
    use super::super::service::*;
    let mut s = ClusterState::default();
    s.apply(&Command::UpsertNode {
        node: node("n1", Role::Worker),
    });
    s.apply(&Command::UpsertNetwork {
        network: network("net", "front"),
    });
    let mut web = sample_service("a", "web");
    web.spec.networks = vec!["net".into()];
    web.spec.ports = vec![PortConfig {
        protocol: Protocol::Tcp,
        target: 80,
        published: 8080,
        mode: PublishMode::Ingress,
        balance: None,
    }];
    assert!(s
        .apply(&Command::CreateService {
            service: Box::new(web.clone())
        })
        .into_result()
        .is_ok());
    let before = s.clone();
    let dup = sample_service("b", "web");
    assert!(matches!(
        s.apply(&Command::CreateService {
            service: Box::new(dup)
        })
        .into_result(),
        Err(Rejection::DuplicateServiceName { .. })
    ));
    let mut clash = sample_service("c", "other");
    clash.spec.ports = web.spec.ports.clone();
    assert!(matches!(
        s.apply(&Command::CreateService {
            service: Box::new(clash)
        })
        .into_result(),
        Err(Rejection::PortInUse { port: 8080, .. })
    ));
    let mut nonet = sample_service("d", "nonet");
    nonet.spec.networks = vec!["nope".into()];
    assert!(matches!(
        s.apply(&Command::CreateService {
            service: Box::new(nonet)
        })
        .into_result(),
        Err(Rejection::UnknownNetwork { .. })
    ));
    assert!(matches!(
        s.apply(&Command::RemoveNetwork { id: "net".into() })
            .into_result(),
        Err(Rejection::NetworkInUse { .. })
    ));
    assert_eq!(s, before, "refusals change nothing");

    let mut t1 = sample_task("t1");
    t1.service_id = "a".into();
    let mut t2 = sample_task("t2");
    t2.service_id = "a".into();
    t2.node_id = Some("n2".into());
    s.apply(&Command::PutTasks {
        tasks: vec![t1, t2],
    });
    let running = TaskStatus {
        state: TaskState::Running,
        ..Default::default()
    };
    s.apply(&Command::UpdateTaskStatus {
        node_id: "n1".into(),
        updates: vec![
            TaskStatusUpdate {
                task_id: "t1".into(),
                status: running.clone(),
            },
            TaskStatusUpdate {
                task_id: "t2".into(),
                status: running.clone(),
            },
        ],
    });
    assert_eq!(s.tasks["t1"].status.state, TaskState::Running);
    assert_eq!(
        s.tasks["t2"].status.state,
        TaskState::New,
        "a node reports only its own tasks"
    );
    s.apply(&Command::UpdateTaskStatus {
        node_id: "n1".into(),
        updates: vec![TaskStatusUpdate {
            task_id: "t1".into(),
            status: TaskStatus {
                state: TaskState::Starting,
                ..Default::default()
            },
        }],
    });
    assert_eq!(
        s.tasks["t1"].status.state,
        TaskState::Running,
        "no going back"
    );
    s.apply(&Command::RemoveService { id: "a".into() });
    assert!(s.services.is_empty());
    assert!(s
        .tasks
        .values()
        .all(|t| t.desired_state == TaskState::Remove));
    s.apply(&Command::RemoveTasks {
        ids: vec!["t1".into(), "zz".into()],
    });
    assert_eq!(s.tasks.len(), 1);
    // A snapshot from before services had a shape still loads (opaque entries drop).
    let old: ClusterState = serde_json::from_str(
        r#"{"version":3,"nodes":{},"networks":{},"services":{"x":{"n":1}},"tokens":null,"tasks":{"t":{"id":"t"}}}"#,
    )
    .expect("old state");
    assert!(old.services.is_empty() && old.tasks.is_empty());
}

#[test]
fn accepted_commands_raise_the_version_and_stamp_objects() {
    let mut s = ClusterState::default();
    let r = s.apply(&Command::UpsertNode {
        node: node("n1", Role::Manager),
    });
    assert_eq!(r, ApplyResult::Applied { version: 1 });
    assert_eq!(s.nodes["n1"].version, 1);
    let r = s.apply(&Command::SetAvailability {
        id: "n1".into(),
        availability: Availability::Drain,
    });
    assert_eq!(r.version(), 2);
    assert_eq!(s.nodes["n1"].availability, Availability::Drain);
    assert_eq!(s.nodes["n1"].version, 2);
    assert_eq!(s.version, 2);
}

#[test]
fn unknown_objects_are_refused_and_nothing_changes() {
    let mut s = ClusterState::default();
    s.apply(&Command::UpsertNode {
        node: node("n1", Role::Worker),
    });
    let before = s.clone();
    for (cmd, want) in [
        (
            Command::RemoveNode { id: "nope".into() },
            Rejection::UnknownNode { id: "nope".into() },
        ),
        (
            Command::SetRole {
                id: "nope".into(),
                role: Role::Manager,
                raft_id: Some(2),
            },
            Rejection::UnknownNode { id: "nope".into() },
        ),
        (
            Command::SetStatus {
                id: "nope".into(),
                status: NodeStatus::Down,
            },
            Rejection::UnknownNode { id: "nope".into() },
        ),
        (
            Command::RemoveNetwork { id: "x".into() },
            Rejection::UnknownNetwork { id: "x".into() },
        ),
        (
            Command::RemoveService { id: "s".into() },
            Rejection::UnknownService { id: "s".into() },
        ),
    ] {
        let r = s.apply(&cmd);
        assert_eq!(
            r,
            ApplyResult::Rejected {
                version: 1,
                rejection: want
            },
            "{cmd:?}"
        );
    }
    assert_eq!(s, before);
}

#[test]
fn network_names_stay_unique_but_a_network_can_be_replaced() {
    let mut s = ClusterState::default();
    assert!(s
        .apply(&Command::UpsertNetwork {
            network: network("a", "ingress")
        })
        .into_result()
        .is_ok());
    let r = s.apply(&Command::UpsertNetwork {
        network: network("b", "ingress"),
    });
    assert_eq!(
        r.into_result(),
        Err(Rejection::DuplicateNetworkName {
            name: "ingress".into(),
            existing_id: "a".into()
        })
    );
    let mut changed = network("a", "ingress");
    changed.vni = Some(4097);
    assert_eq!(
        s.apply(&Command::UpsertNetwork { network: changed })
            .into_result(),
        Ok(2)
    );
    assert_eq!(s.networks["a"].vni, Some(4097));
    assert_eq!(
        s.apply(&Command::RemoveNetwork { id: "a".into() })
            .into_result(),
        Ok(3)
    );
    assert!(s.networks.is_empty());
}

#[test]
fn tasks_secrets_and_configs_are_kept_by_kind() {
    let mut s = ClusterState::default();
    for (kind, id) in [
        (ObjectKind::Task, "t1"),
        (ObjectKind::Secret, "db-password"),
        (ObjectKind::Config, "nginx-conf"),
    ] {
        let r = s.apply(&Command::UpsertObject {
            kind,
            id: id.into(),
            spec: serde_json::json!({"id": id, "name": id, "data": "cHc="}),
        });
        if kind == ObjectKind::Task {
            assert!(r.into_result().is_err(), "a task needs a task's shape");
            assert!(!s.has_object(kind, id));
        } else {
            assert!(r.into_result().is_ok());
            assert!(s.has_object(kind, id));
        }
    }
    // A task must have a task's shape.
    let task = sample_task("t1");
    assert!(s
        .apply(&Command::UpsertObject {
            kind: ObjectKind::Task,
            id: "t1".into(),
            spec: serde_json::to_value(&task).unwrap(),
        })
        .into_result()
        .is_ok());
    assert_eq!((s.tasks.len(), s.secrets.len(), s.configs.len()), (1, 1, 1));
    let before = s.clone();
    let r = s.apply(&Command::RemoveObject {
        kind: ObjectKind::Secret,
        id: "t1".into(),
    });
    assert_eq!(
        r.into_result(),
        Err(Rejection::UnknownObject {
            kind: ObjectKind::Secret,
            id: "t1".into()
        }),
        "a task's ID is not a secret's"
    );
    assert_eq!(s, before, "a refused command changes nothing");
    assert!(s
        .apply(&Command::UpsertObject {
            kind: ObjectKind::Config,
            id: String::new(),
            spec: serde_json::Value::Null
        })
        .into_result()
        .is_err());
    s.apply(&Command::RemoveObject {
        kind: ObjectKind::Task,
        id: "t1".into(),
    });
    assert!(s.tasks.is_empty());
    // Older states (without these fields) still load.
    let old: ClusterState = serde_json::from_str(
        r#"{"version":3,"nodes":{},"networks":{},"services":{},"tokens":null}"#,
    )
    .expect("old state");
    assert!(old.secrets.is_empty());
}

#[test]
fn wireguard_key_rotations_are_counted_on_the_node() {
    let mut s = ClusterState::default();
    s.apply(&Command::UpsertNode {
        node: node("n2", Role::Worker),
    });
    // Each request for a new WireGuard key counts once; the count is kept across
    // serialization and left out of the stored form while zero.
    assert_eq!(s.nodes["n2"].wireguard_rotation, 0);
    assert!(!serde_json::to_string(&s.nodes["n2"])
        .unwrap()
        .contains("wireguard_rotation"));
    for _ in 0..2 {
        s.apply(&Command::RotateWireguardKey { id: "n2".into() });
    }
    assert_eq!(s.nodes["n2"].wireguard_rotation, 2);
    let text = serde_json::to_string(&s.nodes["n2"]).unwrap();
    assert_eq!(
        serde_json::from_str::<Node>(&text)
            .unwrap()
            .wireguard_rotation,
        2
    );
    assert!(s
        .apply(&Command::RotateWireguardKey { id: "n9".into() })
        .into_result()
        .is_err());
}

#[test]
fn roles_labels_services_and_tokens() {
    let mut s = ClusterState::default();
    s.apply(&Command::UpsertNode {
        node: node("n2", Role::Worker),
    });
    s.apply(&Command::SetRole {
        id: "n2".into(),
        role: Role::Manager,
        raft_id: Some(7),
    });
    assert_eq!(s.nodes["n2"].role, Role::Manager);
    assert_eq!(s.nodes["n2"].raft_id, Some(7));
    s.apply(&Command::UpdateNodeLabels {
        id: "n2".into(),
        add: BTreeMap::from([("zone".into(), "a".into()), ("ssd".into(), "1".into())]),
        remove: vec![],
    });
    s.apply(&Command::UpdateNodeLabels {
        id: "n2".into(),
        add: BTreeMap::from([("zone".into(), "b".into())]),
        remove: vec!["ssd".into()],
    });
    assert_eq!(
        s.nodes["n2"].labels,
        BTreeMap::from([("zone".into(), "b".into())])
    );
    s.apply(&Command::CreateService {
        service: Box::new(sample_service("svc", "web")),
    });
    assert_eq!(s.services["svc"].spec.name, "web");
    s.apply(&Command::SetTokens {
        tokens: serde_json::json!({"worker": "w", "manager": "m"}),
    });
    assert_eq!(s.tokens.as_ref().unwrap()["worker"], "w");
    assert_eq!(
        s.apply(&Command::RemoveNode { id: "n2".into() })
            .into_result(),
        Ok(7)
    );
    assert!(s.nodes.is_empty());
    assert_eq!(s.version, 7);
}

#[test]
fn same_commands_same_state_and_commands_round_trip_through_json() {
    let cmds = vec![
        Command::UpsertNode {
            node: node("n1", Role::Manager),
        },
        Command::UpsertNetwork {
            network: network("net", "front"),
        },
        Command::RemoveNode { id: "zz".into() },
        Command::SetStatus {
            id: "n1".into(),
            status: NodeStatus::Down,
        },
    ];
    let wire: Vec<Command> = serde_json::from_str(&serde_json::to_string(&cmds).unwrap()).unwrap();
    assert_eq!(wire, cmds);
    let (mut a, mut b) = (ClusterState::default(), ClusterState::default());
    let ra: Vec<_> = cmds.iter().map(|c| a.apply(c)).collect();
    let rb: Vec<_> = wire.iter().map(|c| b.apply(c)).collect();
    assert_eq!(ra, rb);
    assert_eq!(a, b);
    assert_eq!(a.version, 3);
    let back: ClusterState = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(back, a);
}

/// A snapshot and log entries as written while addresses were kept as strings: they load,
/// the addresses come out typed, and they are written back in the same form.
#[test]
fn addresses_stored_as_strings_load_typed_and_save_the_same() {
    let network = serde_json::json!({
        "id": "net1", "name": "web", "driver": "overlay",
        "subnet": "10.0.1.0/24", "gateway": "10.0.1.1", "vni": 4097,
        "ingress": false, "attachable": false, "internal": false, "encrypted": false,
        "labels": {}, "options": {}, "version": 3
    });
    let ingress = serde_json::json!({
        "id": "ing", "name": "ingress", "driver": "overlay",
        "subnet": null, "gateway": null, "vni": 4096,
        "ingress": true, "attachable": false, "internal": false, "encrypted": false,
        "labels": {}, "options": {}, "version": 2
    });
    let node = |id: &str, data_path: serde_json::Value| {
        serde_json::json!({
            "id": id, "hostname": format!("host-{id}"), "role": "manager",
            "availability": "active", "status": "ready",
            "advertise_addr": "192.168.77.11:2377", "data_path_addr": data_path,
            "engine_version": "27.0.1", "labels": {}, "raft_id": 7, "version": 1
        })
    };
    let service = serde_json::json!({
        "id": "svc", "spec": {
            "name": "front", "labels": {}, "image": "shoal/web:1", "args": [], "env": [],
            "mode": {"replicated": {"replicas": 1}}, "networks": ["net1"],
            "ports": [{"protocol": "tcp", "target": 80, "published": 30000, "mode": "ingress"}],
            "endpoint_mode": "vip", "constraints": [], "healthcheck": null,
            "restart_condition": "any"
        },
        "created_ms": 5, "updated_ms": 6,
        "endpoint": {"virtual_ips": [{"network_id": "net1", "addr": "10.0.1.2/24"}]},
        "force_update": 0, "version": 4
    });
    let task = serde_json::json!({
        "id": "t1", "service_id": "svc", "slot": 1, "node_id": "n1",
        "desired_state": "running",
        "status": {"state": "running", "timestamp_ms": 9, "message": "started",
                   "err": null, "container_id": "c1", "exit_code": null},
        "networks": [{"network_id": "net1", "addr": "10.0.1.5/24"}],
        "force_update": 0, "created_ms": 7, "version": 5
    });
    let cluster = serde_json::json!({
        "id": "cid", "default_addr_pools": ["10.20.0.0/16", "10.30.0.0/16"],
        "subnet_prefix_len": 26, "data_path_port": 4789
    });
    let snapshot = serde_json::json!({
        "version": 5,
        "nodes": {"n1": node("n1", serde_json::Value::Null),
                  "n2": node("n2", "192.168.78.12".into())},
        "networks": {"net1": network, "ing": ingress},
        "services": {"svc": service},
        "tokens": null,
        "cluster": cluster,
        "tasks": {"t1": task},
        "secrets": {}, "configs": {}, "gossip_keys": []
    });

    let state: ClusterState = serde_json::from_value(snapshot.clone()).unwrap();
    let net = &state.networks["net1"];
    assert_eq!(net.subnet, Some("10.0.1.0/24".parse().unwrap()));
    assert_eq!(net.gateway, Some(std::net::Ipv4Addr::new(10, 0, 1, 1)));
    assert_eq!(state.networks["ing"].subnet, None);
    let vip = state.services["svc"].endpoint.virtual_ips[0].addr;
    assert_eq!((vip.addr(), vip.prefix_len()), ([10, 0, 1, 2].into(), 24));
    let addr = state.tasks["t1"].networks[0].addr;
    assert_eq!((addr.addr(), addr.prefix_len()), ([10, 0, 1, 5].into(), 24));
    assert_eq!(state.nodes["n1"].data_path_addr, None);
    assert_eq!(
        state.nodes["n2"].data_path_addr,
        Some("192.168.78.12".parse().unwrap())
    );
    assert_eq!(
        state.cluster.as_ref().unwrap().default_addr_pools,
        vec![
            "10.20.0.0/16".parse::<ipnet::Ipv4Net>().unwrap(),
            "10.30.0.0/16".parse().unwrap()
        ]
    );
    // Saved back the same, but for the spec fields added since, at their defaults.
    let mut expected = snapshot.clone();
    let spec = expected["services"]["svc"]["spec"].as_object_mut().unwrap();
    let config = serde_json::json!({
        "parallelism": 1, "delay_ms": 0, "order": "stop-first", "failure_action": "pause",
        "monitor_ms": 5000, "max_failure_ratio_ppm": 0
    });
    spec.insert("restart_delay_ms".into(), 5000.into());
    spec.insert("restart_max_attempts".into(), 0.into());
    spec.insert("restart_window_ms".into(), 0.into());
    spec.insert("stop_grace_ms".into(), 10000.into());
    spec.insert("update_config".into(), config.clone());
    spec.insert("rollback_config".into(), config);
    spec.insert("container".into(), serde_json::json!({}));
    let task = expected["tasks"]["t1"].as_object_mut().unwrap();
    task.insert("restarts".into(), 0.into());
    task.insert("restart_window_start_ms".into(), 0.into());
    task.insert("failures_in_a_row".into(), 0.into());
    assert_eq!(serde_json::to_value(&state).unwrap(), expected);

    // Log entries.
    for entry in [
        serde_json::json!({"op": "upsert_network", "network": snapshot["networks"]["net1"]}),
        serde_json::json!({"op": "upsert_node", "node": snapshot["nodes"]["n2"]}),
        serde_json::json!({"op": "update_service", "service": expected["services"]["svc"]}),
        serde_json::json!({"op": "put_tasks", "tasks": [expected["tasks"]["t1"]]}),
        serde_json::json!({"op": "set_cluster", "cluster": snapshot["cluster"]}),
    ] {
        let command: Command = serde_json::from_value(entry.clone()).unwrap();
        assert_eq!(serde_json::to_value(&command).unwrap(), entry);
    }
}

#[test]
fn revoked_nodes_are_kept_until_their_certificates_expire_and_cannot_come_back() {
    let mut s = ClusterState::default();
    s.apply(&Command::UpsertNode {
        node: node("n1", Role::Worker),
    });
    let revoke = |id: &str, at_ms, until_ms| Command::RevokeNode {
        id: id.into(),
        at_ms,
        until_ms,
    };
    assert!(matches!(
        s.apply(&revoke("n1", 1_000, 5_000)),
        ApplyResult::Applied { .. }
    ));
    s.apply(&Command::RemoveNode { id: "n1".into() });
    assert_eq!(
        s.removed_nodes["n1"],
        RemovedNode {
            at_ms: 1_000,
            until_ms: 5_000
        }
    );
    // A removed node's ID is never recorded again (its certificate would count again).
    let before = s.clone();
    assert!(matches!(
        s.apply(&Command::UpsertNode {
            node: node("n1", Role::Worker)
        }),
        ApplyResult::Rejected { .. }
    ));
    assert_eq!(s, before);
    // A later revocation drops entries no certificate can outlive.
    s.apply(&revoke("n2", 4_000, 9_000));
    assert_eq!(s.removed_nodes.len(), 2);
    s.apply(&revoke("n3", 6_000, 10_000));
    assert_eq!(
        s.removed_nodes.keys().collect::<Vec<_>>(),
        ["n2", "n3"],
        "n1's certificates expired at 5000"
    );
    // Round trip, and a state written before the record existed still loads.
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<ClusterState>(&json).unwrap(), s);
    let old: ClusterState =
        serde_json::from_str(r#"{"version":3,"nodes":{},"networks":{},"tokens":null}"#).unwrap();
    assert!(old.removed_nodes.is_empty());
    assert!(!serde_json::to_string(&old)
        .unwrap()
        .contains("removed_nodes"));
}

#[test]
fn gossip_identities_are_checked_against_their_node() {
    let mut s = ClusterState::default();
    let mut n = node("n1", Role::Worker);
    n.data_path_addr = Some("10.0.0.5".parse().unwrap());
    s.apply(&Command::UpsertNode { node: n });
    let good = GossipIdentity {
        key: "0a".repeat(32),
        generation: 7,
        addr: "10.0.0.5:7946".parse().unwrap(),
        wireguard: None,
    };
    let refused = |s: &mut ClusterState, id: &str, gossip: GossipIdentity| {
        let version = s.version;
        let r = s.apply(&Command::SetNodeGossip {
            id: id.into(),
            gossip,
        });
        assert_eq!(s.version, version);
        r.into_result().unwrap_err()
    };
    assert_eq!(
        refused(&mut s, "nope", good.clone()),
        Rejection::UnknownNode { id: "nope".into() }
    );
    for (bad, why) in [
        (
            GossipIdentity {
                addr: "192.168.77.11:7946".parse().unwrap(),
                ..good.clone()
            },
            "data-path address",
        ),
        (
            GossipIdentity {
                key: "0a".repeat(31),
                ..good.clone()
            },
            "64 hex",
        ),
        (
            GossipIdentity {
                key: "zz".repeat(32),
                ..good.clone()
            },
            "64 hex",
        ),
        (
            GossipIdentity {
                generation: 0,
                ..good.clone()
            },
            "generation",
        ),
        (
            GossipIdentity {
                addr: "10.0.0.5:0".parse().unwrap(),
                ..good.clone()
            },
            "port",
        ),
        (
            GossipIdentity {
                wireguard: Some("0a".repeat(30)),
                ..good.clone()
            },
            "WireGuard key",
        ),
    ] {
        let r = refused(&mut s, "n1", bad);
        assert!(r.to_string().contains(why), "{r}");
    }
    assert!(s.nodes["n1"].gossip.is_none());
    s.apply(&Command::SetNodeGossip {
        id: "n1".into(),
        gossip: good.clone(),
    })
    .into_result()
    .unwrap();
    assert_eq!(s.nodes["n1"].gossip.as_deref(), Some(&good));
    assert_eq!(s.nodes["n1"].version, s.version);
    // It survives the round trip through JSON (log and snapshots), and a node written
    // before it existed reads as having none.
    let back: ClusterState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back.nodes["n1"].gossip.as_deref(), Some(&good));
    let mut old = serde_json::to_value(node("n2", Role::Worker)).unwrap();
    old.as_object_mut().unwrap().remove("gossip");
    assert_eq!(serde_json::from_value::<Node>(old).unwrap().gossip, None);
    // Removing the node removes its key.
    s.apply(&Command::RemoveNode { id: "n1".into() });
    assert!(!s.nodes.contains_key("n1"));
}

/// A rotation from `old` to a new root (returned with it), as the leader proposes it.
fn rotation(old: &crate::pki::ClusterCa) -> (crate::pki::ClusterCa, CaRotation) {
    let (new, cross) = old.successor().unwrap();
    let cross_signed_pem =
        crate::pki::NextRoot::new(old.certificate(), new.certificate().clone(), cross.to_vec())
            .unwrap()
            .cross_signed_pem();
    let r = CaRotation {
        from_pem: old.cert_pem(),
        to: StoredCa {
            cert_pem: new.cert_pem(),
            key_pem: new.key_pem_secret(),
        },
        cross_signed_pem,
        started_ms: 1,
    };
    (new, r)
}

fn tls(
    issuer: &crate::pki::ClusterCa,
    root: &crate::pki::ClusterCa,
    next: Option<&crate::pki::ClusterCa>,
) -> NodeTls {
    NodeTls {
        cert_issuer: issuer.digest(),
        trust_root: root.digest(),
        trust_next: next.map(|n| n.digest()),
    }
}

#[test]
fn a_ca_rotation_starts_once_waits_for_every_member_and_finishes_to_its_own_root() {
    use crate::registry_auth::RegistryAuthKey;
    let old = crate::pki::ClusterCa::new("c1").unwrap();
    let keys = vec![RegistryAuthKey::generate().unwrap()];
    let mut s = ClusterState::default();
    for id in ["m1", "w1", "gone"] {
        s.apply(&Command::UpsertNode {
            node: node(id, Role::Worker),
        });
    }
    s.apply(&Command::RevokeNode {
        id: "gone".into(),
        at_ms: 1,
        until_ms: u64::MAX,
    });
    for id in ["m1", "w1", "gone"] {
        s.apply(&Command::SetNodeTls {
            id: id.into(),
            tls: tls(&old, &old, None),
        });
    }
    assert!(s
        .apply(&Command::SetNodeTls {
            id: "nobody".into(),
            tls: tls(&old, &old, None)
        })
        .into_result()
        .is_err());
    let before = s.ca_progress(old.digest());
    assert_eq!(
        (
            before.in_progress,
            before.nodes,
            before.certs_rotated,
            before.roots_rotated
        ),
        (false, 2, 2, 2),
        "a revoked node is no member"
    );
    assert_eq!(s.ca_rotation_converged(), None);

    // A rotation whose cross-signature is not the root's is refused, changing nothing.
    let (new, good) = rotation(&old);
    let stranger = crate::pki::ClusterCa::new("c1").unwrap();
    let (_, foreign) = rotation(&stranger);
    let mut forged = good.clone();
    forged.cross_signed_pem = foreign.cross_signed_pem.clone();
    let unchanged = s.clone();
    for (r, k) in [
        (forged, keys.clone()),
        (good.clone(), vec![]),
        (
            good.clone(),
            vec![RegistryKey {
                key: "short".into(),
            }],
        ),
    ] {
        assert!(s
            .apply(&Command::StartCaRotation {
                rotation: Box::new(r),
                registry_keys: k,
                resealed: vec![]
            })
            .into_result()
            .is_err());
        assert_eq!(s, unchanged);
    }
    s.apply(&Command::StartCaRotation {
        rotation: Box::new(good.clone()),
        registry_keys: keys.clone(),
        resealed: vec![],
    })
    .into_result()
    .unwrap();
    assert_eq!(s.ca_rotation_target(), Some(new.digest()));
    assert_eq!(s.registry_keys, keys);
    // One at a time.
    let (_, second) = rotation(&old);
    assert!(s
        .apply(&Command::StartCaRotation {
            rotation: Box::new(second),
            registry_keys: keys.clone(),
            resealed: vec![]
        })
        .into_result()
        .is_err());
    // Not finished before every member holds a certificate of the new root.
    assert!(s
        .apply(&Command::FinishCaRotation {
            to: old.digest(),
            tokens: serde_json::json!({})
        })
        .into_result()
        .is_err());
    s.apply(&Command::SetNodeTls {
        id: "m1".into(),
        tls: tls(&new, &old, Some(&new)),
    });
    let p = s.ca_progress(old.digest());
    assert_eq!(p.desired, Some(new.digest()));
    assert_eq!(
        (p.in_progress, p.nodes, p.certs_rotated, p.roots_rotated),
        (true, 2, 1, 0)
    );
    assert_eq!(p.pending.len(), 2);
    assert_eq!(s.ca_rotation_converged(), None);
    s.apply(&Command::SetNodeTls {
        id: "w1".into(),
        tls: tls(&new, &old, Some(&new)),
    });
    assert_eq!(s.ca_rotation_converged(), Some(new.digest()));

    s.apply(&Command::FinishCaRotation {
        to: new.digest(),
        tokens: serde_json::json!({"worker": "t"}),
    })
    .into_result()
    .unwrap();
    assert!(s.ca_rotation.is_none());
    assert_eq!(s.root_ca.as_ref(), Some(&good.to));
    assert_eq!(s.tokens, Some(serde_json::json!({"worker": "t"})));
    let p = s.ca_progress(new.digest());
    assert_eq!(
        (p.in_progress, p.certs_rotated, p.roots_rotated),
        (false, 2, 0)
    );
    for id in ["m1", "w1"] {
        s.apply(&Command::SetNodeTls {
            id: id.into(),
            tls: tls(&new, &new, None),
        });
    }
    let p = s.ca_progress(new.digest());
    assert_eq!(
        (p.certs_rotated, p.roots_rotated, p.pending.len()),
        (2, 2, 0)
    );

    // The next rotation must start from the new root.
    let (_, from_old) = rotation(&old);
    assert!(s
        .apply(&Command::StartCaRotation {
            rotation: Box::new(from_old),
            registry_keys: keys.clone(),
            resealed: vec![]
        })
        .into_result()
        .is_err());
    let (_, from_new) = rotation(&new);
    s.apply(&Command::StartCaRotation {
        rotation: Box::new(from_new),
        registry_keys: keys,
        resealed: vec![],
    })
    .into_result()
    .unwrap();
    // The state, keys included, goes through JSON (the log and snapshots) whole, and
    // its Debug shows no key.
    let back: ClusterState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    let shown = format!("{s:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(!shown.contains(&s.registry_keys[0].key), "{shown}");
}

#[test]
fn a_rotation_seals_credentials_again_only_where_they_did_not_change_meanwhile() {
    use crate::registry_auth::{RegistryAuthKey, SealedCredentials};
    let old = crate::pki::ClusterCa::new("c1").unwrap();
    let sealed = |tag: &str| SealedCredentials {
        nonce: tag.into(),
        ciphertext: tag.into(),
    };
    let mut s = ClusterState::default();
    for id in ["a", "b"] {
        let mut svc = sample_service(id, id);
        svc.registry_auth = Some(sealed(&format!("{id}-old")));
        s.apply(&Command::CreateService {
            service: Box::new(svc),
        });
    }
    let (_, r) = rotation(&old);
    s.apply(&Command::StartCaRotation {
        rotation: Box::new(r),
        registry_keys: vec![RegistryAuthKey::generate().unwrap()],
        resealed: vec![
            Resealed {
                service_id: "a".into(),
                before: sealed("a-old"),
                after: sealed("a-new"),
            },
            Resealed {
                service_id: "b".into(),
                before: sealed("b-older"),
                after: sealed("b-new"),
            },
        ],
    })
    .into_result()
    .unwrap();
    assert_eq!(s.services["a"].registry_auth, Some(sealed("a-new")));
    assert_eq!(s.services["b"].registry_auth, Some(sealed("b-old")));
}

fn put_secret(s: &mut ClusterState, id: &str, name: &str, data: &[u8]) -> Result<u64, Rejection> {
    let o = crate::store::DataObject {
        id: id.into(),
        name: name.into(),
        labels: BTreeMap::new(),
        data: data.to_vec(),
        created_ms: 1,
        updated_ms: 1,
        version: 0,
    };
    s.apply(&Command::UpsertObject {
        kind: ObjectKind::Secret,
        id: id.into(),
        spec: serde_json::to_value(&o).unwrap(),
    })
    .into_result()
}

fn secret_ref(id: &str, name: &str, target: &str) -> crate::store::FileReference {
    crate::store::FileReference {
        id: id.into(),
        name: name.into(),
        target: target.into(),
        uid: "0".into(),
        gid: "0".into(),
        mode: 0o400,
    }
}

#[test]
fn secrets_are_immutable_bounded_and_uniquely_named() {
    let mut s = ClusterState::default();
    assert!(put_secret(&mut s, "s1", "pw", b"hunter2").is_ok());
    assert_eq!(s.secrets["s1"].data, b"hunter2");
    // Same name, another ID: refused.
    assert!(matches!(
        put_secret(&mut s, "s2", "pw", b"x"),
        Err(Rejection::DuplicateObjectName { .. })
    ));
    // The data of an existing one cannot change.
    let before = s.clone();
    assert!(put_secret(&mut s, "s1", "pw", b"other").is_err());
    assert_eq!(s, before);
    // Empty or 500 KiB: refused, with Swarm's words.
    let err = put_secret(&mut s, "s3", "big", &vec![b'x'; 500 * 1024]).unwrap_err();
    assert!(
        err.to_string()
            .contains("secret data must be larger than 0 and less than"),
        "{err}"
    );
    assert!(put_secret(&mut s, "s4", "empty", b"").is_err());
    assert_eq!(s, before);
}

#[test]
fn a_secret_in_use_is_not_removed_and_an_unknown_one_is_not_used() {
    let mut s = ClusterState::default();
    put_secret(&mut s, "s1", "pw", b"hunter2").unwrap();
    let mut svc = sample_service("svc1", "db");
    svc.spec.secrets = vec![secret_ref("ghost", "nope", "x")];
    let r = s.apply(&Command::CreateService {
        service: Box::new(svc.clone()),
    });
    assert_eq!(
        r.into_result(),
        Err(Rejection::UnknownObject {
            kind: ObjectKind::Secret,
            id: "nope".into()
        })
    );
    assert!(s.services.is_empty());
    // Two references on one file: refused.
    svc.spec.secrets = vec![
        secret_ref("s1", "pw", "a"),
        secret_ref("s1", "pw", "/run/secrets/a"),
    ];
    assert!(s
        .apply(&Command::CreateService {
            service: Box::new(svc.clone()),
        })
        .into_result()
        .is_err());
    svc.spec.secrets = vec![secret_ref("s1", "pw", "mysql_pw")];
    s.apply(&Command::CreateService {
        service: Box::new(svc.clone()),
    })
    .into_result()
    .unwrap();
    let rm = Command::RemoveObject {
        kind: ObjectKind::Secret,
        id: "s1".into(),
    };
    let err = s.apply(&rm).into_result().unwrap_err();
    assert_eq!(
        err.to_string(),
        "secret pw is in use by the following service: db"
    );
    // A task of the service still running keeps it in use after the service dropped it.
    let mut task = sample_task("t1");
    task.service_id = "svc1".into();
    task.spec = Some(Box::new(svc.spec.clone()));
    task.status.state = TaskState::Running;
    task.desired_state = TaskState::Running;
    s.apply(&Command::PutTasks { tasks: vec![task] })
        .into_result()
        .unwrap();
    svc.spec.secrets.clear();
    s.apply(&Command::UpdateService {
        service: Box::new(svc),
    })
    .into_result()
    .unwrap();
    assert!(matches!(
        s.apply(&rm).into_result(),
        Err(Rejection::ObjectInUse { .. })
    ));
    s.apply(&Command::RemoveObject {
        kind: ObjectKind::Task,
        id: "t1".into(),
    })
    .into_result()
    .unwrap();
    s.apply(&rm).into_result().unwrap();
    assert!(s.secrets.is_empty());
}

fn wanted(container: &str, network: &str) -> WantedAttachment {
    WantedAttachment {
        container_id: format!("{container}-id"),
        container_name: container.to_string(),
        network_id: network.to_string(),
        aliases: vec![],
    }
}

#[test]
fn a_node_declares_its_attachments_whole_and_only_on_attachable_networks() {
    let mut s = ClusterState::default();
    s.apply(&Command::UpsertNode {
        node: node("n1", Role::Worker),
    });
    s.apply(&Command::UpsertNode {
        node: node("n2", Role::Worker),
    });
    s.apply(&Command::UpsertNetwork {
        network: network("plain", "plain"),
    });
    let mut shared = network("shared", "shared");
    shared.attachable = true;
    s.apply(&Command::UpsertNetwork { network: shared });
    let set =
        |node: &str, wanted: Vec<WantedAttachment>, ids: &[&str]| Command::SetNodeAttachments {
            node_id: node.into(),
            wanted,
            new_ids: ids.iter().map(|i| i.to_string()).collect(),
        };

    // Not attachable, unknown, or IDs that do not match the new entries: nothing changes.
    let before = s.clone();
    for bad in [
        set("n1", vec![wanted("c1", "plain")], &["a1"]),
        set("n1", vec![wanted("c1", "nope")], &["a1"]),
        set("n1", vec![wanted("c1", "shared")], &[]),
        set(
            "n1",
            vec![wanted("c1", "shared"), wanted("c1", "shared")],
            &["a1", "a2"],
        ),
        set("nx", vec![wanted("c1", "shared")], &["a1"]),
    ] {
        assert!(s.apply(&bad).into_result().is_err(), "{bad:?}");
    }
    assert_eq!(s, before);
    let mut bad_name = wanted("c1", "shared");
    bad_name.aliases = vec!["no spaces".into()];
    assert!(s
        .apply(&set("n1", vec![bad_name], &["a1"]))
        .into_result()
        .is_err());

    s.apply(&set("n1", vec![wanted("c1", "shared")], &["a1"]))
        .into_result()
        .unwrap();
    s.apply(&set("n2", vec![wanted("c9", "shared")], &["b1"]))
        .into_result()
        .unwrap();
    assert_eq!(new_attachment_count(&s, "n1", &[wanted("c1", "shared")]), 0);
    assert_eq!(new_attachment_count(&s, "n1", &[wanted("c2", "shared")]), 1);
    s.apply(&Command::SetAttachmentAddresses {
        addresses: vec![
            ("a1".into(), "10.0.0.7/24".parse().unwrap()),
            ("gone".into(), "10.0.0.8/24".parse().unwrap()),
        ],
    })
    .into_result()
    .unwrap();
    assert_eq!(
        s.attachments["a1"].addr,
        Some("10.0.0.7/24".parse().unwrap())
    );
    // A network with an attached container is not removed.
    assert!(matches!(
        s.apply(&Command::RemoveNetwork {
            id: "shared".into()
        })
        .into_result(),
        Err(Rejection::NetworkHasEndpoints { .. })
    ));

    // Kept ones keep their ID and address; a new one is added; the rest of n1's go,
    // n2's stay.
    let mut c1 = wanted("c1", "shared");
    c1.aliases = vec!["db".into()];
    s.apply(&set("n1", vec![c1, wanted("c2", "shared")], &["a2"]))
        .into_result()
        .unwrap();
    assert_eq!(
        s.attachments["a1"].addr,
        Some("10.0.0.7/24".parse().unwrap())
    );
    assert_eq!(s.attachments["a1"].aliases, vec!["db".to_string()]);
    assert_eq!(s.attachments["a2"].node_id, "n1");
    assert_eq!(declared_attachments(&s, "n1").len(), 2);
    s.apply(&set("n1", vec![wanted("c2", "shared")], &[]))
        .into_result()
        .unwrap();
    assert!(!s.attachments.contains_key("a1"));
    assert!(s.attachments.contains_key("b1"));
    // A removed node's attachments go with it.
    s.apply(&Command::RemoveNode { id: "n2".into() });
    assert!(!s.attachments.contains_key("b1"));
}
