//! `service logs` on a node, on 2 hosts: a 2-replica service printing a numbered line a
//! second, one task per host. On h1 (the manager) `service logs` prints h1's task's lines
//! with Docker's prefix (`NAME.SLOT.TASKID@NODE    | line`) and a warning naming the
//! task on h2 (whose log stays on h2); `--tail`, `--since` (RFC 3339 and durations),
//! `-t`, `--no-task-ids`, `--no-trunc` and `--raw` shape the lines as Docker's; a task's
//! ID selects that task alone; bad values, `-f` and `--details` are refused.
use shoal_tests::{
    privileged,
    swarm::{hostnames, Cli, Task, BOUND},
    wait_for, LabGuard,
};

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
fn service_logs_reads_this_nodes_tasks_as_docker_prints_them() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('l', 2);
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
            "2",
            "--detach",
            "shoal/web:1",
            "sh",
            "-c",
            TALK,
        ],
    );
    let tasks = cli.wait_running("talk", 2, |t| hostnames(t).len() == 2);
    let on = |node: &str| -> Task {
        tasks
            .iter()
            .find(|t| t.node == node)
            .cloned()
            .unwrap_or_else(|| panic!("no task on {node}: {tasks:?}"))
    };
    let (here, there) = (on("h1"), on("h2"));
    let prefix = format!("{}.{}@h1    | ", here.name(), here.hostname());

    // Lines of h1's task only, prefixed as Docker's; h2's task named in a warning.
    let (lines, warnings) = wait_for("h1's task logged 6 lines", BOUND, || {
        let (lines, warnings) = logs_ok(&guard, &["talk"]);
        if lines.len() >= 6 {
            Ok((lines, warnings))
        } else {
            Err(format!("{lines:?} {warnings}"))
        }
    });
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(
            line,
            &format!("{prefix}line-{}", i + 1),
            "line {i} of {lines:#?}"
        );
    }
    assert!(
        warnings.contains("1 task(s) of talk run on h2"),
        "no warning naming h2's task: {warnings}"
    );

    // --tail: the last N lines.
    let (tail, _) = logs_ok(&guard, &["--tail", "2", "talk"]);
    assert_eq!(tail.len(), 2, "{tail:#?}");
    assert_eq!(number(&tail[1]), number(&tail[0]) + 1, "{tail:#?}");
    assert!(number(&tail[0]) >= 5, "not the last lines: {tail:#?}");
    let (zero, _) = logs_ok(&guard, &["-n", "0", "talk"]);
    assert!(zero.is_empty(), "{zero:#?}");

    // Prefix styles.
    let (short, _) = logs_ok(&guard, &["--no-task-ids", "--tail", "1", "talk"]);
    let want = format!("{}@h1    | line-", here.name());
    assert!(
        short.len() == 1 && short[0].starts_with(&want),
        "{short:#?}"
    );
    let (long, _) = logs_ok(&guard, &["--no-trunc", "--tail", "1", "talk"]);
    let want = format!("{}.{}@h1    | line-", here.name(), here.id);
    assert!(long.len() == 1 && long[0].starts_with(&want), "{long:#?}");
    let (raw, _) = logs_ok(&guard, &["--raw", "--tail", "1", "talk"]);
    assert!(raw.len() == 1 && raw[0].starts_with("line-"), "{raw:#?}");

    // -t: an RFC 3339 timestamp after the prefix; --since cuts at one of them.
    let (stamped, _) = logs_ok(&guard, &["-t", "talk"]);
    assert!(stamped.len() >= 6, "{stamped:#?}");
    let stamp = |line: &str| -> String {
        let rest = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("no prefix: {line:?}"));
        let (ts, text) = rest.split_once(' ').expect("timestamp then line");
        assert!(
            ts.len() >= 20 && &ts[4..5] == "-" && &ts[10..11] == "T" && ts.ends_with('Z'),
            "not an RFC 3339 timestamp: {line:?}"
        );
        assert!(text.starts_with("line-"), "{line:?}");
        ts.to_string()
    };
    let k = stamped.len() - 2;
    let at = stamp(&stamped[k]);
    let cut = format!("{}Z", &at[..19]);
    let (since, _) = logs_ok(&guard, &["--since", &cut, "talk"]);
    let first = since.first().map(|l| number(l)).unwrap_or_default();
    let kth = number(&stamped[k]);
    assert!(
        first + 1 >= kth && first <= kth,
        "--since {cut} (line-{kth}'s second) began at line-{first}: {since:#?}"
    );
    let (recent, _) = logs_ok(&guard, &["--since", "1h", "talk"]);
    assert!(recent.len() >= stamped.len(), "{recent:#?}");
    let (future, _) = logs_ok(&guard, &["--since", "2099-01-01T00:00:00Z", "talk"]);
    assert!(future.is_empty(), "{future:#?}");

    // A task's ID: that task alone.
    let (own, warnings) = logs_ok(&guard, &["--tail", "1", &here.id]);
    assert!(own.len() == 1 && own[0].starts_with(&prefix), "{own:#?}");
    assert!(!warnings.contains("run on"), "{warnings}");
    let (none, warnings) = logs_ok(&guard, &[&there.id]);
    assert!(none.is_empty(), "{none:#?}");
    assert!(warnings.contains("run on h2"), "{warnings}");

    // Refusals.
    for (args, says) in [
        (&["nosuch"][..], "nor is it a task's ID"),
        (&["--tail", "many", "talk"][..], "--tail"),
        (&["--since", "last week", "talk"][..], "--since"),
        (&["-f", "talk"][..], "--follow"),
        (&["--details", "talk"][..], "--details"),
    ] {
        let (ok, out, err) = logs(&guard, args);
        assert!(!ok, "service logs {args:?} should fail: {out}");
        assert!(err.contains(says), "service logs {args:?}: {err}");
    }
}
