//! `shoal_orchestrator::docker` against a real dockerd 20.10: the dockerd of a one-host lab
//! (its own network, mount and UTS namespaces, as every lab host), brought up by the
//! test under a unique prefix and taken down on drop.
//!
//! Needs root; without it the tests say so and pass, unless SHOAL_REQUIRE_ROOT=1,
//! where they fail.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use shoal_orchestrator::docker::{
    ContainerAction, ContainerEvent, ContainerNetns, DockerClient, DockerError, WatchUpdate,
};
use xtask::lab::{self, procs, HostState, LabState, Layout};

/// Longest wait for anything dockerd does (events, restarts); generous for a noisy
/// machine.
const LIMIT: Duration = Duration::from_secs(30);

fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("SHOAL_REQUIRE_ROOT").as_deref() != Ok("1"),
        "docker tests need root and SHOAL_REQUIRE_ROOT=1 forbids skipping them"
    );
    eprintln!("skipped: docker tests need root (they start a lab with its own dockerd)");
    false
}

/// A one-host lab, taken down on drop (as `shoal-tests`' LabGuard).
struct Lab {
    layout: Layout,
    state: LabState,
}

impl Lab {
    fn up(tag: char) -> Self {
        let prefix = format!("t{tag}{}", std::process::id() % 1_000_000);
        let layout = Layout::new(&prefix).expect("test prefix is valid");
        let state = lab::up(&layout, 1).expect("lab up");
        Self { layout, state }
    }

    fn host(&self) -> &HostState {
        &self.state.hosts[0]
    }

    fn socket(&self) -> PathBuf {
        let h = &self.host().docker_host;
        PathBuf::from(h.strip_prefix("unix://").unwrap_or(h))
    }

    /// `docker <args>` against the host's dockerd; its stdout, or a panic with stderr.
    fn docker(&self, args: &[&str]) -> String {
        let out = Command::new("docker")
            .arg("-H")
            .arg(&self.host().docker_host)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker");
        assert!(
            out.status.success(),
            "`docker {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts `--init --network none` container `name` from the lab image; its full ID.
    fn run(&self, name: &str) -> String {
        self.docker(&[
            "run",
            "-d",
            "--init",
            "--network",
            "none",
            "--name",
            name,
            "shoal/web:1",
        ])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !lab::leftovers(&self.layout).is_empty() {
            if let Err(e) = lab::down(&self.layout) {
                eprintln!("taking down test lab {}: {e:#}", self.layout.prefix);
            }
        }
    }
}

/// The inode of a process's network namespace, read by `stat` (not by the code under
/// test).
fn stat_netns_inode(pid: u32) -> u64 {
    let out = Command::new("stat")
        .args(["-L", "-c", "%i"])
        .arg(format!("/proc/{pid}/ns/net"))
        .output()
        .expect("run stat");
    assert!(out.status.success(), "stat of pid {pid}'s netns failed");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("stat prints an inode number")
}

/// Reads events until one matches `want`, for at most `limit`; panics with what it saw.
async fn wait_event<S>(
    events: &mut S,
    what: &str,
    mut want: impl FnMut(&ContainerEvent) -> bool,
) -> ContainerEvent
where
    S: Stream<Item = Result<ContainerEvent, DockerError>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => panic!("{what}: no such event within {LIMIT:?}; saw {seen:?}"),
            Ok(None) => panic!("{what}: the event stream ended; saw {seen:?}"),
            Ok(Some(Err(e))) => panic!("{what}: the event stream failed: {e}; saw {seen:?}"),
            Ok(Some(Ok(ev))) if want(&ev) => return ev,
            Ok(Some(Ok(ev))) => seen.push(ev),
        }
    }
}

/// Reads updates until one matches `want`, for at most `limit`; panics with what it saw.
async fn wait_update<S>(
    updates: &mut S,
    what: &str,
    limit: Duration,
    mut want: impl FnMut(&WatchUpdate) -> bool,
) -> WatchUpdate
where
    S: Stream<Item = WatchUpdate> + Unpin,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, updates.next()).await {
            Err(_) => panic!("{what}: not within {limit:?}; saw {seen:?}"),
            Ok(None) => panic!("{what}: the watcher ended; saw {seen:?}"),
            Ok(Some(u)) if want(&u) => return u,
            Ok(Some(u)) => seen.push(format!("{u:?}")),
        }
    }
}

fn is(id: &str, action: ContainerAction) -> impl Fn(&ContainerEvent) -> bool + '_ {
    move |ev| ev.id == id && ev.action == action
}

async fn running(client: &DockerClient, reference: &str) -> ContainerNetns {
    client
        .container_netns(reference)
        .await
        .unwrap_or_else(|e| panic!("container_netns({reference}): {e}"))
        .unwrap_or_else(|| panic!("container_netns({reference}): None for a running container"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_netns_and_watches_lifecycle() {
    if !privileged() {
        return;
    }
    let lab = Lab::up('d');
    let client = DockerClient::connect(&lab.socket())
        .await
        .expect("connect to the lab's dockerd");

    let version = client.engine_version().await.expect("engine version");
    assert!(version.starts_with("20.10."), "engine version {version:?}");

    let mut events = client.watch();

    // A running container, by name, by ID prefix and by full ID.
    let id = lab.run("web1");
    assert_eq!(id.len(), 64, "docker run printed {id:?}");
    wait_event(
        &mut events,
        "start of web1",
        is(&id, ContainerAction::Start),
    )
    .await;
    let by_name = running(&client, "web1").await;
    assert_eq!(by_name.id, id);
    assert_eq!(by_name.name, "web1");
    assert!(by_name.pid > 0);
    assert_eq!(
        by_name.netns_path,
        Path::new(&format!("/proc/{}/ns/net", by_name.pid))
    );
    assert_eq!(by_name.netns_inode, stat_netns_inode(by_name.pid));
    assert_eq!(
        by_name.pid.to_string(),
        lab.docker(&["inspect", "-f", "{{.State.Pid}}", "web1"])
    );
    // The container's namespace is not the test's.
    assert_ne!(
        by_name.netns_inode,
        fs::metadata("/proc/self/ns/net").unwrap().ino()
    );
    let file = by_name.open().expect("open web1's namespace");
    assert_eq!(file.metadata().unwrap().ino(), by_name.netns_inode);
    drop(file);
    assert_eq!(running(&client, &id[..12]).await, by_name);
    assert_eq!(running(&client, &id).await, by_name);
    assert_eq!(running(&client, "/web1").await, by_name);

    // Unknown names and IDs are None, not errors; malformed references are errors.
    assert_eq!(
        client.container_netns("no-such-container").await.unwrap(),
        None
    );
    assert_eq!(client.container_netns(&"0".repeat(64)).await.unwrap(), None);
    assert!(matches!(
        client.container_netns("../images/json").await,
        Err(DockerError::BadReference { .. })
    ));

    // Stopped: `die`, then None.
    lab.docker(&["stop", "web1"]);
    wait_event(&mut events, "die of web1", is(&id, ContainerAction::Die)).await;
    assert_eq!(client.container_netns("web1").await.unwrap(), None);
    assert_eq!(client.container_netns(&id).await.unwrap(), None);

    // Started again, then restarted: a `start` each time, and a new process and
    // namespace after the restart.
    lab.docker(&["start", "web1"]);
    let ev = wait_event(
        &mut events,
        "start of web1 again",
        is(&id, ContainerAction::Start),
    )
    .await;
    assert_eq!(ev.name, "web1");
    let before = running(&client, "web1").await;
    assert_eq!(before.netns_inode, stat_netns_inode(before.pid));
    // Held open, the old namespace lives on, so the new one cannot get its inode.
    let held = before.open().expect("open web1's namespace");
    lab.docker(&["restart", "web1"]);
    wait_event(
        &mut events,
        "die of web1 in restart",
        is(&id, ContainerAction::Die),
    )
    .await;
    wait_event(
        &mut events,
        "start of web1 after restart",
        is(&id, ContainerAction::Start),
    )
    .await;
    let after = running(&client, "web1").await;
    assert_ne!(after.pid, before.pid, "restart kept the process");
    assert_ne!(
        after.netns_inode, before.netns_inode,
        "restart kept the network namespace"
    );
    assert_ne!(after.netns_id, before.netns_id);
    assert_eq!(after.netns_inode, stat_netns_inode(after.pid));
    assert_eq!(held.metadata().unwrap().ino(), before.netns_inode);
    assert!(
        matches!(before.open(), Err(DockerError::NetnsGone { .. })),
        "the old namespace still opens through the old pid"
    );
    drop(held);
    wait_event(
        &mut events,
        "restart of web1",
        is(&id, ContainerAction::Restart),
    )
    .await;

    // Restarted with nothing holding the old namespace: the kernel may reuse its inode
    // number (it often does), but the process and the namespace ID are new.
    lab.docker(&["restart", "web1"]);
    wait_event(
        &mut events,
        "start of web1 after a second restart",
        is(&id, ContainerAction::Start),
    )
    .await;
    let again = running(&client, "web1").await;
    assert_ne!(again.pid, after.pid);
    assert_eq!(again.netns_inode, stat_netns_inode(again.pid));
    // On this kernel (NS_GET_ID) the identity is the never-reused ID.
    assert_ne!(
        again.netns_id, after.netns_id,
        "a restarted container's namespace identity must be new"
    );
    eprintln!(
        "second restart: netns inode {} -> {} (id {:?} -> {:?})",
        after.netns_inode, again.netns_inode, after.netns_id, again.netns_id
    );
    wait_event(
        &mut events,
        "restart of web1",
        is(&id, ContainerAction::Restart),
    )
    .await;

    // A second container's events carry its own ID and name; removal is `destroy`.
    let id2 = lab.run("web2");
    let ev = wait_event(
        &mut events,
        "start of web2",
        is(&id2, ContainerAction::Start),
    )
    .await;
    assert_eq!(ev.name, "web2");
    lab.docker(&["rm", "-f", "web2"]);
    wait_event(&mut events, "die of web2", is(&id2, ContainerAction::Die)).await;
    wait_event(
        &mut events,
        "destroy of web2",
        is(&id2, ContainerAction::Destroy),
    )
    .await;
    assert_eq!(client.container_netns(&id2).await.unwrap(), None);
}

/// Starts the host's dockerd again after it was stopped, exactly as `lab up` starts it,
/// and records its PID where `lab down` looks.
fn restart_dockerd(layout: &Layout, host: &HostState) {
    lab::start_dockerd(layout, &host.name, host.holder_pid).expect("start dockerd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_dockerd_going_away() {
    if !privileged() {
        return;
    }
    let lab = Lab::up('r');
    let client = DockerClient::connect(&lab.socket())
        .await
        .expect("connect to the lab's dockerd");
    let mut plain = client.watch();
    let mut updates = client.watch_reconnecting(Duration::from_millis(300));
    wait_update(&mut updates, "first subscription", LIMIT, |u| {
        matches!(u, WatchUpdate::Subscribed)
    })
    .await;

    let id = lab.run("web1");
    wait_event(&mut plain, "start of web1", is(&id, ContainerAction::Start)).await;
    wait_update(&mut updates, "start of web1 (reconnecting)", LIMIT, |u| {
        matches!(u, WatchUpdate::Event(ev) if ev.id == id && ev.action == ContainerAction::Start)
    })
    .await;

    // dockerd stops (it stops its containers): the plain stream ends with an error, the
    // reconnecting one says it lost the subscription.
    let dockerd = lab.host().dockerd_pid;
    procs::signal(dockerd, libc::SIGTERM);
    let start = Instant::now();
    while procs::alive(dockerd) {
        assert!(
            start.elapsed() < 2 * LIMIT,
            "dockerd {dockerd} did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `lab up` started it from this process: reap it (no zombie left behind).
    // SAFETY: waitpid on our own child's PID, no pointers but a null status.
    unsafe { libc::waitpid(dockerd as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, plain.next()).await {
            Err(_) => {
                panic!("plain watch: no end within {LIMIT:?} of dockerd stopping; saw {seen:?}")
            }
            Ok(None) => panic!("plain watch ended without an error; saw {seen:?}"),
            Ok(Some(Ok(ev))) => seen.push(ev),
            Ok(Some(Err(e))) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&lab.socket().display().to_string()),
                    "error does not name the socket: {msg}"
                );
                assert!(!msg.contains('\n'), "error is not one line: {msg}");
                eprintln!("plain watch ended with: {msg}");
                break;
            }
        }
    }
    assert!(
        plain.next().await.is_none(),
        "plain watch went on after its error"
    );
    let lost = wait_update(&mut updates, "lost subscription", LIMIT, |u| {
        matches!(u, WatchUpdate::Lost(_))
    })
    .await;
    eprintln!("reconnecting watch: {lost:?}");
    // While dockerd is down, requests fail with errors naming the socket.
    let err = client.engine_version().await.expect_err("dockerd is down");
    assert!(matches!(err, DockerError::Api { .. }), "{err:?}");
    eprintln!("while dockerd is down: {err}");

    // dockerd comes back on the same socket: the watcher subscribes again by itself and
    // sees the container start.
    restart_dockerd(&lab.layout, lab.host());
    wait_update(&mut updates, "resubscription", 2 * LIMIT, |u| {
        matches!(u, WatchUpdate::Subscribed)
    })
    .await;
    assert!(client.engine_version().await.unwrap().starts_with("20.10."));
    assert_eq!(client.container_netns("web1").await.unwrap(), None);
    lab.docker(&["start", "web1"]);
    wait_update(&mut updates, "start of web1 after dockerd came back", LIMIT, |u| {
        matches!(u, WatchUpdate::Event(ev) if ev.id == id && ev.action == ContainerAction::Start)
    })
    .await;
    let ns = running(&client, "web1").await;
    assert_eq!(ns.netns_inode, stat_netns_inode(ns.pid));
    // A fresh plain watch works again too.
    let mut plain = client.watch();
    lab.docker(&["stop", "web1"]);
    wait_event(
        &mut plain,
        "die of web1 after dockerd came back",
        is(&id, ContainerAction::Die),
    )
    .await;
}
