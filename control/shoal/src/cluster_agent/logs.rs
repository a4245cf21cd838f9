//! `service logs`: on a manager, the lines of a service's task containers from every
//! node that runs one (once, merged by time; or followed, as they come); on every node,
//! its own task containers' lines read from its dockerd (the node port's answer).
//!
//! ```text
//!  CLI / Engine API ──▶ manager ──▶ each node's port 2391 (mutual TLS, manager's cert)
//!                          │           └─ node's dockerd: /containers/{id}/logs
//!                          └─ its own dockerd (the same code, in process)
//! ```
//! Nodes send the task's ID with each line; the manager names the task and the node
//! (Docker's `NAME.SLOT.TASKID@NODE` prefix) from its store.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use futures::StreamExt;
use shoal_cluster::{
    manager::{ClusterError, Manager, NODE_PORT},
    store::{ClusterState, TaskState},
};
use shoal_orchestrator::{
    docker::DockerClient,
    executor::{LABEL_SERVICE_ID, LABEL_TASK_ID},
};
use tokio::sync::mpsc;
use tracing::debug;

use super::services::resolve;
use super::{cluster_error, ClusterAgent, NOT_IN_SWARM, WORKER_NOT_MANAGER};
use crate::api::{server::ReplyStream, ApiError, Reply, Request};
use crate::service_logs::{
    self, LogLine, LogRecord, NodeLogsReply, NodeLogsRequest, PrefixStyle, FOLLOW_HEARTBEAT,
    FOLLOW_IDLE, NODE_LOGS_DEADLINE,
};

/// What `service logs` reads and how it prints it.
pub(super) struct LogsOptions {
    /// A service's name or ID, or a task's ID.
    pub reference: String,
    pub tail: Option<String>,
    /// Unix seconds.
    pub since: Option<i64>,
    pub style: PrefixStyle,
}

/// The service (and the single task, when the reference is a task's ID) that
/// `service logs REFERENCE` reads: a service's name or ID first, then a task's ID.
fn logs_target(
    state: &ClusterState,
    reference: &str,
) -> Result<(String, Option<String>), ApiError> {
    let services = state
        .services
        .values()
        .map(|s| (s.id.as_str(), s.spec.name.as_str()));
    let service_error = match resolve("service", services, reference) {
        Ok(id) => return Ok((id, None)),
        Err(e) => e,
    };
    let tasks = state.tasks.values().map(|t| (t.id.as_str(), t.id.as_str()));
    match resolve("task", tasks, reference) {
        Ok(task) => Ok((state.tasks[&task].service_id.clone(), Some(task))),
        Err(task_error) if task_error.message.contains("ambiguous") => Err(task_error),
        Err(_) => Err(ApiError::new(format!(
            "{}, nor is it a task's ID",
            service_error.message
        ))),
    }
}

impl ClusterAgent {
    /// A streaming request ([`Request::streams`]): `service logs -f`, on a manager.
    pub(super) async fn stream_request(
        &self,
        request: Request,
    ) -> Result<crate::api::server::ReplyStream, ApiError> {
        let manager = {
            let role = self.role.lock().await;
            if let Some(e) = role.as_ref().and_then(Self::unavailable) {
                return Err(e);
            }
            match &*role {
                Some(r) => r
                    .acting_manager()
                    .ok_or_else(|| ApiError::new(WORKER_NOT_MANAGER))?,
                None => return Err(ApiError::new(NOT_IN_SWARM)),
            }
        };
        let Request::ServiceLogs {
            service,
            tail,
            since,
            no_task_ids,
            no_trunc,
            raw,
            follow: true,
        } = request
        else {
            return Err(ApiError::new(format!(
                "{} is not a streaming request",
                request.name()
            )));
        };
        let state = manager.state().await.map_err(cluster_error)?;
        let options = LogsOptions {
            reference: service,
            tail,
            since,
            style: PrefixStyle {
                no_task_ids,
                no_trunc,
                raw,
            },
        };
        let socket = self.config.docker_socket().map(Path::to_path_buf);
        follow(state, manager, socket, options)
    }
}

/// Node ID -> the IDs of the service's tasks there that started (only `task`, if given).
fn tasks_per_node(
    state: &ClusterState,
    service_id: &str,
    task: Option<&str>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut per_node: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in state.service_tasks(service_id) {
        if task.is_some_and(|only| only != t.id) {
            continue;
        }
        if let Some(n) = &t.node_id {
            if t.status.state >= TaskState::Starting {
                per_node.entry(n.clone()).or_default().insert(t.id.clone());
            }
        }
    }
    per_node
}

/// A node's hostname (its ID when unknown).
fn hostname(state: &ClusterState, node_id: &str) -> String {
    state
        .nodes
        .get(node_id)
        .map(|n| n.hostname.clone())
        .unwrap_or_else(|| node_id.to_string())
}

/// Where a node's port is: its advertised address's IP.
fn node_port_addr(state: &ClusterState, node_id: &str) -> Option<SocketAddr> {
    let n = state.nodes.get(node_id)?;
    let ip = n
        .advertise_addr
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| n.advertise_addr.parse::<std::net::IpAddr>())
        .ok()?;
    Some(SocketAddr::new(ip, NODE_PORT))
}

/// `web.1.abcdef123456, web.2.0123456789ab`: the tasks a warning is about.
fn named(state: &ClusterState, service_name: &str, tasks: &BTreeSet<String>) -> String {
    let names: Vec<String> = tasks
        .iter()
        .map(|id| {
            let name = state
                .tasks
                .get(id)
                .map(|t| t.display_name(service_name))
                .unwrap_or_else(|| service_name.to_string());
            format!("{name}.{}", &id[..id.len().min(12)])
        })
        .collect();
    names.join(", ")
}

/// Turns nodes' lines into records: whose task, on which node, with the CLI's prefix.
struct Records {
    service_id: String,
    style: PrefixStyle,
    state: ClusterState,
}

impl Records {
    /// `None` for a line of a task the store does not know (any more).
    fn record(&self, node_id: &str, line: LogLine) -> Option<LogRecord> {
        let service = self.state.services.get(&self.service_id)?;
        let task = self.state.tasks.get(&line.task_id)?;
        let prefix = service_logs::prefix(
            self.style,
            &task.display_name(&service.spec.name),
            &task.id,
            &hostname(&self.state, node_id),
        );
        Some(LogRecord {
            time: line.time,
            node_id: node_id.to_string(),
            service_id: self.service_id.clone(),
            task_id: line.task_id,
            stderr: line.stderr,
            text: line.text,
            prefix,
        })
    }

    fn records(&mut self, node_id: &str, lines: Vec<LogLine>, manager: &Manager) -> Vec<LogRecord> {
        // A task that started after the state was read: read it again once.
        if lines
            .iter()
            .any(|l| !self.state.tasks.contains_key(&l.task_id))
        {
            if let Some(state) = manager.local_state() {
                self.state = state;
            }
        }
        lines
            .into_iter()
            .filter_map(|l| self.record(node_id, l))
            .collect()
    }
}

/// `service logs` once: every node's lines asked all at once, each node within
/// [`NODE_LOGS_DEADLINE`]; a node that does not answer is named in the warnings with
/// its tasks, and the others' lines still come. Lines are merged by their timestamp.
pub(super) async fn logs(
    state: ClusterState,
    manager: &Manager,
    docker_socket: Option<&Path>,
    options: LogsOptions,
) -> Result<Reply, ApiError> {
    let (service_id, task) = logs_target(&state, &options.reference)?;
    let service_name = state.services[&service_id].spec.name.clone();
    let self_id = manager.node_id().to_string();
    let per_node = tasks_per_node(&state, &service_id, task.as_deref());
    let request_for = |tasks: &BTreeSet<String>| NodeLogsRequest {
        service_id: service_id.clone(),
        tasks: Some(tasks.clone()),
        tail: options.tail.clone(),
        since: options.since,
        follow: false,
    };
    let asks = per_node.iter().map(|(node, tasks)| {
        let request = request_for(tasks);
        let (state, service_name, self_id) = (&state, &service_name, &self_id);
        async move {
            let host = hostname(state, node);
            let failed = |why: String| {
                format!(
                    "node {host} did not answer ({why}): no lines from its task(s) {}",
                    named(state, service_name, tasks)
                )
            };
            if *node == *self_id {
                return match docker_socket {
                    Some(socket) => Ok((node.clone(), node_lines(socket, &request).await)),
                    None => Err(failed("no dockerd configured here".into())),
                };
            }
            let Some(at) = node_port_addr(state, node) else {
                return Err(format!(
                    "node {host} has no known address: no lines from its task(s) {}",
                    named(state, service_name, tasks)
                ));
            };
            let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
            manager
                .call_node(node, at, &body, NODE_LOGS_DEADLINE)
                .await
                .and_then(|r| {
                    serde_json::from_slice::<NodeLogsReply>(&r)
                        .map_err(|e| ClusterError::Protocol(format!("bad answer: {e}")))
                })
                .map(|r| (node.clone(), r))
                .map_err(|e| failed(e.to_string()))
        }
    });
    let replies = futures::future::join_all(asks).await;
    let mut records = Records {
        service_id: service_id.clone(),
        style: options.style,
        state: state.clone(),
    };
    let mut all = Vec::new();
    let mut warnings = Vec::new();
    for r in replies {
        match r {
            Ok((node, reply)) => {
                all.extend(records.records(&node, reply.lines, manager));
                let host = hostname(&state, &node);
                warnings.extend(reply.warnings.into_iter().map(|w| format!("{host}: {w}")));
            }
            Err(w) => warnings.push(w),
        }
    }
    Ok(Reply::ServiceLogs {
        records: service_logs::merge(all),
        warnings,
    })
}

/// `service logs -f`: each node's lines as they come, in a [`Reply::ServiceLogs`] per
/// batch, until the stream is dropped. Nodes that come to run one of the service's
/// tasks later are followed from then on (every second the store is looked at); a node
/// that stops answering (its connection broke, or nothing for [`FOLLOW_IDLE`]) is named
/// once in a warning with its tasks, and the others go on.
pub(super) fn follow(
    state: ClusterState,
    manager: Manager,
    docker_socket: Option<PathBuf>,
    options: LogsOptions,
) -> Result<ReplyStream, ApiError> {
    let (service_id, task) = logs_target(&state, &options.reference)?;
    let (out, replies) = mpsc::channel::<Result<Reply, ApiError>>(16);
    let driver = tokio::spawn(async move {
        let mut records = Records {
            service_id: service_id.clone(),
            style: options.style,
            state,
        };
        let (batches, mut arriving) = mpsc::channel::<(String, Result<NodeLogsReply, String>)>(64);
        // Every node's reader; dropped (and so ended) with this task.
        let mut readers = tokio::task::JoinSet::new();
        let mut followed: HashSet<String> = HashSet::new();
        let mut look = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = look.tick() => {
                    if let Some(state) = manager.local_state() {
                        records.state = state;
                    }
                    if !records.state.services.contains_key(&service_id) {
                        let _ = out.send(Err(ApiError::new("the service was removed"))).await;
                        return;
                    }
                    for (node, tasks) in tasks_per_node(&records.state, &service_id, task.as_deref()) {
                        if !followed.insert(node.clone()) {
                            continue;
                        }
                        let request = NodeLogsRequest {
                            service_id: service_id.clone(),
                            tasks: task.as_ref().map(|t| BTreeSet::from([t.clone()])),
                            tail: options.tail.clone(),
                            since: options.since,
                            follow: true,
                        };
                        let service_name = records.state.services[&service_id].spec.name.clone();
                        let about = named(&records.state, &service_name, &tasks);
                        let host = hostname(&records.state, &node);
                        let at = node_port_addr(&records.state, &node);
                        let local = (node == manager.node_id()).then(|| docker_socket.clone());
                        readers.spawn(read_node(
                            manager.clone(),
                            node,
                            host,
                            about,
                            at,
                            local,
                            request,
                            batches.clone(),
                        ));
                    }
                }
                Some((node, batch)) = arriving.recv() => {
                    let reply = match batch {
                        Ok(b) => {
                            let records = records.records(&node, b.lines, &manager);
                            if records.is_empty() && b.warnings.is_empty() {
                                continue;
                            }
                            Reply::ServiceLogs { records, warnings: b.warnings }
                        }
                        Err(warning) => Reply::ServiceLogs { records: Vec::new(), warnings: vec![warning] },
                    };
                    if out.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
                () = out.closed() => return,
            }
        }
    });
    Ok(Box::pin(Followed { replies, driver }))
}

/// The replies of a followed `service logs`, as the driver task sends them; dropping
/// it ends the driver (and with it every node's connection).
struct Followed {
    replies: mpsc::Receiver<Result<Reply, ApiError>>,
    driver: tokio::task::JoinHandle<()>,
}

impl futures::Stream for Followed {
    type Item = Result<Reply, ApiError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.replies.poll_recv(cx)
    }
}

impl Drop for Followed {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Follows one node: its own dockerd in process when `local` (the socket), else its
/// node port; sends each batch, then a warning naming the node and its tasks when it
/// stops answering.
#[allow(clippy::too_many_arguments)]
async fn read_node(
    manager: Manager,
    node: String,
    host: String,
    about: String,
    at: Option<SocketAddr>,
    local: Option<Option<PathBuf>>,
    request: NodeLogsRequest,
    batches: mpsc::Sender<(String, Result<NodeLogsReply, String>)>,
) {
    let stopped = |why: String| {
        format!("node {host} stopped answering ({why}): no more lines from its task(s) {about}")
    };
    let named_warnings = |mut b: NodeLogsReply| {
        b.warnings = b
            .warnings
            .into_iter()
            .map(|w| format!("{host}: {w}"))
            .collect();
        b
    };
    if let Some(socket) = local {
        let Some(socket) = socket else {
            let _ = batches
                .send((node, Err(stopped("no dockerd configured here".into()))))
                .await;
            return;
        };
        let (frames, mut local_frames) = mpsc::channel::<Vec<u8>>(4);
        let serving = serve_node_logs(socket, request, frames);
        tokio::pin!(serving);
        let mut served = false;
        loop {
            tokio::select! {
                frame = local_frames.recv() => {
                    let Some(frame) = frame else { return };
                    let batch = serde_json::from_slice::<NodeLogsReply>(&frame)
                        .map(named_warnings)
                        .map_err(|e| stopped(format!("bad answer: {e}")));
                    if batches.send((node.clone(), batch)).await.is_err() {
                        return;
                    }
                }
                () = &mut serving, if !served => served = true,
            }
        }
    }
    let Some(at) = at else {
        let _ = batches
            .send((node, Err(stopped("no known address".into()))))
            .await;
        return;
    };
    let body = match serde_json::to_vec(&request) {
        Ok(b) => b,
        Err(e) => {
            let _ = batches.send((node, Err(stopped(e.to_string())))).await;
            return;
        }
    };
    let mut stream = match manager
        .call_node_stream(&node, at, &body, FOLLOW_IDLE)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let _ = batches.send((node, Err(stopped(e.to_string())))).await;
            return;
        }
    };
    loop {
        let batch = match stream.next_frame().await {
            Ok(Some(frame)) => serde_json::from_slice::<NodeLogsReply>(&frame)
                .map(named_warnings)
                .map_err(|e| stopped(format!("bad answer: {e}"))),
            Ok(None) => Err(stopped("it ended the stream".into())),
            Err(e) => Err(stopped(e.to_string())),
        };
        let last = batch.is_err();
        if batches.send((node.clone(), batch)).await.is_err() || last {
            return;
        }
    }
}

/// The node port's answer to a logs request: one reply, or (following) a batch at least
/// every [`FOLLOW_HEARTBEAT`] until a send fails.
pub(crate) async fn serve_node_logs(
    socket: PathBuf,
    request: NodeLogsRequest,
    frames: mpsc::Sender<Vec<u8>>,
) {
    let json = |r: &NodeLogsReply| serde_json::to_vec(r).unwrap_or_default();
    if !request.follow {
        let _ = frames
            .send(json(&node_lines(&socket, &request).await))
            .await;
        return;
    }
    let docker = match DockerClient::connect(&socket).await {
        Ok(d) => d,
        Err(e) => {
            let reply = NodeLogsReply {
                lines: Vec::new(),
                warnings: vec![format!("dockerd: {e}")],
            };
            let _ = frames.send(json(&reply)).await;
            return;
        }
    };
    let api = docker.engine().clone();
    let (lines, mut written) = mpsc::channel::<Result<LogLine, String>>(1024);
    // Each container's follower; all end when this function does.
    let mut followers = tokio::task::JoinSet::new();
    let mut following: HashSet<String> = HashSet::new();
    let mut first_look = true;
    let mut look = tokio::time::interval(Duration::from_secs(1));
    let mut flush = tokio::time::interval(Duration::from_millis(100));
    let mut batch = NodeLogsReply::default();
    let mut last_sent = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = look.tick() => {
                match containers(&api, &request).await {
                    Ok(found) => {
                        for (container, task_id) in found {
                            if !following.insert(container.clone()) {
                                continue;
                            }
                            // Containers there at the start honour --tail/--since; later
                            // ones (new tasks) are read from their first line.
                            let (tail, since) = if first_look {
                                (request.tail.clone(), request.since)
                            } else {
                                (None, None)
                            };
                            debug!(%container, task = %task_id, "service logs: following");
                            followers.spawn(follow_container(
                                api.clone(),
                                container,
                                task_id,
                                tail,
                                since,
                                lines.clone(),
                            ));
                        }
                    }
                    Err(e) if first_look => batch.warnings.push(e),
                    Err(e) => debug!(error = %e, "service logs: listing task containers"),
                }
                first_look = false;
            }
            Some(line) = written.recv() => match line {
                Ok(line) => batch.lines.push(line),
                Err(warning) => batch.warnings.push(warning),
            },
            _ = flush.tick() => {
                let quiet = batch.lines.is_empty() && batch.warnings.is_empty();
                if quiet && last_sent.elapsed() < FOLLOW_HEARTBEAT {
                    continue;
                }
                if frames.send(json(&std::mem::take(&mut batch))).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
            }
        }
        if batch.lines.len() >= 512 {
            if frames
                .send(json(&std::mem::take(&mut batch)))
                .await
                .is_err()
            {
                return;
            }
            last_sent = tokio::time::Instant::now();
        }
    }
}

/// The task containers of the request's service on this dockerd (only its tasks, when
/// it names them): (container ID, task ID).
async fn containers(
    api: &bollard::Docker,
    request: &NodeLogsRequest,
) -> Result<Vec<(String, String)>, String> {
    let list = api
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{LABEL_SERVICE_ID}={}", request.service_id)],
            )])),
            ..Default::default()
        }))
        .await
        .map_err(|e| format!("listing task containers: {e}"))?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            let task_id = c.labels?.get(LABEL_TASK_ID).cloned()?;
            let wanted = request.tasks.as_ref().is_none_or(|t| t.contains(&task_id));
            wanted.then_some((c.id?, task_id))
        })
        .collect())
}

/// dockerd's log options: stdout and stderr, with timestamps.
fn log_options(
    tail: Option<String>,
    since: Option<i64>,
    follow: bool,
) -> bollard::query_parameters::LogsOptions {
    bollard::query_parameters::LogsOptions {
        stdout: true,
        stderr: true,
        follow,
        tail: tail.unwrap_or_else(|| "all".into()),
        since: since
            .map(|s| s.clamp(0, i64::from(i32::MAX)) as i32)
            .unwrap_or_default(),
        timestamps: true,
        ..Default::default()
    }
}

/// The lines of one container's log output item.
fn lines_of(task_id: &str, out: bollard::container::LogOutput) -> Vec<LogLine> {
    let stderr = matches!(out, bollard::container::LogOutput::StdErr { .. });
    out.to_string()
        .lines()
        .map(|l| LogLine::split(task_id, stderr, l))
        .collect()
}

/// Follows one container's log until it ends or the receiver is gone.
async fn follow_container(
    api: bollard::Docker,
    container: String,
    task_id: String,
    tail: Option<String>,
    since: Option<i64>,
    lines: mpsc::Sender<Result<LogLine, String>>,
) {
    let mut stream = api.logs(&container, Some(log_options(tail, since, true)));
    while let Some(item) = stream.next().await {
        let items = match item {
            Ok(out) => lines_of(&task_id, out).into_iter().map(Ok).collect(),
            Err(e) => vec![Err(format!("task {task_id}: {e}"))],
        };
        for item in items {
            if lines.send(item).await.is_err() {
                return;
            }
        }
    }
}

/// The lines of the request's task containers on this node's dockerd, read once (the
/// node port's answer, and a manager's own part of `service logs`).
pub(crate) async fn node_lines(socket: &Path, request: &NodeLogsRequest) -> NodeLogsReply {
    let mut reply = NodeLogsReply::default();
    let docker = match DockerClient::connect(socket).await {
        Ok(d) => d,
        Err(e) => {
            reply.warnings.push(format!("dockerd: {e}"));
            return reply;
        }
    };
    let api = docker.engine();
    let found = match containers(api, request).await {
        Ok(f) => f,
        Err(e) => {
            reply.warnings.push(e);
            return reply;
        }
    };
    for (container, task_id) in found {
        let mut stream = api.logs(
            &container,
            Some(log_options(request.tail.clone(), request.since, false)),
        );
        while let Some(item) = stream.next().await {
            match item {
                Ok(out) => reply.lines.extend(lines_of(&task_id, out)),
                Err(e) => {
                    reply.warnings.push(format!("task {task_id}: {e}"));
                    break;
                }
            }
        }
    }
    reply
}

#[cfg(test)]
mod tests {
    use shoal_cluster::store::Service;

    use super::super::services::tests::spec;
    use super::*;

    #[test]
    fn logs_reads_a_service_by_name_or_id_else_one_task_by_id() {
        let mut state = ClusterState::default();
        state.services.insert(
            "s1".into(),
            Service {
                id: "s1".into(),
                spec: spec("web", &[]),
                created_ms: 0,
                updated_ms: 0,
                endpoint: Default::default(),
                force_update: 0,
                registry_auth: None,
                previous_spec: None,
                update_status: None,
                job_status: None,
                version: 0,
            },
        );
        for id in ["t1abc", "t1abd", "t2xyz"] {
            let task = shoal_cluster::store::Task {
                id: id.into(),
                service_id: "s1".into(),
                slot: 1,
                ..Default::default()
            };
            state.tasks.insert(id.into(), task);
        }
        let target = |r: &str| logs_target(&state, r).map_err(|e| e.message);
        assert_eq!(target("web"), Ok(("s1".into(), None)));
        assert_eq!(target("s1"), Ok(("s1".into(), None)));
        assert_eq!(target("t2xyz"), Ok(("s1".into(), Some("t2xyz".into()))));
        assert_eq!(target("t2"), Ok(("s1".into(), Some("t2xyz".into()))));
        let ambiguous = target("t1ab").unwrap_err();
        assert!(ambiguous.contains("ambiguous"), "{ambiguous}");
        let missing = target("nosuch").unwrap_err();
        assert!(missing.contains("nor is it a task's ID"), "{missing}");
    }
}
