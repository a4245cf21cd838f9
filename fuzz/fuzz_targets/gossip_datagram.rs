//! Fuzz target `gossip_datagram`: hands libFuzzer's input to
//! `shoal_fuzz_targets::targets::gossip_datagram::run`, which the short run of
//! `cargo xtask test` calls too.
#![no_main]

use shoal_fuzz_targets::targets::gossip_datagram;

libfuzzer_sys::fuzz_target!(|input: &[u8]| gossip_datagram::run(input));
