//! Port 2377 before and around authentication: the first byte names the caller
//! (stranger, worker, manager), the rest is what it sent after its TLS handshake.

use std::sync::OnceLock;

use shoal_cluster::manager::fuzzing::{Caller, ManagerPort, Outcome};

static PORT: OnceLock<ManagerPort> = OnceLock::new();

/// One input, as libFuzzer hands it to the target: panics on a finding.
pub fn run(input: &[u8]) {
    let port = PORT.get_or_init(|| ManagerPort::fixed().expect("the port's runtime and CA"));
    let Some(outcome) = port.take_input(input) else {
        return;
    };
    // The bound holds whatever follows: a frame longer than the caller may send is
    // refused on its length alone.
    let caller = [Caller::Stranger, Caller::Worker, Caller::Manager][usize::from(input[0])];
    if let Some(len) = input.get(1..5) {
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        if len > caller.max_frame() {
            assert_eq!(outcome, Outcome::FrameRefused, "a frame of {len} bytes");
        }
    }
    // Only a stranger's join is checked as a join.
    if matches!(
        outcome,
        Outcome::JoinChecked(_) | Outcome::TokenRefused | Outcome::JoinRefused
    ) {
        assert_eq!(caller, Caller::Stranger);
    }
}
