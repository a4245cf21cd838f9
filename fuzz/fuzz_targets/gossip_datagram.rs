//! Port 7946: the first byte says who sent the rest (anyone's raw datagram, a key
//! holder's plaintext or compressed body, a peer's records); see
//! `shoal_gossip::fuzzing`.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use shoal_gossip::fuzzing::{Received, Receiver};

static RECEIVER: OnceLock<Mutex<Receiver>> = OnceLock::new();

fuzz_target!(|input: &[u8]| {
    let receiver = RECEIVER.get_or_init(|| Mutex::new(Receiver::new().expect("a receiver")));
    let mut receiver = receiver.lock().unwrap_or_else(|e| e.into_inner());
    let received = receiver.take(input);
    // Bytes nobody sealed with the cluster key never reach chitchat.
    if input.first() == Some(&0) {
        assert_eq!(received, Received::Dropped);
    }
});
