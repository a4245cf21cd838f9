//! `cargo xtask test`: README's test command. Runs setup if needed, then every layer of
//! tests, and ends with one summary line `N passed, N failed`.
//!
//! The fuzz targets take part as a short run of their own step: every target's seeds and
//! a fixed set of mutations of them through the same `run` functions the cargo-fuzz
//! binaries call (`fuzz/targets`, a workspace member: stable, no sanitizers, built on
//! what the unit tests built). The libFuzzer build (nightly, sanitizers, outside this
//! workspace, over ten minutes from nothing) is `cargo xtask fuzz`'s alone.
use std::{
    io::{BufRead, BufReader},
    process::{ExitCode, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{setup, util::cargo};

#[derive(Default, Debug, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// Adds the counts of a libtest line `test result: ok. 3 passed; 0 failed; 1 ignored; ...`.
    fn add_line(&mut self, line: &str) -> bool {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return false;
        };
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let (n, what) = match words.as_slice() {
                [.., n, what] => (n.parse::<u64>().ok(), *what),
                _ => continue,
            };
            let Some(n) = n else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
        true
    }
}

/// The workspace's tests outside the eBPF crate (built for the kernel) and the lab tests
/// (a step of their own). Every test binary runs even after one fails, so the closing
/// count is whole.
const WORKSPACE_TESTS: &[&str] = &[
    "test",
    "--workspace",
    "--no-fail-fast",
    "--exclude",
    "shoal-ebpf",
    "--exclude",
    "shoal-tests",
];

pub fn run(with_lab: bool) -> Result<ExitCode> {
    let started = Instant::now();
    setup::ensure(false)?;
    step("cargo fmt", &["fmt", "--all", "--", "--check"])?;
    step(
        "cargo clippy",
        &["clippy", "--all-targets", "--", "-D", "warnings"],
    )?;
    // The lab tests run the `shoal` binary, so build every binary first.
    step("cargo build", &["build"])?;
    let mut tally = Tally::default();
    let mut ok = cargo_test(
        "unit and eBPF fixture tests",
        &[WORKSPACE_TESTS, &["--exclude", "shoal-fuzz-targets"]].concat(),
        &mut tally,
    )?;
    // Every fuzz target over its seeds and mutations of them (README, "Fuzzing"), and the
    // mutator's and the runner's own tests. Selected as the unit tests are, then narrowed
    // to these test targets: the same packages give the same features, so the step
    // builds on the unit tests' artifacts (`-p shoal-fuzz-targets` alone would unify
    // fewer tokio features and build tokio and everything above it again).
    ok &= cargo_test(
        "fuzz targets, short run",
        &[
            WORKSPACE_TESTS,
            &["--test", "short_run", "--test", "runner"],
        ]
        .concat(),
        &mut tally,
    )?;
    if with_lab {
        // One lab at a time: each brings up several dockerd on a 2-core machine.
        ok &= cargo_test(
            "lab tests",
            &[
                "test",
                "-p",
                "shoal-tests",
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ],
            &mut tally,
        )?;
    }
    println!(
        "xtask test: finished in {:.0} s ({} ignored)",
        started.elapsed().as_secs_f64(),
        tally.ignored
    );
    println!("{} passed, {} failed", tally.passed, tally.failed);
    Ok(if ok && tally.failed == 0 && tally.passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn step(what: &str, args: &[&str]) -> Result<()> {
    println!("xtask test: {what}");
    let status = cargo()
        .args(args)
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed");
    }
    Ok(())
}

/// Runs a cargo test command, echoing its output and adding its result lines to `tally`.
fn cargo_test(what: &str, args: &[&str], tally: &mut Tally) -> Result<bool> {
    println!("xtask test: {what}");
    let mut child = cargo()
        .args(args)
        .env("SHOAL_REQUIRE_ROOT", "1")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {what}"))?;
    let stdout = child.stdout.take().context("test output")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        tally.add_line(&line);
    }
    Ok(child.wait()?.success())
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tallies_libtest_result_lines() {
        let mut t = Tally::default();
        assert!(t.add_line(
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s"
        ));
        assert!(t.add_line("test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured"));
        assert!(!t.add_line("running 3 tests"));
        assert_eq!(
            t,
            Tally {
                passed: 4,
                failed: 2,
                ignored: 1
            }
        );
    }
}
