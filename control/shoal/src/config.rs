//! The agent's configuration: a TOML file and command-line flags, merged (flags win),
//! with defaults filled in and checked.
//!
//! The file and the flags share one type, [`Settings`], whose fields are all optional;
//! [`AgentConfig`] is the result with every value decided. Without `--config`, the
//! agent reads [`DEFAULT_CONFIG_FILE`] if it exists; a file named with `--config` must.
//!
//! The underlay interface, when neither the file nor a flag names it, is the one holding
//! `advertise_addr`, else the one of the IPv4 default route: a plain `shoal agent` works
//! on a host with one way out.
use std::{
    io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use shoal_dataplane::{
    bpffs::DEFAULT_PIN_DIR,
    egress::{EgressParams, DEFAULT_SUBNET as EGRESS_DEFAULT_SUBNET},
    overlay::state::DEFAULT_VXLAN_PORT,
};

/// The config file read when `--config` is not given (a missing one is fine).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/shoal/agent.toml";
/// Default directory for the agent's state files.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/shoal";
/// Default dockerd socket.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Default TTL of the resolver's own answers (Swarm's is 600 s, which serves dead tasks).
pub const DEFAULT_DNS_TTL: u32 = 5;
/// Default bound on queries per second from one source on one network.
pub const DEFAULT_DNS_RATE_LIMIT: u32 = 5_000;
/// Default directory of the overlay networks' pinned namespaces.
pub const DEFAULT_NETNS_DIR: &str = "/run/shoal/netns";

/// Default path of the agent's API socket (the CLI's way in).
pub const DEFAULT_API_SOCKET: &str = shoal::api::DEFAULT_API_SOCKET;
/// Default listen address of a manager's cluster traffic (Swarm's port 2377).
pub const DEFAULT_CLUSTER_LISTEN: &str = "0.0.0.0:2377";
/// Default listen address of gossip (Swarm's port 7946, UDP).
pub const DEFAULT_GOSSIP_LISTEN: &str = "0.0.0.0:7946";
/// Default number of flows the routing mesh's connection table holds (LRU beyond that).
pub const DEFAULT_LB_FLOWS: u32 = 262_144;

/// Longest interface name Linux accepts (IFNAMSIZ minus the NUL).
const MAX_INTERFACE_NAME: usize = 15;

/// Agent settings from one source (the config file or the flags); unset ones are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Interface that carries traffic between hosts; the underlay XDP program attaches
    /// here [file key: underlay_interface] [default: the interface holding
    /// advertise_addr, else the one of the IPv4 default route]
    #[arg(long, value_name = "IF")]
    pub underlay_interface: Option<String>,
    /// This node's address for other nodes: picks the underlay interface (the one
    /// holding it) and is `swarm init|join`'s default --advertise-addr
    /// [file key: advertise_addr] [default: the underlay interface's first IPv4 address]
    #[arg(long, value_name = "ADDR")]
    pub advertise_addr: Option<Ipv4Addr>,
    /// bpffs directory the agent pins its maps in [file key: pin_dir]
    /// [default: /sys/fs/bpf/shoal]
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Directory for the agent's state files, such as agent.json [file key: data_dir]
    /// [default: /var/lib/shoal]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log the underlay counters every SECS seconds; 0 never logs them
    /// [file key: stats_interval_secs] [default: 0]
    #[arg(long = "stats-interval", value_name = "SECS")]
    pub stats_interval_secs: Option<u64>,
    /// The node's dockerd socket [file key: docker_socket]
    /// [default: /var/run/docker.sock]
    #[arg(long, value_name = "PATH")]
    pub docker_socket: Option<PathBuf>,
    /// Standalone mode, for dataplane-only use and tests: JSON file with this node's
    /// declared overlay state (networks, local and remote endpoints), applied again
    /// whenever it changes, instead of the state a cluster node computes from the
    /// cluster (which then goes nowhere). Without it, and without --declared-dns and
    /// --declared-lb, the node's overlay, names, VIPs and published ports follow the
    /// cluster [file key: declared_state]
    #[arg(long, value_name = "FILE")]
    pub declared_state: Option<PathBuf>,
    /// Directory where each overlay network's namespace is pinned [file key: netns_dir]
    /// [default: /run/shoal/netns]
    #[arg(long, value_name = "DIR")]
    pub netns_dir: Option<PathBuf>,
    /// UDP port of the VXLAN overlay in the standalone mode and the default of `swarm
    /// init --data-path-port`; in a swarm every node follows the swarm's port [file key:
    /// data_path_port] [default: 4789]
    #[arg(long, value_name = "PORT")]
    pub data_path_port: Option<u16>,
    /// Standalone mode: JSON file with the declared DNS state (services, tasks,
    /// containers, aliases per network), served on each overlay network's gateway
    /// address, port 53; needs --declared-state [file key: declared_dns]
    #[arg(long, value_name = "FILE")]
    pub declared_dns: Option<PathBuf>,
    /// Upstream resolver for names outside the cluster, ADDR:PORT; repeat for more
    /// [file key: dns_upstreams] [default: the nameservers of /etc/resolv.conf]
    #[arg(long = "dns-upstream", value_name = "ADDR:PORT")]
    pub dns_upstreams: Option<Vec<std::net::SocketAddr>>,
    /// TTL of the resolver's own answers, in seconds [file key: dns_ttl_secs] [default: 5]
    #[arg(long = "dns-ttl", value_name = "SECS")]
    pub dns_ttl_secs: Option<u32>,
    /// Queries per second one source may send on one network; 0 = unlimited
    /// [file key: dns_rate_limit] [default: 5000]
    #[arg(long, value_name = "QPS")]
    pub dns_rate_limit: Option<u32>,
    /// Unix socket the CLI talks to the agent on, made owner-only (0600)
    /// [file key: api_socket] [default: /run/shoal/shoal.sock]
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Where a manager listens for cluster traffic unless `swarm init|join
    /// --listen-addr` says otherwise [file key: cluster_listen] [default: 0.0.0.0:2377]
    #[arg(long, value_name = "ADDR:PORT")]
    pub cluster_listen: Option<std::net::SocketAddr>,
    /// Standalone mode: JSON file with this node's declared load-balancing state
    /// (services, VIPs, published ports, backends), applied again whenever it changes;
    /// needs --declared-state [file key: declared_lb]
    #[arg(long, value_name = "FILE")]
    pub declared_lb: Option<PathBuf>,
    /// Flows the routing mesh's connection table holds; beyond that the least recently
    /// used is evicted (counted in `shoal dataplane stats`) [file key: lb_flows]
    /// [default: 262144]
    #[arg(long, value_name = "N")]
    pub lb_flows: Option<u32>,
    /// Where gossip listens once the node is in a cluster (UDP); its port is the one
    /// peers are reached at, on their data-path addresses [file key: gossip_listen]
    /// [default: 0.0.0.0:7946]
    #[arg(long, value_name = "ADDR:PORT")]
    pub gossip_listen: Option<std::net::SocketAddr>,
    /// Subnet of the node's gateway bridge (shoal_gwbridge), through which every task
    /// reaches addresses outside the cluster, its source translated to the node's
    /// address; the bridge holds the first address, where tasks with no network find
    /// the resolver. It must not hold the host's own addresses or overlay subnets
    /// [file key: egress_subnet] [default: 172.18.0.0/16]
    #[arg(long, value_name = "CIDR")]
    pub egress_subnet: Option<ipnet::Ipv4Net>,
}

impl Settings {
    /// Parses the text of a config file; `origin` names it in errors, with the line and
    /// the key the error is at.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            location: e.span().map(|s| location_of(text, s.start)),
            message: e.message().replace('\n', " "),
        })
    }

    /// The settings of the config file: `file` (which must exist), or
    /// [`DEFAULT_CONFIG_FILE`] if it exists, or none.
    pub fn from_config_file(file: Option<&Path>) -> Result<Self, ConfigError> {
        match file {
            Some(path) => Self::from_file(path),
            None => {
                let default = Path::new(DEFAULT_CONFIG_FILE);
                match Self::from_file(default) {
                    Err(ConfigError::Read { error, .. })
                        if error.kind() == io::ErrorKind::NotFound =>
                    {
                        Ok(Self::default())
                    }
                    other => other,
                }
            }
        }
    }

    /// Reads and parses the config file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::from_toml(&text, path)
    }

    /// `over`'s values where it has them, `self`'s otherwise.
    pub fn overridden_by(self, over: Settings) -> Settings {
        Settings {
            underlay_interface: over.underlay_interface.or(self.underlay_interface),
            advertise_addr: over.advertise_addr.or(self.advertise_addr),
            pin_dir: over.pin_dir.or(self.pin_dir),
            data_dir: over.data_dir.or(self.data_dir),
            stats_interval_secs: over.stats_interval_secs.or(self.stats_interval_secs),
            docker_socket: over.docker_socket.or(self.docker_socket),
            declared_state: over.declared_state.or(self.declared_state),
            netns_dir: over.netns_dir.or(self.netns_dir),
            data_path_port: over.data_path_port.or(self.data_path_port),
            declared_dns: over.declared_dns.or(self.declared_dns),
            dns_upstreams: over.dns_upstreams.or(self.dns_upstreams),
            dns_ttl_secs: over.dns_ttl_secs.or(self.dns_ttl_secs),
            dns_rate_limit: over.dns_rate_limit.or(self.dns_rate_limit),
            api_socket: over.api_socket.or(self.api_socket),
            cluster_listen: over.cluster_listen.or(self.cluster_listen),
            declared_lb: over.declared_lb.or(self.declared_lb),
            lb_flows: over.lb_flows.or(self.lb_flows),
            gossip_listen: over.gossip_listen.or(self.gossip_listen),
            egress_subnet: over.egress_subnet.or(self.egress_subnet),
        }
    }
}

/// Where one agent keeps what it makes on the host: enough to find it all again
/// (`shoal agent cleanup`) without the rest of a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPaths {
    pub pin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub docker_socket: PathBuf,
    pub netns_dir: PathBuf,
    pub api_socket: PathBuf,
}

impl AgentPaths {
    /// The settings' paths, defaults filled in.
    pub fn resolve(settings: &Settings) -> Result<Self, ConfigError> {
        let or = |value: &Option<PathBuf>, default: &str| {
            value.clone().unwrap_or_else(|| PathBuf::from(default))
        };
        let paths = Self {
            pin_dir: or(&settings.pin_dir, DEFAULT_PIN_DIR),
            data_dir: or(&settings.data_dir, DEFAULT_DATA_DIR),
            docker_socket: or(&settings.docker_socket, DEFAULT_DOCKER_SOCKET),
            netns_dir: or(&settings.netns_dir, DEFAULT_NETNS_DIR),
            api_socket: or(&settings.api_socket, DEFAULT_API_SOCKET),
        };
        for (key, dir) in [
            ("api_socket", &paths.api_socket),
            ("pin_dir", &paths.pin_dir),
            ("data_dir", &paths.data_dir),
            ("docker_socket", &paths.docker_socket),
            ("netns_dir", &paths.netns_dir),
        ] {
            if dir.as_os_str().is_empty() {
                return Err(ConfigError::EmptyPath { key });
            }
        }
        Ok(paths)
    }
}

/// How the underlay interface was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnderlaySource {
    /// Named by the file or a flag.
    Configured,
    /// The interface holding `advertise_addr`.
    AdvertiseAddr(Ipv4Addr),
    /// The interface of the IPv4 default route.
    DefaultRoute,
}

impl std::fmt::Display for UnderlaySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnderlaySource::Configured => f.write_str("configured"),
            UnderlaySource::AdvertiseAddr(a) => write!(f, "holds advertise_addr {a}"),
            UnderlaySource::DefaultRoute => f.write_str("the default route's"),
        }
    }
}

/// How the host's interfaces are asked about (the real kernel; tests fake it).
#[derive(Clone, Copy)]
pub struct HostLookup {
    /// The interface holding an address.
    pub interface_with: fn(Ipv4Addr) -> io::Result<Option<String>>,
    /// The interface of the IPv4 default route.
    pub default_route_interface: fn() -> io::Result<Option<String>>,
}

impl HostLookup {
    /// The kernel of the namespace the agent runs in.
    pub const KERNEL: HostLookup = HostLookup {
        interface_with: shoal_dataplane::iface::interface_with,
        default_route_interface: shoal_dataplane::iface::default_route_interface,
    };
}

/// The agent's configuration with every value decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    pub underlay_interface: String,
    pub underlay_source: UnderlaySource,
    /// The default advertise address; None: the underlay interface's first IPv4.
    pub advertise_addr: Option<Ipv4Addr>,
    pub pin_dir: PathBuf,
    pub data_dir: PathBuf,
    /// How often to log the counters; `None` never.
    pub stats_interval: Option<Duration>,
    pub docker_socket: PathBuf,
    /// The declared state files of the standalone mode; None: the cluster's.
    pub standalone: Option<DeclaredFiles>,
    pub netns_dir: PathBuf,
    pub data_path_port: u16,
    pub dns: DnsConfig,
    pub api_socket: PathBuf,
    pub cluster_listen: std::net::SocketAddr,
    /// Capacity of the routing mesh's flow table.
    pub lb_flows: u32,
    /// Where gossip listens (in a cluster).
    pub gossip_listen: std::net::SocketAddr,
    /// The gateway bridge's subnet (task egress).
    pub egress_subnet: ipnet::Ipv4Net,
}

/// The declared-state files of the standalone mode (dataplane only, tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredFiles {
    pub overlay: PathBuf,
    pub dns: Option<PathBuf>,
    pub lb: Option<PathBuf>,
}

/// The embedded resolver's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// None: the nameservers of /etc/resolv.conf.
    pub upstreams: Option<Vec<std::net::SocketAddr>>,
    pub ttl_secs: u32,
    /// Queries per second per source and network; None: unlimited.
    pub rate_limit: Option<u32>,
}

impl AgentConfig {
    /// Reads the config file (`file`, or the default one if it exists), lets `flags`
    /// override it, fills in defaults and checks the result.
    pub fn load(file: Option<&Path>, flags: Settings) -> Result<Self, ConfigError> {
        Self::resolve(Settings::from_config_file(file)?.overridden_by(flags))
    }

    /// Fills in defaults and checks the merged settings, asking the kernel for the
    /// underlay interface when none is named.
    pub fn resolve(settings: Settings) -> Result<Self, ConfigError> {
        Self::resolve_with(settings, HostLookup::KERNEL)
    }

    /// [`resolve`](Self::resolve) with `host` answering questions about interfaces.
    pub fn resolve_with(settings: Settings, host: HostLookup) -> Result<Self, ConfigError> {
        let (underlay_interface, underlay_source) = underlay(
            settings.underlay_interface.clone(),
            settings.advertise_addr,
            host,
        )?;
        check_interface_name(&underlay_interface)?;
        let AgentPaths {
            pin_dir,
            data_dir,
            docker_socket,
            netns_dir,
            api_socket,
        } = AgentPaths::resolve(&settings)?;
        let data_path_port = settings.data_path_port.unwrap_or(DEFAULT_VXLAN_PORT);
        if data_path_port == 0 {
            return Err(ConfigError::BadPort);
        }
        let cluster_listen = settings.cluster_listen.unwrap_or_else(|| {
            DEFAULT_CLUSTER_LISTEN
                .parse()
                .expect("the default listen address parses")
        });
        if cluster_listen.port() == 0 {
            return Err(ConfigError::BadClusterPort);
        }
        let gossip_listen = settings.gossip_listen.unwrap_or_else(|| {
            DEFAULT_GOSSIP_LISTEN
                .parse()
                .expect("the default gossip address parses")
        });
        if gossip_listen.port() == 0 {
            return Err(ConfigError::BadGossipPort);
        }
        let stats_interval = match settings.stats_interval_secs.unwrap_or(0) {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        };
        let dns = DnsConfig {
            upstreams: settings.dns_upstreams,
            ttl_secs: settings.dns_ttl_secs.unwrap_or(DEFAULT_DNS_TTL),
            rate_limit: match settings.dns_rate_limit.unwrap_or(DEFAULT_DNS_RATE_LIMIT) {
                0 => None,
                qps => Some(qps),
            },
        };
        let standalone = match settings.declared_state {
            Some(overlay) => Some(DeclaredFiles {
                overlay,
                dns: settings.declared_dns,
                lb: settings.declared_lb,
            }),
            None if settings.declared_dns.is_some() => return Err(ConfigError::DnsWithoutOverlay),
            None if settings.declared_lb.is_some() => return Err(ConfigError::LbWithoutOverlay),
            None => None,
        };
        let egress_subnet = settings.egress_subnet.unwrap_or_else(|| {
            EGRESS_DEFAULT_SUBNET
                .parse()
                .expect("the default egress subnet parses")
        });
        // The MTU is the underlay's, known only at start; the subnet is checked now.
        EgressParams::new(egress_subnet, 1500)
            .map_err(|reason| ConfigError::BadEgressSubnet { reason })?;
        let lb_flows = settings.lb_flows.unwrap_or(DEFAULT_LB_FLOWS);
        if lb_flows == 0 {
            return Err(ConfigError::BadLbFlows);
        }
        Ok(Self {
            underlay_interface,
            underlay_source,
            advertise_addr: settings.advertise_addr,
            pin_dir,
            data_dir,
            stats_interval,
            docker_socket,
            standalone,
            netns_dir,
            data_path_port,
            dns,
            api_socket,
            cluster_listen,
            lb_flows,
            gossip_listen,
            egress_subnet,
        })
    }
}

/// A configuration the agent cannot run with. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error(
        "config file {}{}: {message}",
        path.display(),
        location.as_deref().unwrap_or("")
    )]
    Parse {
        path: PathBuf,
        /// ", line N, key `K`" when the parser knows where.
        location: Option<String>,
        message: String,
    },
    #[error("no underlay interface: this host has no IPv4 default route to take it from; set `underlay_interface` (or `advertise_addr`) in the config file, or pass --underlay-interface")]
    MissingUnderlayInterface,
    #[error("advertise_addr {addr}: no interface of this host holds that address")]
    AdvertiseAddrNotHere { addr: Ipv4Addr },
    #[error("advertise_addr {addr}: reading this host's interfaces: {error}")]
    Interfaces { addr: Ipv4Addr, error: io::Error },
    #[error("underlay_interface: invalid interface name {name:?}: {reason}")]
    InvalidInterface { name: String, reason: &'static str },
    #[error("{key} must not be empty")]
    EmptyPath { key: &'static str },
    #[error("data_path_port must be between 1 and 65535")]
    BadPort,
    #[error("cluster_listen needs a port between 1 and 65535")]
    BadClusterPort,
    #[error("gossip_listen needs a port between 1 and 65535")]
    BadGossipPort,
    #[error(
        "declared_dns needs declared_state: the resolver listens on the overlay networks' gateways"
    )]
    DnsWithoutOverlay,
    #[error("declared_lb needs declared_state: backends are reached over the overlay networks")]
    LbWithoutOverlay,
    #[error("lb_flows must be at least 1")]
    BadLbFlows,
    #[error("egress_subnet: {reason}")]
    BadEgressSubnet { reason: String },
}

/// ", line N, key `K`" for byte offset `offset` of `text` (the key when that line
/// reads `K = ...`).
fn location_of(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let number = before.matches('\n').count() + 1;
    let line = text.lines().nth(number - 1).unwrap_or("");
    let key = line.split_once('=').map(|(k, _)| k.trim()).filter(|k| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    match key {
        Some(k) => format!(", line {number}, key `{k}`"),
        None => format!(", line {number}"),
    }
}

/// The underlay interface: the named one, else the one holding `advertise`, else the
/// default route's.
fn underlay(
    named: Option<String>,
    advertise: Option<Ipv4Addr>,
    host: HostLookup,
) -> Result<(String, UnderlaySource), ConfigError> {
    if let Some(name) = named {
        return Ok((name, UnderlaySource::Configured));
    }
    if let Some(addr) = advertise {
        return match (host.interface_with)(addr) {
            Ok(Some(name)) => Ok((name, UnderlaySource::AdvertiseAddr(addr))),
            Ok(None) => Err(ConfigError::AdvertiseAddrNotHere { addr }),
            Err(error) => Err(ConfigError::Interfaces { addr, error }),
        };
    }
    match (host.default_route_interface)() {
        Ok(Some(name)) => Ok((name, UnderlaySource::DefaultRoute)),
        Ok(None) | Err(_) => Err(ConfigError::MissingUnderlayInterface),
    }
}

/// The rules of the kernel's `dev_valid_name`.
fn check_interface_name(name: &str) -> Result<(), ConfigError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_INTERFACE_NAME {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "not a valid name"
    } else if name.contains(['/', ':']) || name.contains(char::is_whitespace) {
        "contains '/', ':' or whitespace"
    } else {
        return Ok(());
    };
    Err(ConfigError::InvalidInterface {
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(text, Path::new("agent.toml"))
    }

    #[test]
    fn good_file_parses_and_resolves() {
        let settings = parse(
            r#"
            underlay_interface = "eth1"
            pin_dir = "/sys/fs/bpf/lab1"
            data_dir = "/tmp/lab1"
            stats_interval_secs = 10
            "#,
        )
        .unwrap();
        let config = AgentConfig::resolve(settings).unwrap();
        assert_eq!(
            config,
            AgentConfig {
                underlay_interface: "eth1".into(),
                underlay_source: UnderlaySource::Configured,
                advertise_addr: None,
                pin_dir: "/sys/fs/bpf/lab1".into(),
                data_dir: "/tmp/lab1".into(),
                stats_interval: Some(Duration::from_secs(10)),
                docker_socket: DEFAULT_DOCKER_SOCKET.into(),
                standalone: None,
                netns_dir: DEFAULT_NETNS_DIR.into(),
                data_path_port: 4789,
                dns: DnsConfig {
                    upstreams: None,
                    ttl_secs: DEFAULT_DNS_TTL,
                    rate_limit: Some(DEFAULT_DNS_RATE_LIMIT),
                },
                api_socket: DEFAULT_API_SOCKET.into(),
                cluster_listen: DEFAULT_CLUSTER_LISTEN.parse().unwrap(),
                lb_flows: DEFAULT_LB_FLOWS,
                gossip_listen: DEFAULT_GOSSIP_LISTEN.parse().unwrap(),
                egress_subnet: "172.18.0.0/16".parse().unwrap(),
            }
        );
    }

    #[test]
    fn defaults_fill_in_what_is_unset() {
        let config =
            AgentConfig::resolve(parse(r#"underlay_interface = "eth0""#).unwrap()).unwrap();
        assert_eq!(config.pin_dir, Path::new(DEFAULT_PIN_DIR));
        assert_eq!(config.data_dir, Path::new(DEFAULT_DATA_DIR));
        assert_eq!(config.stats_interval, None);
    }

    #[test]
    fn unknown_key_is_refused_and_named() {
        let err = parse("underlay_interface = \"eth0\"\nunderlay_iface = \"eth1\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
        assert!(msg.contains("unknown field `underlay_iface`"), "{msg}");
        assert!(msg.contains("agent.toml, line 2"), "{msg}");
        assert!(!msg.contains('\n'), "not one line: {msg}");
    }

    #[test]
    fn flags_override_file_values() {
        let file = parse(
            r#"
            underlay_interface = "eth1"
            pin_dir = "/sys/fs/bpf/from-file"
            stats_interval_secs = 30
            "#,
        )
        .unwrap();
        let flags = Settings {
            underlay_interface: Some("eth2".into()),
            stats_interval_secs: Some(0),
            ..Settings::default()
        };
        let config = AgentConfig::resolve(file.overridden_by(flags)).unwrap();
        assert_eq!(config.underlay_interface, "eth2");
        assert_eq!(config.pin_dir, Path::new("/sys/fs/bpf/from-file"));
        assert_eq!(config.stats_interval, None);
    }

    /// A host with eth0 (192.168.1.5, the default route) and eth1 (10.0.0.5).
    const TWO_INTERFACES: HostLookup = HostLookup {
        interface_with: |a| {
            Ok(match a.octets() {
                [192, 168, 1, 5] => Some("eth0".into()),
                [10, 0, 0, 5] => Some("eth1".into()),
                _ => None,
            })
        },
        default_route_interface: || Ok(Some("eth0".into())),
    };
    /// A host without a default route.
    const NO_ROUTE: HostLookup = HostLookup {
        interface_with: |_| Ok(None),
        default_route_interface: || Ok(None),
    };

    #[test]
    fn missing_underlay_interface_comes_from_the_advertise_addr_or_default_route() {
        let none = parse(r#"pin_dir = "/sys/fs/bpf/x""#).unwrap();
        let config = AgentConfig::resolve_with(none.clone(), TWO_INTERFACES).unwrap();
        assert_eq!(config.underlay_interface, "eth0");
        assert_eq!(config.underlay_source, UnderlaySource::DefaultRoute);

        let advertise = parse("advertise_addr = \"10.0.0.5\"").unwrap();
        let config = AgentConfig::resolve_with(advertise.clone(), TWO_INTERFACES).unwrap();
        assert_eq!(config.underlay_interface, "eth1");
        assert_eq!(config.advertise_addr, Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(
            config.underlay_source,
            UnderlaySource::AdvertiseAddr(Ipv4Addr::new(10, 0, 0, 5))
        );
        // A flag names it: neither is asked.
        let flags = Settings {
            underlay_interface: Some("eth7".into()),
            ..Settings::default()
        };
        let config =
            AgentConfig::resolve_with(advertise.clone().overridden_by(flags), NO_ROUTE).unwrap();
        assert_eq!(config.underlay_interface, "eth7");

        let err = AgentConfig::resolve_with(none, NO_ROUTE).unwrap_err();
        assert!(
            matches!(err, ConfigError::MissingUnderlayInterface),
            "{err:?}"
        );
        assert!(err.to_string().contains("--underlay-interface"));
        let err = AgentConfig::resolve_with(advertise, NO_ROUTE).unwrap_err();
        assert_eq!(
            err.to_string(),
            "advertise_addr 10.0.0.5: no interface of this host holds that address"
        );
    }

    #[test]
    fn a_missing_default_file_is_fine_a_missing_named_one_is_not() {
        // The default file is read if it exists; on a machine without it: no settings.
        if !Path::new(DEFAULT_CONFIG_FILE).exists() {
            assert_eq!(
                Settings::from_config_file(None).unwrap(),
                Settings::default()
            );
        }
        let err =
            Settings::from_config_file(Some(Path::new("/nonexistent/agent.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    }

    #[test]
    fn bad_interface_names_are_refused() {
        for name in ["", "a-very-long-ifname", "..", "eth0:1", "et h0", "a/b"] {
            let settings = Settings {
                underlay_interface: Some(name.into()),
                ..Settings::default()
            };
            let err = AgentConfig::resolve(settings).unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidInterface { .. }),
                "{name:?}: {err:?}"
            );
        }
    }

    #[test]
    fn wrong_type_is_refused_with_its_line_and_key() {
        let err = parse("underlay_interface = \"eth0\"\nstats_interval_secs = -1\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 2, key `stats_interval_secs`"), "{msg}");
        assert!(!msg.contains('\n'), "not one line: {msg}");
        let err = parse("advertise_addr = \"10.0.0.256\"\n").unwrap_err();
        assert!(err.to_string().contains("key `advertise_addr`"), "{err}");
    }

    #[test]
    fn api_socket_and_cluster_listen_come_from_file_or_flags() {
        let file = parse(
            r#"
            underlay_interface = "eth0"
            api_socket = "/run/lab/h1/shoal.sock"
            cluster_listen = "192.168.77.11:2377"
            "#,
        )
        .unwrap();
        let config = AgentConfig::resolve(file.clone().overridden_by(Settings::default())).unwrap();
        assert_eq!(config.api_socket, Path::new("/run/lab/h1/shoal.sock"));
        assert_eq!(config.cluster_listen, "192.168.77.11:2377".parse().unwrap());
        let flags = Settings {
            api_socket: Some("/tmp/other.sock".into()),
            ..Settings::default()
        };
        let config = AgentConfig::resolve(file.overridden_by(flags)).unwrap();
        assert_eq!(config.api_socket, Path::new("/tmp/other.sock"));
        let err = parse("underlay_interface = \"eth0\"\ncluster_listen = \"nope\"\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn declared_lb_needs_the_overlay_and_lb_flows_must_be_positive() {
        let err = AgentConfig::resolve(
            parse("underlay_interface = \"eth0\"\ndeclared_lb = \"/tmp/lb.json\"\n").unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::LbWithoutOverlay), "{err:?}");
        let err =
            AgentConfig::resolve(parse("underlay_interface = \"eth0\"\nlb_flows = 0\n").unwrap())
                .unwrap_err();
        assert!(matches!(err, ConfigError::BadLbFlows), "{err:?}");
        let config = AgentConfig::resolve(
            parse(
                "underlay_interface = \"eth0\"\ndeclared_state = \"/tmp/o.json\"\n\
                 declared_lb = \"/tmp/lb.json\"\nlb_flows = 1024\n",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            config.standalone,
            Some(DeclaredFiles {
                overlay: "/tmp/o.json".into(),
                dns: None,
                lb: Some("/tmp/lb.json".into()),
            })
        );
        assert_eq!(config.lb_flows, 1024);
    }

    #[test]
    fn the_egress_subnet_comes_from_file_or_flags_and_is_checked() {
        let config = AgentConfig::resolve(
            parse("underlay_interface = \"eth0\"\negress_subnet = \"10.250.0.0/24\"\n").unwrap(),
        )
        .unwrap();
        assert_eq!(config.egress_subnet, "10.250.0.0/24".parse().unwrap());
        for (bad, says) in [
            ("10.250.0.0/31", "too small"),
            ("10.250.0.9/24", "10.250.0.0/24"),
        ] {
            let settings = Settings {
                underlay_interface: Some("eth0".into()),
                egress_subnet: Some(bad.parse().unwrap()),
                ..Settings::default()
            };
            let err = AgentConfig::resolve(settings).unwrap_err().to_string();
            assert!(
                err.starts_with("egress_subnet: ") && err.contains(says),
                "{bad}: {err}"
            );
        }
        let err = parse("underlay_interface = \"eth0\"\negress_subnet = \"nope\"\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn unreadable_file_is_named() {
        let path = Path::new("/nonexistent/shoal/agent.toml");
        let err = AgentConfig::load(Some(path), Settings::default()).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/shoal/agent.toml"),
            "{err}"
        );
    }
}
