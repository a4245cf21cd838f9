//! Answers one DNS query: names in the asking container's scope from the record table,
//! everything else through the [`Forwarder`].
//!
//! [`ShoalHandler::handle`] takes a query in wire format and returns the answer in wire
//! format (or nothing, when the input must be dropped); [`crate::server`] drives it from
//! its sockets. It also implements hickory-server's [`RequestHandler`], so it can be
//! mounted in a [`hickory_server::Server`] too (there, forwarded answers are decoded and
//! re-encoded by hickory rather than relayed byte for byte).
//!
//! What a query gets:
//!
//! | query | answer |
//! |---|---|
//! | shorter than a header, or a response (QR set) | dropped (no reflection loops) |
//! | opcode other than QUERY | NOTIMP |
//! | unparsable, or not exactly one question | FORMERR |
//! | EDNS version other than 0 | BADVERS (RFC 6891) |
//! | class other than IN (CH, HS, ANY...) | REFUSED |
//! | AXFR, IXFR | REFUSED (no zones to transfer) |
//! | a name in scope, A/AAAA/PTR | the records, authoritative, TTL [`HandlerConfig::ttl`], rotated |
//! | a name in scope, ANY | every record the name has (A, AAAA or PTR) |
//! | a name in scope, any other type | NODATA: NOERROR, no records, no SOA |
//! | a name not in scope | forwarded as received (to the asking task's own `--dns` resolvers when it has some, else the node's upstreams); the upstream's answer relayed with the client's ID |
//! | forwarding fails (timeout, busy, no upstream) | SERVFAIL |
//!
//! Every answer echoes the question and carries an OPT record when the query did. Over
//! UDP a local answer larger than the client's EDNS payload size (512 bytes without
//! EDNS; at most [`HandlerConfig::max_udp_payload`]) is replaced by an empty answer with
//! TC set, and the client retries over TCP. A forwarded UDP answer larger than that
//! limit is replaced the same way; otherwise upstream answers, TC bit included, are
//! relayed untouched.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::forward::Forwarder;
use crate::records::{Lookup, RecordData, SharedTable};

/// Default TTL of local answers, in seconds: short, so that a client re-asks soon after
/// a task is gone (Swarm's 600 s is the fault this avoids).
pub const DEFAULT_TTL: u32 = 5;
/// Default largest UDP answer, whatever a client advertises. The resolver and its
/// clients share a node, so fragments never cross the underlay.
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 4096;
/// The largest DNS message without EDNS (RFC 1035 4.2.1).
const PLAIN_UDP_PAYLOAD: u16 = 512;

/// How a [`ShoalHandler`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerConfig {
    /// TTL of local answers, in seconds.
    pub ttl: u32,
    /// The largest UDP answer, and the payload size advertised in answers' OPT records.
    pub max_udp_payload: u16,
}

impl Default for HandlerConfig {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD,
        }
    }
}

/// The resolver for one network: the queries arriving on that network's sockets.
#[derive(Debug)]
pub struct ShoalHandler {
    table: Arc<SharedTable>,
    network: String,
    forwarder: Forwarder,
    config: HandlerConfig,
    /// Advances on each local answer with more than one record, so that repeated queries
    /// get the records in rotated order and clients spread over tasks.
    rotation: AtomicUsize,
}

impl ShoalHandler {
    /// A handler answering from `table` for queries arriving on `network`'s socket.
    pub fn new(
        table: Arc<SharedTable>,
        network: impl Into<String>,
        forwarder: Forwarder,
        config: HandlerConfig,
    ) -> Self {
        Self {
            table,
            network: network.into(),
            forwarder,
            config,
            rotation: AtomicUsize::new(0),
        }
    }

    /// The network whose queries this handler answers.
    pub fn network(&self) -> &str {
        &self.network
    }

    pub fn config(&self) -> &HandlerConfig {
        &self.config
    }

    /// Answers `query` (wire format) from `src`, which arrived over TCP when `over_tcp`.
    /// Returns the answer in wire format, or `None` when the input is dropped (see the
    /// module docs). Never panics on any input.
    pub async fn handle(&self, query: &[u8], src: IpAddr, over_tcp: bool) -> Option<Vec<u8>> {
        match self.answer_local(query, src, over_tcp) {
            Outcome::Done(answer) => answer,
            Outcome::Forward(pending) => Some(self.forward(pending).await),
        }
    }

    /// The part of [`Self::handle`] that needs no waiting: the answer, or the query to
    /// forward ([`Self::forward`]). Servers answer local names inline and only spawn
    /// forwards.
    pub fn answer_local(&self, query: &[u8], src: IpAddr, over_tcp: bool) -> Outcome {
        let request = match self.parse(query) {
            Parsed::Drop => return Outcome::Done(None),
            Parsed::Reply(answer) => return Outcome::Done(Some(answer)),
            Parsed::Query(request) => request,
        };
        let limit = self.size_limit(&request.message, over_tcp);
        let question = &request.message.queries[0];

        let table = self.table.load();
        let scope = table.scope(&self.network, src);
        let name = question.name().to_ascii();
        match table.lookup(&name, question.query_type(), &scope) {
            Lookup::Found(records) => {
                Outcome::Done(Some(self.local_answer(&request.message, records, limit)))
            }
            Lookup::NoData => {
                Outcome::Done(Some(self.local_answer(&request.message, Vec::new(), limit)))
            }
            Lookup::NxDomain => {
                // Bytes after the message (if any) are not part of it.
                let length = request.length.min(query.len());
                // A task with resolvers of its own (`--dns`) has its names asked there.
                let upstreams = table.nameservers(&self.network, src).map(|servers| {
                    servers
                        .iter()
                        .map(|ip| SocketAddr::new(*ip, DNS_PORT))
                        .collect()
                });
                Outcome::Forward(Pending {
                    query: query[..length].to_vec(),
                    message: request.message,
                    over_tcp,
                    limit,
                    upstreams,
                })
            }
        }
    }

    /// Checks everything that does not need the table.
    fn parse(&self, query: &[u8]) -> Parsed {
        if query.len() < 12 || query[2] & 0x80 != 0 {
            return Parsed::Drop;
        }
        let op_code = (query[2] >> 3) & 0x0f;
        if op_code != 0 {
            return Parsed::Reply(raw_error(query, ResponseCode::NotImp));
        }
        let mut decoder = BinDecoder::new(query);
        let message = match Message::read(&mut decoder) {
            Ok(message) => message,
            Err(_) => return Parsed::Reply(raw_error(query, ResponseCode::FormErr)),
        };
        let length = decoder.index();
        if message.queries.len() != 1 {
            return Parsed::Reply(self.error(&message, ResponseCode::FormErr));
        }
        if message
            .edns
            .as_ref()
            .is_some_and(|edns| edns.version() != 0)
        {
            return Parsed::Reply(self.error(&message, ResponseCode::BADVERS));
        }
        let question = &message.queries[0];
        if question.query_class() != DNSClass::IN {
            return Parsed::Reply(self.error(&message, ResponseCode::Refused));
        }
        if matches!(question.query_type(), RecordType::AXFR | RecordType::IXFR) {
            return Parsed::Reply(self.error(&message, ResponseCode::Refused));
        }
        Parsed::Query(Box::new(ParsedQuery { message, length }))
    }

    /// The largest answer the client takes.
    fn size_limit(&self, message: &Message, over_tcp: bool) -> usize {
        if over_tcp {
            return usize::from(u16::MAX);
        }
        let max = self.config.max_udp_payload.max(PLAIN_UDP_PAYLOAD);
        match &message.edns {
            Some(edns) => usize::from(edns.max_payload().clamp(PLAIN_UDP_PAYLOAD, max)),
            None => usize::from(PLAIN_UDP_PAYLOAD),
        }
    }

    /// A response to `request` with its question echoed, and an OPT record when it had one.
    fn response(&self, request: &Message, response_code: ResponseCode) -> Message {
        let mut response = Message::response(request.metadata.id, OpCode::Query);
        response.metadata.response_code = response_code;
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        response.metadata.recursion_available = true;
        // Several questions are a FORMERR; echoing them could outgrow 512 bytes.
        if request.queries.len() == 1 {
            response.add_queries(request.queries.iter().cloned());
        }
        if let Some(requested) = &request.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(self.config.max_udp_payload.max(PLAIN_UDP_PAYLOAD))
                .set_version(0)
                .set_dnssec_ok(requested.flags().dnssec_ok);
            response.set_edns(edns);
        }
        response
    }

    fn error(&self, request: &Message, response_code: ResponseCode) -> Vec<u8> {
        encode(&self.response(request, response_code), usize::MAX)
    }

    /// An authoritative answer from the table (NODATA when `records` is empty).
    fn local_answer(
        &self,
        request: &Message,
        mut records: Vec<RecordData>,
        limit: usize,
    ) -> Vec<u8> {
        let mut response = self.response(request, ResponseCode::NoError);
        response.metadata.authoritative = true;
        if records.len() > 1 {
            let turn = self.rotation.fetch_add(1, Ordering::Relaxed);
            let len = records.len();
            records.rotate_left(turn % len);
        }
        let owner: &Name = request.queries[0].name();
        for record in records {
            let data = match record {
                RecordData::Addr(IpAddr::V4(ip)) => RData::A(A(ip)),
                RecordData::Addr(IpAddr::V6(ip)) => RData::AAAA(AAAA(ip)),
                RecordData::Name(target) => match Name::from_ascii(format!("{target}.")) {
                    Ok(target) => RData::PTR(PTR(target)),
                    // Table names are checked when the table is built.
                    Err(_) => continue,
                },
            };
            response.add_answer(Record::from_rdata(owner.clone(), self.config.ttl, data));
        }
        encode(&response, limit)
    }

    /// Relays a query [`Self::answer_local`] could not answer to the upstreams, and
    /// returns their answer with the client's ID (SERVFAIL when forwarding fails).
    pub async fn forward(&self, pending: Pending) -> Vec<u8> {
        let Pending {
            query,
            message,
            over_tcp,
            limit,
            upstreams,
        } = pending;
        let forwarded = match &upstreams {
            Some(servers) => self.forwarder.forward_to(&query, over_tcp, servers).await,
            None => self.forwarder.forward(&query, over_tcp).await,
        };
        match forwarded {
            Ok(mut answer) if answer.len() >= 12 => {
                // The forwarder restores the client's ID; make sure of it.
                answer[..2].copy_from_slice(&message.metadata.id.to_be_bytes());
                if answer.len() > limit {
                    return truncated(&self.response(&message, ResponseCode::NoError));
                }
                answer
            }
            Ok(_) => {
                tracing::debug!(network = %self.network, "upstream answer shorter than a header");
                self.error(&message, ResponseCode::ServFail)
            }
            Err(error) => {
                tracing::debug!(network = %self.network, %error, "forwarding failed");
                self.error(&message, ResponseCode::ServFail)
            }
        }
    }
}

/// What [`ShoalHandler::answer_local`] made of a query.
#[derive(Debug)]
pub enum Outcome {
    /// The answer (`None`: drop the input).
    Done(Option<Vec<u8>>),
    /// Not a name in the asker's scope: forward it.
    Forward(Pending),
}

/// A query waiting to be forwarded.
#[derive(Debug)]
pub struct Pending {
    query: Vec<u8>,
    message: Message,
    over_tcp: bool,
    limit: usize,
    /// The asking task's own resolvers, instead of the node's upstreams.
    upstreams: Option<Vec<SocketAddr>>,
}

/// Where a task's own resolvers listen.
const DNS_PORT: u16 = 53;

enum Parsed {
    Drop,
    Reply(Vec<u8>),
    Query(Box<ParsedQuery>),
}

struct ParsedQuery {
    message: Message,
    /// How many bytes of the input the message took.
    length: usize,
}

/// Encodes `response`, or [`truncated`] when it is longer than `limit`.
fn encode(response: &Message, limit: usize) -> Vec<u8> {
    match response.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        _ => truncated(response),
    }
}

/// `response`'s header with TC set, its question and OPT record, and no records: the
/// client retries over TCP.
fn truncated(response: &Message) -> Vec<u8> {
    let mut truncated = response.truncate();
    truncated.metadata.authoritative = response.metadata.authoritative;
    match truncated.to_vec() {
        Ok(bytes) => bytes,
        // Unreachable in practice (the question of a parsed query always encodes), but
        // never panic: a bare SERVFAIL header.
        Err(_) => {
            let mut header = vec![0u8; 12];
            header[..2].copy_from_slice(&response.metadata.id.to_be_bytes());
            header[2] = 0x80;
            header[3] = 0x80 | u16::from(ResponseCode::ServFail) as u8;
            header
        }
    }
}

/// An error answer built from the raw header alone, for input that does not parse: the
/// ID, opcode and RD bit echoed, no question, no records.
fn raw_error(query: &[u8], response_code: ResponseCode) -> Vec<u8> {
    let code = u16::from(response_code);
    let mut answer = vec![0u8; 12];
    answer[..2].copy_from_slice(&query[..2]);
    // QR, the query's opcode and RD.
    answer[2] = 0x80 | (query[2] & 0x79);
    // RA and the 4-bit response code.
    answer[3] = 0x80 | (code & 0x0f) as u8;
    answer
}

#[async_trait::async_trait]
impl RequestHandler for ShoalHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let over_tcp = request.protocol() != Protocol::Udp;
        let src: SocketAddr = request.src();
        let mut failed = Metadata::response_from_request(&request.metadata);
        failed.response_code = ResponseCode::ServFail;
        let failed = ResponseInfo::from(Header {
            metadata: failed,
            counts: HeaderCounts::default(),
        });

        let Some(answer) = self.handle(request.as_slice(), src.ip(), over_tcp).await else {
            return failed;
        };
        let Ok(message) = Message::from_vec(&answer) else {
            return failed;
        };
        let builder = MessageResponseBuilder::new(&request.queries, message.edns.as_ref());
        let response = builder.build(
            message.metadata,
            message.answers.iter(),
            message.authorities.iter(),
            std::iter::empty(),
            message.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "sending an answer failed");
                failed
            }
        }
    }
}

/// A query for `name` of type `qtype`, class IN, RD set, in wire format (for tests and
/// tools).
pub fn build_query(id: u16, name: &str, qtype: RecordType, edns_payload: Option<u16>) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    if let Ok(name) = Name::from_ascii(name) {
        message.add_query(Query::query(name, qtype));
    }
    if let Some(payload) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload).set_version(0);
        message.set_edns(edns);
    }
    message.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests;
