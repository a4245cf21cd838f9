//! The protocol on port 2377: messages, frames, the pooled TLS client, and the Raft
//! transport over it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::runtime::{CaTarget, Runtime};
use super::{ClusterError, NodeInfo, Role};
use crate::pki::{manager_server_name, CaCertificate, CaDigest, CaTrust, NextRoot, PeerIdentity};
use crate::store::transport::BoxFuture;
use crate::store::{
    ApplyResult, ClusterState, Command, GossipIdentity, RaftId, RaftRequest, RaftResponse,
    Rejection, TaskStatusUpdate, Transport, TransportError,
};
use crate::token::JoinToken;

/// Largest frame accepted, from a manager (a Raft snapshot of a big state fits); callers
/// without a certificate, and workers, get much less (see `runtime::accept`).
pub(crate) const MAX_FRAME: usize = 64 << 20;
/// Bound on TCP connect plus TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle connections kept per peer address.
const IDLE_PER_PEER: usize = 4;
/// Bound on one Raft snapshot exchange.
const RAFT_SNAPSHOT_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on one other Raft exchange (append, vote), handshake included when it needs a
/// new connection: ample for a starved machine's late answer (openraft itself waits
/// 200 ms for an append, see [`TlsTransport`]), short enough that a connection a
/// partition silenced is given up within seconds.
const RAFT_DEADLINE: Duration = Duration::from_secs(3);

/// A request. No `Debug`: `Join` carries the token.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Request {
    /// Without a client certificate: the only request allowed.
    Join {
        token: String,
        csr_pem: String,
        node: NodeInfo,
        advertise: String,
    },
    /// Manager certificate.
    Raft(RaftRequest),
    Execute(Command),
    ReadState,
    Promote {
        node_id: String,
    },
    Demote {
        node_id: String,
    },
    RemoveNode {
        node_id: String,
        force: bool,
    },
    RotateToken {
        role: Role,
    },
    /// `swarm ca --rotate`.
    RotateCa,
    /// A manager whose member is running asks the leader to add it to the Raft group.
    ManagerReady {
        advertise: String,
    },
    /// Any node certificate; about the caller's own node only. `tls`: which root signed
    /// its certificate and which it trusts (nodes from before root rotations say none).
    Heartbeat {
        node: NodeInfo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<crate::store::NodeTls>,
        /// The node's traffic counters (nodes from before them send none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traffic: Option<crate::manager::NodeTraffic>,
    },
    Leave,
    Renew {
        csr_pem: String,
    },
    /// The cluster state a node needs to run its tasks and declare its network state
    /// (no tokens, secrets or configs) and the registry credentials of its tasks'
    /// services; `None` in the answer when the store is still at version `since`. With
    /// `applied` (the store version the caller's dataplane follows whole), the leader
    /// records it and answers [`Response::NodeStateWithdrawal`].
    NodeState {
        since: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        applied: Option<u64>,
    },
    /// The caller's executor reports its tasks' states.
    ReportTasks {
        updates: Vec<TaskStatusUpdate>,
    },
    /// The key the caller's gossip run signs with (about the caller's own node only).
    RegisterGossip {
        gossip: GossipIdentity,
    },
    /// The caller's containers on attachable networks, whole (about the caller's own
    /// node only).
    SetAttachments {
        wanted: Vec<crate::store::WantedAttachment>,
    },
    /// The swarm's networks (a node's Engine API resolves `--network NET` with them).
    Networks,
}

/// How long a joining node waits for its answer, given the cluster's request timeout
/// `t`: the manager reads the state through the leader and records the node there.
pub(crate) fn join_deadline(t: Duration) -> Duration {
    t * 4 + Duration::from_secs(1)
}

impl Request {
    /// How long a caller waits for the answer, given the cluster's request timeout `t`
    /// (the bound on each store call a handler makes): as many of those as the handler
    /// makes at most, and a second for the wire.
    pub(crate) fn deadline(&self, t: Duration) -> Duration {
        let calls = match self {
            Request::Raft(RaftRequest::InstallSnapshot(_)) => return RAFT_SNAPSHOT_DEADLINE,
            Request::Raft(_) => return RAFT_DEADLINE,
            Request::Join { .. } => return join_deadline(t),
            // A read and the role written, the wait for the node to vote, the lock a
            // join in flight holds (two calls), the role written back.
            Request::Promote { .. } => {
                return t * 5 + super::runtime::promote_join_wait(t) + Duration::from_secs(1)
            }
            Request::Demote { .. }
            | Request::RemoveNode { .. }
            | Request::Leave
            | Request::ManagerReady { .. } => 4,
            Request::Heartbeat { .. } | Request::RotateToken { .. } | Request::RotateCa => 2,
            Request::Execute(_)
            | Request::ReadState
            | Request::Renew { .. }
            | Request::NodeState { .. }
            | Request::ReportTasks { .. }
            | Request::RegisterGossip { .. }
            | Request::SetAttachments { .. }
            | Request::Networks => 1,
        };
        t * calls + Duration::from_secs(1)
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Request::Join { .. } => "join",
            Request::Raft(_) => "raft",
            Request::Execute(_) => "execute",
            Request::ReadState => "read_state",
            Request::Promote { .. } => "promote",
            Request::Demote { .. } => "demote",
            Request::RemoveNode { .. } => "remove_node",
            Request::RotateToken { .. } => "rotate_token",
            Request::RotateCa => "rotate_ca",
            Request::ManagerReady { .. } => "manager_ready",
            Request::Heartbeat { .. } => "heartbeat",
            Request::Leave => "leave",
            Request::Renew { .. } => "renew",
            Request::NodeState { .. } => "node_state",
            Request::ReportTasks { .. } => "report_tasks",
            Request::RegisterGossip { .. } => "register_gossip",
            Request::SetAttachments { .. } => "set_attachments",
            Request::Networks => "networks",
        }
    }
}

/// A certificate for a node (join or renewal). No `Debug`: it may carry the CA key.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Grant {
    pub node_id: String,
    pub cert_pem: String,
    pub ca_pem: String,
    /// For managers: the CA's key, so that every manager can sign.
    pub ca_key_pem: Option<String>,
    pub raft_id: Option<RaftId>,
    /// The managers' advertise addresses.
    pub managers: Vec<String>,
    /// The managers' node IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manager_ids: Vec<String>,
    /// The manager's clock (ms since the epoch), for the skew warning.
    pub server_time_ms: u64,
    /// During a root CA rotation: the next root, which signed `cert_pem`, and its
    /// certificate cross-signed by the root (`ca_pem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_ca: Option<NextCaPem>,
}

/// The next root of a rotation, as a grant carries it.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct NextCaPem {
    pub cert_pem: String,
    pub cross_signed_pem: String,
}

impl Grant {
    /// The roots this grant says to trust; the next one must be vouched for by the root.
    pub(crate) fn trust(&self) -> Result<CaTrust, ClusterError> {
        let root = CaCertificate::from_pem(&self.ca_pem)?;
        Ok(match &self.next_ca {
            Some(next) => {
                let next = NextRoot::from_pem(&root, &next.cert_pem, &next.cross_signed_pem)?;
                CaTrust::rotating(root, next)?
            }
            None => CaTrust::new(root),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HeartbeatAck {
    /// The node's role in the store.
    pub role: Role,
    pub raft_id: Option<RaftId>,
    pub managers: Vec<String>,
    /// The node IDs of the current managers (a leader from before them sends none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manager_ids: Vec<String>,
    /// The roots nodes are to trust now (and the one that signs): a node whose
    /// certificate or trust differ renews.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaTarget>,
    /// Every node's traffic per second, for a manager caller (its cluster page).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rates: BTreeMap<String, crate::manager::TrafficRates>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Response {
    Granted(Grant),
    Raft(RaftResponse),
    Applied(ApplyResult),
    State(Box<ClusterState>),
    Heartbeat(HeartbeatAck),
    Token(JoinToken),
    /// A root CA rotation started, to this root.
    CaRotating {
        desired: CaDigest,
    },
    NodeState(Option<Box<super::NodeView>>),
    /// The answer to a `NodeState` that said what the caller applied (callers from
    /// before it never get it).
    NodeStateWithdrawal {
        view: Option<Box<super::NodeView>>,
        withdrawal: super::Withdrawal,
    },
    /// The answer to `Networks`.
    Networks(Vec<crate::store::Network>),
    Done,
}

/// An error as it crosses the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub(crate) enum WireError {
    /// Ask the leader (at this advertise address, when known).
    NotLeader {
        leader: Option<String>,
    },
    BadToken,
    MalformedToken {
        detail: String,
    },
    CaMismatch,
    NotManager,
    NoQuorum,
    NotInCluster,
    LastManager,
    NodeIsReady {
        node: String,
    },
    NodeIsManager {
        node: String,
    },
    RemoveSelf,
    UnknownNode {
        node: String,
    },
    AlreadyRole {
        node: String,
        role: Role,
    },
    Rejected {
        rejection: Rejection,
    },
    Unauthorized {
        detail: String,
    },
    /// The caller asks too often; it may retry later.
    Busy {
        detail: String,
    },
    Other {
        detail: String,
    },
}

impl From<WireError> for ClusterError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NotLeader { .. } | WireError::NoQuorum => ClusterError::NoQuorum,
            WireError::BadToken => ClusterError::BadToken,
            WireError::MalformedToken { detail } => ClusterError::MalformedToken(detail),
            WireError::CaMismatch => ClusterError::CaMismatch,
            WireError::NotManager => ClusterError::NotManager,
            WireError::NotInCluster => ClusterError::NotInCluster,
            WireError::LastManager => ClusterError::LastManager,
            WireError::NodeIsReady { node } => ClusterError::NodeIsReady(node),
            WireError::NodeIsManager { node } => ClusterError::NodeIsManager(node),
            WireError::RemoveSelf => ClusterError::RemoveSelf,
            WireError::UnknownNode { node } => ClusterError::UnknownNode(node),
            WireError::AlreadyRole { node, role } => ClusterError::AlreadyRole { node, role },
            WireError::Rejected { rejection } => ClusterError::Rejected(rejection),
            WireError::Unauthorized { detail } => ClusterError::Unauthorized(detail),
            WireError::Busy { detail } => ClusterError::Busy(detail),
            WireError::Other { detail } => ClusterError::Refused(detail),
        }
    }
}

impl From<ClusterError> for WireError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::BadToken => WireError::BadToken,
            ClusterError::MalformedToken(detail) => WireError::MalformedToken { detail },
            ClusterError::CaMismatch => WireError::CaMismatch,
            ClusterError::NotManager => WireError::NotManager,
            ClusterError::NoQuorum => WireError::NoQuorum,
            ClusterError::NotInCluster => WireError::NotInCluster,
            ClusterError::LastManager => WireError::LastManager,
            ClusterError::NodeIsReady(node) => WireError::NodeIsReady { node },
            ClusterError::NodeIsManager(node) => WireError::NodeIsManager { node },
            ClusterError::RemoveSelf => WireError::RemoveSelf,
            ClusterError::UnknownNode(node) => WireError::UnknownNode { node },
            ClusterError::AlreadyRole { node, role } => WireError::AlreadyRole { node, role },
            ClusterError::Rejected(rejection) => WireError::Rejected { rejection },
            ClusterError::Unauthorized(detail) => WireError::Unauthorized { detail },
            ClusterError::Busy(detail) => WireError::Busy { detail },
            e => WireError::Other {
                detail: e.to_string(),
            },
        }
    }
}

pub(crate) type Reply = Result<Response, WireError>;

/// Why a call got no reply.
#[derive(Debug)]
pub(crate) enum CallError {
    /// No connection (refused, timed out, TLS refused).
    Connect(String),
    /// The connection broke during the exchange.
    Exchange(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Connect(r) => write!(f, "connect: {r}"),
            CallError::Exchange(r) => write!(f, "exchange: {r}"),
        }
    }
}

pub(crate) async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    body: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_FRAME)
        .ok_or_else(|| std::io::Error::other("frame too large"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

/// The next frame, or `None` at a clean end of stream. A frame longer than `max` is
/// refused from its length alone (nothing is allocated for it); its body must arrive
/// within `body_timeout` of its length.
pub(crate) async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    body_timeout: Duration,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes is too large (at most {max} here)"
        )));
    }
    let mut body = vec![0u8; len];
    match tokio::time::timeout(body_timeout, stream.read_exact(&mut body)).await {
        Ok(r) => r?,
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
    };
    Ok(Some(body))
}

/// A request frame's body read as a [`Request`]: the one step between the bytes a caller
/// sent and what the handlers see. A body that is not a request is answered with the
/// reason, as any refused request is.
pub(crate) fn decode_request(frame: &[u8]) -> Result<Request, WireError> {
    serde_json::from_slice(frame).map_err(|e| WireError::Other {
        detail: format!("bad request: {e}"),
    })
}

/// The next request on a server's connection: a frame of at most `max` bytes
/// ([`read_frame`]), then its body decoded ([`decode_request`]). `Ok(None)` at a clean end
/// of stream; an I/O error (a frame over the bound, a body that does not come in time)
/// ends the connection, a body that is not a request is answered.
pub(crate) async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    body_timeout: Duration,
) -> std::io::Result<Option<Result<Request, WireError>>> {
    Ok(read_frame(stream, max, body_timeout)
        .await?
        .map(|frame| decode_request(&frame)))
}

/// One request/response exchange on an open stream, within `deadline`.
pub(crate) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    body: &[u8],
    deadline: Duration,
) -> Result<Reply, String> {
    let round_trip = async {
        write_frame(stream, body).await.map_err(|e| e.to_string())?;
        read_frame(stream, MAX_FRAME, deadline)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "connection closed before the response".to_string())
    };
    let frame = tokio::time::timeout(deadline, round_trip)
        .await
        .map_err(|_| format!("no response within {deadline:?}"))??;
    serde_json::from_slice(&frame).map_err(|e| format!("bad response: {e}"))
}

type Conn = tokio_rustls::client::TlsStream<TcpStream>;

/// Whether a server may be talked to as a manager. A certificate naming
/// `shoal-manager` proves its holder was made a manager, not that it still is one: a
/// demoted manager keeps its old certificate. A manager asks its own copy of the store
/// (a worker or revoked node is refused, one it does not know yet passes: its copy may
/// be behind); a worker, which has none, keeps the managers' node IDs the leader last
/// named (`None`: not heard yet, anyone with the certificate passes).
#[derive(Default)]
pub(crate) struct KnownManagers {
    heard: std::sync::RwLock<Option<HashSet<String>>>,
    store: std::sync::RwLock<Option<StoreVerdict>>,
}

/// What a manager's store says of a node: `Some(true)` a manager, `Some(false)` not
/// (a worker, revoked), `None` unknown.
pub(crate) type StoreVerdict = Box<dyn Fn(&str) -> Option<bool> + Send + Sync>;

impl KnownManagers {
    /// Records the managers the leader named (an empty list says nothing: a leader from
    /// before the list existed).
    pub(crate) fn set(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        *self.heard.write().unwrap_or_else(|p| p.into_inner()) =
            Some(ids.iter().cloned().collect());
    }

    /// While this node is a manager: ask its store (`None`: it stopped being one).
    pub(crate) fn follow_store(&self, verdict: Option<StoreVerdict>) {
        *self.store.write().unwrap_or_else(|p| p.into_inner()) = verdict;
    }

    /// Whether `node_id` may serve as a manager.
    pub(crate) fn admits(&self, node_id: &str) -> bool {
        if let Some(verdict) = &*self.store.read().unwrap_or_else(|p| p.into_inner()) {
            return verdict(node_id) != Some(false);
        }
        self.heard
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|ids| ids.contains(node_id))
    }
}

/// A node's mTLS client to managers (server name `shoal-manager`, and a node among the
/// [`KnownManagers`]), keeping idle connections per address.
pub(crate) struct Client {
    connector: TlsConnector,
    managers: Arc<KnownManagers>,
    /// Idle connections per address, with the server's node ID.
    idle: Mutex<HashMap<String, Vec<(Conn, String)>>>,
    /// When a failed handshake with each address was last said in the log.
    said: Mutex<HashMap<String, std::time::Instant>>,
}

impl Client {
    pub(crate) fn new(config: rustls::ClientConfig, managers: Arc<KnownManagers>) -> Client {
        Client {
            connector: TlsConnector::from(Arc::new(config)),
            managers,
            idle: Mutex::new(HashMap::new()),
            said: Mutex::new(HashMap::new()),
        }
    }

    /// A TLS handshake with a manager failed (a certificate of a root one side no longer
    /// trusts): said in the log, at most every 10 s per address.
    fn handshake_failed(&self, addr: &str, error: &str) {
        let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
        let due = said
            .get(addr)
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
        if due {
            said.insert(addr.to_owned(), std::time::Instant::now());
            tracing::warn!(manager = %addr, %error, "TLS handshake with a manager failed");
        }
    }

    /// An idle connection to `addr` whose server is still a manager (the others are
    /// dropped).
    fn take_idle(&self, addr: &str) -> Option<(Conn, String)> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let v = idle.get_mut(addr)?;
        v.retain(|(_, server)| self.managers.admits(server));
        v.pop()
    }

    fn put_idle(&self, addr: &str, conn: (Conn, String)) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let v = idle.entry(addr.to_string()).or_default();
        if v.len() < IDLE_PER_PEER {
            v.push(conn);
        }
    }

    /// Drops every idle connection (after this node's certificate changed).
    pub(crate) fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// A new connection to `addr`, with its server's node ID.
    async fn connect(&self, addr: &str) -> Result<(Conn, String), CallError> {
        let fut = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| CallError::Connect(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let tls = match self.connector.connect(manager_server_name(), tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    self.handshake_failed(addr, &e.to_string());
                    return Err(CallError::Connect(format!("TLS: {e}")));
                }
            };
            let server = PeerIdentity::from_peer_certificates(tls.get_ref().1.peer_certificates())
                .map_err(|e| CallError::Connect(format!("TLS: {e}")))?;
            if !self.managers.admits(server.node_id()) {
                return Err(CallError::Connect(format!(
                    "node {} is not a manager of this cluster any more",
                    server.node_id()
                )));
            }
            Ok((tls, server.node_id().to_owned()))
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Connect(format!(
                "no connection within {CONNECT_TIMEOUT:?}"
            ))),
        }
    }

    /// Sends `request` to the manager at `addr`, reusing an idle connection when there is
    /// one (and retrying once on a fresh one if that had gone stale). Each exchange has
    /// `deadline` to get its answer: a pooled connection that went dead without a word
    /// (a partition, a peer that hangs) fails the call instead of holding it, and the
    /// connection is dropped.
    pub(crate) async fn call(
        &self,
        addr: &str,
        request: &Request,
        deadline: Duration,
    ) -> Result<Reply, CallError> {
        let body = serde_json::to_vec(request).map_err(|e| CallError::Exchange(e.to_string()))?;
        if let Some(mut conn) = self.take_idle(addr) {
            if let Ok(reply) = exchange(&mut conn.0, &body, deadline).await {
                self.put_idle(addr, conn);
                return Ok(reply);
            }
        }
        let mut conn = self.connect(addr).await?;
        let reply = exchange(&mut conn.0, &body, deadline)
            .await
            .map_err(CallError::Exchange)?;
        self.put_idle(addr, conn);
        Ok(reply)
    }
}

/// [`Transport`] over the manager API: Raft RPCs to the peer's advertise address, with this
/// manager's certificate.
///
/// Each exchange (connect, TLS handshake, request, response) runs as a task of its own,
/// bounded by [`RAFT_DEADLINE`] (a snapshot by [`RAFT_SNAPSHOT_DEADLINE`]), and openraft only waits for its result. Openraft bounds an
/// append by its heartbeat interval (200 ms) and a vote by the shortest election timeout;
/// when it gives up, the exchange is not cut: the connection finishes its handshake or
/// its response and goes back to the pool for the next heartbeat. Cut instead, every
/// late answer on a starved machine threw away a connection, the next heartbeat needed a
/// new TLS handshake that could not finish within 200 ms either, and followers heard
/// nothing until they elected a new leader with no fault at all. Exchanges are not
/// capped per peer: one that gets no answer ends at its deadline, so a silent peer has
/// at most a deadline's worth of heartbeats in flight, and a vote never waits behind
/// them.
pub(crate) struct TlsTransport {
    pub(crate) rt: Weak<Runtime>,
}

impl Transport for TlsTransport {
    fn send(
        &self,
        to: RaftId,
        addr: &str,
        request: RaftRequest,
    ) -> BoxFuture<'static, Result<RaftResponse, TransportError>> {
        let rt = self.rt.upgrade();
        let addr = addr.to_string();
        Box::pin(async move {
            let Some(rt) = rt else {
                return Err(TransportError::Unreachable {
                    to,
                    reason: "this manager is stopping".into(),
                });
            };
            let client = rt.client();
            drop(rt);
            let request = Request::Raft(request);
            let deadline = request.deadline(Duration::ZERO);
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let _ = tx.send(client.call(&addr, &request, deadline).await);
            });
            let Ok(answer) = rx.await else {
                return Err(TransportError::Failed {
                    to,
                    reason: "the exchange ended without an answer".into(),
                });
            };
            match answer {
                Ok(Ok(Response::Raft(r))) => Ok(r),
                Ok(Ok(_)) => Err(TransportError::Failed {
                    to,
                    reason: "response of the wrong kind".into(),
                }),
                Ok(Err(e)) => Err(TransportError::Failed {
                    to,
                    reason: ClusterError::from(e).to_string(),
                }),
                Err(CallError::Connect(reason)) => Err(TransportError::Unreachable { to, reason }),
                Err(CallError::Exchange(reason)) => Err(TransportError::Failed { to, reason }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_passes_for_a_manager_while_the_store_or_the_leader_says_it_is_one() {
        let known = KnownManagers::default();
        assert!(
            known.admits("m1"),
            "nothing heard yet: the certificate decides"
        );
        known.set(&[]);
        assert!(known.admits("m1"), "an empty list says nothing");
        known.set(&["m1".to_owned(), "m2".to_owned()]);
        assert!(known.admits("m1") && known.admits("m2"));
        assert!(!known.admits("demoted"));
        // A manager asks its own store: unknown passes, a worker or revoked node not.
        known.follow_store(Some(Box::new(|id| match id {
            "m1" => Some(true),
            "demoted" => Some(false),
            _ => None,
        })));
        assert!(known.admits("m1") && known.admits("newer"));
        assert!(!known.admits("demoted"));
        known.follow_store(None);
        assert!(!known.admits("newer"), "back to what the leader said");
    }

    #[test]
    fn a_node_state_request_reads_and_writes_as_before_when_it_says_nothing_applied() {
        let old: Request = serde_json::from_str(r#"{"node_state":{"since":3}}"#).unwrap();
        assert!(matches!(
            old,
            Request::NodeState {
                since: 3,
                applied: None
            }
        ));
        let plain = Request::NodeState {
            since: 3,
            applied: None,
        };
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"node_state":{"since":3}}"#
        );
        let said = Request::NodeState {
            since: 3,
            applied: Some(2),
        };
        let back: Request = serde_json::from_str(&serde_json::to_string(&said).unwrap()).unwrap();
        assert!(matches!(
            back,
            Request::NodeState {
                since: 3,
                applied: Some(2)
            }
        ));
    }
}
