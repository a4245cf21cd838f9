//! `/networks`: the swarm's overlay networks are shoal's (listed beside the engine's
//! own, created, inspected and removed through the agent); every other network is the
//! node's dockerd's, passed through.

use std::collections::BTreeMap;
use std::path::Path;

use http_body_util::{Empty, Full};
use hyper::{http::request::Parts, Method, Request, StatusCode};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use shoal_cluster::store::Network;

use super::reply::{self, Answer};
use super::route::filters;
use super::swarm::{manager_only, not_served, write};
use super::{proxy, Call};
use crate::api::{server::Backend, Reply, Request as ApiRequest};
use crate::cli::network::network_value;
use crate::filters::network_matches;

pub async fn answer(backend: &dyn Backend, docker: &Path, parts: Parts, call: Call) -> Answer {
    match answer_or_refuse(backend, docker, parts, call).await {
        Ok(a) | Err(a) => a,
    }
}

/// The swarm's networks when this node is a manager (none on other nodes: their
/// engine answers alone, as a worker's dockerd does for networks it has no task on).
pub(super) async fn swarm_networks(backend: &dyn Backend) -> Vec<Network> {
    if manager_only(backend).await.is_err() {
        return Vec::new();
    }
    match backend.handle(ApiRequest::NetworkLs).await {
        Ok(Reply::Networks { networks }) => networks,
        _ => Vec::new(),
    }
}

/// The one network `reference` names: its ID, its name, or a unique ID prefix.
pub(super) fn find<'a>(networks: &'a [Network], reference: &str) -> Option<&'a Network> {
    networks
        .iter()
        .find(|n| n.id == reference || n.name == reference)
        .or_else(|| {
            let mut by_prefix = networks.iter().filter(|n| n.id.starts_with(reference));
            match (by_prefix.next(), by_prefix.next()) {
                (Some(n), None) => Some(n),
                _ => None,
            }
        })
}

/// A network as `GET /networks` shows it (Docker's `NetworkResource`).
fn value(n: &Network) -> Value {
    let mut v = network_value(n);
    v["EnableIPv6"] = json!(false);
    v["ConfigOnly"] = json!(false);
    v["ConfigFrom"] = json!({"Network": ""});
    v["Containers"] = json!({});
    v
}

async fn answer_or_refuse(
    backend: &dyn Backend,
    docker: &Path,
    parts: Parts,
    call: Call,
) -> Result<Answer, Answer> {
    let rest: Vec<&str> = call.rest.iter().map(String::as_str).collect();
    let passthrough =
        |parts: Parts, call: &Call| Request::from_parts(parts, Full::new(call.body.clone()));
    match (&call.method, rest.as_slice()) {
        (&Method::GET, []) => {
            let f = filters(
                &call.query,
                &["name", "id", "driver", "scope", "type", "label", "dangling"],
            )
            .map_err(|e| reply::error(StatusCode::BAD_REQUEST, e))?;
            let mut engine = proxy::engine_json(
                docker,
                Request::from_parts(parts, Empty::<bytes::Bytes>::new()),
            )
            .await?;
            let mine: Vec<Value> = swarm_networks(backend)
                .await
                .iter()
                .filter(|n| !f.contains_key("dangling") && network_matches(n, &f))
                .map(value)
                .collect();
            if let Some(list) = engine.as_array_mut() {
                list.extend(mine);
            }
            Ok(reply::json(StatusCode::OK, &engine))
        }
        (&Method::GET, [reference]) => {
            let networks = swarm_networks(backend).await;
            match find(&networks, reference) {
                Some(n) => Ok(reply::json(StatusCode::OK, &value(n))),
                None => Ok(proxy::forward(docker, passthrough(parts, &call)).await),
            }
        }
        (&Method::POST, ["create"]) => {
            let body: Value = serde_json::from_slice(&call.body).map_err(|e| {
                reply::error(StatusCode::BAD_REQUEST, format!("malformed network: {e}"))
            })?;
            if body["Driver"].as_str() != Some("overlay") {
                return Ok(proxy::forward(docker, passthrough(parts, &call)).await);
            }
            manager_only(backend).await?;
            let request =
                overlay_create(&body).map_err(|e| reply::error(StatusCode::BAD_REQUEST, e))?;
            match write(backend, request).await? {
                Reply::NetworkCreated { id } => Ok(reply::json(
                    StatusCode::CREATED,
                    &json!({"Id": id, "Warning": ""}),
                )),
                other => Err(reply::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("unexpected answer from the agent: {other:?}"),
                )),
            }
        }
        (&Method::DELETE, [reference]) => {
            let networks = swarm_networks(backend).await;
            match find(&networks, reference) {
                Some(n) => {
                    write(
                        backend,
                        ApiRequest::NetworkRm {
                            networks: vec![n.id.clone()],
                        },
                    )
                    .await?;
                    Ok(reply::empty(StatusCode::NO_CONTENT))
                }
                None => Ok(proxy::forward(docker, passthrough(parts, &call)).await),
            }
        }
        (&Method::POST, [reference, verb @ ("connect" | "disconnect")]) => {
            let networks = swarm_networks(backend).await;
            match find(&networks, reference) {
                Some(n) => {
                    let (status, message) = super::attach::connect_refusal(n, reference, verb);
                    Err(reply::error(status, message))
                }
                None => Ok(proxy::forward(docker, passthrough(parts, &call)).await),
            }
        }
        (method, [reference, ..]) => {
            let networks = swarm_networks(backend).await;
            if find(&networks, reference).is_some() {
                return Err(not_served(method, "networks", &rest));
            }
            Ok(proxy::forward(docker, passthrough(parts, &call)).await)
        }
        _ => Ok(proxy::forward(docker, passthrough(parts, &call)).await),
    }
}

/// `POST /networks/create` with the overlay driver as shoal's request; what shoal's
/// overlays do not do is refused naming it.
fn overlay_create(body: &Value) -> Result<ApiRequest, String> {
    let name = body["Name"].as_str().unwrap_or("").to_owned();
    if name.is_empty() {
        return Err("a network needs a name".into());
    }
    for key in ["Internal", "EnableIPv6", "Ingress", "ConfigOnly"] {
        if body[key].as_bool() == Some(true) {
            return Err(format!("{key} overlay networks are not supported by shoal"));
        }
    }
    if body["ConfigFrom"]["Network"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
    {
        return Err("ConfigFrom is not supported by shoal".into());
    }
    let strings = |v: &Value| -> Result<BTreeMap<String, String>, String> {
        match v {
            Value::Null => Ok(BTreeMap::new()),
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|s| (k.clone(), s.to_owned()))
                        .ok_or_else(|| format!("{k}: expected a string"))
                })
                .collect(),
            _ => Err("expected an object of strings".into()),
        }
    };
    let ipam = &body["IPAM"];
    if ipam["Driver"]
        .as_str()
        .is_some_and(|d| !d.is_empty() && d != "default")
    {
        return Err(format!(
            "IPAM driver {} is not supported by shoal",
            ipam["Driver"]
        ));
    }
    let configs = ipam["Config"].as_array().cloned().unwrap_or_default();
    if configs.len() > 1 {
        return Err("shoal's overlay networks have one subnet".into());
    }
    let (mut subnet, mut gateway) = (None, None);
    if let Some(c) = configs.first() {
        if let Some(s) = c["Subnet"].as_str().filter(|s| !s.is_empty()) {
            subnet = Some(
                s.parse::<Ipv4Net>()
                    .map_err(|_| format!("invalid subnet {s}: shoal's overlays are IPv4"))?,
            );
        }
        if let Some(g) = c["Gateway"].as_str().filter(|s| !s.is_empty()) {
            gateway = Some(g.parse().map_err(|_| format!("invalid gateway {g}"))?);
        }
        if c["IPRange"].as_str().is_some_and(|s| !s.is_empty()) {
            return Err("IPAM IPRange is not supported by shoal".into());
        }
    }
    Ok(ApiRequest::NetworkCreate {
        name,
        driver: Some("overlay".into()),
        subnet,
        gateway,
        attachable: body["Attachable"].as_bool().unwrap_or(false),
        options: strings(&body["Options"])?,
        labels: strings(&body["Labels"])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_create_as_docker_sends_it() {
        let req = overlay_create(&json!({
            "Name": "app_net", "Driver": "overlay", "Attachable": true, "CheckDuplicate": true,
            "Labels": {"com.docker.stack.namespace": "app"},
            "IPAM": {"Driver": "default", "Config": [{"Subnet": "10.9.0.0/24"}]}
        }))
        .unwrap();
        let ApiRequest::NetworkCreate {
            name,
            subnet,
            attachable,
            labels,
            ..
        } = req
        else {
            panic!("{req:?}")
        };
        assert_eq!(name, "app_net");
        assert_eq!(subnet, Some("10.9.0.0/24".parse().unwrap()));
        assert!(attachable);
        assert_eq!(labels["com.docker.stack.namespace"], "app");
        for (body, said) in [
            (json!({"Name": "n", "Internal": true}), "Internal"),
            (json!({"Name": "n", "EnableIPv6": true}), "EnableIPv6"),
            (
                json!({"Name": "n", "IPAM": {"Config": [{"Subnet": "fd00::/64"}]}}),
                "IPv4",
            ),
            (json!({"Name": ""}), "name"),
        ] {
            let e = overlay_create(&body).unwrap_err();
            assert!(e.contains(said), "{body}: {e}");
        }
    }
}
