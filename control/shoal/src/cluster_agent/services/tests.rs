use shoal_cluster::store::{EndpointMode, PortConfig, Protocol, RestartCondition};

use super::*;

/// A replicated service's spec with host-mode `ports` (protocol, target, published).
pub(in crate::cluster_agent) fn spec(name: &str, ports: &[(Protocol, u16, u16)]) -> ServiceSpec {
    ServiceSpec {
        placement: Default::default(),
        name: name.into(),
        labels: BTreeMap::new(),
        image: "shoal/web:1".into(),
        args: vec![],
        env: vec![],
        mode: ServiceMode::Replicated { replicas: 1 },
        networks: vec![],
        ports: ports
            .iter()
            .map(|&(protocol, target, published)| PortConfig {
                protocol,
                target,
                published,
                mode: PublishMode::Host,
                balance: None,
            })
            .collect(),
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
    }
}

#[test]
fn published_ports_are_chosen_around_the_ones_taken_and_given() {
    let mut state = ClusterState::default();
    let taken = Service {
        id: "s1".into(),
        spec: spec("taken", &[(Protocol::Tcp, 80, 30000)]),
        created_ms: 0,
        updated_ms: 0,
        endpoint: Default::default(),
        force_update: 0,
        registry_auth: None,
        previous_spec: None,
        update_status: None,
        job_status: None,
        version: 0,
    };
    state.services.insert(taken.id.clone(), taken);
    let asked = spec(
        "web",
        &[
            (Protocol::Tcp, 80, 0),
            (Protocol::Tcp, 81, 30001),
            (Protocol::Udp, 53, 0),
        ],
    );
    let got: Vec<u16> = prepare_spec(&state, asked)
        .unwrap()
        .ports
        .iter()
        .map(|p| p.published)
        .collect();
    assert_eq!(got, [30002, 30001, 30000]);

    let twice = spec(
        "web",
        &[(Protocol::Tcp, 80, 8080), (Protocol::Tcp, 81, 8080)],
    );
    assert_eq!(
        prepare_spec(&state, twice).unwrap_err().to_string(),
        "port 8080/tcp is published twice"
    );
}
