//! The real docker CLI pointed at a shoal node's Engine API socket (`-H unix://...`),
//! with an empty client configuration of the lab's own: no context, credential or
//! `DOCKER_HOST` of the machine's reaches it.
use std::path::PathBuf;
use std::process::Command;

use crate::{lab, LabGuard};

/// The image's docker client (current, 28.x).
pub const CURRENT: &str = "/usr/local/bin/docker";
/// Debian's docker client (20.10, API 1.41).
pub const DEBIAN_2010: &str = "/usr/bin/docker";

pub struct DockerCli {
    pub socket: PathBuf,
    /// The client configuration directory (empty: made for the lab, in its run
    /// directory, so it goes when the lab goes down).
    pub config: PathBuf,
}

impl DockerCli {
    /// The CLI on lab host `i`'s Engine API socket.
    pub fn on(guard: &LabGuard, i: usize) -> DockerCli {
        let config = guard.layout.run_dir().join("docker-config");
        std::fs::create_dir_all(&config).expect("docker config dir");
        DockerCli {
            socket: lab::agent::engine_api_socket(&guard.state.hosts[i]),
            config,
        }
    }

    /// `client args...` to run as the caller likes (a follower spawns it).
    pub fn command(&self, client: &str, args: &[&str]) -> Command {
        let mut c = Command::new(client);
        c.env("DOCKER_CONFIG", &self.config)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args);
        c
    }

    /// `client args...`: (succeeded, stdout, stderr).
    pub fn run_with(&self, client: &str, args: &[&str]) -> (bool, String, String) {
        let out = self
            .command(client, args)
            .output()
            .unwrap_or_else(|e| panic!("running {client}: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// [`run_with`](Self::run_with) of the current client.
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        self.run_with(CURRENT, args)
    }

    /// A command that must succeed; its stdout as printed.
    pub fn ok_with(&self, client: &str, args: &[&str]) -> String {
        let (ok, out, err) = self.run_with(client, args);
        assert!(ok, "{client} {}: failed: {err}{out}", args.join(" "));
        out
    }

    /// [`ok_with`](Self::ok_with) of the current client.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with(CURRENT, args)
    }

    /// A command that must fail; its stderr.
    pub fn err(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(!ok, "docker {} should fail; printed: {out}", args.join(" "));
        err
    }

    /// `docker exec` through the socket; Ok(output, trimmed) or Err(what it printed).
    pub fn exec(&self, container: &str, argv: &[&str]) -> Result<String, String> {
        let mut args = vec!["exec", container];
        args.extend_from_slice(argv);
        let (ok, out, err) = self.run(&args);
        if ok {
            Ok(out.trim().to_owned())
        } else {
            Err(format!("{err}{out}"))
        }
    }
}
