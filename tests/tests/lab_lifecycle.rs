//! The lab itself: hosts with their own dockerd and hostname, one image ID everywhere,
//! a published container reachable from the client, bad input refused, and `lab down`
//! leaving nothing behind.
use std::{path::Path, time::Duration};

use shoal_tests::{client_http, lab, privileged, wait_for, xtask_command, LabGuard};

#[test]
fn three_hosts_run_containers_and_down_leaves_nothing() {
    if !privileged() {
        return;
    }
    let guard = LabGuard::up('a', 3);
    let mut image_ids = Vec::new();
    let mut engine_ids = Vec::new();
    for h in &guard.state.hosts {
        assert_eq!(
            guard.exec_ok(&h.name, &["hostname"]),
            h.name,
            "UTS namespace of {}",
            h.name
        );
        let container_hostname = guard.exec_ok(
            &h.name,
            &["docker", "run", "--rm", "shoal/web:1", "hostname"],
        );
        assert!(
            !container_hostname.is_empty(),
            "{}: container printed no hostname",
            h.name
        );
        image_ids.push(guard.exec_ok(
            &h.name,
            &["docker", "image", "inspect", "-f", "{{.Id}}", "shoal/web:1"],
        ));
        engine_ids.push(guard.exec_ok(&h.name, &["docker", "info", "--format", "{{.ID}}"]));
    }
    assert!(
        image_ids.windows(2).all(|w| w[0] == w[1]),
        "every host must load one image ID: {image_ids:?}"
    );
    engine_ids.sort();
    engine_ids.dedup();
    assert_eq!(
        engine_ids.len(),
        3,
        "each host's dockerd has its own engine ID"
    );

    // A container published on h2 answers the client namespace across the underlay.
    let h2 = &guard.state.hosts[1];
    guard.exec_ok(&h2.name, &["docker", "network", "create", "pub"]);
    guard.exec_ok(
        &h2.name,
        &[
            "docker",
            "run",
            "-d",
            "--init",
            "--network",
            "pub",
            "-p",
            "8080:80",
            "shoal/web:2",
        ],
    );
    let url = format!("http://{}:8080/", h2.address);
    let body = wait_for(
        "published container answers the client",
        Duration::from_secs(60),
        || client_http(&guard, &url),
    );
    assert!(
        body.starts_with("host=") && body.contains("client=") && body.contains("version=2"),
        "unexpected answer from shoal/web:2: {body:?}"
    );

    // Bad input: a second `up` over a running lab, an unknown host.
    let err = lab::up(&guard.layout, 3).expect_err("second lab up must fail");
    assert!(
        err.to_string().contains("already up"),
        "second up said: {err:#}"
    );
    assert!(
        lab::is_healthy(&guard.state),
        "a refused second up must leave the lab as it was"
    );
    let err = lab::exec_command(&guard.state, "h9", &["true".into()]).expect_err("unknown host");
    assert!(
        err.to_string().contains("unknown lab host"),
        "unknown host said: {err:#}"
    );

    let holders: Vec<u32> = guard.state.hosts.iter().map(|h| h.holder_pid).collect();
    lab::down(&guard.layout).expect("lab down");
    assert_eq!(lab::leftovers(&guard.layout), Vec::<String>::new());
    // Checked again here, independently of `leftovers`.
    for pid in holders {
        assert!(
            !Path::new(&format!("/proc/{pid}/ns")).exists(),
            "holder {pid} still runs"
        );
    }
    let prefix = format!("{}-", guard.layout.prefix);
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !netns.iter().any(|n| n.starts_with(&prefix)),
        "namespaces left: {netns:?}"
    );
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .expect("cgroup root")
        .flatten()
    {
        for h in ["h1", "h2", "h3"] {
            let dir = hierarchy.path().join(format!("{prefix}{h}"));
            assert!(!dir.exists(), "cgroup left: {}", dir.display());
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let run_dir = guard.layout.run_dir();
    assert!(
        !mounts.contains(&*run_dir.to_string_lossy()),
        "mounts left under {}",
        run_dir.display()
    );
    assert!(
        !run_dir.exists() && !guard.layout.data_dir().exists(),
        "lab files left"
    );

    let err = lab::down(&guard.layout).expect_err("down of nothing must fail");
    assert!(
        err.to_string().contains("no lab"),
        "down of nothing said: {err:#}"
    );
}

#[test]
fn command_line_refuses_bad_input_with_one_line() {
    if !privileged() {
        return;
    }
    let prefix = shoal_tests::unique_prefix('b');
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "lab".into(),
                "down".into(),
                "--prefix".into(),
                prefix.clone(),
            ],
            "no lab",
        ),
        (
            vec![
                "lab".into(),
                "status".into(),
                "--prefix".into(),
                prefix.clone(),
            ],
            "no lab",
        ),
        (
            vec![
                "lab".into(),
                "exec".into(),
                "--prefix".into(),
                prefix.clone(),
                "h1".into(),
                "--".into(),
                "true".into(),
            ],
            "no lab",
        ),
        (
            vec![
                "lab".into(),
                "up".into(),
                "--prefix".into(),
                "Bad-Prefix".into(),
            ],
            "bad lab prefix",
        ),
        (
            vec![
                "lab".into(),
                "up".into(),
                "--hosts".into(),
                "0".into(),
                "--prefix".into(),
                prefix.clone(),
            ],
            "--hosts",
        ),
    ];
    for (args, expected) in cases {
        let out = xtask_command().args(&args).output().expect("run xtask");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            stderr.trim().lines().count() == 1 && stderr.contains(expected),
            "{args:?}: expected one line mentioning {expected:?}, got {stderr:?}"
        );
    }
    // Without root: one line, nothing created.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(xtask::util::target_dir().join("debug/xtask"))
        .args(["lab", "up", "--prefix", &prefix])
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "lab up without root must fail");
    assert!(
        stderr.trim().lines().count() == 1 && stderr.contains("needs root"),
        "lab up without root said {stderr:?}"
    );
    let layout = lab::Layout::new(&prefix).expect("prefix");
    assert_eq!(
        lab::leftovers(&layout),
        Vec::<String>::new(),
        "a refused lab up made things"
    );
}

#[test]
fn lab_up_starts_an_agent_that_lab_exec_talks_to() {
    if !privileged() {
        return;
    }
    xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let prefix = shoal_tests::unique_prefix('e');
    let layout = lab::Layout::new(&prefix).expect("prefix");
    let up = xtask_command()
        .args(["lab", "up", "--hosts", "1", "--prefix", &prefix])
        .output()
        .expect("run xtask lab up");
    let result = std::panic::catch_unwind(|| {
        assert!(
            up.status.success(),
            "lab up: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        let exec = |argv: &[&str]| {
            xtask_command()
                .args(["lab", "exec", "--prefix", &prefix, "h1", "--"])
                .args(argv)
                .output()
                .expect("run xtask lab exec")
        };
        // The agent pinned its counters where SHOAL_PIN_DIR points inside h1.
        let stats = exec(&["shoal", "dataplane", "stats", "--json"]);
        assert!(
            stats.status.success(),
            "stats: {}",
            String::from_utf8_lossy(&stats.stderr)
        );
        // The CLI reaches h1's agent through SHOAL_API_SOCKET: not in a swarm yet.
        let ls = exec(&["shoal", "node", "ls"]);
        let err = String::from_utf8_lossy(&ls.stderr);
        assert!(
            !ls.status.success() && !err.contains("cannot reach"),
            "node ls: {err}"
        );
    });
    lab::down(&layout).expect("lab down");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
