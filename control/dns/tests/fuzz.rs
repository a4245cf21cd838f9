//! Malformed, random and mutated-valid input, deterministic (a seeded xorshift, no
//! dependency): the resolver never panics, never hangs, answers every input with a
//! well-formed DNS error or answer (or drops it), and keeps answering valid queries.
//!
//! - `handler_survives_mutated_queries`: at least 100,000 inputs straight into
//!   [`ShoalHandler::handle`], each bounded by a timeout, every answer checked.
//! - `udp_server_survives_mutated_datagrams` and `tcp_server_survives_mutated_frames`:
//!   the same generator through the sockets, with a valid query from another source
//!   answered in between.
//!
//! `SHOAL_DNS_FUZZ_SEED` and `SHOAL_DNS_FUZZ_CASES` change the seed and the number of
//! handler inputs (a failure prints the seed, case number and input).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use shoal_dns::forward::{ForwardConfig, Forwarder};
use shoal_dns::handler::{build_query, HandlerConfig, ShoalHandler};
use shoal_dns::records::{
    Container, DnsState, EndpointMode, NetAddr, NetAlias, RecordTable, Service, SharedTable, Task,
};
mod common;

use shoal_dns::server::{DnsServer, NetworkListener, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const WATCHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));

/// xorshift64*: deterministic, fast, good enough to explore a parser.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

fn at(network: &str, ip: &str) -> NetAddr {
    NetAddr {
        network: network.to_string(),
        ip: ip.parse().unwrap(),
    }
}

fn state() -> DnsState {
    let tasks = (1..=40)
        .map(|i| Task {
            id: format!("t{i}"),
            slot: Some(i),
            healthy: i % 7 != 0,
            nameservers: Vec::new(),
            addresses: vec![at("front", &format!("10.0.1.{}", 10 + i))],
        })
        .collect();
    let mut api = Service {
        name: "api".to_string(),
        stack: Some("app".to_string()),
        endpoint_mode: EndpointMode::Vip,
        vips: vec![at("front", "10.0.1.3")],
        networks: vec![],
        aliases: Vec::new(),
        tasks: vec![],
    };
    api.tasks.push(Task {
        id: "a1".to_string(),
        slot: Some(1),
        healthy: true,
        nameservers: Vec::new(),
        addresses: vec![at("front", "10.0.1.200"), at("front", "fd00::200")],
    });
    DnsState {
        services: vec![
            Service {
                name: "web".to_string(),
                stack: None,
                endpoint_mode: EndpointMode::Vip,
                vips: vec![at("front", "10.0.1.2")],
                networks: vec![],
                aliases: Vec::new(),
                tasks,
            },
            Service {
                name: "db".to_string(),
                stack: None,
                endpoint_mode: EndpointMode::Dnsrr,
                vips: vec![],
                networks: vec!["back".to_string()],
                aliases: Vec::new(),
                tasks: vec![],
            },
            api,
        ],
        containers: vec![Container {
            name: "client".to_string(),
            addresses: vec![at("front", "127.0.0.1"), at("back", "10.0.2.9")],
            aliases: vec![NetAlias {
                network: "front".to_string(),
                alias: "me".to_string(),
            }],
        }],
    }
}

const NAMES: &[&str] = &[
    "web.",
    "WEB.",
    "tasks.web.",
    "web.1.t1.",
    "web.7.",
    "db.",
    "tasks.db.",
    "api.",
    "app_api.",
    "app_api.1.a1.",
    "client.",
    "me.",
    "2.1.0.10.in-addr.arpa.",
    "11.1.0.10.in-addr.arpa.",
    "0.0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
    "example.com.",
    "unknown.",
    ".",
    "in-addr.arpa.",
];

const TYPES: &[RecordType] = &[
    RecordType::A,
    RecordType::AAAA,
    RecordType::PTR,
    RecordType::ANY,
    RecordType::MX,
    RecordType::TXT,
    RecordType::SRV,
    RecordType::SOA,
    RecordType::AXFR,
    RecordType::OPT,
    RecordType::CNAME,
    RecordType::Unknown(65_000),
];

/// Valid queries of many shapes.
fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    let mut id = 0u16;
    for name in NAMES {
        for qtype in TYPES {
            for class in [DNSClass::IN, DNSClass::CH, DNSClass::ANY] {
                for edns in [None, Some(512u16), Some(1232), Some(65_535)] {
                    id = id.wrapping_add(1);
                    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
                    message.metadata.recursion_desired = id.is_multiple_of(2);
                    let mut query = Query::query(Name::from_ascii(name).unwrap(), *qtype);
                    query.set_query_class(class);
                    message.add_query(query);
                    if let Some(payload) = edns {
                        let mut opt = Edns::new();
                        opt.set_max_payload(payload)
                            .set_dnssec_ok(id.is_multiple_of(3));
                        message.set_edns(opt);
                    }
                    seeds.push(message.to_vec().unwrap());
                }
            }
        }
    }
    // Hand-made: a compressed question name pointing at itself, a name of 127 labels,
    // two questions, an answer section in a query.
    seeds.push(vec![
        0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
    ]);
    let mut long = vec![0, 2, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for _ in 0..127 {
        long.extend_from_slice(&[1, b'a']);
    }
    long.extend_from_slice(&[0, 0, 1, 0, 1]);
    seeds.push(long);
    let mut two = Message::new(3, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(
        Name::from_ascii("web.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("db.").unwrap(),
        RecordType::A,
    ));
    seeds.push(two.to_vec().unwrap());
    seeds
}

/// One input: a seed with 1-3 stacked mutations, or pure noise.
fn generate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.chance(12) {
        let len = rng.below(700);
        return (0..len).map(|_| rng.byte()).collect();
    }
    let mut input = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(3) {
        mutate(rng, &mut input, seeds);
    }
    input
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    match rng.below(11) {
        0 => {
            // Flip bits.
            for _ in 0..1 + rng.below(8) {
                if !input.is_empty() {
                    let i = rng.below(input.len());
                    input[i] ^= 1 << rng.below(8);
                }
            }
        }
        1 => {
            // Overwrite bytes, often with interesting values.
            for _ in 0..1 + rng.below(4) {
                if !input.is_empty() {
                    let i = rng.below(input.len());
                    const INTERESTING: [u8; 8] = [0, 0xff, 0xc0, 0x3f, 0x40, 0x80, 41, 63];
                    input[i] = if rng.chance(2) {
                        INTERESTING[rng.below(INTERESTING.len())]
                    } else {
                        rng.byte()
                    };
                }
            }
        }
        2 => {
            let len = rng.below(input.len() + 1);
            input.truncate(len);
        }
        3 => {
            for _ in 0..1 + rng.below(64) {
                input.push(rng.byte());
            }
        }
        4 => {
            let at = rng.below(input.len() + 1);
            let noise: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.byte()).collect();
            input.splice(at..at, noise);
        }
        5 => {
            // Splice: our head, another seed's tail.
            let other = &seeds[rng.below(seeds.len())];
            let head = rng.below(input.len() + 1);
            let tail = rng.below(other.len() + 1);
            input.truncate(head);
            input.extend_from_slice(&other[tail..]);
        }
        6 => {
            // Section counts.
            if input.len() >= 12 {
                let field = 4 + 2 * rng.below(4);
                let value: u16 = match rng.below(4) {
                    0 => 0,
                    1 => 0xffff,
                    2 => rng.below(4) as u16,
                    _ => rng.next() as u16,
                };
                input[field..field + 2].copy_from_slice(&value.to_be_bytes());
            }
        }
        7 => {
            // A compression pointer anywhere, often to itself or forward.
            if input.len() >= 14 {
                let i = 12 + rng.below(input.len() - 13);
                let target = if rng.chance(2) {
                    i
                } else {
                    rng.below(input.len() + 8)
                };
                input[i] = 0xc0 | ((target >> 8) as u8 & 0x3f);
                input[i + 1] = target as u8;
            }
        }
        8 => {
            // Flags: opcode, QR, TC, Z, rcode.
            if input.len() >= 4 {
                input[2] = rng.byte();
                input[3] = rng.byte();
            }
        }
        9 => {
            // An OPT record with random fields in the additional section.
            input.extend_from_slice(&[0, 0, 41]);
            for _ in 0..6 {
                input.push(rng.byte());
            }
            let rdlen = rng.below(20) as u16;
            input.extend_from_slice(&rdlen.to_be_bytes());
            for _ in 0..rng.below(24) {
                input.push(rng.byte());
            }
            if input.len() >= 12 {
                let arcount = u16::from_be_bytes([input[10], input[11]]).wrapping_add(1);
                input[10..12].copy_from_slice(&arcount.to_be_bytes());
            }
        }
        _ => {
            // Oversize: many labels.
            let at = 12.min(input.len());
            let labels: Vec<u8> = (0..rng.below(400))
                .flat_map(|_| [3, b'a', b'b', b'c'])
                .collect();
            input.splice(at..at, labels);
        }
    }
}

/// What every answer must be: at least a header, our ID, QR set, the query's opcode,
/// a parsable message when it was built here, and within the UDP size.
fn check_answer(
    input: &[u8],
    answer: &[u8],
    over_tcp: bool,
    relayed_ok: bool,
) -> Result<(), String> {
    if answer.len() < 12 {
        return Err(format!("answer of {} bytes", answer.len()));
    }
    if answer[..2] != input[..2] {
        return Err("answer ID differs from the query's".to_string());
    }
    if answer[2] & 0x80 == 0 {
        return Err("answer without QR".to_string());
    }
    if (answer[2] >> 3) & 0x0f != (input[2] >> 3) & 0x0f {
        return Err("answer opcode differs from the query's".to_string());
    }
    if !over_tcp {
        let limit = match Message::from_vec(input) {
            Ok(message) => message
                .edns
                .map_or(512, |edns| usize::from(edns.max_payload()).clamp(512, 4096)),
            Err(_) => 512,
        };
        if answer.len() > limit {
            return Err(format!("UDP answer of {} bytes over {limit}", answer.len()));
        }
    }
    if !relayed_ok {
        Message::from_vec(answer).map_err(|e| format!("answer does not parse: {e}"))?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fake upstream that answers any query by echoing it as a response (QR and RA set,
/// random rcode and TC), sometimes with random bytes appended.
async fn echo_upstream(seed: u64) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut rng = Rng::new(seed);
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, src)) = socket.recv_from(&mut buf).await {
            let mut answer = buf[..len].to_vec();
            if answer.len() >= 4 {
                answer[2] |= 0x80;
                if rng.chance(4) {
                    answer[2] |= 0x02;
                }
                answer[3] = 0x80 | [0u8, 3, 0, 5, 2][rng.below(5)];
            }
            if rng.chance(3) {
                for _ in 0..rng.below(5_000) {
                    answer.push(rng.byte());
                }
            }
            let _ = socket.send_to(&answer, src).await;
        }
    });
    addr
}

fn a_records(message: &Message) -> Vec<IpAddr> {
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_survives_mutated_queries() {
    let seed = env_u64("SHOAL_DNS_FUZZ_SEED", DEFAULT_SEED);
    let cases = env_u64("SHOAL_DNS_FUZZ_CASES", 200_000);
    let table = Arc::new(SharedTable::new(RecordTable::build(&state()).unwrap()));
    // Most inputs: no upstream (a forward fails at once). One in 25: a real forward to
    // an upstream that echoes queries back with noise.
    let offline = ShoalHandler::new(
        table.clone(),
        "front",
        Forwarder::new(ForwardConfig::new(vec![])),
        HandlerConfig::default(),
    );
    let online = ShoalHandler::new(
        table,
        "front",
        Forwarder::new(ForwardConfig {
            upstreams: vec![echo_upstream(seed ^ 0xabcd).await],
            timeout: Duration::from_millis(500),
            max_in_flight: 64,
        }),
        HandlerConfig::default(),
    );
    let seeds = seeds();
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let (mut answered, mut dropped, mut forwarded) = (0u64, 0u64, 0u64);
    for case in 0..cases {
        let input = generate(&mut rng, &seeds);
        let over_tcp = rng.chance(4);
        let src = if rng.chance(2) { CLIENT } else { STRANGER };
        let use_upstream = rng.chance(25);
        let handler = if use_upstream { &online } else { &offline };
        let outcome = tokio::time::timeout(
            Duration::from_secs(5),
            std::panic::AssertUnwindSafe(handler.handle(&input, src, over_tcp)).catch_unwind(),
        )
        .await;
        let fail = |why: String| -> ! {
            panic!(
                "seed {seed:#x} case {case} (tcp {over_tcp}, upstream {use_upstream}): {why}\ninput {}",
                hex(&input)
            )
        };
        match outcome {
            Err(_) => fail("no answer within 5 s".to_string()),
            Ok(Err(_)) => fail("the handler panicked".to_string()),
            Ok(Ok(None)) => dropped += 1,
            Ok(Ok(Some(answer))) => {
                answered += 1;
                if use_upstream {
                    forwarded += 1;
                }
                if let Err(why) = check_answer(&input, &answer, over_tcp, use_upstream) {
                    fail(format!("{why}\nanswer {}", hex(&answer)));
                }
            }
        }
    }
    println!(
        "{cases} inputs in {:?}: {answered} answered ({forwarded} via the upstream), {dropped} dropped",
        started.elapsed()
    );
    assert!(answered > cases / 2, "most inputs get an answer");

    // Still answering correctly.
    for handler in [&offline, &online] {
        let answer = handler
            .handle(
                &build_query(0x7777, "web", RecordType::A, None),
                CLIENT,
                false,
            )
            .await
            .unwrap();
        let message = Message::from_vec(&answer).unwrap();
        assert_eq!(message.metadata.id, 0x7777);
        assert_eq!(
            a_records(&message),
            vec![IpAddr::V4(Ipv4Addr::new(10, 0, 1, 2))]
        );
    }
}

const DEFAULT_SEED: u64 = 0x5e0a_1d45_0000_0007;

fn listener(ip: &str) -> NetworkListener {
    common::listener(ip, "front")
}

async fn start_server(config: ServerConfig) -> (DnsServer, SocketAddr) {
    let table = Arc::new(SharedTable::new(RecordTable::build(&state()).unwrap()));
    let server = DnsServer::serve(
        vec![listener("127.0.0.1")],
        table,
        Forwarder::new(ForwardConfig::new(vec![])),
        config,
    )
    .unwrap();
    let addr = server.served()[0].udp;
    (server, addr)
}

/// A valid query from another source is answered within a second.
async fn still_answering(server: SocketAddr) {
    let socket = UdpSocket::bind(SocketAddr::new(WATCHER, 0)).await.unwrap();
    let query = build_query(0x4321, "tasks.web", RecordType::A, Some(1232));
    let mut buf = vec![0u8; 4096];
    for attempt in 0..3 {
        socket.send_to(&query, server).await.unwrap();
        if let Ok(Ok((len, _))) =
            tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf)).await
        {
            let message = Message::from_vec(&buf[..len]).unwrap();
            assert_eq!(message.metadata.id, 0x4321);
            assert_eq!(a_records(&message).len(), 35, "40 tasks, 5 unhealthy");
            return;
        }
        eprintln!("valid query unanswered (attempt {attempt})");
    }
    panic!("the server stopped answering valid queries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_server_survives_mutated_datagrams() {
    let (server, addr) = start_server(ServerConfig {
        rate_limit: None,
        ..ServerConfig::default()
    })
    .await;
    let seeds = seeds();
    let mut rng = Rng::new(0x0dd_ba11);
    let socket = UdpSocket::bind(SocketAddr::new(STRANGER, 0)).await.unwrap();
    let mut ids = HashSet::new();
    let mut buf = vec![0u8; 65_536];
    let mut answers = 0;
    for batch in 0..100 {
        for _ in 0..200 {
            let mut input = generate(&mut rng, &seeds);
            input.truncate(65_000);
            if input.len() >= 2 {
                ids.insert([input[0], input[1]]);
            }
            socket.send_to(&input, addr).await.unwrap();
        }
        // Collect what came back for this batch.
        while let Ok(Ok((len, _))) =
            tokio::time::timeout(Duration::from_millis(20), socket.recv_from(&mut buf)).await
        {
            let answer = &buf[..len];
            assert!(answer.len() >= 12, "answer of {len} bytes");
            assert!(answer[2] & 0x80 != 0, "answers have QR set");
            assert!(
                ids.contains(&[answer[0], answer[1]]),
                "answer to an ID never sent"
            );
            assert!(len <= 4096, "UDP answer of {len} bytes");
            answers += 1;
        }
        if batch % 10 == 9 {
            still_answering(addr).await;
        }
    }
    println!("{answers} answers to 20,000 datagrams");
    // About 1 in 6 inputs is dropped by design (runts, responses); the kernel may drop
    // some more when the receive buffer fills.
    assert!(answers > 10_000, "{answers} answers to 20,000 datagrams");
    still_answering(addr).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_server_survives_mutated_frames() {
    let idle = Duration::from_millis(300);
    let (server, addr) = start_server(ServerConfig {
        tcp_idle_timeout: idle,
        ..ServerConfig::default()
    })
    .await;
    let seeds = Arc::new(seeds());
    for batch in 0..10u64 {
        let mut connections = Vec::new();
        for c in 0..20u64 {
            let seeds = seeds.clone();
            connections.push(tokio::spawn(async move {
                let mut rng = Rng::new(batch * 1_000 + c + 1);
                let mut stream = TcpStream::connect(addr).await.unwrap();
                for _ in 0..1 + rng.below(5) {
                    let input = generate(&mut rng, &seeds);
                    let mut frame = Vec::new();
                    // Usually the true length; sometimes a lie (longer or shorter).
                    let len = match rng.below(6) {
                        0 => rng.next() as u16,
                        _ => input.len().min(65_535) as u16,
                    };
                    frame.extend_from_slice(&len.to_be_bytes());
                    frame.extend_from_slice(&input[..input.len().min(65_535)]);
                    if stream.write_all(&frame).await.is_err() {
                        return;
                    }
                    // An answer, or the connection closed, within the idle bound (plus
                    // slack): never a hang.
                    let mut len = [0u8; 2];
                    match tokio::time::timeout(idle * 4, stream.read_exact(&mut len)).await {
                        Err(_) => panic!("no answer and no close within {:?}", idle * 4),
                        Ok(Err(_)) => return,
                        Ok(Ok(_)) => {}
                    }
                    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    match tokio::time::timeout(idle * 4, stream.read_exact(&mut body)).await {
                        Err(_) => panic!("half an answer"),
                        Ok(Err(_)) => return,
                        Ok(Ok(_)) => {
                            assert!(body.len() >= 12);
                            assert!(body[2] & 0x80 != 0);
                        }
                    }
                }
            }));
        }
        for connection in connections {
            connection.await.unwrap();
        }
    }
    still_answering(addr).await;
    server.shutdown().await;
}
