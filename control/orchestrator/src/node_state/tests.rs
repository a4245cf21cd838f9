use std::collections::BTreeMap;

use shoal_cluster::store::{
    Availability, Command, Endpoint, EndpointMode, Network, Node, PortConfig, Protocol,
    RestartCondition, Role, ServiceMode, ServiceSpec, TaskStatus, TaskStatusUpdate,
};

use super::*;
use crate::scheduler::plan;

fn node(id: &str, ip: &str) -> Node {
    Node {
        id: id.into(),
        hostname: id.into(),
        role: Role::Manager,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        advertise_addr: format!("{ip}:2377"),
        data_path_addr: None,
        engine_version: "20.10".into(),
        resources: Default::default(),
        labels: BTreeMap::new(),
        raft_id: None,
        gossip: None,
        version: 0,
        tls: None,
        wireguard_rotation: 0,
    }
}

fn network(id: &str, name: &str, subnet: &str, gw: &str, vni: u32, ingress: bool) -> Network {
    Network {
        id: id.into(),
        name: name.into(),
        driver: "overlay".into(),
        subnet: Some(subnet.parse().unwrap()),
        gateway: Some(gw.parse().unwrap()),
        vni: Some(vni),
        ingress,
        attachable: false,
        internal: false,
        encrypted: false,
        labels: BTreeMap::new(),
        options: BTreeMap::new(),
        version: 0,
    }
}

fn cluster() -> ClusterState {
    let mut s = ClusterState::default();
    let mut ok = |c: Command| assert!(s.apply(&c).into_result().is_ok());
    ok(Command::UpsertNode {
        node: node("n1", "192.168.77.11"),
    });
    ok(Command::UpsertNode {
        node: node("n2", "192.168.77.12"),
    });
    ok(Command::UpsertNetwork {
        network: network("ING", "ingress", "10.255.0.0/16", "10.255.0.1", 4096, true),
    });
    ok(Command::UpsertNetwork {
        network: network("WEB", "web", "10.0.1.0/24", "10.0.1.1", 4097, false),
    });
    ok(Command::CreateService {
        service: Box::new(Service {
            id: "S".into(),
            spec: ServiceSpec {
                placement: Default::default(),
                name: "myweb".into(),
                labels: BTreeMap::new(),
                image: "shoal/web:1".into(),
                args: vec![],
                env: vec![],
                mode: ServiceMode::Replicated { replicas: 2 },
                networks: vec!["WEB".into()],
                ports: vec![PortConfig {
                    protocol: Protocol::Tcp,
                    target: 80,
                    published: 8080,
                    mode: PublishMode::Ingress,
                    balance: None,
                }],
                endpoint_mode: EndpointMode::Vip,
                constraints: vec![],
                healthcheck: None,
                restart_condition: RestartCondition::Any,
                restart_delay_ms: shoal_cluster::store::DEFAULT_RESTART_DELAY_MS,
                restart_max_attempts: 0,
                restart_window_ms: 0,
                stop_grace_ms: shoal_cluster::store::DEFAULT_STOP_GRACE_MS,
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
        }),
    });
    let mut n = 0;
    for c in plan(&s, 1, &mut || {
        n += 1;
        format!("t{n}")
    }) {
        assert!(s.apply(&c).into_result().is_ok());
    }
    let tasks: Vec<(String, String)> = s
        .tasks
        .values()
        .map(|t| (t.id.clone(), t.node_id.clone().unwrap()))
        .collect();
    for (id, node) in tasks {
        s.apply(&Command::UpdateTaskStatus {
            node_id: node,
            updates: vec![TaskStatusUpdate {
                task_id: id,
                status: TaskStatus {
                    state: TaskState::Running,
                    ..Default::default()
                },
            }],
        });
    }
    s
}

#[test]
fn a_node_declares_its_tasks_ingress_first_and_the_others_as_remote() {
    let s = cluster();
    let ns = compute(&s, "n1");
    ns.overlay.validate().expect("a valid overlay state");
    ns.lb.validate(&ns.overlay).expect("a valid LB state");
    let nets: Vec<&str> = ns.overlay.networks.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(nets, vec!["ingress", "web"]);
    let local: Vec<&str> = ns
        .overlay
        .local_endpoints
        .iter()
        .map(|e| e.network.as_str())
        .collect();
    assert_eq!(local, vec!["ingress", "web"], "ingress first");
    let own = s
        .tasks
        .values()
        .find(|t| t.node_id.as_deref() == Some("n1"))
        .unwrap();
    assert_eq!(
        ns.overlay.local_endpoints[0].container,
        format!("myweb.{}.{}.sandbox", own.slot, own.id)
    );
    assert_eq!(ns.overlay.remote_endpoints.len(), 2);
    assert!(ns
        .overlay
        .remote_endpoints
        .iter()
        .all(|r| r.vtep == "192.168.77.12".parse::<Ipv4Addr>().unwrap()));
    assert_eq!(ns.lb.ingress_network.as_deref(), Some("ingress"));
    let svc = &ns.lb.services[0];
    assert_eq!(svc.vips.len(), 2);
    assert_eq!(svc.backends.len(), 2);
    assert_eq!(svc.ports[0].published, 8080);
    shoal_dns::records::RecordTable::build(&ns.dns).expect("a valid DNS state");
    let d = &ns.dns.services[0];
    assert_eq!(d.name, "myweb");
    assert_eq!(d.tasks.len(), 2);
    assert_eq!(d.vips.len(), 2);
}

#[test]
fn a_task_told_to_stop_keeps_its_network_until_it_has_stopped_but_gets_no_new_connections() {
    let mut s = cluster();
    let remote = s
        .tasks
        .values()
        .find(|t| t.node_id.as_deref() == Some("n2"))
        .unwrap()
        .id
        .clone();
    let mut stopping = s.tasks[&remote].clone();
    stopping.desired_state = TaskState::Shutdown;
    assert!(s
        .apply(&Command::PutTasks {
            tasks: vec![stopping]
        })
        .into_result()
        .is_ok());
    let on_n2 = compute(&s, "n2");
    assert_eq!(
        on_n2.overlay.local_endpoints.len(),
        2,
        "still attached while it runs: {:?}",
        on_n2.overlay.local_endpoints
    );
    let on_n1 = compute(&s, "n1");
    assert_eq!(on_n1.overlay.remote_endpoints.len(), 2);
    let backend = on_n1.lb.services[0]
        .backends
        .iter()
        .find(|b| b.task == remote)
        .expect("a backend for the stopping task");
    assert_eq!(backend.state, lb::BackendState::Draining);
    assert!(on_n1.dns.services[0].tasks.iter().all(|t| t.id != remote));

    // Once it has stopped, it leaves the networks everywhere.
    s.apply(&Command::UpdateTaskStatus {
        node_id: "n2".into(),
        updates: vec![TaskStatusUpdate {
            task_id: remote.clone(),
            status: TaskStatus {
                state: TaskState::Shutdown,
                ..Default::default()
            },
        }],
    });
    assert!(compute(&s, "n2").overlay.local_endpoints.is_empty());
    assert!(compute(&s, "n1").overlay.remote_endpoints.is_empty());
}

#[test]
fn the_tasks_of_a_removed_service_stay_attached_until_they_stop() {
    let mut s = cluster();
    let own = s
        .tasks
        .values()
        .find(|t| t.node_id.as_deref() == Some("n1"))
        .unwrap()
        .clone();
    let mut with_spec = own.clone();
    with_spec.spec = Some(Box::new(s.services["S"].spec.clone()));
    assert!(s
        .apply(&Command::PutTasks {
            tasks: vec![with_spec]
        })
        .into_result()
        .is_ok());
    assert!(s
        .apply(&Command::RemoveService { id: "S".into() })
        .into_result()
        .is_ok());
    let ns = compute(&s, "n1");
    let container = format!("myweb.{}.{}.sandbox", own.slot, own.id);
    assert!(
        ns.overlay
            .local_endpoints
            .iter()
            .any(|e| e.container == container && e.network == "web"),
        "{:?}",
        ns.overlay.local_endpoints
    );
    assert!(ns.lb.services.is_empty() && ns.dns.services.is_empty());
}

#[test]
fn every_task_container_is_declared_for_egress_with_a_network_or_not() {
    let mut s = cluster();
    let mut lone = s.services["S"].clone();
    lone.id = "L".into();
    lone.spec.name = "lone".into();
    lone.spec.networks.clear();
    lone.spec.ports.clear();
    lone.spec.mode = ServiceMode::Replicated { replicas: 2 };
    assert!(s
        .apply(&Command::CreateService {
            service: Box::new(lone)
        })
        .into_result()
        .is_ok());
    let mut n = 100;
    for c in plan(&s, 2, &mut || {
        n += 1;
        format!("t{n}")
    }) {
        assert!(s.apply(&c).into_result().is_ok());
    }
    let ns = compute(&s, "n1");
    let mine: BTreeSet<String> = s
        .tasks
        .values()
        .filter(|t| t.node_id.as_deref() == Some("n1"))
        .map(|t| crate::sandbox::name(&t.container_name(&s.services[&t.service_id].spec.name)))
        .collect();
    assert_eq!(mine.len(), 2, "one task of each service on n1: {mine:?}");
    assert_eq!(ns.task_containers, mine);
    assert!(ns.task_containers.iter().any(|c| c.starts_with("lone.")));
    // The lone task has no endpoint: only egress knows it.
    assert!(ns
        .overlay
        .local_endpoints
        .iter()
        .all(|e| e.container.starts_with("myweb.")));
}

#[test]
fn a_node_without_tasks_still_serves_published_ports() {
    let mut s = cluster();
    s.apply(&Command::UpsertNode {
        node: node("n3", "192.168.77.13"),
    });
    let ns = compute(&s, "n3");
    ns.overlay.validate().unwrap();
    ns.lb.validate(&ns.overlay).unwrap();
    assert!(ns.overlay.local_endpoints.is_empty());
    assert_eq!(ns.overlay.networks.len(), 1, "ingress only");
    let svc = &ns.lb.services[0];
    assert_eq!(svc.backends.len(), 2);
    assert_eq!(svc.vips.len(), 1, "the ingress VIP only");
}

#[test]
fn files_are_written_atomically_and_only_when_changed() {
    let dir = std::env::temp_dir().join(format!("shoal-node-state-{}", std::process::id()));
    let path = dir.join("declared").join("overlay.json");
    let ns = compute(&cluster(), "n1");
    assert!(write_if_changed(&path, &ns.overlay).unwrap());
    let back: overlay::OverlayState = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(back, ns.overlay);
    assert!(!write_if_changed(&path, &ns.overlay).unwrap());
    let _ = fs::remove_dir_all(&dir);
}

/// Two nodes gossiping over loopback UDP: a remote task counts only while its node
/// gossips it, and leaves n1's declared state once n2 stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_tasks_follow_gossip() {
    use std::{
        collections::HashMap,
        time::{Duration, Instant},
    };

    use crate::gossip_member::{Member, RunningTask};

    let mut s = cluster();
    for (id, ip) in [("n1", "127.0.0.11"), ("n2", "127.0.0.12")] {
        let mut n = s.nodes[id].clone();
        n.data_path_addr = Some(ip.parse().unwrap());
        assert!(s
            .apply(&Command::UpsertNode { node: n })
            .into_result()
            .is_ok());
    }
    let key = shoal_cluster::manager::new_gossip_key(1).unwrap();
    assert!(s
        .apply(&Command::SetGossipKeys { keys: vec![key] })
        .into_result()
        .is_ok());
    assert!(s
        .apply(&Command::SetCluster {
            cluster: store::ClusterSpec {
                id: "c-gossip-test".into(),
                ..Default::default()
            },
        })
        .into_result()
        .is_ok());
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let running = |node: &str| -> HashMap<String, RunningTask> {
        s.tasks
            .values()
            .filter(|t| t.node_id.as_deref() == Some(node))
            .map(|t| (t.id.clone(), RunningTask { healthy: true }))
            .collect()
    };
    let mut m1 = Member::new(Some(format!("127.0.0.11:{port}").parse().unwrap()));
    let mut m2 = Member::new(Some(format!("127.0.0.12:{port}").parse().unwrap()));
    m1.sync(&s, "n1", &running("n1")).await;
    m2.sync(&s, "n2", &running("n2")).await;
    assert!(
        m1.table().is_none(),
        "no gossip before the store shows this run's signing key"
    );
    // The executor registers each run's key; the managers put it in the store.
    for (id, m) in [("n1", &mut m1), ("n2", &mut m2)] {
        let gossip = m.registration_due().expect("a key to register");
        assert!(m.registration_due().is_none(), "sent once, not every pass");
        assert!(s
            .apply(&Command::SetNodeGossip {
                id: id.into(),
                gossip,
            })
            .into_result()
            .is_ok());
    }
    let running = |node: &str| -> HashMap<String, RunningTask> {
        s.tasks
            .values()
            .filter(|t| t.node_id.as_deref() == Some(node))
            .map(|t| (t.id.clone(), RunningTask { healthy: true }))
            .collect()
    };
    m1.sync(&s, "n1", &running("n1")).await;
    m2.sync(&s, "n2", &running("n2")).await;
    assert!(m1.registration_due().is_none(), "registered");
    let table = m1
        .table()
        .expect("gossip runs once the store has both keys");
    assert!(
        m1.settled_table(&s, "n1").is_none(),
        "a member that heard from nobody yet: the store alone counts"
    );

    // Nothing heard from n2 yet: its task is not there.
    let before = compute_with(&s, "n1", Some(&shoal_gossip::EndpointTable::default()));
    assert!(before.overlay.remote_endpoints.is_empty());
    assert_eq!(before.lb.services[0].backends.len(), 1, "own task only");
    assert_eq!(before.dns.services[0].tasks.len(), 1);
    let all_nets: BTreeSet<String> = s.networks.keys().cloned().collect();
    let n2_tasks: Vec<String> = (s.tasks.values())
        .filter(|t| t.node_id.as_deref() == Some("n2"))
        .map(|t| t.id.clone())
        .collect();
    let nothing = shoal_gossip::EndpointTable::default();
    assert_eq!(
        unheard_peers(&s, "n1", &all_nets, &nothing),
        n2_tasks,
        "n2's running task is not heard of yet"
    );
    assert!(
        unheard_peers(&s, "n1", &BTreeSet::new(), &nothing).is_empty(),
        "only the networks asked about count"
    );
    drop(table);

    let has_n2 = |m: &Member| m.table().unwrap().iter().any(|e| &*e.node == "n2");
    let start = Instant::now();
    while !has_n2(&m1) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "n2's endpoints never reached n1: {:?}",
            m1.table()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let table = m1.table().unwrap();
    assert_eq!(
        table.remote("n1").count(),
        2,
        "n2's task on ingress and web"
    );
    let with = compute_with(&s, "n1", Some(&table));
    assert_eq!(with.overlay.remote_endpoints.len(), 2);
    assert_eq!(with.lb.services[0].backends.len(), 2);
    assert_eq!(with.dns.services[0].tasks.len(), 2);
    assert_eq!(with, compute(&s, "n1"), "store and gossip agree");
    assert!(unheard_peers(&s, "n1", &all_nets, &table).is_empty());
    assert!(
        m1.settled_table(&s, "n1").is_some(),
        "once it agrees with the store, the table counts"
    );
    let counters = m1.gossip().unwrap().counters();
    assert!(
        counters.received > 0 && counters.packets_dropped() == 0,
        "{counters:?}"
    );

    // n2 stops gossiping (as a crashed agent does): withdrawn within the bound.
    drop(m2);
    let gone = Instant::now();
    while has_n2(&m1) {
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "n2 still in n1's table after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("n2 withdrawn from n1's table after {:?}", gone.elapsed());
    let after = compute_with(&s, "n1", Some(&m1.table().unwrap()));
    assert_eq!(
        compute_with(&s, "n1", m1.settled_table(&s, "n1").as_deref()),
        after,
        "caught up once, the table counts when it disagrees with the store"
    );
    assert!(after.overlay.remote_endpoints.is_empty());
    assert_eq!(after.lb.services[0].backends.len(), 1);
    assert_eq!(after.dns.services[0].tasks.len(), 1);
    m1.shutdown().await;
}

#[test]
fn the_cluster_vxlan_port_is_declared_to_every_node() {
    let mut state = cluster();
    assert_eq!(
        compute(&state, "n1").data_path_port,
        None,
        "no spec: the agent's own"
    );
    state.cluster = Some(store::ClusterSpec {
        data_path_port: 7789,
        ..Default::default()
    });
    for node in ["n1", "n2"] {
        let declared: shoal_dataplane::reconcile::DeclaredNode = compute(&state, node).into();
        assert_eq!(declared.data_path_port, Some(7789), "{node}");
    }
}

#[test]
fn every_nodes_data_path_address_is_a_vtep_from_join_to_removal() {
    let mut s = cluster();
    let ip = |a: &str| -> Ipv4Addr { a.parse().unwrap() };
    let vteps = |s: &ClusterState| compute(s, "n1").cluster_vteps;
    assert_eq!(
        vteps(&s),
        [ip("192.168.77.11"), ip("192.168.77.12")]
            .into_iter()
            .collect()
    );
    let apply = |s: &mut ClusterState, c: Command| assert!(s.apply(&c).into_result().is_ok());
    // A node joining with a data-path address is known by that address.
    let mut n3 = node("n3", "192.168.77.13");
    n3.data_path_addr = Some("192.168.78.13".parse().unwrap());
    apply(&mut s, Command::UpsertNode { node: n3 });
    assert!(vteps(&s).contains(&ip("192.168.78.13")));
    assert!(!vteps(&s).contains(&ip("192.168.77.13")));
    // Down (it left, or is cut off from the managers): still a member.
    apply(
        &mut s,
        Command::SetStatus {
            id: "n2".into(),
            status: NodeStatus::Down,
        },
    );
    assert!(vteps(&s).contains(&ip("192.168.77.12")));
    // Removed: gone, on every node.
    apply(&mut s, Command::RemoveNode { id: "n2".into() });
    for node in ["n1", "n3"] {
        let declared: shoal_dataplane::reconcile::DeclaredNode = compute(&s, node).into();
        assert_eq!(
            declared.cluster_vteps,
            Some(
                [ip("192.168.77.11"), ip("192.168.78.13")]
                    .into_iter()
                    .collect()
            ),
            "{node}"
        );
    }
}

#[test]
fn a_services_network_aliases_are_declared_to_dns_on_that_network() {
    let mut s = cluster();
    let mut service = s.services["S"].clone();
    service
        .spec
        .network_aliases
        .insert("WEB".into(), vec!["www".into()]);
    s.services.insert("S".into(), service);
    let ns = compute(&s, "n1");
    let web = ns
        .dns
        .services
        .iter()
        .find(|d| d.name == "myweb")
        .expect("the service is declared");
    assert_eq!(
        web.aliases,
        vec![shoal_dns::records::NetAlias {
            network: "web".into(),
            alias: "www".into(),
        }]
    );
    // A state the resolver takes (its lookups are tested in shoal-dns).
    shoal_dns::records::RecordTable::build(&ns.dns).expect("a valid DNS state");
}

#[test]
fn a_tasks_own_resolvers_are_declared_to_dns_from_the_spec_it_runs() {
    let mut s = cluster();
    for t in s.tasks.values_mut() {
        let mut spec = t
            .spec
            .clone()
            .map(|b| *b)
            .unwrap_or(s.services["S"].spec.clone());
        spec.container.dns.nameservers = vec!["192.0.2.53".into()];
        t.spec = Some(Box::new(spec));
    }
    let ns = compute(&s, "n1");
    let web = ns.dns.services.iter().find(|d| d.name == "myweb").unwrap();
    assert!(!web.tasks.is_empty());
    for t in &web.tasks {
        assert_eq!(
            t.nameservers,
            vec!["192.0.2.53".parse::<std::net::IpAddr>().unwrap()]
        );
    }
}

/// A container that is not a task, attached to an attachable network on n2: n2 plumbs
/// it as a local endpoint (with egress), n1 reaches it as a remote one once it has a
/// task on that network, and both name it (and its alias) in DNS; detached, it is gone.
#[test]
fn attached_containers_are_endpoints_and_names_like_tasks() {
    let mut s = cluster();
    let mut web = s.networks["WEB"].clone();
    web.attachable = true;
    s.apply(&Command::UpsertNetwork { network: web });
    s.apply(&Command::SetNodeAttachments {
        node_id: "n2".into(),
        wanted: vec![
            shoal_cluster::store::WantedAttachment {
                container_id: "cid1".into(),
                container_name: "c1".into(),
                network_id: "WEB".into(),
                aliases: vec!["toolbox".into(), "myweb".into()],
            },
            shoal_cluster::store::WantedAttachment {
                container_id: "cid2".into(),
                container_name: "myweb.1".into(),
                network_id: "WEB".into(),
                aliases: vec![],
            },
        ],
        new_ids: vec!["A1".into(), "A2".into()],
    })
    .into_result()
    .unwrap();
    // No address yet: nothing declared for it.
    let before = compute(&s, "n2");
    assert!(!before.task_containers.contains("cid1"));
    s.apply(&Command::SetAttachmentAddresses {
        addresses: vec![
            ("A1".into(), "10.0.1.200/24".parse().unwrap()),
            ("A2".into(), "10.0.1.201/24".parse().unwrap()),
        ],
    });
    let ip: Ipv4Addr = "10.0.1.200".parse().unwrap();

    let n2 = compute(&s, "n2");
    n2.overlay.validate().expect("a valid overlay state");
    assert!(n2.task_containers.contains("cid1"));
    assert!(n2
        .overlay
        .local_endpoints
        .iter()
        .any(|e| e.container == "cid1" && e.ip == ip && e.network == "web"));
    let n1 = compute(&s, "n1");
    n1.overlay.validate().expect("a valid overlay state");
    assert!(n1
        .overlay
        .remote_endpoints
        .iter()
        .any(|e| e.ip == ip && e.vtep == "192.168.77.12".parse::<Ipv4Addr>().unwrap()));
    for ns in [&n1, &n2] {
        shoal_dns::records::RecordTable::build(&ns.dns).expect("a DNS state the resolver takes");
        let c1: Vec<&dns::Container> = ns.dns.containers.iter().collect();
        // A name or alias that could be a service's or a task's is left out.
        assert_eq!(c1.len(), 1, "{c1:?}");
        assert_eq!(c1[0].name, "c1");
        assert_eq!(c1[0].addresses[0].ip, IpAddr::V4(ip));
        let aliases: Vec<&str> = c1[0].aliases.iter().map(|a| a.alias.as_str()).collect();
        assert_eq!(aliases, vec!["toolbox"]);
    }

    s.apply(&Command::SetNodeAttachments {
        node_id: "n2".into(),
        wanted: vec![],
        new_ids: vec![],
    });
    let n1 = compute(&s, "n1");
    assert!(n1.overlay.remote_endpoints.iter().all(|e| e.ip != ip));
    assert!(n1.dns.containers.is_empty());
    assert!(!compute(&s, "n2").task_containers.contains("cid1"));
}

#[test]
fn a_stale_task_holding_its_replacements_address_costs_only_its_own_endpoint() {
    let mut s = cluster();
    let own = s
        .tasks
        .values()
        .find(|t| t.node_id.as_deref() == Some("n1"))
        .unwrap()
        .clone();
    // The view still holds an ended task as live, with the address its replacement
    // (`own`, made later) was given.
    let mut stale = own.clone();
    stale.id = "stale".into();
    stale.created_ms = own.created_ms.saturating_sub(1000);
    s.tasks.insert(stale.id.clone(), stale);

    let on_n1 = compute(&s, "n1");
    on_n1.overlay.validate().expect("a valid overlay state");
    let containers: Vec<&str> = on_n1
        .overlay
        .local_endpoints
        .iter()
        .map(|e| e.container.as_str())
        .collect();
    assert_eq!(containers.len(), 2, "{containers:?}");
    assert!(
        containers.iter().all(|c| c.contains(&own.id)),
        "the newest task keeps the addresses: {containers:?}"
    );
    assert_eq!(
        on_n1.address_conflicts.len(),
        2,
        "the stale task's endpoints named as left out: {:?}",
        on_n1.address_conflicts
    );
    let on_n2 = compute(&s, "n2");
    on_n2
        .overlay
        .validate()
        .expect("a valid overlay state on n2");
    assert_eq!(on_n2.overlay.remote_endpoints.len(), 2);
    assert_eq!(on_n2.address_conflicts.len(), 2);
}

#[test]
fn a_service_gossip_would_leave_empty_keeps_the_tasks_the_store_runs_on_ready_nodes() {
    let mut s = cluster();
    // n1's own task has ended: the service runs on n2 only.
    let own = (s.tasks.values())
        .find(|t| t.node_id.as_deref() == Some("n1"))
        .unwrap()
        .id
        .clone();
    s.apply(&Command::UpdateTaskStatus {
        node_id: "n1".into(),
        updates: vec![TaskStatusUpdate {
            task_id: own,
            status: TaskStatus {
                state: TaskState::Failed,
                ..Default::default()
            },
        }],
    });
    let n2_task = (s.tasks.values())
        .find(|t| t.node_id.as_deref() == Some("n2"))
        .unwrap()
        .id
        .clone();
    // Gossip has not heard of n2's task (n2's agent restarting, say).
    let unheard = compute_with(&s, "n1", Some(&shoal_gossip::EndpointTable::default()));
    let backends: Vec<&str> = unheard.lb.services[0]
        .backends
        .iter()
        .map(|b| b.task.as_str())
        .collect();
    assert_eq!(backends, vec![n2_task.as_str()], "kept: the store runs it");
    assert_eq!(
        unheard.overlay.remote_endpoints.len(),
        1,
        "and reachable: its ingress endpoint is declared"
    );
    unheard
        .lb
        .validate(&unheard.overlay)
        .expect("a valid LB state");
    assert_eq!(unheard, compute(&s, "n1"), "as the store alone says");

    // The managers found n2 dead: nothing is kept.
    let mut n2 = s.nodes["n2"].clone();
    n2.status = NodeStatus::Down;
    assert!(s
        .apply(&Command::UpsertNode { node: n2 })
        .into_result()
        .is_ok());
    let down = compute_with(&s, "n1", Some(&shoal_gossip::EndpointTable::default()));
    assert!(down.lb.services[0].backends.is_empty());
    assert!(down.overlay.remote_endpoints.is_empty());
}
