use chitchat::{ChitchatMessage, Deserializable};

use super::*;
use crate::{
    identity::{LocalIdentity, TrustedNode},
    record::{RecordBody, RECORD_KEY},
};

fn scr() -> Screen {
    Screen::new().unwrap()
}

struct Fixture {
    me: LocalIdentity,
    id: ChitchatId,
    trust: TrustSet,
}

fn fixture() -> Fixture {
    let me = LocalIdentity::generate_for(9).unwrap();
    let id = ChitchatId::new("n1", 9, "10.0.0.1:7946".parse().unwrap());
    let mut trust = TrustSet::new();
    trust.insert(
        "n1",
        TrustedNode {
            generation: 9,
            addr: id.gossip_advertise_addr,
            key: me.public_key(),
        },
    );
    Fixture { me, id, trust }
}

fn record(f: &Fixture, signer: &LocalIdentity, version: u64) -> String {
    let body = RecordBody {
        vtep: "192.168.0.1".parse().unwrap(),
        endpoints: Default::default(),
    };
    record::sign(signer, "c1", (&f.id).into(), version, &body).unwrap()
}

fn parses(bytes: &[u8]) -> ChitchatMessage {
    let mut cursor = bytes;
    let msg = ChitchatMessage::deserialize(&mut cursor).expect("chitchat reads it");
    assert!(cursor.is_empty());
    msg
}

#[test]
fn signed_updates_pass_untouched_and_chitchat_reads_our_encoding() {
    let f = fixture();
    let value = record(&f, &f.me, 3);
    let msg = ack(&[UpdateOut {
        id: &f.id,
        last_gc_version: 0,
        key_values: vec![(RECORD_KEY, value.as_str(), 3, STATUS_SET)],
        bare_max_version: None,
    }]);
    parses(&msg);
    let s = scr().screen(&msg, "c1", &f.trust, Direction::In).unwrap();
    assert!(s.rewritten.is_none() && s.refused.is_empty(), "{s:?}");
    // The same operations in a compressed block (as chitchat writes them) read the same.
    let ops = &msg[5..msg.len() - 1];
    let ops = &ops[2..];
    let packed = zstd::bulk::compress(ops, 0).unwrap();
    let mut compressed = msg[..4].to_vec();
    compressed.push(BLOCK_ZSTD);
    compressed.extend_from_slice(&(packed.len() as u16).to_le_bytes());
    compressed.extend_from_slice(&packed);
    compressed.push(BLOCK_END);
    parses(&compressed);
    let s = scr()
        .screen(&compressed, "c1", &f.trust, Direction::In)
        .unwrap();
    assert!(s.rewritten.is_none() && s.refused.is_empty(), "{s:?}");
    let syn = syn("c1", &[&f.id], 4);
    parses(&syn);
    assert!(scr()
        .screen(&syn, "c1", &f.trust, Direction::In)
        .unwrap()
        .rewritten
        .is_none());
}

#[test]
fn every_unsigned_or_foreign_form_is_left_out_and_the_rest_kept() {
    let f = fixture();
    let thief = LocalIdentity::generate_for(9).unwrap();
    let good = record(&f, &f.me, 3);
    let forged = record(&f, &thief, 4);
    let other_gen = ChitchatId::new("n1", 10, f.id.gossip_advertise_addr);
    let stranger = ChitchatId::new("n9", 9, "10.0.0.9:7946".parse().unwrap());
    let cases: Vec<(&str, UpdateOut<'_>, Refusal)> = vec![
        (
            "forged",
            UpdateOut {
                id: &f.id,
                last_gc_version: 0,
                key_values: vec![(RECORD_KEY, forged.as_str(), 4, STATUS_SET)],
                bare_max_version: None,
            },
            Refusal::Forged,
        ),
        (
            "signed for another version",
            UpdateOut {
                id: &f.id,
                last_gc_version: 0,
                key_values: vec![(RECORD_KEY, good.as_str(), 99, STATUS_SET)],
                bare_max_version: None,
            },
            Refusal::Forged,
        ),
        (
            "another generation",
            UpdateOut {
                id: &other_gen,
                last_gc_version: 0,
                key_values: vec![(RECORD_KEY, good.as_str(), 3, STATUS_SET)],
                bare_max_version: None,
            },
            Refusal::UntrustedNode,
        ),
        (
            "an unknown node",
            UpdateOut {
                id: &stranger,
                last_gc_version: 0,
                key_values: vec![(RECORD_KEY, good.as_str(), 3, STATUS_SET)],
                bare_max_version: None,
            },
            Refusal::UntrustedNode,
        ),
        (
            "a deletion",
            UpdateOut {
                id: &f.id,
                last_gc_version: 0,
                key_values: vec![(RECORD_KEY, "", 5, 1)],
                bare_max_version: None,
            },
            Refusal::BadDelta,
        ),
        (
            "another key",
            UpdateOut {
                id: &f.id,
                last_gc_version: 0,
                key_values: vec![("ep:x", good.as_str(), 5, STATUS_SET)],
                bare_max_version: None,
            },
            Refusal::BadDelta,
        ),
        (
            "a reset",
            UpdateOut {
                id: &f.id,
                last_gc_version: 1 << 40,
                key_values: vec![(RECORD_KEY, good.as_str(), 3, STATUS_SET)],
                bare_max_version: None,
            },
            Refusal::BadDelta,
        ),
        (
            "a bare maximum version",
            UpdateOut {
                id: &f.id,
                last_gc_version: 0,
                key_values: vec![],
                bare_max_version: Some(1 << 40),
            },
            Refusal::BadDelta,
        ),
    ];
    for (name, bad, why) in cases {
        // The bad update between two good ones (another node's and this one's).
        let stranger_trust = {
            let mut t = f.trust.clone();
            t.insert(
                "n2",
                TrustedNode {
                    generation: 1,
                    addr: "10.0.0.2:7946".parse().unwrap(),
                    key: f.me.public_key(),
                },
            );
            t
        };
        let n2 = ChitchatId::new("n2", 1, "10.0.0.2:7946".parse().unwrap());
        let n2_value = {
            let body = RecordBody {
                vtep: "192.168.0.2".parse().unwrap(),
                endpoints: Default::default(),
            };
            record::sign(&f.me, "c1", (&n2).into(), 1, &body).unwrap()
        };
        let good_n2 = UpdateOut {
            id: &n2,
            last_gc_version: 0,
            key_values: vec![(RECORD_KEY, n2_value.as_str(), 1, STATUS_SET)],
            bare_max_version: None,
        };
        let msg = ack(&[good_n2, bad]);
        let s = scr()
            .screen(&msg, "c1", &stranger_trust, Direction::In)
            .unwrap();
        assert_eq!(s.refused.len(), 1, "{name}: {s:?}");
        assert_eq!(s.refused[0].why, why, "{name}: {s:?}");
        let kept = s.rewritten.expect(name);
        let again = scr()
            .screen(&kept, "c1", &stranger_trust, Direction::In)
            .unwrap();
        assert!(
            again.refused.is_empty() && again.rewritten.is_none(),
            "{name}"
        );
        match parses(&kept) {
            ChitchatMessage::Ack { delta } => {
                let text = format!("{delta:?}");
                assert!(text.contains("n2:1:"), "{name}: {text}");
                assert!(
                    !text.contains("n1:") && !text.contains("n9:"),
                    "{name}: {text}"
                );
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn untrusted_heartbeats_leave_the_digest() {
    let f = fixture();
    let ghost = ChitchatId::new("n1", 10, f.id.gossip_advertise_addr);
    let msg = syn("c1", &[&f.id, &ghost], 7);
    let s = scr().screen(&msg, "c1", &f.trust, Direction::In).unwrap();
    assert_eq!(s.refused.len(), 1);
    assert_eq!(s.refused[0].why, Refusal::UntrustedHeartbeat);
    let kept = s.rewritten.unwrap();
    assert_eq!(kept, syn("c1", &[&f.id], 7));
}

#[test]
fn garbage_is_refused_whole() {
    let f = fixture();
    let good = ack(&[]);
    assert!(scr().screen(&good, "c1", &f.trust, Direction::In).is_ok());
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        b"garbage".to_vec(),
        good[..good.len() - 1].to_vec(),
        [good.clone(), vec![0]].concat(),
    ];
    let mut wrong_type = good.clone();
    wrong_type[3] = 9;
    cases.push(wrong_type);
    let mut bad_block = good.clone();
    bad_block[4] = 7;
    cases.push(bad_block);
    // A key before any node; a zstd block that is not zstd.
    let mut orphan = good[..4].to_vec();
    write_stream(&mut orphan, &[OP_SET_MAX_VERSION, 1, 0, 0, 0, 0, 0, 0, 0]);
    cases.push(orphan);
    let mut not_zstd = good[..4].to_vec();
    not_zstd.extend_from_slice(&[BLOCK_ZSTD, 3, 0, 1, 2, 3, BLOCK_END]);
    cases.push(not_zstd);
    for case in cases {
        assert!(
            scr().screen(&case, "c1", &f.trust, Direction::In).is_err(),
            "{case:?}"
        );
    }
}

#[test]
fn a_checked_record_is_taken_again_only_as_an_exact_copy() {
    let f = fixture();
    let mut screen = scr();
    let update = |value: &str, version| {
        ack(&[UpdateOut {
            id: &f.id,
            last_gc_version: 0,
            key_values: vec![(RECORD_KEY, value, version, STATUS_SET)],
            bare_max_version: None,
        }])
    };
    let good = record(&f, &f.me, 3);
    for _ in 0..2 {
        let s = screen
            .screen(&update(&good, 3), "c1", &f.trust, Direction::In)
            .unwrap();
        assert!(s.refused.is_empty(), "{s:?}");
    }
    // Another value under the same version, the same value under another: checked,
    // refused.
    let thief = LocalIdentity::generate_for(9).unwrap();
    let forged = record(&f, &thief, 3);
    for (value, version) in [(forged.as_str(), 3), (good.as_str(), 4)] {
        let s = screen
            .screen(&update(value, version), "c1", &f.trust, Direction::In)
            .unwrap();
        assert_eq!(s.refused.len(), 1, "{s:?}");
        assert_eq!(s.refused[0].why, Refusal::Forged);
    }
    // The node's key changed (a new registration): the copy is checked again.
    let mut rekeyed = f.trust.clone();
    rekeyed.insert(
        "n1",
        TrustedNode {
            key: thief.public_key(),
            ..*f.trust.get("n1").unwrap()
        },
    );
    let s = screen
        .screen(&update(&good, 3), "c1", &rekeyed, Direction::In)
        .unwrap();
    assert_eq!(s.refused.len(), 1, "{s:?}");
}

#[test]
fn outgoing_messages_lose_only_untrusted_generations() {
    let f = fixture();
    let thief = LocalIdentity::generate_for(9).unwrap();
    let old = ChitchatId::new("n1", 8, f.id.gossip_advertise_addr);
    // Our own state's copy needs no signature check on the way out.
    let unchecked = record(&f, &thief, 3);
    let msg = ack(&[
        UpdateOut {
            id: &old,
            last_gc_version: 0,
            key_values: vec![(RECORD_KEY, unchecked.as_str(), 1, STATUS_SET)],
            bare_max_version: None,
        },
        UpdateOut {
            id: &f.id,
            last_gc_version: 0,
            key_values: vec![(RECORD_KEY, unchecked.as_str(), 3, STATUS_SET)],
            bare_max_version: None,
        },
    ]);
    let s = scr().screen(&msg, "c1", &f.trust, Direction::Out).unwrap();
    assert_eq!(s.refused.len(), 1, "{s:?}");
    assert_eq!(s.refused[0].node, old);
    let kept = s.rewritten.unwrap();
    match parses(&kept) {
        ChitchatMessage::Ack { delta } => {
            let text = format!("{delta:?}");
            assert!(text.contains("n1:9:") && !text.contains("n1:8:"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    let digest = syn("c1", &[&f.id, &old], 3);
    let s = scr()
        .screen(&digest, "c1", &f.trust, Direction::Out)
        .unwrap();
    assert_eq!(s.rewritten.unwrap(), syn("c1", &[&f.id], 3));
}
