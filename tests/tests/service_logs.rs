//! `service logs` from every node, on 3 hosts: a 3-replica service printing a numbered
//! line a second, one task per host. On h1 (the manager) one `service logs` prints the
//! lines of all three tasks, h2's and h3's asked of their nodes over the node port
//! (mutual TLS, a manager's certificate), merged by time, each with Docker's prefix
//! (`NAME.SLOT.TASKID@NODE    | line`); `--tail`, `--since` (RFC 3339 and durations),
//! `-t`, `--no-task-ids`, `--no-trunc` and `--raw` shape the lines as Docker's; a task's
//! ID selects that task alone, wherever it runs; bad values and `--details` are
//! refused. The real docker CLI's `service logs` (through shoal's Engine API) prints the
//! same lines with the same prefixes. `shoal service logs -f` and `docker service logs
//! -f` follow all three tasks' new lines; with h3's agent SIGKILLed both go on with
//! h1's and h2's lines (shoal's warning names h3 and its task), and `service logs`
//! still answers within a bound with h1's and h2's lines and a warning naming h3.
use shoal_tests::{
    docker_cli::{DockerCli, CURRENT},
    lab, privileged,
    swarm::{hostnames, Cli, Task, BOUND},
    wait_for, LabGuard,
};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `... logs -f`: its stdout's lines and its stderr as they come; killed
/// (by its PID) when dropped.
struct Follower {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<String>>,
}

impl Follower {
    fn start(mut command: Command) -> Follower {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a follower");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let e = errors.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut e = e.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        Follower {
            child,
            lines,
            errors,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn errors(&self) -> String {
        self.errors.lock().unwrap().clone()
    }

    /// Still running (a follower never ends on its own).
    fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each task prints `line-1`, `line-2`... one a second.
const TALK: &str = "i=0; while true; do i=$((i+1)); echo line-$i; sleep 1; done";

/// `shoal service logs ARGS...` on h1: whether it succeeded, its stdout and its stderr.
fn logs(guard: &LabGuard, args: &[&str]) -> (bool, String, String) {
    let mut argv = vec!["shoal", "service", "logs"];
    argv.extend_from_slice(args);
    let out = guard.exec("h1", &argv);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `service logs ARGS...` on h1, which must succeed: its stdout's lines and its stderr.
fn logs_ok(guard: &LabGuard, args: &[&str]) -> (Vec<String>, String) {
    let (ok, out, err) = logs(guard, args);
    assert!(ok, "service logs {args:?} failed: {err}{out}");
    (out.lines().map(str::to_string).collect(), err)
}

/// The number `N` of a `line-N` at the end of an output line.
fn number(line: &str) -> u64 {
    line.rsplit("line-")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("not a numbered line: {line:?}"))
}

#[test]
fn service_logs_reads_every_nodes_tasks_as_docker_prints_them() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('l', 3);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();

    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "talk",
            "--replicas",
            "3",
            "--detach",
            "shoal/web:1",
            "sh",
            "-c",
            TALK,
        ],
    );
    let tasks = cli.wait_running("talk", 3, |t| hostnames(t).len() == 3);
    let on = |node: &str| -> Task {
        tasks
            .iter()
            .find(|t| t.node == node)
            .cloned()
            .unwrap_or_else(|| panic!("no task on {node}: {tasks:?}"))
    };
    let hosts = ["h1", "h2", "h3"];
    let prefix_of = |node: &str| -> String {
        let t = on(node);
        format!("{}.{}@{node}    | ", t.name(), t.hostname())
    };
    let (here, there, third) = (on("h1"), on("h2"), on("h3"));
    // A node's lines, in the order they came.
    let of = |lines: &[String], node: &str| -> Vec<String> {
        let p = prefix_of(node);
        lines
            .iter()
            .filter(|l| l.starts_with(&p))
            .cloned()
            .collect()
    };

    // Every node's task, each from line-1 on, in its order, no warning.
    let (lines, warnings) = wait_for("each task logged 4 lines", BOUND, || {
        let (lines, warnings) = logs_ok(&guard, &["talk"]);
        if hosts.iter().all(|h| of(&lines, h).len() >= 4) {
            Ok((lines, warnings))
        } else {
            Err(format!("{lines:?} {warnings}"))
        }
    });
    assert!(warnings.trim().is_empty(), "warnings: {warnings}");
    let per_host: usize = hosts.iter().map(|h| of(&lines, h).len()).sum();
    assert_eq!(per_host, lines.len(), "lines of no task: {lines:#?}");
    for h in hosts {
        let p = prefix_of(h);
        for (i, line) in of(&lines, h).iter().enumerate() {
            assert_eq!(
                line,
                &format!("{p}line-{}", i + 1),
                "{h}'s line {i} of {lines:#?}"
            );
        }
    }

    // --tail: the last N lines of each task.
    let (tail, _) = logs_ok(&guard, &["--tail", "2", "talk"]);
    assert_eq!(tail.len(), 6, "{tail:#?}");
    for h in hosts {
        let mine = of(&tail, h);
        assert_eq!(mine.len(), 2, "{h}: {tail:#?}");
        assert_eq!(number(&mine[1]), number(&mine[0]) + 1, "{tail:#?}");
        assert!(number(&mine[0]) >= 3, "not the last lines: {tail:#?}");
    }
    let (zero, _) = logs_ok(&guard, &["-n", "0", "talk"]);
    assert!(zero.is_empty(), "{zero:#?}");

    // Prefix styles.
    let (short, _) = logs_ok(&guard, &["--no-task-ids", "--tail", "1", "talk"]);
    assert_eq!(short.len(), 3, "{short:#?}");
    for h in hosts {
        let want = format!("{}@{h}    | line-", on(h).name());
        assert!(
            short.iter().any(|l| l.starts_with(&want)),
            "{want}: {short:#?}"
        );
    }
    let (long, _) = logs_ok(&guard, &["--no-trunc", "--tail", "1", "talk"]);
    for h in hosts {
        let want = format!("{}.{}@{h}    | line-", on(h).name(), on(h).id);
        assert!(
            long.iter().any(|l| l.starts_with(&want)),
            "{want}: {long:#?}"
        );
    }
    let (raw, _) = logs_ok(&guard, &["--raw", "--tail", "1", "talk"]);
    assert!(
        raw.len() == 3 && raw.iter().all(|l| l.starts_with("line-")),
        "{raw:#?}"
    );

    // -t: an RFC 3339 timestamp after the prefix, the nodes' lines merged in time order;
    // --since cuts at one of them.
    let (stamped, _) = logs_ok(&guard, &["-t", "talk"]);
    let stamp = |line: &str| -> String {
        let rest = line
            .split_once("    | ")
            .unwrap_or_else(|| panic!("no prefix: {line:?}"))
            .1;
        let (ts, text) = rest.split_once(' ').expect("timestamp then line");
        assert!(
            ts.len() >= 20 && &ts[4..5] == "-" && &ts[10..11] == "T" && ts.ends_with('Z'),
            "not an RFC 3339 timestamp: {line:?}"
        );
        assert!(text.starts_with("line-"), "{line:?}");
        ts.to_string()
    };
    let key = |ts: &str| -> (String, String) {
        let t = ts.trim_end_matches('Z');
        let (s, f) = t.split_once('.').unwrap_or((t, ""));
        (s.to_string(), format!("{f:0<9}"))
    };
    let keys: Vec<_> = stamped.iter().map(|l| key(&stamp(l))).collect();
    assert!(
        keys.windows(2).all(|w| w[0] <= w[1]),
        "lines not in time order: {stamped:#?}"
    );
    let own = of(&stamped, "h1");
    assert!(own.len() >= 4, "{stamped:#?}");
    let k = own.len() - 2;
    let at = stamp(&own[k]);
    let cut = format!("{}Z", &at[..19]);
    let (since, _) = logs_ok(&guard, &["--since", &cut, "talk"]);
    let since = of(&since, "h1");
    let first = since.first().map(|l| number(l)).unwrap_or_default();
    let kth = number(&own[k]);
    assert!(
        first + 1 >= kth && first <= kth,
        "--since {cut} (line-{kth}'s second) began at line-{first}: {since:#?}"
    );
    let (recent, _) = logs_ok(&guard, &["--since", "1h", "talk"]);
    assert!(recent.len() >= stamped.len(), "{recent:#?}");
    let (future, _) = logs_ok(&guard, &["--since", "2099-01-01T00:00:00Z", "talk"]);
    assert!(future.is_empty(), "{future:#?}");

    // A task's ID: that task alone, on this node or another.
    for t in [&here, &there] {
        let (only, warnings) = logs_ok(&guard, &["--tail", "1", &t.id]);
        assert!(
            only.len() == 1 && only[0].starts_with(&prefix_of(&t.node)),
            "{}: {only:#?}",
            t.node
        );
        assert!(warnings.trim().is_empty(), "{warnings}");
    }

    // Refusals.
    for (args, says) in [
        (&["nosuch"][..], "nor is it a task's ID"),
        (&["--tail", "many", "talk"][..], "--tail"),
        (&["--since", "last week", "talk"][..], "--since"),
        (&["--details", "talk"][..], "--details"),
    ] {
        let (ok, out, err) = logs(&guard, args);
        assert!(!ok, "service logs {args:?} should fail: {out}");
        assert!(err.contains(says), "service logs {args:?}: {err}");
    }

    // The docker CLI through the Engine API: the same lines, the same prefixes.
    let docker = DockerCli::on(&guard, 0);
    let out = docker.ok(&["service", "logs", "--tail", "2", "talk"]);
    let docker_lines: Vec<String> = out.lines().map(str::to_string).collect();
    assert_eq!(docker_lines.len(), 6, "{docker_lines:#?}");
    for h in hosts {
        let mine = of(&docker_lines, h);
        assert_eq!(mine.len(), 2, "{h}: {docker_lines:#?}");
        assert_eq!(number(&mine[1]), number(&mine[0]) + 1, "{docker_lines:#?}");
    }
    let raw = docker.ok(&["service", "logs", "--raw", "--tail", "1", &there.id]);
    assert!(
        raw.lines().count() == 1 && raw.starts_with("line-"),
        "docker service logs --raw TASK: {raw}"
    );

    // Following: shoal's CLI and docker's, each from the last line of every task on.
    let shoal_follow = {
        let argv: Vec<String> = ["shoal", "service", "logs", "-f", "--tail", "1", "talk"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Follower::start(lab::exec_command(&guard.state, "h1", &argv).expect("lab exec"))
    };
    let mut followers = [
        ("shoal", shoal_follow),
        (
            "docker",
            Follower::start(
                docker.command(CURRENT, &["service", "logs", "-f", "--tail", "1", "talk"]),
            ),
        ),
    ];
    // The highest line number each host's task has printed in a follower's output.
    let highest = |lines: &[String], h: &str| of(lines, h).iter().map(|l| number(l)).max();
    let mut seen_before_kill = Vec::new();
    for (name, f) in &followers {
        let got = wait_for(
            &format!("{name} -f: 3 new lines of every task"),
            BOUND,
            || {
                let lines = f.lines();
                let progress: Vec<_> = hosts.iter().map(|h| of(&lines, h).len()).collect();
                if progress.iter().all(|&n| n >= 4) {
                    Ok(hosts.map(|h| highest(&lines, h).unwrap()))
                } else {
                    Err(format!("{progress:?}: {lines:#?} {}", f.errors()))
                }
            },
        );
        let lines = f.lines();
        for h in hosts {
            let numbers: Vec<u64> = of(&lines, h).iter().map(|l| number(l)).collect();
            assert!(
                numbers.windows(2).all(|w| w[1] == w[0] + 1),
                "{name} -f: {h}'s lines not consecutive: {numbers:?}"
            );
        }
        seen_before_kill.push(got);
    }

    // h3's agent killed: the others' lines still come, within the node deadline (5 s)
    // and room for a loaded machine, and h3's task is named.
    guard.stop_agent(2, libc::SIGKILL);
    let started = Instant::now();
    let (lines, warnings) = logs_ok(&guard, &["talk"]);
    let took = started.elapsed();
    eprintln!("service logs with h3's agent dead: {took:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(of(&lines, "h1").len() >= 4, "{lines:#?}");
    assert!(of(&lines, "h2").len() >= 4, "{lines:#?}");
    assert!(of(&lines, "h3").is_empty(), "{lines:#?}");
    let named = format!("{}.{}", third.name(), third.hostname());
    assert!(
        warnings.contains("node h3 did not answer") && warnings.contains(&named),
        "no warning naming h3 and {named}: {warnings}"
    );

    // Both followers go on with h1's and h2's new lines; shoal's names h3 at once (its
    // connection broke) or within its idle bound (10 s).
    for ((name, f), before) in followers.iter_mut().zip(&seen_before_kill) {
        wait_for(
            &format!("{name} -f: h1's and h2's lines after h3's agent died"),
            BOUND,
            || {
                let lines = f.lines();
                let (h1, h2) = (
                    highest(&lines, "h1").unwrap(),
                    highest(&lines, "h2").unwrap(),
                );
                if h1 >= before[0] + 3 && h2 >= before[1] + 3 {
                    Ok(())
                } else {
                    Err(format!(
                        "h1 at line-{h1}, h2 at line-{h2} (before: {before:?}); {}",
                        f.errors()
                    ))
                }
            },
        );
        assert!(f.running(), "{name} -f ended: {}", f.errors());
    }
    let shoal_errors = followers[0].1.errors();
    assert!(
        shoal_errors.contains("node h3 stopped answering") && shoal_errors.contains(&named),
        "shoal -f did not name h3 and {named}: {shoal_errors}"
    );
}
