use std::collections::BTreeMap;

use super::*;
use crate::store::{
    Endpoint, EndpointMode, Network, NetworkAttachment, PortConfig, PublishMode, RestartCondition,
    Service, ServiceMode, ServiceSpec, Task, TaskStatus, VirtualIp,
};

const T0: u64 = 1_700_000_000_000;

fn net4(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}
fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn network(id: &str, subnet: Option<&str>, vni: u32) -> Network {
    let subnet = subnet.map(net4);
    Network {
        id: id.into(),
        name: format!("{id}-name"),
        driver: "overlay".into(),
        subnet,
        gateway: subnet.and_then(|s| s.hosts().next()),
        vni: Some(vni),
        ingress: vni == INGRESS_VNI,
        attachable: false,
        internal: false,
        encrypted: false,
        labels: BTreeMap::new(),
        options: BTreeMap::new(),
        version: 0,
    }
}

fn service(id: &str, ports: &[(Protocol, u16)], vips: &[(&str, &str)]) -> Service {
    Service {
        id: id.into(),
        spec: ServiceSpec {
            placement: Default::default(),
            name: id.into(),
            labels: BTreeMap::new(),
            image: "shoal/web:1".into(),
            args: vec![],
            env: vec![],
            mode: ServiceMode::Replicated { replicas: 1 },
            networks: vec![],
            ports: ports
                .iter()
                .map(|&(protocol, published)| PortConfig {
                    protocol,
                    target: 80,
                    published,
                    mode: PublishMode::Ingress,
                    balance: None,
                })
                .collect(),
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
        endpoint: Endpoint {
            virtual_ips: vips
                .iter()
                .map(|(network, addr)| VirtualIp {
                    network_id: (*network).into(),
                    addr: net4(addr),
                })
                .collect(),
        },
        force_update: 0,
        registry_auth: None,
        previous_spec: None,
        update_status: None,
        job_status: None,
        version: 0,
    }
}

fn task(id: &str, desired: TaskState, state: TaskState, at: u64, addrs: &[(&str, &str)]) -> Task {
    Task {
        id: id.into(),
        service_id: "s".into(),
        slot: 1,
        node_id: Some("n1".into()),
        desired_state: desired,
        status: TaskStatus {
            state,
            timestamp_ms: at,
            ..Default::default()
        },
        networks: addrs
            .iter()
            .map(|(network, addr)| NetworkAttachment {
                network_id: (*network).into(),
                addr: net4(addr),
            })
            .collect(),
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

fn state(networks: Vec<Network>, services: Vec<Service>, tasks: Vec<Task>) -> ClusterState {
    ClusterState {
        networks: networks.into_iter().map(|n| (n.id.clone(), n)).collect(),
        services: services.into_iter().map(|s| (s.id.clone(), s)).collect(),
        tasks: tasks.into_iter().map(|t| (t.id.clone(), t)).collect(),
        ..Default::default()
    }
}

fn spec(pools: &[&str], subnet_prefix_len: u8) -> ClusterSpec {
    ClusterSpec {
        id: "c".into(),
        default_addr_pools: pools.iter().map(|p| net4(p)).collect(),
        subnet_prefix_len,
        data_path_port: 4789,
    }
}

#[test]
fn new_networks_take_the_first_free_subnet_and_the_vni_after_the_highest() {
    let s = state(
        vec![
            network("ing", Some("10.0.0.0/24"), INGRESS_VNI),
            network("web", Some("10.0.1.0/24"), 4097),
            network("db", Some("10.0.5.0/24"), 4100),
        ],
        vec![],
        vec![],
    );
    let mut n = Networks::from_state(&s).unwrap();
    assert_eq!(
        n.allocate("x", None, None).unwrap(),
        NetworkAddressing {
            subnet: net4("10.0.2.0/24"),
            gateway: ip4("10.0.2.1"),
            vni: 4101
        }
    );
    let next = n.allocate("y", None, None).unwrap();
    assert_eq!((next.subnet, next.vni), (net4("10.0.3.0/24"), 4102));

    // An empty store: the first subnet of Swarm's default pool, the first user VNI.
    let mut n = Networks::from_state(&ClusterState::default()).unwrap();
    let first = n.allocate("x", None, None).unwrap();
    assert_eq!(
        (first.subnet, first.gateway, first.vni),
        (net4("10.0.0.0/24"), ip4("10.0.0.1"), 4097)
    );
}

#[test]
fn pools_come_from_the_cluster_settings() {
    let mut s = state(vec![], vec![], vec![]);
    // Host bits in a recorded pool are dropped.
    s.cluster = Some(spec(&["10.20.0.5/16", "10.30.0.0/16"], 26));
    let mut n = Networks::from_state(&s).unwrap();
    let got: Vec<Ipv4Net> = (0..2)
        .map(|i| n.allocate(&format!("n{i}"), None, None).unwrap().subnet)
        .collect();
    assert_eq!(got, [net4("10.20.0.0/26"), net4("10.20.0.64/26")]);

    // Unset settings: Swarm's default.
    s.cluster = Some(spec(&[], 0));
    assert_eq!(
        Networks::from_state(&s)
            .unwrap()
            .allocate("x", None, None)
            .unwrap()
            .subnet,
        net4("10.0.0.0/24")
    );

    // Settings the pools cannot honour.
    s.cluster = Some(spec(&["10.20.0.0/16"], 8));
    assert!(matches!(
        Networks::from_state(&s),
        Err(IpamError::PrefixShorterThanPool { .. })
    ));
}

#[test]
fn requested_subnet_and_gateway_are_checked_and_a_refusal_records_nothing() {
    let s = state(
        vec![network("web", Some("10.0.1.0/24"), 4097)],
        vec![],
        vec![],
    );
    let mut n = Networks::from_state(&s).unwrap();
    let mut refused = |subnet: &str, gateway: Option<&str>| {
        n.allocate("x", Some(net4(subnet)), gateway.map(ip4))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        refused("10.0.0.0/16", None),
        "subnet 10.0.0.0/16 overlaps 10.0.1.0/24, the subnet of network \"web-name\""
    );
    assert_eq!(
        refused("10.0.9.1/24", None),
        "10.0.9.1/24 has host bits set; did you mean 10.0.9.0/24?"
    );
    assert!(refused("10.0.9.0/31", None).contains("too small"));
    assert_eq!(
        refused("10.0.9.0/24", Some("10.0.8.1")),
        "10.0.8.1 is not in subnet 10.0.9.0/24"
    );
    assert_eq!(
        refused("10.0.9.0/24", Some("10.0.9.255")),
        "10.0.9.255 is the broadcast address of 10.0.9.0/24"
    );
    // A pool subnet with a gateway outside it.
    assert!(n.allocate("x", None, Some(ip4("192.168.0.1"))).is_err());

    // Nothing of the above was kept: the same subnets and the next VNI are still free.
    let asked = n
        .allocate("x", Some(net4("10.0.9.0/24")), Some(ip4("10.0.9.254")))
        .unwrap();
    assert_eq!(
        asked,
        NetworkAddressing {
            subnet: net4("10.0.9.0/24"),
            gateway: ip4("10.0.9.254"),
            vni: 4098
        }
    );
    assert_eq!(
        n.allocate("y", None, None).unwrap().subnet,
        net4("10.0.0.0/24")
    );
    // A /30 is the smallest: a gateway and one task.
    n.allocate("z", Some(net4("10.0.10.0/30")), None).unwrap();
}

#[test]
fn ingress_gets_the_first_subnet_of_the_pools_and_vni_4096() {
    let config = PoolConfig {
        pools: vec![net4("10.10.0.0/16")],
        subnet_prefix_len: 24,
    };
    let mut n = Networks::new(config).unwrap();
    assert_eq!(
        n.allocate_ingress().unwrap(),
        NetworkAddressing {
            subnet: net4("10.10.0.0/24"),
            gateway: ip4("10.10.0.1"),
            vni: INGRESS_VNI
        }
    );
    // User networks follow, from 4097.
    let web = n.allocate("web", None, None).unwrap();
    assert_eq!((web.subnet, web.vni), (net4("10.10.1.0/24"), 4097));
    assert!(Networks::new(PoolConfig {
        pools: vec![],
        subnet_prefix_len: 24
    })
    .is_err());
}

#[test]
fn task_addresses_and_vips_follow_the_store_and_ended_tasks_are_held_back() {
    let s = state(
        vec![
            network("web", Some("10.0.1.0/29"), 4097),
            network("none", None, 4098),
        ],
        vec![service("s", &[], &[("web", "10.0.1.2/29")])],
        vec![
            task(
                "run",
                TaskState::Running,
                TaskState::Running,
                T0,
                &[("web", "10.0.1.3/29")],
            ),
            // Told to stop, still running: its address is in use.
            task(
                "stop",
                TaskState::Shutdown,
                TaskState::Running,
                T0,
                &[("web", "10.0.1.5/29")],
            ),
            // Ended at T0, kept as history: held back until T0 + 60 s.
            task(
                "old",
                TaskState::Shutdown,
                TaskState::Failed,
                T0,
                &[("web", "10.0.1.4/29")],
            ),
            // Ended, waiting for its replacement: still its slot's, in use.
            task(
                "wait",
                TaskState::Running,
                TaskState::Failed,
                T0,
                &[("web", "10.0.1.6/29")],
            ),
        ],
    );
    let mut a = Addresses::from_state(&s, Millis(T0 + 1));
    assert_eq!(
        a.allocate("web").unwrap_err(),
        IpamError::AddressesExhausted {
            subnet: "10.0.1.0/29".parse().unwrap(),
            in_use: 5,
            held_back: 1
        }
    );
    let mut a = Addresses::from_state(&s, Millis(T0 + 60_000));
    assert_eq!(a.allocate("web").unwrap(), net4("10.0.1.4/29"));

    for network in ["none", "missing"] {
        assert_eq!(
            a.allocate(network).unwrap_err(),
            IpamError::NoSubnet {
                network: network.into()
            }
        );
    }
}

#[test]
fn addresses_after_the_highest_in_the_store_come_first() {
    // .2 was a task's, deleted from the store since: it comes after the never-used
    // ones, before the address released recently.
    let s = state(
        vec![network("web", Some("10.0.1.0/24"), 4097)],
        vec![service("s", &[], &[("web", "10.0.1.3/24")])],
        vec![task(
            "old",
            TaskState::Shutdown,
            TaskState::Complete,
            T0,
            &[("web", "10.0.1.4/24")],
        )],
    );
    let mut a = Addresses::from_state(&s, Millis(T0));
    assert_eq!(a.allocate("web").unwrap(), net4("10.0.1.5/24"));
    assert_eq!(a.allocate("web").unwrap(), net4("10.0.1.6/24"));
    let mut rest: Vec<Ipv4Net> = Vec::new();
    while let Ok(addr) = a.allocate("web") {
        rest.push(addr);
    }
    assert_eq!(rest.len(), 249);
    assert_eq!(rest.last(), Some(&net4("10.0.1.2/24")));

    // A network without a recorded gateway: its first address is the gateway.
    let mut web = network("web", Some("10.0.1.0/24"), 4097);
    web.gateway = None;
    let mut a = Addresses::from_state(&state(vec![web], vec![], vec![]), Millis(T0));
    assert_eq!(a.allocate("web").unwrap(), net4("10.0.1.2/24"));
}

#[test]
fn published_ports_lowest_free_per_protocol() {
    let s = state(
        vec![],
        vec![
            service("a", &[(Protocol::Tcp, 30000), (Protocol::Tcp, 8080)], &[]),
            service("b", &[(Protocol::Tcp, 30001), (Protocol::Udp, 30000)], &[]),
        ],
        vec![],
    );
    let mut ports = PublishedPorts::from_state(&s);
    assert_eq!(ports.allocate(Protocol::Tcp), Ok(30002));
    assert_eq!(ports.allocate(Protocol::Udp), Ok(30001));
    ports.claim(Protocol::Tcp, 30003);
    ports.claim(Protocol::Tcp, 30003);
    ports.claim(Protocol::Tcp, 80);
    assert_eq!(ports.allocate(Protocol::Tcp), Ok(30004));

    let mut full = PublishedPorts::from_state(&ClusterState::default());
    for _ in DYNAMIC_PORTS {
        full.allocate(Protocol::Udp).unwrap();
    }
    assert_eq!(
        full.allocate(Protocol::Udp).unwrap_err().to_string(),
        "no free port left in 30000-32767"
    );
    assert_eq!(full.allocate(Protocol::Tcp), Ok(30000));
}
