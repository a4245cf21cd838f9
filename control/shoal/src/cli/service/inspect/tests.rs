use serde_json::json;
use shoal_cluster::store::{Service, UpdateState, UpdateStatus};

use super::*;

const NOW: u64 = 1_700_000_000_000;

/// `web`, 2 replicas of nginx:2, updated from nginx:1 a minute and a half ago.
fn updating() -> Service {
    let mut s: Service = serde_json::from_value(json!({
        "id": "s1",
        "spec": {
            "name": "web",
            "image": "nginx:2",
            "mode": {"replicated": {"replicas": 2}},
            "restart_max_attempts": 3,
            "restart_window_ms": 120_000,
            "stop_grace_ms": 30_000,
            "update_config": {
                "parallelism": 2, "delay_ms": 10_000, "order": "start-first",
                "failure_action": "rollback", "monitor_ms": 5_000,
                "max_failure_ratio_ppm": 200_000,
            },
        },
    }))
    .unwrap();
    let mut previous = s.spec.clone();
    previous.image = "nginx:1".into();
    s.previous_spec = Some(previous);
    s.update_status = Some(UpdateStatus {
        state: UpdateState::Updating,
        started_ms: NOW - 90_000,
        completed_ms: None,
        message: "update in progress".into(),
    });
    s
}

#[test]
fn times_and_durations_read_like_go() {
    assert_eq!(iso(0), "1970-01-01T00:00:00.000000000Z");
    assert_eq!(iso(1_700_000_000_123), "2023-11-14T22:13:20.123000000Z");
    for (ms, go) in [
        (0, "0s"),
        (500, "500ms"),
        (1500, "1.5s"),
        (5000, "5s"),
        (90_000, "1m30s"),
        (3_600_000, "1h0m0s"),
        (5_430_250, "1h30m30.25s"),
    ] {
        assert_eq!(go_duration(ms), go, "{ms}");
    }
}

#[test]
fn inspect_json_has_dockers_update_fields() {
    let v = inspect_value(&updating(), &[]);
    let spec = &v["Spec"];
    assert_eq!(
        spec["UpdateConfig"],
        json!({"Parallelism": 2, "Delay": 10_000_000_000u64, "FailureAction": "rollback",
            "Monitor": 5_000_000_000u64, "MaxFailureRatio": 0.2, "Order": "start-first"})
    );
    assert_eq!(
        spec["RollbackConfig"],
        json!({"Parallelism": 1, "Delay": 0, "FailureAction": "pause",
            "Monitor": 5_000_000_000u64, "MaxFailureRatio": 0, "Order": "stop-first"})
    );
    assert_eq!(
        spec["TaskTemplate"]["RestartPolicy"],
        json!({"Condition": "any", "Delay": 5_000_000_000u64, "MaxAttempts": 3,
            "Window": 120_000_000_000u64})
    );
    assert_eq!(
        spec["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"],
        json!(30_000_000_000u64)
    );
    assert_eq!(
        v["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        "nginx:1"
    );
    assert_eq!(v["PreviousSpec"]["UpdateConfig"], spec["UpdateConfig"]);
    assert_eq!(
        v["UpdateStatus"],
        json!({"State": "updating", "StartedAt": "2023-11-14T22:11:50.000000000Z",
            "Message": "update in progress"})
    );

    let mut done = updating();
    done.previous_spec = None;
    done.update_status = Some(UpdateStatus {
        state: UpdateState::Completed,
        started_ms: NOW - 90_000,
        completed_ms: Some(NOW),
        message: "update completed".into(),
    });
    let v = inspect_value(&done, &[]);
    assert!(v.get("PreviousSpec").is_none());
    assert_eq!(v["UpdateStatus"]["CompletedAt"], iso(NOW));
    let mut fresh = done;
    fresh.update_status = None;
    assert!(inspect_value(&fresh, &[]).get("UpdateStatus").is_none());
}

#[test]
fn pretty_prints_dockers_update_blocks() {
    let text = inspect_pretty(&updating(), &[], NOW);
    let want = "\
Service Mode:\tReplicated
 Replicas:\t2
UpdateStatus:
 State:\t\tupdating
 Started:\tAbout a minute ago
 Message:\tupdate in progress
UpdateConfig:
 Parallelism:\t2
 Delay:\t\t10s
 On failure:\trollback
 Monitoring Period: 5s
 Max failure ratio: 0.2
 Update order:      start-first
RollbackConfig:
 Parallelism:\t1
 On failure:\tpause
 Monitoring Period: 5s
 Max failure ratio: 0
 Rollback order:    stop-first
RestartPolicy:
 Condition:\tany
 Delay:\t\t5s
 Max attempts:\t3
 Window:\t2m0s
ContainerSpec:
 Image:\t\tnginx:2
";
    assert!(text.contains(want), "{text}");

    let mut done = updating();
    done.update_status = Some(UpdateStatus {
        state: UpdateState::Completed,
        started_ms: NOW - 90_000,
        completed_ms: Some(NOW - 30_000),
        message: "update completed".into(),
    });
    let text = inspect_pretty(&done, &[], NOW);
    assert!(text.contains(
        " State:\t\tcompleted\n Started:\tAbout a minute ago\n Completed:\t30 seconds ago\n Message:\tupdate completed\n"
    ), "{text}");
}

/// `updating()` with every container option and an alias on network n1.
fn with_container_options() -> Service {
    let mut s = updating();
    s.spec.networks = vec!["n1".into(), "n2".into()];
    s.spec.network_aliases = [("n1".to_string(), vec!["db".to_string()])].into();
    s.spec.container = serde_json::from_value(json!({
        "entrypoint": ["/bin/sh", "-c"], "user": "1000", "dir": "/srv",
        "hostname": "{{.Service.Name}}-{{.Task.Slot}}",
        "dns": {"nameservers": ["10.0.0.53"], "search": [], "options": ["ndots:2"]},
        "hosts": ["10.1.2.3 db"], "init": false, "stop_signal": "SIGINT",
        "labels": {"tier": "web"},
    }))
    .unwrap();
    s
}

#[test]
fn inspect_json_has_dockers_container_spec_fields() {
    let v = inspect_value(&with_container_options(), &[]);
    let c = &v["Spec"]["TaskTemplate"]["ContainerSpec"];
    assert_eq!(c["Command"], json!(["/bin/sh", "-c"]));
    assert_eq!(c["User"], "1000");
    assert_eq!(c["Dir"], "/srv");
    assert_eq!(c["Hostname"], "{{.Service.Name}}-{{.Task.Slot}}");
    assert_eq!(
        c["DNSConfig"],
        json!({"Nameservers": ["10.0.0.53"], "Options": ["ndots:2"]})
    );
    assert_eq!(c["Hosts"], json!(["10.1.2.3 db"]));
    assert_eq!(c["Init"], false);
    assert_eq!(c["StopSignal"], "SIGINT");
    assert_eq!(c["Labels"], json!({"tier": "web"}));
    assert_eq!(
        v["Spec"]["TaskTemplate"]["Networks"],
        json!([{"Target": "n1", "Aliases": ["db"]}, {"Target": "n2"}])
    );
    // Unset, none of them shows (Init is shoal's default, on).
    let c = &inspect_value(&updating(), &[])["Spec"]["TaskTemplate"]["ContainerSpec"];
    for key in [
        "Command",
        "User",
        "Dir",
        "Hostname",
        "DNSConfig",
        "Hosts",
        "StopSignal",
        "Labels",
    ] {
        assert!(c.get(key).is_none(), "{key}");
    }
    assert_eq!(c["Init"], true);
}

#[test]
fn pretty_prints_dir_init_and_user_as_docker_does() {
    let out = inspect_pretty(&with_container_options(), &[], NOW);
    assert!(
        out.contains(
            "ContainerSpec:\n Image:\t\tnginx:2\n Dir:\t\t/srv\n Init:\t\tfalse\n User: 1000\n"
        ),
        "{out}"
    );
    let plain = inspect_pretty(&updating(), &[], NOW);
    assert!(!plain.contains(" Init:") && !plain.contains(" Dir:") && !plain.contains(" User:"));
}

#[test]
fn privileged_and_devices_are_shown_beside_the_spec_not_in_it() {
    let mut s = updating();
    let plain = inspect_value(&s, &[]);
    assert!(plain.get("ShoalSpec").is_none(), "{plain}");
    s.spec.container.privileged = true;
    s.spec.container.devices =
        vec![shoal_cluster::store::Device::parse("/dev/null:/dev/xnull:rw").unwrap()];
    let v = inspect_value(&s, &[]);
    assert_eq!(
        v["ShoalSpec"],
        json!({"Privileged": true, "Devices": [
            {"PathOnHost": "/dev/null", "PathInContainer": "/dev/xnull", "CgroupPermissions": "rw"}
        ]})
    );
    // Docker's ContainerSpec has neither field: the spec shows none of them.
    let text = v["Spec"].to_string();
    assert!(
        !text.contains("Privileged") && !text.contains("Devices"),
        "{text}"
    );
    let pretty = inspect_pretty(&s, &[], NOW);
    assert!(pretty.contains(" Privileged:\ttrue\n"), "{pretty}");
    assert!(
        pretty.contains(" Devices:\t/dev/null:/dev/xnull:rw\n"),
        "{pretty}"
    );
}
