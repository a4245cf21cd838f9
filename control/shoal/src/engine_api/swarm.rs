//! The swarm's objects on the Engine API, answered from shoal's store through the same
//! requests the `shoal` CLI makes, in Docker's JSON shapes (the CLI's own `inspect`
//! layouts: one conversion for both).

use std::collections::BTreeMap;

use base64::{
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
    Engine as _,
};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use shoal_cluster::registry_auth::RegistryCredentials;
use shoal_cluster::store::{DataObject, Network, ObjectKind, Service, ServiceSpec, Task};

use super::reply::{self, Answer};
use super::route::{filters, SwarmKind};
use super::{membership, service_spec, Call};
use crate::api::{
    server::Backend, ApiError, InfoView, NodeRole, Reply, Request, Secret, ServiceChanges,
};
use crate::cli::data_object::object_value;
use crate::cli::format::inspect_values;
use crate::cli::service::inspect::{inspect_value, iso, spec_value};
use crate::cli::service::views::replicas;
use crate::filters::{
    labels_match, node_matches, prefix_of, service_matches, task_matches, NODE_KEYS, SERVICE_KEYS,
    TASK_KEYS,
};

/// Docker's words for a node that cannot answer for the swarm.
const NOT_IN_SWARM: &str = "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";
const WORKER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";
const LOCKED: &str = "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"docker swarm unlock\" to unlock it.";

pub(super) async fn call(backend: &dyn Backend, request: Request) -> Result<Reply, Answer> {
    backend.handle(request).await.map_err(refusal)
}

/// A refusal of the agent as Docker's status: what was not found is a 404.
pub(super) fn refusal(e: ApiError) -> Answer {
    let m = e.message.to_ascii_lowercase();
    let status = if m.contains("not found") || m.contains("no such") {
        StatusCode::NOT_FOUND
    } else if m.contains("not a manager") || m.contains("not in a swarm") {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    reply::error(status, e.message)
}

pub async fn info(backend: &dyn Backend) -> Result<InfoView, Answer> {
    match call(backend, Request::Info).await? {
        Reply::Info(view) => Ok(*view),
        other => Err(reply::unexpected(&other)),
    }
}

/// The `Swarm` section of `/info`, from shoal's view of it.
pub fn info_section(view: &InfoView) -> Value {
    let state = match view.swarm.as_str() {
        "active" => "active",
        "locked" => "locked",
        _ => "inactive",
    };
    let mut v = json!({
        "NodeID": view.node_id.clone().unwrap_or_default(),
        "NodeAddr": view.node_addr.clone().unwrap_or_default(),
        "LocalNodeState": state,
        "ControlAvailable": view.is_manager,
        "Error": view.error.clone().unwrap_or_default(),
        "RemoteManagers": view.manager_addrs.iter().map(|a| json!({"Addr": a})).collect::<Vec<_>>(),
    });
    if let Some(n) = view.nodes {
        v["Nodes"] = json!(n);
    }
    if let Some(m) = view.managers {
        v["Managers"] = json!(m);
    }
    if view.is_manager {
        v["Cluster"] = json!({
            "ID": view.cluster_id.clone().unwrap_or_default(),
            "Version": {"Index": view.swarm_version.unwrap_or_default()},
            "Spec": {"Name": "default"},
            "DefaultAddrPool": view.default_addr_pools.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "SubnetSize": view.subnet_size.unwrap_or_default(),
            "DataPathPort": view.data_path_port.unwrap_or_default(),
        });
    }
    v
}

/// This node's place in the swarm: (`inactive|locked|active`, manager or not), read
/// from its role alone (no cluster state is fetched: every request asks it).
pub async fn local_role(backend: &dyn Backend) -> Result<(String, bool), Answer> {
    match call(backend, Request::LocalRole).await? {
        Reply::LocalRole { swarm, is_manager } => Ok((swarm, is_manager)),
        other => Err(reply::unexpected(&other)),
    }
}

/// The value of `/_ping`'s `Swarm` header: `inactive`, `locked` or
/// `active/manager|worker`.
pub fn ping_header(swarm: &str, is_manager: bool) -> &'static str {
    match (swarm, is_manager) {
        ("active", true) => "active/manager",
        ("active", false) => "active/worker",
        ("locked", _) => "locked",
        _ => "inactive",
    }
}

/// One request on the swarm's objects.
pub async fn answer(backend: &dyn Backend, kind: SwarmKind, call: &Call) -> Answer {
    match answer_or_refuse(backend, kind, call).await {
        Ok(a) | Err(a) => a,
    }
}

/// The manager's answer, or why this node cannot give it (Docker's 503s).
pub async fn manager_only(backend: &dyn Backend) -> Result<(), Answer> {
    let (swarm, is_manager) = local_role(backend).await?;
    match (swarm.as_str(), is_manager) {
        ("active", true) => Ok(()),
        ("active", false) => Err(reply::error(StatusCode::SERVICE_UNAVAILABLE, WORKER)),
        ("locked", _) => Err(reply::error(StatusCode::SERVICE_UNAVAILABLE, LOCKED)),
        _ => Err(reply::error(StatusCode::SERVICE_UNAVAILABLE, NOT_IN_SWARM)),
    }
}

async fn answer_or_refuse(
    backend: &dyn Backend,
    kind: SwarmKind,
    call: &Call,
) -> Result<Answer, Answer> {
    let rest: Vec<&str> = call.rest.iter().map(String::as_str).collect();
    // Joining and leaving: answered whatever this node is now.
    match (&call.method, kind, rest.as_slice()) {
        (&Method::POST, SwarmKind::Swarm, ["init"]) => {
            return membership::init(backend, call).await
        }
        (&Method::POST, SwarmKind::Swarm, ["join"]) => {
            return membership::join(backend, call).await
        }
        (&Method::POST, SwarmKind::Swarm, ["leave"]) => {
            return membership::leave(backend, call).await
        }
        (&Method::POST, SwarmKind::Swarm, ["unlock"]) => {
            return membership::unlock(backend, call).await
        }
        _ => {}
    }
    manager_only(backend).await?;
    let query = &call.query;
    let bad_filter = |e: String| reply::error(StatusCode::BAD_REQUEST, e);
    match (&call.method, kind, rest.as_slice()) {
        (&Method::GET, SwarmKind::Swarm, []) => swarm_inspect(backend, &info(backend).await?).await,
        (&Method::GET, SwarmKind::Swarm, ["unlockkey"]) => membership::unlock_key(backend).await,
        (&Method::POST, SwarmKind::Swarm, ["update"]) => {
            let current = info(backend).await?.swarm_version.unwrap_or_default();
            membership::update(backend, call, current, autolocked(backend).await).await
        }
        (&Method::POST, SwarmKind::Nodes, [reference, "update"]) => {
            let (_, found) = nodes(backend, vec![reference.to_string()]).await?;
            let node = found.first().ok_or_else(|| {
                reply::error(StatusCode::NOT_FOUND, format!("node {reference} not found"))
            })?;
            membership::node_update(backend, node, call).await
        }
        (&Method::DELETE, SwarmKind::Nodes, [reference]) => {
            membership::node_rm(backend, reference, call).await
        }
        (&Method::GET, SwarmKind::Nodes, []) => {
            let f = filters(query, NODE_KEYS).map_err(bad_filter)?;
            let (_, mut nodes) = nodes(backend, vec![]).await?;
            nodes.retain(|n| node_matches(n, &f));
            let values = inspect_values(&nodes);
            Ok(reply::json(StatusCode::OK, &json!(values)))
        }
        (&Method::GET, SwarmKind::Nodes, [reference]) => {
            let (_, nodes) = nodes(backend, vec![reference.to_string()]).await?;
            let values = inspect_values(&nodes);
            match values.into_iter().next() {
                Some(v) => Ok(reply::json(StatusCode::OK, &v)),
                None => Err(reply::error(
                    StatusCode::NOT_FOUND,
                    format!("node {reference} not found"),
                )),
            }
        }
        (&Method::GET, SwarmKind::Services, []) => {
            let f = filters(query, SERVICE_KEYS).map_err(bad_filter)?;
            let state = services(backend, vec![]).await?;
            let with_status = query.get("status").is_some_and(|s| s == "true" || s == "1");
            let values = state
                .services
                .iter()
                .filter(|s| service_matches(s, &f))
                .map(|s| service_value(s, &state.tasks, &state.networks, with_status))
                .collect::<Vec<_>>();
            Ok(reply::json(StatusCode::OK, &json!(values)))
        }
        (&Method::GET, SwarmKind::Services, [reference]) => {
            let state = services(backend, vec![reference.to_string()]).await?;
            match state.services.first() {
                Some(s) => Ok(reply::json(
                    StatusCode::OK,
                    &service_value(s, &state.tasks, &state.networks, false),
                )),
                None => Err(reply::error(
                    StatusCode::NOT_FOUND,
                    format!("service {reference} not found"),
                )),
            }
        }
        (&Method::POST, SwarmKind::Services, ["create"]) => service_create(backend, call).await,
        (&Method::POST, SwarmKind::Services, [reference, "update"]) => {
            service_update(backend, reference, call).await
        }
        (&Method::DELETE, SwarmKind::Services, [reference]) => {
            write(
                backend,
                Request::ServiceRm {
                    services: vec![reference.to_string()],
                },
            )
            .await?;
            Ok(reply::empty(StatusCode::OK))
        }
        (&Method::GET, SwarmKind::Tasks, []) => {
            let f = filters(query, TASK_KEYS).map_err(bad_filter)?;
            let state = services(backend, vec![]).await?;
            let values = state
                .tasks
                .iter()
                .filter(|t| task_matches(t, &state.services, &state.nodes, &f))
                .map(|t| task_value(t, &state.services, &state.networks))
                .collect::<Vec<_>>();
            Ok(reply::json(StatusCode::OK, &json!(values)))
        }
        (&Method::GET, SwarmKind::Services, [reference, "logs"]) => {
            super::logs::answer(backend, super::logs::Whose::Service(reference), call).await
        }
        (&Method::GET, SwarmKind::Tasks, [id, "logs"]) => {
            super::logs::answer(backend, super::logs::Whose::Task(id), call).await
        }
        (&Method::GET, SwarmKind::Tasks, [id]) => {
            let state = services(backend, vec![]).await?;
            match state.tasks.iter().find(|t| t.id == *id) {
                Some(t) => Ok(reply::json(
                    StatusCode::OK,
                    &task_value(t, &state.services, &state.networks),
                )),
                None => Err(reply::error(
                    StatusCode::NOT_FOUND,
                    format!("task {id} not found"),
                )),
            }
        }
        (&Method::GET, SwarmKind::Secrets | SwarmKind::Configs, []) => {
            let f = filters(query, &["id", "label", "name", "names"]).map_err(bad_filter)?;
            let kind = object_kind(kind);
            let objects = objects(backend, kind, vec![]).await?;
            let values = objects
                .iter()
                .filter(|o| {
                    f.iter().all(|(key, want)| match key.as_str() {
                        "id" => prefix_of(want, &o.id),
                        "name" => prefix_of(want, &o.name),
                        "names" => want.contains(&o.name),
                        "label" => labels_match(&o.labels, want),
                        _ => true,
                    })
                })
                .map(|o| object_value(kind, o))
                .collect::<Vec<_>>();
            Ok(reply::json(StatusCode::OK, &json!(values)))
        }
        (&Method::GET, SwarmKind::Secrets | SwarmKind::Configs, [reference]) => {
            let kind = object_kind(kind);
            let found = objects(backend, kind, vec![reference.to_string()]).await?;
            match found.first() {
                Some(o) => Ok(reply::json(StatusCode::OK, &object_value(kind, o))),
                None => Err(reply::error(
                    StatusCode::NOT_FOUND,
                    format!("{kind} {reference} not found"),
                )),
            }
        }
        (&Method::POST, SwarmKind::Secrets | SwarmKind::Configs, ["create"]) => {
            let kind = object_kind(kind);
            let v: Value = serde_json::from_slice(&call.body).map_err(|e| {
                reply::error(StatusCode::BAD_REQUEST, format!("malformed {kind}: {e}"))
            })?;
            let object = object_create(kind, v).map_err(bad_request)?;
            match write(backend, object).await? {
                Reply::ObjectCreated { id } => {
                    Ok(reply::json(StatusCode::CREATED, &json!({"ID": id})))
                }
                other => Err(reply::unexpected(&other)),
            }
        }
        (&Method::POST, SwarmKind::Secrets | SwarmKind::Configs, [reference, "update"]) => {
            object_update(backend, object_kind(kind), reference, call).await
        }
        (&Method::DELETE, SwarmKind::Secrets | SwarmKind::Configs, [reference]) => {
            write(
                backend,
                Request::ObjectRm {
                    kind: object_kind(kind),
                    objects: vec![reference.to_string()],
                },
            )
            .await?;
            Ok(reply::empty(StatusCode::NO_CONTENT))
        }
        (method, kind, rest) => Err(not_served(method, kind.name(), rest)),
    }
}

/// What shoal does not serve on the Engine API yet, said so (501).
pub fn not_served(method: &Method, kind: &str, rest: &[&str]) -> Answer {
    reply::error(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "shoal's Engine API does not serve {method} /{kind}{}{} yet; use the shoal CLI for it",
            if rest.is_empty() { "" } else { "/" },
            rest.join("/"),
        ),
    )
}

/// A change through the agent: its refusals are the client's fault (400) unless they
/// say what Docker answers otherwise.
pub async fn write(backend: &dyn Backend, request: Request) -> Result<Reply, Answer> {
    backend.handle(request).await.map_err(|e| {
        let m = e.message.to_ascii_lowercase();
        let status = if m.contains("not found") || m.contains("no such") {
            StatusCode::NOT_FOUND
        } else if m.contains("already exists")
            || m.contains("out of sequence")
            || m.contains("in use")
            || m.contains("is used by")
        {
            StatusCode::CONFLICT
        } else {
            StatusCode::BAD_REQUEST
        };
        reply::error(status, e.message)
    })
}

/// `X-Registry-Auth`: Docker's base64 (URL-safe) JSON of the registry credentials; an
/// empty object or none means none.
fn registry_auth(header: Option<&str>) -> Result<Option<Box<RegistryCredentials>>, String> {
    let Some(text) = header.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let bad = |e: String| format!("X-Registry-Auth: {e}");
    let raw = [URL_SAFE, URL_SAFE_NO_PAD, STANDARD, STANDARD_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .ok_or_else(|| bad("not base64".into()))?;
    let v: Value = serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))?;
    let field = |k: &str| v[k].as_str().unwrap_or("").to_owned();
    let (username, password, server_address) =
        (field("username"), field("password"), field("serveraddress"));
    if username.is_empty() && password.is_empty() {
        return Ok(None);
    }
    Ok(Some(Box::new(RegistryCredentials {
        server_address,
        username,
        password,
    })))
}

fn spec_of(call: &Call) -> Result<(ServiceSpec, u64), String> {
    let v: Value =
        serde_json::from_slice(&call.body).map_err(|e| format!("malformed service spec: {e}"))?;
    service_spec::from_docker(v)
}

fn bad_request(e: String) -> Answer {
    reply::error(StatusCode::BAD_REQUEST, e)
}

async fn service_create(backend: &dyn Backend, call: &Call) -> Result<Answer, Answer> {
    let (spec, _) = spec_of(call).map_err(bad_request)?;
    let registry_auth = registry_auth(call.registry_auth.as_deref()).map_err(bad_request)?;
    match write(
        backend,
        Request::ServiceCreate {
            spec: Box::new(spec),
            no_resolve_image: false,
            registry_auth,
        },
    )
    .await?
    {
        Reply::ServiceCreated { id, warnings } => Ok(reply::json(
            StatusCode::CREATED,
            &json!({"ID": id, "Warnings": warnings}),
        )),
        other => Err(reply::unexpected(&other)),
    }
}

async fn service_update(
    backend: &dyn Backend,
    reference: &str,
    call: &Call,
) -> Result<Answer, Answer> {
    let version = call.required_version("service")?;
    let registry_auth = registry_auth(call.registry_auth.as_deref()).map_err(bad_request)?;
    let request = if call.query.get("rollback").is_some_and(|r| r == "previous") {
        Request::ServiceUpdate {
            service: reference.to_owned(),
            changes: Box::new(ServiceChanges {
                rollback: true,
                ..ServiceChanges::default()
            }),
            no_resolve_image: false,
            registry_auth,
        }
    } else {
        let (spec, force_update) = spec_of(call).map_err(bad_request)?;
        Request::ServiceSetSpec {
            service: reference.to_owned(),
            spec: Box::new(spec),
            version,
            force_update,
            keep_shoal_fields: true,
            no_resolve_image: false,
            registry_auth,
        }
    };
    match write(backend, request).await? {
        Reply::ServicesChanged { warnings, .. } => {
            Ok(reply::json(StatusCode::OK, &json!({"Warnings": warnings})))
        }
        other => Err(reply::unexpected(&other)),
    }
}

fn object_kind(kind: SwarmKind) -> ObjectKind {
    match kind {
        SwarmKind::Configs => ObjectKind::Config,
        _ => ObjectKind::Secret,
    }
}

async fn objects(
    backend: &dyn Backend,
    kind: ObjectKind,
    refs: Vec<String>,
) -> Result<Vec<DataObject>, Answer> {
    match call(
        backend,
        Request::ObjectState {
            kind,
            objects: refs,
        },
    )
    .await?
    {
        Reply::Objects { objects } => Ok(objects),
        other => Err(reply::unexpected(&other)),
    }
}

/// `POST /secrets|configs/create`: `{Name, Labels, Data}` (Data in base64, as Docker
/// sends it); drivers and templating are not carried out by shoal.
fn object_create(kind: ObjectKind, v: Value) -> Result<Request, String> {
    let Value::Object(mut m) = v else {
        return Err(format!("malformed {kind}: expected an object"));
    };
    let mut take = |key: &str| {
        let k = m.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned();
        k.and_then(|k| m.remove(&k)).filter(|v| !v.is_null())
    };
    let name = take("Name")
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("a {kind} needs a name"))?;
    let labels = match take("Labels") {
        None => BTreeMap::new(),
        Some(Value::Object(l)) => l
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                other => Err(format!("Labels.{k}: expected a string, got {other}")),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("Labels: expected an object, got {other}")),
    };
    let data = match take("Data") {
        Some(Value::String(d)) => d,
        _ => String::new(),
    };
    for key in ["Driver", "Templating"] {
        if take(key).is_some_and(|v| !v.as_object().is_some_and(|o| o.is_empty())) {
            return Err(format!("{kind} {key} is not supported by shoal"));
        }
    }
    if let Some((k, _)) = m.iter().find(|(_, v)| !v.is_null()) {
        return Err(format!("{kind} field {k} is not supported by shoal"));
    }
    Ok(Request::ObjectCreate {
        kind,
        name,
        labels,
        data_base64: Secret::new(data),
    })
}

/// `POST /secrets/{id}/update?version=N` (and configs): Swarm lets only the labels
/// change; the name must stay, and the data may be sent only as it is.
async fn object_update(
    backend: &dyn Backend,
    kind: ObjectKind,
    reference: &str,
    call: &Call,
) -> Result<Answer, Answer> {
    let version = call.required_version(&kind.to_string())?;
    let v: Value = serde_json::from_slice(&call.body)
        .map_err(|e| reply::error(StatusCode::BAD_REQUEST, format!("malformed {kind}: {e}")))?;
    let Request::ObjectCreate {
        name,
        labels,
        data_base64,
        ..
    } = object_create(kind, v).map_err(bad_request)?
    else {
        return Err(reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: not an object spec",
        ));
    };
    let found = objects(backend, kind, vec![reference.to_owned()]).await?;
    let current = found.first().ok_or_else(|| {
        reply::error(
            StatusCode::NOT_FOUND,
            format!("{kind} {reference} not found"),
        )
    })?;
    if name != current.name {
        return Err(reply::error(
            StatusCode::BAD_REQUEST,
            "only updates to Labels are allowed",
        ));
    }
    // The data may be sent as it is (Docker's `stack deploy` does): the managers,
    // which hold a secret's data, compare it.
    let data = (!data_base64.expose().is_empty()).then_some(data_base64);
    write(
        backend,
        Request::ObjectSetLabels {
            kind,
            object: current.id.clone(),
            version,
            labels,
            data_base64: data,
        },
    )
    .await?;
    Ok(reply::empty(StatusCode::OK))
}

async fn swarm_inspect(backend: &dyn Backend, view: &InfoView) -> Result<Answer, Answer> {
    let mut tokens = BTreeMap::new();
    for (role, name) in [(NodeRole::Worker, "Worker"), (NodeRole::Manager, "Manager")] {
        match call(
            backend,
            Request::JoinToken {
                role,
                rotate: false,
            },
        )
        .await?
        {
            Reply::JoinToken { token, .. } => {
                tokens.insert(name, token.expose().to_owned());
            }
            other => return Err(reply::unexpected(&other)),
        }
    }
    let mut v = info_section(view)["Cluster"].clone();
    v["JoinTokens"] = json!(tokens);
    v["Spec"]["EncryptionConfig"] = json!({"AutoLockManagers": autolocked(backend).await});
    Ok(reply::json(StatusCode::OK, &v))
}

/// Whether the managers are autolocked: they then have an unlock key.
pub async fn autolocked(backend: &dyn Backend) -> bool {
    matches!(
        backend.handle(Request::UnlockKey { rotate: false }).await,
        Ok(Reply::UnlockKey { .. })
    )
}

async fn nodes(
    backend: &dyn Backend,
    refs: Vec<String>,
) -> Result<(String, Vec<crate::api::NodeView>), Answer> {
    let request = if refs.is_empty() {
        Request::NodeLs
    } else {
        Request::NodeInspect { nodes: refs }
    };
    match call(backend, request).await? {
        Reply::Nodes { self_id, nodes, .. } => Ok((self_id, nodes)),
        other => Err(reply::unexpected(&other)),
    }
}

pub(super) async fn services(
    backend: &dyn Backend,
    refs: Vec<String>,
) -> Result<crate::api::ServiceStateView, Answer> {
    match call(backend, Request::ServiceState { services: refs }).await? {
        Reply::ServiceState(view) => Ok(*view),
        other => Err(reply::unexpected(&other)),
    }
}

fn service_value(s: &Service, tasks: &[Task], networks: &[Network], with_status: bool) -> Value {
    let mut v = inspect_value(s, networks);
    if with_status {
        let (running, desired) = replicas(s, tasks);
        let completed = tasks
            .iter()
            .filter(|t| {
                t.service_id == s.id && t.status.state == shoal_cluster::store::TaskState::Complete
            })
            .count();
        v["ServiceStatus"] = json!({
            "RunningTasks": running,
            "DesiredTasks": desired,
            "CompletedTasks": completed,
        });
    }
    v
}

/// One task in Docker's shape (`GET /tasks`), with the spec it was made from.
fn task_value(t: &Task, services: &[Service], networks: &[Network]) -> Value {
    let service = services.iter().find(|s| s.id == t.service_id);
    let spec = t.spec.as_deref().or(service.map(|s| &s.spec));
    let mut status = json!({
        "Timestamp": iso(t.status.timestamp_ms),
        "State": t.status.state.as_str(),
        "Message": t.status.message,
        "ContainerStatus": {
            "ContainerID": t.status.container_id.clone().unwrap_or_default(),
            "ExitCode": t.status.exit_code.unwrap_or_default(),
        },
        "PortStatus": {},
    });
    if let Some(err) = &t.status.err {
        status["Err"] = json!(err);
    }
    let mut v = json!({
        "ID": t.id,
        "Version": {"Index": t.version},
        "CreatedAt": iso(t.created_ms),
        "UpdatedAt": iso(t.status.timestamp_ms.max(t.created_ms)),
        "Labels": {},
        "Spec": spec.map(|s| spec_value(s, t.force_update)["TaskTemplate"].clone()).unwrap_or(json!({})),
        "ServiceID": t.service_id,
        "Status": status,
        "DesiredState": t.desired_state.as_str(),
        "NetworksAttachments": t.networks.iter().map(|a| {
            let network = networks.iter().find(|n| n.id == a.network_id);
            json!({
                "Network": {
                    "ID": a.network_id,
                    "Spec": {"Name": network.map(|n| n.name.clone()).unwrap_or_default()},
                },
                "Addresses": [a.addr.to_string()],
            })
        }).collect::<Vec<_>>(),
    });
    if t.slot > 0 {
        v["Slot"] = json!(t.slot);
    }
    if let Some(node) = &t.node_id {
        v["NodeID"] = json!(node);
    }
    v
}
