//! `shoal swarm ca [--rotate]`, as `docker swarm ca` does it: the root CA certificate
//! (PEM) alone; with `--rotate`, a new root, then the rotation's progress until every
//! node holds a certificate of the new root and trusts it alone, then the new root.
//!
//! Swarm's options for a root the operator brings (`--ca-cert`, `--ca-key`,
//! `--external-ca`) and `--cert-expiry` are refused: shoal makes its roots itself and
//! issues certificates for 90 days.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use clap::Args;

use super::{CliError, Output};
use crate::api::{client::Client, CaView, Reply, Request};

/// How long the wait may see no progress before it ends (the rotation goes on).
const STALL: Duration = Duration::from_secs(120);
/// How often the wait asks again.
const POLL: Duration = Duration::from_millis(200);
/// A progress bar's width, as Docker draws them.
const BAR: usize = 50;

#[derive(Args, Debug, Clone, PartialEq)]
pub struct CaArgs {
    /// Rotate the swarm's root CA: a new root, which the current one vouches for until
    /// every node holds a certificate of it; then the old root is trusted no more
    #[arg(long)]
    pub rotate: bool,
    /// Return once the rotation started instead of waiting for it to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Print no progress
    #[arg(short, long)]
    pub quiet: bool,
    /// Not supported: shoal makes the new root CA itself
    #[arg(long, value_name = "PEM-FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Not supported: shoal makes the new root CA's key itself
    #[arg(long, value_name = "PEM-FILE")]
    pub ca_key: Option<PathBuf>,
    /// Not supported: shoal signs its certificates itself
    #[arg(long, value_name = "EXTERNAL-CA")]
    pub external_ca: Vec<String>,
    /// Not supported: node certificates are valid for 90 days
    #[arg(long, value_name = "DURATION")]
    pub cert_expiry: Option<String>,
}

impl CaArgs {
    /// Options refused before the agent is asked, with why.
    pub fn check(&self) -> Result<(), String> {
        let given = |flag: &str, set: bool, why: &str| {
            if set {
                Err(format!("--{flag} is not supported: {why}"))
            } else {
                Ok(())
            }
        };
        given(
            "ca-cert",
            self.ca_cert.is_some(),
            "shoal makes the new root CA itself (a root CA brought by the operator is not available)",
        )?;
        given(
            "ca-key",
            self.ca_key.is_some(),
            "shoal makes the new root CA and its key itself (a root CA brought by the operator is not available)",
        )?;
        given(
            "external-ca",
            !self.external_ca.is_empty(),
            "the managers sign node certificates themselves (an external CA is not available)",
        )?;
        given(
            "cert-expiry",
            self.cert_expiry.is_some(),
            "node certificates are valid for 90 days (another validity is not available)",
        )?;
        if !self.rotate && (self.detach || self.quiet) {
            return Err(format!(
                "--{} needs --rotate (without it, the root CA certificate is printed)",
                if self.detach { "detach" } else { "quiet" }
            ));
        }
        Ok(())
    }

    pub fn request(&self) -> Request {
        Request::SwarmCa {
            rotate: self.rotate,
        }
    }
}

/// `[=====>      ] 1/3 nodes`.
fn bar(done: usize, total: usize) -> String {
    let filled = (done * BAR).checked_div(total).unwrap_or(BAR).min(BAR);
    format!(
        "[{}>{}] {done}/{total} nodes",
        "=".repeat(filled),
        " ".repeat(BAR - filled)
    )
}

/// The progress block, as Docker prints it.
pub fn progress(view: &CaView) -> String {
    format!(
        "desired root digest: {}\n  rotated TLS certificates:  {}\n  rotated CA certificates:   {}\n",
        view.desired_digest,
        bar(view.certs_rotated, view.nodes),
        bar(view.roots_rotated, view.nodes)
    )
}

fn ask(client: &Client, rotate: bool) -> Result<CaView, CliError> {
    match client.call(&Request::SwarmCa { rotate })? {
        Reply::SwarmCa(view) => Ok(*view),
        other => Err(CliError::Output(format!(
            "unexpected answer from the agent: {other:?}"
        ))),
    }
}

/// Runs `shoal swarm ca ...` against the agent at `socket`.
pub fn run(socket: &Path, args: &CaArgs) -> Result<Output, CliError> {
    args.check().map_err(CliError::Usage)?;
    let client = Client::new(socket);
    let view = ask(&client, args.rotate)?;
    if !args.rotate {
        let mut warnings = Vec::new();
        if view.in_progress {
            warnings.push(format!(
                "a root CA rotation to {} is in progress: {}/{} nodes hold a certificate of it",
                view.desired_digest, view.certs_rotated, view.nodes
            ));
        }
        return Ok(Output {
            stdout: view.root_pem,
            warnings,
        });
    }
    if args.detach {
        return Ok(Output {
            stdout: format!("desired root digest: {}\n", view.desired_digest),
            warnings: Vec::new(),
        });
    }
    let view = wait(&client, view, !args.quiet)?;
    Ok(Output {
        stdout: view.root_pem,
        warnings: Vec::new(),
    })
}

/// An error worth asking again for (an election under way).
fn transient(e: &CliError) -> bool {
    let text = e.to_string();
    text.contains("no quorum") || text.contains("not the leader") || text.contains("cannot reach")
}

/// Asks until every node follows the rotation to `started.desired_digest`, printing the
/// progress when it changes; an error when nothing moves for [`STALL`].
fn wait(client: &Client, started: CaView, print: bool) -> Result<CaView, CliError> {
    let desired = started.desired_digest.clone();
    let mut view = started;
    let mut shown = String::new();
    let mut moved = Instant::now();
    let out = std::io::stdout();
    loop {
        let block = progress(&view);
        if block != shown {
            moved = Instant::now();
            if print {
                let mut o = out.lock();
                let _ = write!(o, "{block}");
                let _ = o.flush();
            }
            shown = block;
        }
        if view.converged() && view.root_digest == desired {
            return Ok(view);
        }
        if view.desired_digest != desired {
            if view.root_digest == desired {
                // Over, and another rotation started since.
                return Ok(view);
            }
            return Err(CliError::Output(format!(
                "the swarm's root CA moves to {}, not {desired}: another rotation replaced this one",
                view.desired_digest
            )));
        }
        if moved.elapsed() > STALL {
            let pending: Vec<String> = view
                .pending
                .iter()
                .map(|n| {
                    format!(
                        "{} ({}){}",
                        n.hostname,
                        n.id,
                        if n.down { ", Down" } else { "" }
                    )
                })
                .collect();
            return Err(CliError::Output(format!(
                "the root CA rotation made no progress for {} s; waiting for {} (a node that will not come back: `shoal node rm` it). The rotation goes on: `shoal swarm ca` shows it",
                STALL.as_secs(),
                pending.join(", ")
            )));
        }
        std::thread::sleep(POLL);
        view = loop {
            match ask(client, false) {
                Ok(v) => break v,
                Err(e) if transient(&e) && moved.elapsed() <= STALL => std::thread::sleep(POLL),
                Err(e) => return Err(e),
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        ca: CaArgs,
    }

    fn args(argv: &[&str]) -> CaArgs {
        Cli::try_parse_from(std::iter::once("ca").chain(argv.iter().copied()))
            .unwrap()
            .ca
    }

    #[test]
    fn swarms_own_root_options_are_refused_with_why() {
        for (argv, flag) in [
            (&["--rotate", "--ca-cert", "root.pem"][..], "--ca-cert"),
            (&["--rotate", "--ca-key", "key.pem"][..], "--ca-key"),
            (
                &["--rotate", "--external-ca", "protocol=cfssl,url=https://ca"][..],
                "--external-ca",
            ),
            (&["--rotate", "--cert-expiry", "720h"][..], "--cert-expiry"),
            (&["--ca-cert", "root.pem"][..], "--ca-cert"),
            (&["-d"][..], "--detach needs --rotate"),
            (&["-q"][..], "--quiet needs --rotate"),
        ] {
            let why = args(argv).check().unwrap_err();
            assert!(why.contains(flag), "{argv:?}: {why}");
        }
        for argv in [&[][..], &["--rotate"][..], &["--rotate", "-d", "-q"][..]] {
            args(argv).check().unwrap();
        }
        assert_eq!(
            args(&["--rotate"]).request(),
            Request::SwarmCa { rotate: true }
        );
    }

    #[test]
    fn progress_is_drawn_as_docker_draws_it() {
        let view = CaView {
            desired_digest: "sha256:05da".into(),
            nodes: 3,
            certs_rotated: 1,
            roots_rotated: 0,
            ..CaView::default()
        };
        let text = progress(&view);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "desired root digest: sha256:05da");
        assert_eq!(
            lines[1],
            format!(
                "  rotated TLS certificates:  [{}>{}] 1/3 nodes",
                "=".repeat(16),
                " ".repeat(34)
            )
        );
        assert_eq!(
            lines[2],
            format!(
                "  rotated CA certificates:   [>{}] 0/3 nodes",
                " ".repeat(50)
            )
        );
        assert_eq!(bar(3, 3), format!("[{}>] 3/3 nodes", "=".repeat(50)));
        assert_eq!(bar(0, 0), format!("[{}>] 0/0 nodes", "=".repeat(50)));
    }
}
