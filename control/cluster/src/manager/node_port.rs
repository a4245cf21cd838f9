//! The node port (TCP 2391 on every node): a manager asks a node for what only that
//! node holds (its task containers' logs), over the cluster's mutual TLS. The node
//! presents its own certificate (dialled by its node ID, so only that node passes) and
//! requires a client certificate from the cluster CA naming a manager of this cluster
//! that the node still counts among the managers ([`KnownManagers`]); anyone else is
//! closed on before a byte of the request is read. One request per connection: a
//! length-prefixed JSON body of at most 64 KiB within 5 s, answered with one frame
//! (at most 64 MiB each), or with frames as they come for as long as the handler sends
//! them and the manager stays ([`call_stream`]: `service logs -f`). At most 16
//! connections at once; a handshake must end within 5 s.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::{client::TlsStream, TlsAcceptor, TlsConnector};
use tracing::{debug, warn};

use super::runtime::Runtime;
use super::wire::{read_frame, write_frame, MAX_FRAME};
use super::ClusterError;
use crate::pki::{client_config, server_config, PeerIdentity, Role};

/// The port every node serves managers' requests on.
pub const NODE_PORT: u16 = 2391;
const MAX_REQUEST: usize = 64 << 10;
const HANDSHAKE: Duration = Duration::from_secs(5);
const REQUEST_BODY: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 16;

/// What serves a request: the calling manager's node ID, the request body, and where
/// the answer's frames go (one for a plain answer; many for a stream). The handler ends
/// when it has sent its last frame, or when a send fails (the manager went away).
pub type NodePortHandler = Arc<
    dyn Fn(String, Vec<u8>, mpsc::Sender<Vec<u8>>) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// Frames a handler may have sent and not yet written: a slow manager holds the handler
/// back instead of growing a queue.
const FRAMES_QUEUED: usize = 4;

/// Serves the node port on `listener` until dropped/aborted.
pub(crate) async fn serve(rt: Arc<Runtime>, listener: TcpListener, handler: NodePortHandler) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "node port: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "node port: connection bound reached, closed");
            continue;
        };
        let (rt, handler) = (rt.clone(), handler.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(&rt, tcp, &handler).await {
                debug!(%peer, error = %e, "node port: connection refused or failed");
            }
            drop(slot);
        });
    }
}

async fn answer(rt: &Runtime, tcp: TcpStream, handler: &NodePortHandler) -> Result<(), String> {
    let identity = rt.identity();
    let config = server_config(&identity, identity.trust().clone()).map_err(|e| e.to_string())?;
    let mut tls = tokio::time::timeout(HANDSHAKE, TlsAcceptor::from(Arc::new(config)).accept(tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let peer = PeerIdentity::from_peer_certificates(tls.get_ref().1.peer_certificates())
        .map_err(|e| e.to_string())?;
    if peer.cluster_id() != identity.cluster_id()
        || peer.role() != Role::Manager
        || !rt.known_managers().admits(peer.node_id())
    {
        return Err(format!(
            "{} is not a manager of this cluster",
            peer.node_id()
        ));
    }
    let body = read_frame(&mut tls, MAX_REQUEST, REQUEST_BODY)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no request")?;
    let (frames, mut queued) = mpsc::channel(FRAMES_QUEUED);
    let handling = handler(peer.node_id().to_string(), body, frames);
    tokio::pin!(handling);
    let mut handled = false;
    loop {
        tokio::select! {
            frame = queued.recv() => match frame {
                Some(frame) => write_frame(&mut tls, &frame).await.map_err(|e| e.to_string())?,
                None => break,
            },
            () = &mut handling, if !handled => handled = true,
        }
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
    Ok(())
}

/// Asks node `node_id` at `addr` (its node port) with `body`; the whole exchange
/// within `deadline`. Only a manager's certificate is taken there.
pub(crate) async fn call(
    rt: &Runtime,
    node_id: &str,
    addr: SocketAddr,
    body: &[u8],
    deadline: Duration,
) -> Result<Vec<u8>, ClusterError> {
    let failed = |e: String| ClusterError::Protocol(format!("node {node_id} at {addr}: {e}"));
    let exchange = async {
        let mut tls = open(rt, node_id, addr, body).await?;
        read_frame(&mut tls, MAX_FRAME, deadline)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the node closed the connection without an answer".to_string())
    };
    match tokio::time::timeout(deadline, exchange).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(failed(e)),
        Err(_) => Err(failed(format!("no answer within {deadline:?}"))),
    }
}

/// Asks node `node_id` at `addr` with `body` and keeps the connection for the frames
/// the node sends as they come ([`NodePortStream`]); connecting and sending within
/// `idle`. Dropping the stream closes the connection, which ends the node's handler.
pub(crate) async fn call_stream(
    rt: &Runtime,
    node_id: &str,
    addr: SocketAddr,
    body: &[u8],
    idle: Duration,
) -> Result<NodePortStream, ClusterError> {
    let failed = |e: String| ClusterError::Protocol(format!("node {node_id} at {addr}: {e}"));
    match tokio::time::timeout(idle, open(rt, node_id, addr, body)).await {
        Ok(Ok(tls)) => Ok(NodePortStream {
            tls,
            idle,
            peer: format!("node {node_id} at {addr}"),
        }),
        Ok(Err(e)) => Err(failed(e)),
        Err(_) => Err(failed(format!("no connection within {idle:?}"))),
    }
}

/// A TLS connection to a node's port, the request sent.
async fn open(
    rt: &Runtime,
    node_id: &str,
    addr: SocketAddr,
    body: &[u8],
) -> Result<TlsStream<TcpStream>, String> {
    let identity = rt.identity();
    let config = client_config(&identity, identity.trust().clone()).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(node_id.to_string())
        .map_err(|e| format!("node ID {node_id:?}: {e}"))?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    write_frame(&mut tls, body)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tls)
}

/// The frames a node sends on one connection ([`call_stream`]).
pub struct NodePortStream {
    tls: TlsStream<TcpStream>,
    idle: Duration,
    peer: String,
}

impl NodePortStream {
    /// The next frame; `None` when the node ended the stream. An error when the
    /// connection broke, or no frame came within the idle bound (a streaming handler
    /// sends one at least that often, so silence means the node is gone).
    pub async fn next_frame(&mut self) -> Result<Option<Vec<u8>>, ClusterError> {
        let peer = &self.peer;
        match tokio::time::timeout(self.idle, read_frame(&mut self.tls, MAX_FRAME, self.idle)).await
        {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(e)) => Err(ClusterError::Protocol(format!("{peer}: {e}"))),
            Err(_) => Err(ClusterError::Protocol(format!(
                "{peer}: nothing within {:?}",
                self.idle
            ))),
        }
    }
}
