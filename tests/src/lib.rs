//! Helpers for shoal's end-to-end lab tests (in `tests/tests/`).
//!
//! Every test brings up its own lab under its own prefix, and a [`LabGuard`] takes it
//! down when the test ends, passed or failed. The tests need root and real dockerd;
//! without root they say so and pass, unless SHOAL_REQUIRE_ROOT=1 (set by
//! `cargo xtask test`), where they fail.
use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

pub use xtask::lab::{self, LabState, Layout};

pub mod browser;
pub mod docker_cli;
pub mod load;
pub mod manager_port;
pub mod swarm;
pub mod tables;

/// True if the test may run; false (after saying why) if it must be skipped.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("SHOAL_REQUIRE_ROOT").as_deref() != Ok("1"),
        "lab tests need root and SHOAL_REQUIRE_ROOT=1 forbids skipping them"
    );
    eprintln!("skipped: lab tests need root");
    false
}

/// A prefix no other run on this machine uses: `t` + a tag + this process's id.
pub fn unique_prefix(tag: char) -> String {
    format!("t{tag}{}", std::process::id() % 1_000_000)
}

/// Owns a lab for one test; takes it down on drop.
pub struct LabGuard {
    pub layout: Layout,
    pub state: LabState,
}

impl LabGuard {
    pub fn up(tag: char, hosts: u32) -> Self {
        Self::up_with(tag, lab::UpOptions::hosts(hosts))
    }

    /// [`Self::up`] with `lab up`'s options (e.g. no preloaded images).
    pub fn up_with(tag: char, options: lab::UpOptions) -> Self {
        let layout = Layout::new(&unique_prefix(tag)).expect("test prefix is valid");
        let state = lab::up_with(&layout, options).expect("lab up");
        Self { layout, state }
    }

    /// Runs `argv` in a host, returning its output (whatever the exit status).
    pub fn exec(&self, host: &str, argv: &[&str]) -> Output {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        lab::exec_command(&self.state, host, &argv)
            .expect("lab exec command")
            .stdin(Stdio::null())
            .output()
            .expect("run lab exec")
    }

    /// Runs `argv` in a host and returns its stdout; panics with stderr if it fails.
    pub fn exec_ok(&self, host: &str, argv: &[&str]) -> String {
        let out = self.exec(host, argv);
        assert!(
            out.status.success(),
            "{host}: `{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs the `shoal` CLI in a host: its stdout, or its stderr and stdout as the error.
    pub fn shoal(&self, host: &str, args: &[&str]) -> Result<String, String> {
        let mut argv = vec!["shoal"];
        argv.extend_from_slice(args);
        let out = self.exec(host, &argv);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    /// Runs the `shoal` CLI in a host with `input` on its stdin (`swarm unlock`): its
    /// stdout, or its stderr and stdout as the error.
    pub fn shoal_with_input(
        &self,
        host: &str,
        args: &[&str],
        input: &str,
    ) -> Result<String, String> {
        use std::io::Write as _;
        let mut argv = vec!["shoal".to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let mut child = lab::exec_command(&self.state, host, &argv)
            .expect("lab exec command")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run lab exec");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("wait for lab exec");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    /// Stops host `i`'s agent with `sig`, by the PID in its agent.json, and waits until
    /// it is gone.
    pub fn stop_agent(&self, i: usize, sig: libc::c_int) {
        let host = &self.state.hosts[i];
        let agent: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(lab::agent::status_file(host)).expect("agent.json"),
        )
        .expect("agent.json");
        let pid = agent["pid"].as_u64().expect("pid") as u32;
        lab::procs::signal(pid, sig);
        assert!(
            lab::procs::wait_gone(&[pid], Duration::from_secs(60)),
            "{}'s agent did not stop",
            host.name
        );
    }

    /// Runs `argv` in the client namespace.
    pub fn client(&self, argv: &[&str]) -> Output {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        lab::client_command(&self.state, &argv)
            .expect("lab client command")
            .stdin(Stdio::null())
            .output()
            .expect("run lab client")
    }
}

impl LabGuard {
    /// On a failed test, what each agent said last (and any panic of its own), so a CI
    /// log shows why before the lab and its logs are taken down.
    fn print_agent_logs(&self) {
        const TAIL: usize = 40;
        // SHOAL_LAB_LOGS=DIR keeps every agent's whole log there (the lab's own copy
        // goes with the lab).
        let keep = std::env::var_os("SHOAL_LAB_LOGS").map(std::path::PathBuf::from);
        for host in &self.state.hosts {
            let Ok(log) = std::fs::read_to_string(host.run_dir.join("agent.log")) else {
                continue;
            };
            if let Some(dir) = &keep {
                let to = dir.join(format!("{}-{}-agent.log", self.layout.prefix, host.name));
                if std::fs::create_dir_all(dir)
                    .and_then(|()| std::fs::write(&to, &log))
                    .is_ok()
                {
                    eprintln!("---- {} agent.log kept in {} ----", host.name, to.display());
                }
                // And the declared state it computed last (which task has which address).
                let declared = lab::agent::declared_dir(host);
                for file in ["overlay.json", "lb.json", "dns.json"] {
                    let to = dir.join(format!("{}-{}-{file}", self.layout.prefix, host.name));
                    let _ = std::fs::copy(declared.join(file), to);
                }
            }
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("---- {} agent.log: panics ----", host.name);
            for l in lines.iter().filter(|l| l.contains("panicked")) {
                eprintln!("{l}");
            }
            eprintln!("---- {} agent.log: last {TAIL} lines ----", host.name);
            for l in &lines[lines.len().saturating_sub(TAIL)..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_agent_logs();
        }
        if !lab::leftovers(&self.layout).is_empty() {
            if let Err(e) = lab::down(&self.layout) {
                eprintln!("taking down test lab {}: {e:#}", self.layout.prefix);
            }
        }
    }
}

/// Polls `probe` until it returns `Some`, for at most `limit`; panics with the last
/// thing it saw. For conditions on a shared, noisy machine: never a fixed sleep.
pub fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(v) => return v,
            Err(seen) if start.elapsed() > limit => {
                panic!("{what}: not true within {limit:?}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// How many times its documented figure a measured time may take on a loaded machine:
/// a heal or withdrawal this much slower than docs/benchmarks.md says fails its test.
pub const FIGURE_MARGIN: u32 = 5;

/// Fails unless `took` is under [`FIGURE_MARGIN`] times `documented` (the slowest
/// figure the docs give for it); prints the figure either way.
pub fn within_figure(what: &str, took: Duration, documented: Duration) {
    let bound = documented * FIGURE_MARGIN;
    println!("FIGURE {what}: {took:.1?} (documented {documented:?}, bound {bound:?})");
    assert!(
        took < bound,
        "{what} took {took:.1?}, {FIGURE_MARGIN}x or more the documented {documented:?}"
    );
}

/// `curl` from the client namespace; Ok(body) or Err(what curl said).
pub fn client_http(lab: &LabGuard, url: &str) -> Result<String, String> {
    let out = lab.client(&["curl", "-sS", "--max-time", "5", url]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The debug `xtask` binary (for tests of the command line itself).
pub fn xtask_command() -> Command {
    Command::new(xtask::util::target_dir().join("debug/xtask"))
}

impl LabGuard {
    /// `docker exec` in container `container` on `host`; Ok(output) or Err(output).
    pub fn docker_exec(
        &self,
        host: &str,
        container: &str,
        argv: &[&str],
    ) -> Result<String, String> {
        let mut full = vec!["docker", "exec", container];
        full.extend_from_slice(argv);
        let out = self.exec(host, &full);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text.trim().to_owned())
        } else {
            Err(text.trim().to_owned())
        }
    }
}

/// Writes a file so that a reader polling it never sees half of it.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write file");
    std::fs::rename(&tmp, path).expect("rename file");
}
