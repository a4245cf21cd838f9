//! The short run of every fuzz target, a step of `cargo xtask test` (README,
//! "Fuzzing"): each target's seeds, then a fixed set of mutated inputs made from them
//! (`shoal_fuzz_targets::mutate`, the same on every run), through the same `run`
//! function the cargo-fuzz binary calls, on the stable toolchain without sanitizers
//! or coverage feedback. A panic fails the test and prints the target and the input
//! in hex. `ebpf_frames` needs root (BPF_PROG_TEST_RUN); without it the test says so
//! and passes, unless SHOAL_REQUIRE_ROOT=1 (set by `cargo xtask test`), where it fails.

use shoal_fuzz_targets::short_run::short_run;
use shoal_fuzz_targets::targets::{self, TARGETS};

/// Mutated inputs per target: each target's share of the step is a few seconds on a
/// 2-core machine in a debug build (docs/benchmarks.md, "Fuzz targets").
fn mutated_inputs(target: &str) -> usize {
    match target {
        "manager_port" => 100_000,
        "gossip_datagram" => 20_000,
        "dns_query" => 100_000,
        "compose" => 10_000,
        "declared_state" => 30_000,
        "ebpf_frames" => 50_000,
        other => panic!("no input count for fuzz target {other}"),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(name: &str) {
    let target = targets::target(name).expect("a fuzz target");
    if target.needs_root && !is_root() {
        assert!(
            std::env::var("SHOAL_REQUIRE_ROOT").as_deref() != Ok("1"),
            "fuzz target {name} needs root (BPF_PROG_TEST_RUN) and SHOAL_REQUIRE_ROOT=1 forbids skipping it"
        );
        eprintln!("skipped: fuzz target {name} needs root (BPF_PROG_TEST_RUN)");
        return;
    }
    let seeds: Vec<Vec<u8>> = (target.seeds)()
        .expect("the seed inputs")
        .into_iter()
        .map(|(_, input)| input)
        .collect();
    assert!(!seeds.is_empty(), "fuzz target {name} has no seed inputs");
    match short_run(
        target.name,
        target.run,
        &seeds,
        mutated_inputs(name),
        target.max_len,
    ) {
        Ok(summary) => println!("{summary}"),
        Err(finding) => panic!("{finding}"),
    }
}

#[test]
fn manager_port() {
    run("manager_port");
}

#[test]
fn gossip_datagram() {
    run("gossip_datagram");
}

#[test]
fn dns_query() {
    run("dns_query");
}

#[test]
fn compose() {
    run("compose");
}

#[test]
fn declared_state() {
    run("declared_state");
}

#[test]
fn ebpf_frames() {
    run("ebpf_frames");
}

/// Every cargo-fuzz binary is a target here (and so in the short run), and calls
/// nothing but that target's `run`: libFuzzer and the short run test the same code.
#[test]
fn every_cargo_fuzz_binary_is_a_target_that_calls_its_run() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz_targets");
    let mut binaries: Vec<String> = std::fs::read_dir(&dir)
        .expect("fuzz/fuzz_targets")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            let name = p
                .file_stem()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&p).expect("a fuzz target's source");
            let calls = [
                format!("use shoal_fuzz_targets::targets::{name};"),
                format!("fuzz_target!(|input: &[u8]| {name}::run(input));"),
            ];
            for call in calls {
                assert!(text.contains(&call), "{} lacks {call}", p.display());
            }
            name
        })
        .collect();
    binaries.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(binaries, names);
    for t in TARGETS {
        mutated_inputs(t.name);
    }
}
