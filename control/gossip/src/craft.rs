//! Gossip packets made as a hostile cluster member would make them, for tests (in process
//! and in the lab) of what receivers do with them: a record signed by any key, a chitchat
//! message claiming to be about any node, sealed for any receiver with a cluster key.
//! Everything goes through the code real gossip uses (the record format, chitchat's
//! encoding, the seal); a running node uses nothing of this module.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
};

use chitchat::ChitchatId;

use crate::{
    identity::LocalIdentity,
    keys::{ClusterKey, Keyring},
    record::{self, RecordBody, RECORD_KEY},
    screen::{self, UpdateOut},
    seal::Sealer,
    Endpoint, GossipError,
};

/// The node a message claims to be about: its ID, generation and gossip address.
#[derive(Clone, Debug)]
pub struct About {
    pub node_id: String,
    pub generation: u64,
    pub addr: SocketAddr,
}

impl About {
    fn id(&self) -> ChitchatId {
        ChitchatId::new(self.node_id.clone(), self.generation, self.addr)
    }
}

/// A record of `about` at `version`, signed with `signer` (whoever that is).
pub fn signed_record(
    signer: &LocalIdentity,
    cluster_id: &str,
    about: &About,
    version: u64,
    vtep: IpAddr,
    endpoints: &BTreeMap<String, Endpoint>,
) -> Result<String, GossipError> {
    let body = RecordBody {
        vtep,
        endpoints: endpoints
            .iter()
            .map(|(id, ep)| (id.clone(), serde_json::to_value(ep).expect("serializes")))
            .collect(),
    };
    record::sign(signer, cluster_id, (&about.id()).into(), version, &body)
}

/// A chitchat Ack carrying one update of `about`: its record key set to `value` at
/// `version`.
pub fn record_update(about: &About, value: &str, version: u64) -> Vec<u8> {
    let id = about.id();
    screen::ack(&[UpdateOut {
        id: &id,
        last_gc_version: 0,
        key_values: vec![(RECORD_KEY, value, version, 0)],
        bare_max_version: None,
    }])
}

/// A chitchat Ack carrying one update of `about` that deletes `key` at `version` (a form
/// chitchat knows and shoal never sends).
pub fn deletion(about: &About, key: &str, version: u64) -> Vec<u8> {
    let id = about.id();
    screen::ack(&[UpdateOut {
        id: &id,
        last_gc_version: 0,
        key_values: vec![(key, "", version, 1)],
        bare_max_version: None,
    }])
}

/// A chitchat Syn whose digest gives `about` the heartbeat `heartbeat`.
pub fn heartbeat(cluster_id: &str, about: &About, heartbeat: u64) -> Vec<u8> {
    screen::syn(cluster_id, &[&about.id()], heartbeat)
}

/// `message` sealed with `key` by `sender` for `receiver`, as the wire carries it.
pub fn seal(
    key: &ClusterKey,
    cluster_id: &str,
    sender: &str,
    receiver: &str,
    message: &[u8],
) -> Result<Vec<u8>, GossipError> {
    let ring = Arc::new(RwLock::new(Keyring::new(key.clone())));
    let mut sealer = Sealer::new(cluster_id.to_string(), sender.to_string(), ring)
        .map_err(|e| GossipError::BadConfig(format!("{e:#}")))?;
    sealer
        .seal(message, receiver)
        .ok_or_else(|| GossipError::BadConfig("the message does not fit a datagram".into()))
}

/// Whether a receiver that trusts `key` for `about` takes `value` as its record at
/// `version`.
pub fn is_signed_by(
    key: &crate::PublicKey,
    cluster_id: &str,
    about: &About,
    version: u64,
    value: &str,
) -> bool {
    record::verify(
        key,
        cluster_id,
        (&about.id()).into(),
        RECORD_KEY,
        version,
        value,
    )
}
