//! Port 7946: the first byte says who sent the rest (anyone's raw datagram, a member's
//! plaintext or compressed body, a removed node's plaintext, a member's record body);
//! see `shoal_gossip::fuzzing`.

use std::sync::{Mutex, OnceLock};

use shoal_gossip::fuzzing::{Received, Receiver};

static RECEIVER: OnceLock<Mutex<Receiver>> = OnceLock::new();

/// One input, as libFuzzer hands it to the target: panics on a finding.
pub fn run(input: &[u8]) {
    let receiver = RECEIVER.get_or_init(|| Mutex::new(Receiver::new().expect("a receiver")));
    let mut receiver = receiver.lock().unwrap_or_else(|e| e.into_inner());
    let received = receiver.take(input);
    match input.first() {
        // Bytes nobody sealed with the cluster key, or sealed by a node that is no
        // member, never reach chitchat.
        Some(0) | Some(3) => assert_eq!(received, Received::Dropped),
        _ => {}
    }
    // What reaches chitchat is only about trusted generations, and every record in it
    // is signed by its node.
    if let Received::Message(_) = received {
        assert_eq!(
            receiver.refused_again(),
            Ok(0),
            "the screen let something through"
        );
    }
}
