//! `POST /containers/create` naming one of the swarm's overlay networks
//! (`docker run --network NET`, in `HostConfig.NetworkMode` or
//! `NetworkingConfig.EndpointsConfig`): the node's dockerd does not know shoal's
//! overlays, so shoal answers. A network created without `--attachable` is refused with
//! Docker's own message; attaching a container that is not a task to an attachable
//! overlay is not carried out yet, and is refused saying so rather than left to
//! dockerd's "network not found". A create naming no overlay of the swarm goes to
//! dockerd unchanged.

use std::path::Path;

use http_body_util::Full;
use hyper::{http::request::Parts, Request, StatusCode};
use serde_json::Value;
use shoal_cluster::store::Network;

use super::reply::{self, Answer};
use super::{networks, proxy, Call};
use crate::api::server::Backend;

/// Whether this request creates a container.
pub fn is_create(method: &hyper::Method, path: &str) -> bool {
    method == hyper::Method::POST && super::route::unversioned(path) == "/containers/create"
}

/// The networks a container create names: its network mode (not Docker's own modes)
/// and its endpoints' keys, each once.
pub fn named_networks(body: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |n: &str| {
        if !n.is_empty() && !out.iter().any(|o| o == n) {
            out.push(n.to_owned());
        }
    };
    if let Some(mode) = body["HostConfig"]["NetworkMode"].as_str() {
        let builtin = matches!(mode, "default" | "bridge" | "host" | "none")
            || mode.starts_with("container:");
        if !builtin {
            add(mode);
        }
    }
    if let Some(endpoints) = body["NetworkingConfig"]["EndpointsConfig"].as_object() {
        for name in endpoints.keys() {
            add(name);
        }
    }
    out
}

/// Docker's refusal of a container on an overlay not created `--attachable`.
pub fn not_attachable_message(reference: &str, network: &str) -> String {
    format!(
        "Could not attach to network {reference}: rpc error: code = PermissionDenied \
         desc = network {network} not manually attachable"
    )
}

/// The refusal for a create naming one of `overlays`, if it does.
pub fn refusal(body: &Value, overlays: &[Network]) -> Option<(StatusCode, String)> {
    for reference in named_networks(body) {
        let Some(n) = networks::find(overlays, &reference) else {
            continue;
        };
        if !n.attachable {
            return Some((
                StatusCode::FORBIDDEN,
                not_attachable_message(&reference, &n.name),
            ));
        }
        return Some((
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "shoal does not attach containers that are not tasks to overlay network {} yet; \
                 run it as a service (docker service create --network {})",
                n.name, n.name
            ),
        ));
    }
    None
}

/// `docker network connect|disconnect` of a swarm overlay: refused as Docker refuses a
/// network not attachable, and otherwise as not carried out yet.
pub fn connect_refusal(n: &Network, reference: &str, verb: &str) -> (StatusCode, String) {
    if !n.attachable && verb == "connect" {
        return (
            StatusCode::FORBIDDEN,
            not_attachable_message(reference, &n.name),
        );
    }
    (
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "shoal does not {verb} containers that are not tasks to overlay network {} yet",
            n.name
        ),
    )
}

pub async fn create(backend: &dyn Backend, docker: &Path, parts: Parts, call: Call) -> Answer {
    let forward = |parts: Parts, call: Call| {
        proxy::forward(docker, Request::from_parts(parts, Full::new(call.body)))
    };
    let Ok(body) = serde_json::from_slice::<Value>(&call.body) else {
        // dockerd says what is wrong with it.
        return forward(parts, call).await;
    };
    if named_networks(&body).is_empty() {
        return forward(parts, call).await;
    }
    let overlays = networks::swarm_networks(backend).await;
    match refusal(&body, &overlays) {
        Some((status, message)) => reply::error(status, message),
        None => forward(parts, call).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn overlay(id: &str, name: &str, attachable: bool) -> Network {
        serde_json::from_value(json!({
            "id": id, "name": name, "driver": "overlay",
            "subnet": "10.9.0.0/24", "gateway": "10.9.0.1", "vni": 4100,
            "ingress": false, "attachable": attachable, "internal": false, "encrypted": false,
        }))
        .expect("a network")
    }

    #[test]
    fn the_networks_a_create_names() {
        let body = json!({
            "Image": "busybox",
            "HostConfig": {"NetworkMode": "app"},
            "NetworkingConfig": {"EndpointsConfig": {"app": {"Aliases": ["db"]}, "other": {}}}
        });
        assert_eq!(named_networks(&body), vec!["app", "other"]);
        for mode in ["default", "bridge", "host", "none", "container:abc", ""] {
            let body = json!({"HostConfig": {"NetworkMode": mode}});
            assert!(named_networks(&body).is_empty(), "{mode}");
        }
        assert!(named_networks(&json!({"Image": "busybox"})).is_empty());
    }

    #[test]
    fn overlays_refused_as_docker_does_and_others_passed() {
        let overlays = [
            overlay("aaaa1111", "plain", false),
            overlay("bbbb2222", "shared", true),
        ];
        let (status, message) =
            refusal(&json!({"HostConfig": {"NetworkMode": "plain"}}), &overlays).unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            message,
            "Could not attach to network plain: rpc error: code = PermissionDenied \
             desc = network plain not manually attachable"
        );
        // By ID prefix too, named as the client named it.
        let (status, message) = refusal(
            &json!({"NetworkingConfig": {"EndpointsConfig": {"aaaa": {}}}}),
            &overlays,
        )
        .unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(message.starts_with("Could not attach to network aaaa:"));
        assert!(message.ends_with("network plain not manually attachable"));
        let (status, message) =
            refusal(&json!({"HostConfig": {"NetworkMode": "shared"}}), &overlays).unwrap();
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
        assert!(message.contains("overlay network shared"), "{message}");
        assert!(refusal(
            &json!({"HostConfig": {"NetworkMode": "my_bridge"}}),
            &overlays
        )
        .is_none());
        assert!(refusal(&json!({"HostConfig": {"NetworkMode": "bridge"}}), &overlays).is_none());
        let (status, message) = connect_refusal(&overlays[0], "plain", "connect");
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(message.ends_with("network plain not manually attachable"));
        let (status, message) = connect_refusal(&overlays[1], "shared", "disconnect");
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
        assert!(message.contains("disconnect"), "{message}");
    }
}
