use std::collections::BTreeMap;

use shoal_cluster::store::{
    ContainerOptions, DnsConfig, NetworkAttachment, ServiceSpec, TaskState,
};

use super::*;

fn service(container: ContainerOptions) -> Service {
    let mut spec: ServiceSpec = serde_json::from_value(serde_json::json!({
        "name": "web", "image": "busybox", "mode": {"replicated": {"replicas": 1}},
        "args": ["sleep", "60"], "env": ["A=1"]
    }))
    .unwrap();
    spec.container = container;
    serde_json::from_value(serde_json::json!({
        "id": "svc1", "spec": spec,
    }))
    .unwrap()
}

fn task(networks: bool) -> Task {
    serde_json::from_value(serde_json::json!({
        "id": "task0123456789abc", "service_id": "svc1", "slot": 3,
        "node_id": "node1", "desired_state": TaskState::Running,
        "networks": if networks {
            vec![NetworkAttachment { network_id: "n1".into(), addr: "10.0.1.5/24".parse().unwrap() }]
        } else { vec![] },
    }))
    .unwrap()
}

fn node() -> NodeIdentity {
    NodeIdentity {
        id: "node1".into(),
        hostname: "h1".into(),
    }
}

const GATEWAY: Resolver = Resolver {
    addr: Some(Ipv4Addr::new(10, 0, 1, 1)),
    on_overlay: true,
};

fn options() -> ContainerOptions {
    ContainerOptions {
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        user: "1000:1000".into(),
        dir: "/srv".into(),
        hostname: "{{.Service.Name}}-{{.Task.Slot}}-{{.Node.Hostname}}".into(),
        dns: DnsConfig {
            nameservers: vec!["192.0.2.53".into()],
            search: vec!["example.org".into()],
            options: vec!["ndots:2".into()],
        },
        hosts: vec!["10.9.8.7 db db.local".into(), "fe80::1 six".into()],
        init: Some(false),
        stop_signal: "SIGINT".into(),
        labels: BTreeMap::from([
            ("tier".into(), "web".into()),
            (LABEL_TASK_ID.into(), "forged".into()),
            (LABEL_SHOAL_TASK_ID.into(), "forged".into()),
        ]),
        ..Default::default()
    }
}

#[test]
fn the_sandbox_carries_hostname_resolver_settings_and_hosts() {
    let s = service(options());
    let spec = sandbox_spec(&task(true), &s, "web.3.task0123456789abc", &node(), GATEWAY).unwrap();
    assert_eq!(spec.name, "web.3.task0123456789abc.sandbox");
    assert_eq!(spec.hostname, "web-3-h1");
    // On an overlay the embedded DNS stays the task's resolver.
    assert_eq!(spec.nameservers, ["10.0.1.1"]);
    assert_eq!(spec.dns_search, ["example.org"]);
    assert_eq!(spec.dns_options, ["ndots:2"]);
    assert_eq!(
        spec.extra_hosts,
        ["db:10.9.8.7", "db.local:10.9.8.7", "six:fe80::1"]
    );

    let body = sandbox::create_body(&spec);
    assert_eq!(body.hostname.as_deref(), Some("web-3-h1"));
    let host = body.host_config.unwrap();
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert_eq!(host.dns, Some(vec!["10.0.1.1".to_string()]));
    assert_eq!(host.dns_search, Some(vec!["example.org".to_string()]));
    assert_eq!(host.dns_options, Some(vec!["ndots:2".to_string()]));
    assert_eq!(host.extra_hosts.map(|h| h.len()), Some(3));
}

#[test]
fn a_task_with_no_network_takes_the_services_resolvers() {
    let s = service(options());
    let egress = Resolver {
        addr: Some(Ipv4Addr::new(172, 18, 0, 1)),
        on_overlay: false,
    };
    let spec = sandbox_spec(&task(false), &s, "web.3.x", &node(), egress).unwrap();
    assert_eq!(spec.nameservers, ["192.0.2.53"]);
    let plain = service(ContainerOptions::default());
    let spec = sandbox_spec(&task(false), &plain, "web.3.x", &node(), egress).unwrap();
    assert_eq!(spec.nameservers, ["172.18.0.1"]);
}

#[test]
fn unset_options_keep_the_defaults() {
    let s = service(ContainerOptions::default());
    let spec = sandbox_spec(&task(true), &s, "web.3.x", &node(), GATEWAY).unwrap();
    assert_eq!(
        spec.hostname, "task01234567",
        "the task ID's first 12 characters"
    );
    let body = sandbox::create_body(&spec);
    let host = body.host_config.unwrap();
    assert_eq!(
        (host.dns_search, host.dns_options, host.extra_hosts),
        (None, None, None)
    );

    let body = task_container(&task(true), &s, "web.3.x", "node1", "sbx", Vec::new());
    assert_eq!(body.entrypoint, None);
    assert_eq!(body.cmd, Some(vec!["sleep".to_string(), "60".to_string()]));
    assert_eq!(
        (body.user, body.working_dir, body.stop_signal),
        (None, None, None)
    );
    let host = body.host_config.unwrap();
    assert_eq!(host.init, Some(true), "tasks run under init by default");
    assert_eq!(host.network_mode.as_deref(), Some("container:sbx"));
    assert_eq!((host.mounts, host.readonly_rootfs), (None, None));
    assert_eq!(
        (host.nano_cpus, host.memory, host.pids_limit),
        (None, None, None)
    );
}

#[test]
fn mounts_and_a_read_only_root_reach_the_container_before_the_task_files() {
    let volume = store::Mount {
        kind: MountKind::Volume,
        source: "data".into(),
        target: "/data".into(),
        volume_driver: "local".into(),
        volume_options: BTreeMap::from([("type".into(), "tmpfs".into())]),
        ..Default::default()
    };
    let bind = store::Mount {
        kind: MountKind::Bind,
        source: "/srv/conf".into(),
        target: "/conf".into(),
        read_only: true,
        ..Default::default()
    };
    let tmpfs = store::Mount {
        kind: MountKind::Tmpfs,
        target: "/scratch".into(),
        tmpfs_size: Some(1 << 20),
        tmpfs_mode: Some(0o1770),
        ..Default::default()
    };
    let s = service(ContainerOptions {
        mounts: vec![volume, bind, tmpfs],
        read_only: true,
        limits: store::Limits {
            nano_cpus: 500_000_000,
            memory_bytes: 64 << 20,
            pids: 100,
        },
        cap_add: vec!["CAP_NET_ADMIN".into()],
        cap_drop: vec!["CAP_CHOWN".into()],
        ..Default::default()
    });
    let secret = Mount {
        target: Some("/run/secrets/pw".into()),
        typ: Some(MountType::BIND),
        ..Default::default()
    };
    let body = task_container(&task(true), &s, "web.3.x", "node1", "sbx", vec![secret]);
    let host = body.host_config.unwrap();
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(
        (host.nano_cpus, host.memory, host.pids_limit),
        (Some(500_000_000), Some(64 << 20), Some(100))
    );
    assert_eq!(host.cap_add, Some(vec!["CAP_NET_ADMIN".to_string()]));
    assert_eq!(host.cap_drop, Some(vec!["CAP_CHOWN".to_string()]));
    let mounts = host.mounts.unwrap();
    let shown: Vec<_> = mounts
        .iter()
        .map(|m| (m.typ, m.source.as_deref(), m.target.as_deref(), m.read_only))
        .collect();
    assert_eq!(
        shown,
        [
            (Some(MountType::VOLUME), Some("data"), Some("/data"), None),
            (
                Some(MountType::BIND),
                Some("/srv/conf"),
                Some("/conf"),
                Some(true)
            ),
            (Some(MountType::TMPFS), None, Some("/scratch"), None),
            (Some(MountType::BIND), None, Some("/run/secrets/pw"), None),
        ]
    );
    let driver = mounts[0]
        .volume_options
        .as_ref()
        .and_then(|o| o.driver_config.clone())
        .unwrap();
    assert_eq!(driver.name.as_deref(), Some("local"));
    assert_eq!(driver.options.unwrap()["type"], "tmpfs");
    let tmpfs = mounts[2].tmpfs_options.clone().unwrap();
    assert_eq!(
        (tmpfs.size_bytes, tmpfs.mode),
        (Some(1 << 20), Some(0o1770))
    );
    assert!(mounts[1].volume_options.is_none() && mounts[1].tmpfs_options.is_none());
}

#[test]
fn the_task_container_carries_the_container_options() {
    let s = service(options());
    let body = task_container(
        &task(true),
        &s,
        "web.3.task0123456789abc",
        "node1",
        "sbx",
        Vec::new(),
    );
    assert_eq!(body.image.as_deref(), Some("busybox"));
    assert_eq!(
        body.entrypoint,
        Some(vec!["/bin/sh".to_string(), "-c".to_string()])
    );
    assert_eq!(body.cmd, Some(vec!["sleep".to_string(), "60".to_string()]));
    assert_eq!(body.env, Some(vec!["A=1".to_string()]));
    assert_eq!(body.user.as_deref(), Some("1000:1000"));
    assert_eq!(body.working_dir.as_deref(), Some("/srv"));
    assert_eq!(body.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(body.host_config.unwrap().init, Some(false));
    let labels = body.labels.unwrap();
    assert_eq!(labels["tier"], "web");
    assert_eq!(
        labels[LABEL_TASK_ID], "task0123456789abc",
        "Swarm's labels win"
    );
    assert_eq!(labels[LABEL_SLOT], "3");
    assert_eq!(
        labels[LABEL_SHOAL_TASK_ID], "task0123456789abc",
        "shoal's own label, which the executor goes by, cannot be forged either"
    );
    // Docker refuses these on a container that joins another's namespace.
    assert_eq!((body.hostname, body.domainname), (None, None));
}

#[test]
fn a_hostname_template_that_cannot_expand_rejects_the_task() {
    let s = service(ContainerOptions {
        hostname: "{{.Task.Nope}}".into(),
        ..Default::default()
    });
    let err = sandbox_spec(&task(true), &s, "web.3.x", &node(), GATEWAY).unwrap_err();
    assert!(err.starts_with("--hostname: invalid template"), "{err}");
}

#[test]
fn ulimits_go_to_the_task_container_and_net_sysctls_to_its_sandbox() {
    let s = service(ContainerOptions {
        ulimits: BTreeMap::from([(
            "nofile".to_string(),
            store::Ulimit {
                soft: 1024,
                hard: 2048,
            },
        )]),
        sysctls: BTreeMap::from([
            ("net.core.somaxconn".to_string(), "4096".to_string()),
            ("kernel.shmmax".to_string(), "1000".to_string()),
        ]),
        ..Default::default()
    });
    let body = task_container(&task(true), &s, "web.3.x", "node1", "sbx", Vec::new());
    let host = body.host_config.unwrap();
    let limits = host.ulimits.unwrap();
    assert_eq!(limits.len(), 1);
    assert_eq!(
        (limits[0].name.as_deref(), limits[0].soft, limits[0].hard),
        (Some("nofile"), Some(1024), Some(2048))
    );
    // A container joining the sandbox's network namespace cannot set net.* ones.
    assert_eq!(
        host.sysctls,
        Some(HashMap::from([(
            "kernel.shmmax".to_string(),
            "1000".to_string()
        )]))
    );
    let spec = sandbox_spec(&task(true), &s, "web.3.x", &node(), GATEWAY).unwrap();
    assert_eq!(
        spec.sysctls,
        BTreeMap::from([("net.core.somaxconn".to_string(), "4096".to_string())])
    );
    let sandbox = crate::sandbox::create_body(&spec).host_config.unwrap();
    assert_eq!(
        sandbox.sysctls,
        Some(HashMap::from([(
            "net.core.somaxconn".to_string(),
            "4096".to_string()
        )]))
    );
}

#[test]
fn privileged_and_devices_go_to_the_task_container_only() {
    let plain = task_container(
        &task(true),
        &service(ContainerOptions::default()),
        "web.3.x",
        "node1",
        "sbx",
        Vec::new(),
    );
    let host = plain.host_config.unwrap();
    assert_eq!((host.privileged, host.devices), (None, None));
    let s = service(ContainerOptions {
        privileged: true,
        devices: vec![
            store::Device::parse("/dev/null:/dev/xnull").unwrap(),
            store::Device::parse("/dev/zero:r").unwrap(),
        ],
        ..Default::default()
    });
    let body = task_container(&task(true), &s, "web.3.x", "node1", "sbx", Vec::new());
    let host = body.host_config.unwrap();
    assert_eq!(host.privileged, Some(true));
    let shown: Vec<_> = host
        .devices
        .unwrap()
        .into_iter()
        .map(|d| (d.path_on_host, d.path_in_container, d.cgroup_permissions))
        .collect();
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        shown,
        [
            (some("/dev/null"), some("/dev/xnull"), some("rwm")),
            (some("/dev/zero"), some("/dev/zero"), some("r")),
        ]
    );
}
