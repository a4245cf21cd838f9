use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::Query;
use hickory_proto::rr::DNSClass;

use super::*;
use crate::forward::ForwardConfig;
use crate::records::{Container, DnsState, EndpointMode, NetAddr, RecordTable, Service, Task};

fn at(network: &str, ip: &str) -> NetAddr {
    NetAddr {
        network: network.to_string(),
        ip: ip.parse().unwrap(),
    }
}

/// web (vip, 3 tasks on front), db (dnsrr on back, 2 tasks, one with IPv6), big (dnsrr,
/// 200 tasks on front), a container "client" on front and back.
fn state() -> DnsState {
    let web_tasks = (1..=3)
        .map(|i| Task {
            id: format!("w{i}"),
            slot: Some(i),
            healthy: true,
            nameservers: Vec::new(),
            addresses: vec![at("front", &format!("10.0.1.{}", 10 + i))],
        })
        .collect();
    let big_tasks = (0..200)
        .map(|i| Task {
            id: format!("b{i}"),
            slot: Some(i + 1),
            healthy: true,
            nameservers: Vec::new(),
            addresses: vec![at(
                "front",
                &format!("10.0.{}.{}", 100 + i / 200, 1 + i % 200),
            )],
        })
        .collect();
    DnsState {
        services: vec![
            Service {
                name: "web".to_string(),
                stack: None,
                endpoint_mode: EndpointMode::Vip,
                vips: vec![at("front", "10.0.1.2")],
                networks: vec![],
                aliases: Vec::new(),
                tasks: web_tasks,
            },
            Service {
                name: "db".to_string(),
                stack: None,
                endpoint_mode: EndpointMode::Dnsrr,
                vips: vec![],
                networks: vec![],
                aliases: Vec::new(),
                tasks: vec![
                    Task {
                        id: "d1".to_string(),
                        slot: Some(1),
                        healthy: true,
                        nameservers: Vec::new(),
                        addresses: vec![at("back", "10.0.2.10"), at("back", "fd00::10")],
                    },
                    Task {
                        id: "d2".to_string(),
                        slot: Some(2),
                        healthy: true,
                        nameservers: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53))],
                        addresses: vec![at("back", "10.0.2.11")],
                    },
                ],
            },
            Service {
                name: "big".to_string(),
                stack: None,
                endpoint_mode: EndpointMode::Dnsrr,
                vips: vec![],
                networks: vec![],
                aliases: Vec::new(),
                tasks: big_tasks,
            },
        ],
        containers: vec![Container {
            name: "client".to_string(),
            addresses: vec![at("front", "10.0.1.50"), at("back", "10.0.2.50")],
            aliases: vec![],
        }],
    }
}

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 50));
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 99));

fn handler(config: HandlerConfig) -> ShoalHandler {
    let table = Arc::new(SharedTable::new(RecordTable::build(&state()).unwrap()));
    // No upstream: every forward fails at once with SERVFAIL.
    let forwarder = Forwarder::new(ForwardConfig::new(vec![]));
    ShoalHandler::new(table, "front", forwarder, config)
}

fn query_message(id: u16, name: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message
}

async fn ask(handler: &ShoalHandler, query: &[u8], src: IpAddr, over_tcp: bool) -> Message {
    let answer = handler
        .handle(query, src, over_tcp)
        .await
        .expect("an answer");
    Message::from_vec(&answer).expect("the answer parses")
}

async fn ask_udp(handler: &ShoalHandler, name: &str, qtype: RecordType) -> Message {
    ask(
        handler,
        &build_query(0x1234, name, qtype, None),
        CLIENT,
        false,
    )
    .await
}

fn addresses(message: &Message) -> Vec<IpAddr> {
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn local_answers_are_authoritative_with_the_default_ttl() {
    let h = handler(HandlerConfig::default());
    let answer = ask_udp(&h, "web", RecordType::A).await;
    assert_eq!(answer.metadata.id, 0x1234);
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.metadata.authoritative);
    assert!(answer.metadata.recursion_desired && answer.metadata.recursion_available);
    assert!(!answer.metadata.truncation);
    assert_eq!(
        addresses(&answer),
        vec!["10.0.1.2".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(answer.answers[0].ttl, DEFAULT_TTL);
    assert_eq!(DEFAULT_TTL, 5);
    assert_eq!(answer.queries.len(), 1);
    assert!(answer.edns.is_none(), "no OPT without one in the query");
}

#[tokio::test]
async fn the_ttl_is_configurable() {
    let h = handler(HandlerConfig {
        ttl: 30,
        ..HandlerConfig::default()
    });
    let answer = ask_udp(&h, "tasks.web", RecordType::A).await;
    assert_eq!(answer.answers.len(), 3);
    assert!(answer.answers.iter().all(|r| r.ttl == 30));
}

#[tokio::test]
async fn the_question_and_owner_keep_the_askers_case() {
    let h = handler(HandlerConfig::default());
    let answer = ask_udp(&h, "WeB.", RecordType::A).await;
    assert_eq!(answer.queries[0].name().to_ascii(), "WeB.");
    assert_eq!(answer.answers[0].name.to_ascii(), "WeB.");
    assert_eq!(addresses(&answer).len(), 1);
}

#[tokio::test]
async fn repeated_queries_rotate_the_answers() {
    let h = handler(HandlerConfig::default());
    let mut firsts = HashSet::new();
    let mut orders = Vec::new();
    for _ in 0..6 {
        let answer = ask_udp(&h, "tasks.web", RecordType::A).await;
        let list = addresses(&answer);
        assert_eq!(list.len(), 3);
        firsts.insert(list[0]);
        orders.push(list);
    }
    assert_eq!(
        firsts.len(),
        3,
        "every task comes first in turn: {orders:?}"
    );
    // Rotation, not shuffling: each order is a rotation of the table's order.
    for order in &orders {
        let mut sorted = order.clone();
        sorted.sort();
        let start = order.iter().position(|ip| *ip == sorted[0]).unwrap();
        let mut rotated = order.clone();
        rotated.rotate_left(start);
        assert_eq!(rotated, sorted);
    }
}

#[tokio::test]
async fn nodata_is_an_empty_noerror_answer() {
    let h = handler(HandlerConfig::default());
    for qtype in [
        RecordType::AAAA,
        RecordType::MX,
        RecordType::TXT,
        RecordType::SRV,
    ] {
        let answer = ask_udp(&h, "web", qtype).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{qtype}"
        );
        assert!(answer.metadata.authoritative);
        assert!(answer.answers.is_empty() && answer.authorities.is_empty());
    }
}

#[tokio::test]
async fn scope_follows_the_source_address() {
    let h = handler(HandlerConfig::default());
    // client is on front and back: db (back only) answers through front's socket.
    let answer = ask(
        &h,
        &build_query(1, "db", RecordType::A, None),
        CLIENT,
        false,
    )
    .await;
    assert_eq!(addresses(&answer).len(), 2);
    let answer = ask(
        &h,
        &build_query(1, "db", RecordType::AAAA, None),
        CLIENT,
        false,
    )
    .await;
    assert_eq!(
        addresses(&answer),
        vec![IpAddr::V6("fd00::10".parse::<Ipv6Addr>().unwrap())]
    );
    // An unknown source sees front only: db is not ours there, so it is forwarded, and
    // with no upstream that is SERVFAIL.
    let answer = ask(
        &h,
        &build_query(1, "db", RecordType::A, None),
        STRANGER,
        false,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    let answer = ask(
        &h,
        &build_query(1, "web", RecordType::A, None),
        STRANGER,
        false,
    )
    .await;
    assert_eq!(addresses(&answer).len(), 1);
}

#[tokio::test]
async fn unknown_names_are_forwarded_and_a_failed_forward_is_servfail() {
    let h = handler(HandlerConfig::default());
    let answer = ask(
        &h,
        &build_query(0xbeef, "example.com", RecordType::A, Some(1232)),
        CLIENT,
        false,
    )
    .await;
    assert_eq!(answer.metadata.id, 0xbeef);
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(answer.queries[0].name().to_ascii(), "example.com.");
    assert!(answer.edns.is_some(), "OPT kept on errors");
}

#[test]
fn a_task_with_its_own_resolvers_has_unknown_names_forwarded_there() {
    // Answering on back, where d1 and d2 are.
    let table = Arc::new(SharedTable::new(RecordTable::build(&state()).unwrap()));
    let forwarder = Forwarder::new(ForwardConfig::new(vec![]));
    let h = ShoalHandler::new(table, "back", forwarder, HandlerConfig::default());
    let query = build_query(7, "example.com", RecordType::A, None);
    let upstreams = |src: &str| match h.answer_local(&query, src.parse().unwrap(), false) {
        Outcome::Forward(pending) => pending.upstreams,
        Outcome::Done(answer) => panic!("answered locally: {answer:?}"),
    };
    // d2 (`--dns 192.0.2.53`), asking on its network.
    assert_eq!(
        upstreams("10.0.2.11"),
        Some(vec![SocketAddr::new(
            Ipv4Addr::new(192, 0, 2, 53).into(),
            53
        )])
    );
    // Its neighbour without resolvers of its own, and a stranger: the node's upstreams.
    assert_eq!(upstreams("10.0.2.10"), None);
    assert_eq!(upstreams("10.0.2.99"), None);
    // The cluster's own names are still answered locally.
    let local = build_query(8, "db", RecordType::A, None);
    assert!(matches!(
        h.answer_local(&local, "10.0.2.11".parse().unwrap(), false),
        Outcome::Done(Some(_))
    ));
}

#[tokio::test]
async fn ptr_answers_name_the_task() {
    let h = handler(HandlerConfig::default());
    let answer = ask_udp(&h, "11.1.0.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(answer.answers.len(), 1);
    match &answer.answers[0].data {
        RData::PTR(ptr) => assert_eq!(ptr.0.to_ascii(), "web.1.w1."),
        other => panic!("not a PTR: {other:?}"),
    }
    let answer = ask_udp(&h, "2.1.0.10.in-addr.arpa", RecordType::PTR).await;
    match &answer.answers[0].data {
        RData::PTR(ptr) => assert_eq!(ptr.0.to_ascii(), "web."),
        other => panic!("not a PTR: {other:?}"),
    }
}

#[tokio::test]
async fn any_answers_what_the_name_has() {
    let h = handler(HandlerConfig::default());
    let answer = ask_udp(&h, "db.1.d1", RecordType::ANY).await;
    assert_eq!(addresses(&answer).len(), 2);
}

fn with_class(class: DNSClass) -> Vec<u8> {
    let mut message = query_message(7, "web", RecordType::A);
    message.queries[0].set_query_class(class);
    message.to_vec().unwrap()
}

#[tokio::test]
async fn other_classes_and_zone_transfers_are_refused() {
    let h = handler(HandlerConfig::default());
    for class in [DNSClass::CH, DNSClass::HS, DNSClass::ANY, DNSClass::NONE] {
        let answer = ask(&h, &with_class(class), CLIENT, false).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::Refused,
            "{class:?}"
        );
        assert_eq!(answer.metadata.id, 7);
        assert!(answer.answers.is_empty());
    }
    for qtype in [RecordType::AXFR, RecordType::IXFR] {
        let query = query_message(8, "web", qtype).to_vec().unwrap();
        let answer = ask(&h, &query, CLIENT, true).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::Refused,
            "{qtype}"
        );
    }
}

#[tokio::test]
async fn other_opcodes_are_notimp() {
    let h = handler(HandlerConfig::default());
    for op_code in [OpCode::Notify, OpCode::Update, OpCode::Status] {
        let mut message = query_message(9, "web", RecordType::A);
        message.metadata.op_code = op_code;
        let answer = ask(&h, &message.to_vec().unwrap(), CLIENT, false).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NotImp,
            "{op_code:?}"
        );
        assert_eq!(answer.metadata.id, 9);
        assert_eq!(answer.metadata.op_code, op_code);
    }
}

#[tokio::test]
async fn responses_and_runts_are_dropped() {
    let h = handler(HandlerConfig::default());
    let mut response = query_message(10, "web", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    assert!(h
        .handle(&response.to_vec().unwrap(), CLIENT, false)
        .await
        .is_none());
    for len in 0..12 {
        assert!(h.handle(&vec![0u8; len], CLIENT, false).await.is_none());
    }
}

#[tokio::test]
async fn malformed_queries_are_formerr() {
    let h = handler(HandlerConfig::default());
    // A header announcing a question that is not there.
    let mut bytes = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let answer = ask(&h, &bytes, CLIENT, false).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(answer.metadata.id, 0xabcd);
    // A label running past the end.
    bytes.extend_from_slice(&[5, b'a', b'b']);
    let answer = ask(&h, &bytes, CLIENT, false).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);

    // No question, and two questions.
    let none = Message::new(11, MessageType::Query, OpCode::Query);
    let answer = ask(&h, &none.to_vec().unwrap(), CLIENT, false).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    let mut two = query_message(12, "web", RecordType::A);
    two.add_query(Query::query(Name::from_ascii("db").unwrap(), RecordType::A));
    let answer = ask(&h, &two.to_vec().unwrap(), CLIENT, false).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(answer.metadata.id, 12);
}

#[tokio::test]
async fn trailing_bytes_after_a_query_are_ignored() {
    let h = handler(HandlerConfig::default());
    let mut query = build_query(13, "web", RecordType::A, None);
    query.extend_from_slice(b"trailing garbage");
    let answer = ask(&h, &query, CLIENT, false).await;
    assert_eq!(addresses(&answer).len(), 1);
}

#[tokio::test]
async fn edns_is_answered_with_edns() {
    let h = handler(HandlerConfig::default());
    let mut message = query_message(14, "web", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(1232).set_dnssec_ok(true);
    message.set_edns(edns);
    let answer = ask(&h, &message.to_vec().unwrap(), CLIENT, false).await;
    let edns = answer.edns.clone().expect("OPT in the answer");
    assert_eq!(edns.version(), 0);
    assert_eq!(edns.max_payload(), DEFAULT_MAX_UDP_PAYLOAD);
    assert!(edns.flags().dnssec_ok, "DO echoed");
    assert_eq!(addresses(&answer).len(), 1);
}

#[tokio::test]
async fn unknown_edns_versions_are_badvers() {
    let h = handler(HandlerConfig::default());
    let mut message = query_message(15, "web", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(1232).set_version(1);
    message.set_edns(edns);
    let answer = ask(&h, &message.to_vec().unwrap(), CLIENT, false).await;
    // BADVERS and BADSIG share the value 16; hickory decodes it as the latter.
    assert_eq!(u16::from(answer.metadata.response_code), 16);
    assert_eq!(
        answer
            .edns
            .expect("OPT carries the extended code")
            .version(),
        0
    );
}

#[tokio::test]
async fn big_answers_are_truncated_to_the_clients_udp_size() {
    let h = handler(HandlerConfig::default());
    // 200 addresses: about 3.2 kB.
    let plain = ask(
        &h,
        &build_query(16, "big", RecordType::A, None),
        CLIENT,
        false,
    )
    .await;
    assert!(plain.metadata.truncation, "512 bytes without EDNS");
    assert!(plain.answers.is_empty());
    assert_eq!(plain.queries.len(), 1);
    assert!(plain.metadata.authoritative);

    let small = h
        .handle(
            &build_query(17, "big", RecordType::A, Some(1232)),
            CLIENT,
            false,
        )
        .await
        .unwrap();
    assert!(small.len() <= 1232);
    let small = Message::from_vec(&small).unwrap();
    assert!(small.metadata.truncation);
    assert!(small.edns.is_some(), "OPT kept when truncating");

    let large = ask(
        &h,
        &build_query(18, "big", RecordType::A, Some(4096)),
        CLIENT,
        false,
    )
    .await;
    assert!(!large.metadata.truncation);
    assert_eq!(large.answers.len(), 200);

    // A client advertising more than the server's maximum gets the server's maximum.
    let h_small = handler(HandlerConfig {
        max_udp_payload: 1232,
        ..HandlerConfig::default()
    });
    let capped = ask(
        &h_small,
        &build_query(19, "big", RecordType::A, Some(65000)),
        CLIENT,
        false,
    )
    .await;
    assert!(capped.metadata.truncation);
    assert_eq!(capped.edns.unwrap().max_payload(), 1232);

    // A payload size below 512 counts as 512: web still fits.
    let tiny = ask(
        &h,
        &build_query(20, "web", RecordType::A, Some(100)),
        CLIENT,
        false,
    )
    .await;
    assert!(!tiny.metadata.truncation);
    assert_eq!(tiny.answers.len(), 1);

    let tcp = ask(
        &h,
        &build_query(21, "big", RecordType::A, None),
        CLIENT,
        true,
    )
    .await;
    assert!(!tcp.metadata.truncation, "TCP answers are never truncated");
    assert_eq!(tcp.answers.len(), 200);
}

#[tokio::test]
async fn table_updates_show_in_the_next_answer() {
    let table = Arc::new(SharedTable::new(RecordTable::build(&state()).unwrap()));
    let h = ShoalHandler::new(
        table.clone(),
        "front",
        Forwarder::new(ForwardConfig::new(vec![])),
        HandlerConfig::default(),
    );
    assert_eq!(
        addresses(&ask_udp(&h, "tasks.web", RecordType::A).await).len(),
        3
    );
    let mut state = state();
    state.services[0].tasks.pop();
    table.update(&state).unwrap();
    let answer = ask_udp(&h, "tasks.web", RecordType::A).await;
    assert_eq!(addresses(&answer).len(), 2);
    assert!(!addresses(&answer).contains(&"10.0.1.13".parse::<IpAddr>().unwrap()));
}
