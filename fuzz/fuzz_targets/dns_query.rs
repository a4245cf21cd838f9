//! Fuzz target `dns_query`: hands libFuzzer's input to
//! `shoal_fuzz_targets::targets::dns_query::run`, which the short run of
//! `cargo xtask test` calls too.
#![no_main]

use shoal_fuzz_targets::targets::dns_query;

libfuzzer_sys::fuzz_target!(|input: &[u8]| dns_query::run(input));
