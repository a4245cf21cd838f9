//! Mounts on a real 2-host lab, through the `shoal` CLI: a named volume (created by the
//! node's dockerd on first use) outlives its task (a file written in it is read back
//! by the task that replaces it on the same node), a sized tmpfs, a read-only bind of a
//! node directory, `--read-only` refusing writes to the root filesystem; `service
//! inspect` shows them as Docker's `ContainerSpec.Mounts` / `ReadOnly`, `docker inspect`
//! of the task container on its node shows what dockerd was asked for, and
//! `--mount-rm` takes one away. `--limit-cpu/--limit-memory/--limit-pids` show in
//! `service inspect` as `TaskTemplate.Resources.Limits`, in `docker inspect` of the
//! task container, and in its cgroup. `--cap-add/--cap-drop` show as
//! `ContainerSpec.CapabilityAdd/CapabilityDrop`, in the container's `HostConfig`, and in
//! the task's effective capabilities (`/proc/self/status` CapEff); an update moves one
//! from the added to the dropped list; an unknown one is refused and changes nothing.
//! Each node's capacity (its dockerd's NCPU and MemTotal) shows in `node inspect` as
//! `Description.Resources`. A task reserving more memory than any node has stays
//! pending with Swarm's reason ("insufficient resources on 2 nodes"); updated to a
//! reservation that fits, it runs.
use std::time::Instant;

/// CAP_CHOWN and CAP_NET_ADMIN, as bits of `CapEff`.
const CAP_CHOWN: u64 = 1 << 0;
const CAP_NET_ADMIN: u64 = 1 << 12;

/// The `CapEff` mask in a `/proc/PID/status` text.
fn cap_eff(status: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap_or_else(|| panic!("no CapEff in {status}"));
    u64::from_str_radix(hex.trim(), 16).unwrap_or_else(|e| panic!("CapEff {hex:?}: {e}"))
}

use shoal_tests::{
    privileged,
    swarm::{Cli, Task, BOUND},
    wait_for, LabGuard,
};

#[test]
fn volumes_tmpfs_binds_and_a_read_only_root_reach_the_tasks() {
    if !privileged() {
        return;
    }
    let began = Instant::now();
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('m', 2);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();

    // Each node's capacity, as its dockerd reports it, shows in `node inspect`.
    let mut most_memory = 0;
    for h in ["h1", "h2"] {
        let info = guard.exec_ok(
            h,
            &["docker", "info", "--format", "{{.NCPU}} {{.MemTotal}}"],
        );
        let (cpus, memory) = info.trim().split_once(' ').expect("NCPU MemTotal");
        let cpus: i64 = cpus.parse().expect("NCPU");
        let memory: i64 = memory.parse().expect("MemTotal");
        assert!(cpus > 0 && memory > 0, "{h}: docker info says {info}");
        let resources = cli.ok(
            "h1",
            &[
                "node",
                "inspect",
                "--format",
                "{{json .Description.Resources}}",
                h,
            ],
        );
        let resources: serde_json::Value = serde_json::from_str(resources.trim())
            .unwrap_or_else(|e| panic!("{h}: {resources}: {e}"));
        assert_eq!(
            resources,
            serde_json::json!({"NanoCPUs": cpus * 1_000_000_000, "MemoryBytes": memory}),
            "{h}"
        );
        most_memory = most_memory.max(memory);
    }

    // A reservation larger than any node: the task waits, with Swarm's reason; made to
    // fit (an update), it runs.
    let too_much = (2 * most_memory).to_string();
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "big",
            "--detach",
            "--reserve-memory",
            &too_much,
            "--reserve-cpu",
            "0.5",
            "shoal/web:1",
        ],
    );
    cli.wait_ps("big", "big's task pending for want of resources", |rows| {
        rows.len() == 1
            && rows[0].current == "Pending"
            && rows[0].error == "\"no suitable node (insufficient resources on 2 nodes)\""
    });
    let shown = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.Resources}}",
            "big",
        ],
    );
    let shown: serde_json::Value = serde_json::from_str(shown.trim()).expect("Resources");
    assert_eq!(
        shown,
        serde_json::json!({"Reservations": {"NanoCPUs": 500_000_000, "MemoryBytes": 2 * most_memory}})
    );
    let err = cli.err("h1", &["service", "update", "--reserve-cpu", "lots", "big"]);
    assert!(err.contains("invalid --reserve-cpu"), "{err}");
    cli.ok(
        "h1",
        &[
            "service",
            "update",
            "--detach",
            "--reserve-memory",
            "64m",
            "big",
        ],
    );
    cli.wait_running("big", 1, |_| true);
    cli.ok("h1", &["service", "rm", "big"]);

    // The service is pinned to h2; the bind's source is a directory there.
    let bind_src = guard.state.hosts[1]
        .run_dir
        .join("bind-src")
        .display()
        .to_string();
    guard.exec_ok(
        "h2",
        &[
            "sh",
            "-c",
            &format!("mkdir -p {bind_src} && echo from-h2 > {bind_src}/node"),
        ],
    );

    // A malformed --mount: refused, nothing created.
    let err = cli.err(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "data",
            "--detach",
            "--mount",
            "type=bind,source=relative,target=/conf",
            "shoal/web:1",
        ],
    );
    assert!(err.contains("absolute path on the node"), "{err}");
    assert!(!cli.ok("h1", &["service", "ls"]).contains("data"));

    let bind = format!("type=bind,source={bind_src},target=/conf,readonly");
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "data",
            "--detach",
            "--read-only",
            "--constraint",
            "node.hostname==h2",
            "--limit-cpu",
            "0.5",
            "--limit-memory",
            "64m",
            "--limit-pids",
            "100",
            "--cap-add",
            "net_admin",
            "--cap-drop",
            "CAP_CHOWN",
            "--mount",
            "type=volume,source=labdata,target=/data",
            "--mount",
            "type=tmpfs,target=/scratch,tmpfs-size=1m,tmpfs-mode=1770",
            "--mount",
            &bind,
            "shoal/web:1",
            "sleep",
            "100000",
        ],
    );
    let inspect = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.ContainerSpec}}",
            "data",
        ],
    );
    let spec: serde_json::Value = serde_json::from_str(inspect.trim()).expect("ContainerSpec");
    assert_eq!(spec["ReadOnly"], true, "{inspect}");
    assert_eq!(spec["CapabilityAdd"], serde_json::json!(["CAP_NET_ADMIN"]));
    assert_eq!(spec["CapabilityDrop"], serde_json::json!(["CAP_CHOWN"]));
    assert_eq!(
        spec["Mounts"],
        serde_json::json!([
            {"Type": "volume", "Source": "labdata", "Target": "/data"},
            {"Type": "tmpfs", "Target": "/scratch", "TmpfsOptions": {"SizeBytes": 1048576, "Mode": 1016}},
            {"Type": "bind", "Source": bind_src, "Target": "/conf", "ReadOnly": true},
        ]),
        "{inspect}"
    );

    let resources = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.Resources}}",
            "data",
        ],
    );
    let resources: serde_json::Value = serde_json::from_str(resources.trim()).expect("Resources");
    assert_eq!(
        resources,
        serde_json::json!({"Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 67108864, "Pids": 100}})
    );
    let task = cli.wait_running("data", 1, |_| true).remove(0);
    assert_eq!(task.node, "h2");
    let sh = |t: &Task, script: &str| cli.exec_in(t, &["sh", "-c", script]);
    // The volume is writable and is the node's named volume.
    sh(&task, "echo kept > /data/file").expect("writing to the volume");
    let volumes = guard.exec_ok(&task.node, &["docker", "volume", "ls", "-q"]);
    assert!(volumes.lines().any(|v| v == "labdata"), "{volumes}");
    // The tmpfs: writable, sized and moded as asked.
    sh(&task, "echo x > /scratch/f").expect("writing to the tmpfs");
    let mounts = sh(&task, "cat /proc/mounts").expect("reading /proc/mounts");
    let scratch = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/scratch"))
        .unwrap_or_else(|| panic!("no /scratch mount: {mounts}"));
    assert!(
        scratch.starts_with("tmpfs")
            && scratch.contains("size=1024k")
            && scratch.contains("mode=1770"),
        "{scratch}"
    );
    // The bind: the node's file, read-only.
    assert_eq!(
        sh(&task, "cat /conf/node").expect("reading the bind"),
        "from-h2"
    );
    let denied = sh(&task, "echo y > /conf/node").expect_err("a read-only bind refuses writes");
    assert!(denied.contains("Read-only file system"), "{denied}");
    // --read-only: the root filesystem refuses writes.
    let denied = sh(&task, "touch /written").expect_err("a read-only root refuses writes");
    assert!(denied.contains("Read-only file system"), "{denied}");
    // What dockerd was asked for, as `docker inspect` on the node shows it.
    let host = guard.exec_ok(
        &task.node,
        &[
            "docker",
            "inspect",
            "--format",
            "{{json .HostConfig.ReadonlyRootfs}} {{len .HostConfig.Mounts}} {{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}",
            &task.container,
        ],
    );
    assert_eq!(host.trim(), "true 3 500000000 67108864 100", "{host}");
    let caps = guard.exec_ok(
        &task.node,
        &[
            "docker",
            "inspect",
            "--format",
            "{{json .HostConfig.CapAdd}} {{json .HostConfig.CapDrop}}",
            &task.container,
        ],
    );
    assert_eq!(caps.trim(), r#"["CAP_NET_ADMIN"] ["CAP_CHOWN"]"#, "{caps}");
    // The task's process has them (or not) in its effective set.
    let eff = cap_eff(&sh(&task, "cat /proc/self/status").expect("reading /proc/self/status"));
    assert!(
        eff & CAP_NET_ADMIN != 0 && eff & CAP_CHOWN == 0,
        "CapEff {eff:#x}"
    );
    // The kernel enforces them: the container's cgroup (v2, or v1's files) says so.
    let cgroup = sh(
        &task,
        "cd /sys/fs/cgroup && if [ -f cpu.max ]; then cat cpu.max memory.max pids.max; \
         else cat cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us memory/memory.limit_in_bytes \
         pids/pids.max; fi",
    )
    .expect("reading the container's cgroup limits");
    assert_eq!(
        cgroup.split_whitespace().collect::<Vec<_>>(),
        ["50000", "100000", "67108864", "100"],
        "{cgroup}"
    );
    println!(
        "task {} on {}: volume, tmpfs, bind, read-only root and limits as asked",
        task.id, task.node
    );

    // The task replaced on the same node (the constraint pins it): the volume's file
    // is still there.
    cli.ok("h1", &["service", "update", "--detach", "--force", "data"]);
    let replaced = wait_for("data's task replaced", BOUND, || {
        let tasks = cli.running("data")?;
        match &tasks[..] {
            [t] if t.id != task.id => Ok(t.clone()),
            _ => Err(format!("{tasks:#?}")),
        }
    });
    assert_eq!(replaced.node, task.node);
    assert_eq!(
        sh(&replaced, "cat /data/file").expect("reading the volume"),
        "kept"
    );
    // The tmpfs is new with the task.
    assert!(sh(&replaced, "cat /scratch/f").is_err());
    println!("volume labdata kept its file across the task's replacement");

    // An unknown capability is refused, and nothing changes.
    let e = cli.err(
        "h1",
        &[
            "service",
            "update",
            "--detach",
            "--cap-add",
            "warp_drive",
            "data",
        ],
    );
    assert!(e.contains("unknown capability \"warp_drive\""), "{e}");
    assert_eq!(
        cli.running("data").expect("tasks"),
        std::slice::from_ref(&replaced)
    );

    // --mount-rm by target, --read-only=false, NET_ADMIN moved to the dropped ones.
    cli.ok(
        "h1",
        &[
            "service",
            "update",
            "--detach",
            "--mount-rm",
            "/scratch",
            "--read-only=false",
            "--cap-drop",
            "NET_ADMIN",
            "data",
        ],
    );
    let spec = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.ContainerSpec}}",
            "data",
        ],
    );
    let spec: serde_json::Value = serde_json::from_str(spec.trim()).expect("ContainerSpec");
    assert!(spec.get("ReadOnly").is_none(), "{spec}");
    assert!(spec.get("CapabilityAdd").is_none(), "{spec}");
    assert_eq!(
        spec["CapabilityDrop"],
        serde_json::json!(["CAP_CHOWN", "CAP_NET_ADMIN"])
    );
    let targets: Vec<&str> = spec["Mounts"]
        .as_array()
        .expect("Mounts")
        .iter()
        .filter_map(|m| m["Target"].as_str())
        .collect();
    assert_eq!(targets, ["/data", "/conf"]);
    let third = wait_for("data's task replaced again", BOUND, || {
        let tasks = cli.running("data")?;
        match &tasks[..] {
            [t] if t.id != replaced.id => Ok(t.clone()),
            _ => Err(format!("{tasks:#?}")),
        }
    });
    sh(&third, "touch /written").expect("a writable root again");
    let eff = cap_eff(&sh(&third, "cat /proc/self/status").expect("reading /proc/self/status"));
    assert!(eff & (CAP_NET_ADMIN | CAP_CHOWN) == 0, "CapEff {eff:#x}");
    assert_eq!(sh(&third, "cat /data/file").expect("the volume"), "kept");

    cli.ok("h1", &["service", "rm", "data"]);
    println!("mounts lab test: {:.1} s", began.elapsed().as_secs_f64());
}
