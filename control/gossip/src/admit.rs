//! What a chitchat message must be before chitchat handles it.
//!
//! Chitchat 0.11 trusts its peers' messages once they decode, and two kinds end the
//! receiving node's gossip task with a panic (the node then stops gossiping, and every
//! peer drops its endpoints): a key-value whose key starts with a character outside
//! ASCII (its key listeners slice the key's first byte), and a node's delta whose max
//! version is below the version of one of its own key-values (an assertion when the
//! delta is applied). Only a holder of the cluster key can send either, but that
//! includes a node removed since the last key rotation. So the receive step walks every
//! authentic message's delta first, with chitchat's own decoders for each field, and
//! drops the message if any key is not ASCII, if a max version goes below a key-value's
//! version, or if its blocks decompress to more than [`MAX_STREAM`] bytes.

use chitchat::{ChitchatId, Deserializable};

/// Most bytes a delta's blocks may decompress to. Chitchat fits a delta's compressed
/// form into one datagram; this leaves room for any real one and bounds the rest.
pub(crate) const MAX_STREAM: usize = 8 << 20;
/// Chitchat's block types and delta operations, as it writes them.
const NO_MORE_BLOCKS: u8 = 0;
const COMPRESSED: u8 = 1;
const UNCOMPRESSED: u8 = 2;
const OP_NODE: u8 = 0;
const OP_KEY_VALUE: u8 = 1;
const OP_SET_MAX_VERSION: u8 = 2;
const SYN: u8 = 0;
const SYN_ACK: u8 = 1;
const ACK: u8 = 2;

/// Whether chitchat can hold `key` safely: ASCII only.
pub(crate) fn key_ok(key: &str) -> bool {
    key.is_ascii()
}

/// Checks a message that already decoded as a chitchat message (`plain`, its bytes).
pub(crate) fn admit(plain: &[u8]) -> Result<(), String> {
    let mut buf = plain;
    let header: [u8; 4] = read(&mut buf)?;
    match header[3] {
        SYN => skip_digest(&mut buf),
        SYN_ACK => {
            skip_digest(&mut buf)?;
            check_delta(&mut buf)
        }
        ACK => check_delta(&mut buf),
        _ => Ok(()),
    }
}

fn read<T: Deserializable>(buf: &mut &[u8]) -> Result<T, String> {
    T::deserialize(buf).map_err(|e| e.to_string())
}

fn skip_digest(buf: &mut &[u8]) -> Result<(), String> {
    let nodes: u16 = read(buf)?;
    for _ in 0..nodes {
        read::<ChitchatId>(buf)?;
        for _ in 0..3 {
            read::<u64>(buf)?;
        }
    }
    Ok(())
}

fn check_delta(buf: &mut &[u8]) -> Result<(), String> {
    let mut stream = Vec::new();
    let mut block = vec![0u8; usize::from(u16::MAX)];
    loop {
        let kind: u8 = read(buf)?;
        if kind == NO_MORE_BLOCKS {
            break;
        }
        let len = usize::from(read::<u16>(buf)?);
        let bytes = buf.get(..len).ok_or("a block cut short")?;
        *buf = &buf[len..];
        let bytes = match kind {
            COMPRESSED => {
                let n = zstd::bulk::decompress_to_buffer(bytes, &mut block[..])
                    .map_err(|e| format!("a block does not decompress: {e}"))?;
                &block[..n]
            }
            UNCOMPRESSED => bytes,
            _ => return Err(format!("block type {kind}")),
        };
        if stream.len() + bytes.len() > MAX_STREAM {
            return Err(format!("a delta of more than {MAX_STREAM} bytes"));
        }
        stream.extend_from_slice(bytes);
    }
    let mut ops = stream.as_slice();
    // The highest key-value version of the node being read.
    let mut top = 0u64;
    while !ops.is_empty() {
        match read::<u8>(&mut ops)? {
            OP_NODE => {
                read::<ChitchatId>(&mut ops)?;
                read::<u64>(&mut ops)?;
                read::<u64>(&mut ops)?;
                top = 0;
            }
            OP_KEY_VALUE => {
                let key: String = read(&mut ops)?;
                if !key_ok(&key) {
                    return Err(format!("key {key:?} is not ASCII"));
                }
                read::<String>(&mut ops)?;
                top = top.max(read::<u64>(&mut ops)?);
                read::<u8>(&mut ops)?;
            }
            OP_SET_MAX_VERSION => {
                let max: u64 = read(&mut ops)?;
                if max < top {
                    return Err(format!("max version {max} below a key-value's {top}"));
                }
            }
            op => return Err(format!("delta operation {op}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chitchat::ChitchatId;

    use super::*;
    use crate::screen::{ack, UpdateOut};

    /// Found by the fuzz target: each of these ended a node's gossip task in chitchat.
    /// The screen leaves such updates out before this runs; this stands behind it.
    #[test]
    fn messages_chitchat_cannot_hold_are_refused() {
        let id = ChitchatId::new("n1", 1, "10.0.0.1:7946".parse().unwrap());
        let msg = |key_values: Vec<(&'static str, &'static str, u64, u8)>, max| {
            ack(&[UpdateOut {
                id: &id,
                last_gc_version: 0,
                key_values,
                bare_max_version: max,
            }])
        };
        assert!(admit(&msg(vec![("node", "x", 1, 0), ("ep", "y", 2, 0)], Some(2))).is_ok());
        let not_ascii = admit(&msg(
            vec![("node", "x", 1, 0), ("\u{e9}p", "y", 2, 0)],
            None,
        ));
        assert!(not_ascii.unwrap_err().contains("not ASCII"));
        let behind = admit(&msg(vec![("node", "x", 1, 0), ("ep", "y", 2, 0)], Some(1)));
        assert!(behind.unwrap_err().contains("below"));
        // A delta whose blocks expand past the bound.
        let mut big = vec![0u8; 4];
        big[..2].copy_from_slice(&45_139u16.to_le_bytes());
        big[3] = ACK;
        let block = vec![0u8; usize::from(u16::MAX)];
        for _ in 0..=MAX_STREAM / block.len() {
            big.push(UNCOMPRESSED);
            big.extend_from_slice(&u16::MAX.to_le_bytes());
            big.extend_from_slice(&block);
        }
        big.push(NO_MORE_BLOCKS);
        assert!(admit(&big).unwrap_err().contains("more than"));
    }
}
