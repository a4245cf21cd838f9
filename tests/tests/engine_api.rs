//! The Docker Engine API on a real 2-host lab, driven by the real `docker` CLI (the
//! image's current client and Debian's 20.10 one) with `-H unix://<agent's socket>`:
//! `version` and `info` (shoal's swarm state in the `Swarm` section), `node ls`,
//! `service ls/ps/inspect` checked against what shoal's own CLI says, containers,
//! `exec` (an upgraded connection) and `logs` passed to the node's dockerd; a worker's
//! socket refuses the swarm's objects as Docker's does, what is not served yet is
//! refused saying so, and a bad filter is refused.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use shoal_tests::{
    lab, privileged,
    swarm::{Cli, BOUND},
    wait_for, LabGuard,
};

/// The image's docker client (current) and Debian's (20.10, API 1.41).
const CLIENTS: [&str; 2] = ["/usr/local/bin/docker", "/usr/bin/docker"];

struct Docker {
    socket: PathBuf,
    /// An empty client configuration: no context or credential of the machine's.
    config: PathBuf,
}

impl Docker {
    fn run_with(&self, client: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(client)
            .env("DOCKER_CONFIG", &self.config)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {client}: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(CLIENTS[0], args)
    }

    fn ok_with(&self, client: &str, args: &[&str]) -> String {
        let (ok, out, err) = self.run_with(client, args);
        assert!(ok, "{client} {}: failed: {err}{out}", args.join(" "));
        out
    }

    fn err(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run_with(CLIENTS[0], args);
        assert!(!ok, "docker {} should fail; printed: {out}", args.join(" "));
        err
    }
}

#[test]
fn the_docker_cli_drives_shoal_through_its_engine_api() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('n', 2);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();
    let config = std::env::temp_dir().join(format!("{}-docker-config", guard.state.prefix));
    std::fs::create_dir_all(&config).expect("docker config dir");
    let docker_of = |i: usize| Docker {
        socket: lab::agent::engine_api_socket(&guard.state.hosts[i]),
        config: config.clone(),
    };
    let (h1, h2) = (docker_of(0), docker_of(1));

    // The socket is dockerd's kind: root and the docker group.
    let mode = std::fs::metadata(&h1.socket)
        .expect("engine socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "{:o}", mode);

    cli.ok(
        "h1",
        &[
            "network",
            "create",
            "--driver",
            "overlay",
            "--subnet",
            "10.60.1.0/24",
            "app",
        ],
    );
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "2",
            "--network",
            "app",
            "-p",
            "8080:80",
            "shoal/web:1",
        ],
    );
    let tasks = cli.wait_running("web", 2, |_| true);

    // version and info: dockerd's engine, shoal's swarm.
    for client in CLIENTS {
        let server = h1.ok_with(client, &["version", "--format", "{{.Server.Version}}"]);
        assert!(!server.trim().is_empty(), "{client}: {server}");
    }
    let swarm: serde_json::Value =
        serde_json::from_str(&h1.ok(&["info", "--format", "{{json .Swarm}}"])).expect("json");
    let node_ls = cli.ok("h1", &["node", "ls", "-q"]);
    println!("docker info's Swarm: {swarm}");
    assert_eq!(swarm["LocalNodeState"], "active", "{swarm}");
    assert_eq!(swarm["ControlAvailable"], true, "{swarm}");
    assert_eq!(swarm["Nodes"], 2, "{swarm}");
    assert_eq!(swarm["Managers"], 1, "{swarm}");
    let self_id = swarm["NodeID"].as_str().unwrap_or_default().to_owned();
    assert!(
        !self_id.is_empty() && node_ls.lines().any(|l| self_id.starts_with(l.trim())),
        "{swarm} vs shoal node ls:\n{node_ls}"
    );
    let (ok, text, err) = h1.run_with(CLIENTS[0], &["info"]);
    assert!(ok, "{err}");
    assert!(
        text.contains("Swarm: active") && text.contains("Is Manager: true"),
        "{text}"
    );
    assert!(
        !err.lines()
            .any(|l| l.to_ascii_lowercase().contains("error")),
        "docker info printed errors: {err}"
    );

    // node ls, with both clients.
    for client in CLIENTS {
        let rows = h1.ok_with(
            client,
            &[
                "node",
                "ls",
                "--format",
                "{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}",
            ],
        );
        let mut rows: Vec<&str> = rows.lines().collect();
        rows.sort();
        assert_eq!(
            rows,
            ["h1 Ready Active Leader", "h2 Ready Active "],
            "{client}"
        );
    }

    // service ls, ps and inspect agree with shoal's own CLI.
    for client in CLIENTS {
        let ls = h1.ok_with(
            client,
            &[
                "service",
                "ls",
                "--format",
                "{{.Name}} {{.Replicas}} {{.Ports}}",
            ],
        );
        println!("{client} service ls: {}", ls.trim());
        assert_eq!(ls.trim(), "web 2/2 *:8080->80/tcp", "{client}");
    }
    let ps = h1.ok(&[
        "service",
        "ps",
        "web",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Name}} {{.Node}} {{.CurrentState}}",
    ]);
    let mut seen: Vec<(String, String)> = ps
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.get(2), Some(&"Running"), "{ps}");
            (f[0].to_owned(), f[1].to_owned())
        })
        .collect();
    seen.sort();
    let mut want: Vec<(String, String)> = tasks
        .iter()
        .map(|t| (t.name().to_owned(), t.node.clone()))
        .collect();
    want.sort();
    println!("docker service ps web:\n{ps}");
    assert_eq!(seen, want, "docker service ps:\n{ps}");
    let vips: serde_json::Value = serde_json::from_str(&h1.ok(&[
        "service",
        "inspect",
        "--format",
        "{{json .Endpoint.VirtualIPs}}",
        "web",
    ]))
    .expect("json");
    let vip = cli.vip("web", "app");
    assert!(
        vips.as_array().is_some_and(|v| v.iter().any(|v| v["Addr"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{vip}/"))))),
        "{vips} has no {vip}"
    );

    // Containers are the node's dockerd's: ps, exec (an upgraded connection), logs.
    let on_h1 = tasks
        .iter()
        .find(|t| t.node == "h1")
        .or(tasks.first())
        .expect("a task");
    let host = if on_h1.node == "h1" { &h1 } else { &h2 };
    let names = host.ok(&["ps", "--format", "{{.Names}}"]);
    assert!(names.lines().any(|n| n == on_h1.container), "{names}");
    let hostname = host.ok(&["exec", &on_h1.container, "cat", "/etc/hostname"]);
    assert_eq!(hostname.trim(), on_h1.hostname());
    host.ok(&["logs", "--tail", "5", &on_h1.container]);

    // A worker's socket: containers yes, the swarm's objects no, as Docker says it.
    h2.ok(&["ps"]);
    let refused = h2.err(&["node", "ls"]);
    assert!(
        refused.contains("This node is not a swarm manager. Worker nodes can't be used"),
        "{refused}"
    );

    // What is not served yet says so, and changes nothing; a bad filter is refused.
    let refused = h1.err(&["service", "create", "--name", "other", "shoal/web:1"]);
    assert!(
        refused.contains("does not serve POST /services/create yet"),
        "{refused}"
    );
    let refused = h1.err(&["service", "ls", "--filter", "colour=blue"]);
    assert!(refused.contains("invalid filter 'colour'"), "{refused}");
    wait_for("only web exists", BOUND, || {
        let ls = cli.run("h1", &["service", "ls", "-q"])?;
        (ls.lines().count() == 1).then_some(()).ok_or(ls)
    });
    let _ = std::fs::remove_dir_all(&config);
    assert!(!Path::new(&config).exists());
}
