//! A stack's secrets and configs on a real 3-host lab, through `shoal stack deploy`: a
//! compose file's top-level `secrets:`/`configs:` (`file:` makes `<stack>_<name>`
//! labelled with the stack; `external: true` with `name:` uses one made with `secret
//! create`), used by a service in the short and the long form (target, uid, gid, an
//! octal mode): the task reads each file with its content, owner and mode. A missing
//! external secret stops the deploy before anything is made; a re-deploy of the same
//! files changes nothing; one with a secret's file changed is refused naming it (Swarm's
//! secrets are immutable) and changes nothing; `stack rm` removes the stack's own
//! secrets and configs and leaves the external one (and refuses at once, naming it, to
//! remove one a service of no stack still uses). A stack's
//! `deploy.resources.reservations` reach the service's reservations: more memory than
//! any node has leaves its task pending with Swarm's reason, a re-deploy that fits runs
//! it.
use std::path::PathBuf;

use shoal_tests::{
    privileged,
    swarm::{Cli, Task, BOUND},
    wait_for, LabGuard,
};

const PASSWORD: &str = "stack-pw-7f3a91";
const CONF: &str = "listen = 8080\n";

fn stack_file(with_missing_external: bool) -> String {
    let mut s = String::from(concat!(
        "version: '3.8'\n",
        "services:\n",
        "  db:\n",
        "    image: shoal/web:1\n",
        "    secrets:\n",
        "      - pw\n",
        "      - source: ext\n        target: ext_pw\n        uid: '999'\n        gid: '998'\n        mode: 0400\n",
        "    configs:\n",
        "      - source: conf\n        target: /etc/app.conf\n        mode: 0440\n",
        "secrets:\n",
        "  pw:\n    file: ./pw.txt\n",
        "  ext:\n    external: true\n    name: ext_pw\n",
    ));
    if with_missing_external {
        s.push_str("  nope:\n    external: true\n");
    }
    s.push_str("configs:\n  conf:\n    file: app.conf\n");
    s
}

#[test]
fn stack_secrets_configs_and_reservations() {
    if !privileged() {
        return;
    }
    let began = std::time::Instant::now();
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('1', 3);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();
    let dir = std::env::temp_dir().join(format!("shoal-stack-objects-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pw.txt"), PASSWORD).unwrap();
    std::fs::write(dir.join("app.conf"), CONF).unwrap();
    let file: PathBuf = dir.join("stack.yml");
    let f = file.to_str().unwrap();
    guard
        .shoal_with_input("h1", &["secret", "create", "ext_pw", "-"], "external-pw")
        .expect("secret create");

    // A missing external secret: refused, naming it, before anything is made.
    std::fs::write(&file, stack_file(true)).unwrap();
    let err = cli.err("h1", &["stack", "deploy", "-c", f, "app"]);
    assert!(err.contains("nope") && err.contains("not found"), "{err}");
    let secrets = cli.ok("h1", &["secret", "ls", "--format", "{{.Name}}"]);
    let services = cli.ok("h1", &["service", "ls", "-q"]);
    let networks = cli.ok("h1", &["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        secrets.trim() == "ext_pw" && services.trim().is_empty() && !networks.contains("app_"),
        "a refused deploy made something: {secrets} / {services} / {networks}"
    );

    std::fs::write(&file, stack_file(false)).unwrap();
    let out = cli.ok("h1", &["stack", "deploy", "-c", f, "app"]);
    for made in [
        "Creating secret app_pw",
        "Creating config app_conf",
        "Creating service app_db",
    ] {
        assert!(out.contains(made), "{out}");
    }
    assert!(
        !out.contains("ext_pw"),
        "the external secret was made: {out}"
    );
    let labels = cli.ok(
        "h1",
        &[
            "secret",
            "inspect",
            "--format",
            "{{json .Spec.Labels}}",
            "app_pw",
        ],
    );
    assert_eq!(labels.trim(), r#"{"com.docker.stack.namespace":"app"}"#);
    let refs = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.ContainerSpec.Secrets}}",
            "app_db",
        ],
    );
    let refs: serde_json::Value = serde_json::from_str(refs.trim()).expect("Secrets");
    assert_eq!(refs[0]["SecretName"], "app_pw", "{refs}");
    assert_eq!(refs[0]["File"]["Name"], "pw", "{refs}");
    assert_eq!(refs[1]["SecretName"], "ext_pw", "{refs}");

    let task = cli.wait_running("app_db", 1, |_| true).remove(0);
    let read = |t: &Task, argv: &[&str]| cli.exec_in(t, argv).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read(&task, &["cat", "/run/secrets/pw"]), PASSWORD);
    assert_eq!(
        read(&task, &["stat", "-c", "%u %g %a", "/run/secrets/pw"]),
        "0 0 444"
    );
    assert_eq!(read(&task, &["cat", "/run/secrets/ext_pw"]), "external-pw");
    assert_eq!(
        read(&task, &["stat", "-c", "%u %g %a", "/run/secrets/ext_pw"]),
        "999 998 400"
    );
    assert_eq!(read(&task, &["cat", "/etc/app.conf"]), CONF.trim_end());
    assert_eq!(read(&task, &["stat", "-c", "%a", "/etc/app.conf"]), "440");
    println!(
        "stack with a secret, an external secret and a config: files right after {:?}",
        began.elapsed()
    );

    // The same files again: nothing to do.
    let version = || {
        cli.ok(
            "h1",
            &[
                "service",
                "inspect",
                "--format",
                "{{.Version.Index}}",
                "app_db",
            ],
        )
    };
    let before = version();
    let out = cli.ok("h1", &["stack", "deploy", "-c", f, "app"]);
    assert!(
        !out.contains("Updating") && !out.contains("Creating"),
        "{out}"
    );
    // A secret's file changed: refused naming it (as `docker stack deploy`), nothing
    // changed.
    std::fs::write(dir.join("pw.txt"), "another password").unwrap();
    let err = cli.err("h1", &["stack", "deploy", "-c", f, "app"]);
    assert!(
        err.contains("app_pw") && err.contains("only updates to Labels are allowed"),
        "{err}"
    );
    assert_eq!(version(), before);
    assert_eq!(read(&task, &["cat", "/run/secrets/pw"]), PASSWORD);
    std::fs::write(dir.join("pw.txt"), PASSWORD).unwrap();

    // rm with the stack's secret used by a service of no stack: refused naming both,
    // at once (only the stack's own removed services' tasks are waited for).
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "outsider",
            "--secret",
            "app_pw",
            "shoal/web:1",
        ],
    );
    let asked = std::time::Instant::now();
    let err = cli.err("h1", &["stack", "rm", "app"]);
    assert!(err.contains("app_pw") && err.contains("outsider"), "{err}");
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(30),
        "the refusal took {:?}",
        asked.elapsed()
    );
    cli.ok("h1", &["service", "rm", "outsider"]);
    // rm: the stack's own secrets and configs go (once the outsider's task has
    // stopped), the external one stays.
    let out = wait_for("stack rm app once the outsider is gone", BOUND, || {
        cli.run("h1", &["stack", "rm", "app"])
    });
    for gone in ["Removing secret app_pw", "Removing config app_conf"] {
        assert!(out.contains(gone), "{out}");
    }
    let secrets = cli.ok("h1", &["secret", "ls", "--format", "{{.Name}}"]);
    assert_eq!(secrets.trim(), "ext_pw");
    let configs = cli.ok("h1", &["config", "ls", "--format", "{{.Name}}"]);
    assert!(configs.trim().is_empty(), "{configs}");
    println!("stack secrets and configs: done in {:?}", began.elapsed());

    // Reservations from the compose file: too much memory for any node, then a fit.
    let reserving = |memory: &str| {
        format!(
            "services:\n  hog:\n    image: shoal/web:1\n    deploy:\n      resources:\n        reservations: {{cpus: '0.01', memory: {memory}}}\n"
        )
    };
    std::fs::write(&file, reserving("4096G")).unwrap();
    cli.ok("h1", &["stack", "deploy", "-c", f, "res"]);
    cli.wait_ps("res_hog", "a pending task saying why", |rows| {
        rows.iter().any(|r| {
            !r.history
                && r.current == "Pending"
                && r.error
                    .contains("no suitable node (insufficient resources on 3 nodes)")
        })
    });
    std::fs::write(&file, reserving("1M")).unwrap();
    let out = cli.ok("h1", &["stack", "deploy", "-c", f, "res"]);
    assert!(out.contains("Updating service res_hog"), "{out}");
    cli.wait_running("res_hog", 1, |_| true);
    let reservations = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.Resources.Reservations}}",
            "res_hog",
        ],
    );
    assert_eq!(
        reservations.trim(),
        r#"{"MemoryBytes":1048576,"NanoCPUs":10000000}"#
    );
    cli.ok("h1", &["stack", "rm", "res"]);
    println!("stack reservations: done in {:?}", began.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--replicas-max-per-node` on a real 3-host lab: with 1, five replicas run one per node
/// and two stay pending with Swarm's reason; raised to 2, all five run, at most two a
/// node; `service inspect` shows `Placement.MaxReplicas`; a compose file's
/// `deploy.placement.max_replicas_per_node` reaches the service; a global service with
/// it is refused. `--placement-pref spread=node.labels.zone` with h1 and h2 in zone b
/// and h3 alone in zone a puts half the tasks on h3 (by task count alone it would not);
/// `--placement-pref-add` on update moves a service's tasks to spread over the zones,
/// `--placement-pref-rm` takes it away; `service inspect` shows
/// `Placement.Preferences`; compose's `deploy.placement.preferences` does the same.
#[test]
fn placement_max_replicas_per_node_and_spread() {
    if !privileged() {
        return;
    }
    let began = std::time::Instant::now();
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('1', 3);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();

    let err = cli.err(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "g",
            "--mode",
            "global",
            "--replicas-max-per-node",
            "1",
            "shoal/web:1",
        ],
    );
    assert!(err.contains("replicas-max-per-node"), "{err}");
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "capped",
            "--replicas",
            "5",
            "--replicas-max-per-node",
            "1",
            "shoal/web:1",
        ],
    );
    let per_node = |tasks: &[Task]| {
        let mut m = std::collections::BTreeMap::<String, usize>::new();
        for t in tasks {
            *m.entry(t.node.clone()).or_default() += 1;
        }
        m
    };
    let rows = cli.wait_ps("capped", "3 running, 2 pending saying why", |rows| {
        let current: Vec<_> = rows.iter().filter(|r| !r.history).collect();
        current.iter().filter(|r| r.running()).count() == 3
            && current
                .iter()
                .filter(|r| {
                    r.current == "Pending"
                        && r.error
                            .contains("no suitable node (max replicas per node limit exceed)")
                })
                .count()
                == 2
    });
    let running = cli.running("capped").unwrap();
    assert_eq!(
        per_node(&running).values().copied().collect::<Vec<_>>(),
        [1, 1, 1],
        "{rows:#?}"
    );
    let placement = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.Placement}}",
            "capped",
        ],
    );
    assert_eq!(
        placement.trim(),
        r#"{"Constraints":[],"MaxReplicas":1}"#,
        "{placement}"
    );
    cli.ok(
        "h1",
        &[
            "service",
            "update",
            "--detach",
            "--replicas-max-per-node",
            "2",
            "capped",
        ],
    );
    let running = cli.wait_running("capped", 5, |tasks| {
        per_node(tasks).values().all(|n| *n <= 2)
    });
    println!(
        "max replicas per node: 1 then 2, tasks per node {:?} after {:?}",
        per_node(&running),
        began.elapsed()
    );

    // From a compose file.
    let dir = std::env::temp_dir().join(format!("shoal-stack-max-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("stack.yml");
    std::fs::write(
        &file,
        "services:\n  w:\n    image: shoal/web:1\n    deploy:\n      replicas: 4\n      placement:\n        max_replicas_per_node: 1\n",
    )
    .unwrap();
    cli.ok(
        "h1",
        &["stack", "deploy", "-c", file.to_str().unwrap(), "mx"],
    );
    let max = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.Placement.MaxReplicas}}",
            "mx_w",
        ],
    );
    assert_eq!(max.trim(), "1");
    cli.wait_ps("mx_w", "3 running, 1 pending", |rows| {
        let current: Vec<_> = rows.iter().filter(|r| !r.history).collect();
        current.iter().filter(|r| r.running()).count() == 3
            && current.iter().filter(|r| r.current == "Pending").count() == 1
    });
    cli.ok("h1", &["stack", "rm", "mx"]);
    cli.ok("h1", &["service", "rm", "capped"]);
    println!("max replicas per node: done in {:?}", began.elapsed());

    // Spread over a node label: h1 and h2 in zone b, h3 alone in zone a.
    for (h, zone) in [("h1", "b"), ("h2", "b"), ("h3", "a")] {
        cli.ok(
            "h1",
            &["node", "update", "--label-add", &format!("zone={zone}"), h],
        );
    }
    let err = cli.err(
        "h1",
        &[
            "service",
            "create",
            "--placement-pref",
            "spread=engine.labels.zone",
            "shoal/web:1",
        ],
    );
    assert!(err.contains("node labels only"), "{err}");
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "spread",
            "--replicas",
            "4",
            "--placement-pref",
            "spread=node.labels.zone",
            "shoal/web:1",
        ],
    );
    // Half the tasks in each zone: h3 holds zone a's two (by count alone h1 would).
    let running = cli.wait_running("spread", 4, |_| true);
    assert_eq!(
        per_node(&running),
        [("h1", 1), ("h2", 1), ("h3", 2)]
            .map(|(h, n)| (h.to_string(), n))
            .into(),
        "{running:#?}"
    );
    let prefs = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.Placement.Preferences}}",
            "spread",
        ],
    );
    assert_eq!(
        prefs.trim(),
        r#"[{"Spread":{"SpreadDescriptor":"node.labels.zone"}}]"#
    );
    // Added by update: the tasks are replaced, spread over the zones.
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "later",
            "--replicas",
            "2",
            "shoal/web:1",
        ],
    );
    let running = cli.wait_running("later", 2, |_| true);
    assert_eq!(
        per_node(&running).into_keys().collect::<Vec<_>>(),
        ["h1", "h2"],
        "by task count alone (h3 holds the most tasks): {running:#?}"
    );
    cli.ok(
        "h1",
        &[
            "service",
            "update",
            "--detach",
            "--placement-pref-add",
            "spread=node.labels.zone",
            "later",
        ],
    );
    let running = cli.wait_running("later", 2, |tasks| {
        let nodes = per_node(tasks);
        nodes.get("h3") == Some(&1) && nodes.values().all(|n| *n == 1)
    });
    println!(
        "spread over zones: {:?} after {:?}",
        per_node(&running),
        began.elapsed()
    );
    cli.ok(
        "h1",
        &[
            "service",
            "update",
            "--detach",
            "--placement-pref-rm",
            "spread=node.labels.zone",
            "later",
        ],
    );
    let prefs = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.Placement}}",
            "later",
        ],
    );
    assert_eq!(prefs.trim(), r#"{"Constraints":[]}"#);

    // From a compose file.
    std::fs::write(
        &file,
        "services:\n  w:\n    image: shoal/web:1\n    deploy:\n      replicas: 2\n      placement:\n        preferences:\n          - spread: node.labels.zone\n",
    )
    .unwrap();
    cli.ok(
        "h1",
        &["stack", "deploy", "-c", file.to_str().unwrap(), "sp"],
    );
    cli.wait_running("sp_w", 2, |tasks| {
        let nodes = per_node(tasks);
        nodes.get("h3") == Some(&1) && nodes.values().all(|n| *n == 1)
    });
    let _ = std::fs::remove_dir_all(&dir);
    println!("placement: done in {:?}", began.elapsed());
}

/// `--ulimit` and `--sysctl` on a real 2-host lab: the task's process sees the limits
/// (`/proc/1/limits`; dockerd was asked for them, `docker inspect` says), a `net.*` parameter in its network namespace and an IPC one in
/// its own; `service inspect` shows `ContainerSpec.Ulimits`/`Sysctls`; a name Docker
/// does not allow is refused and makes nothing; `--ulimit-rm`/`--sysctl-rm` replace the
/// task with one without them; a compose file's `sysctls` in the seed's list form and
/// `ulimits` reach the task the same way.
#[test]
fn ulimits_and_sysctls_reach_the_tasks() {
    if !privileged() {
        return;
    }
    let began = std::time::Instant::now();
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('1', 2);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();

    let err = cli.err(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "bad",
            "--sysctl",
            "kernel.hostname=x",
            "shoal/web:1",
        ],
    );
    assert!(err.contains("is not whitelisted"), "{err}");
    assert!(cli.ok("h1", &["service", "ls", "-q"]).trim().is_empty());
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "lim",
            "--ulimit",
            "nofile=1024:2048",
            "--sysctl",
            "net.core.somaxconn=1234",
            "--sysctl",
            "kernel.shmmni=2048",
            "shoal/web:1",
        ],
    );
    // The limits of the task's own process (PID 1, its init), not of the exec'd one.
    let probe = "grep 'Max open files' /proc/1/limits; cat /proc/sys/net/core/somaxconn /proc/sys/kernel/shmmni";
    let task = cli.wait_running("lim", 1, |_| true).remove(0);
    let seen = cli.exec_in(&task, &["sh", "-c", probe]).unwrap();
    let words: Vec<&str> = seen.split_whitespace().collect();
    assert_eq!(
        words,
        ["Max", "open", "files", "1024", "2048", "files", "1234", "2048"],
        "{seen}"
    );
    let shown = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.ContainerSpec.Ulimits}} {{json .Spec.TaskTemplate.ContainerSpec.Sysctls}}",
            "lim",
        ],
    );
    assert_eq!(
        shown.trim(),
        r#"[{"Hard":2048,"Name":"nofile","Soft":1024}] {"kernel.shmmni":"2048","net.core.somaxconn":"1234"}"#
    );
    cli.ok(
        "h1",
        &[
            "service",
            "update",
            "--detach",
            "--ulimit-rm",
            "nofile",
            "--sysctl-rm",
            "net.core.somaxconn",
            "lim",
        ],
    );
    let replaced = cli.wait_running("lim", 1, |t| t[0].id != task.id).remove(0);
    let seen = cli.exec_in(&replaced, &["sh", "-c", probe]).unwrap();
    let words: Vec<&str> = seen.split_whitespace().collect();
    assert!(
        words[6] != "1234" && words[7] == "2048" && words[3] != "1024",
        "{seen}"
    );
    println!(
        "ulimits and sysctls: set, then removed, after {:?}",
        began.elapsed()
    );

    // The seed's compose form.
    let dir = std::env::temp_dir().join(format!("shoal-stack-sysctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("stack.yml");
    std::fs::write(
        &file,
        "version: '3.7'\nservices:\n  api:\n    image: shoal/web:1\n    sysctls:\n      - net.core.somaxconn=2345\n    ulimits:\n      nofile:\n        soft: 512\n        hard: 1024\n",
    )
    .unwrap();
    cli.ok(
        "h1",
        &["stack", "deploy", "-c", file.to_str().unwrap(), "seed"],
    );
    let task = cli.wait_running("seed_api", 1, |_| true).remove(0);
    let seen = cli.exec_in(&task, &["sh", "-c", probe]).unwrap();
    let words: Vec<&str> = seen.split_whitespace().collect();
    let asked = guard.exec_ok(
        &task.node,
        &[
            "docker",
            "inspect",
            "--format",
            "{{json .HostConfig.Ulimits}}",
            &task.container,
        ],
    );
    assert_eq!(
        asked.trim(),
        r#"[{"Name":"nofile","Hard":1024,"Soft":512}]"#,
        "{seen}"
    );
    assert_eq!(&words[3..7], ["512", "1024", "files", "2345"], "{seen}");
    let _ = std::fs::remove_dir_all(&dir);
    println!("ulimits and sysctls: done in {:?}", began.elapsed());
}
