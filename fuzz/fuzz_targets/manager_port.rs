//! Fuzz target `manager_port`: hands libFuzzer's input to
//! `shoal_fuzz_targets::targets::manager_port::run`, which the short run of
//! `cargo xtask test` calls too.
#![no_main]

use shoal_fuzz_targets::targets::manager_port;

libfuzzer_sys::fuzz_target!(|input: &[u8]| manager_port::run(input));
