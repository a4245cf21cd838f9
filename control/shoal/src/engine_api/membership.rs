//! Joining and leaving the swarm, and changing nodes, on the Engine API: `POST
//! /swarm/init|join|leave|unlock`, `GET /swarm/unlockkey`, `POST /nodes/ID/update`,
//! `DELETE /nodes/ID`, through the same requests as `shoal swarm ...` and `shoal node
//! ...`. What shoal does not carry out (a new cluster forced from a dead one, swarm-wide
//! settings in `Spec`) is refused naming it.

use std::collections::BTreeMap;

use hyper::StatusCode;
use serde_json::{json, Value};
use shoal_cluster::store::Availability;

use super::reply::{self, Answer};
use super::swarm::write;
use super::Call;
use crate::api::{NodeRole, NodeView, Reply, Request, Secret};

fn body(call: &Call) -> Result<Value, Answer> {
    if call.body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&call.body)
        .map_err(|e| reply::error(StatusCode::BAD_REQUEST, format!("malformed request: {e}")))
}

fn text(v: &Value, key: &str) -> Option<String> {
    v[key].as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

fn bad(message: impl Into<String>) -> Answer {
    reply::error(StatusCode::BAD_REQUEST, message)
}

/// Only `active`: a node that joins drained or paused is not carried out yet.
fn check_availability(v: &Value) -> Result<(), Answer> {
    match v["Availability"].as_str() {
        None | Some("") | Some("active") => Ok(()),
        Some(other) => Err(bad(format!(
            "joining with availability {other} is not supported by shoal: join, then `docker node update --availability {other}`"
        ))),
    }
}

/// Swarm-wide settings shoal keeps fixed: refused when set, naming them.
fn check_no_spec(v: &Value) -> Result<(), Answer> {
    let set: Vec<String> = v["Spec"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| *k != "Name" && !unset(v))
                .map(|(k, _)| format!("Spec.{k}"))
                .collect()
        })
        .unwrap_or_default();
    if set.is_empty() {
        Ok(())
    } else {
        Err(bad(format!(
            "not supported by shoal yet: {}",
            set.join(", ")
        )))
    }
}

fn unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(unset),
    }
}

pub async fn init(
    backend: &dyn crate::api::server::Backend,
    call: &Call,
) -> Result<Answer, Answer> {
    let v = body(call)?;
    check_availability(&v)?;
    check_no_spec(&v)?;
    let default_addr_pool = match v["DefaultAddrPool"].as_array() {
        None => Vec::new(),
        Some(list) => list
            .iter()
            .map(|p| {
                p.as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad(format!("DefaultAddrPool: {p} is not an IPv4 subnet")))
            })
            .collect::<Result<_, _>>()?,
    };
    let mask = v["SubnetSize"].as_u64().filter(|m| *m > 0);
    let request = Request::SwarmInit {
        advertise_addr: text(&v, "AdvertiseAddr"),
        listen_addr: text(&v, "ListenAddr"),
        data_path_addr: text(&v, "DataPathAddr"),
        data_path_port: v["DataPathPort"]
            .as_u64()
            .filter(|p| *p > 0)
            .map(|p| u16::try_from(p).map_err(|_| bad("DataPathPort: not a port")))
            .transpose()?,
        default_addr_pool,
        default_addr_pool_mask_length: mask
            .map(|m| u8::try_from(m).map_err(|_| bad("SubnetSize: not a prefix length")))
            .transpose()?,
        autolock: v["AutoLockManagers"].as_bool().unwrap_or(false),
        force_new_cluster: v["ForceNewCluster"].as_bool().unwrap_or(false),
    };
    match write(backend, request).await? {
        Reply::SwarmInit { node_id, .. } => Ok(reply::json(StatusCode::OK, &json!(node_id))),
        other => Err(reply::unexpected(&other)),
    }
}

pub async fn join(
    backend: &dyn crate::api::server::Backend,
    call: &Call,
) -> Result<Answer, Answer> {
    let v = body(call)?;
    check_availability(&v)?;
    let remote = v["RemoteAddrs"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .ok_or_else(|| bad("RemoteAddrs: a manager's address is required"))?
        .to_owned();
    let token = text(&v, "JoinToken").ok_or_else(|| bad("JoinToken is required"))?;
    let request = Request::SwarmJoin {
        token: Secret::new(token),
        remote,
        advertise_addr: text(&v, "AdvertiseAddr"),
        listen_addr: text(&v, "ListenAddr"),
        data_path_addr: text(&v, "DataPathAddr"),
    };
    match write(backend, request).await? {
        Reply::SwarmJoin { .. } => Ok(reply::empty(StatusCode::OK)),
        other => Err(reply::unexpected(&other)),
    }
}

pub async fn leave(
    backend: &dyn crate::api::server::Backend,
    call: &Call,
) -> Result<Answer, Answer> {
    let force = call
        .query
        .get("force")
        .is_some_and(|f| f == "1" || f == "true");
    match write(backend, Request::SwarmLeave { force }).await? {
        Reply::SwarmLeave => Ok(reply::empty(StatusCode::OK)),
        other => Err(reply::unexpected(&other)),
    }
}

pub async fn unlock(
    backend: &dyn crate::api::server::Backend,
    call: &Call,
) -> Result<Answer, Answer> {
    let v = body(call)?;
    let key = text(&v, "UnlockKey").ok_or_else(|| bad("UnlockKey is required"))?;
    match write(
        backend,
        Request::SwarmUnlock {
            key: Secret::new(key),
        },
    )
    .await?
    {
        Reply::SwarmUnlocked => Ok(reply::empty(StatusCode::OK)),
        other => Err(reply::unexpected(&other)),
    }
}

/// `POST /swarm/update`: Docker's whole swarm `Spec` as `GET /swarm` gave it, with what
/// shoal can change: autolock (`EncryptionConfig.AutoLockManagers`), and the query's
/// `rotateWorkerToken`, `rotateManagerToken`, `rotateManagerUnlockKey`. Any other
/// setting given is refused naming it (shoal keeps them fixed). Only from the swarm's
/// current version (`?version=N`, as `GET /swarm` gave it; `current` is the store's).
pub async fn update(
    backend: &dyn crate::api::server::Backend,
    call: &Call,
    current: u64,
    autolocked: bool,
) -> Result<Answer, Answer> {
    let version = call.required_version("swarm")?;
    if version != current {
        return Err(reply::error(
            StatusCode::CONFLICT,
            format!(
                "update out of sequence: the swarm is at version {current}, the update was made from version {version}"
            ),
        ));
    }
    let v = body(call)?;
    let mut spec = v.clone();
    if let Some(o) = spec.as_object_mut() {
        o.remove("EncryptionConfig");
        o.remove("Labels");
    }
    check_no_spec(&json!({ "Spec": spec }))?;
    let on = |key: &str| call.query.get(key).is_some_and(|f| f == "1" || f == "true");
    if let Some(want) = v["EncryptionConfig"]["AutoLockManagers"].as_bool() {
        if want != autolocked {
            write(
                backend,
                Request::SwarmUpdate {
                    autolock: Some(want),
                },
            )
            .await?;
        }
    }
    for (key, role) in [
        ("rotateWorkerToken", NodeRole::Worker),
        ("rotateManagerToken", NodeRole::Manager),
    ] {
        if on(key) {
            write(backend, Request::JoinToken { role, rotate: true }).await?;
        }
    }
    if on("rotateManagerUnlockKey") {
        write(backend, Request::UnlockKey { rotate: true }).await?;
    }
    Ok(reply::empty(StatusCode::OK))
}

pub async fn unlock_key(backend: &dyn crate::api::server::Backend) -> Result<Answer, Answer> {
    match write(backend, Request::UnlockKey { rotate: false }).await? {
        Reply::UnlockKey { key, .. } => Ok(reply::json(
            StatusCode::OK,
            &json!({"UnlockKey": key.expose()}),
        )),
        other => Err(reply::unexpected(&other)),
    }
}

/// `POST /nodes/ID/update?version=N`: Docker's whole `NodeSpec`, made of shoal's node
/// changes (role, availability, labels), only if the node is still at `version`.
pub async fn node_update(
    backend: &dyn crate::api::server::Backend,
    node: &NodeView,
    call: &Call,
) -> Result<Answer, Answer> {
    let version = call.required_version("node")?;
    if version != node.version {
        return Err(reply::error(
            StatusCode::CONFLICT,
            format!(
                "update out of sequence: node {} is at version {}, the update was made from version {version}",
                node.hostname, node.version
            ),
        ));
    }
    let v = body(call)?;
    if let Some(name) = text(&v, "Name") {
        if name != node.hostname {
            return Err(bad("Spec.Name: nodes are named by their hostname in shoal"));
        }
    }
    let labels: BTreeMap<String, String> = match &v["Labels"] {
        Value::Null => BTreeMap::new(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_owned()))
                    .ok_or_else(|| bad(format!("Spec.Labels.{k}: expected a string")))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad("Spec.Labels: expected an object")),
    };
    let availability = match v["Availability"].as_str() {
        None | Some("") => node.availability,
        Some("active") => Availability::Active,
        Some("pause") => Availability::Pause,
        Some("drain") => Availability::Drain,
        Some(other) => return Err(bad(format!("Spec.Availability: unknown {other:?}"))),
    };
    let role = match v["Role"].as_str() {
        None | Some("") => node.role,
        Some("worker") => NodeRole::Worker,
        Some("manager") => NodeRole::Manager,
        Some(other) => return Err(bad(format!("Spec.Role: unknown {other:?}"))),
    };
    let label_rm: Vec<String> = node
        .labels
        .keys()
        .filter(|k| !labels.contains_key(*k))
        .cloned()
        .collect();
    let label_add: BTreeMap<String, String> = labels
        .into_iter()
        .filter(|(k, v)| node.labels.get(k) != Some(v))
        .collect();
    if availability != node.availability || !label_add.is_empty() || !label_rm.is_empty() {
        write(
            backend,
            Request::NodeUpdate {
                node: node.id.clone(),
                availability: (availability != node.availability).then_some(availability),
                label_add,
                label_rm,
                rotate_wireguard_key: false,
            },
        )
        .await?;
    }
    if role != node.role {
        let nodes = vec![node.id.clone()];
        let request = match role {
            NodeRole::Manager => Request::NodePromote { nodes },
            NodeRole::Worker => Request::NodeDemote { nodes },
        };
        write(backend, request).await?;
    }
    Ok(reply::empty(StatusCode::OK))
}

pub async fn node_rm(
    backend: &dyn crate::api::server::Backend,
    reference: &str,
    call: &Call,
) -> Result<Answer, Answer> {
    let force = call
        .query
        .get("force")
        .is_some_and(|f| f == "1" || f == "true");
    write(
        backend,
        Request::NodeRm {
            nodes: vec![reference.to_owned()],
            force,
        },
    )
    .await?;
    Ok(reply::empty(StatusCode::OK))
}
