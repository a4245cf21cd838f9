//! Names, addresses and paths of one lab, all derived from its prefix, and the state
//! file that `lab up` writes for `status`, `exec` and the tests.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Root of every lab's runtime files (sockets, pid files, dockerd exec roots).
pub const RUN_ROOT: &str = "/run/shoal-lab";
/// Root of every lab's dockerd data roots (image layers need a real disk).
pub const DATA_ROOT: &str = "/var/lib/shoal-lab/labs";
/// Default prefix of `lab up`.
pub const DEFAULT_PREFIX: &str = "shoal";
/// The underlay subnet, inside the lab's own namespaces only.
pub const UNDERLAY_PREFIX_LEN: u8 = 24;
const UNDERLAY_NET: [u8; 3] = [192, 168, 77];
/// Name of the underlay interface inside every host.
pub const HOST_UNDERLAY_IF: &str = "eth0";
/// Most hosts one lab can have (addresses .11 to .90).
pub const MAX_HOSTS: u32 = 80;

/// Where one lab lives. Every name a lab creates starts with `prefix`.
#[derive(Clone, Debug)]
pub struct Layout {
    pub prefix: String,
}

impl Layout {
    /// Checks the prefix: 1 to 8 characters, `[a-z0-9]`, starting with a letter, so that
    /// derived names stay short (interface names have 15 bytes) and unambiguous.
    pub fn new(prefix: &str) -> Result<Self> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 8
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !ok {
            bail!(
                "bad lab prefix {prefix:?}: use 1 to 8 characters a-z0-9, starting with a letter"
            );
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    pub fn run_dir(&self) -> PathBuf {
        Path::new(RUN_ROOT).join(&self.prefix)
    }
    pub fn data_dir(&self) -> PathBuf {
        Path::new(DATA_ROOT).join(&self.prefix)
    }
    pub fn state_file(&self) -> PathBuf {
        self.run_dir().join("state.json")
    }
    pub fn host_run_dir(&self, host: &str) -> PathBuf {
        self.run_dir().join(host)
    }
    pub fn holder_pid_file(&self, host: &str) -> PathBuf {
        self.host_run_dir(host).join("holder.pid")
    }
    pub fn dockerd_pid_file(&self, host: &str) -> PathBuf {
        self.host_run_dir(host).join("dockerd.pid")
    }
    pub fn docker_socket(&self, host: &str) -> PathBuf {
        self.host_run_dir(host).join("docker.sock")
    }
    pub fn netns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
    pub fn underlay_netns(&self) -> String {
        self.netns("ul")
    }
    pub fn client_netns(&self) -> String {
        self.netns("cl")
    }
    /// Cgroup parent of a host's containers, under every hierarchy.
    pub fn cgroup_parent(&self, host: &str) -> String {
        self.netns(host)
    }
    /// bpffs directory a host's agent pins its maps in.
    pub fn pin_dir(&self, host: &str) -> PathBuf {
        Path::new("/sys/fs/bpf").join(format!("shoal-lab-{}", self.netns(host)))
    }
    /// The holder process's argv[0]: how teardown recognises it among all processes.
    pub fn holder_name(&self, host: &str) -> String {
        format!("shoal-lab:{}:{host}", self.prefix)
    }
}

pub fn host_name(index: u32) -> String {
    format!("h{index}")
}

pub fn host_address(index: u32) -> Ipv4Addr {
    let [a, b, c] = UNDERLAY_NET;
    Ipv4Addr::new(a, b, c, 10 + index as u8)
}

/// The underlay subnet in CIDR form.
pub fn underlay_subnet() -> String {
    let [a, b, c] = UNDERLAY_NET;
    format!("{a}.{b}.{c}.0/{UNDERLAY_PREFIX_LEN}")
}

pub fn client_address() -> Ipv4Addr {
    let [a, b, c] = UNDERLAY_NET;
    Ipv4Addr::new(a, b, c, 100)
}

/// What `lab status --json` prints and tests read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabState {
    pub prefix: String,
    pub underlay_netns: String,
    pub underlay_subnet: String,
    pub hosts: Vec<HostState>,
    pub client: ClientState,
    /// The lab registry, `address:port` (in the client namespace); images are
    /// `<registry>/shoal/web:1`.
    #[serde(default)]
    pub registry: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostState {
    pub name: String,
    pub netns: String,
    pub underlay_interface: String,
    pub address: Ipv4Addr,
    /// `unix://...` for `docker -H` and DOCKER_HOST.
    pub docker_host: String,
    pub holder_pid: u32,
    pub dockerd_pid: u32,
    /// bpffs directory for this host's agent.
    pub pin_dir: PathBuf,
    /// Scratch directory for this host's agent (data dir, logs).
    pub run_dir: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientState {
    pub netns: String,
    pub address: Ipv4Addr,
    /// The upstream DNS server outside the cluster (dnsmasq serving `outside.lab`):
    /// the lab hosts' resolver.
    #[serde(default)]
    pub dns: Option<SocketAddr>,
    /// The web server outside the cluster (answers `host=... client=<source>`).
    #[serde(default)]
    pub http: Option<SocketAddr>,
}

impl LabState {
    pub fn load(layout: &Layout) -> Result<Option<Self>> {
        let path = layout.state_file();
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, layout: &Layout) -> Result<()> {
        let path = layout.state_file();
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    pub fn host(&self, name: &str) -> Result<&HostState> {
        self.hosts.iter().find(|h| h.name == name).with_context(|| {
            let names: Vec<_> = self.hosts.iter().map(|h| h.name.as_str()).collect();
            format!(
                "unknown lab host {name:?} (lab {} has {})",
                self.prefix,
                names.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        assert!(Layout::new("shoal").is_ok());
        assert!(Layout::new("t1234567").is_ok());
        for bad in ["", "toolongname", "1abc", "a-b", "ABC", "a b"] {
            assert!(Layout::new(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn names_carry_the_prefix() {
        let l = Layout::new("t1").unwrap();
        assert_eq!(l.netns("h2"), "t1-h2");
        assert_eq!(l.underlay_netns(), "t1-ul");
        assert_eq!(l.cgroup_parent("h1"), "t1-h1");
        assert!(l.run_dir().ends_with("t1"));
        assert_eq!(host_address(1), Ipv4Addr::new(192, 168, 77, 11));
    }
}
