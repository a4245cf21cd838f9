//! End-to-end: the resolver on 127.0.0.1 (network "front") and 127.0.0.2 (network
//! "back"), UDP and TCP, with a real record table, queried with hickory's client. Names
//! it does not own go to a fake upstream on loopback.
//!
//! Source addresses stand for containers: 127.0.0.1 is the container "client" (on front
//! and back), 127.0.0.3 and 127.0.0.4 are unknown to the table (they see the network of
//! the socket they ask only).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::DnsHandle;
use hickory_proto::op::{
    DnsRequestOptions, Edns, Message, MessageType, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use shoal_dns::forward::{ForwardConfig, Forwarder};
use shoal_dns::handler::{build_query, HandlerConfig, ShoalHandler};
use shoal_dns::records::{
    Container, DnsState, EndpointMode, NetAddr, NetAlias, RecordTable, Service, SharedTable, Task,
};
mod common;

use shoal_dns::server::{DnsServer, NetworkListener, RateLimit, ServerConfig};
use shoal_dns::stats::{DnsStats, Dropped};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const OTHER_STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));

fn at(network: &str, ip: &str) -> NetAddr {
    NetAddr {
        network: network.to_string(),
        ip: ip.parse().unwrap(),
    }
}

fn task(id: &str, slot: Option<u32>, addresses: Vec<NetAddr>) -> Task {
    Task {
        id: id.to_string(),
        slot,
        healthy: true,
        nameservers: Vec::new(),
        addresses,
    }
}

fn service(name: &str, mode: EndpointMode, vips: Vec<NetAddr>, tasks: Vec<Task>) -> Service {
    Service {
        name: name.to_string(),
        stack: None,
        endpoint_mode: mode,
        vips,
        networks: vec![],
        aliases: Vec::new(),
        tasks,
    }
}

fn state() -> DnsState {
    let mut web_tasks: Vec<Task> = (1..=3)
        .map(|i| {
            task(
                &format!("w{i}"),
                Some(i),
                vec![
                    at("front", &format!("10.0.1.{}", 10 + i)),
                    at("back", &format!("10.0.2.{}", 10 + i)),
                ],
            )
        })
        .collect();
    web_tasks.push(Task {
        healthy: false,
        ..task("w4", Some(4), vec![at("front", "10.0.1.14")])
    });
    let big_tasks = (0..200)
        .map(|i| {
            task(
                &format!("b{i}"),
                Some(i + 1),
                vec![at("front", &format!("10.1.{}.{}", i / 100, 1 + i % 100))],
            )
        })
        .collect();
    let mut api = service(
        "api",
        EndpointMode::Vip,
        vec![at("front", "10.0.1.30")],
        vec![task("a1", Some(1), vec![at("front", "10.0.1.31")])],
    );
    api.stack = Some("app".to_string());
    DnsState {
        services: vec![
            service(
                "web",
                EndpointMode::Vip,
                vec![at("front", "10.0.1.2"), at("back", "10.0.2.2")],
                web_tasks,
            ),
            service(
                "db",
                EndpointMode::Dnsrr,
                vec![],
                vec![
                    task(
                        "d1",
                        Some(1),
                        vec![at("back", "10.0.2.40"), at("back", "fd00::40")],
                    ),
                    task("d2", Some(2), vec![at("back", "10.0.2.41")]),
                ],
            ),
            service("big", EndpointMode::Dnsrr, vec![], big_tasks),
            service(
                "agent",
                EndpointMode::Vip,
                vec![at("front", "10.0.1.3")],
                vec![task("g1", None, vec![at("front", "10.0.1.20")])],
            ),
            api,
        ],
        containers: vec![
            Container {
                name: "client".to_string(),
                addresses: vec![at("front", "127.0.0.1"), at("back", "10.0.2.60")],
                aliases: vec![],
            },
            Container {
                name: "debug".to_string(),
                addresses: vec![at("front", "10.0.1.9")],
                aliases: vec![NetAlias {
                    network: "front".to_string(),
                    alias: "toolbox".to_string(),
                }],
            },
            Container {
                name: "backonly".to_string(),
                addresses: vec![at("back", "10.0.2.50")],
                aliases: vec![NetAlias {
                    network: "back".to_string(),
                    alias: "backalias".to_string(),
                }],
            },
        ],
    }
}

/// A fake upstream on 127.0.0.1: `external.test` A 192.0.2.1 (TTL 300), `wide.external.test`
/// 100 A records (truncated over UDP beyond the asker's size), everything else NXDOMAIN.
struct Upstream {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
}

fn upstream_answer(query: &[u8], over_tcp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    if request.edns.is_some() {
        let mut ours = Edns::new();
        ours.set_max_payload(1232);
        response.set_edns(ours);
    }
    let name = question.name().to_lowercase().to_ascii();
    let count = match (name.as_str(), question.query_type()) {
        ("external.test.", RecordType::A) => 1,
        ("wide.external.test.", RecordType::A) => 100,
        ("external.test.", _) | ("wide.external.test.", _) => 0,
        _ => {
            response.metadata.response_code = ResponseCode::NXDomain;
            0
        }
    };
    for i in 0..count {
        let ip = Ipv4Addr::new(192, 0, 2, 1 + i as u8);
        response.add_answer(Record::from_rdata(
            question.name().clone(),
            300,
            RData::A(A(ip)),
        ));
    }
    let bytes = response.to_vec().ok()?;
    let limit = match &request.edns {
        _ if over_tcp => usize::MAX,
        Some(edns) => usize::from(edns.max_payload().max(512)),
        None => 512,
    };
    if bytes.len() > limit {
        return response.truncate().to_vec().ok();
    }
    Some(bytes)
}

async fn start_upstream() -> Upstream {
    // A free UDP port whose TCP twin is free too (another process may hold it).
    let (udp, addr, tcp) = 'pick: {
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            match tokio::net::TcpListener::bind(addr).await {
                Ok(tcp) => break 'pick (udp, addr, tcp),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => panic!("binding TCP {addr}: {e}"),
            }
        }
        panic!("no loopback port was free for both UDP and TCP in 20 tries");
    };
    let udp_queries = Arc::new(AtomicUsize::new(0));
    let tcp_queries = Arc::new(AtomicUsize::new(0));
    let counter = udp_queries.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, src)) = udp.recv_from(&mut buf).await {
            counter.fetch_add(1, Ordering::SeqCst);
            if let Some(answer) = upstream_answer(&buf[..len], false) {
                let _ = udp.send_to(&answer, src).await;
            }
        }
    });
    let counter = tcp_queries.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 2];
                    if stream.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let Some(answer) = upstream_answer(&body, true) else {
                        return;
                    };
                    let mut frame = (answer.len() as u16).to_be_bytes().to_vec();
                    frame.extend_from_slice(&answer);
                    if stream.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Upstream {
        addr,
        udp_queries,
        tcp_queries,
    }
}

struct Fixture {
    server: DnsServer,
    /// What the server counted.
    stats: Arc<DnsStats>,
    table: Arc<SharedTable>,
    front: SocketAddr,
    back: SocketAddr,
    upstream: Upstream,
}

fn listener(network: &str, ip: &str) -> NetworkListener {
    common::listener(ip, network)
}

async fn start(config: ServerConfig) -> Fixture {
    let upstream = start_upstream().await;
    let table = Arc::new(SharedTable::new(RecordTable::build(&state()).unwrap()));
    let forwarder = Forwarder::new(ForwardConfig {
        upstreams: vec![upstream.addr],
        timeout: Duration::from_secs(2),
        max_in_flight: 64,
    });
    let stats = Arc::new(DnsStats::default());
    let server = DnsServer::serve_counted(
        vec![
            listener("front", "127.0.0.1"),
            listener("back", "127.0.0.2"),
        ],
        table.clone(),
        forwarder,
        config,
        stats.clone(),
    )
    .unwrap();
    let served = server.served().to_vec();
    assert_eq!(served.len(), 2);
    assert_eq!(served[0].network, "front");
    assert_eq!(served[0].udp, served[0].tcp);
    Fixture {
        front: served[0].udp,
        back: served[1].udp,
        server,
        stats,
        table,
        upstream,
    }
}

type DnsClient = Client<TokioRuntimeProvider>;

fn udp_client(server: SocketAddr, from: IpAddr) -> DnsClient {
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_bind_addr(Some(SocketAddr::new(from, 0)))
        .with_timeout(Some(Duration::from_secs(5)))
        .build();
    let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(bg);
    client
}

async fn tcp_client(server: SocketAddr, from: IpAddr) -> DnsClient {
    let (stream, sender) = TcpClientStream::new(
        server,
        Some(SocketAddr::new(from, 0)),
        Some(Duration::from_secs(5)),
        TokioRuntimeProvider::default(),
    );
    let (client, bg) = Client::<TokioRuntimeProvider>::new(stream.await.unwrap(), sender);
    tokio::spawn(bg);
    client
}

async fn ask(client: &mut DnsClient, name: &str, qtype: RecordType) -> Message {
    let response = client
        .query(Name::from_str(name).unwrap(), DNSClass::IN, qtype)
        .await
        .unwrap_or_else(|e| panic!("{name} {qtype}: {e}"));
    response.into_message()
}

/// The A/AAAA addresses and PTR targets of an answer, in answer order.
fn data(message: &Message) -> Vec<String> {
    message
        .answers
        .iter()
        .map(|record| match &record.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(aaaa) => aaaa.0.to_string(),
            RData::PTR(ptr) => ptr.0.to_ascii(),
            other => format!("{other:?}"),
        })
        .collect()
}

fn sorted(mut list: Vec<String>) -> Vec<String> {
    list.sort();
    list
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn check_every_name_form(client: &mut DnsClient) {
    let cases: &[(&str, RecordType, &[&str])] = &[
        ("web.", RecordType::A, &["10.0.1.2", "10.0.2.2"]),
        (
            "tasks.web.",
            RecordType::A,
            &[
                "10.0.1.11",
                "10.0.1.12",
                "10.0.1.13",
                "10.0.2.11",
                "10.0.2.12",
                "10.0.2.13",
            ],
        ),
        ("web.1.w1.", RecordType::A, &["10.0.1.11", "10.0.2.11"]),
        ("web.2.", RecordType::A, &["10.0.1.12", "10.0.2.12"]),
        ("web.4.w4.", RecordType::A, &["10.0.1.14"]),
        ("db.", RecordType::A, &["10.0.2.40", "10.0.2.41"]),
        ("db.", RecordType::AAAA, &["fd00::40"]),
        ("tasks.db.", RecordType::A, &["10.0.2.40", "10.0.2.41"]),
        ("agent.", RecordType::A, &["10.0.1.3"]),
        ("agent.g1.", RecordType::A, &["10.0.1.20"]),
        ("app_api.", RecordType::A, &["10.0.1.30"]),
        ("api.", RecordType::A, &["10.0.1.30"]),
        ("tasks.api.", RecordType::A, &["10.0.1.31"]),
        ("app_api.1.a1.", RecordType::A, &["10.0.1.31"]),
        ("debug.", RecordType::A, &["10.0.1.9"]),
        ("toolbox.", RecordType::A, &["10.0.1.9"]),
        ("backonly.", RecordType::A, &["10.0.2.50"]),
        ("backalias.", RecordType::A, &["10.0.2.50"]),
        ("client.", RecordType::A, &["10.0.2.60", "127.0.0.1"]),
        ("2.1.0.10.in-addr.arpa.", RecordType::PTR, &["web."]),
        ("11.1.0.10.in-addr.arpa.", RecordType::PTR, &["web.1.w1."]),
        ("20.1.0.10.in-addr.arpa.", RecordType::PTR, &["agent.g1."]),
        (
            "31.1.0.10.in-addr.arpa.",
            RecordType::PTR,
            &["app_api.1.a1."],
        ),
        ("9.1.0.10.in-addr.arpa.", RecordType::PTR, &["debug."]),
        (
            "0.4.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
            RecordType::PTR,
            &["db.1.d1."],
        ),
        ("WEB.", RecordType::A, &["10.0.1.2", "10.0.2.2"]),
        ("Tasks.Api.", RecordType::A, &["10.0.1.31"]),
    ];
    for (name, qtype, expected) in cases {
        let answer = ask(client, name, *qtype).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{name} {qtype}"
        );
        assert!(answer.metadata.authoritative, "{name} {qtype}");
        assert_eq!(
            sorted(data(&answer)),
            sorted(strings(expected)),
            "{name} {qtype}"
        );
    }
}

#[tokio::test]
async fn every_name_form_resolves_over_udp() {
    let fixture = start(ServerConfig::default()).await;
    let mut client = udp_client(fixture.front, CLIENT);
    check_every_name_form(&mut client).await;
    fixture.server.shutdown().await;
}

#[tokio::test]
async fn every_name_form_resolves_over_tcp() {
    let fixture = start(ServerConfig::default()).await;
    let mut client = tcp_client(fixture.front, CLIENT).await;
    check_every_name_form(&mut client).await;
    fixture.server.shutdown().await;
}

#[tokio::test]
async fn queries_are_counted_by_transport_and_outcome_with_their_latency() {
    let fixture = start(ServerConfig::default()).await;
    let mut udp = udp_client(fixture.front, CLIENT);
    let mut tcp = tcp_client(fixture.front, CLIENT).await;
    ask(&mut udp, "web.", RecordType::A).await;
    ask(&mut udp, "tasks.web.", RecordType::A).await;
    ask(&mut udp, "external.test.", RecordType::A).await;
    ask(&mut tcp, "web.", RecordType::A).await;
    ask(&mut tcp, "external.test.", RecordType::A).await;
    // A response (QR set) is not a query: dropped, and counted as such.
    let raw = std::net::UdpSocket::bind((CLIENT, 0)).unwrap();
    raw.send_to(&[0, 1, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0], fixture.front)
        .unwrap();
    let s = wait_until(|| {
        let s = fixture.stats.snapshot();
        (s.dropped[Dropped::Invalid as usize].1 == 1).then_some(s)
    })
    .await
    .unwrap_or_else(|| panic!("no drop counted: {:?}", fixture.stats.snapshot()));
    assert_eq!((s.queries_udp, s.queries_tcp), (4, 2));
    assert_eq!((s.answered_local, s.forwarded), (3, 2));
    assert_eq!(s.latency.count, 5);
    assert!(s.latency.sum_seconds > 0.0);
    assert_eq!(s.dropped[Dropped::RateLimited as usize].1, 0);
    fixture.server.shutdown().await;
}

/// Polls `f` (every 10 ms, for 10 s at most) until it gives a value.
async fn wait_until<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    for _ in 0..1000 {
        if let Some(v) = f() {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test]
async fn a_container_sees_only_names_on_its_networks() {
    let fixture = start(ServerConfig::default()).await;
    // A stranger asking on front: front's names only.
    let mut front = udp_client(fixture.front, STRANGER);
    assert_eq!(
        data(&ask(&mut front, "web", RecordType::A).await),
        strings(&["10.0.1.2"])
    );
    assert_eq!(
        data(&ask(&mut front, "toolbox", RecordType::A).await),
        strings(&["10.0.1.9"])
    );
    for name in ["db", "tasks.db", "backonly", "backalias", "db.1.d1"] {
        let answer = ask(&mut front, name, RecordType::A).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert!(
            !answer.metadata.authoritative,
            "{name}: the upstream's answer"
        );
    }
    let answer = ask(&mut front, "40.2.0.10.in-addr.arpa", RecordType::PTR).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);

    // The same stranger asking on back: back's names only, VIP of back.
    let mut back = udp_client(fixture.back, STRANGER);
    assert_eq!(
        data(&ask(&mut back, "web", RecordType::A).await),
        strings(&["10.0.2.2"])
    );
    assert_eq!(
        sorted(data(&ask(&mut back, "db", RecordType::A).await)),
        strings(&["10.0.2.40", "10.0.2.41"])
    );
    assert_eq!(
        data(&ask(&mut back, "backalias", RecordType::A).await),
        strings(&["10.0.2.50"])
    );
    for name in ["toolbox", "debug", "agent", "api"] {
        let answer = ask(&mut back, name, RecordType::A).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
    }
    fixture.server.shutdown().await;
}

#[tokio::test]
async fn nxdomain_and_nodata_are_told_apart() {
    let fixture = start(ServerConfig::default()).await;
    let mut client = udp_client(fixture.front, CLIENT);
    for (name, qtype) in [
        ("web", RecordType::AAAA),
        ("web", RecordType::MX),
        ("tasks.web", RecordType::AAAA),
    ] {
        let answer = ask(&mut client, name, qtype).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{name} {qtype}"
        );
        assert!(answer.answers.is_empty(), "{name} {qtype}");
        assert!(answer.metadata.authoritative);
    }
    let answer = ask(&mut client, "nosuchservice", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    fixture.server.shutdown().await;
}

#[tokio::test]
async fn answers_rotate_across_repeated_queries() {
    let fixture = start(ServerConfig::default()).await;
    let mut client = udp_client(fixture.front, STRANGER);
    let mut firsts = HashSet::new();
    for _ in 0..9 {
        let answer = ask(&mut client, "tasks.web", RecordType::A).await;
        let list = data(&answer);
        assert_eq!(
            sorted(list.clone()),
            strings(&["10.0.1.11", "10.0.1.12", "10.0.1.13"])
        );
        firsts.insert(list[0].clone());
    }
    assert_eq!(firsts.len(), 3, "each task comes first in turn");
    fixture.server.shutdown().await;
}

#[tokio::test]
async fn local_answers_carry_the_configured_ttl_and_upstream_ttls_are_relayed() {
    let fixture = start(ServerConfig::default()).await;
    let mut client = udp_client(fixture.front, CLIENT);
    let answer = ask(&mut client, "tasks.web", RecordType::A).await;
    assert!(answer.answers.iter().all(|r| r.ttl == 5), "default TTL 5 s");
    let answer = ask(&mut client, "external.test", RecordType::A).await;
    assert_eq!(data(&answer), strings(&["192.0.2.1"]));
    assert_eq!(
        answer.answers[0].ttl, 300,
        "forwarded answers are relayed as they are"
    );
    fixture.server.shutdown().await;

    let fixture = start(ServerConfig {
        handler: HandlerConfig {
            ttl: 17,
            ..HandlerConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let mut client = udp_client(fixture.front, CLIENT);
    let answer = ask(&mut client, "web", RecordType::A).await;
    assert!(answer.answers.iter().all(|r| r.ttl == 17));
    let answer = ask(&mut client, "11.1.0.10.in-addr.arpa", RecordType::PTR).await;
    assert_eq!(answer.answers[0].ttl, 17);
    fixture.server.shutdown().await;
}

#[tokio::test]
async fn a_table_update_shows_in_the_next_query() {
    let fixture = start(ServerConfig::default()).await;
    let mut client = udp_client(fixture.front, STRANGER);
    assert_eq!(
        data(&ask(&mut client, "tasks.web", RecordType::A).await).len(),
        3
    );
    assert_eq!(
        data(&ask(&mut client, "web.3.w3", RecordType::A).await).len(),
        1
    );

    // Task w3 is gone, w2 turned unhealthy.
    let mut changed = state();
    changed.services[0].tasks.remove(2);
    changed.services[0].tasks[1].healthy = false;
    fixture.table.update(&changed).unwrap();
    assert_eq!(
        data(&ask(&mut client, "tasks.web", RecordType::A).await),
        strings(&["10.0.1.11"])
    );
    let answer = ask(&mut client, "web.3.w3", RecordType::A).await;
    assert_eq!(
        answer.metadata.response_code,
        ResponseCode::NXDomain,
        "no stale task name"
    );
    let answer = ask(&mut client, "13.1.0.10.in-addr.arpa", RecordType::PTR).await;
    assert_eq!(
        answer.metadata.response_code,
        ResponseCode::NXDomain,
        "no stale PTR"
    );

    // A new service appears.
    let mut grown = state();
    grown.services.push(service(
        "fresh",
        EndpointMode::Vip,
        vec![at("front", "10.0.1.99")],
        vec![],
    ));
    fixture.table.update(&grown).unwrap();
    assert_eq!(
        data(&ask(&mut client, "fresh", RecordType::A).await),
        strings(&["10.0.1.99"])
    );
    fixture.server.shutdown().await;
}

#[tokio::test]
async fn a_small_edns_payload_truncates_and_tcp_gets_everything() {
    let fixture = start(ServerConfig::default()).await;
    let client = udp_client(fixture.front, CLIENT);
    let mut options = DnsRequestOptions::default();
    options.use_edns = true;
    options.edns_payload_len = 512;
    let query = Query::query(Name::from_str("big.").unwrap(), RecordType::A);
    let response = client
        .lookup(query.clone(), options)
        .next()
        .await
        .unwrap()
        .unwrap()
        .into_message();
    assert!(
        response.metadata.truncation,
        "200 addresses do not fit 512 bytes"
    );
    assert!(response.edns.is_some(), "OPT in the truncated answer");

    // A client advertising 4096 gets them all over UDP (about 3.2 kB).
    options.edns_payload_len = 4096;
    let response = client
        .lookup(query.clone(), options)
        .next()
        .await
        .unwrap()
        .unwrap()
        .into_message();
    assert!(!response.metadata.truncation);
    assert_eq!(response.answers.len(), 200);

    // The TCP retry gets them all.
    let tcp = tcp_client(fixture.front, CLIENT).await;
    options.edns_payload_len = 512;
    let response = tcp
        .lookup(query, options)
        .next()
        .await
        .unwrap()
        .unwrap()
        .into_message();
    assert!(!response.metadata.truncation);
    assert_eq!(response.answers.len(), 200);
    fixture.server.shutdown().await;
}

#[tokio::test]
async fn forwarded_truncation_is_relayed_and_the_tcp_retry_forwarded_over_tcp() {
    let fixture = start(ServerConfig::default()).await;
    let client = udp_client(fixture.front, CLIENT);
    let mut options = DnsRequestOptions::default();
    options.edns_payload_len = 512;
    let query = Query::query(
        Name::from_str("wide.external.test.").unwrap(),
        RecordType::A,
    );
    let response = client
        .lookup(query.clone(), options)
        .next()
        .await
        .unwrap()
        .unwrap()
        .into_message();
    assert!(response.metadata.truncation);
    assert!(response.answers.is_empty());
    assert_eq!(fixture.upstream.tcp_queries.load(Ordering::SeqCst), 0);

    let tcp = tcp_client(fixture.front, CLIENT).await;
    let response = tcp
        .lookup(query, options)
        .next()
        .await
        .unwrap()
        .unwrap()
        .into_message();
    assert!(!response.metadata.truncation);
    assert_eq!(response.answers.len(), 100);
    assert_eq!(fixture.upstream.tcp_queries.load(Ordering::SeqCst), 1);
    assert!(fixture.upstream.udp_queries.load(Ordering::SeqCst) >= 1);
    fixture.server.shutdown().await;
}

async fn raw_exchange(server: SocketAddr, from: IpAddr, query: &[u8]) -> Option<Vec<u8>> {
    raw_exchange_within(server, from, query, Duration::from_secs(3)).await
}

async fn raw_exchange_within(
    server: SocketAddr,
    from: IpAddr,
    query: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind(SocketAddr::new(from, 0)).await.unwrap();
    socket.send_to(query, server).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(Ok((len, _))) => Some(buf[..len].to_vec()),
        _ => None,
    }
}

#[tokio::test]
async fn forwarded_answers_keep_the_clients_id() {
    let fixture = start(ServerConfig::default()).await;
    for id in [0u16, 1, 0x4242, 0xffff] {
        let query = build_query(id, "external.test.", RecordType::A, Some(1232));
        let answer = raw_exchange(fixture.front, STRANGER, &query)
            .await
            .expect("an answer");
        let message = Message::from_vec(&answer).unwrap();
        assert_eq!(message.metadata.id, id);
        assert_eq!(data(&message), strings(&["192.0.2.1"]));
        assert!(message.edns.is_some(), "the upstream's OPT is relayed");
    }
    fixture.server.shutdown().await;
}

#[tokio::test]
async fn other_classes_are_refused() {
    let fixture = start(ServerConfig::default()).await;
    let mut client = udp_client(fixture.front, CLIENT);
    for class in [DNSClass::CH, DNSClass::HS] {
        let response = client
            .query(Name::from_str("web.").unwrap(), class, RecordType::A)
            .await
            .unwrap();
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::Refused,
            "{class:?}"
        );
        assert!(response.answers.is_empty());
    }
    let response = client
        .query(
            Name::from_str("version.bind.").unwrap(),
            DNSClass::CH,
            RecordType::TXT,
        )
        .await
        .unwrap();
    assert_eq!(response.metadata.response_code, ResponseCode::Refused);
    fixture.server.shutdown().await;
}

#[tokio::test]
async fn malformed_datagrams_get_formerr_or_nothing() {
    let fixture = start(ServerConfig::default()).await;
    // Header announcing a question that is not there: FORMERR with the ID.
    let answer = raw_exchange(
        fixture.front,
        STRANGER,
        &[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0],
    )
    .await
    .expect("FORMERR");
    assert_eq!(&answer[..2], &[0x12, 0x34]);
    assert_eq!(answer[3] & 0x0f, 1);
    // A runt and a response: nothing.
    let quiet = Duration::from_millis(300);
    assert!(
        raw_exchange_within(fixture.front, STRANGER, &[1, 2, 3], quiet)
            .await
            .is_none()
    );
    let mut response = Message::new(5, MessageType::Response, OpCode::Query);
    response.add_query(Query::query(Name::from_str("web.").unwrap(), RecordType::A));
    assert!(
        raw_exchange_within(fixture.front, STRANGER, &response.to_vec().unwrap(), quiet)
            .await
            .is_none()
    );
    // Still answering.
    let mut client = udp_client(fixture.front, STRANGER);
    assert_eq!(
        data(&ask(&mut client, "web", RecordType::A).await),
        strings(&["10.0.1.2"])
    );
    fixture.server.shutdown().await;
}

#[tokio::test]
async fn a_flood_from_one_source_does_not_starve_another() {
    let fixture = start(ServerConfig {
        rate_limit: Some(RateLimit {
            per_second: 200.0,
            burst: 200.0,
        }),
        ..ServerConfig::default()
    })
    .await;
    let flooder = UdpSocket::bind(SocketAddr::new(STRANGER, 0)).await.unwrap();
    let query = build_query(7, "web", RecordType::A, None);
    let started = Instant::now();
    for _ in 0..5_000 {
        flooder.send_to(&query, fixture.front).await.unwrap();
    }
    // The other container still gets answers, promptly.
    let mut client = udp_client(fixture.front, OTHER_STRANGER);
    for _ in 0..20 {
        let asked = Instant::now();
        assert_eq!(
            data(&ask(&mut client, "web", RecordType::A).await),
            strings(&["10.0.1.2"])
        );
        assert!(asked.elapsed() < Duration::from_secs(2));
    }
    // The flooder got about its burst (plus what the rate refilled), the rest dropped.
    let mut answered = 0;
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), flooder.recv_from(&mut buf)).await
    {
        answered += 1;
    }
    let allowed = 200.0 + 200.0 * started.elapsed().as_secs_f64();
    assert!(answered >= 100, "the burst is answered ({answered})");
    assert!(
        f64::from(answered) <= allowed + 1.0,
        "{answered} answered, at most {allowed} allowed"
    );
    fixture.server.shutdown().await;
}

#[tokio::test]
async fn tcp_connections_are_bounded_and_idle_ones_closed() {
    let fixture = start(ServerConfig {
        max_tcp_connections: 2,
        tcp_idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    let mut first = TcpStream::connect(fixture.front).await.unwrap();
    let _second = TcpStream::connect(fixture.front).await.unwrap();
    // Let the server accept both before the third.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut third = TcpStream::connect(fixture.front).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the third connection is closed: {read:?}"
    );

    // The first still works...
    let query = build_query(9, "web", RecordType::A, None);
    let mut frame = (query.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&query);
    first.write_all(&frame).await.unwrap();
    let mut len = [0u8; 2];
    first.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    first.read_exact(&mut body).await.unwrap();
    // From 127.0.0.1, the container "client" on front and back: both VIPs.
    assert_eq!(
        sorted(data(&Message::from_vec(&body).unwrap())),
        strings(&["10.0.1.2", "10.0.2.2"])
    );
    // ...until it idles past the timeout.
    let read = tokio::time::timeout(Duration::from_secs(2), first.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection is closed: {read:?}"
    );

    // A half-sent query is dropped at the timeout too, and slots come back.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut slow = TcpStream::connect(fixture.front).await.unwrap();
    slow.write_all(&frame[..5]).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(2), slow.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    fixture.server.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_answering_and_frees_the_sockets() {
    let fixture = start(ServerConfig::default()).await;
    let query = build_query(3, "web", RecordType::A, None);
    assert!(raw_exchange(fixture.front, STRANGER, &query)
        .await
        .is_some());
    let (front, back) = (fixture.front, fixture.back);
    let stopped = Instant::now();
    fixture.server.shutdown().await;
    assert!(stopped.elapsed() < Duration::from_secs(3));
    // The ports can be bound again at once.
    let udp = std::net::UdpSocket::bind(front).unwrap();
    let _tcp = std::net::TcpListener::bind(front).unwrap();
    let _back = std::net::UdpSocket::bind(back).unwrap();
    drop(udp);
    let socket = UdpSocket::bind(SocketAddr::new(STRANGER, 0)).await.unwrap();
    socket.send_to(&query, front).await.unwrap();
    let mut buf = [0u8; 512];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_handler_also_serves_in_hickorys_server() {
    let upstream = start_upstream().await;
    let table = Arc::new(SharedTable::new(RecordTable::build(&state()).unwrap()));
    let handler = ShoalHandler::new(
        table,
        "front",
        Forwarder::new(ForwardConfig::new(vec![upstream.addr])),
        HandlerConfig::default(),
    );
    let mut server = hickory_server::Server::new(handler);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    server.register_socket(socket);
    let mut client = udp_client(addr, CLIENT);
    assert_eq!(
        sorted(data(&ask(&mut client, "db", RecordType::A).await)),
        strings(&["10.0.2.40", "10.0.2.41"])
    );
    assert_eq!(
        data(&ask(&mut client, "external.test", RecordType::A).await),
        strings(&["192.0.2.1"])
    );
    let answer = ask(&mut client, "nosuch.test", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    server.shutdown_gracefully().await.unwrap();
}
