//! Secrets at rest on a 2-host lab of real agents, through the `shoal` CLI: a swarm made
//! with `--autolock` (h1 manager, h2 worker) and a service whose environment holds a
//! secret. Every directory under both agents' data directories is 0700 and every file
//! 0600 (the lab makes the data directory 0755 before the first start: the agent narrows
//! it), and no file holds a join token, the unlock key, the service's secret value or a
//! manager's private key in the clear. h1's agent restarted: every command answers that
//! the swarm is locked; `swarm unlock` with a wrong key (on stdin) is refused and the
//! swarm stays locked; with the right key the manager serves again and the service
//! still runs. `swarm unlock-key --rotate`, another restart: the old key is refused,
//! the new one unlocks.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use shoal_tests::{
    privileged,
    swarm::{Cli, BOUND},
    wait_for, LabGuard,
};

const LOCKED: &str = "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"shoal swarm unlock\" to unlock it.";
const SECRET_VALUE: &str = "topsecretvalue";

/// Every file under `dir` with its bytes; panics on a directory that is not 0700 or a
/// file that is not 0600.
fn owner_only_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mode = std::fs::symlink_metadata(dir).expect("stat").mode() & 0o7777;
    assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            out.extend(owner_only_files(&path));
        } else {
            let mode = meta.mode() & 0o7777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
            // A file may go between the listing and the read (status files are replaced).
            if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

fn holds(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The `SWMKEY-1-...` line of a command's output.
fn unlock_key_in(out: &str) -> String {
    out.lines()
        .map(str::trim)
        .find(|l| l.starts_with("SWMKEY-1-"))
        .unwrap_or_else(|| panic!("no unlock key in: {out}"))
        .to_owned()
}

#[test]
fn secrets_are_sealed_at_rest_and_an_autolocked_manager_waits_for_its_key() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('k', 2);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    let h1_addr = guard.state.hosts[0].address.to_string();
    let init = cli.ok(
        "h1",
        &["swarm", "init", "--autolock", "--advertise-addr", &h1_addr],
    );
    let key = unlock_key_in(&init);
    assert!(init.contains("run the `shoal swarm unlock`"), "{init}");
    let worker_token = cli
        .ok("h1", &["swarm", "join-token", "-q", "worker"])
        .trim()
        .to_owned();
    let manager_token = cli
        .ok("h1", &["swarm", "join-token", "-q", "manager"])
        .trim()
        .to_owned();
    cli.ok(
        "h2",
        &[
            "swarm",
            "join",
            "--token",
            &worker_token,
            &format!("{h1_addr}:2377"),
        ],
    );
    let env = format!("SECRET_ENV={SECRET_VALUE}");
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "vault",
            "--detach",
            "--mode",
            "global",
            "--env",
            &env,
            "shoal/web:1",
        ],
    );
    cli.wait_ps("vault", "a running vault task on each host", |rows| {
        rows.iter().filter(|r| r.running()).count() == 2
    });
    // The task really has it (so the test would see a leak of it).
    let task = cli.running("vault").expect("vault tasks")[0].clone();
    let seen = guard
        .docker_exec(
            &task.node,
            &task.container,
            &["sh", "-c", "echo $SECRET_ENV"],
        )
        .expect("docker exec");
    assert_eq!(seen, SECRET_VALUE);

    let secrets = [
        ("the worker join token", worker_token.as_str()),
        ("the manager join token", manager_token.as_str()),
        ("the unlock key", key.trim_start_matches("SWMKEY-1-")),
        ("the service's secret env value", SECRET_VALUE),
    ];
    for host in &guard.state.hosts {
        let data_dir = host.run_dir.join("agent");
        let files = owner_only_files(&data_dir);
        assert!(
            files.iter().any(|(p, _)| p.ends_with("agent.json")),
            "{}: {files:?}",
            host.name
        );
        eprintln!(
            "{}: {} files under {}, all 0600 in 0700 directories",
            host.name,
            files.len(),
            data_dir.display()
        );
        for (path, bytes) in &files {
            for (what, secret) in secrets {
                assert!(
                    !holds(bytes, secret),
                    "{} holds {what} in the clear",
                    path.display()
                );
            }
            let workers_own_key = host.name == "h2" && path.ends_with("cluster/identity.json");
            assert!(
                workers_own_key || !holds(bytes, "PRIVATE KEY"),
                "{} holds a private key in the clear",
                path.display()
            );
        }
    }

    // Restarted: locked, and says so to every command.
    guard.stop_agent(0, libc::SIGTERM);
    cli.start_agent(&shoal, 0, &[]);
    for args in [
        &["node", "ls"][..],
        &["service", "ls"],
        &["swarm", "join-token", "worker"],
        &["swarm", "unlock-key"],
    ] {
        let e = cli.err("h1", args);
        assert!(e.contains(LOCKED), "{args:?}: {e}");
    }
    let info = cli.ok("h1", &["info"]);
    assert!(info.starts_with("Swarm: locked\n"), "{info}");
    // A wrong key, on stdin as docker takes it: refused, still locked.
    let wrong = "SWMKEY-1-WuYH/IX284+lRcXuoVf38viIDK3HJEKY13MIHX+tTt8";
    let e = guard
        .shoal_with_input("h1", &["swarm", "unlock"], &format!("{wrong}\n"))
        .expect_err("a wrong key must not unlock");
    assert!(e.contains("invalid key provided"), "{e}");
    assert!(cli.err("h1", &["node", "ls"]).contains(LOCKED));
    // The right key: the manager serves again, the service is still there.
    guard
        .shoal_with_input("h1", &["swarm", "unlock"], &format!("{key}\n"))
        .expect("the right key unlocks");
    wait_for("h1 serves node ls with both nodes Ready", BOUND, || {
        let rows = cli.run("h1", &["node", "ls"])?;
        if rows.matches("Ready").count() == 2 {
            Ok(())
        } else {
            Err(rows)
        }
    });
    cli.wait_ps(
        "vault",
        "the vault tasks running after the unlock",
        |rows| rows.iter().filter(|r| r.running()).count() == 2,
    );

    // Rotation: after the next restart only the new key unlocks.
    let rotated = cli.ok("h1", &["swarm", "unlock-key", "--rotate"]);
    assert!(
        rotated.starts_with("Successfully rotated manager unlock key."),
        "{rotated}"
    );
    let new_key = unlock_key_in(&rotated);
    assert_ne!(new_key, key);
    assert_eq!(cli.ok("h1", &["swarm", "unlock-key", "-q"]).trim(), new_key);
    guard.stop_agent(0, libc::SIGTERM);
    cli.start_agent(&shoal, 0, &[]);
    let e = guard
        .shoal_with_input("h1", &["swarm", "unlock"], &format!("{key}\n"))
        .expect_err("the rotated-out key must not unlock");
    assert!(e.contains("invalid key provided"), "{e}");
    guard
        .shoal_with_input("h1", &["swarm", "unlock"], &format!("{new_key}\n"))
        .expect("the new key unlocks");
    wait_for("h1 serves again after the second unlock", BOUND, || {
        let rows = cli.run("h1", &["node", "ls"])?;
        if rows.matches("Ready").count() == 2 {
            Ok(())
        } else {
            Err(rows)
        }
    });

    shoal_tests::lab::down(&guard.layout).expect("lab down");
    assert_eq!(
        shoal_tests::lab::leftovers(&guard.layout),
        Vec::<String>::new()
    );
}
