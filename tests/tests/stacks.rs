//! `shoal stack` on a real 3-host lab: a stack of four services from a compose file (web
//! behind a published port, an API web reaches by name, a worker, a global agent) on the
//! stack's default overlay; a re-deploy with web's image changed, under a load of HTTP
//! requests through the published port on every node, updates web only (the others keep
//! their version) and loses no request; `--prune` removes a service left out of the
//! file; `stack rm` leaves no service or network of the stack. A file with a mistake
//! gives FILE:LINE:COL and deploys nothing.
use std::{net::SocketAddrV4, path::PathBuf};

use shoal_tests::{
    load::Loads,
    privileged,
    swarm::{Cli, BOUND},
    wait_for, LabGuard,
};

const PORT: u16 = 8080;

fn compose(web_image: &str, with_worker: bool) -> String {
    let mut s = format!(
        "services:\n  web:\n    image: {web_image}\n    ports: [\"{PORT}:80\"]\n    deploy: {{replicas: 2}}\n    container_name: ignored\n  api:\n    image: shoal/web:1\n    environment:\n      ROLE: api\n  agent:\n    image: shoal/web:1\n    deploy: {{mode: global}}\n"
    );
    if with_worker {
        s.push_str(concat!(
            "  worker:\n    image: ${WORKER_IMAGE:-shoal/web:1}\n    env_file: worker.env\n",
            "    volumes:\n      - data:/data\n      - {type: tmpfs, target: /scratch, tmpfs: {size: 1048576}}\n",
            "volumes:\n  data: {}\n",
        ));
    }
    s
}

/// Service name -> its version, for the stack's services.
fn versions(cli: &Cli) -> std::collections::BTreeMap<String, u64> {
    let out = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{.Spec.Name}} {{.Version.Index}}",
            "app_web",
            "app_api",
            "app_agent",
        ],
    );
    out.lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(' ')?;
            Some((n.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn stack_deploy_update_prune_and_rm() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('t', 3);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();
    let dir = tempfile_dir();
    let file = dir.join("stack.yml");
    std::fs::write(
        dir.join("worker.env"),
        "# read as docker reads --env-file\nFROM_FILE=from the file\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();

    // A mistake: one error with its place, nothing deployed.
    std::fs::write(
        &file,
        "services:\n  web:\n    image: shoal/web:1\n    ports: 5\n",
    )
    .unwrap();
    let err = cli.err("h1", &["stack", "deploy", "-c", f, "app"]);
    // serde_yaml places a wrong value at the start of the mapping holding it.
    assert!(err.contains(&format!("{f}:3:5: services.web")), "{err}");
    let ls = cli.ok("h1", &["service", "ls", "-q"]);
    assert!(ls.trim().is_empty(), "a bad file deployed something: {ls}");
    std::fs::write(
        &file,
        "services:\n  w:\n    image: shoal/web:1\n    deploy: {resources: {limits: {devices: [{driver: x}]}}}\n",
    )
    .unwrap();
    let err = cli.err("h1", &["stack", "deploy", "-c", f, "app"]);
    assert!(
        err.contains("deploy.resources.limits.devices") && err.contains("service w"),
        "{err}"
    );

    std::fs::write(&file, compose("shoal/web:1", true)).unwrap();
    let out = cli.ok("h1", &["stack", "deploy", "-c", f, "app"]);
    assert!(out.contains("Creating network app_default"), "{out}");
    assert!(out.contains("Creating service app_web"), "{out}");
    cli.wait_running("app_web", 2, |_| true);
    cli.wait_running("app_api", 1, |_| true);
    // The worker's env_file and mounts, seen inside its container.
    let worker = cli.wait_running("app_worker", 1, |_| true).remove(0);
    let seen = cli
        .exec_in(
            &worker,
            &[
                "sh",
                "-c",
                "echo env=$FROM_FILE; grep -E ' /(data|scratch) ' /proc/mounts",
            ],
        )
        .unwrap();
    assert!(seen.contains("env=from the file"), "{seen}");
    assert!(seen.contains(" /data "), "no /data mount: {seen}");
    assert!(
        seen.lines()
            .any(|l| l.starts_with("tmpfs /scratch ") && l.contains("size=1024k")),
        "no 1 MiB tmpfs at /scratch: {seen}"
    );
    let agents = cli.wait_running("app_agent", 3, |_| true);
    let ls = cli.ok("h1", &["stack", "ls"]);
    assert!(ls.contains("NAME") && ls.contains("app       4"), "{ls}");
    let services = cli.ok("h1", &["stack", "services", "app"]);
    assert_eq!(services.lines().count(), 5, "{services}");
    let ps = cli.ok("h1", &["stack", "ps", "app"]);
    assert!(ps.contains("app_agent") && ps.contains("app_web"), "{ps}");

    // The API by its name from a task of the stack (the default network's DNS).
    let web = cli.wait_running("app_web", 2, |_| true).remove(0);
    wait_for("api answers by name from web", BOUND, || {
        cli.exec_in(&web, &["timeout", "10", "wget", "-qO-", "http://api/"])
    });
    let _ = agents;
    wait_for("web answers on every node's published port", BOUND, || {
        for h in &guard.state.hosts {
            shoal_tests::client_http(&guard, &format!("http://{}:{PORT}/", h.address))
                .map_err(|e| format!("{}: {e}", h.name))?;
        }
        Ok(())
    });

    // Re-deploy with web's image changed, under load: web alone is updated.
    let before = versions(&cli);
    let mut loads = Loads::default();
    let published: Vec<SocketAddrV4> = guard
        .state
        .hosts
        .iter()
        .map(|h| SocketAddrV4::new(h.address, PORT))
        .collect();
    loads.http(
        "client -> published port on every node",
        PathBuf::from("/run/netns").join(&guard.state.client.netns),
        published,
    );
    std::fs::write(&file, compose("shoal/web:2", true)).unwrap();
    let out = cli.ok("h1", &["stack", "deploy", "-c", f, "app"]);
    assert!(out.contains("Updating service app_web"), "{out}");
    assert!(
        !out.contains("app_api") && !out.contains("app_agent"),
        "{out}"
    );
    wait_for("web's tasks all on shoal/web:2", BOUND, || {
        let tasks = cli.running("app_web")?;
        let rows = cli.ps("app_web")?;
        let old = rows
            .iter()
            .filter(|r| r.running() && !r.image.contains("shoal/web:2"))
            .count();
        if tasks.len() == 2 && old == 0 {
            Ok(())
        } else {
            Err(format!("{rows:#?}"))
        }
    });
    let report = loads.stop_expecting_no_failure("re-deploy");
    println!(
        "re-deploy under load: {} requests, {} failed",
        report.sent, report.failed
    );
    let after = versions(&cli);
    assert!(after["app_web"] > before["app_web"], "{before:?} {after:?}");
    assert_eq!(after["app_api"], before["app_api"], "{before:?} {after:?}");
    assert_eq!(
        after["app_agent"], before["app_agent"],
        "{before:?} {after:?}"
    );

    // --prune: the worker left the file.
    std::fs::write(&file, compose("shoal/web:2", false)).unwrap();
    let out = cli.ok("h1", &["stack", "deploy", "--prune", "-c", f, "app"]);
    assert!(out.contains("Removing service app_worker"), "{out}");
    let ls = cli.ok("h1", &["service", "ls", "--format", "{{.Name}}"]);
    assert!(!ls.contains("app_worker") && ls.contains("app_web"), "{ls}");

    // rm: nothing of the stack is left.
    let out = cli.ok("h1", &["stack", "rm", "app"]);
    assert!(out.contains("Removing network app_default"), "{out}");
    wait_for("nothing left of the stack", BOUND, || {
        let services = cli.run("h1", &["service", "ls", "-q"])?;
        let networks = cli.run("h1", &["network", "ls", "--format", "{{.Name}}"])?;
        if services.trim().is_empty() && !networks.contains("app_") {
            Ok(())
        } else {
            Err(format!("services: {services} networks: {networks}"))
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-stack-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
