//! Endpoint records and the table every node derives from all live nodes' states.
//!
//! A node's chitchat state holds one key, its record ([`crate::record`]): its VTEP
//! address and one entry per endpoint it runs, the value a JSON [`Endpoint`], signed by
//! the node. Only members the [`TrustSet`] names count, each in the one generation it
//! trusts, and only with a record that node signed (the transport already refused any
//! other, [`crate::screen`]; the table checks again, since the trust set may have changed
//! since). An entry is taken only if it is bound to its publisher: its VTEP must be the
//! publisher's own. An entry that is not an endpoint, names a VTEP other than its
//! publisher's, names a network missing from the subnet table, or has an address outside
//! its network's subnet is left out of the table, counted once and logged once. Two nodes
//! claiming one address in one network: both records are left out (a node can hide
//! another's endpoint that way, never take its traffic) and the conflict is counted.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::{Hash, Hasher},
    net::IpAddr,
    sync::Arc,
};

use chitchat::{ChitchatId, NodeState};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    identity::{PublicKey, TrustSet, TrustedNode},
    record::{self, RECORD_KEY},
    Counter, Counters, GossipError,
};

const MAX_ID_LEN: usize = 200;
const MAX_NAME_LEN: usize = 255;
const MAX_ALIASES: usize = 64;

/// One endpoint a node runs: what every other node needs to reach it (overlay FDB and
/// neighbour entries), balance to it (LB backends) and name it (DNS records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Overlay network name.
    pub network: String,
    pub ip: IpAddr,
    /// `02:42:0a:00:09:02`.
    pub mac: String,
    /// The publishing node's VTEP (underlay) address.
    pub vtep: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl Endpoint {
    /// The MAC address as bytes.
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        parse_mac(&self.mac)
    }
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut out {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

/// An endpoint ID: its entry's name in the node's record.
pub(crate) fn check_id(id: &str) -> Result<(), GossipError> {
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(GossipError::BadEndpoint(format!(
            "endpoint ID {id:?}: 1 to {MAX_ID_LEN} printable ASCII characters"
        )));
    }
    Ok(())
}

/// Why a record was left out of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    BadRecord,
    Foreign,
    UnknownNetwork,
    OutsideSubnet,
}

impl Reject {
    fn counter(self) -> Counter {
        match self {
            Reject::BadRecord => Counter::BadRecord,
            Reject::Foreign => Counter::ForeignClaim,
            Reject::UnknownNetwork => Counter::UnknownNetwork,
            Reject::OutsideSubnet => Counter::OutsideSubnet,
        }
    }
}

/// The checks a record must pass, for the publisher (before it sets the key) and for
/// every receiver (before the record enters the table).
pub(crate) fn check(
    ep: &Endpoint,
    publisher_vtep: Option<IpAddr>,
    subnets: &BTreeMap<String, IpNet>,
) -> Result<(), (Reject, String)> {
    let bad = |why: String| Err((Reject::BadRecord, why));
    if !name_ok(&ep.network) {
        return bad(format!("network name {:?}", ep.network));
    }
    if parse_mac(&ep.mac).is_none() {
        return bad(format!("MAC {:?}", ep.mac));
    }
    for name in ep.service.iter().chain(&ep.task).chain(&ep.aliases) {
        if !name_ok(name) {
            return bad(format!("name {name:?}"));
        }
    }
    if ep.aliases.len() > MAX_ALIASES {
        return bad(format!(
            "{} aliases (at most {MAX_ALIASES})",
            ep.aliases.len()
        ));
    }
    match publisher_vtep {
        None => return bad("its node announced no VTEP".into()),
        Some(vtep) if vtep != ep.vtep => {
            return Err((
                Reject::Foreign,
                format!("VTEP {} is not its node's ({vtep})", ep.vtep),
            ))
        }
        Some(_) => {}
    }
    let Some(subnet) = subnets.get(&ep.network) else {
        return Err((
            Reject::UnknownNetwork,
            format!("network {:?} is not known", ep.network),
        ));
    };
    if !subnet.contains(&ep.ip) || ep.ip == subnet.network() || ep.ip == subnet.broadcast() {
        return Err((
            Reject::OutsideSubnet,
            format!("{} is outside {} ({subnet})", ep.ip, ep.network),
        ));
    }
    Ok(())
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableEntry {
    /// The node that publishes (and runs) the endpoint.
    pub node: Arc<str>,
    /// The endpoint's ID on that node.
    pub id: String,
    pub endpoint: Endpoint,
}

/// A change between two tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Added(TableEntry),
    Removed(TableEntry),
    Updated {
        old: Box<TableEntry>,
        new: Box<TableEntry>,
    },
}

/// (node, endpoint ID).
type TableKey = (Arc<str>, String);

/// Every live node's valid endpoints, keyed by (node, endpoint ID).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointTable {
    entries: BTreeMap<TableKey, Endpoint>,
    /// Live nodes (with their VTEPs), endpoints or not.
    nodes: BTreeMap<Arc<str>, Option<IpAddr>>,
}

impl EndpointTable {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, node: &str, id: &str) -> Option<&Endpoint> {
        self.entries.get(&(Arc::from(node), id.to_string()))
    }

    pub fn iter(&self) -> impl Iterator<Item = TableEntry> + '_ {
        self.entries.iter().map(|((node, id), ep)| TableEntry {
            node: node.clone(),
            id: id.clone(),
            endpoint: ep.clone(),
        })
    }

    /// Endpoints published by nodes other than `self_node`: the remote part of the overlay.
    pub fn remote<'a>(&'a self, self_node: &'a str) -> impl Iterator<Item = TableEntry> + 'a {
        self.iter().filter(move |e| &*e.node != self_node)
    }

    /// Endpoints of one service (LB backends, `tasks.<service>` records).
    pub fn service<'a>(&'a self, service: &'a str) -> impl Iterator<Item = TableEntry> + 'a {
        self.iter()
            .filter(move |e| e.endpoint.service.as_deref() == Some(service))
    }

    /// Live nodes and their VTEPs.
    pub fn nodes(&self) -> &BTreeMap<Arc<str>, Option<IpAddr>> {
        &self.nodes
    }

    pub fn contains_node(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// What changed from `self` to `newer`.
    pub fn diff(&self, newer: &EndpointTable) -> Vec<Change> {
        let entry = |(node, id): &TableKey, ep: &Endpoint| TableEntry {
            node: node.clone(),
            id: id.clone(),
            endpoint: ep.clone(),
        };
        let mut changes = Vec::new();
        for (key, old) in &self.entries {
            match newer.entries.get(key) {
                None => changes.push(Change::Removed(entry(key, old))),
                Some(new) if new != old => changes.push(Change::Updated {
                    old: Box::new(entry(key, old)),
                    new: Box::new(entry(key, new)),
                }),
                Some(_) => {}
            }
        }
        for (key, new) in &newer.entries {
            if !self.entries.contains_key(key) {
                changes.push(Change::Added(entry(key, new)));
            }
        }
        changes
    }
}

/// Builds tables from chitchat's live-node snapshots, re-checking only nodes whose state
/// changed, and counting each rejected record once.
pub(crate) struct Deriver {
    cluster_id: String,
    /// Per node generation: the state version and key its records were checked at.
    cache: HashMap<ChitchatId, (u64, PublicKey, NodeRecords)>,
    /// (node, entry ID or "" for the record itself, what it said) already counted.
    reported: HashSet<(ChitchatId, String, u64)>,
}

#[derive(Clone)]
struct NodeRecords {
    vtep: Option<IpAddr>,
    endpoints: Vec<(String, Endpoint)>,
}

impl NodeRecords {
    fn none() -> Self {
        NodeRecords {
            vtep: None,
            endpoints: Vec::new(),
        }
    }
}

fn fingerprint(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl Deriver {
    pub(crate) fn new(cluster_id: String) -> Self {
        Deriver {
            cluster_id,
            cache: HashMap::new(),
            reported: HashSet::new(),
        }
    }

    /// Forget every check (the subnet table changed). A changed trust set needs none:
    /// a node's records are checked again when its key is not the one they were
    /// checked with.
    pub(crate) fn invalidate(&mut self) {
        self.cache.clear();
    }

    pub(crate) fn derive(
        &mut self,
        live: &BTreeMap<ChitchatId, NodeState>,
        subnets: &BTreeMap<String, IpNet>,
        trust: &TrustSet,
        counters: &Counters,
    ) -> EndpointTable {
        self.cache.retain(|id, _| live.contains_key(id));
        if self.reported.len() > 100_000 {
            self.reported.retain(|(id, _, _)| live.contains_key(id));
        }
        let mut table = EndpointTable::default();
        let mut owners: HashMap<(String, IpAddr), Vec<TableKey>> = HashMap::new();
        // One generation per node ID at most: the one the trust set names.
        for (cid, state) in live {
            let Some(trusted) = trust.trusts(cid) else {
                continue;
            };
            let max_version = state.max_version();
            let records = match self.cache.get(cid) {
                Some((v, key, records)) if *v == max_version && *key == trusted.key => {
                    records.clone()
                }
                _ => {
                    let records = self.check_node(cid, trusted, state, subnets, counters);
                    self.cache
                        .insert(cid.clone(), (max_version, trusted.key, records.clone()));
                    records
                }
            };
            let node: Arc<str> = Arc::from(&*cid.node_id);
            table.nodes.insert(node.clone(), records.vtep);
            for (id, ep) in records.endpoints {
                owners
                    .entry((ep.network.clone(), ep.ip))
                    .or_default()
                    .push((node.clone(), id.clone()));
                table.entries.insert((node.clone(), id), ep);
            }
        }
        for ((network, ip), claims) in owners {
            let distinct: HashSet<&Arc<str>> = claims.iter().map(|(n, _)| n).collect();
            if distinct.len() > 1 {
                for key in &claims {
                    table.entries.remove(key);
                }
                let names: Vec<&str> = distinct.iter().map(|n| &***n).collect();
                let first = counters.bump(Counter::AddressConflict) == 1;
                if first {
                    warn!(%network, %ip, nodes = ?names,
                        "several nodes claim one address; all their records are left out \
                         (further conflicts are only counted)");
                }
            }
        }
        table
    }

    /// Counts `why` once per (node, entry, content).
    fn report(
        &mut self,
        cid: &ChitchatId,
        entry: &str,
        content: &str,
        why: Counter,
        counters: &Counters,
        detail: &str,
    ) {
        let first_time =
            self.reported
                .insert((cid.clone(), entry.to_string(), fingerprint(content)));
        if first_time && counters.bump(why) == 1 {
            warn!(node = %cid.node_id, entry, reason = ?why, %detail,
                "gossip record left out (further ones of this kind are only counted)");
        }
    }

    fn check_node(
        &mut self,
        cid: &ChitchatId,
        trusted: &TrustedNode,
        state: &NodeState,
        subnets: &BTreeMap<String, IpNet>,
        counters: &Counters,
    ) -> NodeRecords {
        let Some(value) = state.get_versioned(RECORD_KEY).filter(|v| !v.is_deleted()) else {
            return NodeRecords::none();
        };
        if !record::verify(
            &trusted.key,
            &self.cluster_id,
            cid.into(),
            RECORD_KEY,
            value.version,
            &value.value,
        ) {
            self.report(
                cid,
                "",
                &value.value,
                Counter::ForgedRecord,
                counters,
                "not signed by the node's key",
            );
            return NodeRecords::none();
        }
        let body = match record::body(&value.value) {
            Ok(body) => body,
            Err(why) => {
                self.report(cid, "", &value.value, Counter::BadRecord, counters, &why);
                return NodeRecords::none();
            }
        };
        let vtep = body.vtep;
        let mut endpoints = Vec::new();
        for (id, entry) in body.endpoints {
            let checked = if check_id(&id).is_err() {
                Err((Reject::BadRecord, format!("endpoint ID {id:?}")))
            } else {
                serde_json::from_value::<Endpoint>(entry.clone())
                    .map_err(|e| (Reject::BadRecord, format!("not an endpoint record: {e}")))
                    .and_then(|ep| check(&ep, Some(vtep), subnets).map(|()| ep))
            };
            match checked {
                Ok(ep) => endpoints.push((id, ep)),
                Err((why, detail)) => self.report(
                    cid,
                    &id,
                    &entry.to_string(),
                    why.counter(),
                    counters,
                    &detail,
                ),
            }
        }
        NodeRecords {
            vtep: Some(vtep),
            endpoints,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ep(network: &str, ip: &str, vtep: &str) -> Endpoint {
        Endpoint {
            network: network.into(),
            ip: ip.parse().unwrap(),
            mac: "02:42:0a:00:09:02".into(),
            vtep: vtep.parse().unwrap(),
            service: Some("web".into()),
            task: Some("web.1.abc".into()),
            slot: Some(1),
            healthy: true,
            aliases: vec!["www".into()],
        }
    }

    fn subnets() -> BTreeMap<String, IpNet> {
        [("ov".to_string(), "10.0.9.0/24".parse().unwrap())].into()
    }

    #[test]
    fn record_checks() {
        let s = subnets();
        let v: IpAddr = "192.168.0.1".parse().unwrap();
        assert!(check(&ep("ov", "10.0.9.2", "192.168.0.1"), Some(v), &s).is_ok());
        let kind = |e: Endpoint| check(&e, Some(v), &s).unwrap_err().0;
        assert_eq!(
            kind(ep("ov", "10.0.8.2", "192.168.0.1")),
            Reject::OutsideSubnet
        );
        assert_eq!(
            kind(ep("ov", "10.0.9.0", "192.168.0.1")),
            Reject::OutsideSubnet
        );
        assert_eq!(
            kind(ep("ov", "10.0.9.255", "192.168.0.1")),
            Reject::OutsideSubnet
        );
        assert_eq!(
            kind(ep("other", "10.0.9.2", "192.168.0.1")),
            Reject::UnknownNetwork
        );
        assert_eq!(kind(ep("ov", "10.0.9.2", "192.168.0.2")), Reject::Foreign);
        let mut bad_mac = ep("ov", "10.0.9.2", "192.168.0.1");
        bad_mac.mac = "02:42:0a:00:09".into();
        assert_eq!(kind(bad_mac), Reject::BadRecord);
        let mut bad_alias = ep("ov", "10.0.9.2", "192.168.0.1");
        bad_alias.aliases.push("two words".into());
        assert_eq!(kind(bad_alias), Reject::BadRecord);
        assert_eq!(
            check(&ep("ov", "10.0.9.2", "192.168.0.1"), None, &s)
                .unwrap_err()
                .0,
            Reject::BadRecord
        );
    }

    #[test]
    fn mac_parse() {
        assert_eq!(parse_mac("02:42:0a:00:09:02"), Some([2, 0x42, 10, 0, 9, 2]));
        for bad in [
            "",
            "02:42:0a:00:09",
            "02:42:0a:00:09:02:01",
            "2:42:0a:00:09:02",
            "zz:42:0a:00:09:02",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn diff_reports_each_kind() {
        let mut a = EndpointTable::default();
        let mut b = EndpointTable::default();
        let n: Arc<str> = Arc::from("n1");
        a.entries
            .insert((n.clone(), "x".into()), ep("ov", "10.0.9.2", "1.1.1.1"));
        a.entries
            .insert((n.clone(), "y".into()), ep("ov", "10.0.9.3", "1.1.1.1"));
        let mut y2 = ep("ov", "10.0.9.3", "1.1.1.1");
        y2.healthy = false;
        b.entries.insert((n.clone(), "y".into()), y2);
        b.entries
            .insert((n, "z".into()), ep("ov", "10.0.9.4", "1.1.1.1"));
        let d = a.diff(&b);
        assert_eq!(d.len(), 3);
        assert!(matches!(&d[0], Change::Removed(e) if e.id == "x"));
        assert!(matches!(&d[1], Change::Updated { new, .. } if !new.endpoint.healthy));
        assert!(matches!(&d[2], Change::Added(e) if e.id == "z"));
        assert!(a.diff(&a).is_empty());
    }

    /// A chitchat whose state holds node `about`'s record `value` at version 1, as it
    /// would after taking one update.
    fn holding(about: &ChitchatId, value: &str) -> chitchat::Chitchat {
        let own: std::net::SocketAddr = "192.168.0.9:7946".parse().unwrap();
        let mut chitchat = chitchat::Chitchat::with_chitchat_id_and_seeds(
            chitchat::ChitchatConfig {
                chitchat_id: ChitchatId::new("self", 1, own),
                cluster_id: "c1".into(),
                gossip_interval: std::time::Duration::from_millis(200),
                listen_addr: own,
                seed_nodes: Vec::new(),
                failure_detector_config: Default::default(),
                marked_for_deletion_grace_period: std::time::Duration::from_secs(3600),
                catchup_callback: None,
                extra_liveness_predicate: None,
            },
            tokio::sync::watch::channel(Default::default()).1,
            Vec::new(),
        );
        let value = chitchat::VersionedValue {
            value: value.to_string(),
            version: 1,
            status: chitchat::DeletionStatus::Set,
        };
        chitchat.reset_node_state_if_update(
            about,
            [(RECORD_KEY.to_string(), value)].into_iter(),
            1,
            0,
        );
        chitchat
    }

    #[test]
    fn a_nodes_record_is_checked_again_when_its_trusted_key_changes() {
        let me = crate::LocalIdentity::generate_for(3).unwrap();
        let other = crate::LocalIdentity::generate_for(3).unwrap();
        let id = ChitchatId::new("n1", 3, "192.168.0.1:7946".parse().unwrap());
        let body = record::RecordBody {
            vtep: "192.168.0.1".parse().unwrap(),
            endpoints: [(
                "t1/ov".to_string(),
                serde_json::to_value(ep("ov", "10.0.9.2", "192.168.0.1")).unwrap(),
            )]
            .into(),
        };
        let value = record::sign(&me, "c1", (&id).into(), 1, &body).unwrap();
        let chitchat = holding(&id, &value);
        let trusting = |key: PublicKey| {
            let mut trust = TrustSet::new();
            trust.insert(
                "n1",
                TrustedNode {
                    generation: 3,
                    addr: id.gossip_advertise_addr,
                    key,
                },
            );
            trust
        };
        let counters = Counters::default();
        let mut deriver = Deriver::new("c1".into());
        let mut derive = |trust: &TrustSet| {
            deriver
                .derive(chitchat.node_states(), &subnets(), trust, &counters)
                .len()
        };
        assert_eq!(derive(&trusting(me.public_key())), 1);
        // The same state, the node now registered with another key (nothing else
        // changed): its record is no longer taken.
        assert_eq!(derive(&trusting(other.public_key())), 0);
        assert_eq!(counters.snapshot().forged_record, 1);
        // Back to the key it signed with: taken again.
        assert_eq!(derive(&trusting(me.public_key())), 1);
        assert_eq!(derive(&TrustSet::new()), 0);
        assert_eq!(counters.snapshot().forged_record, 1);
    }
}
