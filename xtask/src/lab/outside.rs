//! The world outside the cluster, in the client namespace: an upstream DNS server
//! (dnsmasq) that serves [`NAME`] and is the lab hosts' resolver (their dockerd's and
//! their agents' upstream), and a web server (busybox httpd) whose `/` answers
//! `host=<machine> client=<address the request came from>`, so a test sees which
//! address a task's traffic leaves the cluster with.
//!
//! Both run as daemons in sessions of their own; their command lines name the lab's run
//! directory, which is how `lab down` finds and ends them.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::layout::{ClientState, Layout};
use crate::images::{cgi_script, BUSYBOX};

/// The name the upstream serves: the client's address.
pub const NAME: &str = "outside.lab";
/// Port of the upstream DNS server on the client's address.
pub const DNS_PORT: u16 = 53;
/// Port of the web server on the client's address.
pub const HTTP_PORT: u16 = 80;
/// The IPv6 address the upstream gives [`NAME`] (nothing routes it).
pub const IPV6_ADDRESS: &str = "fd00:77::100";
/// How long the servers get to answer.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Starts the upstream DNS server and the web server in `client`'s namespace and waits
/// until both answer; returns their addresses.
pub fn start(layout: &Layout, client: &ClientState) -> Result<(SocketAddr, SocketAddr)> {
    let dir = layout.run_dir().join("outside");
    let www = dir.join("www");
    fs::create_dir_all(www.join("cgi-bin"))?;
    let cgi = www.join("cgi-bin/index.cgi");
    fs::write(&cgi, cgi_script(""))?;
    fs::set_permissions(&cgi, fs::Permissions::from_mode(0o755))?;
    let hosts = dir.join("hosts");
    // Both families: busybox nslookup asks for both and fails on an empty answer.
    // Nothing in the lab routes IPv6, and busybox wget prefers the IPv4 address.
    fs::write(
        &hosts,
        format!("{} {NAME}\n{IPV6_ADDRESS} {NAME}\n", client.address),
    )?;

    let dns = SocketAddr::from((client.address, DNS_PORT));
    let http = SocketAddr::from((client.address, HTTP_PORT));
    let log = dir.join("servers.log");
    daemon(
        &client.netns,
        &[
            "dnsmasq",
            "--no-daemon",
            "--user=root",
            &format!("--port={DNS_PORT}"),
            "--bind-interfaces",
            &format!("--listen-address={}", client.address),
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            &format!("--addn-hosts={}", hosts.display()),
        ],
        &log,
    )?;
    daemon(
        &client.netns,
        &[
            BUSYBOX,
            "httpd",
            "-f",
            "-p",
            &http.to_string(),
            "-h",
            &www.display().to_string(),
        ],
        &log,
    )?;
    wait_ready(&client.netns, client.address, &log)?;
    Ok((dns, http))
}

/// Runs `argv` in namespace `netns` as a daemon (its own session, no stdin, output to
/// `log`).
fn daemon(netns: &str, argv: &[&str], log: &std::path::Path) -> Result<()> {
    let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid in the child before exec touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {} in {netns}", argv[0]))?;
    // A daemon in its own session; `lab down` ends it by PID.
    drop(child);
    Ok(())
}

/// Waits until the name resolves to `address` and `/` answers.
fn wait_ready(netns: &str, address: Ipv4Addr, log: &std::path::Path) -> Result<()> {
    let start = Instant::now();
    let probe = |args: &[&str]| -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let server = format!("@{address}");
    let url = format!("http://{address}:{HTTP_PORT}/");
    loop {
        let dns = probe(&["dig", "+short", "+time=1", "+tries=1", &server, NAME]);
        let web = probe(&["curl", "-sS", "--max-time", "2", &url]);
        let dns_ok = dns.as_deref() == Some(address.to_string().as_str());
        let web_ok = web.as_deref().is_some_and(|b| b.contains("client="));
        if dns_ok && web_ok {
            return Ok(());
        }
        if start.elapsed() > READY_WITHIN {
            bail!(
                "the lab's upstream DNS ({}) and web server ({}) in {netns} did not answer within {READY_WITHIN:?}; their log:\n{}",
                if dns_ok { "answers" } else { "silent" },
                if web_ok { "answers" } else { "silent" },
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
