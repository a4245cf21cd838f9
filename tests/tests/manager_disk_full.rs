//! A manager whose disk fills up: its Raft store stops on the failed write, the agent
//! stops the manager role and says why (`shoal info`: `Swarm: error` and the storage
//! error; the cluster's requests refused with it), and once there is room again it
//! starts the role from its directory with no operator action: the services and tasks
//! it had are all there, and writes work again. 2 hosts (h1 the one manager, h2 a
//! worker); h1's Raft directory is a small tmpfs the test mounts in h1's own mount
//! namespace (it goes with the lab), filled with a file the test removes.
use std::path::Path;
use std::time::{Duration, Instant};

use shoal_tests::{
    privileged,
    swarm::{Cli, BOUND},
    wait_for, LabGuard,
};

/// The tmpfs's size: 64 blocks of 64 KiB. The filler never writes more than that, so
/// even a tmpfs that is not there could not fill another disk.
const TMPFS_BLOCKS: u32 = 64;

/// Mounts a small tmpfs on `dir` inside h1's own mount namespace (the agent's; it goes
/// with the lab, mount and all).
fn mount_tmpfs(guard: &LabGuard, dir: &Path) {
    let dir = dir.display().to_string();
    guard.exec_ok("h1", &["mkdir", "-p", &dir]);
    let size = format!("size={}k,mode=0700", TMPFS_BLOCKS * 64);
    guard.exec_ok("h1", &["mount", "-t", "tmpfs", "-o", &size, "tmpfs", &dir]);
}

/// Fills h1's tmpfs holding `file` (ENOSPC at the end), after checking it is that tmpfs.
fn fill(guard: &LabGuard, file: &Path) {
    let dir = file.parent().expect("a directory").display().to_string();
    let kind = guard.exec_ok("h1", &["stat", "-f", "-c", "%T %b %S", &dir]);
    let parts: Vec<&str> = kind.split_whitespace().collect();
    let bytes: u64 =
        parts[1].parse::<u64>().unwrap_or(u64::MAX) * parts[2].parse::<u64>().unwrap_or(1);
    assert!(
        parts[0] == "tmpfs" && bytes <= u64::from(TMPFS_BLOCKS) * 64 * 1024,
        "{dir} is not the small tmpfs: {kind}"
    );
    let out = guard.exec(
        "h1",
        &[
            "dd",
            "if=/dev/zero",
            &format!("of={}", file.display()),
            "bs=64k",
            &format!("count={TMPFS_BLOCKS}"),
        ],
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("No space left"), "dd did not fill it: {said}");
}

#[test]
fn a_manager_whose_disk_filled_starts_again_once_there_is_room() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('7', 2);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    // The Raft directory, before `swarm init` makes it: 4 MiB of tmpfs.
    let raft = guard.state.hosts[0].run_dir.join("agent/cluster/raft");
    mount_tmpfs(&guard, &raft);
    cli.form_cluster();
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "2",
            "shoal/web:1",
        ],
    );
    let before = cli.wait_running("web", 2, |_| true);

    // The disk fills; the next write fails and stops the store.
    let filler = raft.join("filler");
    fill(&guard, &filler);
    let e = cli.err("h1", &["service", "scale", "web=3"]);
    println!("scale on a full disk: {e}");
    // The store's own words reach the user, not wrapped as a protocol error.
    assert!(
        e.contains("No space left on device") && !e.contains("protocol error"),
        "{e}"
    );
    let stopped = Instant::now();
    let info = wait_for("h1's info saying its store stopped", BOUND, || {
        let info = cli.run("h1", &["info"])?;
        if info.contains("Swarm: error") && info.contains("Raft store stopped") {
            Ok(info)
        } else {
            Err(info)
        }
    });
    assert!(info.contains("No space left on device"), "{info}");
    let refused = cli.err("h1", &["service", "ls"]);
    assert!(refused.contains("Raft store stopped"), "{refused}");
    // The worker's tasks go on meanwhile.
    let on_h2: Vec<_> = before.iter().filter(|t| t.node == "h2").collect();
    for t in &on_h2 {
        let out = guard.exec_ok(
            "h2",
            &[
                "docker",
                "inspect",
                "-f",
                "{{.State.Running}}",
                &t.container,
            ],
        );
        assert_eq!(out.trim(), "true", "{} on h2", t.container);
    }

    // Room again: the role starts on its own, with everything it had.
    guard.exec_ok("h1", &["rm", &filler.display().to_string()]);
    let freed = Instant::now();
    // The next try comes within the backoff, which doubles from 1 s to 30 s at most
    // while starting fails: 45 s is that and a slow start.
    wait_for("h1 a manager again", Duration::from_secs(45), || {
        let info = cli.run("h1", &["info"])?;
        if info.contains("Swarm: active") && info.contains("Is Manager: true") {
            Ok(())
        } else {
            Err(info)
        }
    });
    println!(
        "store stopped for {:.1} s; the role started again {:.1} s after the disk got room",
        stopped.elapsed().as_secs_f64(),
        freed.elapsed().as_secs_f64()
    );
    let after = cli.wait_running("web", 2, |_| true);
    let ids = |ts: &[shoal_tests::swarm::Task]| {
        let mut v: Vec<String> = ts.iter().map(|t| t.container.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(
        ids(&before),
        ids(&after),
        "the tasks kept running through it"
    );
    wait_for("scale to 3 after the restart", BOUND, || {
        cli.run("h1", &["service", "scale", "web=3"]).map(drop)
    });
    cli.wait_running("web", 3, |_| true);
    let ls = cli.ok("h1", &["node", "ls"]);
    assert_eq!(ls.matches("Ready").count(), 2, "{ls}");
}
