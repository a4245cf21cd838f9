//! What runs beside the node's cluster role, kept in step with it on every supervision
//! pass: the executor (every node with dockerd), the node port (managers asking for this
//! node's task logs) and, on a manager, the scheduler with the gossip key rotation.
use std::{net::Ipv4Addr, path::Path, sync::Arc, time::Duration};

use shoal_cluster::manager;
use tracing::info;

use super::{logs, ClusterAgent, NodeLinks};

/// What runs beside the role: the executor (every node with dockerd) and the scheduler
/// (managers; it acts only while its manager leads).
#[derive(Default)]
pub(super) struct Background {
    executor: Option<(tokio::task::JoinHandle<()>, String)>,
    /// The node port (managers asking for this node's task logs), with the node ID.
    node_port: Option<(tokio::task::JoinHandle<()>, String)>,
    /// Whether a failure to listen on the node port was logged (once, not every pass).
    node_port_said: bool,
    scheduler: Option<tokio::task::JoinHandle<()>>,
}

impl Background {
    pub(super) fn stop(&mut self) {
        if let Some((h, _)) = self.executor.take() {
            h.abort();
        }
        if let Some((h, _)) = self.node_port.take() {
            h.abort();
        }
        if let Some(h) = self.scheduler.take() {
            h.abort();
        }
    }
}

/// How often the role's background work is checked (promotion, demotion, leave).
pub(super) const SUPERVISE_EVERY: Duration = Duration::from_millis(300);

/// Serves the node port: managers ask for this node's task logs
/// ([`crate::service_logs::NodeLogsRequest`]). `None` (warned, tried again on the next
/// pass) when the port cannot be bound.
fn serve_node_port(
    client: &manager::NodeClient,
    socket: &Path,
    said: &mut bool,
) -> Option<(tokio::task::JoinHandle<()>, String)> {
    let listen = std::net::SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), manager::NODE_PORT);
    let std_listener = match std::net::TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            if !std::mem::replace(said, true) {
                tracing::warn!(%listen, error = %e, "node port: cannot listen (tried again every pass); managers' service logs will not reach this node's tasks");
            }
            return None;
        }
    };
    let listener = std_listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(std_listener));
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%listen, error = %e, "node port: cannot listen");
            return None;
        }
    };
    *said = false;
    let socket = socket.to_path_buf();
    let handler: manager::NodePortHandler = Arc::new(move |caller, body, frames| {
        let socket = socket.clone();
        Box::pin(async move {
            match serde_json::from_slice::<crate::service_logs::NodeLogsRequest>(&body) {
                Ok(request) => {
                    info!(%caller, service = %request.service_id, follow = request.follow, "node port: logs asked");
                    logs::serve_node_logs(socket, request, frames).await;
                }
                Err(e) => {
                    let reply = crate::service_logs::NodeLogsReply {
                        lines: Vec::new(),
                        warnings: vec![format!("bad request: {e}")],
                    };
                    let _ = frames
                        .send(serde_json::to_vec(&reply).unwrap_or_default())
                        .await;
                }
            }
        })
    });
    let client = client.clone();
    let id = client.node_id().to_owned();
    Some((
        tokio::spawn(async move { client.serve_node_port(listener, handler).await }),
        id,
    ))
}

impl ClusterAgent {
    /// Starts or stops the executor and the scheduler to match the role.
    pub(super) async fn supervise(&self) {
        self.restart_failed_store().await;
        let (client, manager) = match &*self.role.lock().await {
            None => (None, None),
            Some(role) => (role.node_client(), role.acting_manager()),
        };
        let mut bg = self.background.lock().unwrap_or_else(|p| p.into_inner());
        let Some(client) = client else {
            bg.stop();
            return;
        };
        if let Some(socket) = self.config.docker_socket() {
            let stale = match &bg.node_port {
                Some((h, id)) => h.is_finished() || id != client.node_id(),
                None => true,
            };
            if stale {
                if let Some((h, _)) = bg.node_port.take() {
                    h.abort();
                }
                let mut said = bg.node_port_said;
                bg.node_port = serve_node_port(&client, socket, &mut said);
                bg.node_port_said = said;
            }
            let stale = match &bg.executor {
                Some((h, id)) => h.is_finished() || id != client.node_id(),
                None => true,
            };
            if stale {
                if let Some((h, _)) = bg.executor.take() {
                    h.abort();
                }
                let id = client.node_id().to_owned();
                let links = self.config.node.clone().unwrap_or_else(NodeLinks::detached);
                let config = shoal_orchestrator::executor::ExecutorConfig {
                    docker_socket: socket.to_path_buf(),
                    events: links.events,
                    intent: links.intent,
                    ready: links.ready,
                    gossip_listen: self.config.gossip_listen,
                    gossip_status: Some(self.config.data_dir.join("gossip.json")),
                    wireguard_key: links.wireguard_key,
                    reach: links.reach,
                    egress_dns: links.egress_dns,
                    report: links.report,
                    task_files_dir: self.config.task_files_dir.clone(),
                };
                info!(node_id = %id, "task executor started");
                bg.executor = Some((
                    tokio::spawn(shoal_orchestrator::executor::run(client, config)),
                    id,
                ));
            }
        }
        match (manager, &bg.scheduler) {
            (Some(m), None) => {
                let keys = shoal_orchestrator::gossip_keys::run(m.clone());
                // Both end together: the scheduler returns when the manager role it
                // follows stops (its store closes), and the role may start again under
                // the same node (promoted again, or its store restarted after a failed
                // disk) before this pass sees a change. Joined, the key rotation (which
                // only waits to lead) kept the task alive with no scheduler in it, and
                // the node, leader later, scheduled nothing. Ended, the next pass starts
                // both for the role that runs then.
                bg.scheduler = Some(tokio::spawn(async move {
                    tokio::select! {
                        () = shoal_orchestrator::scheduler::run(m) => {}
                        () = keys => {}
                    }
                }));
            }
            (Some(_), Some(h)) if h.is_finished() => bg.scheduler = None,
            (None, Some(_)) => {
                if let Some(h) = bg.scheduler.take() {
                    h.abort();
                }
            }
            _ => {}
        }
    }
}
