//! `--metrics-addr`: the agent's Prometheus endpoint, `GET /metrics` over plain HTTP/1.1
//! (hyper, which the Docker client already brings).
//!
//! Every scrape reads the live values, never a status file: the eBPF maps' counters and
//! fill levels through their pins (re-opened per scrape, so a map an agent replaced is
//! followed; on a blocking thread, since counting a full flow table walks it), the
//! reconcilers' and the resolver's counters in memory, the executor's last view of the
//! node (tasks, gossip; a watch value it writes after each pass) and, on a manager, its
//! Raft member's metrics. The families are written in [`families`]; the text format in
//! [`exposition`].
pub mod exposition;
mod families;

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{
    body::Bytes, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use shoal::cluster_agent::ClusterAgent;
use shoal_dataplane::reconcile::runner::ReconcileStats;
use shoal_dns::stats::DnsStats;
use shoal_orchestrator::node_report::NodeReport;
use tokio::{
    net::TcpListener,
    sync::{watch, Semaphore},
};
use tracing::{debug, info, warn};

/// Connections served at once; more wait to be accepted (Prometheus keeps one per
/// target).
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a scrape reads from.
pub struct Sources {
    /// The agent's pin directory (underlay, guard, `mesh/`, `vip/` maps).
    pub pin_dir: PathBuf,
    /// Each reconciler's name and counters.
    pub reconcilers: Vec<(&'static str, Arc<ReconcileStats>)>,
    pub dns: Arc<DnsStats>,
    /// The executor's last view of the node.
    pub node: watch::Receiver<Arc<NodeReport>>,
    pub cluster: Arc<ClusterAgent>,
    /// The role the last scrape found (for one that finds the role's lock held).
    pub last_role: std::sync::Mutex<&'static str>,
}

/// Binds `addr` (so a taken port stops the agent at start with the reason).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint on {addr} (--metrics-addr)"))
}

/// Serves `/metrics` on `listener` until dropped.
pub async fn serve(listener: TcpListener, sources: Arc<Sources>) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving Prometheus metrics on /metrics");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: wait for connections to close.
                warn!(error = %e, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // One small response per request: nothing to gain from Nagle's coalescing.
        let _ = stream.set_nodelay(true);
        let sources = sources.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let sources = sources.clone();
                async move { Ok::<_, Infallible>(respond(&sources, &req).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
}

async fn respond<B>(sources: &Sources, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let text = families::scrape(sources).await;
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(exposition::CONTENT_TYPE),
    );
    r
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
