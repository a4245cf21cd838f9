//! The embedded DNS server on one network: the first byte says how the rest arrived
//! (bit 0: over TCP; bits 1-2: which source: the container `client`, a task, a
//! stranger on the network, an IPv6 address), the rest is the message, handled as the
//! server's UDP and TCP loops do (`ShoalHandler::answer_local`, then the forward for a
//! name out of scope, with no upstream: SERVFAIL).

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use hickory_proto::op::{Message, MessageType};
use shoal_dns::forward::{ForwardConfig, Forwarder};
use shoal_dns::handler::{HandlerConfig, Outcome, ShoalHandler};
use shoal_dns::records::{DnsState, RecordTable, SharedTable};

struct Server {
    handler: ShoalHandler,
    runtime: tokio::runtime::Runtime,
}

static SERVER: OnceLock<Server> = OnceLock::new();

const SOURCES: [&str; 4] = ["10.0.1.50", "10.0.1.11", "10.0.1.99", "fd00::50"];

fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        let state: DnsState = serde_json::from_str(crate::DNS_JSON).expect("the DNS state");
        let table = RecordTable::build(&state).expect("a valid DNS state");
        Server {
            handler: ShoalHandler::new(
                Arc::new(SharedTable::new(table)),
                "front",
                // No upstream: a forward fails at once with SERVFAIL.
                Forwarder::new(ForwardConfig::new(vec![])),
                HandlerConfig::default(),
            ),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
        }
    })
}

/// One input, as libFuzzer hands it to the target: panics on a finding.
pub fn run(input: &[u8]) {
    let Some((&how, query)) = input.split_first() else {
        return;
    };
    let server = server();
    let over_tcp = how & 1 == 1;
    let src: IpAddr = SOURCES[usize::from((how >> 1) & 3)]
        .parse()
        .expect("an address");
    let answer = match server.handler.answer_local(query, src, over_tcp) {
        Outcome::Done(answer) => answer,
        Outcome::Forward(pending) => Some(server.runtime.block_on(server.handler.forward(pending))),
    };
    let Some(answer) = answer else {
        return;
    };
    // Nothing but a query is answered, and an answer is a well-formed response with the
    // query's ID.
    assert!(query.len() >= 12, "an answer to {} bytes", query.len());
    assert_eq!(query[2] & 0x80, 0, "an answer to a response");
    assert_eq!(answer[..2], query[..2], "the answer's ID");
    let message = Message::from_vec(&answer).expect("an answer that decodes");
    assert_eq!(message.metadata.message_type, MessageType::Response);
    if !over_tcp {
        let max = usize::from(server.handler.config().max_udp_payload);
        assert!(
            answer.len() <= max,
            "a UDP answer of {} bytes",
            answer.len()
        );
    } else {
        assert!(
            answer.len() <= usize::from(u16::MAX),
            "a TCP answer of {} bytes",
            answer.len()
        );
    }
}
