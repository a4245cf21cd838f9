//! Runs the embedded resolver for every overlay network present on this node: one
//! listener (UDP and TCP) per network on its gateway address, port 53, made inside the
//! network's namespace (a socket stays in the namespace it was made in), so a query's
//! arrival socket says which network it came from. Containers point their resolv.conf
//! at their first network's gateway.
//!
//! The record table comes from a declared DNS state file (until the control plane feeds
//! it) and is swapped whole when the file changes, so the next query sees the change.
use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use anyhow::{Context, Result};
use shoal_dataplane::overlay::netns;
use shoal_dns::{
    forward::{ForwardConfig, Forwarder},
    handler::HandlerConfig,
    records::{DnsState, RecordTable, SharedTable},
    server::{DnsServer, NetworkListener, RateLimit, ServerConfig},
};
use tracing::{info, warn};

use crate::{config::DnsConfig, overlay_driver::PresentNetwork};

/// DNS port on each network's gateway.
pub const DNS_PORT: u16 = 53;

pub struct DnsDriver {
    table: Arc<SharedTable>,
    forwarder: Forwarder,
    server_config: ServerConfig,
    servers: HashMap<String, (PresentNetwork, DnsServer)>,
    state_file: PathBuf,
    last_seen: Option<(SystemTime, u64)>,
}

impl DnsDriver {
    pub fn new(config: &DnsConfig) -> Result<Self> {
        let forward = match &config.upstreams {
            Some(upstreams) => ForwardConfig::new(upstreams.clone()),
            None => ForwardConfig::from_system()
                .context("reading upstream resolvers from /etc/resolv.conf")?,
        };
        info!(upstreams = ?forward.upstreams, "DNS forwarding configured");
        let server_config = ServerConfig {
            handler: HandlerConfig {
                ttl: config.ttl_secs,
                ..HandlerConfig::default()
            },
            rate_limit: config.rate_limit.map(|qps| RateLimit {
                per_second: f64::from(qps),
                burst: f64::from(qps) * 2.0,
            }),
            ..ServerConfig::default()
        };
        let empty = RecordTable::build(&DnsState::default()).context("an empty record table")?;
        Ok(Self {
            table: Arc::new(SharedTable::new(empty)),
            forwarder: Forwarder::new(forward),
            server_config,
            servers: HashMap::new(),
            state_file: config.declared.clone(),
            last_seen: None,
        })
    }

    /// Reloads the record table if the declared DNS state file changed. A bad file keeps
    /// the last good table.
    pub fn poll_file(&mut self) {
        let seen = file_version(&self.state_file);
        if seen.is_none() || seen == self.last_seen {
            return;
        }
        self.last_seen = seen;
        let state: Result<DnsState, String> = std::fs::read_to_string(&self.state_file)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()));
        let result = state.and_then(|s| self.table.update(&s).map_err(|e| e.to_string()));
        match result {
            Ok(()) => info!(file = %self.state_file.display(), "DNS records updated"),
            Err(e) => warn!(
                file = %self.state_file.display(),
                error = %e,
                "declared DNS state refused; the last good records stay"
            ),
        }
    }

    /// Serves exactly the networks in `present`: starts a listener for each new one,
    /// stops the ones that are gone.
    pub async fn networks_changed(&mut self, present: &[PresentNetwork]) {
        let gone: Vec<String> = self
            .servers
            .iter()
            .filter(|(id, (net, _))| !present.iter().any(|p| &p.id == *id && p == net))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some((net, server)) = self.servers.remove(&id) {
                server.shutdown().await;
                info!(network = %id, gateway = %net.gateway, "DNS stopped");
            }
        }
        for net in present {
            if self.servers.contains_key(&net.id) {
                continue;
            }
            match self.start(net) {
                Ok(server) => {
                    info!(network = %net.id, gateway = %net.gateway, "DNS serving");
                    self.servers.insert(net.id.clone(), (net.clone(), server));
                }
                Err(e) => warn!(network = %net.id, error = %format!("{e:#}"), "DNS not serving"),
            }
        }
    }

    fn start(&self, net: &PresentNetwork) -> Result<DnsServer> {
        let addr = SocketAddr::from((net.gateway, DNS_PORT));
        let (udp, tcp) = netns::in_netns_at(&net.netns_path, || -> std::io::Result<_> {
            let udp = UdpSocket::bind(addr)?;
            let tcp = TcpListener::bind(addr)?;
            Ok((udp, tcp))
        })
        .with_context(|| format!("entering {}", net.netns_path.display()))?
        .with_context(|| format!("binding {addr} in network {}", net.id))?;
        DnsServer::serve(
            vec![NetworkListener {
                network: net.id.clone(),
                udp,
                tcp,
            }],
            self.table.clone(),
            self.forwarder.clone(),
            self.server_config.clone(),
        )
        .context("starting the DNS server")
    }

    pub async fn shutdown(self) {
        for (_, (_, server)) in self.servers {
            server.shutdown().await;
        }
    }
}

fn file_version(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}
