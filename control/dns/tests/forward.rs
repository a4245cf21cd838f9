//! Forwarding to upstream resolvers: against a real upstream (dnsmasq with its own zone,
//! on 127.0.0.1 and a free high port, started per test and stopped by PID on drop) and
//! against fake upstreams in the test (slow, dead, blackholing, refusing, spoofing).
//!
//! dnsmasq needs no root here (high port, loopback). Without the `dnsmasq` binary
//! (Debian: `dnsmasq-base`) the tests that need it say so and pass, unless
//! SHOAL_REQUIRE_ROOT=1 (set by `cargo xtask test`), where they fail.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use shoal_dns::forward::{servfail_for, ForwardConfig, ForwardError, Forwarder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Slack on top of every timing bound, for loaded CI machines.
const MARGIN: Duration = Duration::from_millis(1000);
const BIG_RECORDS: u8 = 100;

// ---------------------------------------------------------------------------------
// Queries and answers

fn query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
    message(id, name, rtype, None)
}

fn query_edns(id: u16, name: &str, rtype: RecordType, dnssec_ok: bool) -> Vec<u8> {
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.set_dnssec_ok(dnssec_ok);
    message(id, name, rtype, Some(edns))
}

fn message(id: u16, name: &str, rtype: RecordType, edns: Option<Edns>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(edns) = edns {
        m.set_edns(edns);
    }
    m.to_vec().unwrap()
}

fn parse(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).expect("answer parses")
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// A NOERROR answer to `query` with one A record.
fn answer_a(query: &[u8], ip: Ipv4Addr) -> Vec<u8> {
    let q = parse(query);
    let mut r = Message::response(q.metadata.id, q.metadata.op_code);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.add_queries(q.queries.clone());
    r.add_answer(Record::from_rdata(
        q.queries[0].name().clone(),
        60,
        RData::A(A(ip)),
    ));
    r.to_vec().unwrap()
}

fn answer_rcode(query: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let q = parse(query);
    let mut r = Message::error_msg(q.metadata.id, q.metadata.op_code, rcode);
    r.add_queries(q.queries.clone());
    r.to_vec().unwrap()
}

fn config(upstreams: Vec<SocketAddr>, timeout: Duration) -> ForwardConfig {
    ForwardConfig {
        upstreams,
        timeout,
        max_in_flight: 64,
    }
}

/// Asks `server` directly, the way a client would, for comparison.
async fn ask(server: SocketAddr, query: &[u8], over_tcp: bool) -> Vec<u8> {
    let exchange = async {
        if over_tcp {
            let mut stream = TcpStream::connect(server).await.unwrap();
            let mut framed = (query.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(query);
            stream.write_all(&framed).await.unwrap();
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await.unwrap();
            let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut answer).await.unwrap();
            answer
        } else {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket.connect(server).await.unwrap();
            socket.send(query).await.unwrap();
            let mut buf = vec![0u8; 65535];
            let len = socket.recv(&mut buf).await.unwrap();
            buf.truncate(len);
            buf
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .expect("direct query answered in time")
}

/// A port on 127.0.0.1 that nothing listens on, for UDP or TCP, right now.
fn dead_port() -> u16 {
    loop {
        let udp = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn local(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

// ---------------------------------------------------------------------------------
// dnsmasq, the real upstream

fn require_or_skip(what: &str) -> bool {
    assert!(
        std::env::var("SHOAL_REQUIRE_ROOT").as_deref() != Ok("1"),
        "{what} and SHOAL_REQUIRE_ROOT=1 forbids skipping"
    );
    eprintln!("skipped: {what}");
    false
}

fn dnsmasq_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("dnsmasq"))
        .find(|candidate| candidate.is_file())
}

/// dnsmasq serving `zone.test` only (`--local`: NXDOMAIN for other names in it), from
/// an addn-hosts file, a TXT and an MX record; no upstreams, no /etc/hosts.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

/// Names served by [`Dnsmasq`].
const WWW: &str = "www.zone.test.";
const WWW_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const BIG: &str = "big.zone.test.";
const TXT: &str = "txt.zone.test.";
const MX: &str = "zone.test.";
const MISSING: &str = "missing.zone.test.";

static DIRS: AtomicUsize = AtomicUsize::new(0);

impl Dnsmasq {
    /// Starts dnsmasq, or returns `None` (after saying why) when it is not installed.
    fn start() -> Option<Self> {
        let Some(binary) = dnsmasq_binary() else {
            require_or_skip("dnsmasq is not installed (apt-get install dnsmasq-base)");
            return None;
        };
        let mut failures = Vec::new();
        for _ in 0..5 {
            match Self::try_start(&binary) {
                Ok(dnsmasq) => return Some(dnsmasq),
                // Most likely the port was taken between picking and binding it.
                Err(log) => failures.push(log),
            }
        }
        panic!("dnsmasq did not start:\n{}", failures.join("\n---\n"));
    }

    fn try_start(binary: &Path) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "shoal-dns-forward-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut hosts = format!("{WWW_IP} www.zone.test\n");
        for i in 1..=BIG_RECORDS {
            hosts.push_str(&format!("10.9.1.{i} big.zone.test\n"));
        }
        std::fs::write(dir.join("hosts"), hosts).unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();

        let port = dead_port();
        let mut command = Command::new(binary);
        command
            .arg("--no-daemon")
            .arg("--conf-file=/dev/null")
            .arg(format!("--port={port}"))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--no-poll")
            .arg(format!("--addn-hosts={}", dir.join("hosts").display()))
            .arg("--local=/zone.test/")
            .arg("--txt-record=txt.zone.test,\"v=shoal forward test\",\"second string\"")
            .arg("--mx-host=zone.test,mail.zone.test,10")
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg("--log-facility=-")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Stay root instead of switching to a user that may not exist here.
            command.arg("--user=root");
        }
        let child = command.spawn().expect("spawn dnsmasq");
        let mut dnsmasq = Dnsmasq {
            child,
            addr: local(port),
            dir,
        };
        match dnsmasq.wait_ready() {
            Ok(()) => Ok(dnsmasq),
            Err(why) => Err(format!("{why}; log:\n{}", dnsmasq.log())),
        }
    }

    /// Polls with a real query until dnsmasq answers (or exits, or 10 s pass).
    fn wait_ready(&mut self) -> Result<(), String> {
        let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let probe = query(7, WWW, RecordType::A);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("dnsmasq exited: {status}"));
            }
            socket.send_to(&probe, self.addr).unwrap();
            if let Ok((len, from)) = socket.recv_from(&mut buf) {
                if from == self.addr && len >= 2 && buf[..2] == [0, 7] {
                    return Ok(());
                }
            }
        }
        Err("dnsmasq did not answer within 10 s".into())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id() as libc::pid_t;
            // SAFETY: kill has no memory preconditions; the PID is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------
// Fake upstreams

enum Reply {
    /// Sent from the upstream's own socket.
    Direct(Vec<u8>),
    /// Sent from another socket (another source port).
    FromOtherPort(Vec<u8>),
}

/// A UDP upstream in the test: each query is answered with `replies(query)` after
/// `delay` (each query on its own, so concurrent queries are not serialised).
struct FakeUpstream {
    addr: SocketAddr,
    received: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    async fn start<F>(bind: IpAddr, delay: Duration, replies: F) -> Self
    where
        F: Fn(&[u8]) -> Vec<Reply> + Send + Sync + 'static,
    {
        let socket = Arc::new(UdpSocket::bind((bind, 0)).await.unwrap());
        let other = Arc::new(UdpSocket::bind((bind, 0)).await.unwrap());
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let replies = Arc::new(replies);
        let count = received.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let query = buf[..len].to_vec();
                let (socket, other, replies) = (socket.clone(), other.clone(), replies.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    for reply in replies(&query) {
                        let _ = match reply {
                            Reply::Direct(bytes) => socket.send_to(&bytes, peer).await,
                            Reply::FromOtherPort(bytes) => other.send_to(&bytes, peer).await,
                        };
                    }
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    async fn answering(delay: Duration, ip: Ipv4Addr) -> Self {
        Self::start(IpAddr::V4(Ipv4Addr::LOCALHOST), delay, move |q| {
            vec![Reply::Direct(answer_a(q, ip))]
        })
        .await
    }

    async fn wait_received(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.received.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "fake upstream got {} queries, expected {n}",
                self.received.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

// ---------------------------------------------------------------------------------
// resolv.conf

#[test]
fn resolv_conf_is_read_like_glibc() {
    let text = "\
# generated by something
; another comment style
search example.com corp.example
domain example.com
options ndots:2 timeout:1 attempts:3
sortlist 10.0.0.0/255.0.0.0
   # indented comment: nameserver 192.0.2.200
nameserverX 192.0.2.201
nameserver
nameserver not-an-address
nameserver 10.0.0.1%eth0
nameserver 192.0.2.1
nameserver 2001:db8::53 # trailing comment
\tnameserver\t192.0.2.1
nameserver 192.0.2.2;trailing
nameserver 192.0.2.3
";
    let config = ForwardConfig::from_resolv_conf(text).unwrap();
    assert_eq!(
        config.upstreams,
        vec![
            "192.0.2.1:53".parse::<SocketAddr>().unwrap(),
            "[2001:db8::53]:53".parse().unwrap(),
            "192.0.2.2:53".parse().unwrap(),
        ],
        "comments, other keywords and bad addresses skipped, duplicates dropped, at most three"
    );
    assert_eq!(config.timeout, Duration::from_secs(2));
    assert_eq!(config.max_in_flight, 1024);
}

#[test]
fn resolv_conf_keeps_loopback_and_ipv6_zones() {
    let config = ForwardConfig::from_resolv_conf(
        "nameserver 127.0.0.53\nnameserver fe80::1%7\nnameserver fe80::2%lo\n",
    )
    .unwrap();
    assert_eq!(config.upstreams[0], "127.0.0.53:53".parse().unwrap());
    let SocketAddr::V6(numeric) = config.upstreams[1] else {
        panic!("not IPv6: {}", config.upstreams[1]);
    };
    assert_eq!((numeric.scope_id(), numeric.port()), (7, 53));
    let SocketAddr::V6(named) = config.upstreams[2] else {
        panic!("not IPv6: {}", config.upstreams[2]);
    };
    assert_ne!(named.scope_id(), 0, "lo resolved to its interface index");
}

#[test]
fn resolv_conf_without_nameservers_is_an_error() {
    for text in [
        "",
        "search example.com\n",
        "nameserver bogus\n# nameserver 1.1.1.1\n",
    ] {
        assert!(
            matches!(
                ForwardConfig::from_resolv_conf(text),
                Err(ForwardError::NoUpstream)
            ),
            "{text:?}"
        );
    }
    let missing = std::env::temp_dir().join(format!("shoal-no-resolv-{}", std::process::id()));
    assert!(matches!(
        ForwardConfig::from_path(&missing),
        Err(ForwardError::ReadConfig { .. })
    ));
}

// ---------------------------------------------------------------------------------
// SERVFAIL helper and malformed queries

#[test]
fn servfail_echoes_id_and_question() {
    let q = query(0xbeef, "Some.Name.example.", RecordType::AAAA);
    let answer = parse(&servfail_for(&q).unwrap());
    assert_eq!(answer.metadata.id, 0xbeef);
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert!(answer.metadata.recursion_desired && answer.metadata.recursion_available);
    assert_eq!(answer.queries, parse(&q).queries);
    assert!(answer.answers.is_empty() && answer.edns.is_none());
}

#[test]
fn servfail_answers_edns_with_edns() {
    let q = query_edns(9, "name.example.", RecordType::A, true);
    let answer = parse(&servfail_for(&q).unwrap());
    let edns = answer.edns.expect("OPT record in the answer");
    assert_eq!(edns.max_payload(), 1232);
    assert_eq!(edns.version(), 0);
    assert!(edns.flags().dnssec_ok, "DO bit copied");
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
}

#[test]
fn servfail_refuses_what_is_not_a_query() {
    let q = query(1, "name.example.", RecordType::A);
    let mut response = q.clone();
    response[2] |= 0x80;
    for bad in [
        &[][..],
        &q[..11],
        &q[..q.len() - 1],
        &response[..],
        &[0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1][..],
    ] {
        assert_eq!(servfail_for(bad), None, "{bad:?}");
    }
}

#[tokio::test]
async fn malformed_queries_and_no_upstream() {
    let forwarder = Forwarder::new(config(vec![local(dead_port())], Duration::from_secs(1)));
    let q = query(1, "name.example.", RecordType::A);
    let mut response = q.clone();
    response[2] |= 0x80;
    for bad in [&q[..5], &q[..q.len() - 2], &response[..]] {
        assert!(
            matches!(
                forwarder.forward(bad, false).await,
                Err(ForwardError::Malformed(_))
            ),
            "{bad:?}"
        );
    }
    let none = Forwarder::new(config(vec![], Duration::from_secs(1)));
    assert!(matches!(
        none.forward(&q, false).await,
        Err(ForwardError::NoUpstream)
    ));
    assert_eq!(forwarder.in_flight(), 0);
}

// ---------------------------------------------------------------------------------
// dnsmasq

#[tokio::test]
async fn a_query_is_answered_from_the_zone_with_the_client_id() {
    let Some(dnsmasq) = Dnsmasq::start() else {
        return;
    };
    let forwarder = Forwarder::new(config(vec![dnsmasq.addr], Duration::from_secs(2)));
    for over_tcp in [false, true] {
        // Mixed case (0x20) must come back as asked.
        let q = query(0x1234, "WwW.zOnE.test.", RecordType::A);
        let answer = forwarder.forward(&q, over_tcp).await.unwrap();
        let m = parse(&answer);
        assert_eq!(m.metadata.id, 0x1234, "client's ID (tcp: {over_tcp})");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_records(&m), vec![WWW_IP]);
        assert_eq!(m.queries[0].name().to_ascii(), "WwW.zOnE.test.");
    }
    assert_eq!(forwarder.in_flight(), 0);
}

#[tokio::test]
async fn answers_are_relayed_byte_for_byte() {
    let Some(dnsmasq) = Dnsmasq::start() else {
        return;
    };
    let forwarder = Forwarder::new(config(vec![dnsmasq.addr], Duration::from_secs(2)));
    let cases = [
        (TXT, RecordType::TXT, false),
        (TXT, RecordType::TXT, true),
        (MX, RecordType::MX, false),
        (WWW, RecordType::A, true),
        (WWW, RecordType::AAAA, false),
    ];
    for (i, (name, rtype, edns)) in cases.into_iter().enumerate() {
        let id = 0x4000 + i as u16;
        let q = if edns {
            query_edns(id, name, rtype, false)
        } else {
            query(id, name, rtype)
        };
        for over_tcp in [false, true] {
            let direct = ask(dnsmasq.addr, &q, over_tcp).await;
            let forwarded = forwarder.forward(&q, over_tcp).await.unwrap();
            assert_eq!(
                forwarded, direct,
                "{name} {rtype} edns {edns} tcp {over_tcp}: forwarded answer differs from dnsmasq's"
            );
        }
    }
    let txt = parse(
        &forwarder
            .forward(&query(1, TXT, RecordType::TXT), false)
            .await
            .unwrap(),
    );
    assert_eq!(txt.answers.len(), 1, "the TXT record is there: {txt:?}");
    let aaaa = parse(
        &forwarder
            .forward(&query(2, WWW, RecordType::AAAA), false)
            .await
            .unwrap(),
    );
    assert_eq!(
        (aaaa.metadata.response_code, aaaa.answers.len()),
        (ResponseCode::NoError, 0),
        "NODATA stays NODATA"
    );
}

/// dnsmasq rotates the records of a name from one answer to the next, so two answers
/// for `big` are equal but for the order (and, truncated, the subset) of A records:
/// same length, same header (ID, flags, counts), same question.
fn assert_same_but_rotated(forwarded: &[u8], direct: &[u8]) {
    assert_eq!(forwarded.len(), direct.len(), "same length");
    assert_eq!(forwarded[..12], direct[..12], "same header");
    assert_eq!(
        parse(forwarded).queries,
        parse(direct).queries,
        "same question"
    );
}

#[tokio::test]
async fn big_answer_is_truncated_over_udp_and_complete_over_tcp() {
    let Some(dnsmasq) = Dnsmasq::start() else {
        return;
    };
    let forwarder = Forwarder::new(config(vec![dnsmasq.addr], Duration::from_secs(2)));
    let q = query(0x5151, BIG, RecordType::A);

    let udp = forwarder.forward(&q, false).await.unwrap();
    let m = parse(&udp);
    assert!(m.metadata.truncation, "TC set over UDP");
    assert!(
        udp.len() <= 512,
        "no EDNS: at most 512 bytes, got {}",
        udp.len()
    );
    assert_eq!(m.metadata.id, 0x5151);
    assert_same_but_rotated(&udp, &ask(dnsmasq.addr, &q, false).await);

    // The client retries over TCP, and so does the forwarder.
    let tcp = forwarder.forward(&q, true).await.unwrap();
    let m = parse(&tcp);
    assert!(!m.metadata.truncation, "complete over TCP");
    assert_eq!(m.metadata.id, 0x5151);
    let mut ips = a_records(&m);
    ips.sort();
    let expected: Vec<Ipv4Addr> = (1..=BIG_RECORDS)
        .map(|i| Ipv4Addr::new(10, 9, 1, i))
        .collect();
    assert_eq!(ips, expected);
    assert_same_but_rotated(&tcp, &ask(dnsmasq.addr, &q, true).await);
}

#[tokio::test]
async fn nxdomain_is_relayed_as_nxdomain() {
    let Some(dnsmasq) = Dnsmasq::start() else {
        return;
    };
    let forwarder = Forwarder::new(config(vec![dnsmasq.addr], Duration::from_secs(2)));
    for over_tcp in [false, true] {
        let q = query(0x0bad, MISSING, RecordType::A);
        let answer = forwarder.forward(&q, over_tcp).await.unwrap();
        assert_eq!(
            parse(&answer).metadata.response_code,
            ResponseCode::NXDomain
        );
        assert_eq!(answer, ask(dnsmasq.addr, &q, over_tcp).await);
    }
}

// ---------------------------------------------------------------------------------
// Slow, dead, blackholing and refusing upstreams

#[tokio::test]
async fn slow_upstream_times_out_within_the_bound() {
    let timeout = Duration::from_millis(300);
    let slow = FakeUpstream::answering(Duration::from_secs(3), Ipv4Addr::new(10, 1, 1, 1)).await;
    let forwarder = Forwarder::new(config(vec![slow.addr], timeout));
    let start = Instant::now();
    let result = forwarder
        .forward(&query(3, "slow.example.", RecordType::A), false)
        .await;
    let elapsed = start.elapsed();
    match result {
        Err(ForwardError::Timeout { upstreams }) => assert_eq!(upstreams, vec![slow.addr]),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        elapsed >= timeout && elapsed < timeout + MARGIN,
        "took {elapsed:?} with a {timeout:?} timeout"
    );
    assert_eq!(forwarder.in_flight(), 0);
}

#[tokio::test]
async fn slow_first_upstream_falls_through_to_the_second() {
    let Some(dnsmasq) = Dnsmasq::start() else {
        return;
    };
    let timeout = Duration::from_millis(300);
    // Over UDP: an upstream that answers too late. Over TCP: one that accepts the
    // connection (the kernel does) but never reads it.
    let slow = FakeUpstream::answering(Duration::from_secs(3), Ipv4Addr::new(10, 1, 1, 1)).await;
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    for (over_tcp, first) in [(false, slow.addr), (true, hole.local_addr().unwrap())] {
        let forwarder = Forwarder::new(config(vec![first, dnsmasq.addr], timeout));
        let start = Instant::now();
        let answer = forwarder
            .forward(&query(4, WWW, RecordType::A), over_tcp)
            .await
            .unwrap();
        let elapsed = start.elapsed();
        assert_eq!(
            a_records(&parse(&answer)),
            vec![WWW_IP],
            "dnsmasq answered (tcp: {over_tcp})"
        );
        assert!(
            elapsed >= timeout && elapsed < 2 * timeout + MARGIN,
            "tcp {over_tcp}: took {elapsed:?} with a {timeout:?} timeout per upstream"
        );
    }
    slow.wait_received(1).await;
}

#[tokio::test]
async fn dead_upstream_fails_fast() {
    let timeout = Duration::from_secs(3);
    let dead = local(dead_port());
    let forwarder = Forwarder::new(config(vec![dead], timeout));
    for over_tcp in [false, true] {
        let start = Instant::now();
        let result = forwarder
            .forward(&query(5, "dead.example.", RecordType::A), over_tcp)
            .await;
        match result {
            Err(ForwardError::Io { upstream, source }) => {
                assert_eq!(upstream, dead);
                assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
            }
            other => panic!("expected connection refused (tcp: {over_tcp}), got {other:?}"),
        }
        assert!(
            start.elapsed() < timeout / 3,
            "refusal is immediate, not a timeout: took {:?}",
            start.elapsed()
        );
    }
}

#[tokio::test]
async fn dead_first_upstream_falls_through_to_the_second_at_once() {
    let Some(dnsmasq) = Dnsmasq::start() else {
        return;
    };
    let timeout = Duration::from_secs(3);
    let forwarder = Forwarder::new(config(vec![local(dead_port()), dnsmasq.addr], timeout));
    for over_tcp in [false, true] {
        let start = Instant::now();
        let answer = forwarder
            .forward(&query(6, WWW, RecordType::A), over_tcp)
            .await
            .unwrap();
        assert_eq!(a_records(&parse(&answer)), vec![WWW_IP]);
        assert!(
            start.elapsed() < timeout / 3,
            "did not wait for the dead upstream (tcp: {over_tcp}): took {:?}",
            start.elapsed()
        );
    }
}

#[tokio::test]
async fn blackholing_upstream_times_out_over_udp_and_tcp() {
    let timeout = Duration::from_millis(300);
    // Bound but never read: datagrams and connections go nowhere.
    let udp = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    for (over_tcp, addr) in [
        (false, udp.local_addr().unwrap()),
        (true, tcp.local_addr().unwrap()),
    ] {
        let forwarder = Forwarder::new(config(vec![addr], timeout));
        let start = Instant::now();
        let result = forwarder
            .forward(&query(7, "hole.example.", RecordType::A), over_tcp)
            .await;
        let elapsed = start.elapsed();
        assert!(
            matches!(&result, Err(ForwardError::Timeout { upstreams }) if upstreams == &vec![addr]),
            "tcp {over_tcp}: {result:?}"
        );
        assert!(
            elapsed >= timeout && elapsed < timeout + MARGIN,
            "tcp {over_tcp}: took {elapsed:?}"
        );
    }
}

#[tokio::test]
async fn refusing_upstream_is_skipped_but_its_answer_kept_as_last_resort() {
    let refuser = FakeUpstream::start(IpAddr::V4(Ipv4Addr::LOCALHOST), Duration::ZERO, |q| {
        vec![Reply::Direct(answer_rcode(q, ResponseCode::Refused))]
    })
    .await;
    let good = FakeUpstream::answering(Duration::ZERO, Ipv4Addr::new(10, 2, 2, 2)).await;
    let timeout = Duration::from_secs(2);

    let both = Forwarder::new(config(vec![refuser.addr, good.addr], timeout));
    let answer = parse(
        &both
            .forward(&query(8, "x.example.", RecordType::A), false)
            .await
            .unwrap(),
    );
    assert_eq!(a_records(&answer), vec![Ipv4Addr::new(10, 2, 2, 2)]);

    let only = Forwarder::new(config(vec![refuser.addr], timeout));
    let answer = parse(
        &only
            .forward(&query(9, "x.example.", RecordType::A), false)
            .await
            .unwrap(),
    );
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
    assert_eq!(answer.metadata.id, 9);
}

#[tokio::test]
async fn forwards_to_an_ipv6_upstream() {
    let Ok(probe) = StdUdpSocket::bind("[::1]:0") else {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    };
    drop(probe);
    let upstream = FakeUpstream::start(IpAddr::V6(Ipv6Addr::LOCALHOST), Duration::ZERO, |q| {
        vec![Reply::Direct(answer_a(q, Ipv4Addr::new(10, 6, 6, 6)))]
    })
    .await;
    let forwarder = Forwarder::new(config(vec![upstream.addr], Duration::from_secs(2)));
    let answer = parse(
        &forwarder
            .forward(&query(10, "six.example.", RecordType::A), false)
            .await
            .unwrap(),
    );
    assert_eq!(a_records(&answer), vec![Ipv4Addr::new(10, 6, 6, 6)]);
    assert_eq!(answer.metadata.id, 10);
}

// ---------------------------------------------------------------------------------
// Concurrency bound

#[tokio::test]
async fn third_concurrent_forward_is_busy() {
    let timeout = Duration::from_millis(500);
    let slow = FakeUpstream::answering(Duration::from_secs(3), Ipv4Addr::new(10, 3, 3, 3)).await;
    let forwarder = Forwarder::new(ForwardConfig {
        upstreams: vec![slow.addr],
        timeout,
        max_in_flight: 2,
    });
    let pending: Vec<_> = (0..2u16)
        .map(|i| {
            let forwarder = forwarder.clone();
            tokio::spawn(async move {
                forwarder
                    .forward(&query(20 + i, "busy.example.", RecordType::A), false)
                    .await
            })
        })
        .collect();
    slow.wait_received(2).await;
    assert_eq!(forwarder.in_flight(), 2);

    let start = Instant::now();
    let third = forwarder
        .forward(&query(22, "busy.example.", RecordType::A), false)
        .await;
    assert!(
        matches!(third, Err(ForwardError::Busy { max_in_flight: 2 })),
        "{third:?}"
    );
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "fails fast, took {:?}",
        start.elapsed()
    );
    assert_eq!(
        slow.received.load(Ordering::SeqCst),
        2,
        "the third never left"
    );

    for task in pending {
        assert!(matches!(
            task.await.unwrap(),
            Err(ForwardError::Timeout { .. })
        ));
    }
    assert_eq!(forwarder.in_flight(), 0, "slots given back");
    // And a cancelled forward gives its slot back too.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        forwarder.forward(&query(23, "busy.example.", RecordType::A), false),
    )
    .await;
    assert!(cancelled.is_err());
    assert_eq!(forwarder.in_flight(), 0);
}

// ---------------------------------------------------------------------------------
// Spoofing

/// Answers that must all be ignored: wrong ID, another name, another type, not a
/// response, and a genuine-looking answer from another source port.
fn spoofs(q: &[u8]) -> Vec<Reply> {
    let mut wrong_id = answer_a(q, Ipv4Addr::new(6, 6, 6, 1));
    wrong_id[1] ^= 0x01;
    let id = parse(q).metadata.id;
    let other_name = {
        let mut a = answer_a(
            &query(id, "other.example.", RecordType::A),
            Ipv4Addr::new(6, 6, 6, 2),
        );
        a[..2].copy_from_slice(&id.to_be_bytes());
        a
    };
    let other_type = answer_rcode(
        &query(id, "spoof.example.", RecordType::AAAA),
        ResponseCode::NoError,
    );
    let not_a_response = q.to_vec();
    let from_elsewhere = answer_a(q, Ipv4Addr::new(6, 6, 6, 3));
    vec![
        Reply::Direct(wrong_id),
        Reply::Direct(other_name),
        Reply::Direct(other_type),
        Reply::Direct(not_a_response),
        Reply::Direct(vec![0xde, 0xad]),
        Reply::FromOtherPort(from_elsewhere),
    ]
}

#[tokio::test]
async fn spoofed_answers_are_ignored() {
    let timeout = Duration::from_millis(400);
    let spoofer =
        FakeUpstream::start(IpAddr::V4(Ipv4Addr::LOCALHOST), Duration::ZERO, spoofs).await;
    let forwarder = Forwarder::new(config(vec![spoofer.addr], timeout));
    let start = Instant::now();
    let result = forwarder
        .forward(&query(30, "spoof.example.", RecordType::A), false)
        .await;
    assert!(
        matches!(&result, Err(ForwardError::Timeout { .. })),
        "spoofs accepted: {result:?}"
    );
    assert!(start.elapsed() < timeout + MARGIN);
}

#[tokio::test]
async fn genuine_answer_after_spoofs_is_accepted() {
    let spoofer = FakeUpstream::start(IpAddr::V4(Ipv4Addr::LOCALHOST), Duration::ZERO, |q| {
        let mut replies = spoofs(q);
        replies.push(Reply::Direct(answer_a(q, Ipv4Addr::new(10, 7, 7, 7))));
        replies
    })
    .await;
    let forwarder = Forwarder::new(config(vec![spoofer.addr], Duration::from_secs(2)));
    let answer = parse(
        &forwarder
            .forward(&query(31, "spoof.example.", RecordType::A), false)
            .await
            .unwrap(),
    );
    assert_eq!(a_records(&answer), vec![Ipv4Addr::new(10, 7, 7, 7)]);
    assert_eq!(answer.metadata.id, 31);
}
