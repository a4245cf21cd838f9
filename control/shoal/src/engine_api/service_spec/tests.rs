use serde_json::json;

use super::*;
use crate::cli::service::inspect::spec_value;

#[test]
fn what_the_docker_cli_sends_for_a_simple_service() {
    // As docker 28's `service create --name web --replicas 2 -p 8080:80 --network app
    // --env A=1 --constraint node.role==worker nginx` sends it.
    let body = json!({
        "Name": "web",
        "Labels": {},
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "nginx:1.27",
                "Env": ["A=1"],
                "Init": false,
                "StopGracePeriod": 10_000_000_000u64,
                "DNSConfig": {},
                "Isolation": "default"
            },
            "Resources": {"Limits": {}, "Reservations": {}},
            "RestartPolicy": {"Condition": "any", "Delay": 5_000_000_000u64, "MaxAttempts": 0},
            "Placement": {"Constraints": ["node.role==worker"], "Platforms": [{"Architecture": "amd64", "OS": "linux"}, {"Architecture": "arm64", "OS": "linux"}]},
            "Networks": [{"Target": "app"}],
            "ForceUpdate": 0,
            "Runtime": "container"
        },
        "Mode": {"Replicated": {"Replicas": 2}},
        "UpdateConfig": {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000u64, "MaxFailureRatio": 0, "Order": "stop-first"},
        "RollbackConfig": {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000u64, "MaxFailureRatio": 0, "Order": "stop-first"},
        "EndpointSpec": {"Mode": "vip", "Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"}]}
    });
    let (spec, force) = from_docker(body).unwrap();
    assert_eq!(force, 0);
    assert_eq!(spec.name, "web");
    assert_eq!(spec.image, "nginx:1.27");
    assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 2 });
    assert_eq!(spec.env, ["A=1"]);
    assert_eq!(spec.container.init, Some(false));
    assert_eq!(spec.networks, ["app"]);
    assert_eq!(spec.constraints, ["node.role==worker"]);
    assert_eq!(spec.ports[0].published, 8080);
    assert_eq!(spec.update_config, UpdateConfig::default());
}

#[test]
fn a_ports_balance_reads_back_and_a_wrong_one_is_refused() {
    let spec = |balance: Value| {
        json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
                   "EndpointSpec": {"Ports": [{"TargetPort": 80, "PublishedPort": 8080, "Balance": balance}]}})
    };
    let (s, _) = from_docker(spec(json!("roundrobin"))).unwrap();
    assert_eq!(s.ports[0].balance, Some(PortBalance::Roundrobin));
    let shown = spec_value(&s, 0);
    assert_eq!(shown["EndpointSpec"]["Ports"][0]["Balance"], "roundrobin");
    assert_eq!(from_docker(shown).unwrap().0.ports, s.ports);
    // Docker's clients send none: none said (Maglev, or what the port had).
    let mut v = spec(Value::Null);
    v["EndpointSpec"]["Ports"][0]
        .as_object_mut()
        .unwrap()
        .remove("Balance");
    let (s, _) = from_docker(v).unwrap();
    assert_eq!(
        (s.ports[0].balance, s.ports[0].balance()),
        (None, PortBalance::Maglev)
    );
    let err = from_docker(spec(json!("leastconn"))).unwrap_err();
    assert!(
        err.contains("Spec.EndpointSpec.Ports[].Balance") && err.contains("leastconn"),
        "{err}"
    );
}

#[test]
fn a_spec_shown_by_inspect_reads_back_the_same() {
    let (spec, _) = from_docker(json!({
            "Name": "api",
            "Labels": {"com.docker.stack.namespace": "app"},
            "TaskTemplate": {
                "ContainerSpec": {"Image": "shoal/web:1", "Args": ["-p", "80"], "Command": ["/bin/web"],
                    "User": "nobody", "Dir": "/srv", "Hostname": "{{.Task.Slot}}",
                    "Healthcheck": {"Test": ["CMD", "true"], "Interval": 2_000_000_000u64, "Retries": 3}},
                "Networks": [{"Target": "app_net", "Aliases": ["api"]}],
            },
            "Mode": {"Global": {}},
            "UpdateConfig": {"Parallelism": 2, "Delay": 10_000_000_000u64, "FailureAction": "rollback", "Order": "start-first", "MaxFailureRatio": 0.25},
            "EndpointSpec": {"Mode": "dnsrr"}
        }))
        .unwrap();
    let shown = spec_value(&spec, 3);
    let (again, force) = from_docker(shown).unwrap();
    // Inspect shows the init default as Docker does (true); it reads back as said.
    let mut want = spec.clone();
    want.container.init = Some(spec.container.init());
    assert_eq!(again, want);
    assert_eq!(force, 3);
    assert_eq!(spec.update_config.parallelism, 2);
    assert_eq!(
        spec.update_config.max_failure_ratio_ppm,
        MAX_FAILURE_RATIO_PPM / 4
    );
    assert_eq!(spec.network_aliases["app_net"], ["api"]);
}

#[test]
fn max_replicas_and_preferences_read_back_as_inspect_shows_them() {
    let (spec, _) = from_docker(json!({
        "Name": "m",
        "TaskTemplate": {"ContainerSpec": {"Image": "busybox"},
            "Placement": {"Constraints": ["node.role==worker"], "MaxReplicas": 2,
                "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]}},
    }))
    .unwrap();
    assert_eq!(spec.placement.max_replicas_per_node, 2);
    assert_eq!(spec.placement.preferences, ["node.labels.zone"]);
    let shown = spec_value(&spec, 0);
    assert_eq!(
        shown["TaskTemplate"]["Placement"],
        json!({"Constraints": ["node.role==worker"], "MaxReplicas": 2,
                "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]})
    );
    assert_eq!(from_docker(shown).unwrap().0.placement, spec.placement);
}

#[test]
fn mounts_a_read_only_root_and_limits_read_back_as_inspect_shows_them() {
    // As docker 28's `service create --read-only --mount
    // type=volume,source=data,target=/data,volume-driver=local,volume-opt=type=tmpfs
    // --mount type=bind,source=/srv,target=/srv,readonly --mount
    // type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1770 busybox` sends them.
    let (spec, _) = from_docker(json!({
            "Name": "m",
            "TaskTemplate": {
                "Resources": {"Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 67108864, "Pids": 100}, "Reservations": {"NanoCPUs": 250_000_000, "MemoryBytes": 33554432}},
                "ContainerSpec": {"Image": "busybox", "ReadOnly": true, "Mounts": [
                {"Type": "volume", "Source": "data", "Target": "/data",
                 "VolumeOptions": {"Labels": {}, "DriverConfig": {"Name": "local", "Options": {"type": "tmpfs"}}}},
                {"Type": "bind", "Source": "/srv", "Target": "/srv", "ReadOnly": true},
                {"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 1048576, "Mode": 1016}},
            ]}},
        }))
        .unwrap();
    let o = &spec.container;
    assert!(o.read_only);
    assert_eq!(
        (o.limits.nano_cpus, o.limits.memory_bytes, o.limits.pids),
        (500_000_000, 64 << 20, 100)
    );
    assert_eq!(
        (o.reservations.nano_cpus, o.reservations.memory_bytes),
        (250_000_000, 32 << 20)
    );
    assert_eq!(o.mounts.len(), 3);
    assert_eq!(
        (
            o.mounts[0].kind,
            o.mounts[0].source.as_str(),
            o.mounts[0].volume_driver.as_str()
        ),
        (MountKind::Volume, "data", "local")
    );
    assert_eq!(o.mounts[0].volume_options["type"], "tmpfs");
    assert!(o.mounts[1].read_only && o.mounts[1].kind == MountKind::Bind);
    assert_eq!(
        (o.mounts[2].tmpfs_size, o.mounts[2].tmpfs_mode),
        (Some(1 << 20), Some(0o1770))
    );
    let shown = spec_value(&spec, 0);
    assert_eq!(shown["TaskTemplate"]["ContainerSpec"]["ReadOnly"], true);
    let (again, _) = from_docker(shown).unwrap();
    let mut want = spec.clone();
    want.container.init = Some(spec.container.init());
    assert_eq!(again, want);
}

#[test]
fn capabilities_read_with_dockers_names_and_shown_back() {
    let (spec, _) = from_docker(json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {
        "Image": "busybox",
        "CapabilityAdd": ["net_admin", "CAP_SYS_TIME"],
        "CapabilityDrop": ["CAP_CHOWN", "CAP_NET_ADMIN"],
    }}}))
    .unwrap();
    assert_eq!(spec.container.cap_add, ["CAP_NET_ADMIN", "CAP_SYS_TIME"]);
    assert_eq!(spec.container.cap_drop, ["CAP_CHOWN"]);
    let shown = spec_value(&spec, 0);
    let c = &shown["TaskTemplate"]["ContainerSpec"];
    assert_eq!(c["CapabilityAdd"], json!(["CAP_NET_ADMIN", "CAP_SYS_TIME"]));
    assert_eq!(c["CapabilityDrop"], json!(["CAP_CHOWN"]));
    let e = from_docker(json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {
        "Image": "busybox", "CapabilityDrop": ["bogus"],
    }}}))
    .unwrap_err();
    assert!(e.contains("unknown capability \"bogus\""), "{e}");
}

#[test]
fn what_shoal_does_not_do_is_refused_by_name() {
    let base = |extra: Value| {
        let mut v = json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}});
        crate::engine_api::service_spec::tests::merge(&mut v, extra);
        v
    };
    for (extra, named) in [
        (
            json!({"TaskTemplate": {"ContainerSpec": {"Mounts": [{"Type": "npipe", "Target": "/data"}]}}}),
            "Spec.TaskTemplate.ContainerSpec.Mounts[].Type",
        ),
        (
            json!({"TaskTemplate": {"ContainerSpec": {"Mounts": [{"Type": "volume", "Target": "/d", "VolumeOptions": {"NoCopy": true}}]}}}),
            "Spec.TaskTemplate.ContainerSpec.Mounts[].VolumeOptions.NoCopy",
        ),
        (
            json!({"TaskTemplate": {"ContainerSpec": {"Mounts": [{"Type": "bind", "Source": "rel", "Target": "/d"}]}}}),
            "absolute path on the node",
        ),
        (
            json!({"TaskTemplate": {"Resources": {"Reservations": {"GenericResources": [{"DiscreteResourceSpec": {"Kind": "gpu", "Value": 1}}]}}}}),
            "Spec.TaskTemplate.Resources.Reservations.GenericResources",
        ),
        (
            json!({"TaskTemplate": {"ContainerSpec": {"Secrets": [{"File": {"Name": "pw"}}]}}}),
            "SecretID or SecretName is required",
        ),
        (
            json!({"TaskTemplate": {"Placement": {"Platforms": [{"OS": "windows"}]}}}),
            "Spec.TaskTemplate.Placement.Platforms",
        ),
        (
            json!({"TaskTemplate": {"ContainerSpec": {"Ulimits": [{"Name": "nofile", "Soft": "x"}]}}}),
            "Spec.TaskTemplate.ContainerSpec.Ulimits[].Soft",
        ),
        (
            json!({"TaskTemplate": {"ContainerSpec": {"Sysctls": {"net.core.somaxconn": 1024}}}}),
            "Spec.TaskTemplate.ContainerSpec.Sysctls",
        ),
        (
            json!({"TaskTemplate": {"ContainerSpec": {"Privileges": {"NoNewPrivileges": true}}}}),
            "Spec.TaskTemplate.ContainerSpec.Privileges",
        ),
        // shoal's own settings are no fields of Docker's ContainerSpec.
        (
            json!({"TaskTemplate": {"ContainerSpec": {"Privileged": true}}}),
            "Spec.TaskTemplate.ContainerSpec.Privileged",
        ),
        (
            json!({"TaskTemplate": {"ContainerSpec": {"Devices": [{"PathOnHost": "/dev/null"}]}}}),
            "Spec.TaskTemplate.ContainerSpec.Devices",
        ),
        (
            json!({"TaskTemplate": {"Placement": {"Preferences": [{"Spread": {"SpreadDescriptor": "engine.labels.zone"}}]}}}),
            "Spec.TaskTemplate.Placement.Preferences[].Spread: invalid spread descriptor",
        ),
        (
            json!({"TaskTemplate": {"Placement": {"Preferences": [{"Pack": {"X": 1}}]}}}),
            "Spec.TaskTemplate.Placement.Preferences[].Pack",
        ),
        (
            json!({"TaskTemplate": {"Placement": {"MaxReplicas": -1}}}),
            "Spec.TaskTemplate.Placement.MaxReplicas",
        ),
        (
            json!({"TaskTemplate": {"LogDriver": {"Name": "syslog"}}}),
            "Spec.TaskTemplate.LogDriver",
        ),
        (
            json!({"EndpointSpec": {"Ports": [{"Protocol": "sctp", "TargetPort": 80}]}}),
            "sctp",
        ),
        (
            json!({"Mode": {"Replicated": {"Replicas": -1}}}),
            "Spec.Mode.Replicated.Replicas",
        ),
        (
            json!({"TaskTemplate": {"ContainerSpec": {"Image": ""}}}),
            "an image is required",
        ),
    ] {
        let e = from_docker(base(extra.clone())).unwrap_err();
        assert!(e.contains(named), "{extra}: {e}");
    }
    assert!(from_docker(json!("nope")).is_err());
    // Keys in another case are Docker's keys (Go's decoder matches them so).
    let (spec, _) = from_docker(json!({"name": "x", "taskTemplate": {"containerSpec": {"image": "busybox"}}, "mode": {"replicated": {"replicas": 3}}})).unwrap();
    assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 3 });
}

pub(super) fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}
