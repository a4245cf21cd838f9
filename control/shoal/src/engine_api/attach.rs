//! `POST /containers/create` naming one of the swarm's overlay networks
//! (`docker run --network NET`, in `HostConfig.NetworkMode` or
//! `NetworkingConfig.EndpointsConfig`): the node's dockerd does not know shoal's
//! overlays, so shoal answers. A network created without `--attachable` is refused with
//! Docker's own message. On an attachable one, the container is created on dockerd
//! without a network (`none`), with the network's gateway (the embedded DNS) as its first
//! resolver, and labelled with the networks and aliases it asked for
//! ([`shoal_orchestrator::attach::LABEL_ATTACH`]); from there on it is declared state:
//! the node's executor declares its running labelled containers to the managers, which
//! give each an address, and the dataplane plumbs it as a task's sandbox. A create
//! naming no overlay of the swarm goes to dockerd unchanged. The networks are asked of
//! the leader, so a worker's socket takes `--network` too.

use std::path::Path;

use http_body_util::Full;
use hyper::{http::request::Parts, Request, StatusCode};
use serde_json::Value;
use shoal_cluster::store::Network;
use shoal_orchestrator::attach::{label_value, AttachLabel, LABEL_ATTACH};

use super::reply::{self, Answer};
use super::{networks, proxy, Call};
use crate::api::server::Backend;
use crate::api::{Reply as ApiReply, Request as ApiRequest};

/// Whether this request creates a container.
pub fn is_create(method: &hyper::Method, path: &str) -> bool {
    method == hyper::Method::POST && super::route::unversioned(path) == "/containers/create"
}

/// The container a `POST /containers/{id}/start` starts.
pub fn is_start<'a>(method: &hyper::Method, path: &'a str) -> Option<&'a str> {
    if method != hyper::Method::POST {
        return None;
    }
    let rest = super::route::unversioned(path).strip_prefix("/containers/")?;
    let (container, verb) = rest.split_once('/')?;
    (verb == "start" && !container.is_empty()).then_some(container)
}

/// Longest a start waits for the container's overlay interface.
const ATTACH_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// After dockerd started `container`: if it asked for overlays, waits (at most
/// [`ATTACH_WAIT`]) until the dataplane has attached its namespace (overlay, VIP maps,
/// egress), so `docker run -d` returns with the container on its networks as Swarm's
/// does. The start stands either way: a slow attach is logged, not refused.
pub async fn wait_attached(
    docker: &Path,
    container: &str,
    mut ready: shoal_dataplane::reconcile::ready::ReadinessWatch,
) {
    let inspect = Request::get(format!("/containers/{container}/json"))
        .header(hyper::header::HOST, "docker")
        .body(http_body_util::Empty::<bytes::Bytes>::new());
    let Ok(inspect) = inspect else {
        return;
    };
    let Ok(info) = proxy::engine_json(docker, inspect).await else {
        return;
    };
    let (Some(id), true) = (
        info["Id"].as_str(),
        info["Config"]["Labels"][LABEL_ATTACH].is_string(),
    ) else {
        return;
    };
    let done = |r: &shoal_dataplane::reconcile::ready::Readiness| {
        r.attached.contains_key(id)
            && r.vip_scoped.contains_key(id)
            && r.egress_attached.contains_key(id)
    };
    if tokio::time::timeout(ATTACH_WAIT, ready.wait_for(done))
        .await
        .is_err()
    {
        tracing::warn!(container = %id, "started, but not on its overlay networks yet after 15 s");
    }
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

/// What a create naming swarm overlays becomes: refused, or the body dockerd gets.
#[derive(Debug, PartialEq)]
pub enum Rewrite {
    /// Names no overlay of the swarm: dockerd's, unchanged.
    Unchanged,
    Refused(StatusCode, String),
    /// The body to create on dockerd.
    Body(Value),
}

/// The endpoint settings shoal carries out on an overlay: aliases. Anything else a
/// client sets there is refused naming it (`--ip`, `--link`, `--mac-address`, ...).
fn endpoint_aliases(reference: &str, endpoint: &Value) -> Result<Vec<String>, String> {
    let Some(fields) = endpoint.as_object() else {
        return Ok(Vec::new());
    };
    let mut aliases = Vec::new();
    for (key, value) in fields {
        let empty = match value {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::Object(o) => o.values().all(|v| {
                v.is_null()
                    || v.as_str().is_some_and(str::is_empty)
                    || v.as_array().is_some_and(Vec::is_empty)
            }),
        };
        match key.as_str() {
            "Aliases" => {
                for a in value.as_array().into_iter().flatten() {
                    let Some(a) = a.as_str() else {
                        return Err(format!("network {reference}: an alias is not a string"));
                    };
                    if !shoal_cluster::store::attachment_name_ok(a) {
                        return Err(format!(
                            "network {reference}: invalid alias {a:?} (letters, digits, '_', '-' and '.')"
                        ));
                    }
                    if !aliases.iter().any(|x| x == a) {
                        aliases.push(a.to_owned());
                    }
                }
            }
            // Set by clients with nothing in them, or Docker's own read-only fields.
            "NetworkID"
            | "EndpointID"
            | "Gateway"
            | "IPAddress"
            | "IPPrefixLen"
            | "IPv6Gateway"
            | "GlobalIPv6Address"
            | "GlobalIPv6PrefixLen"
            | "DNSNames" => {}
            _ if empty => {}
            other => {
                return Err(format!(
                    "shoal does not carry out the endpoint setting {other} on overlay network \
                     {reference}; only aliases (--network-alias) are"
                ))
            }
        }
    }
    Ok(aliases)
}

/// What `body` becomes, given the swarm's `overlays`.
pub fn rewrite(body: &Value, overlays: &[Network]) -> Rewrite {
    let named = named_networks(body);
    let mut attach: Vec<(&Network, String)> = Vec::new();
    let mut others = Vec::new();
    for reference in &named {
        match networks::find(overlays, reference) {
            Some(n) if !n.attachable => {
                return Rewrite::Refused(
                    StatusCode::FORBIDDEN,
                    not_attachable_message(reference, &n.name),
                )
            }
            Some(n) => {
                if !attach.iter().any(|(a, _)| a.id == n.id) {
                    attach.push((n, reference.clone()));
                }
            }
            None => others.push(reference.clone()),
        }
    }
    let Some((first, _)) = attach.first() else {
        return Rewrite::Unchanged;
    };
    if let Some(other) = others.first() {
        return Rewrite::Refused(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "a container on swarm overlay network {} cannot also be on dockerd's network \
                 {other}: shoal plumbs its network namespace itself",
                first.name
            ),
        );
    }
    if first.ingress || first.gateway.is_none() {
        return Rewrite::Refused(
            StatusCode::FORBIDDEN,
            not_attachable_message(&first.name, &first.name),
        );
    }
    let mut labels = Vec::new();
    for (n, reference) in &attach {
        let endpoint = &body["NetworkingConfig"]["EndpointsConfig"][reference.as_str()];
        let aliases = match endpoint_aliases(reference, endpoint) {
            Ok(a) => a,
            Err(message) => return Rewrite::Refused(StatusCode::NOT_IMPLEMENTED, message),
        };
        labels.push(AttachLabel {
            network: n.id.clone(),
            aliases,
        });
    }
    let mut out = body.clone();
    let Some(obj) = out.as_object_mut() else {
        return Rewrite::Unchanged;
    };
    let host = obj
        .entry("HostConfig")
        .or_insert_with(|| Value::Object(Default::default()));
    if !host.is_object() {
        *host = Value::Object(Default::default());
    }
    host["NetworkMode"] = Value::String("none".into());
    // The embedded DNS listens on the first network's gateway; servers the client
    // named come after it.
    let gateway = first.gateway.expect("checked above").to_string();
    let mut dns = vec![Value::String(gateway.clone())];
    for d in host["Dns"].as_array().into_iter().flatten() {
        if d.as_str() != Some(gateway.as_str()) {
            dns.push(d.clone());
        }
    }
    host["Dns"] = Value::Array(dns);
    obj.remove("NetworkingConfig");
    let labels_value = obj
        .entry("Labels")
        .or_insert_with(|| Value::Object(Default::default()));
    if !labels_value.is_object() {
        *labels_value = Value::Object(Default::default());
    }
    labels_value[LABEL_ATTACH] = Value::String(label_value(&labels));
    Rewrite::Body(out)
}

/// The swarm's networks, from the leader (on workers too); none outside a swarm.
async fn overlays(backend: &dyn Backend) -> Vec<Network> {
    match backend.handle(ApiRequest::SwarmNetworks).await {
        Ok(ApiReply::Networks { networks }) => networks,
        _ => Vec::new(),
    }
}

/// `docker network connect|disconnect` of a swarm overlay: refused as Docker refuses a
/// network not attachable, and otherwise refused saying how a container does get on
/// it (a running container's labels cannot change, and they are what declares it).
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
            "shoal does not {verb} existing containers to overlay network {}: a container \
             is attached when it is created (docker run --network {}) and detached when it \
             stops or is removed",
            n.name, n.name
        ),
    )
}

pub async fn create(backend: &dyn Backend, docker: &Path, mut parts: Parts, call: Call) -> Answer {
    let forward = |parts: Parts, body: bytes::Bytes| {
        proxy::forward(docker, Request::from_parts(parts, Full::new(body)))
    };
    let Ok(body) = serde_json::from_slice::<Value>(&call.body) else {
        // dockerd says what is wrong with it.
        return forward(parts, call.body).await;
    };
    if named_networks(&body).is_empty() {
        return forward(parts, call.body).await;
    }
    match rewrite(&body, &overlays(backend).await) {
        Rewrite::Unchanged => forward(parts, call.body).await,
        Rewrite::Refused(status, message) => reply::error(status, message),
        Rewrite::Body(body) => {
            let body = bytes::Bytes::from(serde_json::to_vec(&body).expect("JSON serializes"));
            parts.headers.insert(
                hyper::header::CONTENT_LENGTH,
                hyper::header::HeaderValue::from(body.len()),
            );
            parts.headers.remove(hyper::header::TRANSFER_ENCODING);
            forward(parts, body).await
        }
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
    fn starts_are_told_apart() {
        use hyper::Method;
        assert_eq!(
            is_start(&Method::POST, "/v1.41/containers/abc/start"),
            Some("abc")
        );
        assert_eq!(is_start(&Method::POST, "/containers/c1/start"), Some("c1"));
        assert_eq!(is_start(&Method::POST, "/containers/c1/stop"), None);
        assert_eq!(is_start(&Method::GET, "/containers/c1/start"), None);
        assert_eq!(is_start(&Method::POST, "/containers//start"), None);
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
    fn overlays_refused_as_docker_does_rewritten_when_attachable_and_others_passed() {
        let overlays = [
            overlay("aaaa1111", "plain", false),
            overlay("bbbb2222", "shared", true),
        ];
        let refused = |body: Value| match rewrite(&body, &overlays) {
            Rewrite::Refused(status, message) => (status, message),
            other => panic!("not refused: {other:?}"),
        };
        let (status, message) = refused(json!({"HostConfig": {"NetworkMode": "plain"}}));
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            message,
            "Could not attach to network plain: rpc error: code = PermissionDenied \
             desc = network plain not manually attachable"
        );
        // By ID prefix too, named as the client named it.
        let (status, message) =
            refused(json!({"NetworkingConfig": {"EndpointsConfig": {"aaaa": {}}}}));
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(message.starts_with("Could not attach to network aaaa:"));
        assert!(message.ends_with("network plain not manually attachable"));

        // Attachable: no network on dockerd, the gateway first as resolver, the label.
        let body = json!({
            "Image": "alpine",
            "Labels": {"mine": "1"},
            "HostConfig": {"NetworkMode": "shared", "Dns": ["9.9.9.9"]},
            "NetworkingConfig": {"EndpointsConfig": {"shared": {
                "Aliases": ["db", "db"], "IPAMConfig": null, "Links": null, "MacAddress": "",
                "GwPriority": 0, "DriverOpts": {}
            }}}
        });
        let Rewrite::Body(out) = rewrite(&body, &overlays) else {
            panic!("not rewritten");
        };
        assert_eq!(out["HostConfig"]["NetworkMode"], "none");
        assert_eq!(out["HostConfig"]["Dns"], json!(["10.9.0.1", "9.9.9.9"]));
        assert!(out.get("NetworkingConfig").is_none());
        assert_eq!(out["Labels"]["mine"], "1");
        let label: Vec<AttachLabel> =
            serde_json::from_str(out["Labels"][LABEL_ATTACH].as_str().unwrap()).unwrap();
        assert_eq!(
            label,
            vec![AttachLabel {
                network: "bbbb2222".into(),
                aliases: vec!["db".into()]
            }]
        );
        // What is not carried out is refused naming it.
        let (status, message) = refused(json!({
            "HostConfig": {"NetworkMode": "shared"},
            "NetworkingConfig": {"EndpointsConfig": {"shared": {
                "IPAMConfig": {"IPv4Address": "10.9.0.50"}
            }}}
        }));
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
        assert!(message.contains("IPAMConfig"), "{message}");
        let (status, message) = refused(json!({
            "HostConfig": {"NetworkMode": "shared"},
            "NetworkingConfig": {"EndpointsConfig": {"shared": {}, "my_bridge": {}}}
        }));
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
        assert!(message.contains("my_bridge"), "{message}");

        for unchanged in [
            json!({"HostConfig": {"NetworkMode": "my_bridge"}}),
            json!({"HostConfig": {"NetworkMode": "bridge"}}),
        ] {
            assert_eq!(rewrite(&unchanged, &overlays), Rewrite::Unchanged);
        }
        let (status, message) = connect_refusal(&overlays[0], "plain", "connect");
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(message.ends_with("network plain not manually attachable"));
        let (status, message) = connect_refusal(&overlays[1], "shared", "disconnect");
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
        assert!(message.contains("disconnect"), "{message}");
    }
}
