//! Encrypted overlay networks on a real 2-host lab, through the `shoal` CLI: network
//! `secret` made with `--opt encrypted`, network `plain` without, a service of two
//! tasks (one per host) on each.
//!
//! - `network inspect` shows `encrypted` under Options;
//! - the tasks of `secret` on the two hosts talk: ping, TCP (HTTP) and UDP, each node's
//!   `wireguard.json` showing a session with the other (a handshake, bytes both ways);
//! - a capture on h1's underlay during UDP transfers with a payload marker on both
//!   networks shows `plain`'s marker and VXLAN, and for `secret` neither its marker nor
//!   any VXLAN datagram of its VNI: only WireGuard datagrams on the WireGuard port;
//! - containers' interfaces on `secret` have the underlay's MTU less 110 (VXLAN 50,
//!   WireGuard 60), and a datagram that fills that MTU crosses whole;
//! - the routing mesh (a published port) and the service's VIP on `secret` reach both
//!   tasks;
//! - datagrams to the WireGuard port from outside the cluster are dropped and counted
//!   as foreign, garbage from a member as garbage;
//! - a TCP transfer runs across WireGuard's own session rekeying (every two minutes):
//!   never stalled for 10 s, every byte delivered, handshakes counted on both nodes;
//! - h2 removed (`node rm --force`, its agent still running): h1 drops its key within a
//!   few seconds, h2's task can no longer reach `secret`, and what h2 still sends is
//!   counted as foreign.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use shoal_tests::{
    client_http, privileged,
    swarm::{answered_by, hostnames, in_netns, netns_of, Cli, Task, BOUND},
    tables::read_json,
    wait_for, LabGuard,
};

const SECRET: &str = "10.0.55.";
const PLAIN: &str = "10.0.56.";
const SECRET_MARKER: &[u8] = b"SHOAL-SECRET-PAYLOAD-MARKER";
const PLAIN_MARKER: &[u8] = b"SHOAL-PLAIN-PAYLOAD-MARKER";
/// How soon a removed node's key must be gone from the others' devices.
const REMOVAL_BOUND: Duration = Duration::from_secs(15);
/// WireGuard rekeys a session two minutes after its handshake; the transfer waits for
/// one, with room for a loaded machine.
const REKEY_BOUND: Duration = Duration::from_secs(240);
/// The longest the transfer may stall (a write blocked) across a rekey.
const REKEY_STALL: Duration = Duration::from_secs(10);

fn wg_status(guard: &LabGuard, host: usize) -> Value {
    read_json(&guard.state.hosts[host].run_dir.join("agent/wireguard.json"))
}

fn peer(status: &Value, addr: Ipv4Addr) -> Option<&Value> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["addr"] == addr.to_string())
}

fn vni_of(cli: &Cli, network: &str) -> (u32, Value) {
    let out = cli.ok(
        "h1",
        &[
            "network",
            "inspect",
            "--format",
            "{{json .Options}}",
            network,
        ],
    );
    let options: Value = serde_json::from_str(out.trim()).expect("network options");
    let vni = options["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{network}'s VNI in {options}"));
    (vni, options)
}

/// The two tasks of `service`, h1's first.
fn spread(cli: &Cli, service: &str) -> (Task, Task) {
    let mut tasks = cli.wait_running(service, 2, |t| hostnames(t).len() == 2);
    tasks.sort_by_key(|t| t.node.clone());
    let b = tasks.pop().unwrap();
    let a = tasks.pop().unwrap();
    (a, b)
}

/// Sends `payload` over UDP from task `from`'s namespace to `to` (in task `at`'s
/// namespace) and returns what arrived, if anything did within a second.
fn udp_once(from: u32, at: u32, to: SocketAddrV4, payload: &[u8]) -> Result<Vec<u8>, String> {
    for pid in [from, at] {
        if !netns_of(pid).exists() {
            return Err(format!("process {pid} is gone"));
        }
    }
    let rx = in_netns(&netns_of(at), || UdpSocket::bind(to)).map_err(|e| e.to_string())?;
    rx.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let tx = in_netns(&netns_of(from), || UdpSocket::bind("0.0.0.0:0")).unwrap();
    tx.send_to(payload, to).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65536];
    let (n, _) = rx
        .recv_from(&mut buf)
        .map_err(|e| format!("nothing arrived: {e}"))?;
    Ok(buf[..n].to_vec())
}

#[test]
fn encrypted_networks_carry_traffic_only_inside_wireguard() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('5', 2);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();
    let hosts = &guard.state.hosts;
    let (h1, h2) = (&hosts[0], &hosts[1]);

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
            "network",
            "create",
            "--subnet",
            &format!("{PLAIN}0/24"),
            "plain",
        ],
    );
    let (secret_vni, options) = vni_of(&cli, "secret");
    assert!(
        options.get("encrypted").is_some(),
        "network inspect does not show encrypted: {options}"
    );
    let (plain_vni, options) = vni_of(&cli, "plain");
    assert!(options.get("encrypted").is_none(), "{options}");

    for (name, net, publish) in [("enc", "secret", "8080:80"), ("pln", "plain", "8081:80")] {
        cli.ok(
            "h1",
            &[
                "service",
                "create",
                "--name",
                name,
                "--detach",
                "--replicas",
                "2",
                "--network",
                net,
                "-p",
                publish,
                "shoal/web:1",
            ],
        );
    }
    let (e1, e2) = spread(&cli, "enc");
    let (p1, p2) = spread(&cli, "pln");
    let (e1_ip, e2_ip) = (cli.address(&e1, SECRET), cli.address(&e2, SECRET));
    let p2_ip = cli.address(&p2, PLAIN);
    let (e1_pid, e2_pid, p1_pid, p2_pid) = (cli.pid(&e1), cli.pid(&e2), cli.pid(&p1), cli.pid(&p2));

    // Ping, both ways.
    let started = Instant::now();
    wait_for("enc on h1 pings enc on h2", BOUND, || {
        cli.exec_in(&e1, &["ping", "-c", "1", "-W", "2", &e2_ip.to_string()])
    });
    println!(
        "first ping across the encrypted network after {:?}",
        started.elapsed()
    );
    wait_for("enc on h2 pings enc on h1", BOUND, || {
        cli.exec_in(&e2, &["ping", "-c", "1", "-W", "2", &e1_ip.to_string()])
    });
    // TCP: HTTP from one task to the other.
    wait_for("enc on h1 fetches a page from enc on h2", BOUND, || {
        let body = cli.exec_in(
            &e1,
            &["timeout", "5", "wget", "-qO-", &format!("http://{e2_ip}/")],
        )?;
        match answered_by(&body) {
            Some(h) if h == e2.hostname() => Ok(()),
            other => Err(format!("answered by {other:?}: {body}")),
        }
    });
    // UDP.
    let got = wait_for(
        "a UDP datagram crosses the encrypted network",
        BOUND,
        || {
            udp_once(
                e1_pid,
                e2_pid,
                SocketAddrV4::new(e2_ip, 9555),
                SECRET_MARKER,
            )
        },
    );
    assert_eq!(got, SECRET_MARKER);

    // Both devices hold a session with the other node.
    for (i, other) in [(0, h2.address), (1, h1.address)] {
        let s = wait_for(&format!("h{}'s WireGuard session", i + 1), BOUND, || {
            let s = wg_status(&guard, i);
            match peer(&s, other) {
                Some(p)
                    if p["handshakes"].as_u64() >= Some(1)
                        && p["tx_bytes"].as_u64() > Some(0)
                        && p["rx_bytes"].as_u64() > Some(0) =>
                {
                    Ok(s)
                }
                _ => Err(s.to_string()),
            }
        });
        println!("h{} wireguard.json: {s}", i + 1);
        assert_eq!(s["running"], true);
        assert_eq!(s["port"], 4790);
    }
    // `shoal dataplane stats` shows the sessions too.
    let text = cli.ok("h1", &["dataplane", "stats"]);
    assert!(
        text.contains("wireguard") && text.contains(&h2.address.to_string()),
        "dataplane stats shows no WireGuard peer:\n{text}"
    );

    // MTU: underlay - 50 - 60 on the encrypted network, underlay - 50 on the plain one;
    // a datagram filling the encrypted MTU crosses whole (nothing fragments or drops).
    // (`ip`, not /sys: a lab host shares the machine's sysfs.)
    let underlay_mtu: u32 = guard
        .exec_ok("h1", &["ip", "-o", "link", "show", &h1.underlay_interface])
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .expect("underlay mtu");
    let mtu_of = |t: &Task, ifname_prefix: &str| -> u32 {
        let out = cli
            .exec_in(t, &["ip", "-o", "-4", "addr"])
            .expect("ip addr");
        let ifname = out
            .lines()
            .find(|l| l.contains(ifname_prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no interface in {ifname_prefix}*: {out}"))
            .to_string();
        cli.exec_in(t, &["ip", "-o", "link", "show", &ifname])
            .expect("ip link")
            .split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .and_then(|m| m.parse().ok())
            .expect("mtu")
    };
    assert_eq!(mtu_of(&e1, SECRET), underlay_mtu - 110);
    assert_eq!(mtu_of(&p1, PLAIN), underlay_mtu - 50);
    let full = vec![0x5au8; (underlay_mtu - 110 - 28) as usize];
    let got = wait_for(
        "a full-MTU datagram crosses the encrypted network",
        BOUND,
        || udp_once(e1_pid, e2_pid, SocketAddrV4::new(e2_ip, 9556), &full),
    );
    assert_eq!(got.len(), full.len());

    // The capture: UDP on h1's underlay while both networks carry a marked payload.
    let capture = {
        let guard = &guard;
        let iface = h1.underlay_interface.clone();
        thread::scope(|s| {
            let tcpdump = s.spawn(move || {
                guard.exec(
                    "h1",
                    &[
                        "timeout", "6", "tcpdump", "-l", "-nn", "-A", "-s", "0", "-i", &iface,
                        "udp",
                    ],
                )
            });
            thread::sleep(Duration::from_secs(2));
            for n in 0..20 {
                let _ = udp_once(
                    e1_pid,
                    e2_pid,
                    SocketAddrV4::new(e2_ip, 9600 + n),
                    SECRET_MARKER,
                );
                let _ = udp_once(
                    p1_pid,
                    p2_pid,
                    SocketAddrV4::new(p2_ip, 9600 + n),
                    PLAIN_MARKER,
                );
            }
            tcpdump.join().expect("tcpdump thread")
        })
    };
    let text = String::from_utf8_lossy(&capture.stdout).into_owned();
    let plain_marker = String::from_utf8_lossy(PLAIN_MARKER);
    let secret_marker = String::from_utf8_lossy(SECRET_MARKER);
    assert!(
        text.contains(&*plain_marker),
        "the capture misses the plain network's marker:\n{text}\n{}",
        String::from_utf8_lossy(&capture.stderr)
    );
    assert!(
        text.contains(&format!("vni {plain_vni}")),
        "no VXLAN of the plain network seen:\n{text}"
    );
    assert!(
        !text.contains(&*secret_marker),
        "the encrypted network's payload is visible on the underlay:\n{text}"
    );
    assert!(
        !text.contains(&format!("vni {secret_vni}")),
        "VXLAN of the encrypted network is visible on the underlay:\n{text}"
    );
    let wg_datagrams = text
        .lines()
        .filter(|l| l.contains(&format!("{}.4790 > {}.4790", h1.address, h2.address)))
        .count();
    assert!(
        wg_datagrams >= 20,
        "only {wg_datagrams} WireGuard datagrams from h1 to h2 in the capture:\n{text}"
    );
    println!("capture: {wg_datagrams} WireGuard datagrams h1 -> h2, no marker, no VXLAN of vni {secret_vni}");

    // The routing mesh and the VIP, for the service on the encrypted network.
    let all = hostnames(&[e1.clone(), e2.clone()]);
    for h in hosts {
        let url = format!("http://{}:8080/", h.address);
        let mut seen = std::collections::BTreeSet::new();
        wait_for(
            &format!("both enc tasks through {}'s published port", h.name),
            BOUND,
            || {
                let body = client_http(&guard, &url)?;
                seen.insert(answered_by(&body).ok_or(format!("unknown answer {body:?}"))?);
                if seen == all {
                    Ok(())
                } else {
                    Err(format!("answered so far by {seen:?} of {all:?}"))
                }
            },
        );
    }
    let vip = cli.vip("enc", "secret");
    let mut seen = std::collections::BTreeSet::new();
    wait_for(
        "both enc tasks through the VIP from h1's task",
        BOUND,
        || {
            let body = cli.exec_in(
                &e1,
                &["timeout", "5", "wget", "-qO-", &format!("http://{vip}/")],
            )?;
            seen.insert(answered_by(&body).ok_or(format!("unknown answer {body:?}"))?);
            if seen == all {
                Ok(())
            } else {
                Err(format!("answered so far by {seen:?} of {all:?}"))
            }
        },
    );

    // Bad input: datagrams from outside the cluster are foreign, a member's garbage is
    // garbage; neither changes a session.
    let client_netns = PathBuf::from(format!("/run/netns/{}", guard.state.client.netns));
    let h2_netns = PathBuf::from(format!("/proc/{}/ns/net", h2.holder_pid));
    let before = wg_status(&guard, 0);
    for (ns, datagram) in [
        (&client_netns, &[1u8, 0, 0, 0, 9, 9, 9][..]),
        (
            &h2_netns,
            &[
                4u8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
                20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
            ][..],
        ),
    ] {
        in_netns(ns, || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..10 {
                s.send_to(datagram, SocketAddrV4::new(h1.address, 4790))
                    .unwrap();
            }
        });
    }
    wait_for("h1 counts foreign and garbage datagrams", BOUND, || {
        let s = wg_status(&guard, 0);
        let moved = |k: &str| s[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
        if moved("foreign") >= 10 && moved("garbage") >= 10 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    wait_for("the session still carries traffic", BOUND, || {
        cli.exec_in(&e1, &["ping", "-c", "1", "-W", "2", &e2_ip.to_string()])
    });

    // Session keys rotate under a running transfer (WireGuard rekeys a session every
    // two minutes): the connection goes on, never stalled for REKEY_STALL, every byte
    // arrives.
    let handshakes = || -> u64 {
        [(0, h2.address), (1, h1.address)]
            .iter()
            .map(|(i, a)| {
                peer(&wg_status(&guard, *i), *a)
                    .map_or(0, |p| p["handshakes"].as_u64().unwrap_or(0))
            })
            .sum()
    };
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
    client.set_write_timeout(Some(REKEY_STALL)).unwrap();
    let before = handshakes();
    let started = Instant::now();
    let chunk = vec![0x42u8; 16384];
    let mut sent = 0u64;
    let mut checked = Instant::now();
    loop {
        client
            .write_all(&chunk)
            .unwrap_or_else(|e| panic!("the transfer broke after {:?}: {e}", started.elapsed()));
        sent += chunk.len() as u64;
        thread::sleep(Duration::from_millis(1));
        if checked.elapsed() >= Duration::from_secs(1) {
            checked = Instant::now();
            let now = handshakes();
            if now >= before + 2 {
                println!(
                    "sessions rekeyed under the transfer after {:?} (handshakes {before} -> {now}), {sent} bytes sent",
                    started.elapsed()
                );
                break;
            }
            assert!(
                started.elapsed() < REKEY_BOUND,
                "no rekey within {REKEY_BOUND:?} (handshakes {before} -> {now})"
            );
        }
    }
    // A few seconds more on the new session, then every byte must have arrived.
    let more = Instant::now();
    while more.elapsed() < Duration::from_secs(3) {
        client
            .write_all(&chunk)
            .expect("the transfer broke after the rekey");
        sent += chunk.len() as u64;
        thread::sleep(Duration::from_millis(1));
    }
    drop(client);
    let received = server.join().expect("server thread").expect("server");
    assert_eq!(received, sent, "bytes lost across the rekey");

    // h2 removed while its agent still runs: h1 drops its key within a few seconds and
    // h2's task no longer reaches the encrypted network.
    let removed_at = Instant::now();
    cli.ok("h1", &["node", "rm", "--force", "h2"]);
    let gone = wait_for("h1 drops h2's WireGuard peer", REMOVAL_BOUND, || {
        let s = wg_status(&guard, 0);
        match peer(&s, h2.address) {
            None => Ok(removed_at.elapsed()),
            Some(_) => Err(s.to_string()),
        }
    });
    println!("h2's key gone from h1's device {gone:?} after node rm");
    let before = wg_status(&guard, 0);
    // Whatever h2 still sends now arrives as foreign; nothing reaches h1's task.
    let lost = udp_once(
        e2_pid,
        e1_pid,
        SocketAddrV4::new(e1_ip, 9700),
        SECRET_MARKER,
    );
    assert!(
        lost.is_err(),
        "h2's task still reaches the encrypted network after its removal"
    );
    assert!(
        cli.exec_in(&e2, &["ping", "-c", "2", "-W", "1", &e1_ip.to_string()])
            .is_err(),
        "h2's task still pings h1's task on the encrypted network"
    );
    let after = wg_status(&guard, 0);
    println!(
        "after removal: h1 foreign {} -> {}",
        before["foreign"], after["foreign"]
    );
}
