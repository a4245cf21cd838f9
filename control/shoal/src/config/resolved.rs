//! The agent's configuration with every value decided: [`AgentConfig`], from the
//! merged [`Settings`], with defaults filled in and checked; [`AgentPaths`], the part
//! `shoal agent cleanup` needs.
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

use shoal_dataplane::{
    bpffs::DEFAULT_PIN_DIR,
    egress::{EgressParams, DEFAULT_SUBNET as EGRESS_DEFAULT_SUBNET},
    overlay::state::DEFAULT_VXLAN_PORT,
};

use super::{settings::WebAddr, ConfigError, Settings};

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
/// Default period of WireGuard key rotation: 12 hours (Swarm's IPsec keys' period).
pub const DEFAULT_WIREGUARD_KEY_ROTATION_SECS: u64 = 12 * 3600;

/// Longest interface name Linux accepts (IFNAMSIZ minus the NUL).
const MAX_INTERFACE_NAME: usize = 15;

/// Where one agent keeps what it makes on the host: enough to find it all again
/// (`shoal agent cleanup`) without the rest of a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPaths {
    pub pin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub docker_socket: PathBuf,
    pub netns_dir: PathBuf,
    pub api_socket: PathBuf,
    pub engine_api_socket: PathBuf,
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
            engine_api_socket: PathBuf::new(),
        };
        let paths = Self {
            engine_api_socket: settings
                .engine_api_socket
                .clone()
                .unwrap_or_else(|| shoal::engine_api::default_socket(&paths.api_socket)),
            ..paths
        };
        for (key, dir) in [
            ("api_socket", &paths.api_socket),
            ("engine_api_socket", &paths.engine_api_socket),
            ("pin_dir", &paths.pin_dir),
            ("data_dir", &paths.data_dir),
            ("docker_socket", &paths.docker_socket),
            ("netns_dir", &paths.netns_dir),
        ] {
            if dir.as_os_str().is_empty() {
                return Err(ConfigError::EmptyPath { key });
            }
        }
        if paths.engine_api_socket == paths.docker_socket {
            return Err(ConfigError::EngineSocketIsDockers {
                path: paths.engine_api_socket.clone(),
            });
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
    pub engine_api_socket: PathBuf,
    pub cluster_listen: std::net::SocketAddr,
    /// Capacity of the routing mesh's flow table.
    pub lb_flows: u32,
    /// Where gossip listens (in a cluster).
    pub gossip_listen: std::net::SocketAddr,
    /// The gateway bridge's subnet (task egress).
    pub egress_subnet: ipnet::Ipv4Net,
    /// Where Prometheus metrics are served; None: nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where the cluster page is served while this node is a manager; None: nowhere.
    pub web: Option<WebListen>,
    /// A WireGuard key older than this is replaced; None: only on demand.
    pub wireguard_key_rotation: Option<Duration>,
}

/// Where the cluster page listens, and whether the user chose it (a chosen address
/// that cannot be bound stops the agent; the default one is only warned about).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebListen {
    pub addr: std::net::SocketAddr,
    pub explicit: bool,
}

/// The cluster page's address when none is set: loopback only.
pub const DEFAULT_WEB_ADDR: &str = "127.0.0.1:2378";

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
            engine_api_socket,
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
        let wireguard_key_rotation = match settings
            .wireguard_key_rotation_secs
            .unwrap_or(DEFAULT_WIREGUARD_KEY_ROTATION_SECS)
        {
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
        if settings.metrics_addr.is_some_and(|a| a.port() == 0) {
            return Err(ConfigError::BadMetricsPort);
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
            engine_api_socket,
            cluster_listen,
            lb_flows,
            gossip_listen,
            egress_subnet,
            metrics_addr: settings.metrics_addr,
            wireguard_key_rotation,
            web: match settings.web_addr {
                Some(WebAddr::Off) => None,
                Some(WebAddr::At(addr)) => Some(WebListen {
                    addr,
                    explicit: true,
                }),
                None => Some(WebListen {
                    addr: DEFAULT_WEB_ADDR
                        .parse()
                        .expect("the default web address parses"),
                    explicit: false,
                }),
            },
        })
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
                engine_api_socket: "/run/shoal/docker.sock".into(),
                cluster_listen: DEFAULT_CLUSTER_LISTEN.parse().unwrap(),
                lb_flows: DEFAULT_LB_FLOWS,
                gossip_listen: DEFAULT_GOSSIP_LISTEN.parse().unwrap(),
                egress_subnet: "172.18.0.0/16".parse().unwrap(),
                metrics_addr: None,
                wireguard_key_rotation: Some(Duration::from_secs(
                    DEFAULT_WIREGUARD_KEY_ROTATION_SECS
                )),
                web: Some(WebListen {
                    addr: DEFAULT_WEB_ADDR.parse().unwrap(),
                    explicit: false,
                }),
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
        // The Engine API's socket goes beside it unless named; never over dockerd's.
        assert_eq!(
            config.engine_api_socket,
            Path::new("/run/lab/h1/docker.sock")
        );
        let clash = Settings {
            api_socket: Some("/run/lab/h1/shoal.sock".into()),
            docker_socket: Some("/run/lab/h1/docker.sock".into()),
            ..Settings::default()
        };
        let e = AgentPaths::resolve(&clash).unwrap_err();
        assert!(e.to_string().contains("dockerd's own socket"), "{e}");
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
    fn the_cluster_page_is_local_by_default_and_can_be_moved_or_turned_off() {
        let config =
            AgentConfig::resolve(parse("underlay_interface = \"eth0\"\n").unwrap()).unwrap();
        assert_eq!(
            config.web,
            Some(WebListen {
                addr: "127.0.0.1:2378".parse().unwrap(),
                explicit: false
            })
        );
        let config = AgentConfig::resolve(
            parse("underlay_interface = \"eth0\"\nweb_addr = \"10.0.0.1:8000\"\n").unwrap(),
        )
        .unwrap();
        assert_eq!(
            config.web,
            Some(WebListen {
                addr: "10.0.0.1:8000".parse().unwrap(),
                explicit: true
            })
        );
        let config = AgentConfig::resolve(
            parse("underlay_interface = \"eth0\"\nweb_addr = \"off\"\n").unwrap(),
        )
        .unwrap();
        assert_eq!(config.web, None);
        for bad in ["127.0.0.1:0", "nowhere"] {
            let err = parse(&format!(
                "underlay_interface = \"eth0\"\nweb_addr = \"{bad}\"\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(bad) && err.contains("line 2"), "{bad}: {err}");
        }
    }

    #[test]
    fn metrics_are_off_unless_an_address_with_a_port_is_given() {
        let config =
            AgentConfig::resolve(parse("underlay_interface = \"eth0\"\n").unwrap()).unwrap();
        assert_eq!(config.metrics_addr, None);
        let config = AgentConfig::resolve(
            parse("underlay_interface = \"eth0\"\nmetrics_addr = \"127.0.0.1:9323\"\n").unwrap(),
        )
        .unwrap();
        assert_eq!(config.metrics_addr, Some("127.0.0.1:9323".parse().unwrap()));
        let err = AgentConfig::resolve(
            parse("underlay_interface = \"eth0\"\nmetrics_addr = \"127.0.0.1:0\"\n").unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "metrics_addr needs a port between 1 and 65535"
        );
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
