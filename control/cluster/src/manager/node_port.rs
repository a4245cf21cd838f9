//! The node port (TCP 2391 on every node): a manager asks a node for what only that
//! node holds (its task containers' logs), over the cluster's mutual TLS. The node
//! presents its own certificate (dialled by its node ID, so only that node passes) and
//! requires a client certificate from the cluster CA naming a manager of this cluster
//! that the node still counts among the managers ([`KnownManagers`]); anyone else is
//! closed on before a byte of the request is read. One request per connection: a
//! length-prefixed JSON body of at most 64 KiB within 5 s, answered with one frame
//! (at most 64 MiB). At most 16 connections at once; a handshake must end within 5 s.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, TlsConnector};
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

/// What serves a request: the calling manager's node ID and the request body, to the
/// answer's body.
pub type NodePortHandler =
    Arc<dyn Fn(String, Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>> + Send + Sync>;

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
    let reply = handler(peer.node_id().to_string(), body).await;
    write_frame(&mut tls, &reply)
        .await
        .map_err(|e| e.to_string())?;
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
    let identity = rt.identity();
    let config = client_config(&identity, identity.trust().clone())?;
    let name = ServerName::try_from(node_id.to_string())
        .map_err(|e| ClusterError::Protocol(format!("node ID {node_id:?}: {e}")))?;
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        write_frame(&mut tls, body)
            .await
            .map_err(|e| e.to_string())?;
        read_frame(&mut tls, MAX_FRAME, deadline)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the node closed the connection without an answer".to_string())
    };
    match tokio::time::timeout(deadline, exchange).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(ClusterError::Protocol(format!(
            "node {node_id} at {addr}: {e}"
        ))),
        Err(_) => Err(ClusterError::Protocol(format!(
            "node {node_id} at {addr}: no answer within {deadline:?}"
        ))),
    }
}
