//! The manager's listener: accepts connections, runs the TLS handshake (the peer's
//! certificate, if any, names the caller) and serves request frames one by one.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{other, read, Core, Runtime, HANDSHAKE_TIMEOUT};
use crate::manager::wire::{read_frame, write_frame, Reply, Request};
use crate::pki::PeerIdentity;

pub(super) async fn accept_loop(rt: Arc<Runtime>, core: Arc<Core>, listener: TcpListener) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let config = read(&core.server_config);
                    conns.spawn(serve_conn(rt.clone(), config, tcp));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_conn(rt: Arc<Runtime>, config: Arc<rustls::ServerConfig>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let accept = TlsAcceptor::from(config).accept(tcp);
    let Ok(Ok(mut tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await else {
        return;
    };
    let peer = PeerIdentity::from_peer_certificates(tls.get_ref().1.peer_certificates())
        .ok()
        .filter(|p| p.cluster_id() == rt.cluster_id);
    loop {
        let frame = match read_frame(&mut tls).await {
            Ok(Some(frame)) => frame,
            _ => return,
        };
        let reply: Reply = match serde_json::from_slice::<Request>(&frame) {
            Ok(request) => rt.handle(peer.clone(), request).await,
            Err(e) => Err(other(format!("bad request: {e}"))),
        };
        let Ok(body) = serde_json::to_vec(&reply) else {
            return;
        };
        if write_frame(&mut tls, &body).await.is_err() {
            return;
        }
    }
}
