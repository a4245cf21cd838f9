//! Fuzz target `declared_state`: hands libFuzzer's input to
//! `shoal_fuzz_targets::targets::declared_state::run`, which the short run of
//! `cargo xtask test` calls too.
#![no_main]

use shoal_fuzz_targets::targets::declared_state;

libfuzzer_sys::fuzz_target!(|input: &[u8]| declared_state::run(input));
