//! `flood`: the embedded DNS and gossip flooded under load, both for [`HOLD`] at once.
//!
//! - DNS: from the network namespace of the load host's `web` container (the one whose
//!   by-name load must keep working), queries at [`DNS_RATE`] to its resolver (the
//!   `app` network's gateway): half of them valid (`back`, the name the load asks),
//!   the rest malformed (shorter than a header, or with the response bit set: the two
//!   kinds the resolver drops unanswered and counts as `invalid`). The rate stays under
//!   the per-source limit (5,000/s), so the load's own queries must all be answered.
//! - Gossip: from the lab's client namespace, datagrams at UDP 7946 of every node at
//!   [`GOSSIP_RATE`] in all: random bytes, the old version's magic, the current magic
//!   under a key ID no node has, under the node's real key ID with a forged seal, and
//!   replays of datagrams the node received just before (captured with tcpdump in its
//!   namespace). Each kind is dropped and counted by a reason of its own (`gossip.json`),
//!   or, while the node's socket has a backlog, shed unopened and counted as `shed`
//!   (the lab client is no member).
//!
//! Checks: no failed request through any node (the load's own check), every node Ready
//! in every `node ls` during the flood, no more reachability verdicts `unreachable`
//! than in the same time without the flood just before (give or take one per node: a
//! loaded machine has some), every agent the same process as before, and the drop
//! counters up by what was sent (at least [`COUNTED_AT_LEAST`] of it; with the
//! datagrams the kernel dropped on a full socket buffer, `RcvbufErrors`, all of it).
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::{
    cluster::{not_ready_rows, wait, Cluster, LOAD_HOST},
    load::Fault,
};
use crate::{bench::Report, lab::tables};

/// How long both floods last.
const HOLD: Duration = Duration::from_secs(15);
/// DNS queries per second (under the resolver's per-source limit of 5,000/s).
const DNS_RATE: u64 = 2_000;
/// Gossip datagrams per second, over every node.
const GOSSIP_RATE: u64 = 2_500;
/// Datagrams captured per node to be replayed.
const CAPTURED: usize = 20;
/// The share of what was sent the counters must show (the rest: datagrams the kernel
/// dropped on a full socket buffer of an agent starved of CPU on a loaded machine).
const COUNTED_AT_LEAST: f64 = 0.8;
/// How often the sender threads send a batch.
const BATCH_EVERY: Duration = Duration::from_millis(5);
/// The gossip port of every node.
const GOSSIP_PORT: u16 = 7946;

/// The kinds of gossip datagram sent, in the order they are cycled through, with the
/// `gossip.json` counter each one must raise.
const GOSSIP_KINDS: [(&str, &str); 5] = [
    ("random", "malformed"),
    ("old_magic", "old_version"),
    ("unknown_key", "unknown_key"),
    ("forged_seal", "auth_failed"),
    ("replayed", "replayed"),
];

/// A small xorshift generator: the bytes need only look random to the receiver.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Enters the network namespace at `path` on this thread only.
fn enter_netns(path: &PathBuf) -> Result<()> {
    let ns = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: setns on this thread only; every socket it opens is then in `ns`.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!(
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Sends `rate` datagrams a second made by `make(i)` to `to(i)` until `stop`; the
/// number sent.
fn pace(
    rate: u64,
    stop: &AtomicBool,
    socket: &UdpSocket,
    mut make: impl FnMut(u64) -> (Vec<u8>, SocketAddr),
) -> u64 {
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let (bytes, to) = make(sent);
            // A full socket buffer (EAGAIN, ENOBUFS) is tried again on the next batch.
            if socket.send_to(&bytes, to).is_err() {
                break;
            }
            sent += 1;
        }
        std::thread::sleep(BATCH_EVERY);
    }
    sent
}

/// The DNS flood's counts.
#[derive(Default, Debug)]
struct DnsSent {
    valid: u64,
    malformed: u64,
    answers: u64,
}

/// A DNS query for `name` (type A, class IN) with ID `id`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(12 + name.len() + 6);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn dns_flood(
    netns: PathBuf,
    server: SocketAddr,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<DnsSent>> {
    std::thread::spawn(move || {
        enter_netns(&netns)?;
        let socket = UdpSocket::bind("0.0.0.0:0").context("binding the DNS flood's socket")?;
        let answers = Arc::new(AtomicU64::new(0));
        let reader = {
            let socket = socket.try_clone()?;
            socket.set_read_timeout(Some(Duration::from_millis(200)))?;
            let answers = answers.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                // Answers still on their way when the flood ends are read for a moment.
                let mut quiet_since: Option<Instant> = None;
                loop {
                    match socket.recv_from(&mut buf) {
                        Ok(_) => {
                            answers.fetch_add(1, Ordering::Relaxed);
                            quiet_since = None;
                        }
                        Err(_) if stop.load(Ordering::Relaxed) => {
                            let q = *quiet_since.get_or_insert_with(Instant::now);
                            if q.elapsed() > Duration::from_millis(500) {
                                return;
                            }
                        }
                        Err(_) => {}
                    }
                }
            })
        };
        let mut rng = Rng::new();
        let sent = pace(DNS_RATE, &stop, &socket, |i| {
            let bytes = match i % 4 {
                0 | 1 => dns_query(i as u16, super::cluster::BACK),
                2 => {
                    let n = rng.below(12) as usize;
                    rng.bytes(n)
                }
                _ => {
                    let n = 12 + rng.below(64) as usize;
                    let mut b = rng.bytes(n);
                    b[2] |= 0x80;
                    b
                }
            };
            (bytes, server)
        });
        // Datagram i is of kind i % 4 (a retried one is made again with the same i).
        let valid = sent / 4 * 2 + (sent % 4).min(2);
        let mut counts = DnsSent {
            valid,
            malformed: sent - valid,
            answers: 0,
        };
        let _ = reader.join();
        counts.answers = answers.load(Ordering::Relaxed);
        Ok(counts)
    })
}

/// One node's gossip target: its address, its real key ID, datagrams it received.
#[derive(Clone)]
struct GossipTarget {
    name: String,
    to: SocketAddr,
    key_id: u32,
    /// Every key ID it holds (the primary one among them).
    key_ids: Vec<u32>,
    captured: Vec<Vec<u8>>,
}

fn gossip_flood(
    netns: PathBuf,
    targets: Vec<GossipTarget>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<BTreeMap<(String, &'static str), u64>>> {
    std::thread::spawn(move || {
        enter_netns(&netns)?;
        let socket = UdpSocket::bind("0.0.0.0:0").context("binding the gossip flood's socket")?;
        socket.set_nonblocking(true)?;
        let mut rng = Rng::new();
        // Datagram i goes to target i % n, of kind (i / n) % kinds (a retried one is
        // made again with the same i).
        let which = |i: u64| {
            let i = i as usize;
            (i % targets.len(), (i / targets.len()) % GOSSIP_KINDS.len())
        };
        let sent = pace(GOSSIP_RATE, &stop, &socket, |i| {
            let (t, k) = which(i);
            let target = &targets[t];
            let bytes = match GOSSIP_KINDS[k].0 {
                "random" => {
                    // Not one of the magics: malformed whatever the length.
                    let n = 1 + rng.below(200) as usize;
                    let mut b = rng.bytes(n);
                    b[0] = b'x';
                    b
                }
                "old_magic" => {
                    let mut b = b"SHG1".to_vec();
                    let n = 60 + rng.below(100) as usize;
                    b.extend(rng.bytes(n));
                    b
                }
                "unknown_key" | "forged_seal" => {
                    let key_id = if GOSSIP_KINDS[k].0 == "forged_seal" {
                        target.key_id
                    } else {
                        // Any key ID the node does not hold.
                        loop {
                            let id = rng.next() as u32;
                            if !target.key_ids.contains(&id) {
                                break id;
                            }
                        }
                    };
                    let sender = b"forged";
                    let mut b = b"SHG2".to_vec();
                    b.extend_from_slice(&key_id.to_be_bytes());
                    b.extend(rng.bytes(32)); // nonce (instance, sequence) and send time
                    b.push(sender.len() as u8);
                    b.extend_from_slice(sender);
                    b.extend(rng.bytes(32 + 16)); // body and tag
                    b
                }
                _ => target.captured[rng.below(target.captured.len() as u64) as usize].clone(),
            };
            (bytes, target.to)
        });
        let mut counts = BTreeMap::new();
        for (t, k) in (0..sent).map(which) {
            *counts
                .entry((targets[t].name.clone(), GOSSIP_KINDS[k].1))
                .or_insert(0) += 1;
        }
        Ok(counts)
    })
}

/// Captures [`CAPTURED`] gossip datagrams addressed to `host` on its underlay interface:
/// their UDP payloads.
fn capture(cluster: &Cluster, host: &str) -> Result<Vec<Vec<u8>>> {
    let h = cluster.host(host)?;
    let filter = format!("udp dst port {GOSSIP_PORT} and dst host {}", h.address);
    let argv: Vec<String> = [
        "timeout",
        "20",
        "tcpdump",
        "-i",
        &h.underlay_interface,
        "-U",
        "-c",
        &CAPTURED.to_string(),
        "-w",
        "-",
        &filter,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = crate::lab::exec_command(&cluster.state, host, &argv)?
        .stdin(std::process::Stdio::null())
        .output()
        .context("running tcpdump")?;
    let payloads = pcap_udp_payloads(&out.stdout)?;
    if payloads.is_empty() {
        bail!(
            "{host}: no gossip datagram captured: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(payloads)
}

/// The UDP payloads of the IPv4 frames of a pcap file (Ethernet link type).
fn pcap_udp_payloads(pcap: &[u8]) -> Result<Vec<Vec<u8>>> {
    if pcap.len() < 24 {
        bail!("no pcap header ({} bytes)", pcap.len());
    }
    let le = pcap[..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32_at = |b: &[u8], i: usize| {
        let a: [u8; 4] = b[i..i + 4].try_into().expect("4 bytes");
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    if u32_at(pcap, 20) != 1 {
        bail!("pcap link type {} is not Ethernet", u32_at(pcap, 20));
    }
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32_at(pcap, at + 8) as usize;
        let frame = &pcap[(at + 16).min(pcap.len())..(at + 16 + len).min(pcap.len())];
        at += 16 + len;
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 17 || ip.len() < ihl + 8 {
            continue;
        }
        out.push(ip[ihl + 8..].to_vec());
    }
    Ok(out)
}

/// A host's `gossip.json` counters.
fn gossip_counters(cluster: &Cluster, host: &str) -> Result<Value> {
    let h = cluster.host(host)?;
    let status = tables::read_json(&h.run_dir.join("agent/gossip.json"));
    let c = status["counters"].clone();
    if !c.is_object() {
        bail!("{host}: no counters in gossip.json: {status}");
    }
    Ok(c)
}

fn counter(c: &Value, name: &str) -> u64 {
    c[name].as_u64().unwrap_or(0)
}

/// A host's UDP `RcvbufErrors` (datagrams its kernel dropped on a full socket buffer).
fn rcvbuf_errors(cluster: &Cluster, host: &str) -> Result<u64> {
    let snmp = cluster.exec(host, &["cat", "/proc/net/snmp"])?;
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    let [names, values] = udp[..] else {
        bail!("{host}: no Udp lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| anyhow!("{host}: no RcvbufErrors in {names}"))
}

/// The sum of a host's metric samples of `family` whose labels contain `label`.
fn labelled_metric(cluster: &Cluster, host: &str, family: &str, label: &str) -> Result<u64> {
    let url = format!("http://127.0.0.1:{}/metrics", super::cluster::METRICS_PORT);
    let text = cluster.exec(host, &["curl", "-sS", "--max-time", "5", &url])?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum())
}

/// The DNS counters the flood must move, on the load host.
fn dns_counters(cluster: &Cluster) -> Result<[u64; 2]> {
    Ok([
        labelled_metric(
            cluster,
            LOAD_HOST,
            "shoal_dns_dropped_queries_total",
            "reason=\"invalid\"",
        )?,
        labelled_metric(
            cluster,
            LOAD_HOST,
            "shoal_dns_dropped_queries_total",
            "reason=\"rate_limited\"",
        )?,
    ])
}

/// Polls `node ls` on the leader every second for [`HOLD`]: the polls, those with a
/// node not Ready, what was seen, and when it began.
fn watch_nodes(cluster: &Cluster) -> (u64, u64, Vec<String>, Instant) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut polls = 0u64;
    let mut not_ready = 0u64;
    while started.elapsed() < HOLD {
        let tick = Instant::now();
        polls += 1;
        match cluster
            .leader()
            .and_then(|l| cluster.shoal(&l, &["node", "ls"]))
        {
            Ok(nodes) => {
                let bad = not_ready_rows(&nodes);
                if !bad.is_empty() {
                    not_ready += 1;
                    seen.push(format!(
                        "{:.1} s: not Ready: {}",
                        started.elapsed().as_secs_f64(),
                        bad.join(" | ")
                    ));
                }
            }
            Err(e) => seen.push(format!("{:.1} s: {e:#}", started.elapsed().as_secs_f64())),
        }
        if let Some(left) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(left);
        }
    }
    (polls, not_ready, seen, started)
}

/// Every host's count of reachability verdicts `unreachable` so far.
fn unreachable_verdicts(cluster: &Cluster, hosts: &[String]) -> Result<u64> {
    hosts
        .iter()
        .map(|h| gossip_counters(cluster, h).map(|c| counter(&c, "unreachable")))
        .sum()
}

/// The scenario (see the module's comment).
pub fn flood(cluster: &mut Cluster, report: &mut Report) -> Result<Vec<Fault>> {
    let hosts: Vec<String> = cluster.state.hosts.iter().map(|h| h.name.clone()).collect();
    let pids: Vec<u32> = hosts
        .iter()
        .map(|h| cluster.agent_pid(h))
        .collect::<Result<_>>()?;
    // Where the load container's queries go, and its namespace.
    let container = cluster.load_container()?;
    let pid = cluster.exec(
        LOAD_HOST,
        &["docker", "inspect", "-f", "{{.State.Pid}}", &container],
    )?;
    let resolv = cluster.exec(
        LOAD_HOST,
        &["docker", "exec", &container, "cat", "/etc/resolv.conf"],
    )?;
    let server: Ipv4Addr = resolv
        .lines()
        .find_map(|l| l.strip_prefix("nameserver "))
        .and_then(|a| a.trim().parse().ok())
        .with_context(|| format!("no IPv4 nameserver in the load container:\n{resolv}"))?;
    let mut targets = Vec::new();
    for h in &hosts {
        let status = tables::read_json(&cluster.host(h)?.run_dir.join("agent/gossip.json"));
        let key_id = status["primary_key"]
            .as_u64()
            .with_context(|| format!("{h}: no primary_key in gossip.json"))?
            as u32;
        let key_ids = tables::array(&status, "key_ids")
            .iter()
            .filter_map(|k| k.as_u64().map(|k| k as u32))
            .collect();
        targets.push(GossipTarget {
            name: h.clone(),
            to: SocketAddr::V4(SocketAddrV4::new(cluster.host(h)?.address, GOSSIP_PORT)),
            key_id,
            key_ids,
            captured: capture(cluster, h)?,
        });
    }
    let before_rcvbuf: Vec<u64> = hosts
        .iter()
        .map(|h| rcvbuf_errors(cluster, h))
        .collect::<Result<_>>()?;
    let before_dns = dns_counters(cluster)?;

    // The same time without the flood first: on a loaded machine probes are answered
    // late now and then, and the flood is judged against that.
    let quiet_from = unreachable_verdicts(cluster, &hosts)?;
    let (quiet_polls, quiet_not_ready, quiet_seen, _) = watch_nodes(cluster);
    let quiet_verdicts = unreachable_verdicts(cluster, &hosts)?.saturating_sub(quiet_from);
    for s in quiet_seen.iter().take(10) {
        println!("chaos: flood: before the flood: {s}");
    }
    println!(
        "chaos: flood: {} s without the flood: {quiet_verdicts} unreachable verdicts, \
         {quiet_not_ready} of {quiet_polls} polls with a node not Ready",
        HOLD.as_secs()
    );
    let before_gossip: Vec<Value> = hosts
        .iter()
        .map(|h| gossip_counters(cluster, h))
        .collect::<Result<_>>()?;

    let stop = Arc::new(AtomicBool::new(false));
    let dns = dns_flood(
        PathBuf::from(format!("/proc/{}/ns/net", pid.trim())),
        SocketAddr::V4(SocketAddrV4::new(server, 53)),
        stop.clone(),
    );
    let gossip = gossip_flood(
        PathBuf::from(format!("/run/netns/{}", cluster.state.client.netns)),
        targets,
        stop.clone(),
    );
    println!(
        "chaos: flood: DNS at {DNS_RATE}/s to {server} from {LOAD_HOST}'s load container, \
         gossip at {GOSSIP_RATE}/s to every node's port {GOSSIP_PORT}, for {} s",
        HOLD.as_secs()
    );
    let (polls, not_ready, seen, started) = watch_nodes(cluster);
    stop.store(true, Ordering::Relaxed);
    let flooded = started.elapsed().as_secs_f64();
    let dns = dns
        .join()
        .map_err(|_| anyhow!("the DNS flood's thread panicked"))??;
    let gossip = gossip
        .join()
        .map_err(|_| anyhow!("the gossip flood's thread panicked"))??;
    for s in seen.iter().take(10) {
        println!("chaos: flood: {s}");
    }

    // The agents write gossip.json on each pass: wait until every host's counters show
    // what was sent to it, or stop moving.
    let mut sent_to: BTreeMap<&str, u64> = BTreeMap::new();
    for ((host, _), n) in &gossip {
        *sent_to.entry(host.as_str()).or_insert(0) += n;
    }
    let dropped = |c: &Value| -> u64 {
        GOSSIP_KINDS
            .iter()
            .map(|(_, reason)| counter(c, reason))
            .sum::<u64>()
            + counter(c, "stale")
            + counter(c, "shed")
    };
    let mut last: Option<Vec<u64>> = None;
    let after_gossip = wait(
        "the gossip counters to settle",
        Duration::from_secs(30),
        || {
            let now: Vec<Value> = hosts
                .iter()
                .map(|h| gossip_counters(cluster, h))
                .collect::<Result<_>>()?;
            let totals: Vec<u64> = now.iter().map(dropped).collect();
            let all_in = hosts
                .iter()
                .zip(&before_gossip)
                .zip(&totals)
                .all(|((h, b), t)| t - dropped(b) >= sent_to.get(h.as_str()).copied().unwrap_or(0));
            let still = last.as_ref() == Some(&totals);
            last = Some(totals);
            if all_in || still {
                Ok(now)
            } else {
                std::thread::sleep(Duration::from_secs(1));
                bail!("still moving")
            }
        },
    )?;
    let after_rcvbuf: Vec<u64> = hosts
        .iter()
        .map(|h| rcvbuf_errors(cluster, h))
        .collect::<Result<_>>()?;
    let after_dns = dns_counters(cluster)?;

    let gossip_sent: u64 = gossip.values().sum();
    let mut gossip_counted = 0u64;
    let mut kernel_dropped = 0u64;
    let mut verdicts = 0u64;
    for (i, h) in hosts.iter().enumerate() {
        let (b, a) = (&before_gossip[i], &after_gossip[i]);
        let delta = |name: &str| counter(a, name).saturating_sub(counter(b, name));
        let counted = dropped(a) - dropped(b);
        gossip_counted += counted;
        let kernel = after_rcvbuf[i].saturating_sub(before_rcvbuf[i]);
        kernel_dropped += kernel;
        verdicts += delta("unreachable");
        let kinds: Vec<String> = GOSSIP_KINDS
            .iter()
            .map(|(kind, reason)| {
                let sent = gossip.get(&(h.clone(), *reason)).copied().unwrap_or(0);
                format!("{kind} {sent} sent, {reason} +{}", delta(reason))
            })
            .collect();
        println!(
            "chaos: flood: {h}: {}; stale +{}; shed unopened +{}; counted {counted} of {} \
             sent; kernel RcvbufErrors +{kernel}; unreachable verdicts +{}",
            kinds.join(", "),
            delta("stale"),
            delta("shed"),
            sent_to.get(h.as_str()).copied().unwrap_or(0),
            delta("unreachable")
        );
    }
    let invalid = after_dns[0].saturating_sub(before_dns[0]);
    let rate_limited = after_dns[1].saturating_sub(before_dns[1]);
    println!(
        "chaos: flood: DNS: {} valid and {} malformed queries sent in {flooded:.1} s, {} answers; \
         {LOAD_HOST}'s resolver counted {invalid} invalid, {rate_limited} rate-limited",
        dns.valid, dns.malformed, dns.answers
    );
    let dns_sent = dns.valid + dns.malformed;
    report.figure("flood_dns_sent", dns_sent as f64, "queries");
    report.figure("flood_dns_rate", dns_sent as f64 / flooded, "queries/s");
    report.figure("flood_dns_malformed_sent", dns.malformed as f64, "queries");
    report.figure("flood_dns_answers", dns.answers as f64, "answers");
    report.figure("flood_dns_invalid_counted", invalid as f64, "queries");
    report.figure("flood_dns_rate_limited", rate_limited as f64, "queries");
    report.figure("flood_gossip_sent", gossip_sent as f64, "datagrams");
    report.figure(
        "flood_gossip_rate",
        gossip_sent as f64 / flooded,
        "datagrams/s",
    );
    report.figure("flood_gossip_counted", gossip_counted as f64, "datagrams");
    report.figure(
        "flood_gossip_kernel_dropped",
        kernel_dropped as f64,
        "datagrams",
    );
    report.figure("flood_polls", polls as f64, "polls");
    report.ratio("flood_polls_not_ready", not_ready as f64, "<=", 0.0);
    report.figure(
        "flood_quiet_unreachable_verdicts",
        quiet_verdicts as f64,
        "verdicts",
    );
    report.figure("flood_unreachable_verdicts", verdicts as f64, "verdicts");
    // No more members judged unreachable than in the same time without the flood,
    // give or take one per node.
    report.ratio(
        "flood_unreachable_verdicts_over_quiet",
        verdicts as f64 - quiet_verdicts as f64,
        "<=",
        hosts.len() as f64,
    );
    report.ratio(
        "flood_dns_invalid_counted_share",
        invalid as f64 / dns.malformed.max(1) as f64,
        ">=",
        COUNTED_AT_LEAST,
    );
    report.ratio(
        "flood_dns_valid_answered_share",
        dns.answers as f64 / dns.valid.max(1) as f64,
        ">=",
        COUNTED_AT_LEAST,
    );
    report.ratio(
        "flood_gossip_counted_share",
        gossip_counted as f64 / gossip_sent.max(1) as f64,
        ">=",
        COUNTED_AT_LEAST,
    );
    // What was not counted, the kernel dropped on a full socket buffer.
    report.ratio(
        "flood_gossip_counted_or_kernel_dropped_share",
        (gossip_counted + kernel_dropped) as f64 / gossip_sent.max(1) as f64,
        ">=",
        0.98,
    );
    // Every agent went through it: the same process, still running.
    for (h, pid) in hosts.iter().zip(&pids) {
        let now = cluster.agent_pid(h)?;
        if now != *pid || !crate::lab::procs::alive(now) {
            bail!(
                "{h}'s agent was {pid} before the flood, {now} after (alive: {})",
                crate::lab::procs::alive(now)
            );
        }
    }
    Ok(Vec::new())
}
