//! Services on a real 3-host lab, through the `shoal` CLI: a global service that follows
//! a host joining later, replicas spread over the hosts with task labels on the
//! containers, a killed container replaced with the failed task kept as history, drain,
//! a failing health check never counted as running, a task's address on its network as
//! the store says (and a VIP and a published port reaching it), container options seen
//! from inside the container (hostname template, env file, user, workdir, label, extra
//! host) and a network alias another container resolves, a host whose agent and
//! dockerd stop losing its tasks to the others and cleaning up when it comes back,
//! `service rm` removing every container, and bad input refused with nothing created.
//! Jobs: a replicated job reaching its completions never more than `--max-concurrent`
//! at once, run again by `update --force`, and a global job run once per host.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use shoal_tests::{
    client_http, lab, privileged,
    swarm::{agent_pid, Cli, PsRow, BOUND},
    wait_for, within_figure, LabGuard,
};

fn running_per_node(tasks: &[PsRow]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.running()) {
        *m.entry(t.node.clone()).or_default() += 1;
    }
    m
}

/// Task IDs of the containers of `service` on `host` (running ones, by label).
fn containers(lab: &LabGuard, host: &str, service: &str, all: bool) -> Vec<String> {
    let filter = format!("label=com.docker.swarm.service.name={service}");
    let mut argv = vec!["docker", "ps", "--filter", &filter, "--format"];
    argv.push("{{.Label \"com.docker.swarm.task.id\"}}");
    if all {
        argv.push("-a");
    }
    let out = lab.exec(host, &argv);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Where the host's agent dumps the declared state it computed.
struct Declared {
    overlay: PathBuf,
}

fn declared(h: &lab::HostState) -> Declared {
    Declared {
        overlay: lab::agent::declared_dir(h).join("overlay.json"),
    }
}

#[test]
fn services_are_scheduled_healed_and_removed_on_three_hosts() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('v', 3);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    let h1 = guard.state.hosts[0].address.to_string();
    let manager = format!("{h1}:2377");
    cli.ok("h1", &["swarm", "init", "--advertise-addr", &h1]);
    let token = cli
        .ok("h1", &["swarm", "join-token", "-q", "worker"])
        .trim()
        .to_owned();
    cli.ok("h2", &["swarm", "join", "--token", &token, &manager]);

    // Global: one task per host, and h3 gets one when it joins later.
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "g",
            "--mode",
            "global",
            "shoal/web:1",
        ],
    );
    let tasks = cli.wait_ps("g", "a global task on h1 and h2", |t| {
        running_per_node(t) == BTreeMap::from([("h1".into(), 1), ("h2".into(), 1)])
    });
    assert!(tasks.iter().all(|t| t.name.starts_with("g.")), "{tasks:#?}");
    cli.ok("h3", &["swarm", "join", "--token", &token, &manager]);
    cli.wait_ps(
        "g",
        "the host that joined later gets the global task",
        |t| running_per_node(t).len() == 3 && running_per_node(t).values().all(|&k| k == 1),
    );

    // Replicated: 2, then 4, spread over the 3 hosts, with the task labels on the
    // containers of each host.
    let created = cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "myweb",
            "--replicas",
            "2",
            "shoal/web:1",
        ],
    );
    assert!(created.contains("verify: Service converged"), "{created}");
    let scaled = cli.ok("h1", &["service", "scale", "myweb=4"]);
    assert!(
        scaled.contains("myweb scaled to 4") && scaled.contains("verify: Service converged"),
        "{scaled}"
    );
    let tasks = cli.wait_ps("myweb", "4 running tasks on all 3 hosts", |t| {
        let per = running_per_node(t);
        per.values().sum::<usize>() == 4 && per.len() == 3
    });
    for host in ["h1", "h2", "h3"] {
        let mut want: Vec<String> = tasks
            .iter()
            .filter(|t| t.running() && t.node == host)
            .map(|t| t.id.clone())
            .collect();
        want.sort();
        let mut have = containers(&guard, host, "myweb", false);
        have.sort();
        assert_eq!(
            have, want,
            "{host}: task containers (by label) vs service ps"
        );
    }
    let ls = cli.ok("h1", &["service", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.contains("myweb") && l.contains("replicated") && l.contains("4/4")),
        "{ls}"
    );

    jobs_run_to_completion(&cli);

    // docker kill: a replacement runs, the killed task stays as failed history.
    let victim = tasks
        .iter()
        .find(|t| t.running() && t.node == "h2")
        .expect("a task on h2")
        .clone();
    let name = format!("{}.{}", victim.name, victim.id);
    guard.exec_ok("h2", &["docker", "kill", &name]);
    let killed = Instant::now();
    let tasks = cli.wait_ps("myweb", "a replacement for the killed task", |t| {
        running_per_node(t).values().sum::<usize>() == 4
            && t.iter().any(|x| {
                x.id == victim.id && x.history && x.current == "Failed" && x.error.contains("137")
            })
    });
    println!(
        "killed task replaced in {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    // docs/benchmarks.md, "Lab test tests/tests/services.rs" (Swarm's 5 s restart delay
    // is most of it).
    within_figure(
        "a killed task replaced",
        killed.elapsed(),
        Duration::from_secs_f64(6.5),
    );
    assert!(
        tasks
            .iter()
            .any(|t| t.name == victim.name && t.running() && t.id != victim.id),
        "{tasks:#?}"
    );

    // Drain moves tasks off a node (the global one's too), and its containers go.
    cli.ok("h1", &["node", "update", "--availability", "drain", "h2"]);
    cli.wait_ps("myweb", "no myweb task on drained h2", |t| {
        let per = running_per_node(t);
        per.values().sum::<usize>() == 4 && !per.contains_key("h2")
    });
    wait_for("h2's containers gone after drain", BOUND, || {
        let left = [
            containers(&guard, "h2", "myweb", false),
            containers(&guard, "h2", "g", false),
        ]
        .concat();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    cli.ok("h1", &["node", "update", "--availability", "active", "h2"]);
    cli.wait_ps("g", "the global task back on h2", |t| {
        running_per_node(t).len() == 3
    });

    // A failing health check: replaced, never counted as running.
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "sick",
            "--detach",
            "--health-cmd",
            "false",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            "shoal/web:1",
        ],
    );
    let start = Instant::now();
    let mut failures = 0;
    while start.elapsed() < BOUND && failures < 2 {
        let ls = cli.run("h1", &["service", "ls"]).unwrap_or_default();
        if let Some(line) = ls.lines().find(|l| l.contains(" sick ")) {
            assert!(
                line.contains(" 0/1 "),
                "an unhealthy task counted as running: {line}"
            );
        }
        let tasks = cli.ps("sick").unwrap_or_default();
        assert!(
            !tasks.iter().any(|t| t.current == "Running"),
            "an unhealthy task shown running: {tasks:#?}"
        );
        failures = tasks
            .iter()
            .filter(|t| t.current == "Failed" && t.error.contains("unhealthy"))
            .count();
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        failures >= 2,
        "unhealthy tasks were not replaced within {BOUND:?}"
    );

    // A network, a task's address on it as the store says, a VIP and a published port.
    cli.ok(
        "h1",
        &["network", "create", "--subnet", "10.0.9.0/24", "web"],
    );
    let front = cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "front",
            "--replicas",
            "2",
            "--network",
            "web",
            "-p",
            "8080:80",
            "--constraint",
            "node.hostname==h1",
            "shoal/web:1",
        ],
    );
    assert!(front.contains("verify: Service converged"), "{front}");
    let vips = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Endpoint.VirtualIPs}}",
            "front",
        ],
    );
    let vips: Vec<serde_json::Value> = serde_json::from_str(vips.trim()).expect("VIP JSON");
    let web_vip = vips
        .iter()
        .find(|v| v["NetworkName"] == "web")
        .and_then(|v| v["Addr"].as_str())
        .expect("a VIP on web")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(web_vip.starts_with("10.0.9."), "{web_vip}");
    let d = declared(&guard.state.hosts[0]);
    let overlay: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&d.overlay).expect("overlay.json"))
            .expect("overlay.json");
    let ep = overlay["local_endpoints"]
        .as_array()
        .expect("local endpoints")
        .iter()
        .find(|e| {
            e["network"] == "web" && e["container"].as_str().unwrap_or("").starts_with("front.")
        })
        .expect("a front task on web")
        .clone();
    // Endpoints name the task's sandbox, whose namespace the task's container joins.
    let sandbox = ep["container"].as_str().unwrap().to_string();
    let container = sandbox
        .strip_suffix(".sandbox")
        .unwrap_or_else(|| panic!("{sandbox} is not a task's sandbox"))
        .to_string();
    let ip = ep["ip"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.0.9."), "{ip}");
    let first: Vec<&serde_json::Value> = overlay["local_endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["container"] == sandbox.as_str())
        .collect();
    assert_eq!(first[0]["network"], "ingress", "ingress first: {first:?}");
    wait_for("the task's address in its container", BOUND, || {
        let out = guard.docker_exec("h1", &container, &["ip", "-4", "addr"])?;
        if out.contains(&format!("{ip}/24")) {
            Ok(())
        } else {
            Err(out)
        }
    });
    wait_for("the service VIP answering from a task", BOUND, || {
        guard.docker_exec(
            "h1",
            &container,
            &[
                "timeout",
                "5",
                "wget",
                "-qO-",
                &format!("http://{web_vip}/"),
            ],
        )
    });
    wait_for(
        "the published port answering from the client",
        BOUND,
        || client_http(&guard, &format!("http://{h1}:8080/")),
    );

    // Container options: a hostname template, an env file read by the CLI, user,
    // working directory, container label, an extra hosts entry, and a network alias
    // another container on the network resolves (to the service's VIP there).
    let env_file = xtask::util::target_dir().join(format!("{}-cfg.env", guard.layout.prefix));
    std::fs::write(
        &env_file,
        "# settings\nFROM_FILE=file value\n\nSHARED=file\n",
    )
    .expect("write the env file");
    let env_path = env_file.to_str().expect("a UTF-8 path").to_owned();
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "cfg",
            "--hostname",
            "{{.Service.Name}}-{{.Task.Slot}}",
            "--env-file",
            &env_path,
            "-e",
            "SHARED=flag",
            "--user",
            "1000",
            "--workdir",
            "/tmp",
            "--container-label",
            "tier=backend",
            "--host",
            "db.lab:10.1.2.3",
            "--network",
            "name=web,alias=store",
            "--constraint",
            "node.hostname==h1",
            "--entrypoint",
            "sleep",
            "shoal/web:1",
            "3600",
        ],
    );
    std::fs::remove_file(&env_file).expect("remove the env file");
    let cfg = cli
        .ps("cfg")
        .expect("ps")
        .into_iter()
        .find(|t| t.running())
        .expect("a running cfg task");
    let cfg_container = format!("{}.{}", cfg.name, cfg.id);
    let inside = |argv: &[&str]| {
        guard
            .docker_exec("h1", &cfg_container, argv)
            .unwrap_or_else(|e| panic!("{argv:?} in {cfg_container}: {e}"))
    };
    assert_eq!(inside(&["hostname"]), "cfg-1");
    let env = inside(&["env"]);
    assert!(
        env.lines().any(|l| l == "FROM_FILE=file value") && env.lines().any(|l| l == "SHARED=flag"),
        "{env}"
    );
    assert_eq!(inside(&["id", "-u"]), "1000");
    assert_eq!(inside(&["pwd"]), "/tmp");
    let hosts = inside(&["cat", "/etc/hosts"]);
    assert!(
        hosts
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["10.1.2.3", "db.lab"]),
        "{hosts}"
    );
    let label = guard.exec_ok(
        "h1",
        &[
            "docker",
            "inspect",
            "--format",
            "{{index .Config.Labels \"tier\"}}",
            &cfg_container,
        ],
    );
    assert_eq!(label, "backend");
    let cfg_vip = cli.vip("cfg", "web").to_string();
    wait_for("another container resolving the alias", BOUND, || {
        let out = guard.docker_exec("h1", &container, &["nslookup", "store"])?;
        if out.split("Name:").skip(1).any(|a| a.contains(&cfg_vip)) {
            Ok(())
        } else {
            Err(format!("wanted {cfg_vip}: {out}"))
        }
    });
    let inspect = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate}}",
            "cfg",
        ],
    );
    let template: serde_json::Value = serde_json::from_str(inspect.trim()).expect("JSON");
    assert_eq!(template["ContainerSpec"]["Hosts"][0], "10.1.2.3 db.lab");
    assert_eq!(template["Networks"][0]["Aliases"][0], "store");
    // Bad input: one clear line, nothing changed.
    let e = cli.err("h1", &["service", "update", "--host-add", "nocolon", "cfg"]);
    assert!(e.contains("invalid --host \"nocolon\""), "{e}");
    let e = cli.err(
        "h1",
        &["service", "update", "--hostname", "{{.Node.Name}}", "cfg"],
    );
    assert!(e.contains("unknown field"), "{e}");

    // h3's agent and dockerd stop: its myweb task comes back on h1/h2.
    let h3 = guard.state.hosts[2].clone();
    let before = cli.ps("myweb").expect("ps");
    let on_h3: Vec<String> = before
        .iter()
        .filter(|t| t.running() && t.node == "h3")
        .map(|t| t.id.clone())
        .collect();
    assert!(!on_h3.is_empty(), "a myweb task on h3: {before:#?}");
    let agent = agent_pid(&h3);
    lab::procs::signal(agent, libc::SIGKILL);
    assert!(
        lab::procs::wait_gone(&[agent], BOUND),
        "h3's agent did not stop"
    );
    let dockerd =
        lab::procs::read_pid_file(&guard.layout.dockerd_pid_file("h3")).unwrap_or(h3.dockerd_pid);
    lab::procs::signal(dockerd, libc::SIGKILL);
    assert!(
        lab::procs::wait_gone(&[dockerd], BOUND),
        "h3's dockerd did not stop"
    );
    let lost = Instant::now();
    cli.wait_ps("myweb", "h3's tasks rescheduled on h1 and h2", |t| {
        let per = running_per_node(t);
        per.values().sum::<usize>() == 4 && !per.contains_key("h3")
    });
    println!(
        "tasks of a stopped host running elsewhere after {:.1} s",
        lost.elapsed().as_secs_f64()
    );
    within_figure(
        "a stopped host's tasks running elsewhere",
        lost.elapsed(),
        Duration::from_secs_f64(9.7),
    );
    // Its agent comes back first, with dockerd still down: it starts, says so in
    // `shoal info` and picks dockerd up when it comes; no rebalance, and its stale
    // containers are removed.
    cli.start_agent(&shoal, 2, &[]);
    wait_for("h3's info saying dockerd is unreachable", BOUND, || {
        let info = cli.run("h3", &["info"])?;
        if info.contains("Docker Engine: unreachable") {
            Ok(())
        } else {
            Err(info)
        }
    });
    lab::restart_dockerd(&guard.layout, &h3).expect("restart h3's dockerd");
    let back = Instant::now();
    wait_for("h3's agent reaching its restarted dockerd", BOUND, || {
        let info = cli.run("h3", &["info"])?;
        if info.contains("Docker Engine: reachable") {
            Ok(())
        } else {
            Err(info)
        }
    });
    // The event watch retries every 2 s.
    within_figure(
        "an agent reaching its restarted dockerd",
        back.elapsed(),
        Duration::from_secs(2),
    );
    wait_for("h3's stale myweb containers removed", BOUND, || {
        let left = containers(&guard, "h3", "myweb", true);
        if left.iter().any(|id| on_h3.contains(id)) {
            Err(format!("{left:?}"))
        } else {
            Ok(())
        }
    });

    // Bad input: a clear error, nothing created.
    let e = cli.err(
        "h1",
        &["service", "create", "--name", "bad.name", "shoal/web:1"],
    );
    assert!(e.contains("invalid service name"), "{e}");
    let e = cli.err(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "bad",
            "--replicas",
            "-1",
            "shoal/web:1",
        ],
    );
    assert!(e.contains("non-negative"), "{e}");
    let e = cli.err(
        "h1",
        &["service", "create", "--name", "myweb", "-d", "shoal/web:1"],
    );
    assert!(e.contains("already exists"), "{e}");
    let e = cli.err(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "bad",
            "--network",
            "nope",
            "shoal/web:1",
        ],
    );
    assert!(e.contains("network nope not found"), "{e}");
    let e = cli.err(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "bad",
            "-p",
            "80:http",
            "shoal/web:1",
        ],
    );
    assert!(e.contains("invalid publish spec"), "{e}");
    let e = cli.err(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "bad",
            "-p",
            "8080:80",
            "shoal/web:1",
        ],
    );
    assert!(e.contains("already published"), "{e}");
    let e = cli.err(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "bad",
            "--constraint",
            "node.colour==red",
            "shoal/web:1",
        ],
    );
    assert!(e.contains("invalid constraint"), "{e}");
    let ls = cli.ok("h1", &["service", "ls"]);
    assert!(!ls.contains(" bad "), "a refused service was created: {ls}");
    let e = cli.err("h1", &["network", "rm", "web"]);
    assert!(e.contains("in use"), "{e}");
    // An impossible constraint: pending with Swarm's reason; the CLI gives up saying so.
    let e = cli.err(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "nowhere",
            "--constraint",
            "node.hostname==h9",
            "shoal/web:1",
        ],
    );
    assert!(e.contains("no suitable node"), "{e}");
    let tasks = cli.ps("nowhere").expect("ps");
    assert!(
        !tasks.is_empty()
            && tasks
                .iter()
                .all(|t| t.current == "Pending" && t.error.contains("no suitable node")),
        "{tasks:#?}"
    );
    // An image no node has and no registry gives: the pull fails and the task is
    // rejected with the reason, visible in ps.
    let e = cli.err(
        "h1",
        &["service", "create", "--name", "ghost", "nosuch/image:1"],
    );
    assert!(e.contains("pulling nosuch/image:1: "), "{e}");
    cli.wait_ps("ghost", "a rejected task with the reason", |t| {
        t.iter()
            .any(|x| x.current == "Rejected" && x.error.contains("pulling nosuch/image:1"))
    });

    // service rm: every container on every host goes, sandboxes too.
    cli.ok(
        "h1",
        &[
            "service", "rm", "myweb", "g", "sick", "front", "cfg", "nowhere", "ghost", "batch",
            "once",
        ],
    );
    for host in ["h1", "h2", "h3"] {
        wait_for(&format!("{host}: no task container left"), BOUND, || {
            let mut left = String::new();
            for label in ["com.docker.swarm.task.id", "shoal.sandbox.task.id"] {
                let filter = format!("label={label}");
                let out = guard.exec(host, &["docker", "ps", "-a", "--filter", &filter, "-q"]);
                left.push_str(String::from_utf8_lossy(&out.stdout).trim());
            }
            if left.is_empty() {
                Ok(())
            } else {
                Err(left)
            }
        });
    }
    let ls = cli.ok("h1", &["service", "ls"]);
    assert_eq!(ls.lines().count(), 1, "only the header: {ls}");
    // A task whose containers are gone is in use until its node reports it shut down.
    wait_for("network rm web", BOUND, || {
        match cli.run("h1", &["network", "rm", "web"]) {
            Err(e) if e.contains("still stopping") => Err(e),
            Err(e) => panic!("network rm web: {e}"),
            Ok(out) => Ok(out),
        }
    });
}

/// A job task of `service ps` meant to run and not ended: it holds one of the job's
/// places, whatever it is doing.
fn job_active(t: &PsRow) -> bool {
    !t.history
        && t.desired == "Running"
        && !["Complete", "Failed", "Shutdown", "Rejected", "Orphaned"].contains(&t.current.as_str())
}

fn job_completed(t: &PsRow) -> bool {
    t.desired == "Complete" && t.current == "Complete"
}

/// `--mode replicated-job` and `--mode global-job` on the three hosts.
fn jobs_run_to_completion(cli: &Cli) {
    // 4 completions, 2 at once: polled while it runs, never more than 2 hold a place.
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "batch",
            "--detach",
            "--mode",
            "replicated-job",
            "--replicas",
            "4",
            "--max-concurrent",
            "2",
            "shoal/web:1",
            "sh",
            "-c",
            "sleep 1",
        ],
    );
    let start = Instant::now();
    let mut most = 0;
    let mut samples = 0;
    let done = loop {
        let rows = cli.ps("batch").unwrap_or_default();
        let active = rows.iter().filter(|t| job_active(t)).count();
        assert!(active <= 2, "{active} job tasks at once: {rows:#?}");
        most = most.max(rows.iter().filter(|t| t.current == "Running").count());
        samples += 1;
        if rows.iter().filter(|t| job_completed(t)).count() == 4 {
            break rows;
        }
        assert!(
            start.elapsed() < BOUND,
            "the job did not complete within {BOUND:?}: {rows:#?}"
        );
    };
    println!(
        "replicated job: 4 completions, 2 at once, in {:.1} s ({samples} polls, at most {most} running)",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(most, 2, "two tasks ran at once at some point");
    assert_eq!(done.len(), 4, "nothing beyond the completions: {done:#?}");
    let mut names: Vec<&str> = done.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["batch.1", "batch.2", "batch.3", "batch.4"]);
    let ls = cli.ok("h1", &["service", "ls"]);
    assert!(
        ls.lines().any(|l| l.contains("batch")
            && l.contains("replicated job")
            && l.contains("0/2 (4/4 completed)")),
        "{ls}"
    );
    // update --force: a new iteration runs the job again, the first run is history.
    let again = cli.ok("h1", &["service", "update", "--force", "batch"]);
    assert!(again.contains("job complete"), "{again}");
    let rows = cli.ps("batch").expect("ps");
    assert_eq!(
        rows.iter().filter(|t| job_completed(t)).count(),
        8,
        "{rows:#?}"
    );
    let status = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .JobStatus.JobIteration}} {{json .Spec.Mode}}",
            "batch",
        ],
    );
    assert_eq!(
        status.trim(),
        r#"{"Index":1} {"ReplicatedJob":{"MaxConcurrent":2,"TotalCompletions":4}}"#
    );

    // A global job: once on each host; the CLI waits until it is complete.
    let once = cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "once",
            "--mode",
            "global-job",
            "shoal/web:1",
            "sh",
            "-c",
            "sleep 1",
        ],
    );
    assert!(once.contains("job complete"), "{once}");
    let rows = cli.ps("once").expect("ps");
    let mut nodes: Vec<&str> = rows
        .iter()
        .filter(|t| job_completed(t))
        .map(|t| t.node.as_str())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["h1", "h2", "h3"], "{rows:#?}");
    assert_eq!(rows.len(), 3, "once per host: {rows:#?}");
    let ls = cli.ok("h1", &["service", "ls"]);
    assert!(
        ls.lines().any(|l| l.contains("once")
            && l.contains("global job")
            && l.contains("0/0 (3/3 completed)")),
        "{ls}"
    );

    // Bad input: one clear line, nothing created.
    for (args, expected) in [
        (
            &["--max-concurrent", "2"][..],
            "--max-concurrent can only be used with replicated-job mode",
        ),
        (
            &["--mode", "global-job", "--replicas", "2"],
            "--replicas can only be used with replicated or replicated-job mode",
        ),
        (
            &["--mode", "replicated-job", "--max-concurrent", "-1"],
            "non-negative",
        ),
        (
            &["--mode", "replicated-job", "--update-parallelism", "2"],
            "update and rollback configuration is not supported for jobs",
        ),
    ] {
        let argv = [
            &["service", "create", "--name", "badjob"][..],
            args,
            &["shoal/web:1"],
        ]
        .concat();
        let e = cli.err("h1", &argv);
        assert!(e.contains(expected), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    }
    let e = cli.err("h1", &["service", "scale", "once=2"]);
    assert!(
        e.contains("scale can only be used with replicated or replicated-job mode"),
        "{e}"
    );
    let ls = cli.ok("h1", &["service", "ls"]);
    assert!(!ls.contains("badjob"), "a refused job was created: {ls}");
}
