//! What would harm the cluster or the host is refused, on a 1-host lab through the
//! `shoal` CLI:
//! - a container with Docker Swarm's task labels that shoal did not make (one with an
//!   older agent's slot label too, for a task the store does not have) survives the
//!   executor's passes: a service's task started and removed around it;
//! - publishing the cluster's own ports (2377, gossip 7946, data path 4789) is refused
//!   at `service create` and `service update --publish-add`, in one line saying why, and
//!   nothing changes;
//! - `network create --opt encrypted=<anything but true>` is refused (the option's
//!   presence asks for encryption; a value saying otherwise is not guessed at), and
//!   none is made.
use shoal_tests::{
    privileged,
    swarm::{Cli, BOUND},
    wait_for, LabGuard,
};

/// IDs of the containers on `host` carrying `label`, running or not.
fn labelled(guard: &LabGuard, host: &str, label: &str) -> Vec<String> {
    let filter = format!("label={label}");
    guard
        .exec_ok(host, &["docker", "ps", "-aq", "--filter", &filter])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn running(guard: &LabGuard, host: &str, container: &str) -> String {
    guard.exec_ok(
        host,
        &["docker", "inspect", "-f", "{{.State.Running}}", container],
    )
}

/// Runs `args`, which must fail with one line containing `want`.
fn refused(cli: &Cli, args: &[&str], want: &str) {
    let e = cli.err("h1", args);
    let e = e.trim();
    assert!(e.contains(want), "shoal {}: {e}", args.join(" "));
    assert_eq!(e.lines().count(), 1, "one line: {e}");
}

#[test]
fn what_would_harm_the_cluster_or_the_host_is_refused() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('f', 1);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();

    // Containers shoal did not make, with Swarm's task labels.
    for (name, extra) in [
        ("swarm-task", None),
        ("old-looking", Some("shoal.task.slot=1")),
    ] {
        let task_label = format!("com.docker.swarm.task.id=x-{name}");
        let mut argv = vec![
            "docker",
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            name,
            "-l",
            &task_label,
            "-l",
            "com.docker.swarm.service.name=notshoal",
        ];
        if let Some(l) = extra {
            argv.extend(["-l", l]);
        }
        argv.push("shoal/web:1");
        guard.exec_ok("h1", &argv);
    }

    // The executor runs a task and removes it again: passes that list, start and remove.
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--detach",
            "-p",
            "8080:80",
            "shoal/web:1",
        ],
    );
    cli.wait_running("web", 1, |_| true);
    let ours = labelled(&guard, "h1", "shoal.task.id");
    assert_eq!(
        ours.len(),
        1,
        "the task's container has shoal's label: {ours:?}"
    );
    cli.ok("h1", &["service", "rm", "web"]);
    wait_for("the executor removed its task container", BOUND, || {
        let left = labelled(&guard, "h1", "shoal.task.id");
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("still there: {left:?}"))
        }
    });
    for name in ["swarm-task", "old-looking"] {
        assert_eq!(
            running(&guard, "h1", name),
            "true",
            "{name}, a Swarm-labelled container shoal did not make, was touched"
        );
    }

    // The cluster's own ports cannot be published.
    for (spec, why) in [
        (
            "2377:80",
            "port 2377 cannot be published: it is the managers' cluster port",
        ),
        (
            "7946:80/udp",
            "port 7946 cannot be published: it is the gossip port",
        ),
        (
            "4789:80/udp",
            "port 4789 cannot be published: it is the VXLAN data-path port",
        ),
    ] {
        refused(
            &cli,
            &[
                "service",
                "create",
                "--name",
                "bad",
                "--detach",
                "-p",
                spec,
                "shoal/web:1",
            ],
            why,
        );
    }
    let listed = cli.ok("h1", &["service", "ls", "-q"]);
    assert!(
        listed.trim().is_empty(),
        "a refused service exists: {listed}"
    );
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "web2",
            "--detach",
            "-p",
            "8081:80",
            "shoal/web:1",
        ],
    );
    let inspect = |cli: &Cli| cli.ok("h1", &["service", "inspect", "web2"]);
    let before = inspect(&cli);
    refused(
        &cli,
        &["service", "update", "--publish-add", "2377:81", "web2"],
        "port 2377 cannot be published",
    );
    assert_eq!(
        inspect(&cli),
        before,
        "a refused update changed the service"
    );

    // Encrypted overlays: a value that says no is refused, not guessed at.
    for opt in ["encrypted=false", "encrypted=0"] {
        refused(
            &cli,
            &["network", "create", "--opt", opt, "secret"],
            "leave the value out (--opt encrypted) or give true",
        );
    }
    let networks = cli.ok("h1", &["network", "ls"]);
    assert!(
        !networks.contains("secret"),
        "a refused network exists: {networks}"
    );
}
