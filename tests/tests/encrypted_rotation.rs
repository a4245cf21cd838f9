//! WireGuard key rotation on a real 2-host lab, through the `shoal` CLI: a service of two
//! tasks (one per host) on a network made with `--opt encrypted`, and one TCP
//! connection from h1's task to h2's carrying a stream of bytes the whole time.
//!
//! - on demand: `node update --rotate-wireguard-key h1` gives h1 a new key; h1's
//!   device shows it, h2's device shows it for h1 (and neither keeps the old session
//!   once the new one carries the traffic);
//! - on a schedule: h2's agent runs with `--wireguard-key-rotation` of a few tens of
//!   seconds (h1's with 0: on demand only); h2's key changes by itself and h1's device
//!   shows the new one;
//! - across both, the connection never stalls for [`STALL`] and every byte sent
//!   arrives.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use shoal_tests::{
    privileged,
    swarm::{hostnames, in_netns, netns_of, Cli, BOUND},
    tables::read_json,
    wait_for, LabGuard,
};

const SECRET: &str = "10.0.57.";
/// h2's period of scheduled rotation.
const PERIOD_SECS: u64 = 40;
/// How long a rotation may take to reach both devices (registration, the store, the
/// other node's declared state, a handshake), with room for a loaded machine.
const ROTATION_BOUND: Duration = Duration::from_secs(30);
/// The longest the transfer may stall (a write blocked).
const STALL: Duration = Duration::from_secs(10);

fn wg_status(guard: &LabGuard, host: usize) -> Value {
    read_json(&guard.state.hosts[host].run_dir.join("agent/wireguard.json"))
}

fn peer(status: &Value, addr: Ipv4Addr) -> Option<&Value> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["addr"] == addr.to_string())
}

/// Waits until host `i`'s key is not `old`, the other host's device holds the new one
/// for it, and both have left the previous sessions; returns the new key.
fn wait_rotated(guard: &LabGuard, i: usize, old: &str, what: &str, bound: Duration) -> String {
    let hosts = &guard.state.hosts;
    let (me, other) = (i, 1 - i);
    wait_for(what, bound, || {
        let mine = wg_status(guard, me);
        let theirs = wg_status(guard, other);
        let key = mine["public_key"].as_str().unwrap_or_default().to_owned();
        if key.is_empty() || key == old {
            return Err(format!("h{} still has its old key", me + 1));
        }
        let seen = peer(&theirs, hosts[me].address).ok_or("no peer")?;
        if seen["public_key"] != key.as_str() {
            return Err(format!("h{}'s device: {seen}", other + 1));
        }
        let back = peer(&mine, hosts[other].address).ok_or("no peer")?;
        for p in [seen, back] {
            if !p["previous_public_key"].is_null() {
                return Err(format!("a previous session is still kept: {p}"));
            }
        }
        Ok(key)
    })
}

#[test]
fn keys_rotate_on_demand_and_on_schedule_without_losing_a_byte() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('9', 2);
    let cli = Cli { lab: &guard };
    let period = |secs: u64| vec!["--wireguard-key-rotation".to_string(), secs.to_string()];
    cli.start_agent(&shoal, 0, &period(0));
    cli.start_agent(&shoal, 1, &period(PERIOD_SECS));
    cli.form_cluster();
    let (h1, h2) = (&guard.state.hosts[0], &guard.state.hosts[1]);

    cli.ok(
        "h1",
        &[
            "network",
            "create",
            "--opt",
            "encrypted",
            "--subnet",
            &format!("{SECRET}0/24"),
            "secret",
        ],
    );
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "enc",
            "--detach",
            "--replicas",
            "2",
            "--network",
            "secret",
            "shoal/web:1",
        ],
    );
    let mut tasks = cli.wait_running("enc", 2, |t| hostnames(t).len() == 2);
    tasks.sort_by_key(|t| t.node.clone());
    let (e1, e2) = (tasks[0].clone(), tasks[1].clone());
    let e2_ip = cli.address(&e2, SECRET);
    let (e1_pid, e2_pid) = (cli.pid(&e1), cli.pid(&e2));
    wait_for("enc on h1 pings enc on h2", BOUND, || {
        cli.exec_in(&e1, &["ping", "-c", "1", "-W", "2", &e2_ip.to_string()])
    });
    let h2_first = wg_status(&guard, 1)["public_key"]
        .as_str()
        .expect("h2's key")
        .to_owned();

    // One connection carries bytes the whole time.
    let listener =
        in_netns(&netns_of(e2_pid), || TcpListener::bind((e2_ip, 9800))).expect("listen");
    let server = thread::spawn(move || -> Result<u64, String> {
        let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 65536];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n as u64,
                Err(e) => return Err(e.to_string()),
            }
        }
    });
    let mut client = in_netns(&netns_of(e1_pid), || {
        TcpStream::connect_timeout(&(e2_ip, 9800).into(), Duration::from_secs(5))
    })
    .expect("connect across the encrypted network");
    client.set_write_timeout(Some(STALL)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let writer = thread::spawn(move || -> Result<u64, String> {
        let started = Instant::now();
        let chunk = vec![0x42u8; 16384];
        let mut sent = 0u64;
        while !stopping.load(Ordering::Relaxed) {
            client.write_all(&chunk).map_err(|e| {
                format!(
                    "the transfer broke after {:?}, {sent} bytes: {e}",
                    started.elapsed()
                )
            })?;
            sent += chunk.len() as u64;
            thread::sleep(Duration::from_millis(1));
        }
        Ok(sent)
    });
    thread::sleep(Duration::from_secs(2));

    // On demand.
    let h1_old = wg_status(&guard, 0)["public_key"]
        .as_str()
        .expect("h1's key")
        .to_owned();
    let asked = Instant::now();
    cli.ok("h1", &["node", "update", "--rotate-wireguard-key", "h1"]);
    let h1_new = wait_rotated(
        &guard,
        0,
        &h1_old,
        "h1's new key on both devices",
        ROTATION_BOUND,
    );
    println!(
        "on demand: h1 {}.. -> {}.. on both devices, old sessions gone, {:?} after node update",
        &h1_old[..8],
        &h1_new[..8],
        asked.elapsed()
    );
    assert_eq!(wg_status(&guard, 0)["rotations_handled"], 1);
    assert!(
        !writer.is_finished(),
        "the transfer stopped during the on-demand rotation"
    );

    // On schedule: h2's key is replaced once it is PERIOD_SECS old.
    let waited = Instant::now();
    let h2_new = wait_rotated(
        &guard,
        1,
        &h2_first,
        "h2's scheduled new key on both devices",
        Duration::from_secs(PERIOD_SECS) + ROTATION_BOUND + BOUND,
    );
    println!(
        "on schedule: h2 {}.. -> {}.. on both devices after waiting {:?} (period {PERIOD_SECS}s)",
        &h2_first[..8],
        &h2_new[..8],
        waited.elapsed()
    );
    assert_eq!(
        wg_status(&guard, 1)["rotations_handled"],
        0,
        "not asked for"
    );
    assert_eq!(wg_status(&guard, 0)["public_key"], h1_new.as_str());

    // A few seconds more on the new sessions, then every byte must have arrived.
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let sent = writer.join().expect("writer thread").expect("the transfer");
    let received = server.join().expect("server thread").expect("server");
    println!("transfer across both rotations: {sent} bytes sent, {received} received");
    assert_eq!(received, sent, "bytes lost across the rotations");
    for (i, other) in [(0, h2.address), (1, h1.address)] {
        let s = wg_status(&guard, i);
        let p = peer(&s, other).expect("peer");
        println!("h{}: {p}", i + 1);
    }
}
