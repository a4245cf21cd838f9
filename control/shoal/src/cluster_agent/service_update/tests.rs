use std::collections::BTreeMap;

use shoal_cluster::store::{
    ClusterState, FailureAction, HealthCheck, Network, PortBalance, PortConfig, Protocol,
    PublishMode, Service, ServiceMode, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus,
};

use super::updated_service;
use crate::{
    api::{ContainerChanges, HealthChanges, RestartChanges, ServiceChanges, UpdateConfigChanges},
    cluster_agent::services::tests::spec,
};

const NOW: u64 = 1_700_000_000_000;

fn network(id: &str, name: &str, ingress: bool) -> Network {
    serde_json::from_value(
        serde_json::json!({"id": id, "name": name, "driver": "overlay", "ingress": ingress}),
    )
    .expect("a network")
}

/// A cluster with the networks `front` (n1), `back` (n2) and `ingress`, and the
/// service `web` (s1) on `front`, publishing 8080->80/tcp in host mode.
fn cluster() -> (ClusterState, Service) {
    let mut state = ClusterState::default();
    for n in [
        network("n1", "front", false),
        network("n2", "back", false),
        network("ni", "ingress", true),
    ] {
        state.networks.insert(n.id.clone(), n);
    }
    let mut web = spec("web", &[(Protocol::Tcp, 80, 8080)]);
    web.networks = vec!["n1".into()];
    web.env = vec!["A=1".into(), "B=2".into()];
    web.labels.insert("tier".into(), "front".into());
    let service = Service {
        id: "s1".into(),
        spec: web,
        created_ms: 1,
        updated_ms: 1,
        endpoint: Default::default(),
        force_update: 0,
        registry_auth: None,
        previous_spec: None,
        update_status: None,
        job_status: None,
        version: 3,
    };
    state.services.insert(service.id.clone(), service.clone());
    (state, service)
}

fn update(service: &Service, changes: ServiceChanges) -> Result<Service, String> {
    let (state, _) = cluster();
    updated_service(&state, service, &changes, NOW).map_err(|e| e.to_string())
}

fn status(state: UpdateState, message: &str) -> Option<UpdateStatus> {
    Some(UpdateStatus {
        state,
        started_ms: NOW,
        completed_ms: None,
        message: message.into(),
    })
}

#[test]
fn a_change_to_the_tasks_keeps_the_old_spec_and_starts_an_update() {
    let (_, old) = cluster();
    let new = update(
        &old,
        ServiceChanges {
            image: Some("shoal/web:2".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(new.spec.image, "shoal/web:2");
    assert_eq!(new.previous_spec.as_ref(), Some(&old.spec));
    assert_eq!(
        new.update_status,
        status(UpdateState::Updating, "update in progress")
    );
    assert_eq!((new.force_update, new.updated_ms), (0, NOW));
}

#[test]
fn replicas_and_policies_alone_leave_the_previous_spec_and_status() {
    let (_, mut old) = cluster();
    let earlier = spec("web", &[]);
    old.previous_spec = Some(earlier.clone());
    old.update_status = Some(UpdateStatus {
        state: UpdateState::Completed,
        started_ms: 10,
        completed_ms: Some(20),
        message: "update completed".into(),
    });
    let new = update(
        &old,
        ServiceChanges {
            replicas: Some(5),
            update_config: UpdateConfigChanges {
                parallelism: Some(2),
                delay_ms: Some(10_000),
                ..Default::default()
            },
            rollback_config: UpdateConfigChanges {
                order: Some(UpdateOrder::StartFirst),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(new.spec.mode, ServiceMode::Replicated { replicas: 5 });
    assert_eq!(
        new.spec.update_config,
        UpdateConfig {
            parallelism: 2,
            delay_ms: 10_000,
            ..UpdateConfig::default()
        }
    );
    assert_eq!(new.spec.rollback_config.order, UpdateOrder::StartFirst);
    assert_eq!(new.previous_spec, Some(earlier));
    assert_eq!(new.update_status, old.update_status);
}

#[test]
fn force_replaces_the_tasks_of_an_unchanged_spec() {
    let (_, old) = cluster();
    let new = update(
        &old,
        ServiceChanges {
            force: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(new.force_update, 1);
    assert_eq!(new.spec, old.spec);
    assert_eq!(new.previous_spec.as_ref(), Some(&old.spec));
    assert_eq!(new.update_status.unwrap().state, UpdateState::Updating);
}

#[test]
fn rollback_swaps_the_spec_and_the_previous_one() {
    let (_, old) = cluster();
    let rollback = ServiceChanges {
        rollback: true,
        ..Default::default()
    };
    assert_eq!(
        update(&old, rollback.clone()).unwrap_err(),
        "service web does not have a previous spec"
    );

    let updated = update(
        &old,
        ServiceChanges {
            image: Some("shoal/web:2".into()),
            ..Default::default()
        },
    )
    .unwrap();
    // While the update is in progress: the rollback replaces it.
    let back = update(&updated, rollback.clone()).unwrap();
    assert_eq!(back.spec, old.spec);
    assert_eq!(back.previous_spec, Some(updated.spec.clone()));
    assert_eq!(
        back.update_status,
        status(UpdateState::RollbackStarted, "manually requested rollback")
    );
    assert_eq!(back.force_update, updated.force_update);

    let with_more = ServiceChanges {
        replicas: Some(3),
        ..rollback
    };
    assert_eq!(
        update(&updated, with_more).unwrap_err(),
        "other flags may not be combined with --rollback"
    );
}

#[test]
fn a_port_published_again_replaces_the_one_it_had() {
    let (_, old) = cluster();
    let new = update(
        &old,
        ServiceChanges {
            publish_add: vec![PortConfig {
                balance: Some(PortBalance::Roundrobin),
                ..old.spec.ports[0]
            }],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(new.spec.ports.len(), 1, "{:?}", new.spec.ports);
    assert_eq!(new.spec.ports[0].balance(), PortBalance::Roundrobin);
}

#[test]
fn lists_and_maps_gain_and_lose_entries() {
    let (_, old) = cluster();
    let new = update(
        &old,
        ServiceChanges {
            args: Some(vec!["sh".into(), "-c".into(), "sleep 1".into()]),
            env_add: vec!["B=3".into(), "C=4".into()],
            env_rm: vec!["A".into()],
            label_add: BTreeMap::from([("zone".into(), "a".into())]),
            label_rm: vec!["tier".into()],
            publish_add: vec![PortConfig {
                protocol: Protocol::Udp,
                target: 53,
                published: 0,
                mode: PublishMode::Host,
                balance: None,
            }],
            publish_rm: vec![PortConfig {
                protocol: Protocol::Tcp,
                target: 8080,
                published: 0,
                mode: PublishMode::Ingress,
                balance: None,
            }],
            network_add: vec!["back".into()],
            network_rm: vec!["front".into()],
            constraint_add: vec!["node.role==manager".into()],
            stop_grace_ms: Some(30_000),
            restart: RestartChanges {
                max_attempts: Some(3),
                ..Default::default()
            },
            health: HealthChanges {
                cmd: Some("true".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(new.spec.args, ["sh", "-c", "sleep 1"]);
    assert_eq!(new.spec.env, ["B=3", "C=4"]);
    assert_eq!(
        new.spec.labels,
        BTreeMap::from([("zone".to_string(), "a".to_string())])
    );
    // The published port chosen by the manager, as at create.
    assert_eq!(new.spec.ports.len(), 1);
    assert_eq!(new.spec.ports[0].target, 53);
    assert_ne!(new.spec.ports[0].published, 0);
    assert_eq!(new.spec.networks, ["n2"]);
    assert_eq!(new.spec.constraints, ["node.role==manager"]);
    assert_eq!(new.spec.stop_grace_ms, 30_000);
    assert_eq!(new.spec.restart_max_attempts, 3);
    assert_eq!(
        new.spec.healthcheck,
        Some(HealthCheck {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval_ms: 0,
            timeout_ms: 0,
            retries: 0,
            start_period_ms: 0,
        })
    );
    assert!(new.update_status.is_some());

    // Removing a port by its target, and what is not there, changes nothing else.
    let by_target = update(
        &old,
        ServiceChanges {
            publish_rm: vec![PortConfig {
                protocol: Protocol::Tcp,
                target: 80,
                published: 0,
                mode: PublishMode::Ingress,
                balance: None,
            }],
            constraint_rm: vec!["node.role==worker".into()],
            env_rm: vec!["NOPE".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(by_target.spec.ports.is_empty());
    assert_eq!(by_target.spec.env, old.spec.env);
}

#[test]
fn bad_changes_are_refused_with_one_line() {
    let (_, old) = cluster();
    let mut global = old.clone();
    global.spec.mode = ServiceMode::Global;
    let cases = [
        (
            &global,
            ServiceChanges {
                replicas: Some(2),
                ..Default::default()
            },
            "replicas can only be used with replicated mode",
        ),
        (
            &old,
            ServiceChanges {
                network_add: vec!["nowhere".into()],
                ..Default::default()
            },
            "network nowhere not found",
        ),
        (
            &old,
            ServiceChanges {
                network_add: vec!["front".into()],
                ..Default::default()
            },
            "service is already attached to network front",
        ),
        (
            &old,
            ServiceChanges {
                network_add: vec!["ingress".into()],
                ..Default::default()
            },
            "a service cannot be attached to the ingress network explicitly: publish a port instead",
        ),
        (
            &old,
            ServiceChanges {
                env_add: vec!["=x".into()],
                ..Default::default()
            },
            "invalid environment variable \"=x\": expected K=V",
        ),
        (
            &old,
            ServiceChanges {
                health: HealthChanges {
                    disable: true,
                    interval_ms: Some(1000),
                    ..Default::default()
                },
                ..Default::default()
            },
            "--no-healthcheck conflicts with --health-* options",
        ),
        (
            &old,
            ServiceChanges {
                rollback_config: UpdateConfigChanges {
                    failure_action: Some(FailureAction::Rollback),
                    ..Default::default()
                },
                ..Default::default()
            },
            "--rollback-failure-action must be pause or continue",
        ),
        (
            &old,
            ServiceChanges {
                image: Some("  ".into()),
                ..Default::default()
            },
            "the image must not be empty",
        ),
    ];
    for (service, changes, want) in cases {
        assert_eq!(update(service, changes).unwrap_err(), want);
    }
    let bad_constraint = update(
        &old,
        ServiceChanges {
            constraint_add: vec!["node.colour".into()],
            ..Default::default()
        },
    );
    assert!(bad_constraint.is_err());
}

#[test]
fn container_options_and_network_aliases_change_the_tasks() {
    let (_, web) = cluster();
    let updated = update(
        &web,
        ServiceChanges {
            network_add: vec!["back".into()],
            network_aliases: BTreeMap::from([("back".into(), vec!["db".into()])]),
            container: ContainerChanges {
                user: Some("1000".into()),
                hostname: Some("{{.Service.Name}}-{{.Task.Slot}}".into()),
                host_add: vec!["10.1.2.3 db".into()],
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(updated.spec.networks, ["n1", "n2"]);
    assert_eq!(
        updated.spec.network_aliases,
        BTreeMap::from([("n2".into(), vec!["db".to_string()])])
    );
    assert_eq!(updated.spec.container.user, "1000");
    assert_eq!(updated.spec.container.hosts, ["10.1.2.3 db"]);
    assert_eq!(
        updated.update_status.as_ref().map(|u| u.state),
        Some(UpdateState::Updating),
        "a rolling update follows"
    );
    // Leaving the network drops its aliases.
    let left = update(
        &updated,
        ServiceChanges {
            network_rm: vec!["back".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(left.spec.network_aliases.is_empty());
}

#[test]
fn bad_container_changes_are_refused_whole() {
    let (_, web) = cluster();
    let refused = |changes: ServiceChanges| update(&web, changes).unwrap_err();
    assert!(refused(ServiceChanges {
        container: ContainerChanges {
            hostname: Some("{{.Node.Name}}".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .contains("unknown field"));
    assert!(refused(ServiceChanges {
        container: ContainerChanges {
            dir: Some("relative".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .contains("absolute path"));
    // An alias needs its network among those added.
    assert!(refused(ServiceChanges {
        network_aliases: BTreeMap::from([("back".into(), vec!["db".into()])]),
        ..Default::default()
    })
    .contains("not among --network-add"));
    assert!(refused(ServiceChanges {
        network_add: vec!["back".into()],
        network_aliases: BTreeMap::from([("back".into(), vec!["bad name".into()])]),
        ..Default::default()
    })
    .contains("invalid network alias"));
}

#[test]
fn every_change_of_a_job_starts_a_new_iteration_and_no_rolling_update() {
    let (_, mut job) = cluster();
    job.spec.mode = ServiceMode::ReplicatedJob {
        max_concurrent: 2,
        total_completions: 4,
    };
    job.job_status = Some(shoal_cluster::store::JobStatus {
        job_iteration: 0,
        last_execution_ms: 1,
    });
    let forced = update(
        &job,
        ServiceChanges {
            force: true,
            ..Default::default()
        },
    )
    .unwrap();
    let j = forced.job_status.unwrap();
    assert_eq!((j.job_iteration, j.last_execution_ms), (1, NOW));
    assert_eq!(forced.update_status, None, "a job has no rolling update");
    let imaged = update(
        &forced,
        ServiceChanges {
            image: Some("shoal/web:2".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(imaged.job_status.unwrap().job_iteration, 2);
    assert_eq!(imaged.previous_spec.as_ref().unwrap().image, job.spec.image);
    let back = update(
        &imaged,
        ServiceChanges {
            rollback: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(back.spec.image, job.spec.image);
    assert_eq!(back.job_status.unwrap().job_iteration, 3);
    assert_eq!(back.update_status, None);
    // As Docker: no update policy for a job, and --replicas is `service scale`'s.
    let policy = update(
        &job,
        ServiceChanges {
            update_config: UpdateConfigChanges {
                parallelism: Some(2),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    assert_eq!(
        policy.unwrap_err(),
        "update and rollback configuration is not supported for jobs"
    );
    let replicas = update(
        &job,
        ServiceChanges {
            replicas: Some(3),
            ..Default::default()
        },
    );
    assert_eq!(
        replicas.unwrap_err(),
        "replicas can only be used with replicated mode"
    );
}

#[test]
fn secrets_are_added_and_removed_by_name_and_an_unknown_one_is_refused() {
    let (mut state, service) = cluster();
    for (id, name) in [("sec1", "db_pw"), ("sec2", "db_pw_v2")] {
        state.secrets.insert(
            id.into(),
            serde_json::from_value(serde_json::json!({"id": id, "name": name, "data": "cHc="}))
                .expect("a secret"),
        );
    }
    let given = |name: &str, target: &str| shoal_cluster::store::FileReference {
        id: String::new(),
        name: name.into(),
        target: target.into(),
        uid: "999".into(),
        gid: "999".into(),
        mode: 0o400,
    };
    let add = |s: &Service, name: &str, rm: &[&str]| {
        updated_service(
            &state,
            s,
            &ServiceChanges {
                secret_add: vec![given(name, "mysql_pw")],
                secret_rm: rm.iter().map(|r| r.to_string()).collect(),
                ..Default::default()
            },
            NOW,
        )
        .map_err(|e| e.to_string())
    };
    // By name: bound to the stored secret's ID; a change of the tasks (an update).
    let first = add(&service, "db_pw", &[]).unwrap();
    assert_eq!(first.spec.secrets.len(), 1);
    assert_eq!(
        (
            first.spec.secrets[0].id.as_str(),
            first.spec.secrets[0].name.as_str()
        ),
        ("sec1", "db_pw")
    );
    assert!(first.update_status.is_some());
    // Swapped: the old one out by name, the new one in on the same file.
    let swapped = add(&first, "db_pw_v2", &["db_pw"]).unwrap();
    assert_eq!(swapped.spec.secrets.len(), 1);
    assert_eq!(swapped.spec.secrets[0].id, "sec2");
    // Twice on one file: refused.
    let err = add(&first, "db_pw_v2", &[]).unwrap_err();
    assert!(err.contains("used more than once"), "{err}");
    // Unknown: refused, naming it.
    let err = add(&service, "no_such_pw", &[]).unwrap_err();
    assert!(err.contains("no_such_pw"), "{err}");
}
