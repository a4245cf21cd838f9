//! A node's receiving side driven with bytes instead of a socket, for the fuzz target
//! `gossip_datagram` (`fuzz/` at the top of the repository) and the tests below.
//!
//! [`Receiver::take`] reads its input's first byte as who sent the rest:
//! - `0`: anyone: the rest is a datagram as it arrives on 7946;
//! - `1`: a holder of the cluster key: the rest is the plaintext it sealed;
//! - `2`: the same, sealed as compressed: the rest is the body the receiver decompresses;
//! - `3`: a peer whose state holds the rest as records, one `key=value` per line.
//!
//! The first three go through the socket's own receive step (`transport::receive`:
//! opened with the cluster keys, then read as one chitchat message); the fourth through
//! chitchat's node state and the checks every record passes before the endpoint table
//! (`endpoint::Deriver`), as the deriver runs them on live nodes. (Chitchat's handling of
//! a message between the two is chitchat's own and not driven here.)

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use chitchat::{
    ChitchatConfig, ChitchatId, ChitchatMessage, DeletionStatus, FailureDetectorConfig,
    Serializable, VersionedValue,
};
use ipnet::IpNet;
use tokio::sync::watch;

use crate::{
    admit::key_ok,
    endpoint::Deriver,
    keys::{ClusterKey, Keyring},
    seal::{Opener, Sealer, HEADER_LEN, MAGIC_ZSTD, TAG_LEN},
    transport::receive,
    CounterSnapshot, Counters,
};

/// The cluster the receiver is in.
pub const CLUSTER_ID: &str = "fuzz";
/// The one overlay network records may name, and its subnet.
pub const NETWORK: (&str, &str) = ("ov", "10.0.9.0/24");
/// The VTEP the records' publisher announces in a well-formed state.
pub const PEER_VTEP: &str = "192.168.77.12";

/// Where the datagrams and the records come from, and the receiver's own address.
const FROM: &str = "192.168.77.12:7946";
const OWN: &str = "192.168.77.11:7946";

/// What became of one input.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Dropped before chitchat (counted; see [`Receiver::counters`]).
    Dropped,
    /// Passed on to chitchat as this message.
    Message(ChitchatMessage),
    /// The peer's state was checked: this many of its records entered the table.
    Records(usize),
    /// Nothing to take (no first byte, or one naming no sender), or a plaintext too big
    /// for any datagram: nothing was sent.
    Nothing,
}

/// One node's receiving side under a fixed cluster key, and a sender holding that key.
pub struct Receiver {
    opener: Opener,
    sealer: Sealer,
    counters: Arc<Counters>,
    subnets: BTreeMap<String, IpNet>,
    from: SocketAddr,
    own: SocketAddr,
}

impl Receiver {
    pub fn new() -> anyhow::Result<Receiver> {
        let keyring = Arc::new(RwLock::new(Keyring::new(ClusterKey::new(1, [7; 32]))));
        let counters = Arc::new(Counters::default());
        Ok(Receiver {
            opener: Opener::new(
                CLUSTER_ID.into(),
                keyring.clone(),
                counters.clone(),
                Duration::from_secs(60),
            ),
            sealer: Sealer::new(CLUSTER_ID.into(), keyring)?,
            counters,
            subnets: [(NETWORK.0.to_string(), NETWORK.1.parse()?)].into(),
            from: FROM.parse()?,
            own: OWN.parse()?,
        })
    }

    /// One input; see the module docs for its form.
    pub fn take(&mut self, input: &[u8]) -> Received {
        let Some((&sender, rest)) = input.split_first() else {
            return Received::Nothing;
        };
        match sender {
            0 => self.datagram(rest),
            1 => match self.sealer.seal(rest) {
                Some(packet) => self.datagram(&packet),
                None => Received::Nothing,
            },
            2 => match self.sealer.seal_as(MAGIC_ZSTD, rest) {
                Some(packet) => self.datagram(&packet),
                None => Received::Nothing,
            },
            3 => self.records(rest),
            _ => Received::Nothing,
        }
    }

    fn datagram(&mut self, packet: &[u8]) -> Received {
        match receive(&mut self.opener, &self.counters, self.from, packet) {
            Some(msg) => Received::Message(msg),
            None => Received::Dropped,
        }
    }

    /// A peer whose state holds `lines` (`key=value` each) as chitchat holds a delta's
    /// key-values, checked by the deriver.
    fn records(&mut self, lines: &[u8]) -> Received {
        let text = String::from_utf8_lossy(lines);
        let values: Vec<(String, VersionedValue)> = text
            .split('\n')
            .zip(1..)
            .map(|(line, version)| {
                let (key, value) = line.split_once('=').unwrap_or((line, ""));
                (
                    key.to_string(),
                    VersionedValue {
                        value: value.to_string(),
                        version,
                        status: DeletionStatus::Set,
                    },
                )
            })
            .collect();
        // Chitchat takes key-values only from messages, which the receive step drops
        // whole when a key is one chitchat cannot hold.
        if !values.iter().all(|(key, _)| key_ok(key)) {
            return Received::Dropped;
        }
        let max_version = values.len() as u64;
        let own_id = ChitchatId::new("receiver", 1, self.own);
        let peer_id = ChitchatId::new("peer", 1, self.from);
        let mut chitchat = chitchat::Chitchat::with_chitchat_id_and_seeds(
            ChitchatConfig {
                chitchat_id: own_id,
                cluster_id: CLUSTER_ID.into(),
                gossip_interval: Duration::from_millis(200),
                listen_addr: self.own,
                seed_nodes: Vec::new(),
                failure_detector_config: FailureDetectorConfig::default(),
                marked_for_deletion_grace_period: Duration::from_secs(3600),
                catchup_callback: None,
                extra_liveness_predicate: None,
            },
            watch::channel(HashSet::new()).1,
            Vec::new(),
        );
        chitchat.reset_node_state_if_update(&peer_id, values.into_iter(), max_version, 0);
        // A deriver of its own per input: nothing carries over to the next one.
        let table =
            Deriver::default().derive(chitchat.node_states(), &self.subnets, &self.counters);
        Received::Records(table.len())
    }

    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }
}

/// An `Ack` whose delta holds `key_values` of node `peer` (versions 1, 2, ...), then, with
/// `max_version`, a max version for it; laid out as chitchat writes it (magic, version,
/// type; then one uncompressed block of operations).
fn ack_bytes(peer: &ChitchatId, key_values: &[(&str, &str)], max_version: Option<u64>) -> Vec<u8> {
    let mut ops = vec![0u8]; // node
    peer.serialize(&mut ops);
    0u64.serialize(&mut ops); // last GC version
    0u64.serialize(&mut ops); // from version (excluded)
    for (version, (key, value)) in (1u64..).zip(key_values) {
        ops.push(1); // key-value
        key.to_string().serialize(&mut ops);
        value.to_string().serialize(&mut ops);
        version.serialize(&mut ops);
        ops.push(0); // set
    }
    if let Some(max) = max_version {
        ops.push(2); // max version
        max.serialize(&mut ops);
    }
    let mut ack = 45_139u16.to_le_bytes().to_vec();
    ack.extend_from_slice(&[0, 2, 2]); // version 0, Ack, uncompressed block
    (ops.len() as u16).serialize(&mut ack);
    ack.extend_from_slice(&ops);
    ack.push(0); // no more blocks
    ack
}

/// Inputs for [`Receiver::take`] that reach each step (named, for a corpus): a datagram
/// with shoal's header but no valid seal; chitchat messages a key holder sealed, plain
/// and compressed, among them an `Ack` carrying a peer's VTEP and endpoint record; and a
/// peer state with a valid record and a refused one.
pub fn seed_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let peer = ChitchatId::new("peer", 1, FROM.parse().expect("a socket address"));
    let record = format!(
        r#"{{"network":"{}","ip":"10.0.9.2","mac":"02:42:0a:00:09:02","vtep":"{PEER_VTEP}","service":"web","task":"web.1.abc","slot":1,"healthy":true,"aliases":["www"]}}"#,
        NETWORK.0
    );
    let ack = ack_bytes(&peer, &[("vtep", PEER_VTEP), ("ep:t1", &record)], None);
    let syn = ChitchatMessage::Syn {
        cluster_id: CLUSTER_ID.into(),
        digest: Default::default(),
    }
    .serialize_to_vec();
    let syn_ack = ChitchatMessage::SynAck {
        digest: Default::default(),
        delta: Default::default(),
    }
    .serialize_to_vec();
    // shoal's header with the ring's key ID, and a tag that does not open.
    let mut unsealed = b"SHG1".to_vec();
    unsealed.extend_from_slice(&1u32.to_be_bytes());
    unsealed.resize(HEADER_LEN + TAG_LEN + 8, 0);
    let with = |sender: u8, rest: &[u8]| [&[sender][..], rest].concat();
    vec![
        ("unsealed", with(0, &unsealed)),
        ("syn", with(1, &syn)),
        ("syn_ack", with(1, &syn_ack)),
        ("ack_with_records", with(1, &ack)),
        (
            "bad_cluster",
            with(1, &ChitchatMessage::BadCluster.serialize_to_vec()),
        ),
        (
            "ack_compressed",
            with(2, &zstd::bulk::compress(&ack, 1).unwrap_or_default()),
        ),
        (
            "records",
            with(
                3,
                format!("vtep={PEER_VTEP}\nep:t1={record}\nep:t2={{}}").as_bytes(),
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;

    fn input(sender: u8, rest: &[u8]) -> Vec<u8> {
        let mut out = vec![sender];
        out.extend_from_slice(rest);
        out
    }

    fn record(ip: &str, vtep: &str) -> String {
        serde_json::to_string(&Endpoint {
            network: NETWORK.0.into(),
            ip: ip.parse().unwrap(),
            mac: "02:42:0a:00:09:02".into(),
            vtep: vtep.parse().unwrap(),
            service: Some("web".into()),
            task: Some("web.1.abc".into()),
            slot: Some(1),
            healthy: true,
            aliases: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn only_sealed_chitchat_messages_pass() {
        let mut r = Receiver::new().unwrap();
        let bad_cluster = ChitchatMessage::BadCluster.serialize_to_vec();
        assert_eq!(
            r.take(&input(1, &bad_cluster)),
            Received::Message(ChitchatMessage::BadCluster)
        );
        let compressed = zstd::bulk::compress(&bad_cluster, 1).unwrap();
        assert_eq!(
            r.take(&input(2, &compressed)),
            Received::Message(ChitchatMessage::BadCluster)
        );
        // The same message unsealed, sealed but not chitchat's, or with bytes after it.
        assert_eq!(r.take(&input(0, &bad_cluster)), Received::Dropped);
        assert_eq!(r.take(&input(1, b"not chitchat")), Received::Dropped);
        let mut trailing = bad_cluster.clone();
        trailing.push(0);
        assert_eq!(r.take(&input(1, &trailing)), Received::Dropped);
        // A compressed body that is not zstd.
        assert_eq!(r.take(&input(2, &bad_cluster)), Received::Dropped);
        assert_eq!(r.take(&[]), Received::Nothing);
        assert_eq!(r.take(&[9, 1, 2]), Received::Nothing);
        let c = r.counters();
        assert_eq!((c.received, c.malformed, c.bad_message), (2, 2, 2));
    }

    #[test]
    fn records_enter_the_table_only_when_they_pass_every_check() {
        let mut r = Receiver::new().unwrap();
        let state = |lines: &[String]| input(3, lines.join("\n").as_bytes());
        let vtep = format!("vtep={PEER_VTEP}");
        let good = format!("ep:t1={}", record("10.0.9.2", PEER_VTEP));
        assert_eq!(
            r.take(&state(&[vtep.clone(), good.clone()])),
            Received::Records(1)
        );
        // Another node's VTEP, outside the subnet, not JSON, no VTEP announced.
        let foreign = format!("ep:t2={}", record("10.0.9.3", "192.168.77.13"));
        let outside = format!("ep:t3={}", record("10.0.8.3", PEER_VTEP));
        let garbage = "ep:t4={\"network\":".to_string();
        assert_eq!(
            r.take(&state(&[vtep, good.clone(), foreign, outside, garbage])),
            Received::Records(1)
        );
        assert_eq!(r.take(&state(&[good])), Received::Records(0));
        let c = r.counters();
        assert_eq!((c.foreign_claim, c.outside_subnet, c.bad_record), (1, 1, 2));
    }

    #[test]
    fn the_seed_inputs_reach_each_step() {
        let mut r = Receiver::new().unwrap();
        let kinds: Vec<(&str, String)> = seed_inputs()
            .into_iter()
            .map(|(name, input)| {
                let kind = match r.take(&input) {
                    Received::Message(ChitchatMessage::Syn { .. }) => "syn".into(),
                    Received::Message(ChitchatMessage::SynAck { .. }) => "syn_ack".into(),
                    Received::Message(ChitchatMessage::Ack { delta }) => {
                        assert_ne!(delta, Default::default(), "{name}: the delta is empty");
                        "ack".into()
                    }
                    other => format!("{other:?}"),
                };
                (name, kind)
            })
            .collect();
        let expected: Vec<(&str, String)> = [
            ("unsealed", "Dropped"),
            ("syn", "syn"),
            ("syn_ack", "syn_ack"),
            ("ack_with_records", "ack"),
            ("bad_cluster", "Message(BadCluster)"),
            ("ack_compressed", "ack"),
            ("records", "Records(1)"),
        ]
        .into_iter()
        .map(|(n, k)| (n, k.to_string()))
        .collect();
        assert_eq!(kinds, expected);
        assert_eq!(r.counters().auth_failed, 1);
    }

    /// Found by the fuzz target: a key starting with a character outside ASCII panicked
    /// chitchat's key listeners, and so would have ended the node's gossip task.
    #[test]
    fn messages_chitchat_cannot_hold_are_dropped_before_it_sees_them() {
        let mut r = Receiver::new().unwrap();
        let peer = ChitchatId::new("peer", 1, FROM.parse().unwrap());
        let ok = ack_bytes(&peer, &[("vtep", PEER_VTEP)], None);
        assert!(matches!(r.take(&input(1, &ok)), Received::Message(_)));
        let not_ascii = ack_bytes(&peer, &[("vtep", PEER_VTEP), ("\u{e9}p", "x")], None);
        assert_eq!(r.take(&input(1, &not_ascii)), Received::Dropped);
        // A max version below the delta's own key-values: chitchat's assertion.
        let behind = ack_bytes(&peer, &[("vtep", PEER_VTEP), ("ep:t1", "x")], Some(1));
        assert_eq!(r.take(&input(1, &behind)), Received::Dropped);
        let level = ack_bytes(&peer, &[("vtep", PEER_VTEP), ("ep:t1", "x")], Some(2));
        assert!(matches!(r.take(&input(1, &level)), Received::Message(_)));
        // The same, compressed; and the fuzz target's input, a peer's records.
        let compressed = zstd::bulk::compress(&not_ascii, 1).unwrap();
        assert_eq!(r.take(&input(2, &compressed)), Received::Dropped);
        assert_eq!(
            r.take(&input(3, "\u{fffd}=x".as_bytes())),
            Received::Dropped
        );
        assert_eq!(r.counters().bad_message, 3);
    }
}
