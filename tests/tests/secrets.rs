//! Secrets and configs on a real 3-host lab, through the `shoal` CLI (the seeds' flow).
//!
//! A secret made from stdin (`echo pw | shoal secret create my_mysql_password -`) and a
//! config go to a `mysql`-like stand-in that reads `MYSQL_ROOT_PASSWORD_FILE` and prints
//! it (reversed: its log is on dockerd's disk): inside its task the secret is at `/run/secrets/mysql_pw` with the uid, gid and
//! mode asked for, and the config at its absolute target. No file under any node's
//! data directory, run directory (but the tasks' tmpfs) or dockerd data root holds the
//! secret's plaintext (nor its base64), on the managers (whose store holds it) either.
//! `secret inspect` never shows the data, `config inspect` shows it in base64. Refusals:
//! a secret over 500 KB, a service naming an unknown secret (nothing created), `secret
//! rm` of a secret in use (naming the service). `service update --secret-rm/--secret-add`
//! swaps the file; after `service rm`, no node's tmpfs holds a file of the service.
use std::time::Instant;

use base64::Engine as _;
use shoal_tests::{
    privileged,
    swarm::{Cli, Task, BOUND},
    wait_for, LabGuard,
};

/// The secret's plaintext: distinctive, so that finding it anywhere means a leak.
const PLAINTEXT: &str = "pw-5c1e9a7d3b-of-the-lab";
const CONFIG: &str =
    "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry-lab-7d2f\n";

/// The stand-in for `mysql`: reads the password from the file `*_FILE` names and prints
/// it reversed (its log is a file of dockerd's, which must not hold the plaintext),
/// then serves nothing but stays up.
const MYSQL_STANDIN: &str =
    "echo \"root password read, reversed: $(rev < \"$MYSQL_ROOT_PASSWORD_FILE\")\"; exec sleep 100000";

/// Files under `dirs` in host `host`'s mount namespace that hold `needle` (binary-safe),
/// outside the tasks' tmpfs.
fn files_holding(lab: &LabGuard, host: &str, dirs: &[String], needle: &str) -> Vec<String> {
    let mut argv = vec![
        "grep",
        "-rl",
        "--text",
        "-s",
        "-D",
        "skip",
        "--exclude-dir=task-files",
        "-F",
        "-e",
        needle,
    ];
    argv.extend(dirs.iter().map(String::as_str));
    let out = lab.exec(host, &argv);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The entries of the tasks' tmpfs on host `host` (as the host sees it).
fn task_files(lab: &LabGuard, host: &str) -> String {
    let dir = lab.state.hosts[host_index(host)].run_dir.join("task-files");
    let out = lab.exec(
        host,
        &["find", &dir.display().to_string(), "-mindepth", "1"],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn host_index(host: &str) -> usize {
    host.trim_start_matches('h').parse::<usize>().expect("host") - 1
}

fn only_task(cli: &Cli, service: &str) -> Task {
    cli.wait_running(service, 1, |_| true).remove(0)
}

#[test]
fn secrets_and_configs_reach_tasks_only_as_tmpfs_files() {
    if !privileged() {
        return;
    }
    let began = Instant::now();
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('s', 3);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();

    // `echo pw | docker secret create my_mysql_password -`
    let id = guard
        .shoal_with_input(
            "h1",
            &["secret", "create", "my_mysql_password", "-"],
            &format!("{PLAINTEXT}\n"),
        )
        .expect("secret create");
    assert_eq!(id.trim().len(), 25, "an ID: {id}");
    let ls = cli.ok("h1", &["secret", "ls"]);
    assert!(
        ls.starts_with("ID") && ls.contains("my_mysql_password"),
        "{ls}"
    );
    let inspect = cli.ok("h1", &["secret", "inspect", "my_mysql_password"]);
    let v: serde_json::Value = serde_json::from_str(&inspect).expect("secret inspect JSON");
    assert_eq!(v[0]["ID"], id.trim());
    assert_eq!(v[0]["Spec"]["Name"], "my_mysql_password");
    assert!(v[0]["Version"]["Index"].as_u64().is_some_and(|i| i > 0));
    assert!(v[0]["Spec"].get("Data").is_none(), "{inspect}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{PLAINTEXT}\n"));
    assert!(!inspect.contains(PLAINTEXT) && !inspect.contains(&b64));
    println!("secret create/ls/inspect: answered, no data shown");

    // Over 500 KB: refused as Swarm does, nothing made.
    let big = "x".repeat(500 * 1024);
    let err = guard
        .shoal_with_input("h1", &["secret", "create", "too_big", "-"], &big)
        .expect_err("a 500 KB secret is refused");
    assert!(
        err.contains("secret data must be larger than 0 and less than"),
        "{err}"
    );
    assert!(!cli.ok("h1", &["secret", "ls"]).contains("too_big"));

    // A config, shown in base64 by `config inspect`.
    guard
        .shoal_with_input("h1", &["config", "create", "registry_conf", "-"], CONFIG)
        .expect("config create");
    let data = cli.ok(
        "h1",
        &[
            "config",
            "inspect",
            "--format",
            "{{.Spec.Data}}",
            "registry_conf",
        ],
    );
    assert_eq!(
        data.trim(),
        base64::engine::general_purpose::STANDARD.encode(CONFIG)
    );

    // An unknown secret: refused, naming it; nothing created.
    let err = cli.err(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "db",
            "--detach",
            "--secret",
            "no_such_pw",
            "shoal/web:1",
        ],
    );
    assert!(err.contains("no_such_pw"), "{err}");
    assert!(!cli.ok("h1", &["service", "ls"]).contains("db"));

    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "db",
            "--detach",
            "--secret",
            "source=my_mysql_password,target=mysql_pw,uid=999,gid=998,mode=0400",
            "--config",
            "source=registry_conf,target=/etc/registry/config.yml,mode=0440",
            "--env",
            "MYSQL_ROOT_PASSWORD_FILE=/run/secrets/mysql_pw",
            "shoal/web:1",
            "sh",
            "-c",
            MYSQL_STANDIN,
        ],
    );
    let secrets = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.ContainerSpec.Secrets}}",
            "db",
        ],
    );
    let secrets: serde_json::Value = serde_json::from_str(secrets.trim()).expect("Secrets");
    assert_eq!(
        secrets,
        serde_json::json!([{
            "File": {"Name": "mysql_pw", "UID": "999", "GID": "998", "Mode": 256},
            "SecretID": id.trim(),
            "SecretName": "my_mysql_password",
        }])
    );

    let task = only_task(&cli, "db");
    let read = |t: &Task, argv: &[&str]| cli.exec_in(t, argv).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read(&task, &["cat", "/run/secrets/mysql_pw"]), PLAINTEXT);
    assert_eq!(
        read(&task, &["stat", "-c", "%u %g %a", "/run/secrets/mysql_pw"]),
        "999 998 400"
    );
    assert_eq!(
        read(&task, &["cat", "/etc/registry/config.yml"]),
        CONFIG.trim_end()
    );
    assert_eq!(
        read(&task, &["stat", "-c", "%a", "/etc/registry/config.yml"]),
        "440"
    );
    // Read-only in the container.
    assert!(cli
        .exec_in(&task, &["sh", "-c", "echo x > /run/secrets/mysql_pw"])
        .is_err());
    // The stand-in read it through MYSQL_ROOT_PASSWORD_FILE.
    let logs = wait_for("the stand-in's output", BOUND, || {
        let logs = guard.exec(&task.node, &["docker", "logs", &task.container]);
        let text = String::from_utf8_lossy(&logs.stdout).into_owned();
        if text.contains("root password read, reversed: ") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    let reversed: String = PLAINTEXT.chars().rev().collect();
    assert!(
        logs.contains(&format!("root password read, reversed: {reversed}")),
        "{logs}"
    );
    // The file is on the task's node's tmpfs (a mount of the agent's own), and on no
    // other node's.
    let node = &guard.state.hosts[task.host_index()];
    let mount = guard.exec_ok(
        &task.node,
        &[
            "findmnt",
            "-n",
            "-o",
            "FSTYPE,OPTIONS",
            "--mountpoint",
            &node.run_dir.join("task-files").display().to_string(),
        ],
    );
    assert!(
        mount.starts_with("tmpfs") && mount.contains("mode=700"),
        "{mount}"
    );
    for h in ["h1", "h2", "h3"] {
        let files = task_files(&guard, h);
        assert_eq!(
            files.contains(&task.id),
            h == task.node,
            "{h}'s task files: {files:?}"
        );
    }

    // No plaintext on any node's disk: its data directory (the managers' store is in
    // it), its run directory (but the tmpfs), its dockerd's data root.
    let mut searched = 0;
    for (i, h) in guard.state.hosts.iter().enumerate() {
        let dirs = vec![
            h.run_dir.display().to_string(),
            guard.layout.data_dir().join(&h.name).display().to_string(),
        ];
        for needle in [PLAINTEXT, b64.as_str()] {
            let found = files_holding(&guard, &h.name, &dirs, needle);
            assert!(found.is_empty(), "h{}: {needle} found in {found:?}", i + 1);
            searched += 1;
        }
        // The same search finds the secret where it is meant to be: in the task's
        // tmpfs, on its node.
        if h.name == task.node {
            let tmpfs = h.run_dir.join("task-files").display().to_string();
            let out = guard.exec(&h.name, &["grep", "-rl", "--text", "-F", PLAINTEXT, &tmpfs]);
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&task.id),
                "the tmpfs search finds the task's file"
            );
        }
    }
    println!("plaintext searches of nodes' directories: {searched}, found 0");

    // `secret rm` of a secret in use: refused, naming the service.
    let err = cli.err("h1", &["secret", "rm", "my_mysql_password"]);
    assert!(err.contains("in use by the following service: db"), "{err}");
    assert!(cli
        .ok("h1", &["secret", "ls"])
        .contains("my_mysql_password"));

    // Swap the secret for a new one by a service update (rolling).
    guard
        .shoal_with_input(
            "h1",
            &["secret", "create", "my_mysql_password_v2", "-"],
            "pw-v2\n",
        )
        .expect("secret create v2");
    cli.ok(
        "h1",
        &[
            "service",
            "update",
            "--detach",
            "--secret-rm",
            "my_mysql_password",
            "--secret-add",
            "source=my_mysql_password_v2,target=mysql_pw",
            "db",
        ],
    );
    let new_task = wait_for("db's task replaced", BOUND, || {
        let tasks = cli.running("db")?;
        match &tasks[..] {
            [t] if t.id != task.id => Ok(t.clone()),
            _ => Err(format!("{tasks:#?}")),
        }
    });
    assert_eq!(read(&new_task, &["cat", "/run/secrets/mysql_pw"]), "pw-v2");
    // The old secret is free once the old task is gone.
    wait_for("secret rm of the secret no longer used", BOUND, || {
        cli.run("h1", &["secret", "rm", "my_mysql_password"])
    });
    assert!(!cli
        .ok("h1", &["secret", "ls"])
        .contains("my_mysql_password\n"));

    // After `service rm`, no node's tmpfs holds a file of it.
    cli.ok("h1", &["service", "rm", "db"]);
    wait_for("no task files left on any node", BOUND, || {
        let left: Vec<(String, String)> = ["h1", "h2", "h3"]
            .iter()
            .map(|h| (h.to_string(), task_files(&guard, h)))
            .filter(|(_, f)| !f.is_empty())
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    cli.ok("h1", &["secret", "rm", "my_mysql_password_v2"]);
    cli.ok("h1", &["config", "rm", "registry_conf"]);
    assert_eq!(cli.ok("h1", &["secret", "ls", "-q"]).trim(), "");
    println!("secrets lab test: {:.1} s", began.elapsed().as_secs_f64());
}
