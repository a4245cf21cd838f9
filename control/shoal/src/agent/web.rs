//! `--web-addr`: the live cluster page, served by managers over plain HTTP/1.1 (hyper, as
//! the metrics endpoint). The page is three plain files embedded in the binary (no build
//! step, nothing fetched from a network): it draws nodes as columns with their tasks in
//! them (the picture Swarm's users install a visualizer for), the services with their
//! replicas and published ports, each node's traffic per second (from the heartbeats'
//! counters), and a log of task state changes.
//!
//! It stays live through server-sent events: `GET /api/events` sends the whole
//! document ([`snapshot`]) at once and again whenever the manager's copy of the store
//! moves on (changes within [`COALESCE`] are sent as one) or the rates change, with a
//! comment after [`KEEP_ALIVE`] of silence so proxies and browsers keep the stream open.
//! `GET /api/cluster` is the same document once. Read-only: nothing on this port changes
//! the cluster. A node that is not a manager answers 503.
mod snapshot;

use std::{convert::Infallible, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use futures::stream::{self, Stream};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{
    body::{Bytes, Frame},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use shoal::cluster_agent::ClusterAgent;
use shoal_cluster::manager::Manager;
use tokio::{
    net::TcpListener,
    sync::{watch, Semaphore},
};
use tracing::{debug, info, warn};

use crate::config::WebListen;

/// Connections served at once (each open page holds one for its event stream); more
/// wait to be accepted.
const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Store changes this close together are sent as one document (a scale of many tasks
/// moves the store dozens of times a second).
const COALESCE: Duration = Duration::from_millis(100);
/// A comment on an idle event stream this often.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often the document is made again for the traffic rates (which move without the
/// store), and sent if it changed.
const RATES_EVERY: Duration = Duration::from_secs(2);

const INDEX_HTML: &str = include_str!("web/page/index.html");
const APP_JS: &str = include_str!("web/page/app.js");
const STYLE_CSS: &str = include_str!("web/page/style.css");

type Body = BoxBody<Bytes, Infallible>;

/// Binds the page's address. One the user chose must be free (the agent stops with the
/// reason); the default one, when taken, is warned about and the page is not served.
pub async fn bind(web: WebListen) -> Result<Option<TcpListener>> {
    match TcpListener::bind(web.addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if !web.explicit => {
            warn!(addr = %web.addr, error = %e, "the cluster page's default address is taken: the page is not served (choose one with --web-addr, or --web-addr off)");
            Ok(None)
        }
        Err(e) => {
            Err(e).with_context(|| format!("binding the cluster page on {} (--web-addr)", web.addr))
        }
    }
}

/// Serves the page on `listener` until dropped.
pub async fn serve(listener: TcpListener, cluster: Arc<ClusterAgent>) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving the cluster page (while this node is a manager)");
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
                warn!(error = %e, "accepting a cluster page connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let cluster = cluster.clone();
                async move { Ok::<_, Infallible>(respond(&cluster, &req).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "cluster page connection ended");
            }
        });
    }
}

async fn respond<B>(cluster: &ClusterAgent, req: &Request<B>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "the cluster page is read-only: GET and HEAD only\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/" | "/index.html" => text(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => text(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        "/style.css" => text(StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS),
        "/api/cluster" => match cluster.acting_manager().await {
            Some(m) => match document(&m) {
                Some(doc) => json(StatusCode::OK, doc),
                None => not_a_manager(cluster).await,
            },
            None => not_a_manager(cluster).await,
        },
        "/api/events" => match cluster.acting_manager().await {
            Some(m) => events(m),
            None => not_a_manager(cluster).await,
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: the cluster page is at /, its data at /api/cluster and /api/events\n",
        ),
    }
}

/// The page's document from `manager`'s copy of the store; None once it stopped being
/// a manager.
fn document(manager: &Manager) -> Option<String> {
    let state = manager.local_state()?;
    let managers = manager.manager_status(&state);
    let me = manager.node_client().node_id().to_owned();
    let rates = manager.traffic_rates();
    Some(snapshot::snapshot(&state, &managers, &rates, &me).to_string())
}

/// The event stream: the document now, then on every change of the store.
fn events(manager: Manager) -> Response<Body> {
    let Some(versions) = manager.subscribe() else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"message":"this node stopped being a manager"}"#.into(),
        );
    };
    let body = StreamBody::new(follow(manager, versions));
    let mut r = Response::new(BodyExt::boxed(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Where an event stream is.
struct Follow {
    manager: Manager,
    versions: watch::Receiver<u64>,
    /// The document last sent (None: nothing sent yet).
    last: Option<String>,
    /// When something was last sent (the keep-alive counts from it).
    sent_at: tokio::time::Instant,
    done: bool,
}

fn follow(
    manager: Manager,
    versions: watch::Receiver<u64>,
) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> {
    let start = Follow {
        manager,
        versions,
        last: None,
        sent_at: tokio::time::Instant::now(),
        done: false,
    };
    stream::unfold(start, |mut f| async move {
        if f.done {
            return None;
        }
        let text = next_event(&mut f).await;
        f.sent_at = tokio::time::Instant::now();
        Some((Ok(Frame::data(Bytes::from(text))), f))
    })
}

/// The stream's next event: the document at once, then whenever the store moves on or
/// (every [`RATES_EVERY`]) the traffic rates changed it; a keep-alive comment after
/// [`KEEP_ALIVE`] of nothing; `gone` (and the end) once the node is no manager.
async fn next_event(f: &mut Follow) -> String {
    loop {
        if f.last.is_some() {
            tokio::select! {
                changed = f.versions.changed() => {
                    if changed.is_err() {
                        f.done = true;
                        return gone_event();
                    }
                    tokio::time::sleep(COALESCE).await;
                }
                () = tokio::time::sleep(RATES_EVERY) => {}
            }
        }
        f.versions.borrow_and_update();
        let Some(doc) = document(&f.manager) else {
            f.done = true;
            return gone_event();
        };
        if f.last.as_deref() != Some(doc.as_str()) {
            let retry = if f.last.is_none() {
                "retry: 2000\n"
            } else {
                ""
            };
            let text = format!("{retry}event: cluster\ndata: {doc}\n\n");
            f.last = Some(doc);
            return text;
        }
        if f.sent_at.elapsed() >= KEEP_ALIVE {
            return ": keep-alive\n\n".to_owned();
        }
    }
}

fn gone_event() -> String {
    "event: gone\ndata: {\"message\":\"this node stopped being a manager\"}\n\n".to_owned()
}

/// 503: only managers hold the cluster's whole state.
async fn not_a_manager(cluster: &ClusterAgent) -> Response<Body> {
    let message = match cluster.role_name().await {
        "none" => "this node is not in a swarm: the cluster page is served by its managers",
        _ => "this node is not a swarm manager: open the cluster page on a manager (`shoal node ls` lists them)",
    };
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({ "message": message }).to_string(),
    )
}

fn text(status: StatusCode, content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
