//! Rolling updates on a real 3-host lab, through the `shoal` CLI, under load.
//!
//! The seeds' flows: 6 replicas updated with `--update-delay 10s --update-parallelism 2`
//! go in batches of 2 with the delay between them, visible in `service ps` (where the
//! old tasks keep their own image); `service rollback` takes them back. Then a node
//! drain, a start-first `--force` (never fewer than N serving), `service rm` of a second
//! service on the same network, every task leaving the probe's node and coming back
//! (`--constraint-add|rm`), and a scale-down from 6 to 2. Through every one of those,
//! load generators send requests from the lab client through every node's published
//! port, and from a container through the service's VIP and through its name (resolved
//! by the embedded DNS for each request), each on a new connection per request, and
//! through the published ports and the VIP on kept-alive connections too (a connection
//! to a stopped task, closed by it after its drain, is replaced as HTTP clients do): each
//! phase prints requests sent and failed, and asserts failed == 0. Beside them: a new image whose health check never passes
//! pauses its update with the reason, and with `--update-failure-action rollback` rolls
//! back on its own; a crash-looping task backs off (its restarts counted over 60 s).
use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use shoal_tests::{
    load::Loads,
    privileged,
    swarm::{netns_of, Cli, PsRow, Task, BOUND},
    wait_for, LabGuard,
};

const PORT: u16 = 8080;
/// Published port of the web image's keep-alive server (its port 8080).
const KEEPALIVE_PORT: u16 = 8081;
/// Kept-alive connections per target, so that they land on most of the tasks.
const KEPT_PER_TARGET: usize = 4;

fn running(rows: &[PsRow]) -> Vec<&PsRow> {
    rows.iter().filter(|r| r.running()).collect()
}

/// Starts the phase's loads: the client through every node's published port, the
/// probe container through the VIP and through the name; each with a new connection per
/// request, and the first two also on kept-alive connections.
fn loads<'a>(
    lab: &'a LabGuard,
    probe: &Task,
    probe_ns: &std::path::Path,
    vip: SocketAddrV4,
) -> Loads<'a> {
    let mut l = Loads::default();
    let published: Vec<SocketAddrV4> = lab
        .state
        .hosts
        .iter()
        .map(|h| SocketAddrV4::new(h.address, PORT))
        .collect();
    let kept_published: Vec<SocketAddrV4> = lab
        .state
        .hosts
        .iter()
        .flat_map(|h| [SocketAddrV4::new(h.address, KEEPALIVE_PORT); KEPT_PER_TARGET])
        .collect();
    let kept_vip = vec![SocketAddrV4::new(*vip.ip(), 8080); KEPT_PER_TARGET];
    let client_ns = PathBuf::from("/run/netns").join(&lab.state.client.netns);
    l.http(
        "client -> published port on every node",
        client_ns.clone(),
        published,
    );
    l.http_keepalive(
        "client -> published port on every node, keep-alive",
        client_ns,
        kept_published,
    );
    l.http("container -> VIP", probe_ns.to_path_buf(), vec![vip]);
    l.http_keepalive(
        "container -> VIP, keep-alive",
        probe_ns.to_path_buf(),
        kept_vip,
    );
    l.shell(lab, probe, "container -> service name", "http://web/");
    l
}

/// Waits until no task of `service` told to stop still runs: the stopped tasks'
/// containers are gone (their grace period has passed).
fn wait_stopped_tasks_gone(cli: &Cli, service: &str) {
    wait_for("stopped tasks' containers gone", BOUND, || {
        let rows = cli.ps(service)?;
        let stopping = rows
            .iter()
            .filter(|r| r.current == "Running" && r.desired != "Running")
            .count();
        if stopping == 0 {
            Ok(())
        } else {
            Err(format!("{rows:#?}"))
        }
    });
}

/// `service inspect`'s UpdateStatus of `service` as JSON (Null when it has none).
fn update_status(cli: &Cli, service: &str) -> serde_json::Value {
    let out = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .UpdateStatus}}",
            service,
        ],
    );
    serde_json::from_str(out.trim()).unwrap_or(serde_json::Value::Null)
}

fn wait_update_state(cli: &Cli, service: &str, want: &str) -> serde_json::Value {
    wait_for(
        &format!("{service}'s update {want}"),
        Duration::from_secs(120),
        || {
            let s = update_status(cli, service);
            if s["State"] == want {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        },
    )
}

/// Watches a service's `service ps` while `during` runs: when each task of `image`
/// was first seen running (seconds from the start), and the fewest tasks seen serving.
struct Watched {
    first_running: BTreeMap<String, f64>,
    fewest_running: usize,
    out: String,
}

fn watch_ps(
    cli: &Cli,
    service: &str,
    image: &str,
    during: impl FnOnce() -> String + Send,
) -> Watched {
    let began = Instant::now();
    let mut first_running = BTreeMap::new();
    let mut fewest_running = usize::MAX;
    let out = thread::scope(|s| {
        let job = s.spawn(during);
        while !job.is_finished() {
            if let Ok(rows) = cli.ps(service) {
                let up = running(&rows);
                // Serving: told to run and running, the slot's newest task or not (a
                // start-first slot lists its new task first while it starts, and the
                // old one, still serving, as history).
                let serving = rows
                    .iter()
                    .filter(|r| r.desired == "Running" && r.current == "Running")
                    .count();
                fewest_running = fewest_running.min(serving);
                for r in up.iter().filter(|r| r.image.contains(image)) {
                    first_running
                        .entry(r.id.clone())
                        .or_insert(began.elapsed().as_secs_f64());
                }
            }
            thread::sleep(Duration::from_millis(250));
        }
        job.join().expect("the watched command")
    });
    Watched {
        first_running,
        fewest_running,
        out,
    }
}

/// Distinct task IDs of `service` seen over `span`, with the time each was first seen.
fn count_tasks(cli: &Cli, service: &str, span: Duration) -> Vec<(f64, String)> {
    let began = Instant::now();
    let mut seen: Vec<(f64, String)> = Vec::new();
    while began.elapsed() < span {
        if let Ok(rows) = cli.ps(service) {
            for r in rows {
                if !seen.iter().any(|(_, id)| *id == r.id) {
                    seen.push((began.elapsed().as_secs_f64(), r.id));
                }
            }
        }
        thread::sleep(Duration::from_millis(500));
    }
    seen
}

#[test]
fn rolling_updates_rollbacks_and_stops_lose_no_request() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('u', 3);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();

    // A crash loop, counted in the background through everything else: exits at once,
    // restart delay 1 s, each failure in a row doubling the wait.
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "crash",
            "--detach",
            "--restart-delay",
            "1s",
            "shoal/web:1",
            "false",
        ],
    );

    cli.ok(
        "h1",
        &["network", "create", "--subnet", "10.0.20.0/24", "app"],
    );
    let made = cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "6",
            "--network",
            "app",
            "-p",
            &format!("{PORT}:80"),
            "-p",
            &format!("{KEEPALIVE_PORT}:8080"),
            "--update-delay",
            "10s",
            "--update-parallelism",
            "2",
            "shoal/web:1",
        ],
    );
    assert!(made.contains("verify: Service converged"), "{made}");
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "probe",
            "--network",
            "app",
            "--constraint",
            "node.hostname==h1",
            "shoal/web:1",
        ],
    );
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "other",
            "--replicas",
            "2",
            "--network",
            "app",
            "shoal/web:1",
        ],
    );
    let probe = cli.wait_running("probe", 1, |_| true).remove(0);
    let probe_ns = netns_of(cli.pid(&probe));
    let vip = SocketAddrV4::new(cli.vip("web", "app"), 80);
    // Everything answers before the load starts counting.
    wait_for("web answers through every path", BOUND, || {
        for h in &guard.state.hosts {
            shoal_tests::client_http(&guard, &format!("http://{}:{PORT}/", h.address))
                .map_err(|e| format!("published port on {}: {e}", h.name))?;
        }
        for url in ["http://web/".to_string(), format!("http://{vip}/")] {
            cli.exec_in(&probe, &["timeout", "10", "wget", "-qO-", &url])
                .map_err(|e| format!("{url} from the probe: {e}"))?;
        }
        Ok(())
    });
    let crash_watch = thread::scope(|s| {
        let crash = s.spawn(|| count_tasks(&cli, "crash", Duration::from_secs(60)));

        // The seed: 6 replicas, parallelism 2, delay 10 s.
        let l = loads(&guard, &probe, &probe_ns, vip);
        let w = watch_ps(&cli, "web", "web:2", || {
            cli.ok(
                "h1",
                &["service", "update", "--image", "shoal/web:2", "web"],
            )
        });
        l.stop_expecting_no_failure("image update");
        assert!(w.out.contains("verify: Service converged"), "{}", w.out);
        let mut starts: Vec<f64> = w.first_running.values().copied().collect();
        starts.sort_by(f64::total_cmp);
        println!(
            "image update: new tasks first seen running at {starts:.1?} s; fewest running {}",
            w.fewest_running
        );
        assert_eq!(starts.len(), 6, "{:?}", w.first_running);
        // Batches of 2: the second task of a batch comes within the delay of the
        // first; the next batch only after the delay (less the ps polling's slack).
        for batch in 0..3 {
            let (a, b) = (starts[2 * batch], starts[2 * batch + 1]);
            assert!(b - a < 9.0, "batch {batch}: {starts:?}");
            if batch > 0 {
                let gap = a - starts[2 * batch - 1];
                assert!(gap >= 9.0, "no 10 s delay before batch {batch}: {starts:?}");
            }
        }
        assert!(
            w.fewest_running >= 4,
            "more than 2 tasks down at once: {}",
            w.fewest_running
        );
        let rows = cli.ps("web").expect("ps");
        assert_eq!(running(&rows).len(), 6, "{rows:#?}");
        assert!(
            running(&rows).iter().all(|r| r.image.contains("web:2")),
            "{rows:#?}"
        );
        let old: Vec<&PsRow> = rows
            .iter()
            .filter(|r| r.history && r.desired == "Shutdown")
            .collect();
        assert!(
            old.len() >= 6 && old.iter().all(|r| r.image.contains("web:1")),
            "the replaced tasks keep their own image: {rows:#?}"
        );
        assert_eq!(update_status(&cli, "web")["State"], "completed");

        // service rollback: back to the old image.
        let l = loads(&guard, &probe, &probe_ns, vip);
        let out = cli.ok("h1", &["service", "rollback", "web"]);
        l.stop_expecting_no_failure("rollback");
        assert!(out.contains("rollback"), "{out}");
        let rows = cli.ps("web").expect("ps");
        assert!(
            running(&rows).len() == 6 && running(&rows).iter().all(|r| r.image.contains("web:1")),
            "{rows:#?}"
        );
        assert_eq!(update_status(&cli, "web")["State"], "rollback_completed");

        // Drain a node: its tasks move away; the node's published port keeps answering.
        let l = loads(&guard, &probe, &probe_ns, vip);
        cli.ok("h1", &["node", "update", "--availability", "drain", "h3"]);
        cli.wait_running("web", 6, |t| t.iter().all(|t| t.node != "h3"));
        l.stop_expecting_no_failure("node drain");
        cli.ok("h1", &["node", "update", "--availability", "active", "h3"]);

        // --force, start-first: a new task beside each old one; never fewer than 6.
        let l = loads(&guard, &probe, &probe_ns, vip);
        let w = watch_ps(&cli, "web", "web:1", || {
            cli.ok(
                "h1",
                &[
                    "service",
                    "update",
                    "--force",
                    "--update-order",
                    "start-first",
                    "--update-delay",
                    "1s",
                    "web",
                ],
            )
        });
        l.stop_expecting_no_failure("update --force, start-first");
        println!("start-first --force: fewest running {}", w.fewest_running);
        assert!(
            w.fewest_running >= 6,
            "start-first let the service drop below 6: {}",
            w.fewest_running
        );

        // service rm of a second service on the same network.
        let l = loads(&guard, &probe, &probe_ns, vip);
        cli.ok("h1", &["service", "rm", "other"]);
        wait_for("other's tasks gone", BOUND, || match cli.ps("other") {
            Err(e) if e.contains("not found") || e.contains("no such") => Ok(()),
            Ok(rows) if rows.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        });
        l.stop_expecting_no_failure("service rm of another service");

        // Every task leaves h1, where the probe runs: h1 keeps no local backend, and
        // while a leaving task drains, its successor on another node must already be
        // reachable from h1 before h1 stops sending to it (VIP connects refused
        // otherwise).
        let l = loads(&guard, &probe, &probe_ns, vip);
        cli.ok(
            "h1",
            &[
                "service",
                "update",
                "--constraint-add",
                "node.hostname!=h1",
                "web",
            ],
        );
        cli.wait_running("web", 6, |t| t.iter().all(|t| t.node != "h1"));
        wait_stopped_tasks_gone(&cli, "web");
        l.stop_expecting_no_failure("tasks leave h1");

        // And come back: h1 gets tasks (and its local backends) again.
        let l = loads(&guard, &probe, &probe_ns, vip);
        cli.ok(
            "h1",
            &[
                "service",
                "update",
                "--constraint-rm",
                "node.hostname!=h1",
                "web",
            ],
        );
        cli.wait_running("web", 6, |t| t.iter().any(|t| t.node == "h1"));
        wait_stopped_tasks_gone(&cli, "web");
        l.stop_expecting_no_failure("tasks come back onto h1");

        // Scale down from 6 to 2, last.
        let l = loads(&guard, &probe, &probe_ns, vip);
        cli.ok("h1", &["service", "scale", "web=2"]);
        cli.wait_running("web", 2, |_| true);
        wait_stopped_tasks_gone(&cli, "web");
        l.stop_expecting_no_failure("scale 6 -> 2");

        crash.join().expect("crash watch")
    });

    // A crash loop backs off: 1 s, then 2, 4, 8, 16, 32 s between tasks: about 6 in
    // 60 s, where a fixed 1 s delay would make dozens.
    println!(
        "crash loop: tasks seen over 60 s at {:.1?}",
        crash_watch.iter().map(|(t, _)| *t).collect::<Vec<_>>()
    );
    assert!(
        (3..=9).contains(&crash_watch.len()),
        "a crash loop made {} tasks in 60 s: {crash_watch:?}",
        crash_watch.len()
    );
    let gaps: Vec<f64> = crash_watch.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps.last().is_some_and(|g| *g >= 6.0),
        "the restarts do not back off: gaps {gaps:.1?}"
    );

    // A new image whose health check never passes: the update pauses with the reason.
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "sick",
            "--replicas",
            "2",
            "shoal/web:1",
        ],
    );
    cli.ok(
        "h1",
        &[
            "service",
            "update",
            "--detach",
            "--image",
            "shoal/web:2",
            "--health-cmd",
            "false",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            "sick",
        ],
    );
    let paused = wait_update_state(&cli, "sick", "paused");
    println!("unhealthy update: {paused}");
    assert!(
        paused["Message"]
            .as_str()
            .unwrap_or("")
            .contains("update paused"),
        "{paused}"
    );
    let rows = cli.ps("sick").expect("ps");
    assert!(
        !running(&rows).iter().any(|r| r.image.contains("web:2")),
        "an unhealthy task counted as running: {rows:#?}"
    );

    // The same with --update-failure-action rollback: back to the old spec on its own.
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "auto",
            "--replicas",
            "2",
            "shoal/web:1",
        ],
    );
    cli.ok(
        "h1",
        &[
            "service",
            "update",
            "--detach",
            "--image",
            "shoal/web:2",
            "--health-cmd",
            "false",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            "--update-failure-action",
            "rollback",
            "auto",
        ],
    );
    let rolled = wait_update_state(&cli, "auto", "rollback_completed");
    println!("unhealthy update with failure action rollback: {rolled}");
    cli.wait_running("auto", 2, |_| true);
    let rows = cli.ps("auto").expect("ps");
    assert!(
        running(&rows).iter().all(|r| r.image.contains("web:1")),
        "{rows:#?}"
    );

    // Bad input: refused with one line, nothing changes.
    let e = cli.err(
        "h1",
        &["service", "update", "--update-parallelism", "-1", "web"],
    );
    assert!(!e.trim().is_empty(), "{e}");
    let e = cli.err(
        "h1",
        &[
            "service",
            "update",
            "--rollback",
            "--image",
            "shoal/web:2",
            "web",
        ],
    );
    assert!(!e.trim().is_empty(), "{e}");
    let e = cli.err("h1", &["service", "rollback", "probe"]);
    assert!(e.contains("previous"), "{e}");
}
