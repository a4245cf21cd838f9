//! Fuzz target `ebpf_frames`: hands libFuzzer's input to
//! `shoal_fuzz_targets::targets::ebpf_frames::run`, which the short run of
//! `cargo xtask test` calls too.
#![no_main]

use shoal_fuzz_targets::targets::ebpf_frames;

libfuzzer_sys::fuzz_target!(|input: &[u8]| ebpf_frames::run(input));
