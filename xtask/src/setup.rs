//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks for shoal's
//! builds, tests and labs. Idempotent: a second run only checks, in seconds.
//!
//! Steps, each a check and, only when the check fails, an action:
//! 1. Debian packages ([`PACKAGES`]), via one `apt-get update` + `apt-get install`.
//! 2. `rust-src` for the nightly toolchain (for `-Z build-std=core`).
//! 3. bpf-linker [`BPF_LINKER_VERSION`], built against the nightly toolchain's own libLLVM.
//! 4. The lab's Docker image tarballs (see [`crate::images`]).
//! 5. cargo-fuzz [`CARGO_FUZZ_VERSION`] (`cargo xtask fuzz`, and the short fuzz runs of
//!    `cargo xtask test`).

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

use crate::images;

/// Debian packages the lab, tests and benchmarks use.
pub const PACKAGES: &[&str] = &[
    "docker.io",
    "busybox-static",
    "iproute2",
    "iputils-ping",
    "curl",
    "bind9-dnsutils",
    "iperf3",
    "wrk",
    "util-linux",
    "procps",
    "ethtool",
    // DNS: a real upstream for the forwarding tests, and the load generator.
    "dnsmasq-base",
    "dnsperf",
    // bench lb: the userspace proxy and the iptables path the routing mesh is compared with.
    "haproxy",
    "iptables",
    // The agent cleanup test lists the kernel's eBPF programs, links and maps.
    "bpftool",
    // The encrypted overlay test captures the underlay.
    "tcpdump",
    // The lab's image registry (the distribution registry), which hosts pull from.
    "docker-registry",
    // The agent's task egress NAT (`nft -f -`).
    "nftables",
    // The Engine API test's second client: the Docker SDK for Python.
    "python3-docker",
    // The metrics test's scraper (`prometheus`) and `promtool check metrics`.
    "prometheus",
    // The cluster page test's browser (headless, driven over its DevTools pipe).
    "chromium",
];

pub const NIGHTLY: &str = "nightly";
pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Options for [`run`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SetupOptions {
    /// Print only what is being changed, not what was found present.
    pub quiet: bool,
}

impl SetupOptions {
    fn present(&self, what: &str) {
        if !self.quiet {
            println!("setup: {what} present");
        }
    }
}

/// Checks and installs everything; see the module docs. Must run as root.
pub fn run(opts: &SetupOptions) -> Result<()> {
    require_root()?;
    apt_packages(opts)?;
    rust_src(opts)?;
    bpf_linker(opts)?;
    lab_images(opts)?;
    cargo_fuzz(opts)?;
    if !opts.quiet {
        println!("setup: done");
    }
    Ok(())
}

/// Runs [`run`] (quietly if `quiet`) only when a check finds something missing; with
/// everything present it installs nothing, prints nothing and needs no root.
pub fn ensure(quiet: bool) -> Result<()> {
    let missing = missing()?;
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: missing {}", missing.join(", "));
    run(&SetupOptions { quiet })
}

/// What the checks find missing, without changing anything.
pub fn missing() -> Result<Vec<String>> {
    let mut m: Vec<String> = missing_packages()?;
    // Errors (no rustup for this user, say) count as "missing"; run() then says why.
    if !has_rust_src().unwrap_or(false) {
        m.push(format!("rust-src ({NIGHTLY})"));
    }
    if installed_bpf_linker().is_none() {
        m.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
    }
    // An error here (e.g. no busybox yet) counts as "images missing".
    if !images::all_up_to_date(&images::image_dir()).unwrap_or(false) {
        m.push("lab images".into());
    }
    if installed_cargo_fuzz().is_none() {
        m.push(format!("cargo-fuzz {CARGO_FUZZ_VERSION}"));
    }
    Ok(m)
}

fn require_root() -> Result<()> {
    crate::util::require_root("setup", "it installs packages")
}

// ---------------------------------------------------------------------------------------
// Running commands

/// Runs `cmd` capturing its output; on failure the error carries `what`, the exit status
/// and the tail of stderr/stdout.
fn run_captured(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("setup: cannot start {what}"))?;
    if !out.status.success() {
        bail!("setup: {what} failed ({}):\n{}", out.status, tail(&out, 40));
    }
    Ok(out)
}

fn tail(out: &Output, lines: usize) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn stdout_of(cmd: &mut Command, what: &str) -> Result<String> {
    let out = run_captured(cmd, what)?;
    String::from_utf8(out.stdout).with_context(|| format!("setup: {what} printed non-UTF-8"))
}

/// `$CARGO_HOME/bin`, else `$HOME/.cargo/bin`.
fn cargo_bin_dir() -> Option<PathBuf> {
    match env::var_os("CARGO_HOME") {
        Some(h) if !h.is_empty() => Some(PathBuf::from(h).join("bin")),
        _ => env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")),
    }
}

/// A program from PATH, else from the cargo bin directory (rustup, cargo installs).
fn find_program(name: &str) -> Option<PathBuf> {
    let in_path = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    in_path
        .into_iter()
        .chain(cargo_bin_dir())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `rustup` with the environment a surrounding `cargo run` leaves behind removed, so
/// `rustup run nightly ...` really uses nightly and our flags.
pub fn rustup() -> Result<Command> {
    let path = find_program("rustup").context("setup: rustup not found in PATH or ~/.cargo/bin")?;
    let mut c = Command::new(path);
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO",
    ] {
        c.env_remove(var);
    }
    Ok(c)
}

// ---------------------------------------------------------------------------------------
// Step 1: Debian packages

/// Packages `dpkg-query -W -f='${Package}\t${Status}\n'` reports as installed.
pub fn dpkg_installed(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| {
            let (pkg, status) = l.split_once('\t')?;
            is_installed_status(status).then(|| pkg.trim().to_owned())
        })
        .collect()
}

/// Whether a dpkg `${Status}` means installed ("install ok installed"; "hold ok
/// installed" counts too).
pub fn is_installed_status(status: &str) -> bool {
    let words: Vec<&str> = status.split_whitespace().collect();
    matches!(words.as_slice(), [_, "ok", "installed"])
}

fn missing_packages() -> Result<Vec<String>> {
    // Unknown packages make dpkg-query exit 1 with a message on stderr: not an error here.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${Status}\n")
        .args(PACKAGES)
        .output()
        .context("setup: cannot run dpkg-query (is this Debian?)")?;
    let installed = dpkg_installed(&String::from_utf8_lossy(&out.stdout));
    Ok(PACKAGES
        .iter()
        .filter(|p| !installed.iter().any(|i| i == *p))
        .map(|p| p.to_string())
        .collect())
}

fn apt_packages(opts: &SetupOptions) -> Result<()> {
    let missing = missing_packages()?;
    for p in PACKAGES.iter().filter(|p| !missing.iter().any(|m| m == *p)) {
        opts.present(p);
    }
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing {} ...", missing.join(" "));
    run_captured(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get update",
    )?;
    run_captured(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!(
            "setup: still not installed after apt-get: {}",
            still.join(" ")
        );
    }
    println!("setup: installed {}", missing.join(" "));
    if missing.iter().any(|p| p == "docker.io") {
        println!(
            "setup: note: no init system runs services here; the lab starts its own dockerd per host"
        );
    }
    if missing.iter().any(|p| p == "docker-registry") {
        stop_system_service("docker-registry", "docker-registry", 5000);
    }
    if missing.iter().any(|p| p == "prometheus") {
        stop_system_service("prometheus", "prometheus", 9090);
    }
    Ok(())
}

/// Debian's docker-registry and prometheus packages start their service on every
/// address of the machine (ports 5000 and 9090) where an init system runs it. The lab
/// runs its own inside its namespaces, so a service setup just installed is stopped and
/// disabled (one that was there before setup is left alone).
fn stop_system_service(package: &str, unit: &str, port: u16) {
    let active = Command::new("systemctl")
        .args(["is-active", "--quiet", unit])
        .status()
        .is_ok_and(|s| s.success());
    if !active {
        return;
    }
    let stopped = Command::new("systemctl")
        .args(["disable", "--now", unit])
        .output()
        .is_ok_and(|o| o.status.success());
    if stopped {
        println!(
            "setup: stopped and disabled the system-wide {unit} service it just installed (the lab runs its own)"
        );
    } else {
        println!(
            "setup: note: the {package} package's own service runs on port {port} of this machine; the lab does not need it"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Step 2: rust-src for nightly

/// Whether `rustup component list --installed` output lists `component`.
pub fn has_component(list: &str, component: &str) -> bool {
    list.lines().any(|l| {
        let name = l.split_whitespace().next().unwrap_or("");
        // "rust-src", or a target-suffixed name such as "rust-std-x86_64-unknown-linux-gnu"
        name == component
    })
}

fn has_rust_src() -> Result<bool> {
    let list = stdout_of(
        rustup()?.args(["component", "list", "--toolchain", NIGHTLY, "--installed"]),
        "rustup component list",
    )?;
    Ok(has_component(&list, "rust-src"))
}

fn rust_src(opts: &SetupOptions) -> Result<()> {
    if has_rust_src()? {
        opts.present(&format!("rust-src ({NIGHTLY})"));
        return Ok(());
    }
    println!("setup: installing rust-src for {NIGHTLY} ...");
    run_captured(
        rustup()?.args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
        "rustup component add rust-src",
    )?;
    if !has_rust_src()? {
        bail!("setup: rust-src still missing after rustup component add");
    }
    println!("setup: installed rust-src ({NIGHTLY})");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Step 3: bpf-linker

/// The version in `bpf-linker --version` output ("bpf-linker 0.13.0").
pub fn parse_bpf_linker_version(out: &str) -> Option<&str> {
    let mut w = out.split_whitespace();
    (w.next()? == "bpf-linker").then_some(())?;
    w.next()
}

/// The LLVM major version from `rustc --version --verbose` ("LLVM version: 22.1.4" -> 22).
pub fn llvm_major(verbose: &str) -> Option<u32> {
    verbose
        .lines()
        .find_map(|l| l.trim().strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|m| m.parse().ok())
}

/// The `-l dylib=` name of the toolchain's LLVM from the file names in `<sysroot>/lib`:
/// `libLLVM-<major>-rust-<...>.so` -> `LLVM-<major>-rust-<...>`. The first in sorted
/// order if several match.
pub fn llvm_dylib_name<S: AsRef<str>>(major: u32, file_names: &[S]) -> Option<String> {
    let prefix = format!("libLLVM-{major}-rust-");
    let mut names: Vec<String> = file_names
        .iter()
        .map(|n| n.as_ref())
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".so"))
        .map(|n| n["lib".len()..n.len() - ".so".len()].to_owned())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// The `cargo install` that builds bpf-linker against the nightly toolchain's libLLVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfLinkerBuild {
    /// Arguments after `rustup run nightly cargo`.
    pub cargo_args: Vec<String>,
    /// The RUSTFLAGS, one flag per element (passed as CARGO_ENCODED_RUSTFLAGS, so a
    /// sysroot path with spaces survives).
    pub rustflags: Vec<String>,
}

impl BpfLinkerBuild {
    /// A shell-like rendering for humans.
    pub fn display(&self) -> String {
        format!(
            "RUSTFLAGS=\"{}\" cargo +{NIGHTLY} {}",
            self.rustflags.join(" "),
            self.cargo_args.join(" ")
        )
    }
}

/// Plans the bpf-linker build from the nightly sysroot, `rustc --version --verbose`
/// output and the file names in `<sysroot>/lib`.
pub fn plan_bpf_linker_build<S: AsRef<str>>(
    sysroot: &Path,
    rustc_verbose: &str,
    lib_files: &[S],
) -> Result<BpfLinkerBuild> {
    let major = llvm_major(rustc_verbose)
        .context("setup: no \"LLVM version:\" line in rustc +nightly --version --verbose")?;
    let lib_dir = sysroot.join("lib");
    let dylib = llvm_dylib_name(major, lib_files).with_context(|| {
        format!(
            "setup: no libLLVM-{major}-rust-*.so in {} (nightly toolchain incomplete?)",
            lib_dir.display()
        )
    })?;
    let lib = lib_dir.display();
    Ok(BpfLinkerBuild {
        cargo_args: vec![
            "install".into(),
            format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked".into(),
            "--force".into(),
            "--no-default-features".into(),
            "--features".into(),
            format!("llvm-{major},no-llvm-linking"),
        ],
        rustflags: vec![
            "-L".into(),
            format!("native={lib}"),
            "-l".into(),
            format!("dylib={dylib}"),
            "-C".into(),
            format!("link-arg=-Wl,-rpath,{lib}"),
        ],
    })
}

/// The path of a bpf-linker that runs and reports [`BPF_LINKER_VERSION`].
fn installed_bpf_linker() -> Option<PathBuf> {
    let path = find_program("bpf-linker")?;
    let out = Command::new(&path).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    (parse_bpf_linker_version(&text)? == BPF_LINKER_VERSION).then_some(path)
}

/// Detects the nightly toolchain's sysroot, LLVM and libLLVM and plans the build.
pub fn detect_bpf_linker_build() -> Result<BpfLinkerBuild> {
    let sysroot = stdout_of(
        rustup()?.args(["run", NIGHTLY, "rustc", "--print", "sysroot"]),
        "rustc +nightly --print sysroot",
    )?;
    let sysroot = PathBuf::from(sysroot.trim());
    let verbose = stdout_of(
        rustup()?.args(["run", NIGHTLY, "rustc", "--version", "--verbose"]),
        "rustc +nightly --version --verbose",
    )?;
    let lib_dir = sysroot.join("lib");
    let files: Vec<String> = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("setup: listing {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    plan_bpf_linker_build(&sysroot, &verbose, &files)
}

fn bpf_linker(opts: &SetupOptions) -> Result<()> {
    if let Some(p) = installed_bpf_linker() {
        opts.present(&format!(
            "bpf-linker {BPF_LINKER_VERSION} ({})",
            p.display()
        ));
        return Ok(());
    }
    let plan = detect_bpf_linker_build()?;
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} (about a minute): {}",
        plan.display()
    );
    let encoded: OsString = plan.rustflags.join("\x1f").into();
    run_captured(
        rustup()?
            .args(["run", NIGHTLY, "cargo"])
            .args(&plan.cargo_args)
            .env("CARGO_ENCODED_RUSTFLAGS", encoded),
        "cargo install bpf-linker",
    )?;
    match installed_bpf_linker() {
        Some(p) => println!(
            "setup: installed bpf-linker {BPF_LINKER_VERSION} ({})",
            p.display()
        ),
        None => bail!(
            "setup: bpf-linker {BPF_LINKER_VERSION} still not runnable after cargo install \
             (is {} in PATH?)",
            cargo_bin_dir().unwrap_or_default().display()
        ),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Step 4: lab images

fn lab_images(opts: &SetupOptions) -> Result<()> {
    // One line per image written (and, unless quiet, per image up to date).
    images::build_all_opts(&images::image_dir(), opts.quiet)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Step 5: cargo-fuzz

/// The version in `cargo-fuzz --version` output ("cargo-fuzz 0.13.2").
pub fn parse_cargo_fuzz_version(out: &str) -> Option<&str> {
    let mut w = out.split_whitespace();
    (w.next()? == "cargo-fuzz").then_some(())?;
    w.next()
}

/// The path of a cargo-fuzz that runs and reports [`CARGO_FUZZ_VERSION`].
fn installed_cargo_fuzz() -> Option<PathBuf> {
    let path = find_program("cargo-fuzz")?;
    let out = Command::new(&path).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    (parse_cargo_fuzz_version(&text)? == CARGO_FUZZ_VERSION).then_some(path)
}

/// Installs cargo-fuzz unless the right version runs already. Needs no root: `cargo
/// xtask fuzz` calls it too.
pub fn cargo_fuzz(opts: &SetupOptions) -> Result<()> {
    if let Some(p) = installed_cargo_fuzz() {
        opts.present(&format!(
            "cargo-fuzz {CARGO_FUZZ_VERSION} ({})",
            p.display()
        ));
        return Ok(());
    }
    println!("setup: building cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
    run_captured(
        rustup()?.args([
            "run",
            "stable",
            "cargo",
            "install",
            &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
            "--locked",
            "--force",
        ]),
        "cargo install cargo-fuzz",
    )?;
    match installed_cargo_fuzz() {
        Some(p) => println!(
            "setup: installed cargo-fuzz {CARGO_FUZZ_VERSION} ({})",
            p.display()
        ),
        None => bail!(
            "setup: cargo-fuzz {CARGO_FUZZ_VERSION} still not runnable after cargo install \
             (is {} in PATH?)",
            cargo_bin_dir().unwrap_or_default().display()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUSTC_VERBOSE: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\n\
        binary: rustc\n\
        commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a\n\
        commit-date: 2026-05-19\n\
        host: x86_64-unknown-linux-gnu\n\
        release: 1.97.0-nightly\n\
        LLVM version: 22.1.4\n";

    #[test]
    fn llvm_major_from_verbose_version() {
        assert_eq!(llvm_major(RUSTC_VERBOSE), Some(22));
        assert_eq!(llvm_major("LLVM version: 19.1.7"), Some(19));
        assert_eq!(llvm_major("rustc 1.97.0\nbinary: rustc\n"), None);
        assert_eq!(llvm_major("LLVM version: x.y"), None);
    }

    #[test]
    fn llvm_dylib_from_listing() {
        let files = [
            "librustc_driver-b5a965480ee51f9a.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "libLLVM-22-rust-1.97.0-nightly.so",
            "rustlib",
        ];
        assert_eq!(
            llvm_dylib_name(22, &files).as_deref(),
            Some("LLVM-22-rust-1.97.0-nightly")
        );
        assert_eq!(llvm_dylib_name(21, &files), None);
        assert_eq!(
            llvm_dylib_name(22, &["libLLVM-22-rust-1.97.0-nightly.so.bak"]),
            None
        );
    }

    #[test]
    fn dpkg_status_parsing() {
        let out = "curl\tinstall ok installed\n\
                   wrk\tdeinstall ok config-files\n\
                   iperf3\thold ok installed\n\
                   ethtool\tinstall ok unpacked\n";
        assert_eq!(dpkg_installed(out), vec!["curl", "iperf3"]);
        assert!(is_installed_status("install ok installed"));
        assert!(!is_installed_status("unknown ok not-installed"));
        assert!(!is_installed_status(""));
    }

    #[test]
    fn component_list_parsing() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(!has_component(
            "rust-std-x86_64-unknown-linux-gnu\n",
            "rust-src"
        ));
    }

    #[test]
    fn cargo_fuzz_version_parsing() {
        assert_eq!(
            parse_cargo_fuzz_version("cargo-fuzz 0.13.2\n"),
            Some("0.13.2")
        );
        assert_eq!(parse_cargo_fuzz_version("bpf-linker 0.13.0"), None);
        assert_eq!(parse_cargo_fuzz_version(""), None);
    }

    #[test]
    fn bpf_linker_version_parsing() {
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.13.0\n"),
            Some("0.13.0")
        );
        assert_eq!(parse_bpf_linker_version("other 0.13.0"), None);
        assert_eq!(parse_bpf_linker_version(""), None);
    }

    #[test]
    fn bpf_linker_build_plan() {
        let sysroot = Path::new("/root/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu");
        let plan = plan_bpf_linker_build(
            sysroot,
            RUSTC_VERBOSE,
            &["libLLVM-22-rust-1.97.0-nightly.so", "rustlib"],
        )
        .unwrap();
        assert_eq!(
            plan.display(),
            "RUSTFLAGS=\"-L native=/root/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu/lib \
             -l dylib=LLVM-22-rust-1.97.0-nightly \
             -C link-arg=-Wl,-rpath,/root/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu/lib\" \
             cargo +nightly install bpf-linker@0.13.0 --locked --force --no-default-features \
             --features llvm-22,no-llvm-linking"
        );
        assert!(plan_bpf_linker_build(sysroot, RUSTC_VERBOSE, &["rustlib"]).is_err());
        assert!(plan_bpf_linker_build(sysroot, "no llvm", &["libLLVM-22-rust-x.so"]).is_err());
    }

    /// Runs the real detection against this machine's nightly toolchain and prints the
    /// command setup would run. `cargo test -p xtask -- --ignored --nocapture detect`
    #[test]
    #[ignore = "needs rustup and a nightly toolchain"]
    fn detect_real_nightly() {
        let plan = detect_bpf_linker_build().unwrap();
        println!("would run: {}", plan.display());
        println!("missing now: {:?}", missing().unwrap());
    }
}
