//! What is not the swarm's goes to the node's own dockerd unchanged: one connection to
//! its socket per request, the response streamed back, and upgraded connections
//! (`docker exec -it`, `attach`: `Upgrade: tcp`, answered 101) joined byte for byte.

use std::path::Path;

use http_body_util::BodyExt;
use hyper::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tracing::debug;

use super::reply::{self, Answer};

pub async fn forward<B>(docker: &Path, mut request: Request<B>) -> Answer
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client_upgrade = request
        .headers()
        .contains_key(header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut request));
    let unreachable = |e: &dyn std::fmt::Display| {
        reply::error(
            StatusCode::BAD_GATEWAY,
            format!("the node's dockerd at {}: {e}", docker.display()),
        )
    };
    let stream = match UnixStream::connect(docker).await {
        Ok(s) => s,
        Err(e) => return unreachable(&e),
    };
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(e) => return unreachable(&e),
        };
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!(error = %e, "dockerd connection ended");
        }
    });
    let mut response = match sender.send_request(request).await {
        Ok(r) => r,
        Err(e) => return unreachable(&e),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let engine_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                match (client_upgrade.await, engine_upgrade.await) {
                    (Ok(client), Ok(engine)) => {
                        let mut client = TokioIo::new(client);
                        let mut engine = TokioIo::new(engine);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                    (c, e) => {
                        debug!(client = ?c.err(), engine = ?e.err(), "an upgrade did not complete")
                    }
                }
            });
        }
    }
    response.map(|body| body.boxed())
}

/// An answer of the engine, whole, as JSON (`/info` to add the swarm's section to,
/// `/networks` to add the swarm's networks to).
pub async fn engine_json<B>(docker: &Path, request: Request<B>) -> Result<serde_json::Value, Answer>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let response = forward(docker, request).await;
    if response.status() != StatusCode::OK {
        return Err(response);
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| {
            reply::error(
                StatusCode::BAD_GATEWAY,
                format!("reading dockerd's answer: {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        reply::error(
            StatusCode::BAD_GATEWAY,
            format!("dockerd's answer is not JSON: {e}"),
        )
    })
}
