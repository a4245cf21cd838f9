//! A node's record: everything it publishes, in one chitchat key, signed by the node.
//!
//! ```text
//!  key "node", value: <signature, base64, 86 chars> "." <body: base64(zstd(JSON))>
//!  body JSON: {"vtep": "<its VTEP>", "endpoints": {"<endpoint ID>": <Endpoint>, ...}}
//!  signed: "shoal gossip record v1\0", cluster ID, node ID, generation, gossip address,
//!          key, version, body text   (strings with a 16-bit length, integers big-endian)
//! ```
//!
//! Why one key for the whole record, rewritten on every change: chitchat's node-level
//! fields (deletions, garbage-collection and maximum versions, resets) carry no
//! signature, and a key holder forging them could wipe or freeze another node's state on
//! its receivers. A state made of one key that is only ever overwritten needs none of
//! them: the receiving transport refuses every form the publisher never sends
//! ([`crate::screen`]), and each version it takes is signed, version included. A record
//! replayed under its own version changes nothing; one replayed into another node,
//! generation or cluster does not verify.
//!
//! Each endpoint is an entry of its own in the body, so one entry that fails the
//! endpoint checks leaves the others in ([`crate::endpoint`]).
use std::{collections::BTreeMap, net::IpAddr, net::SocketAddr};

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine as _};
use chitchat::ChitchatId;
use serde::{Deserialize, Serialize};

use crate::{
    identity::{LocalIdentity, PublicKey, SIGNATURE_LEN},
    GossipError,
};

/// The one key of a node's chitchat state.
pub(crate) const RECORD_KEY: &str = "node";
/// Longest record value: with a large cluster's digest beside it, one update still fits
/// one datagram. Endpoint entries take about 40 bytes each once compressed (random task
/// IDs, `records_are_bounded`): over 1,000 per node.
pub const MAX_RECORD_LEN: usize = 48 * 1024;
/// Most bytes a body may expand to.
const MAX_BODY: usize = 1 << 20;
const DOMAIN: &[u8] = b"shoal gossip record v1\0";
/// Base64 characters of a signature (no padding).
const SIGNATURE_TEXT_LEN: usize = 86;

/// Who a record says it is from: a node, in one generation, at one gossip address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Claim<'a> {
    pub node_id: &'a str,
    pub generation: u64,
    pub addr: SocketAddr,
}

impl<'a> From<&'a ChitchatId> for Claim<'a> {
    fn from(id: &'a ChitchatId) -> Self {
        Claim {
            node_id: &id.node_id,
            generation: id.generation_id,
            addr: id.gossip_advertise_addr,
        }
    }
}

impl Claim<'_> {
    pub fn to_id(self) -> ChitchatId {
        ChitchatId::new(self.node_id, self.generation, self.addr)
    }
}

/// What a record says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordBody {
    pub vtep: IpAddr,
    /// Endpoint ID -> endpoint, each read (and checked) on its own.
    #[serde(default)]
    pub endpoints: BTreeMap<String, serde_json::Value>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// The bytes a record's signature covers.
fn signed_bytes(
    cluster_id: &str,
    id: Claim<'_>,
    key: &str,
    version: u64,
    body_text: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 96 + body_text.len());
    out.extend_from_slice(DOMAIN);
    put_str(&mut out, cluster_id);
    put_str(&mut out, id.node_id);
    out.extend_from_slice(&id.generation.to_be_bytes());
    put_addr(&mut out, id.addr);
    put_str(&mut out, key);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(body_text.as_bytes());
    out
}

/// The value of `id`'s record at `version`, signed by `identity`. Refused when it would
/// exceed [`MAX_RECORD_LEN`].
pub(crate) fn sign(
    identity: &LocalIdentity,
    cluster_id: &str,
    id: Claim<'_>,
    version: u64,
    body: &RecordBody,
) -> Result<String, GossipError> {
    let json = serde_json::to_vec(body).expect("a record serializes");
    sign_json(identity, cluster_id, id, version, &json).map_err(|why| {
        GossipError::BadEndpoint(format!(
            "this node's record with its {} endpoints: {why}",
            body.endpoints.len()
        ))
    })
}

/// [`sign`] for a body already written as JSON (by [`sign`], or any bytes the fuzz
/// harness makes a node publish): why not, when it is refused.
pub(crate) fn sign_json(
    identity: &LocalIdentity,
    cluster_id: &str,
    id: Claim<'_>,
    version: u64,
    json: &[u8],
) -> Result<String, String> {
    let packed = zstd::bulk::compress(json, 3).map_err(|e| format!("compressing it: {e}"))?;
    let body_text = STANDARD_NO_PAD.encode(packed);
    let value_len = SIGNATURE_TEXT_LEN + 1 + body_text.len();
    if value_len > MAX_RECORD_LEN {
        return Err(format!(
            "it would take {value_len} bytes; at most {MAX_RECORD_LEN} fit one gossip update"
        ));
    }
    let signature = identity.sign(&signed_bytes(
        cluster_id, id, RECORD_KEY, version, &body_text,
    ));
    let mut value = STANDARD_NO_PAD.encode(signature);
    value.push('.');
    value.push_str(&body_text);
    Ok(value)
}

/// Whether `value` is `key`'s record of `id` at `version`, signed with `public`.
pub(crate) fn verify(
    public: &PublicKey,
    cluster_id: &str,
    id: Claim<'_>,
    key: &str,
    version: u64,
    value: &str,
) -> bool {
    let Some((signature, body_text)) = value.split_once('.') else {
        return false;
    };
    if signature.len() != SIGNATURE_TEXT_LEN {
        return false;
    }
    let Ok(signature) = STANDARD_NO_PAD.decode(signature) else {
        return false;
    };
    signature.len() == SIGNATURE_LEN
        && public.verifies(
            &signed_bytes(cluster_id, id, key, version, body_text),
            &signature,
        )
}

/// The body of a record (whose signature was checked): why not, when it does not read.
pub(crate) fn body(value: &str) -> Result<RecordBody, String> {
    let (_, body_text) = value.split_once('.').ok_or("no body")?;
    let packed = STANDARD_NO_PAD
        .decode(body_text)
        .map_err(|e| format!("body is not base64: {e}"))?;
    // Room for what the frame says it holds (a signer writes the size), not for the
    // largest body on every check.
    let room = match zstd::zstd_safe::get_frame_content_size(&packed) {
        Ok(Some(len)) if len > MAX_BODY as u64 => {
            return Err(format!("body would expand to {len} bytes, over {MAX_BODY}"))
        }
        Ok(Some(len)) => len as usize,
        Ok(None) => MAX_BODY,
        Err(_) => return Err("body is not a zstd frame".into()),
    };
    let json = zstd::bulk::decompress(&packed, room)
        .map_err(|e| format!("body does not decompress: {e}"))?;
    serde_json::from_slice(&json).map_err(|e| format!("body is not a node record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(generation: u64) -> ChitchatId {
        ChitchatId::new("n1", generation, "10.0.0.1:7946".parse().unwrap())
    }

    /// A task ID as the managers make them: 25 random base-36 characters.
    fn task_id(seed: usize) -> String {
        let mut x = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..25)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from_digit((x % 36) as u32, 36).expect("base 36")
            })
            .collect()
    }

    /// `n` endpoints as a node publishes them: one per task, on network `ov`.
    fn sample(n: usize) -> RecordBody {
        let mut body = RecordBody {
            vtep: "192.168.0.1".parse().unwrap(),
            endpoints: BTreeMap::new(),
        };
        for k in 0..n {
            let task = task_id(k);
            let ip = std::net::Ipv4Addr::from(0x0a00_0002 + k as u32);
            let o = ip.octets();
            body.endpoints.insert(
                format!("{task}/ov"),
                serde_json::json!({
                    "network": "ov", "ip": ip.to_string(),
                    "mac": format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]),
                    "vtep": "192.168.0.1", "service": format!("svc{}", k % 7),
                    "task": task, "slot": k % 20 + 1, "healthy": true,
                }),
            );
        }
        body
    }

    #[test]
    fn signed_records_verify_only_as_what_they_were_signed_for() {
        let me = LocalIdentity::generate_for(7).unwrap();
        let other = LocalIdentity::generate_for(7).unwrap();
        let body = sample(3);
        let value = sign(&me, "c1", (&id(7)).into(), 5, &body).unwrap();
        let key = me.public_key();
        assert!(verify(&key, "c1", (&id(7)).into(), RECORD_KEY, 5, &value));
        assert_eq!(super::body(&value).unwrap(), body);
        // Another version, key, generation, address, node, cluster, signer: refused.
        assert!(!verify(&key, "c1", (&id(7)).into(), RECORD_KEY, 6, &value));
        assert!(!verify(&key, "c1", (&id(7)).into(), "ep:x", 5, &value));
        assert!(!verify(&key, "c1", (&id(8)).into(), RECORD_KEY, 5, &value));
        let moved = ChitchatId::new("n1", 7, "10.0.0.2:7946".parse().unwrap());
        assert!(!verify(&key, "c1", (&moved).into(), RECORD_KEY, 5, &value));
        let renamed = ChitchatId::new("n2", 7, "10.0.0.1:7946".parse().unwrap());
        assert!(!verify(
            &key,
            "c1",
            (&renamed).into(),
            RECORD_KEY,
            5,
            &value
        ));
        assert!(!verify(&key, "c2", (&id(7)).into(), RECORD_KEY, 5, &value));
        assert!(!verify(
            &other.public_key(),
            "c1",
            (&id(7)).into(),
            RECORD_KEY,
            5,
            &value
        ));
        // A body swapped under a good signature, garbage, no signature at all.
        let (sig, _) = value.split_once('.').unwrap();
        let other_body = sign(&me, "c1", (&id(7)).into(), 5, &sample(4)).unwrap();
        let (_, other_text) = other_body.split_once('.').unwrap();
        assert!(!verify(
            &key,
            "c1",
            (&id(7)).into(),
            RECORD_KEY,
            5,
            &format!("{sig}.{other_text}")
        ));
        for junk in ["", ".", "abc", "{\"vtep\":null}", &value[1..]] {
            assert!(
                !verify(&key, "c1", (&id(7)).into(), RECORD_KEY, 5, junk),
                "{junk:?}"
            );
        }
        assert!(super::body("x.%%%").is_err());
    }

    #[test]
    fn bodies_expand_to_what_their_frame_says_and_at_most_1_mib() {
        let text = |packed: &[u8]| format!("sig.{}", STANDARD_NO_PAD.encode(packed));
        let json = serde_json::to_vec(&sample(3)).unwrap();
        // A frame without its size (a streaming encoder's) still reads.
        let unsized_frame = zstd::stream::encode_all(&json[..], 3).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&unsized_frame).unwrap(),
            None
        );
        assert_eq!(super::body(&text(&unsized_frame)).unwrap(), sample(3));
        // Past the bound: refused before anything is allocated for it.
        let huge = zstd::bulk::compress(&vec![b' '; MAX_BODY + 1], 3).unwrap();
        let e = super::body(&text(&huge)).unwrap_err();
        assert!(e.contains("over"), "{e}");
        // A frame cut short, and bytes that are no frame.
        let whole = zstd::bulk::compress(&json, 3).unwrap();
        assert!(super::body(&text(&whole[..whole.len() - 4])).is_err());
        assert!(super::body(&text(b"not zstd")).is_err());
    }

    #[test]
    fn records_are_bounded() {
        let me = LocalIdentity::generate_for(1).unwrap();
        let fits = sign(&me, "c1", (&id(1)).into(), 1, &sample(500)).unwrap();
        assert!(fits.len() <= MAX_RECORD_LEN);
        println!(
            "500 endpoints: {} bytes ({:.0} per endpoint)",
            fits.len(),
            fits.len() as f64 / 500.0
        );
        match sign(&me, "c1", (&id(1)).into(), 1, &sample(2000)) {
            Err(e) => assert!(e.to_string().contains("at most"), "{e}"),
            Ok(v) => panic!("2000 endpoints took only {} bytes", v.len()),
        }
    }
}
