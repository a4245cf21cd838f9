//! Tests of a node's view: what its tasks need, nothing of other services' specs.

use super::*;
use crate::registry_auth::{RegistryAuthKey, RegistryCredentials};
use crate::store::{
    Availability, Network, NetworkAttachment, Node, NodeStatus, PortConfig, Protocol, PublishMode,
    Service, ServiceMode, VirtualIp,
};

fn service(id: &str, networks: &[&str], key: &RegistryKeyring) -> Service {
    let creds = RegistryCredentials {
        server_address: "r:5000".into(),
        username: format!("user-{id}"),
        password: "pw".into(),
    };
    Service {
        id: id.into(),
        spec: ServiceSpec {
            placement: Default::default(),
            name: id.into(),
            labels: BTreeMap::from([("team".into(), format!("label-{id}"))]),
            image: format!("r:5000/{id}:1"),
            args: vec![format!("arg-{id}")],
            env: vec![format!("SECRET={id}-env")],
            mode: ServiceMode::Replicated { replicas: 1 },
            networks: networks.iter().map(|n| n.to_string()).collect(),
            ports: vec![],
            endpoint_mode: Default::default(),
            constraints: vec!["node.role==worker".into()],
            healthcheck: None,
            restart_condition: Default::default(),
            restart_delay_ms: DEFAULT_RESTART_DELAY_MS,
            restart_max_attempts: 0,
            restart_window_ms: 0,
            stop_grace_ms: DEFAULT_STOP_GRACE_MS,
            container: crate::store::ContainerOptions {
                user: format!("user-{id}"),
                ..Default::default()
            },
            network_aliases: networks
                .iter()
                .map(|n| (n.to_string(), vec![format!("{id}-alias")]))
                .collect(),
            update_config: Default::default(),
            secrets: Vec::new(),
            configs: Vec::new(),
            rollback_config: UpdateConfig::rollback_default(),
        },
        created_ms: 0,
        updated_ms: 0,
        endpoint: crate::store::Endpoint {
            virtual_ips: networks
                .iter()
                .map(|n| VirtualIp {
                    network_id: n.to_string(),
                    addr: "10.0.1.2/24".parse().unwrap(),
                })
                .collect(),
        },
        force_update: 0,
        registry_auth: Some(key.seal(id, &creds).unwrap()),
        previous_spec: None,
        update_status: None,
        job_status: None,
        version: 0,
    }
}

fn task(id: &str, service: &Service, node: &str, state: TaskState) -> Task {
    Task {
        id: id.into(),
        service_id: service.id.clone(),
        slot: 1,
        node_id: Some(node.into()),
        desired_state: TaskState::Running,
        status: TaskStatus {
            state,
            message: format!("message of {id}"),
            err: Some(format!("error of {id}")),
            ..Default::default()
        },
        networks: service
            .spec
            .networks
            .iter()
            .map(|n| NetworkAttachment {
                network_id: n.clone(),
                addr: "10.0.1.5/24".parse().unwrap(),
            })
            .collect(),
        spec: Some(Box::new(service.spec.clone())),
        ..Default::default()
    }
}

fn network(id: &str, ingress: bool) -> Network {
    Network {
        id: id.into(),
        name: format!("name-{id}"),
        driver: "overlay".into(),
        subnet: Some("10.0.1.0/24".parse().unwrap()),
        gateway: Some("10.0.1.1".parse().unwrap()),
        vni: Some(4097),
        ingress,
        attachable: false,
        internal: false,
        encrypted: false,
        labels: Default::default(),
        options: Default::default(),
        version: 0,
    }
}

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        hostname: id.into(),
        role: crate::store::Role::Worker,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        advertise_addr: "10.9.0.1:2377".into(),
        data_path_addr: None,
        engine_version: String::new(),
        resources: Default::default(),
        labels: BTreeMap::from([("zone".into(), format!("zone-{id}"))]),
        raft_id: None,
        gossip: None,
        version: 0,
        tls: None,
        wireguard_rotation: 0,
    }
}

/// n1 runs `mine` (on net-a); `peer` shares net-a from n2; `far` is only on net-b, on
/// n2; `web` publishes a port (ingress), on n3.
fn cluster(key: &RegistryKeyring) -> ClusterState {
    let mut state = ClusterState::default();
    for n in ["n1", "n2", "n3"] {
        state.nodes.insert(n.into(), node(n));
    }
    state.networks.insert("ing".into(), network("ing", true));
    state
        .networks
        .insert("net-a".into(), network("net-a", false));
    state
        .networks
        .insert("net-b".into(), network("net-b", false));
    let mine = service("mine", &["net-a"], key);
    let peer = service("peer", &["net-a", "net-b"], key);
    let far = service("far", &["net-b"], key);
    let mut web = service("web", &[], key);
    web.spec.ports = vec![PortConfig {
        protocol: Protocol::Tcp,
        target: 80,
        published: 8080,
        mode: PublishMode::Ingress,
        balance: None,
    }];
    let mut web_task = task("t-web", &web, "n3", TaskState::Running);
    web_task.networks = vec![NetworkAttachment {
        network_id: "ing".into(),
        addr: "10.0.0.7/24".parse().unwrap(),
    }];
    for t in [
        task("t-mine", &mine, "n1", TaskState::Running),
        task("t-peer", &peer, "n2", TaskState::Running),
        task("t-far", &far, "n2", TaskState::Running),
        web_task,
    ] {
        state.tasks.insert(t.id.clone(), t);
    }
    for s in [mine, peer, far, web] {
        state.services.insert(s.id.clone(), s);
    }
    state.tokens = Some(serde_json::json!({"worker": "SWMTKN-1-secret"}));
    state.secrets.insert(
        "s1".into(),
        crate::store::DataObject {
            id: "s1".into(),
            name: "s1".into(),
            labels: BTreeMap::new(),
            data: b"secret".to_vec(),
            created_ms: 0,
            updated_ms: 0,
            version: 0,
        },
    );
    state.removed_nodes.insert(
        "gone".into(),
        crate::store::RemovedNode {
            at_ms: 1,
            until_ms: 2,
        },
    );
    state
}

#[test]
fn a_node_sees_its_own_services_whole_and_no_other_services_spec() {
    let key = RegistryKeyring::from(RegistryAuthKey::from_secret(b"ca", "c1"));
    let view = node_view(cluster(&key), "n1", &key);
    let text = serde_json::to_string(&view.state).unwrap();
    // Its own service, whole.
    assert_eq!(view.state.services["mine"].spec.env, ["SECRET=mine-env"]);
    assert_eq!(
        view.state.tasks["t-mine"].status.message,
        "message of t-mine"
    );
    // Nothing another service is made of, anywhere in the view.
    for other in ["peer", "far", "web"] {
        for word in [
            format!("{other}-env"),
            format!("label-{other}"),
            format!("arg-{other}"),
            format!("user-{other}"),
            format!("r:5000/{other}"),
        ] {
            assert!(!text.contains(&word), "{word} in {text}");
        }
    }
    for secret in ["SWMTKN", "c2VjcmV0", "gone", "zone-n2", "error of t-peer"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(view.state.tokens.is_none() && view.state.secrets.is_empty());
    assert_eq!(view.state.nodes["n1"].labels["zone"], "zone-n1");
    assert_eq!(view.state.nodes.len(), 3, "every node's address");
}

#[test]
fn a_node_sees_the_networks_of_its_tasks_and_what_runs_on_them() {
    let key = RegistryKeyring::from(RegistryAuthKey::from_secret(b"ca", "c1"));
    let view = node_view(cluster(&key), "n1", &key);
    let s = &view.state;
    // net-a (its task's) and ingress (a port is published): not net-b.
    assert_eq!(s.networks.keys().collect::<Vec<_>>(), ["ing", "net-a"]);
    // `far` lives on net-b only: not seen at all.
    assert!(!s.services.contains_key("far") && !s.tasks.contains_key("t-far"));
    // `peer` shares net-a: named and balanced there (VIP, alias), nothing of net-b.
    let peer = &s.services["peer"];
    assert_eq!(peer.spec.name, "peer");
    assert_eq!(peer.spec.networks, ["net-a"]);
    assert_eq!(
        peer.spec.network_aliases.keys().collect::<Vec<_>>(),
        ["net-a"]
    );
    assert_eq!(peer.endpoint.virtual_ips.len(), 1);
    let t = &s.tasks["t-peer"];
    assert_eq!(t.status.state, TaskState::Running);
    assert_eq!(t.networks.len(), 1);
    // The published service is on ingress, which every node carries.
    assert_eq!(s.services["web"].spec.ports.len(), 1);
    assert!(s.tasks.contains_key("t-web"));
}

#[test]
fn credentials_go_only_to_nodes_with_a_live_task_and_never_sealed() {
    let key = RegistryKeyring::from(RegistryAuthKey::from_secret(b"ca", "c1"));
    let mut state = cluster(&key);
    state.tasks.insert("t2".into(), {
        let far = state.services["far"].clone();
        task("t2", &far, "n1", TaskState::Rejected)
    });

    let n1 = node_view(state.clone(), "n1", &key);
    assert_eq!(n1.registry_auth.keys().collect::<Vec<_>>(), ["mine"]);
    assert_eq!(n1.registry_auth["mine"].username, "user-mine");
    assert!(n1
        .state
        .services
        .values()
        .all(|s| s.registry_auth.is_none()));

    let n2 = node_view(state.clone(), "n2", &key);
    assert_eq!(n2.registry_auth.keys().collect::<Vec<_>>(), ["far", "peer"]);

    assert!(node_view(state.clone(), "n9", &key)
        .registry_auth
        .is_empty());
    // Another cluster's key opens nothing (and hands nothing).
    let other = RegistryKeyring::from(RegistryAuthKey::from_secret(b"other", "c1"));
    assert!(node_view(state, "n1", &other).registry_auth.is_empty());
}

#[test]
fn a_secret_goes_only_to_the_nodes_running_a_task_that_uses_it() {
    let key = RegistryKeyring::from(RegistryAuthKey::from_secret(b"ca", "c1"));
    let mut state = cluster(&key);
    let reference = |id: &str| crate::store::FileReference {
        id: id.into(),
        name: id.into(),
        target: id.into(),
        uid: "0".into(),
        gid: "0".into(),
        mode: 0o400,
    };
    let object = |id: &str, data: &str| crate::store::DataObject {
        id: id.into(),
        name: id.into(),
        labels: BTreeMap::new(),
        data: data.as_bytes().to_vec(),
        created_ms: 0,
        updated_ms: 0,
        version: 0,
    };
    state
        .secrets
        .insert("s-pw".into(), object("s-pw", "pw-of-mine"));
    state
        .configs
        .insert("c-conf".into(), object("c-conf", "conf-of-mine"));
    // `mine`'s task on n1 uses both (its own spec says so).
    let t = state.tasks.get_mut("t-mine").unwrap();
    let spec = t.spec.as_mut().unwrap();
    spec.secrets = vec![reference("s-pw")];
    spec.configs = vec![reference("c-conf")];

    let n1 = node_view(state.clone(), "n1", &key);
    assert_eq!(n1.state.secrets["s-pw"].data, b"pw-of-mine");
    assert_eq!(n1.state.configs["c-conf"].data, b"conf-of-mine");
    for other in ["n2", "n3"] {
        let view = node_view(state.clone(), other, &key);
        let text = serde_json::to_string(&view).unwrap();
        assert!(view.state.secrets.is_empty() && view.state.configs.is_empty());
        assert!(
            !text.contains("cHctb2YtbWluZQ"),
            "{other} got the secret: {text}"
        );
    }
    // A task that ended no longer brings them.
    state.tasks.get_mut("t-mine").unwrap().status.state = TaskState::Shutdown;
    let n1 = node_view(state, "n1", &key);
    assert!(n1.state.secrets.is_empty() && n1.state.configs.is_empty());
}
