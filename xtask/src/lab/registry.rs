//! The lab's image registries: Debian's `docker-registry` (the distribution registry,
//! 2.8) in the client namespace, outside the cluster, over plain HTTP (every lab dockerd
//! lists the underlay subnet under `--insecure-registry`).
//!
//! `lab up` starts one at [`REGISTRY_PORT`] holding the lab images
//! (`<address>:5000/shoal/web:1`, `:2`), pushed from the images built in memory
//! ([`crate::images::registry_images`]) so their IDs are the tarballs' IDs. Tests start
//! more on other ports, e.g. one with htpasswd authentication ([`start`]). Each has its
//! directory under the lab's run directory (config, htpasswd, data, log, pid file);
//! `lab down` ends it by PID and removes the directory with the rest.
use std::{
    fs,
    io::Write,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{layout::Layout, procs};
use crate::images::{self, RegistryImage};

/// The port of the registry `lab up` starts.
pub const REGISTRY_PORT: u16 = 5000;
/// The registry program of Debian's `docker-registry` package.
pub const REGISTRY_BINARY: &str = "docker-registry";
/// Longest wait for a registry to answer after it starts.
const READY_LIMIT: Duration = Duration::from_secs(60);

/// A user of a registry with htpasswd authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <redacted> }}",
            self.user
        )
    }
}

/// A running lab registry.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Where it listens (the client's address).
    pub addr: SocketAddrV4,
    pub pid: u32,
    /// Its directory under the lab's run directory.
    pub dir: PathBuf,
}

impl Registry {
    /// `address:port`, the prefix of its image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

/// The directory of the lab's registry on `port`.
pub fn registry_dir(layout: &Layout, port: u16) -> PathBuf {
    layout.run_dir().join(format!("registry-{port}"))
}

/// PID files of every registry the lab started (teardown ends them by PID).
pub fn pid_files(layout: &Layout) -> Vec<PathBuf> {
    let Ok(dir) = fs::read_dir(layout.run_dir()) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("registry-"))
        .map(|e| e.path().join("registry.pid"))
        .filter(|p| p.exists())
        .collect()
}

/// Starts a registry on `address:port` in network namespace `netns`, with htpasswd
/// authentication for `auth` when given, waits until it answers and pushes the lab
/// images into it.
pub fn start(
    layout: &Layout,
    netns: &str,
    address: Ipv4Addr,
    port: u16,
    auth: Option<&Credentials>,
) -> Result<Registry> {
    let dir = registry_dir(layout, port);
    if dir.exists() {
        bail!(
            "lab {} already has a registry on port {port} ({})",
            layout.prefix,
            dir.display()
        );
    }
    fs::create_dir_all(dir.join("data"))?;
    let addr = SocketAddrV4::new(address, port);
    let htpasswd = dir.join("htpasswd");
    if let Some(c) = auth {
        fs::write(&htpasswd, htpasswd_line(c)?)?;
    }
    let config = dir.join("config.yml");
    fs::write(
        &config,
        config_yml(&dir.join("data"), addr, auth.map(|_| htpasswd.as_path())),
    )?;
    let log = fs::File::create(dir.join("registry.log"))?;
    let mut cmd = Command::new(REGISTRY_BINARY);
    cmd.arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    procs::enter_netns(&mut cmd, &Path::new("/run/netns").join(netns))?;
    let child = cmd.spawn().with_context(|| {
        format!(
            "starting {REGISTRY_BINARY} (is docker-registry installed? run `cargo xtask setup`)"
        )
    })?;
    let pid = child.id();
    // A daemon in its own session; teardown ends it by PID.
    drop(child);
    fs::write(dir.join("registry.pid"), pid.to_string())?;
    let netrc = dir.join("netrc");
    if let Some(c) = auth {
        write_private(
            &netrc,
            &format!(
                "machine {address} login {} password {}\n",
                netrc_quote(&c.user),
                netrc_quote(&c.password)
            ),
        )?;
    }
    let registry = Registry { addr, pid, dir };
    let http = Http {
        netns,
        netrc: auth.map(|_| netrc.as_path()),
    };
    wait_ready(&registry, &http)?;
    for image in images::registry_images()? {
        push(&registry, &http, &image)
            .with_context(|| format!("pushing {}:{} to {addr}", image.repo, image.tag))?;
    }
    Ok(registry)
}

/// Writes `text` to a new file only its owner may read.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// A netrc token as curl (7.84 and later) reads it: double-quoted, `"` and `\`
/// escaped, so spaces may be part of it.
fn netrc_quote(token: &str) -> String {
    format!("\"{}\"", token.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The registry's configuration: filesystem storage in `data`, deletes allowed (tests
/// remove tags), htpasswd authentication when `htpasswd` is given.
fn config_yml(data: &Path, addr: SocketAddrV4, htpasswd: Option<&Path>) -> String {
    let mut s = format!(
        "version: 0.1\n\
         log:\n  level: warn\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n  secret: shoal-lab-{}\n",
        data.display(),
        addr.port()
    );
    if let Some(p) = htpasswd {
        s += &format!(
            "auth:\n  htpasswd:\n    realm: shoal-lab\n    path: {}\n",
            p.display()
        );
    }
    s
}

/// One htpasswd line with a bcrypt hash (the only kind the registry accepts).
fn htpasswd_line(c: &Credentials) -> Result<String> {
    if c.user.is_empty() || c.user.contains(':') || c.user.contains('\n') {
        bail!(
            "bad registry user {:?}: not empty, no ':' or newline",
            c.user
        );
    }
    let hash = bcrypt::hash(&c.password, 8).context("hashing the registry password")?;
    Ok(format!("{}:{hash}\n", c.user))
}

/// Waits until the registry answers `/v2/` (200, or 401 when it wants credentials).
fn wait_ready(registry: &Registry, http: &Http) -> Result<()> {
    let start = Instant::now();
    let url = format!("http://{}/v2/", registry.addr);
    loop {
        let seen = match http.request("GET", &url, &[], None) {
            Ok(r) if r.status == 200 || r.status == 401 => return Ok(()),
            Ok(r) => format!("HTTP {}", r.status),
            Err(e) => format!("{e:#}"),
        };
        let dead = !procs::alive(registry.pid);
        if dead || start.elapsed() > READY_LIMIT {
            let log = fs::read_to_string(registry.dir.join("registry.log")).unwrap_or_default();
            let tail: Vec<_> = log.lines().rev().take(15).collect();
            bail!(
                "the lab registry at {} {} (last answer: {seen}); last log lines:\n{}",
                registry.addr,
                if dead {
                    "exited"
                } else {
                    "did not answer within 60 s"
                },
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pushes one image: its blobs (unless there), then its manifest under its tag.
/// Returns the manifest's digest.
fn push(registry: &Registry, http: &Http, image: &RegistryImage) -> Result<String> {
    let base = format!("http://{}/v2/{}", registry.addr, image.repo);
    for blob in [&image.config, &image.layer] {
        upload_blob(http, &base, blob)?;
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": image.config.len(),
            "digest": images::digest(&image.config),
        },
        "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar",
            "size": image.layer.len(),
            "digest": images::digest(&image.layer),
        }],
    }))?;
    let r = http.request(
        "PUT",
        &format!("{base}/manifests/{}", image.tag),
        &["Content-Type: application/vnd.docker.distribution.manifest.v2+json"],
        Some(&manifest),
    )?;
    if r.status != 201 {
        bail!("manifest upload: HTTP {}: {}", r.status, r.text());
    }
    Ok(images::digest(&manifest))
}

fn upload_blob(http: &Http, base: &str, blob: &[u8]) -> Result<()> {
    let digest = images::digest(blob);
    let head = http.request("HEAD", &format!("{base}/blobs/{digest}"), &[], None)?;
    if head.status == 200 {
        return Ok(());
    }
    let started = http.request("POST", &format!("{base}/blobs/uploads/"), &[], Some(&[]))?;
    if started.status != 202 {
        bail!(
            "starting a blob upload: HTTP {}: {}",
            started.status,
            started.text()
        );
    }
    let location = started
        .header("location")
        .context("the registry's upload answer has no Location")?;
    let location = if location.starts_with('/') {
        // Relative to the registry.
        let origin = base.split("/v2/").next().unwrap_or(base);
        format!("{origin}{location}")
    } else {
        location.to_owned()
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let done = http.request(
        "PUT",
        &format!("{location}{sep}digest={digest}"),
        &["Content-Type: application/octet-stream"],
        Some(blob),
    )?;
    if done.status != 201 {
        bail!("blob upload: HTTP {}: {}", done.status, done.text());
    }
    Ok(())
}

/// HTTP to a registry through `curl` run in its namespace (the registry is reachable
/// only from the lab's namespaces).
struct Http<'a> {
    netns: &'a str,
    /// A netrc file with the registry's credentials, when it wants them.
    netrc: Option<&'a Path>,
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_owned()
    }
}

impl Http<'_> {
    fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[&str],
        body: Option<&[u8]>,
    ) -> Result<Answer> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns, "curl", "-sS", "-i"])
            .args(["--max-time", "60"])
            // No `100 Continue` round: one answer to parse.
            .args(["-H", "Expect:"]);
        if method == "HEAD" {
            cmd.arg("--head");
        } else {
            cmd.args(["-X", method]);
        }
        for h in headers {
            cmd.args(["-H", h]);
        }
        if let Some(netrc) = self.netrc {
            // Credentials from a 0600 file, not the command line (which anyone can read).
            cmd.arg("--netrc-file").arg(netrc);
        }
        if body.is_some() {
            cmd.args(["--data-binary", "@-"]);
        }
        cmd.arg(url)
            .stdin(if body.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running curl in the lab")?;
        if let (Some(data), Some(mut stdin)) = (body, child.stdin.take()) {
            stdin.write_all(data).context("sending a body to curl")?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "curl {method} {url}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        parse_answer(&out.stdout).with_context(|| format!("curl {method} {url}: its answer"))
    }
}

/// An HTTP/1.1 answer as `curl -i` prints it: status line, headers, blank line, body.
fn parse_answer(raw: &[u8]) -> Result<Answer> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            raw.windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        });
    let (head, body) = match split {
        Some((end, start)) => (&raw[..end], raw[start..].to_vec()),
        None => (raw, Vec::new()),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let status_line = lines.next().context("no status line")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed() {
        let a = parse_answer(
            b"HTTP/1.1 202 Accepted\r\nLocation: /v2/x/blobs/uploads/u?_state=s\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(a.status, 202);
        assert_eq!(a.header("location"), Some("/v2/x/blobs/uploads/u?_state=s"));
        let b = parse_answer(b"HTTP/1.1 404 Not Found\r\n\r\n{\"errors\":[]}").unwrap();
        assert_eq!(b.status, 404);
        assert_eq!(b.text(), "{\"errors\":[]}");
        assert!(parse_answer(b"").is_err());
    }

    #[test]
    fn netrc_tokens_are_quoted() {
        assert_eq!(netrc_quote("a b"), "\"a b\"");
        assert_eq!(netrc_quote(r#"q"\"#), r#""q\"\\""#);
    }

    #[test]
    fn config_has_auth_only_when_asked() {
        let addr = SocketAddrV4::new(Ipv4Addr::new(192, 168, 77, 100), 5001);
        let plain = config_yml(Path::new("/d"), addr, None);
        assert!(plain.contains("addr: 192.168.77.100:5001"), "{plain}");
        assert!(!plain.contains("auth:"), "{plain}");
        let auth = config_yml(Path::new("/d"), addr, Some(Path::new("/d/htpasswd")));
        assert!(auth.contains("htpasswd:\n    realm: shoal-lab\n    path: /d/htpasswd"));
    }

    #[test]
    fn htpasswd_lines_verify_and_refuse_bad_users() {
        let c = Credentials {
            user: "u".into(),
            password: "p w".into(),
        };
        let line = htpasswd_line(&c).unwrap();
        let (user, hash) = line.trim().split_once(':').unwrap();
        assert_eq!(user, "u");
        assert!(bcrypt::verify("p w", hash).unwrap());
        let bad = Credentials {
            user: "a:b".into(),
            password: "x".into(),
        };
        assert!(htpasswd_line(&bad).is_err());
    }
}
