//! One module per fuzz target; each `run` takes one input and panics on a finding.

pub mod compose;
pub mod declared_state;
pub mod dns_query;
pub mod ebpf_frames;
pub mod gossip_datagram;
pub mod manager_port;

/// A fuzz target as the short run and `write_seeds` see it.
pub struct Target {
    /// The cargo-fuzz binary's name (`fuzz/fuzz_targets/NAME.rs`).
    pub name: &'static str,
    /// One input; panics on a finding.
    pub run: fn(&[u8]),
    /// The seed inputs.
    pub seeds: fn() -> anyhow::Result<Vec<crate::seeds::Seed>>,
    /// The longest input worth making: libFuzzer's default (4096 bytes), one Ethernet
    /// frame at the underlay's MTU for `ebpf_frames` (as `cargo xtask fuzz` passes it).
    pub max_len: usize,
    /// BPF_PROG_TEST_RUN and a network namespace of its own: root only.
    pub needs_root: bool,
}

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "manager_port",
        run: manager_port::run,
        seeds: crate::seeds::manager_port,
        max_len: 4096,
        needs_root: false,
    },
    Target {
        name: "gossip_datagram",
        run: gossip_datagram::run,
        seeds: crate::seeds::gossip_datagram,
        max_len: 4096,
        needs_root: false,
    },
    Target {
        name: "dns_query",
        run: dns_query::run,
        seeds: crate::seeds::dns_query,
        max_len: 4096,
        needs_root: false,
    },
    Target {
        name: "compose",
        run: compose::run,
        seeds: crate::seeds::compose,
        max_len: 4096,
        needs_root: false,
    },
    Target {
        name: "declared_state",
        run: declared_state::run,
        seeds: crate::seeds::declared_state,
        max_len: 4096,
        needs_root: false,
    },
    Target {
        name: "ebpf_frames",
        run: ebpf_frames::run,
        seeds: crate::seeds::ebpf_frames,
        max_len: ebpf_frames::MAX_FRAME,
        needs_root: true,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
