//! The seam between the store and the wire.
//!
//! Raft needs three request/response exchanges between managers (append entries, vote,
//! install snapshot). They are plain serde messages ([`RaftRequest`], [`RaftResponse`]), so a
//! [`Transport`] only moves one request to a peer and brings its response back:
//! - [`MemNetwork`]: in one process, for tests; links can be cut and healed.
//! - the real one (not here yet): mutual TLS over TCP to the peer's port 2377 (the
//!   `BasicNode::addr` openraft keeps for each member). Frame each message (length prefix +
//!   JSON or bincode), check that the peer's certificate says "manager", and on the server
//!   side hand every request to [`StoreNode::handle_rpc`] and write back its response.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use super::{RaftId, StoreNode, TypeConfig};

/// A boxed future, `Send`, as [`Transport`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One Raft request from one manager to another. (Externally tagged on purpose: see the
/// log's `Record`; membership maps have `u64` keys.)
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<RaftId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to a [`RaftRequest`], of the same kind; `Err` is the peer's Raft refusing.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftResponse {
    AppendEntries(Result<AppendEntriesResponse<RaftId>, RaftError<RaftId>>),
    Vote(Result<VoteResponse<RaftId>, RaftError<RaftId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<RaftId>, RaftError<RaftId, InstallSnapshotError>>,
    ),
}

/// Why a request got no response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The peer cannot be reached now (no route, refused, down); Raft backs off, then retries.
    #[error("manager {to} is unreachable: {reason}")]
    Unreachable { to: RaftId, reason: String },
    /// The exchange broke midway (connection reset, bad frame); Raft retries at once.
    #[error("request to manager {to} failed: {reason}")]
    Failed { to: RaftId, reason: String },
}

/// Moves Raft messages from this manager to its peers.
///
/// One `Transport` belongs to one manager (it knows who is sending: with TLS, its client
/// certificate). `addr` is the peer's address from the Raft membership (`host:2377`).
pub trait Transport: Send + Sync + 'static {
    fn send(
        &self,
        to: RaftId,
        addr: &str,
        request: RaftRequest,
    ) -> BoxFuture<'static, Result<RaftResponse, TransportError>>;
}

/// Openraft's network factory over a [`Transport`].
pub(crate) struct NetworkFactory {
    pub(crate) transport: Arc<dyn Transport>,
}

pub(crate) struct Peer {
    target: RaftId,
    addr: String,
    transport: Arc<dyn Transport>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Peer;

    async fn new_client(&mut self, target: RaftId, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

impl Peer {
    async fn call<E: std::error::Error>(
        &self,
        request: RaftRequest,
        option: &RPCOption,
    ) -> Result<RaftResponse, RPCError<RaftId, BasicNode, E>> {
        let send = self.transport.send(self.target, &self.addr, request);
        match tokio::time::timeout(option.hard_ttl(), send).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e @ TransportError::Unreachable { .. })) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Ok(Err(e @ TransportError::Failed { .. })) => {
                Err(RPCError::Network(NetworkError::new(&e)))
            }
            Err(_) => Err(RPCError::Network(NetworkError::new(
                &TransportError::Failed {
                    to: self.target,
                    reason: format!("no response within {:?}", option.hard_ttl()),
                },
            ))),
        }
    }

    fn mismatch<E: std::error::Error>(&self) -> RPCError<RaftId, BasicNode, E> {
        RPCError::Network(NetworkError::new(&TransportError::Failed {
            to: self.target,
            reason: "response of the wrong kind".to_string(),
        }))
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<RaftId, BasicNode, E> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<RaftId>, RPCError<RaftId, BasicNode, RaftError<RaftId>>> {
        match self.call(RaftRequest::AppendEntries(rpc), &option).await? {
            RaftResponse::AppendEntries(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.mismatch()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<RaftId>,
        RPCError<RaftId, BasicNode, RaftError<RaftId, InstallSnapshotError>>,
    > {
        match self
            .call(RaftRequest::InstallSnapshot(rpc), &option)
            .await?
        {
            RaftResponse::InstallSnapshot(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.mismatch()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftId>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftId>, RPCError<RaftId, BasicNode, RaftError<RaftId>>> {
        match self.call(RaftRequest::Vote(rpc), &option).await? {
            RaftResponse::Vote(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.mismatch()),
        }
    }
}

#[derive(Default)]
struct MemInner {
    nodes: HashMap<RaftId, StoreNode>,
    /// Cut links, as (smaller ID, larger ID).
    cut: HashSet<(RaftId, RaftId)>,
    isolated: HashSet<RaftId>,
}

impl MemInner {
    fn linked(&self, a: RaftId, b: RaftId) -> bool {
        !self.isolated.contains(&a)
            && !self.isolated.contains(&b)
            && !self.cut.contains(&(a.min(b), a.max(b)))
    }
}

/// An in-process network of managers, for tests: requests are calls into the peer's
/// [`StoreNode::handle_rpc`]. Links can be cut (both directions) and healed; a node that
/// is not registered (stopped) is unreachable. Clones share one network.
#[derive(Clone, Default)]
pub struct MemNetwork {
    inner: Arc<Mutex<MemInner>>,
}

impl MemNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transport that manager `from` sends with.
    pub fn transport(&self, from: RaftId) -> Arc<dyn Transport> {
        Arc::new(MemTransport {
            from,
            net: self.clone(),
        })
    }

    /// Makes `node` reachable under its ID (replacing a previous instance).
    pub fn register(&self, node: StoreNode) {
        self.lock().nodes.insert(node.id(), node);
    }

    /// Makes `id` unreachable (as when its process is gone).
    pub fn unregister(&self, id: RaftId) {
        self.lock().nodes.remove(&id);
    }

    /// Cuts the link between `a` and `b`, both ways.
    pub fn cut(&self, a: RaftId, b: RaftId) {
        self.lock().cut.insert((a.min(b), a.max(b)));
    }

    /// Cuts every link of `id`.
    pub fn isolate(&self, id: RaftId) {
        self.lock().isolated.insert(id);
    }

    /// Restores every cut link and isolated node.
    pub fn heal_all(&self) {
        let mut inner = self.lock();
        inner.cut.clear();
        inner.isolated.clear();
    }

    /// Whether `a` and `b` can talk now.
    pub fn linked(&self, a: RaftId, b: RaftId) -> bool {
        self.lock().linked(a, b)
    }
}

struct MemTransport {
    from: RaftId,
    net: MemNetwork,
}

impl Transport for MemTransport {
    fn send(
        &self,
        to: RaftId,
        _addr: &str,
        request: RaftRequest,
    ) -> BoxFuture<'static, Result<RaftResponse, TransportError>> {
        let (from, net) = (self.from, self.net.clone());
        Box::pin(async move {
            let unreachable = |reason: &str| TransportError::Unreachable {
                to,
                reason: reason.to_string(),
            };
            let target = {
                let inner = net.lock();
                if !inner.linked(from, to) {
                    return Err(unreachable("link cut"));
                }
                inner.nodes.get(&to).cloned()
            };
            let Some(target) = target else {
                return Err(unreachable("not running"));
            };
            let response = target.handle_rpc(request).await;
            // A link cut while the request was in flight loses the response.
            if !net.linked(from, to) {
                return Err(unreachable("link cut"));
            }
            Ok(response)
        })
    }
}
