//! Fuzz target `compose`: hands libFuzzer's input to
//! `shoal_fuzz_targets::targets::compose::run`, which the short run of
//! `cargo xtask test` calls too.
#![no_main]

use shoal_fuzz_targets::targets::compose;

libfuzzer_sys::fuzz_target!(|input: &[u8]| compose::run(input));
