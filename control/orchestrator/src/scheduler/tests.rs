use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;

use shoal_cluster::store::{
    Availability, ClusterState, Command, Endpoint, FailureAction, Network, Node, PortConfig,
    Protocol, PublishMode, RestartCondition, Role, ServiceSpec, TaskStatusUpdate, UpdateState,
    UpdateStatus, DEFAULT_RESTART_DELAY_MS,
};

use super::*;

pub(super) fn node(id: &str, role: Role) -> Node {
    Node {
        id: id.into(),
        hostname: format!("h-{id}"),
        role,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        advertise_addr: "192.168.77.11:2377".into(),
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

fn network(id: &str, subnet: &str, gateway: &str, ingress: bool) -> Network {
    Network {
        id: id.into(),
        name: id.into(),
        driver: "overlay".into(),
        subnet: Some(subnet.parse().unwrap()),
        gateway: Some(gateway.parse().unwrap()),
        vni: Some(4096),
        ingress,
        attachable: false,
        internal: false,
        encrypted: false,
        labels: BTreeMap::new(),
        options: BTreeMap::new(),
        version: 0,
    }
}

pub(super) fn service(id: &str, mode: ServiceMode) -> Service {
    Service {
        id: id.into(),
        spec: ServiceSpec {
            placement: Default::default(),
            name: format!("svc-{id}"),
            labels: BTreeMap::new(),
            image: "shoal/web:1".into(),
            args: vec![],
            env: vec![],
            mode,
            networks: vec![],
            ports: vec![],
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
    }
}

pub(super) struct Sim {
    pub(super) state: ClusterState,
    pub(super) now: u64,
    next: u64,
}

impl Sim {
    pub(super) fn new(nodes: &[&str]) -> Sim {
        let mut state = ClusterState::default();
        for (i, n) in nodes.iter().enumerate() {
            let role = if i == 0 { Role::Manager } else { Role::Worker };
            apply(
                &mut state,
                Command::UpsertNode {
                    node: node(n, role),
                },
            );
        }
        apply(
            &mut state,
            Command::UpsertNetwork {
                network: network("ingress", "10.255.0.0/16", "10.255.0.1", true),
            },
        );
        apply(
            &mut state,
            Command::UpsertNetwork {
                network: network("web", "10.0.1.0/29", "10.0.1.1", false),
            },
        );
        Sim {
            state,
            now: 1_000_000,
            next: 0,
        }
    }

    pub(super) fn add(&mut self, s: Service) {
        apply(
            &mut self.state,
            Command::CreateService {
                service: Box::new(s),
            },
        );
    }

    pub(super) fn settle_once(&mut self) {
        self.settle_up_to(1);
    }

    /// Plans until nothing changes; every assigned task on a Ready node starts running.
    pub(super) fn settle(&mut self) {
        if !self.settle_up_to(20) {
            panic!("the plan does not settle: {:#?}", self.state.tasks);
        }
    }

    /// Plans up to `rounds` times; whether it settled.
    pub(super) fn settle_up_to(&mut self, rounds: usize) -> bool {
        for _ in 0..rounds {
            let mut next = self.next;
            let mut ids = || {
                next += 1;
                format!("t{next:03}")
            };
            let cmds = plan(&self.state, self.now, &mut ids);
            self.next = next;
            let mut reports: BTreeMap<String, Vec<TaskStatusUpdate>> = BTreeMap::new();
            for t in self.state.tasks.values() {
                let Some(n) = &t.node_id else { continue };
                if self.state.nodes[n].status != NodeStatus::Ready {
                    continue;
                }
                let state = match (t.desired_state, t.status.state) {
                    (TaskState::Running, TaskState::Assigned) => TaskState::Running,
                    (d, s) if d > TaskState::Running && !s.is_terminal() => TaskState::Shutdown,
                    _ => continue,
                };
                reports
                    .entry(n.clone())
                    .or_default()
                    .push(TaskStatusUpdate {
                        task_id: t.id.clone(),
                        status: TaskStatus {
                            state,
                            timestamp_ms: self.now,
                            ..Default::default()
                        },
                    });
            }
            if cmds.is_empty() && reports.is_empty() {
                return true;
            }
            for c in cmds {
                apply(&mut self.state, c);
            }
            for (node_id, updates) in reports {
                apply(
                    &mut self.state,
                    Command::UpdateTaskStatus { node_id, updates },
                );
            }
            self.now += 100;
        }
        false
    }

    pub(super) fn running(&self, service: &str) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for t in self.state.service_tasks(service) {
            if t.desired_state == TaskState::Running && t.status.state == TaskState::Running {
                *m.entry(t.node_id.clone().unwrap()).or_default() += 1;
            }
        }
        m
    }

    pub(super) fn set(&mut self, cmd: Command) {
        apply(&mut self.state, cmd);
    }

    pub(super) fn fail(&mut self, task: &str, state: TaskState) {
        let node = self.state.tasks[task].node_id.clone().unwrap();
        self.set(Command::UpdateTaskStatus {
            node_id: node,
            updates: vec![TaskStatusUpdate {
                task_id: task.into(),
                status: TaskStatus {
                    state,
                    timestamp_ms: self.now,
                    err: Some("task: non-zero exit (137)".into()),
                    ..Default::default()
                },
            }],
        });
    }
}

pub(super) fn apply(state: &mut ClusterState, c: Command) {
    let r = state.apply(&c);
    assert!(r.clone().into_result().is_ok(), "{c:?}: {r:?}");
}

#[test]
fn replicas_spread_over_nodes_and_scale_up_and_down() {
    let mut sim = Sim::new(&["a", "b", "c"]);
    sim.add(service("s", ServiceMode::Replicated { replicas: 2 }));
    sim.settle();
    let r = sim.running("s");
    assert_eq!(r.values().sum::<usize>(), 2);
    assert!(r.values().all(|&k| k == 1), "{r:?}");

    let mut s = sim.state.services["s"].clone();
    s.spec.mode = ServiceMode::Replicated { replicas: 4 };
    sim.set(Command::UpdateService {
        service: Box::new(s.clone()),
    });
    sim.settle();
    let r = sim.running("s");
    assert_eq!(r.len(), 3, "all three nodes get one: {r:?}");
    assert_eq!(r.values().sum::<usize>(), 4);
    let slots: Vec<u64> = sim
        .state
        .service_tasks("s")
        .filter(|t| t.desired_state == TaskState::Running)
        .map(|t| t.slot)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(slots, vec![1, 2, 3, 4]);

    s.spec.mode = ServiceMode::Replicated { replicas: 1 };
    sim.set(Command::UpdateService {
        service: Box::new(s),
    });
    sim.settle();
    assert_eq!(sim.running("s").values().sum::<usize>(), 1);
    assert_eq!(
        sim.state.service_tasks("s").count(),
        1,
        "scaled-down tasks are removed once stopped"
    );
}

#[test]
fn spread_counts_other_services_and_honours_constraints() {
    let mut sim = Sim::new(&["a", "b", "c"]);
    sim.set(Command::UpdateNodeLabels {
        id: "c".into(),
        add: BTreeMap::from([("zone".into(), "x".into())]),
        remove: vec![],
    });
    let mut only_x = service("x", ServiceMode::Replicated { replicas: 3 });
    only_x.spec.constraints = vec!["node.labels.zone==x".into()];
    sim.add(only_x);
    let mut not_manager = service("w", ServiceMode::Replicated { replicas: 4 });
    not_manager.spec.constraints = vec!["node.role!=manager".into()];
    sim.add(not_manager);
    sim.settle();
    assert_eq!(sim.running("x"), BTreeMap::from([("c".into(), 3)]));
    let w = sim.running("w");
    assert!(!w.contains_key("a"), "{w:?}");
    assert_eq!(w.values().sum::<usize>(), 4);
    // b has fewer tasks overall, so it gets more of w when counts of w tie.
    assert!(w["b"] >= w["c"], "{w:?}");
}

#[test]
fn impossible_constraint_leaves_tasks_pending_with_a_reason() {
    let mut sim = Sim::new(&["a", "b"]);
    let mut s = service("s", ServiceMode::Replicated { replicas: 2 });
    s.spec.constraints = vec!["node.hostname==nowhere".into()];
    sim.add(s);
    sim.settle();
    let tasks: Vec<&Task> = sim.state.service_tasks("s").collect();
    assert_eq!(tasks.len(), 2);
    for t in tasks {
        assert_eq!(t.status.state, TaskState::Pending);
        assert_eq!(
            t.status.err.as_deref(),
            Some("no suitable node (scheduling constraints not satisfied on 2 nodes)")
        );
        assert!(t.node_id.is_none());
    }
    // A node that satisfies it arrives: the pending tasks are placed there.
    let mut n = node("z", Role::Worker);
    n.hostname = "nowhere".into();
    sim.set(Command::UpsertNode { node: n });
    sim.settle();
    assert_eq!(sim.running("s"), BTreeMap::from([("z".into(), 2)]));
}

#[test]
fn reservations_count_against_node_capacity_and_wait_for_room() {
    let mut sim = Sim::new(&[]);
    for id in ["a", "b"] {
        let mut n = node(id, Role::Worker);
        n.resources = shoal_cluster::store::NodeResources {
            nano_cpus: 2_000_000_000,
            memory_bytes: 1 << 30,
        };
        sim.set(Command::UpsertNode { node: n });
    }
    // Larger than any node: pending with Swarm's reason.
    let mut big = service("big", ServiceMode::Replicated { replicas: 1 });
    big.spec.container.reservations.memory_bytes = 2 << 30;
    sim.add(big);
    // 1.5 CPUs each: one fits per node, the third waits.
    let mut cpu = service("cpu", ServiceMode::Replicated { replicas: 3 });
    cpu.spec.container.reservations.nano_cpus = 1_500_000_000;
    sim.add(cpu);
    sim.settle();
    let big: Vec<&Task> = sim.state.service_tasks("big").collect();
    assert_eq!(big.len(), 1);
    assert_eq!(big[0].status.state, TaskState::Pending);
    assert_eq!(
        big[0].status.err.as_deref(),
        Some("no suitable node (insufficient resources on 2 nodes)")
    );
    assert_eq!(
        sim.running("cpu"),
        BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
    );
    let waiting: Vec<&Task> = sim
        .state
        .service_tasks("cpu")
        .filter(|t| t.node_id.is_none())
        .collect();
    assert_eq!(waiting.len(), 1);
    assert_eq!(
        waiting[0].status.err.as_deref(),
        Some("no suitable node (insufficient resources on 2 nodes)")
    );
    // Unreserved tasks still go anywhere.
    sim.add(service("free", ServiceMode::Replicated { replicas: 2 }));
    sim.settle();
    assert_eq!(sim.running("free").values().sum::<usize>(), 2);
    // A node with room joins: the waiting tasks are placed there.
    let mut one = node("c", Role::Worker);
    one.resources = shoal_cluster::store::NodeResources {
        nano_cpus: 4_000_000_000,
        memory_bytes: 4 << 30,
    };
    sim.set(Command::UpsertNode { node: one });
    sim.settle();
    assert_eq!(sim.running("cpu").values().sum::<usize>(), 3);
    assert_eq!(sim.running("big"), BTreeMap::from([("c".into(), 1)]));
}

#[test]
fn global_mode_one_per_node_including_late_joiners_and_drain_pause() {
    let mut sim = Sim::new(&["a", "b"]);
    sim.add(service("g", ServiceMode::Global));
    sim.settle();
    assert_eq!(
        sim.running("g"),
        BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
    );
    sim.set(Command::UpsertNode {
        node: node("c", Role::Worker),
    });
    sim.settle();
    assert_eq!(sim.running("g").len(), 3);
    assert!(sim.state.service_tasks("g").all(|t| t.slot == 0));
    // Pause keeps the task; drain removes it.
    sim.set(Command::SetAvailability {
        id: "b".into(),
        availability: Availability::Pause,
    });
    sim.settle();
    assert_eq!(sim.running("g").len(), 3);
    sim.set(Command::SetAvailability {
        id: "c".into(),
        availability: Availability::Drain,
    });
    sim.settle();
    assert_eq!(
        sim.running("g"),
        BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
    );
}

#[test]
fn failed_tasks_are_replaced_after_the_delay_and_kept_as_history() {
    let mut sim = Sim::new(&["a"]);
    sim.add(service("s", ServiceMode::Replicated { replicas: 1 }));
    sim.settle();
    let first = sim.state.tasks.keys().next().unwrap().clone();
    sim.fail(&first, TaskState::Failed);
    // Within the restart delay: no replacement yet.
    let cmds = plan(&sim.state, sim.now + 10, &mut || "x".into());
    assert!(cmds.is_empty(), "{cmds:?}");
    sim.now += DEFAULT_RESTART_DELAY_MS;
    sim.settle();
    assert_eq!(sim.running("s").values().sum::<usize>(), 1);
    let old = &sim.state.tasks[&first];
    assert_eq!(old.desired_state, TaskState::Shutdown);
    assert_eq!(old.status.state, TaskState::Failed);
    let new = sim
        .state
        .service_tasks("s")
        .find(|t| t.desired_state == TaskState::Running)
        .unwrap();
    assert_eq!(new.slot, old.slot);
    // History is bounded.
    for _ in 0..10 {
        let current = sim
            .state
            .service_tasks("s")
            .find(|t| t.desired_state == TaskState::Running)
            .unwrap()
            .id
            .clone();
        sim.fail(&current, TaskState::Failed);
        // Failures in a row back off; the longest wait is enough for any.
        sim.now += restart::MAX_BACKOFF_MS;
        sim.settle();
    }
    assert!(sim.state.service_tasks("s").count() <= TASK_HISTORY + 1);
}

#[test]
fn restart_condition_none_and_on_failure() {
    let mut sim = Sim::new(&["a"]);
    let mut none = service("n", ServiceMode::Replicated { replicas: 1 });
    none.spec.restart_condition = RestartCondition::None;
    sim.add(none);
    let mut onf = service("o", ServiceMode::Replicated { replicas: 1 });
    onf.spec.restart_condition = RestartCondition::OnFailure;
    sim.add(onf);
    sim.settle();
    let n1 = sim.state.service_tasks("n").next().unwrap().id.clone();
    let o1 = sim.state.service_tasks("o").next().unwrap().id.clone();
    sim.fail(&n1, TaskState::Failed);
    sim.fail(&o1, TaskState::Complete);
    sim.now += 10 * DEFAULT_RESTART_DELAY_MS;
    sim.settle();
    assert_eq!(sim.state.service_tasks("n").count(), 1);
    assert_eq!(sim.state.service_tasks("o").count(), 1);
}

#[test]
fn down_node_tasks_move_and_do_not_come_back() {
    let mut sim = Sim::new(&["a", "b", "c"]);
    sim.add(service("s", ServiceMode::Replicated { replicas: 3 }));
    sim.settle();
    sim.set(Command::SetStatus {
        id: "c".into(),
        status: NodeStatus::Down,
    });
    sim.settle();
    let r = sim.running("s");
    assert_eq!(r.values().sum::<usize>(), 3);
    assert!(!r.contains_key("c"), "{r:?}");
    sim.set(Command::SetStatus {
        id: "c".into(),
        status: NodeStatus::Ready,
    });
    sim.settle();
    assert!(
        !sim.running("s").contains_key("c"),
        "no rebalance when a node returns"
    );
    // update --force redistributes.
    let mut s = sim.state.services["s"].clone();
    s.force_update += 1;
    sim.set(Command::UpdateService {
        service: Box::new(s),
    });
    sim.settle();
    let r = sim.running("s");
    assert_eq!(r.len(), 3, "{r:?}");
}

#[test]
fn addresses_and_vips_come_from_the_subnet_unique_and_ingress_first() {
    let mut sim = Sim::new(&["a"]);
    let mut s = service("s", ServiceMode::Replicated { replicas: 2 });
    s.spec.networks = vec!["web".into()];
    s.spec.ports = vec![PortConfig {
        protocol: Protocol::Tcp,
        target: 80,
        published: 8080,
        mode: PublishMode::Ingress,
        balance: None,
    }];
    sim.add(s);
    sim.settle();
    let svc = &sim.state.services["s"];
    let vip_nets: Vec<&str> = svc
        .endpoint
        .virtual_ips
        .iter()
        .map(|v| v.network_id.as_str())
        .collect();
    assert_eq!(vip_nets, vec!["ingress", "web"]);
    let mut seen = std::collections::BTreeSet::new();
    for v in &svc.endpoint.virtual_ips {
        assert!(seen.insert(v.addr));
    }
    for t in sim.state.service_tasks("s") {
        let nets: Vec<&str> = t.networks.iter().map(|a| a.network_id.as_str()).collect();
        assert_eq!(nets, vec!["ingress", "web"]);
        for a in &t.networks {
            assert!(seen.insert(a.addr), "{} used twice", a.addr);
        }
        let web = t.networks[1].addr;
        assert_eq!(web.network(), "10.0.1.0".parse::<Ipv4Addr>().unwrap());
        assert_eq!(web.prefix_len(), 29, "{web}");
        assert_ne!(
            web.addr(),
            "10.0.1.1".parse::<Ipv4Addr>().unwrap(),
            "not the gateway"
        );
    }
    // The /29 has 5 host addresses besides the gateway: VIP + 2 tasks + 2 more.
    let mut big = sim.state.services["s"].clone();
    big.spec.mode = ServiceMode::Replicated { replicas: 6 };
    sim.set(Command::UpdateService {
        service: Box::new(big),
    });
    sim.settle();
    let pending: Vec<&Task> = sim
        .state
        .service_tasks("s")
        .filter(|t| t.status.state == TaskState::Pending)
        .collect();
    assert_eq!(pending.len(), 2);
    assert_eq!(
        pending[0].status.err.as_deref(),
        Some("no address left on network web")
    );
}

#[test]
fn a_replacement_gets_a_fresh_address_and_an_ended_tasks_address_is_held_back() {
    let mut sim = Sim::new(&["a"]);
    let mut s = service("s", ServiceMode::Replicated { replicas: 1 });
    s.spec.networks = vec!["web".into()];
    // Short restarts: four failures in a row (backing off 1, 2, 4, 8 s) stay well
    // inside the 60 s hold-back.
    s.spec.restart_delay_ms = 1_000;
    sim.add(s);
    sim.settle();
    let addr = |sim: &Sim| {
        let t = sim
            .state
            .service_tasks("s")
            .find(|t| t.desired_state == TaskState::Running)
            .unwrap();
        (t.id.clone(), t.networks.first().map(|a| a.addr.to_string()))
    };
    // web is a /29: gateway .1, the VIP .2, the task .3.
    let (mut current, first) = addr(&sim);
    assert_eq!(first.as_deref(), Some("10.0.1.3/29"));
    // Each replacement gets an address never used: .4, .5, .6.
    for expected in ["10.0.1.4/29", "10.0.1.5/29", "10.0.1.6/29"] {
        sim.fail(&current, TaskState::Failed);
        sim.now += 8_000;
        sim.settle();
        let (id, got) = addr(&sim);
        assert_eq!(got.as_deref(), Some(expected));
        current = id;
    }
    // None left but those of the ended tasks, held back: the replacement waits...
    sim.fail(&current, TaskState::Failed);
    sim.now += 8_000;
    sim.settle();
    let (_, none) = addr(&sim);
    assert_eq!(none, None);
    let pending = sim
        .state
        .service_tasks("s")
        .find(|t| t.status.state == TaskState::Pending)
        .unwrap();
    assert_eq!(
        pending.status.err.as_deref(),
        Some("no address left on network web")
    );
    // ...until the oldest one's hold-back is over.
    sim.now += ipam::DEFAULT_HOLD_BACK.as_millis() as u64;
    sim.settle();
    let (_, reused) = addr(&sim);
    assert_eq!(reused.as_deref(), Some("10.0.1.3/29"));
    assert_eq!(sim.running("s").values().sum::<usize>(), 1);
}

#[test]
fn removed_service_tasks_go_once_stopped_or_their_node_is_down() {
    let mut sim = Sim::new(&["a", "b"]);
    sim.add(service("s", ServiceMode::Replicated { replicas: 2 }));
    sim.settle();
    sim.set(Command::SetStatus {
        id: "b".into(),
        status: NodeStatus::Down,
    });
    sim.set(Command::RemoveService { id: "s".into() });
    sim.settle();
    assert!(sim.state.tasks.is_empty(), "{:?}", sim.state.tasks);
}

#[test]
fn constraints_parse_and_bad_ones_are_refused() {
    assert!(Constraint::parse("node.role==manager").is_ok());
    assert!(Constraint::parse("node.labels.zone != a").is_ok());
    for bad in [
        "node.role==boss",
        "node.labels.==x",
        "engine.labels.x==y",
        "node.hostname",
        "node.id==",
    ] {
        assert!(Constraint::parse(bad).is_err(), "{bad}");
    }
}

/// What the manager does on `service update`: a new spec, the old one kept, an update
/// in progress.
fn start_update(sim: &mut Sim, id: &str, change: impl FnOnce(&mut ServiceSpec)) {
    let mut s = sim.state.services[id].clone();
    let old = s.spec.clone();
    change(&mut s.spec);
    s.previous_spec = Some(old);
    s.update_status = Some(UpdateStatus {
        state: UpdateState::Updating,
        started_ms: sim.now,
        completed_ms: None,
        message: "update in progress".into(),
    });
    sim.set(Command::UpdateService {
        service: Box::new(s),
    });
}

fn images_running(sim: &Sim, id: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in sim.state.service_tasks(id) {
        if t.desired_state == TaskState::Running && t.status.state == TaskState::Running {
            let image = t.spec.as_ref().map(|s| s.image.clone()).unwrap_or_default();
            *m.entry(image).or_default() += 1;
        }
    }
    m
}

fn update_state(sim: &Sim, id: &str) -> Option<UpdateState> {
    sim.state.services[id]
        .update_status
        .as_ref()
        .map(|u| u.state)
}

#[test]
fn an_update_replaces_tasks_in_batches_with_the_delay_between_them() {
    let mut sim = Sim::new(&["a", "b", "c"]);
    let mut s = service("s", ServiceMode::Replicated { replicas: 6 });
    s.spec.update_config.parallelism = 2;
    s.spec.update_config.delay_ms = 10_000;
    sim.add(s);
    sim.settle();
    start_update(&mut sim, "s", |s| s.image = "shoal/web:2".into());
    sim.settle();
    let batch = |sim: &Sim| {
        images_running(sim, "s")
            .get("shoal/web:2")
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(batch(&sim), 2, "{:?}", images_running(&sim, "s"));
    // Nothing more within the delay...
    sim.now += 9_000;
    sim.settle();
    assert_eq!(batch(&sim), 2);
    // ...then the next batch.
    sim.now += 1_000;
    sim.settle();
    assert_eq!(batch(&sim), 4);
    assert_eq!(update_state(&sim, "s"), Some(UpdateState::Updating));
    sim.now += 10_000;
    sim.settle();
    assert_eq!(
        images_running(&sim, "s"),
        BTreeMap::from([("shoal/web:2".into(), 6)])
    );
    // Complete once the last batch has been watched for the monitor period.
    assert_eq!(update_state(&sim, "s"), Some(UpdateState::Updating));
    sim.now += 5_000;
    sim.settle();
    assert_eq!(update_state(&sim, "s"), Some(UpdateState::Completed));
    // The old tasks keep their own spec as history.
    let old: Vec<String> = sim
        .state
        .service_tasks("s")
        .filter(|t| t.desired_state != TaskState::Running)
        .map(|t| t.spec.as_ref().unwrap().image.clone())
        .collect();
    assert_eq!(old.len(), 6);
    assert!(old.iter().all(|i| i == "shoal/web:1"), "{old:?}");
}

#[test]
fn a_failing_update_pauses_or_rolls_back_on_its_own() {
    for action in [FailureAction::Pause, FailureAction::Rollback] {
        let mut sim = Sim::new(&["a", "b"]);
        let mut s = service("s", ServiceMode::Replicated { replicas: 4 });
        s.spec.update_config.failure_action = action;
        sim.add(s);
        sim.settle();
        start_update(&mut sim, "s", |s| s.image = "broken:1".into());
        // The first new task fails as soon as it is assigned.
        let broken = |sim: &Sim| {
            sim.state
                .service_tasks("s")
                .find(|t| t.spec.as_ref().is_some_and(|s| s.image == "broken:1"))
                .map(|t| t.id.clone())
        };
        let mut new = None;
        for _ in 0..10 {
            sim.settle_once();
            new = broken(&sim);
            if new.is_some() {
                break;
            }
        }
        let new = new.expect("the first batch");
        sim.fail(&new, TaskState::Failed);
        sim.settle();
        let status = sim.state.services["s"].update_status.clone().unwrap();
        match action {
            FailureAction::Pause => {
                assert_eq!(status.state, UpdateState::Paused);
                assert_eq!(
                    status.message,
                    format!("update paused due to failure or early termination of task {new}")
                );
                // Paused: the other three still run the old image, nothing more changes.
                sim.now += 60_000;
                sim.settle();
                assert_eq!(images_running(&sim, "s").get("shoal/web:1"), Some(&3));
            }
            _ => {
                // The failed slot restarts after its delay, then the rollback is watched
                // for its monitor period.
                for _ in 0..2 {
                    sim.now += 10_000;
                    sim.settle();
                }
                let s = &sim.state.services["s"];
                assert_eq!(s.spec.image, "shoal/web:1");
                assert_eq!(s.previous_spec.as_ref().unwrap().image, "broken:1");
                assert_eq!(
                    update_state(&sim, "s"),
                    Some(UpdateState::RollbackCompleted)
                );
                assert_eq!(
                    images_running(&sim, "s"),
                    BTreeMap::from([("shoal/web:1".into(), 4)])
                );
            }
        }
    }
}

#[test]
fn start_first_keeps_every_slot_served_and_stop_first_waits_for_the_old_task() {
    for order in [UpdateOrder::StartFirst, UpdateOrder::StopFirst] {
        let mut sim = Sim::new(&["a", "b"]);
        let mut s = service("s", ServiceMode::Replicated { replicas: 3 });
        s.spec.update_config.order = order;
        sim.add(s);
        sim.settle();
        start_update(&mut sim, "s", |s| s.image = "shoal/web:2".into());
        // Step by step: new tasks start (Assigned -> Running) one plan after they are made.
        let mut least = usize::MAX;
        let mut most = 0;
        for _ in 0..200 {
            sim.now += 100;
            sim.settle();
            let running: usize = images_running(&sim, "s").values().sum();
            let live_in_slot_1 = sim
                .state
                .service_tasks("s")
                .filter(|t| t.slot == 1 && !t.status.state.is_terminal())
                .count();
            least = least.min(running);
            most = most.max(live_in_slot_1);
            if update_state(&sim, "s") == Some(UpdateState::Completed) {
                break;
            }
        }
        assert_eq!(update_state(&sim, "s"), Some(UpdateState::Completed));
        assert_eq!(
            images_running(&sim, "s"),
            BTreeMap::from([("shoal/web:2".into(), 3)])
        );
        match order {
            UpdateOrder::StartFirst => assert_eq!(least, 3, "start-first: never fewer than 3"),
            UpdateOrder::StopFirst => assert_eq!(most, 1, "stop-first: one task per slot at once"),
        }
    }
}

#[test]
fn a_crash_loop_backs_off() {
    let mut sim = Sim::new(&["a"]);
    sim.add(service("s", ServiceMode::Replicated { replicas: 1 }));
    sim.settle();
    let start = sim.now;
    let mut restarts = 0;
    while sim.now < start + 60_000 {
        let current = sim
            .state
            .service_tasks("s")
            .find(|t| t.desired_state == TaskState::Running && !t.status.state.is_terminal())
            .map(|t| t.id.clone());
        if let Some(id) = current {
            if sim.state.tasks[&id].status.state == TaskState::Running {
                sim.fail(&id, TaskState::Failed);
                restarts += 1;
            }
        }
        sim.now += 500;
        sim.settle();
    }
    // 5 s, then 10, 20, 40: four restarts in a minute (a fixed 5 s delay would give 12).
    assert!((3..=5).contains(&restarts), "{restarts} restarts in 60 s");
}

#[test]
fn restarts_stop_at_the_attempt_limit() {
    let mut sim = Sim::new(&["a"]);
    let mut s = service("s", ServiceMode::Replicated { replicas: 1 });
    s.spec.restart_max_attempts = 2;
    s.spec.restart_delay_ms = 0;
    sim.add(s);
    sim.settle();
    for _ in 0..5 {
        let running = sim
            .state
            .service_tasks("s")
            .find(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
            .map(|t| t.id.clone());
        if let Some(id) = running {
            sim.fail(&id, TaskState::Failed);
        }
        sim.now += 1_000;
        sim.settle();
    }
    let made = sim.state.service_tasks("s").count();
    assert_eq!(made, 3, "the first task and two restarts");
    assert_eq!(sim.running("s").values().sum::<usize>(), 0);
}

#[test]
fn max_replicas_per_node_leaves_the_rest_pending() {
    let mut sim = Sim::new(&["a", "b"]);
    let mut s = service("s", ServiceMode::Replicated { replicas: 5 });
    s.spec.placement.max_replicas_per_node = 2;
    sim.add(s.clone());
    sim.settle();
    assert_eq!(
        sim.running("s"),
        BTreeMap::from([("a".into(), 2), ("b".into(), 2)])
    );
    let pending: Vec<&Task> = sim
        .state
        .service_tasks("s")
        .filter(|t| t.node_id.is_none())
        .collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].status.state, TaskState::Pending);
    assert_eq!(
        pending[0].status.err.as_deref(),
        Some("no suitable node (max replicas per node limit exceed)")
    );
    // Other reasons come with it, as Swarm's: a drained node is not available.
    let mut drained = node("c", Role::Worker);
    drained.availability = Availability::Drain;
    sim.set(Command::UpsertNode { node: drained });
    sim.settle();
    let t = sim
        .state
        .service_tasks("s")
        .find(|t| t.node_id.is_none())
        .expect("still pending");
    assert_eq!(
        t.status.err.as_deref(),
        Some("no suitable node (max replicas per node limit exceed; 1 node not available for new tasks)")
    );
    // A node that can take one: the last task goes there, and only there.
    sim.set(Command::UpsertNode {
        node: node("c", Role::Worker),
    });
    sim.settle();
    assert_eq!(
        sim.running("s"),
        BTreeMap::from([("a".into(), 2), ("b".into(), 2), ("c".into(), 1)])
    );
    // Other services are not limited by it.
    sim.add(service("free", ServiceMode::Replicated { replicas: 6 }));
    sim.settle();
    assert_eq!(sim.running("free").values().sum::<usize>(), 6);
}

#[test]
fn placement_preferences_spread_over_label_values_then_task_counts() {
    let mut sim = Sim::new(&[]);
    // zone a: one node; zone b: two nodes; no zone: one node (its own group).
    for (id, zone) in [
        ("a1", Some("a")),
        ("b1", Some("b")),
        ("b2", Some("b")),
        ("n1", None),
    ] {
        let mut n = node(id, Role::Worker);
        if let Some(z) = zone {
            n.labels.insert("zone".into(), z.into());
        }
        sim.set(Command::UpsertNode { node: n });
    }
    let mut s = service("s", ServiceMode::Replicated { replicas: 6 });
    s.spec.placement.preferences = vec!["node.labels.zone".into()];
    sim.add(s);
    sim.settle();
    // Two tasks a group: a1 holds zone a's two, zone b's two are spread over b1 and b2.
    assert_eq!(
        sim.running("s"),
        BTreeMap::from([
            ("a1".into(), 2),
            ("b1".into(), 1),
            ("b2".into(), 1),
            ("n1".into(), 2)
        ])
    );
    // Without the preference, the same nodes get the tasks by count alone.
    sim.add(service("plain", ServiceMode::Replicated { replicas: 8 }));
    sim.settle();
    assert_eq!(
        sim.running("plain").values().copied().collect::<Vec<_>>(),
        [2, 2, 2, 2]
    );
    // Two levels: zone, then rack inside the zone.
    let mut sim = Sim::new(&[]);
    for (id, zone, rack) in [
        ("x", "a", "1"),
        ("y", "a", "1"),
        ("z", "a", "2"),
        ("w", "b", "1"),
    ] {
        let mut n = node(id, Role::Worker);
        n.labels.insert("zone".into(), zone.into());
        n.labels.insert("rack".into(), rack.into());
        sim.set(Command::UpsertNode { node: n });
    }
    let mut s = service("s", ServiceMode::Replicated { replicas: 4 });
    s.spec.placement.preferences = vec!["node.labels.zone".into(), "node.labels.rack".into()];
    sim.add(s);
    sim.settle();
    // Zone a gets 2: one on rack 1 (x or y), one on rack 2 (z); zone b gets 2 (w).
    let running = sim.running("s");
    assert_eq!(running.get("w"), Some(&2), "{running:?}");
    assert_eq!(running.get("z"), Some(&1), "{running:?}");
    assert_eq!(
        running.get("x").unwrap_or(&0) + running.get("y").unwrap_or(&0),
        1,
        "{running:?}"
    );
}

#[test]
fn attached_containers_get_addresses_beside_tasks_and_free_them_when_detached() {
    let mut sim = Sim::new(&["a", "b"]);
    let mut web = sim.state.networks["web"].clone();
    web.attachable = true;
    sim.set(Command::UpsertNetwork { network: web });
    let mut s = service("s", ServiceMode::Replicated { replicas: 1 });
    s.spec.networks = vec!["web".into()];
    sim.add(s);
    let wanted = |name: &str| shoal_cluster::store::WantedAttachment {
        container_id: format!("{name}-id"),
        container_name: name.into(),
        network_id: "web".into(),
        aliases: vec![],
    };
    sim.set(Command::SetNodeAttachments {
        node_id: "b".into(),
        wanted: vec![wanted("c1")],
        new_ids: vec!["att1".into()],
    });
    sim.settle();
    let c1 = sim.state.attachments["att1"].addr.expect("an address");
    let mut taken: Vec<Ipv4Net> = sim
        .state
        .service_tasks("s")
        .flat_map(|t| t.networks.iter().map(|a| a.addr))
        .collect();
    taken.extend(
        sim.state.services["s"]
            .endpoint
            .virtual_ips
            .iter()
            .map(|v| v.addr),
    );
    assert_eq!(c1.prefix_len(), 29);
    assert!(!taken.contains(&c1), "{c1} handed out twice: {taken:?}");
    assert_ne!(c1.addr(), "10.0.1.1".parse::<Ipv4Addr>().unwrap());

    // Detached: the address is no longer held; a later container gets an address too.
    sim.set(Command::SetNodeAttachments {
        node_id: "b".into(),
        wanted: vec![],
        new_ids: vec![],
    });
    sim.settle();
    assert!(sim.state.attachments.is_empty());
    let mut pool = ipam::Addresses::from_state(&sim.state, Millis(sim.now));
    let free: Vec<Ipv4Net> = std::iter::from_fn(|| pool.allocate("web").ok()).collect();
    assert!(free.contains(&c1), "{c1} is not free again: {free:?}");
    assert!(
        free.iter().all(|f| !taken.contains(f)),
        "{free:?} {taken:?}"
    );
}
