//! The config file's settings, which the flags share: [`Settings`], every field
//! optional, parsed from the TOML file with errors that name the line and key, and
//! merged with the flags' (flags win).
//!
//! Without `--config`, the agent reads [`DEFAULT_CONFIG_FILE`] if it exists; a file
//! named with `--config` must.

use std::{
    io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::ConfigError;

/// The config file read when `--config` is not given (a missing one is fine).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/shoal/agent.toml";

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
    /// Unix socket of the Docker Engine API (the `docker` CLI and SDKs with
    /// DOCKER_HOST=unix://PATH), made 0660 root:docker as dockerd's [file key:
    /// engine_api_socket] [default: docker.sock beside api_socket]
    #[arg(long, value_name = "PATH")]
    pub engine_api_socket: Option<PathBuf>,
    /// Where a manager listens for cluster traffic unless `swarm init|join
    /// --listen-addr` says otherwise [file key: cluster_listen] [default: 0.0.0.0:2377]
    #[arg(long, value_name = "ADDR:PORT")]
    pub cluster_listen: Option<std::net::SocketAddr>,
    /// Standalone mode: JSON file with this node's declared load-balancing state
    /// (services, VIPs, published ports, backends), applied again whenever it changes;
    /// needs --declared-state [file key: declared_lb]
    #[arg(long, value_name = "FILE")]
    pub declared_lb: Option<PathBuf>,
    /// Flows the routing mesh's table of live connections holds, and each of its tables
    /// of connections opening and closing; beyond that the least recently used of the
    /// same table is evicted (counted in `shoal dataplane stats`) [file key: lb_flows]
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
    /// Serve Prometheus metrics on ADDR:PORT (`GET /metrics`, plain HTTP, no
    /// authentication: bind a local or management address) [file key: metrics_addr]
    /// [default: off]
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Serve the live cluster page on ADDR:PORT while this node is a manager (plain
    /// HTTP, read-only, no authentication: keep it on a local or management address),
    /// or `off` [file key: web_addr] [default: 127.0.0.1:2378]
    #[arg(long, value_name = "ADDR:PORT|off")]
    pub web_addr: Option<WebAddr>,
    /// Give the node a new WireGuard key (encrypted overlay networks) when its key is
    /// older than SECS seconds; 0: only on demand (`node update
    /// --rotate-wireguard-key`) [file key: wireguard_key_rotation_secs] [default:
    /// 43200, 12 hours]
    #[arg(long = "wireguard-key-rotation", value_name = "SECS")]
    pub wireguard_key_rotation_secs: Option<u64>,
}

/// `--web-addr`: where the cluster page is served, or nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum WebAddr {
    Off,
    At(std::net::SocketAddr),
}

impl std::str::FromStr for WebAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(WebAddr::Off);
        }
        match s.parse::<std::net::SocketAddr>() {
            Ok(a) if a.port() != 0 => Ok(WebAddr::At(a)),
            Ok(_) => Err(format!(
                "{s}: the cluster page needs a port between 1 and 65535"
            )),
            Err(_) => Err(format!("{s}: not ADDR:PORT or `off`")),
        }
    }
}

impl TryFrom<String> for WebAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
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
            engine_api_socket: over.engine_api_socket.or(self.engine_api_socket),
            cluster_listen: over.cluster_listen.or(self.cluster_listen),
            declared_lb: over.declared_lb.or(self.declared_lb),
            lb_flows: over.lb_flows.or(self.lb_flows),
            gossip_listen: over.gossip_listen.or(self.gossip_listen),
            egress_subnet: over.egress_subnet.or(self.egress_subnet),
            metrics_addr: over.metrics_addr.or(self.metrics_addr),
            web_addr: over.web_addr.or(self.web_addr),
            wireguard_key_rotation_secs: over
                .wireguard_key_rotation_secs
                .or(self.wireguard_key_rotation_secs),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(text, Path::new("agent.toml"))
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
    fn wrong_type_is_refused_with_its_line_and_key() {
        let err = parse("underlay_interface = \"eth0\"\nstats_interval_secs = -1\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 2, key `stats_interval_secs`"), "{msg}");
        assert!(!msg.contains('\n'), "not one line: {msg}");
        let err = parse("advertise_addr = \"10.0.0.256\"\n").unwrap_err();
        assert!(err.to_string().contains("key `advertise_addr`"), "{err}");
    }
}
