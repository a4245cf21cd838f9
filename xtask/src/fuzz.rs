//! `cargo xtask fuzz [--runs N] [TARGET...]`: builds the cargo-fuzz targets of `fuzz/`
//! (nightly, `cargo fuzz build -O`, AddressSanitizer on) into a target directory
//! outside the repository that stays between runs ([`target_dir`]), writes the seed
//! inputs, runs each target for N inputs and prints one line per target (inputs, time,
//! exec/s, coverage). A crash fails the run, naming the input that caused it.
//! `cargo xtask test` runs every target briefly without libFuzzer (the same `run`
//! functions, `fuzz/targets/tests/short_run.rs`).
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{setup, util};

/// Every fuzz target, in the order they run.
pub const TARGETS: &[&str] = &[
    "manager_port",
    "gossip_datagram",
    "dns_query",
    "compose",
    "declared_state",
    "ebpf_frames",
];

/// Targets that need root (BPF_PROG_TEST_RUN, a network namespace).
const ROOT_TARGETS: &[&str] = &["ebpf_frames"];

/// Inputs per target of `cargo xtask fuzz`.
pub const DEFAULT_RUNS: u64 = 1_000_000;

/// The target directory's environment override.
pub const TARGET_DIR_ENV: &str = "SHOAL_FUZZ_TARGET_DIR";
const DEFAULT_TARGET_DIR: &str = "/var/tmp/shoal-fuzz-target";

/// The host triple cargo-fuzz builds for.
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// The largest input of a target, where the default (4096 bytes) does not suit it.
fn max_len(target: &str) -> Option<usize> {
    match target {
        // One Ethernet frame at the underlay's MTU.
        "ebpf_frames" => Some(1514),
        _ => None,
    }
}

/// The build directory: `$SHOAL_FUZZ_TARGET_DIR`, else /var/tmp/shoal-fuzz-target. Kept
/// outside the repository so that a fresh clone (a CI checkout) reuses it.
pub fn target_dir() -> PathBuf {
    match std::env::var_os(TARGET_DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(DEFAULT_TARGET_DIR),
    }
}

/// What one target's run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub target: String,
    pub inputs: u64,
    pub elapsed: Duration,
    pub exec_per_sec: u64,
    /// Coverage counters reached (libFuzzer's `cov:`) and features (`ft:`).
    pub coverage: Option<u64>,
    pub features: Option<u64>,
    pub corpus: Option<u64>,
    pub peak_rss_mb: Option<u64>,
    /// The input that crashed the target, as libFuzzer wrote it.
    pub crash: Option<PathBuf>,
    /// The run failed without naming an input (it could not start, say).
    pub failed: Option<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.crash.is_none() && self.failed.is_none()
    }

    /// The one line printed for the target.
    pub fn line(&self) -> String {
        let mut s = format!(
            "fuzz {}: {} inputs in {:.1} s ({} exec/s)",
            self.target,
            self.inputs,
            self.elapsed.as_secs_f64(),
            self.exec_per_sec
        );
        if let Some(c) = self.coverage {
            s += &format!(", coverage {c}");
            if let Some(f) = self.features {
                s += &format!(" (features {f})");
            }
        }
        if let Some(c) = self.corpus {
            s += &format!(", corpus {c}");
        }
        if let Some(r) = self.peak_rss_mb {
            s += &format!(", peak RSS {r} MB");
        }
        match (&self.crash, &self.failed) {
            (Some(path), _) => s += &format!(": CRASHED, input in {}", path.display()),
            (None, Some(why)) => s += &format!(": FAILED: {why}"),
            (None, None) => s += ": no crash",
        }
        s
    }
}

/// What libFuzzer's output says: the last status line's counters, the final stats,
/// the crash artifact.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub coverage: Option<u64>,
    pub features: Option<u64>,
    pub corpus: Option<u64>,
    pub inputs: Option<u64>,
    pub exec_per_sec: Option<u64>,
    pub peak_rss_mb: Option<u64>,
    pub artifact: Option<PathBuf>,
}

impl Parsed {
    /// Takes one line of libFuzzer's stderr.
    pub fn line(&mut self, line: &str) {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("stat::") {
            let Some((key, value)) = rest.split_once(':') else {
                return;
            };
            let value = value.trim().parse().ok();
            match key {
                "number_of_executed_units" => self.inputs = value,
                "average_exec_per_sec" => self.exec_per_sec = value,
                "peak_rss_mb" => self.peak_rss_mb = value,
                _ => {}
            }
            return;
        }
        if let Some(i) = line.find("Test unit written to ") {
            let path = line[i + "Test unit written to ".len()..].trim();
            self.artifact = Some(PathBuf::from(path));
            return;
        }
        // `#1234\tNEW    cov: 567 ft: 890 corp: 12/345b ...`
        if line.starts_with('#') {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |key: &str| {
                words
                    .iter()
                    .position(|w| *w == key)
                    .and_then(|i| words.get(i + 1))
            };
            let number = |w: Option<&&str>| w.and_then(|w| w.split('/').next()?.parse().ok());
            if let Some(c) = number(after("cov:")) {
                self.coverage = Some(c);
            }
            if let Some(f) = number(after("ft:")) {
                self.features = Some(f);
            }
            if let Some(c) = number(after("corp:")) {
                self.corpus = Some(c);
            }
        }
    }
}

/// The targets named, in [`TARGETS`]' order; all of them when none is. An unknown
/// name is refused.
pub fn select(names: &[String]) -> Result<Vec<&'static str>> {
    for n in names {
        if !TARGETS.contains(&n.as_str()) {
            bail!(
                "no fuzz target {n:?}; the targets are: {}",
                TARGETS.join(", ")
            );
        }
    }
    Ok(TARGETS
        .iter()
        .copied()
        .filter(|t| names.is_empty() || names.iter().any(|n| n == t))
        .collect())
}

/// `cargo xtask fuzz`: fails if a target crashed (or could not run).
pub fn command(runs: u64, names: &[String]) -> Result<()> {
    let reports = run(runs, names)?;
    let bad: Vec<&Report> = reports.iter().filter(|r| !r.ok()).collect();
    if !bad.is_empty() {
        let names: Vec<&str> = bad.iter().map(|r| r.target.as_str()).collect();
        bail!("fuzz: {} crashed or failed", names.join(", "));
    }
    Ok(())
}

/// Builds, writes the seeds and runs each selected target for `runs` inputs; one line
/// per target as it finishes. Errors only when nothing could be run (unknown target,
/// no root for a target that needs it, a failed build).
pub fn run(runs: u64, names: &[String]) -> Result<Vec<Report>> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let targets = select(names)?;
    if let Some(t) = targets.iter().find(|t| ROOT_TARGETS.contains(t)) {
        util::require_root(&format!("fuzz target {t}"), "BPF_PROG_TEST_RUN")?;
    }
    setup::cargo_fuzz(&setup::SetupOptions { quiet: true })?;
    let fuzz_dir = util::workspace_root().join("fuzz");
    let target_dir = target_dir();
    build(&fuzz_dir, &target_dir)?;
    let bin_dir = target_dir.join(TRIPLE).join("release");
    let corpus = target_dir.join("corpus");
    let out = Command::new(bin_dir.join("write_seeds"))
        .arg(&corpus)
        .output()
        .context("running write_seeds")?;
    if !out.status.success() {
        bail!(
            "write_seeds failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut reports = Vec::new();
    for t in targets {
        let r = run_target(&bin_dir, t, &corpus.join(t), &fuzz_dir, runs)?;
        println!("{}", r.line());
        reports.push(r);
    }
    Ok(reports)
}

fn build(fuzz_dir: &Path, target_dir: &Path) -> Result<()> {
    println!(
        "fuzz: building the targets (nightly, `cargo fuzz build -O`) in {}",
        target_dir.display()
    );
    let started = Instant::now();
    let status = setup::rustup()?
        .args(["run", setup::NIGHTLY, "cargo", "fuzz", "build", "-O"])
        .current_dir(fuzz_dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .status()
        .context("running cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    println!("fuzz: built in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn run_target(
    bin_dir: &Path,
    target: &str,
    corpus: &Path,
    fuzz_dir: &Path,
    runs: u64,
) -> Result<Report> {
    let artifacts = fuzz_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    let mut cmd = Command::new(bin_dir.join(target));
    cmd.arg(corpus)
        .arg(format!("-runs={runs}"))
        .arg("-print_final_stats=1")
        // A hang is a finding too.
        .arg("-timeout=30")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    if let Some(n) = max_len(target) {
        cmd.arg(format!("-max_len={n}"));
    }
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting fuzz target {target}"))?;
    let stderr = child.stderr.take().context("the target's output")?;
    let mut parsed = Parsed::default();
    // Kept for the report when the target fails without writing an input.
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        parsed.line(&line);
        tail.push(line);
        if tail.len() > 60 {
            tail.remove(0);
        }
    }
    let status = child.wait()?;
    let elapsed = started.elapsed();
    let crashed = !status.success();
    if crashed {
        eprintln!("fuzz {target}: the target's last lines:");
        for l in &tail {
            eprintln!("  {l}");
        }
    }
    let inputs = parsed.inputs.unwrap_or(0);
    let failed = (crashed && parsed.artifact.is_none())
        .then(|| format!("exited with {status}, no input written"));
    Ok(Report {
        target: target.to_string(),
        inputs,
        elapsed,
        exec_per_sec: parsed
            .exec_per_sec
            .unwrap_or_else(|| (inputs as f64 / elapsed.as_secs_f64().max(1e-3)) as u64),
        coverage: parsed.coverage,
        features: parsed.features,
        corpus: parsed.corpus,
        peak_rss_mb: parsed.peak_rss_mb,
        crash: parsed.artifact.filter(|_| crashed),
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libfuzzer_output() {
        let mut p = Parsed::default();
        for l in [
            "INFO: Seed: 123",
            "#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb",
            "#1000000\tDONE   cov: 1234 ft: 5678 corp: 321/45Kb lim: 4096 exec/s: 18181 rss: 144Mb",
            "Done 1000000 runs in 55 second(s)",
            "stat::number_of_executed_units: 1000000",
            "stat::average_exec_per_sec:     18181",
            "stat::peak_rss_mb:              144",
        ] {
            p.line(l);
        }
        assert_eq!(
            p,
            Parsed {
                coverage: Some(1234),
                features: Some(5678),
                corpus: Some(321),
                inputs: Some(1_000_000),
                exec_per_sec: Some(18181),
                peak_rss_mb: Some(144),
                artifact: None,
            }
        );
        p.line("artifact_prefix='/r/fuzz/artifacts/compose/'; Test unit written to /r/fuzz/artifacts/compose/crash-abc");
        assert_eq!(
            p.artifact,
            Some(PathBuf::from("/r/fuzz/artifacts/compose/crash-abc"))
        );
    }

    #[test]
    fn targets_are_the_cargo_fuzz_binaries() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
        let mut binaries: Vec<String> = std::fs::read_dir(&dir)
            .expect("fuzz/fuzz_targets")
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .map(|p| {
                p.file_stem()
                    .expect("a name")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        binaries.sort();
        let mut targets = TARGETS.to_vec();
        targets.sort();
        assert_eq!(binaries, targets);
    }

    #[test]
    fn selects_targets_in_order_and_refuses_unknown_ones() {
        assert_eq!(select(&[]).unwrap(), TARGETS);
        assert_eq!(
            select(&["compose".into(), "dns_query".into()]).unwrap(),
            ["dns_query", "compose"]
        );
        let e = select(&["nope".into()]).unwrap_err().to_string();
        assert!(e.contains("no fuzz target \"nope\""), "{e}");
    }

    #[test]
    fn report_line_says_inputs_time_rate_coverage_and_crash() {
        let mut r = Report {
            target: "compose".into(),
            inputs: 20_000,
            elapsed: Duration::from_millis(2500),
            exec_per_sec: 8000,
            coverage: Some(900),
            features: Some(2000),
            corpus: Some(50),
            peak_rss_mb: Some(100),
            crash: None,
            failed: None,
        };
        assert_eq!(
            r.line(),
            "fuzz compose: 20000 inputs in 2.5 s (8000 exec/s), coverage 900 (features 2000), corpus 50, peak RSS 100 MB: no crash"
        );
        r.crash = Some("/a/crash-1".into());
        assert!(!r.ok());
        assert!(r.line().ends_with(": CRASHED, input in /a/crash-1"));
    }
}
