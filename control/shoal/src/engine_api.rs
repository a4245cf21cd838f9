//! The Docker Engine API on every node, so that the `docker` CLI, the SDKs and Swarm's
//! tools drive shoal as they are.
//!
//! ```text
//!  docker CLI / SDK ──▶ <run dir>/docker.sock (0660 root:docker)
//!     /_ping             dockerd's, with the `Swarm` header shoal's
//!     /info              dockerd's, with the `Swarm` section shoal's
//!     /swarm /nodes /services /tasks /secrets /configs
//!                        shoal's store, through the local API's requests, in Docker's
//!                        JSON shapes (`swarm.rs`); what is not served yet is refused
//!                        with 501 and says so
//!     /services/{id}/logs /tasks/{id}/logs
//!                        every node's lines (once or followed) in Docker's
//!                        multiplexed stream (`logs.rs`)
//!     POST /containers/create naming a swarm overlay
//!                        refused as Docker refuses a network not attachable; an
//!                        attachable one is refused as not carried out yet (`attach.rs`)
//!     everything else    the node's dockerd, unchanged (`proxy.rs`)
//! ```

// Each step's refusal is the HTTP answer itself, returned to the client once per
// request: its size on the stack does not matter here.
#![allow(clippy::result_large_err)]

mod attach;
mod containers;
mod logs;
mod membership;
mod networks;
mod proxy;
mod reply;
mod route;
pub(crate) mod service_spec;
mod swarm;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{
    body::Incoming, header::HeaderValue, server::conn::http1, service::service_fn, Method, Request,
};
use hyper_util::rt::TokioIo;
use tracing::{debug, info, warn};

use crate::api::server::{ApiSocket, Backend};
use reply::Answer;
use route::Route;

/// The Engine API socket's name beside the local API's socket.
pub const SOCKET_NAME: &str = "docker.sock";

/// Where the Engine API socket goes when not configured: beside the local API's socket
/// (`/run/shoal/docker.sock` by default).
pub fn default_socket(api_socket: &Path) -> PathBuf {
    api_socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(SOCKET_NAME)
}

/// The `docker` group's ID, if the host has one (its members may use the socket, as
/// they may use dockerd's).
pub fn docker_group() -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == "docker").then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// Serves the Engine API on `socket` until dropped; each connection on a task of its
/// own.
/// `ready`: what the node's dataplane has made ready (a start of a container attached
/// to an overlay answers once its network is); None: no dataplane follows the cluster.
pub async fn serve(
    socket: ApiSocket,
    backend: Arc<dyn Backend>,
    docker: PathBuf,
    ready: Option<shoal_dataplane::reconcile::ready::ReadinessWatch>,
) {
    info!(socket = %socket.path().display(), "Engine API listening");
    let docker: Arc<Path> = docker.into();
    loop {
        let stream = match socket.listener().accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "accepting an Engine API connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let backend = backend.clone();
        let docker = docker.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let backend = backend.clone();
                let docker = docker.clone();
                let ready = ready.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        handle(&*backend, &docker, ready, request).await,
                    )
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
            {
                debug!(error = %e, "Engine API connection ended");
            }
        });
    }
}

/// Largest request body shoal reads itself (a service spec is a few KiB); larger ones
/// are refused before parsing.
const MAX_BODY: usize = 1 << 20;

/// A request to shoal's part of the API, its body read.
pub struct Call {
    pub method: Method,
    pub rest: Vec<String>,
    pub query: BTreeMap<String, String>,
    /// `X-Registry-Auth`, as sent (base64 JSON).
    pub registry_auth: Option<String>,
    pub body: Bytes,
}

impl Call {
    /// The `?version=N` an update names (the version of the `what` it was made from):
    /// Docker requires it, and the update is refused if the object has moved on.
    pub fn required_version(&self, what: &str) -> Result<u64, Answer> {
        self.query
            .get("version")
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                reply::error(
                    hyper::StatusCode::BAD_REQUEST,
                    format!("the version of the {what} the update was made from is required (?version=N)"),
                )
            })
    }

    async fn read(
        parts: &hyper::http::request::Parts,
        body: Incoming,
        rest: Vec<String>,
    ) -> Result<Call, Answer> {
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    reply::error(
                        hyper::StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body larger than {MAX_BODY} bytes"),
                    )
                } else {
                    reply::error(
                        hyper::StatusCode::BAD_REQUEST,
                        format!("reading the request: {e}"),
                    )
                }
            })?
            .to_bytes();
        Ok(Call {
            method: parts.method.clone(),
            rest,
            query: route::query(parts.uri.query()),
            registry_auth: parts
                .headers
                .get("X-Registry-Auth")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body,
        })
    }
}

async fn handle(
    backend: &dyn Backend,
    docker: &Path,
    ready: Option<shoal_dataplane::reconcile::ready::ReadinessWatch>,
    request: Request<Incoming>,
) -> Answer {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let answer = match route::route(&path) {
        Route::Engine => {
            if let Some((want, rest)) = containers::is_task_filter(&path, request.uri().query()) {
                containers::list(docker, request, want, rest).await
            } else if attach::is_create(&method, &path) {
                let (parts, body) = request.into_parts();
                match Call::read(&parts, body, Vec::new()).await {
                    Ok(call) => attach::create(backend, docker, parts, call).await,
                    Err(a) => a,
                }
            } else if let (Some(container), Some(ready)) = (attach::is_start(&method, &path), ready)
            {
                let container = container.to_owned();
                let answer = proxy::forward(docker, request).await;
                if answer.status() == hyper::StatusCode::NO_CONTENT {
                    attach::wait_attached(docker, &container, ready).await;
                }
                answer
            } else {
                return proxy::forward(docker, request).await;
            }
        }
        Route::Ping => {
            let role = swarm::local_role(backend).await;
            let mut answer = proxy::forward(docker, request).await;
            if let Ok((swarm, is_manager)) = role {
                answer.headers_mut().insert(
                    "Swarm",
                    HeaderValue::from_static(swarm::ping_header(&swarm, is_manager)),
                );
            }
            answer
        }
        Route::Info => match (
            swarm::info(backend).await,
            proxy::engine_json(docker, request).await,
        ) {
            (Ok(view), Ok(mut engine)) => {
                engine["Swarm"] = swarm::info_section(&view);
                if view.is_manager {
                    engine["Swarm"]["Cluster"]["Spec"]["EncryptionConfig"] =
                        serde_json::json!({"AutoLockManagers": swarm::autolocked(backend).await});
                }
                reply::json(hyper::StatusCode::OK, &engine)
            }
            (Err(a), _) | (_, Err(a)) => a,
        },
        Route::Swarm { kind, rest } => {
            let (parts, body) = request.into_parts();
            match Call::read(&parts, body, rest).await {
                Ok(call) => swarm::answer(backend, kind, &call).await,
                Err(a) => a,
            }
        }
        Route::Networks { rest } => {
            let (parts, body) = request.into_parts();
            match Call::read(&parts, body, rest).await {
                Ok(call) => networks::answer(backend, docker, parts, call).await,
                Err(a) => a,
            }
        }
    };
    let status = answer.status();
    if status.is_success() {
        debug!(%method, path, %status, "Engine API request");
    } else {
        info!(%method, path, %status, "Engine API request refused");
    }
    answer
}
