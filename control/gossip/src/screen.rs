//! What chitchat is told about other nodes, screened before it hears it.
//!
//! A sealed datagram proves only that its sender holds the cluster key. Every node update
//! and heartbeat in it claims to be about some node, and chitchat 0.11 would take any of
//! them. So each opened message is read here first (chitchat's own format: a digest of
//! heartbeats and versions, then a delta of node updates) and handed on with:
//! - digest entries only for nodes the [`TrustSet`] names in exactly that generation at
//!   exactly that address (a key holder cannot make up a generation of a member, whose
//!   empty state would hide the real one, nor keep a removed node alive);
//! - node updates only when the update is about such a node, is made only of that node's
//!   record key set (never a deletion, a garbage-collection version or a bare maximum
//!   version: the forms a shoal node never sends, which carry no signature and could
//!   wipe or freeze the node's state on the receiver), and every record in it is
//!   signed by that node's key for exactly its version ([`crate::record`]).
//!
//! A refused update is left out whole, so the receiver's versions do not move and a
//! genuine copy from another peer is still taken later. Anything else is passed on byte
//! for byte; a message that does not parse is refused whole.
//!
//! The same record version reaches a node from several peers: the last one checked per
//! node is kept, and an exact copy of it is taken without checking its signature again.
//!
//! Outgoing messages pass the same trust check (no signatures: the node's own state
//! holds only what it took): a generation the managers no longer list (a node that
//! restarted or was removed) stays in chitchat's state as dead for half an hour, and
//! would otherwise be offered to every peer, refused and counted there on every round.
use std::{collections::HashMap, net::SocketAddr};

use chitchat::ChitchatId;

use crate::{
    identity::{PublicKey, TrustSet},
    record::{self, Claim, RECORD_KEY},
};

/// chitchat 0.11's message magic number and protocol version.
const MAGIC: u16 = 45_139;
const PROTOCOL: u8 = 0;
const SYN: u8 = 0;
const SYN_ACK: u8 = 1;
const ACK: u8 = 2;
const BAD_CLUSTER: u8 = 3;
/// Delta operations and stream block types.
const OP_NODE: u8 = 0;
const OP_KEY_VALUE: u8 = 1;
const OP_SET_MAX_VERSION: u8 = 2;
const BLOCK_END: u8 = 0;
const BLOCK_ZSTD: u8 = 1;
const BLOCK_RAW: u8 = 2;
/// Most bytes one block expands to (chitchat's own bound), and a whole delta.
const BLOCK_MAX: usize = u16::MAX as usize;
const DELTA_MAX: usize = 4 << 20;
/// `DeletionStatusMutation::Set`.
const STATUS_SET: u8 = 0;

/// Which way a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Received: every check.
    In,
    /// About to be sent: only the trust set's.
    Out,
}

/// Why part of a message was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A heartbeat about a node, generation or address not trusted.
    UntrustedHeartbeat,
    /// An update about a node, generation or address not trusted.
    UntrustedNode,
    /// An update in a form shoal never sends.
    BadDelta,
    /// An update whose record is not signed by the node it is about.
    Forged,
}

#[derive(Debug)]
pub(crate) struct Refused {
    pub node: ChitchatId,
    pub why: Refusal,
    pub detail: String,
}

/// The outcome for one message.
#[derive(Debug, Default)]
pub(crate) struct Screened {
    /// The message to hand to chitchat instead of the original; `None`: the original.
    pub rewritten: Option<Vec<u8>>,
    pub refused: Vec<Refused>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().expect("2")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().expect("8")))
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let len = self.u16()? as usize;
        std::str::from_utf8(self.bytes(len)?).map_err(|_| "a string is not UTF-8".to_string())
    }

    fn claim(&mut self) -> Result<Claim<'a>, String> {
        let node_id = self.str()?;
        let generation = self.u64()?;
        let ip: std::net::IpAddr = match self.u8()? {
            4 => <[u8; 4]>::try_from(self.bytes(4)?).expect("4").into(),
            6 => <[u8; 16]>::try_from(self.bytes(16)?).expect("16").into(),
            other => return Err(format!("IP version {other}")),
        };
        let port = self.u16()?;
        Ok(Claim {
            node_id,
            generation,
            addr: SocketAddr::new(ip, port),
        })
    }

    fn done(&self) -> bool {
        self.pos == self.buf.len()
    }
}

/// A digest: its entries, each with its bytes.
fn read_digest<'a>(r: &mut Reader<'a>) -> Result<Vec<(Claim<'a>, &'a [u8])>, String> {
    let count = r.u16()? as usize;
    let mut entries = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let start = r.pos;
        let id = r.claim()?;
        r.bytes(24)?; // heartbeat, last GC version, max version
        entries.push((id, &r.buf[start..r.pos]));
    }
    Ok(entries)
}

/// A delta's operations, decompressed.
fn read_stream(
    r: &mut Reader<'_>,
    zstd: &mut zstd::bulk::Decompressor<'static>,
    block: &mut [u8],
) -> Result<Vec<u8>, String> {
    let mut plain = Vec::new();
    loop {
        match r.u8()? {
            BLOCK_END => return Ok(plain),
            BLOCK_ZSTD => {
                let len = r.u16()? as usize;
                let n = zstd
                    .decompress_to_buffer(r.bytes(len)?, &mut block[..BLOCK_MAX])
                    .map_err(|e| format!("a delta block does not decompress: {e}"))?;
                plain.extend_from_slice(&block[..n]);
            }
            BLOCK_RAW => {
                let len = r.u16()? as usize;
                plain.extend_from_slice(r.bytes(len)?);
            }
            other => return Err(format!("delta block type {other}")),
        }
        if plain.len() > DELTA_MAX {
            return Err(format!("a delta over {DELTA_MAX} bytes"));
        }
    }
}

struct KeyValue<'a> {
    key: &'a str,
    value: &'a str,
    version: u64,
    status: u8,
}

/// One node's update in a delta, with the span of its operations.
struct Update<'a> {
    id: Claim<'a>,
    last_gc_version: u64,
    key_values: Vec<KeyValue<'a>>,
    bare_max_version: bool,
    span: std::ops::Range<usize>,
}

fn read_updates(ops: &[u8]) -> Result<Vec<Update<'_>>, String> {
    let mut r = Reader::new(ops);
    let mut updates: Vec<Update<'_>> = Vec::new();
    while !r.done() {
        let start = r.pos;
        match r.u8()? {
            OP_NODE => {
                let id = r.claim()?;
                let last_gc_version = r.u64()?;
                r.u64()?; // from version (excluded): says where the update starts
                updates.push(Update {
                    id,
                    last_gc_version,
                    key_values: Vec::new(),
                    bare_max_version: false,
                    span: start..start,
                });
            }
            OP_KEY_VALUE => {
                let key = r.str()?;
                let value = r.str()?;
                let version = r.u64()?;
                let status = r.u8()?;
                if status > 2 {
                    return Err(format!("deletion status {status}"));
                }
                updates
                    .last_mut()
                    .ok_or("a key before any node")?
                    .key_values
                    .push(KeyValue {
                        key,
                        value,
                        version,
                        status,
                    });
            }
            OP_SET_MAX_VERSION => {
                r.u64()?;
                updates
                    .last_mut()
                    .ok_or("a maximum version before any node")?
                    .bare_max_version = true;
            }
            other => return Err(format!("delta operation {other}")),
        }
        updates
            .last_mut()
            .expect("an op made or found one")
            .span
            .end = r.pos;
    }
    Ok(updates)
}

fn write_digest(out: &mut Vec<u8>, kept: &[&[u8]]) {
    out.extend_from_slice(&(kept.len() as u16).to_le_bytes());
    for entry in kept {
        out.extend_from_slice(entry);
    }
}

/// A delta stream of `ops`, in uncompressed blocks.
fn write_stream(out: &mut Vec<u8>, ops: &[u8]) {
    for chunk in ops.chunks(BLOCK_MAX) {
        out.push(BLOCK_RAW);
        out.extend_from_slice(&(chunk.len() as u16).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.push(BLOCK_END);
}

/// The last record checked per node: an exact copy is taken as it is.
struct Checked {
    generation: u64,
    addr: SocketAddr,
    key: PublicKey,
    version: u64,
    value: String,
}

/// Screens messages for one socket (see the module's documentation).
pub(crate) struct Screen {
    zstd: zstd::bulk::Decompressor<'static>,
    block: Vec<u8>,
    checked: HashMap<String, Checked>,
}

impl Screen {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Screen {
            zstd: zstd::bulk::Decompressor::new()?,
            block: vec![0u8; BLOCK_MAX],
            checked: HashMap::new(),
        })
    }

    /// Forgets every record checked: the next copy of each is checked again (the fuzz
    /// harness screens what passed once more, from nothing).
    pub(crate) fn forget(&mut self) {
        self.checked.clear();
    }

    /// Whether `value` is `id`'s record at `version`, signed with `key`.
    fn signed(
        &mut self,
        cluster_id: &str,
        id: Claim<'_>,
        key: &PublicKey,
        version: u64,
        value: &str,
    ) -> bool {
        let seen = self.checked.get(id.node_id).is_some_and(|c| {
            c.generation == id.generation
                && c.addr == id.addr
                && c.key == *key
                && c.version == version
                && c.value == value
        });
        if seen {
            return true;
        }
        if !record::verify(key, cluster_id, id, RECORD_KEY, version, value) {
            return false;
        }
        self.checked.insert(
            id.node_id.to_string(),
            Checked {
                generation: id.generation,
                addr: id.addr,
                key: *key,
                version,
                value: value.to_string(),
            },
        );
        true
    }

    fn judge(
        &mut self,
        update: &Update<'_>,
        cluster_id: &str,
        trust: &TrustSet,
        direction: Direction,
    ) -> Result<(), (Refusal, String)> {
        let Some(node) = trust.trusts_claim(update.id) else {
            return Err((Refusal::UntrustedNode, "not a trusted generation".into()));
        };
        if direction == Direction::Out {
            return Ok(());
        }
        let bad = |why: String| Err((Refusal::BadDelta, why));
        if update.last_gc_version != 0 {
            return bad(format!(
                "garbage-collection version {}",
                update.last_gc_version
            ));
        }
        if update.bare_max_version {
            return bad("a bare maximum version".into());
        }
        if update.key_values.is_empty() {
            return bad("no record".into());
        }
        for kv in &update.key_values {
            if kv.key != RECORD_KEY {
                return bad(format!("key {:?}", kv.key));
            }
            if kv.status != STATUS_SET {
                return bad(format!("deletion status {}", kv.status));
            }
        }
        for kv in &update.key_values {
            if !self.signed(cluster_id, update.id, &node.key, kv.version, kv.value) {
                return Err((
                    Refusal::Forged,
                    format!("version {} is not signed by the node's key", kv.version),
                ));
            }
        }
        Ok(())
    }

    /// Screens one chitchat message going `direction`. `Err`: it does not parse, and is
    /// refused whole.
    pub(crate) fn screen(
        &mut self,
        plain: &[u8],
        cluster_id: &str,
        trust: &TrustSet,
        direction: Direction,
    ) -> Result<Screened, String> {
        if self.checked.len() > 2 * trust.len() + 16 {
            self.checked.retain(|id, _| trust.get(id).is_some());
        }
        let mut r = Reader::new(plain);
        if r.u16()? != MAGIC {
            return Err("not a chitchat message".into());
        }
        if r.u8()? != PROTOCOL {
            return Err("chitchat protocol version".into());
        }
        let kind = r.u8()?;
        let mut out = Screened::default();
        let mut rewritten = plain[..4].to_vec();
        let mut changed = false;

        if matches!(kind, SYN | SYN_ACK) {
            let entries = read_digest(&mut r)?;
            let mut kept = Vec::with_capacity(entries.len());
            for (id, bytes) in entries {
                if trust.trusts_claim(id).is_some() {
                    kept.push(bytes);
                } else {
                    changed = true;
                    out.refused.push(Refused {
                        node: id.to_id(),
                        why: Refusal::UntrustedHeartbeat,
                        detail: "not a trusted generation".into(),
                    });
                }
            }
            write_digest(&mut rewritten, &kept);
        }
        match kind {
            SYN => {
                let start = r.pos;
                r.str()?; // cluster ID: chitchat answers a foreign one itself
                rewritten.extend_from_slice(&plain[start..r.pos]);
            }
            SYN_ACK | ACK => {
                let ops = read_stream(&mut r, &mut self.zstd, &mut self.block)?;
                let updates = read_updates(&ops)?;
                let mut kept_ops = Vec::with_capacity(ops.len());
                for update in &updates {
                    match self.judge(update, cluster_id, trust, direction) {
                        Ok(()) => kept_ops.extend_from_slice(&ops[update.span.clone()]),
                        Err((why, detail)) => {
                            changed = true;
                            out.refused.push(Refused {
                                node: update.id.to_id(),
                                why,
                                detail,
                            });
                        }
                    }
                }
                write_stream(&mut rewritten, &kept_ops);
            }
            BAD_CLUSTER => {}
            other => return Err(format!("chitchat message type {other}")),
        }
        if !r.done() {
            return Err(format!("{} bytes after the message", plain.len() - r.pos));
        }
        if changed {
            out.rewritten = Some(rewritten);
        }
        Ok(out)
    }
}

/// One node update to write into a delta (for building messages in tests).
pub(crate) struct UpdateOut<'a> {
    pub id: &'a ChitchatId,
    pub last_gc_version: u64,
    /// (key, value, version, deletion status)
    pub key_values: Vec<(&'a str, &'a str, u64, u8)>,
    pub bare_max_version: Option<u64>,
}

fn write_chitchat_id(out: &mut Vec<u8>, id: &ChitchatId) {
    out.extend_from_slice(&(id.node_id.len() as u16).to_le_bytes());
    out.extend_from_slice(id.node_id.as_bytes());
    out.extend_from_slice(&id.generation_id.to_le_bytes());
    match id.gossip_advertise_addr.ip() {
        std::net::IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        std::net::IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&id.gossip_advertise_addr.port().to_le_bytes());
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A chitchat Ack carrying `updates`, as chitchat would read it.
pub(crate) fn ack(updates: &[UpdateOut<'_>]) -> Vec<u8> {
    let mut ops = Vec::new();
    for u in updates {
        ops.push(OP_NODE);
        write_chitchat_id(&mut ops, u.id);
        ops.extend_from_slice(&u.last_gc_version.to_le_bytes());
        ops.extend_from_slice(&0u64.to_le_bytes());
        for &(key, value, version, status) in &u.key_values {
            ops.push(OP_KEY_VALUE);
            write_str(&mut ops, key);
            write_str(&mut ops, value);
            ops.extend_from_slice(&version.to_le_bytes());
            ops.push(status);
        }
        if let Some(v) = u.bare_max_version {
            ops.push(OP_SET_MAX_VERSION);
            ops.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut out = MAGIC.to_le_bytes().to_vec();
    out.push(PROTOCOL);
    out.push(ACK);
    write_stream(&mut out, &ops);
    out
}

/// A chitchat Syn whose digest lists `ids` (heartbeat `heartbeat`, versions 0).
pub(crate) fn syn(cluster_id: &str, ids: &[&ChitchatId], heartbeat: u64) -> Vec<u8> {
    let mut out = MAGIC.to_le_bytes().to_vec();
    out.push(PROTOCOL);
    out.push(SYN);
    out.extend_from_slice(&(ids.len() as u16).to_le_bytes());
    for id in ids {
        write_chitchat_id(&mut out, id);
        out.extend_from_slice(&heartbeat.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
    }
    write_str(&mut out, cluster_id);
    out
}

#[cfg(test)]
mod tests;
