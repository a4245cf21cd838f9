//! The manager's answers to `secret ...` and `config ...` requests, and the secrets and
//! configs of a service's spec resolved to the stored objects.
//!
//! A secret's data goes into the store (whose log and snapshots are sealed on every
//! manager's disk) and from there only to the nodes that run a task using it; no reply
//! to a client carries it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use shoal_cluster::{
    manager::Manager,
    store::{ClusterState, Command, DataObject, FileReference, ObjectKind, ServiceSpec},
};
use shoal_orchestrator::scheduler::{new_id, now_ms};
use tracing::info;

use super::{
    nodes::execute,
    services::{check_name, resolve},
};
use crate::api::{ApiError, Reply, Request};

/// The ID of the secret or config `reference` names (ID, name or unique ID prefix).
pub(super) fn object_id(
    state: &ClusterState,
    kind: ObjectKind,
    reference: &str,
) -> Result<String, ApiError> {
    resolve(
        &kind.to_string(),
        state
            .data_objects(kind)
            .values()
            .map(|o| (o.id.as_str(), o.name.as_str())),
        reference,
    )
}

/// `refs` as given (`name`: the reference, `id` empty) or as stored, bound to the
/// objects they name: an unknown one is refused, naming it.
pub(super) fn resolve_references(
    state: &ClusterState,
    kind: ObjectKind,
    refs: &mut [FileReference],
) -> Result<(), ApiError> {
    for r in refs.iter_mut() {
        let reference = if r.id.is_empty() { &r.name } else { &r.id };
        let id = object_id(state, kind, reference)?;
        r.name.clone_from(&state.data_objects(kind)[&id].name);
        r.id = id;
    }
    shoal_cluster::store::data_object::check_references(&kind.to_string(), refs)
        .map_err(ApiError::new)
}

/// `--secret-rm`/`--config-rm` then `--secret-add`/`--config-add` on `spec`.
pub(super) fn change_references(
    state: &ClusterState,
    spec: &mut ServiceSpec,
    kind: ObjectKind,
    add: &[FileReference],
    remove: &[String],
) -> Result<(), ApiError> {
    let refs = match kind {
        ObjectKind::Config => &mut spec.configs,
        _ => &mut spec.secrets,
    };
    for reference in remove {
        let before = refs.len();
        refs.retain(|r| r.name != *reference && r.id != *reference);
        if refs.len() == before {
            // Docker's words for a reference the service does not have.
            let id = object_id(state, kind, reference)?;
            refs.retain(|r| r.id != id);
        }
    }
    let mut added = add.to_vec();
    resolve_references(state, kind, &mut added)?;
    refs.extend(added);
    Ok(())
}

/// Answers one secret or config request.
pub(super) async fn request(
    manager: &Manager,
    state: &ClusterState,
    request: Request,
) -> Result<Reply, ApiError> {
    match request {
        Request::ObjectCreate {
            kind,
            name,
            labels,
            data_base64,
        } => {
            check_name(&kind.to_string(), &name)?;
            let data = STANDARD
                .decode(data_base64.expose())
                .map_err(|e| ApiError::new(format!("{kind} data is not base64: {e}")))?;
            if let Some(problem) = DataObject::data_problem(&kind.to_string(), &data) {
                return Err(ApiError::new(problem));
            }
            if let Some(o) = state.data_objects(kind).values().find(|o| o.name == name) {
                return Err(ApiError::new(format!(
                    "{kind} {name} already exists (ID {})",
                    o.id
                )));
            }
            let now = now_ms();
            let object = DataObject {
                id: new_id(),
                name: name.clone(),
                labels,
                data,
                created_ms: now,
                updated_ms: now,
                version: 0,
            };
            let id = object.id.clone();
            let spec = serde_json::to_value(&object)
                .map_err(|e| ApiError::new(format!("internal error: {e}")))?;
            execute(
                manager,
                Command::UpsertObject {
                    kind,
                    id: id.clone(),
                    spec,
                },
            )
            .await?;
            info!(%kind, name = %name, %id, "created");
            Ok(Reply::ObjectCreated { id })
        }
        Request::ObjectState { kind, objects } => {
            let ids: Vec<String> = if objects.is_empty() {
                state.data_objects(kind).keys().cloned().collect()
            } else {
                objects
                    .iter()
                    .map(|r| object_id(state, kind, r))
                    .collect::<Result<_, _>>()?
            };
            Ok(Reply::Objects {
                objects: ids
                    .iter()
                    .map(|id| {
                        let mut o = state.data_objects(kind)[id].clone();
                        // A secret's data stays with the managers and the nodes using it.
                        if kind != ObjectKind::Config {
                            o.data = Vec::new();
                        }
                        o
                    })
                    .collect(),
            })
        }
        Request::ObjectRm { kind, objects } => {
            let ids = objects
                .iter()
                .map(|r| object_id(state, kind, r))
                .collect::<Result<Vec<_>, _>>()?;
            let mut done = Vec::new();
            for (reference, id) in objects.iter().zip(ids) {
                if done.contains(reference) {
                    continue;
                }
                // The store refuses one in use, naming the service.
                execute(manager, Command::RemoveObject { kind, id }).await?;
                done.push(reference.clone());
            }
            Ok(Reply::ObjectsChanged { objects: done })
        }
        Request::ObjectSetLabels {
            kind,
            object,
            version,
            labels,
            data_base64,
        } => {
            let id = object_id(state, kind, &object)?;
            let mut updated = state.data_objects(kind)[&id].clone();
            if updated.version != version {
                return Err(ApiError::new(format!(
                    "update out of sequence: {kind} {} is at version {}, the update was made from version {version}",
                    updated.name, updated.version
                )));
            }
            if let Some(data) = data_base64 {
                let same = STANDARD
                    .decode(data.expose())
                    .is_ok_and(|d| d == updated.data);
                if !same {
                    return Err(ApiError::new(format!(
                        "{kind} {}: only updates to Labels are allowed (its data cannot change: \
                         give the changed data a new name)",
                        updated.name
                    )));
                }
            }
            if updated.labels == labels {
                return Ok(Reply::ObjectsChanged {
                    objects: vec![object],
                });
            }
            updated.labels = labels;
            updated.updated_ms = now_ms();
            let spec = serde_json::to_value(&updated)
                .map_err(|e| ApiError::new(format!("internal error: {e}")))?;
            // The store keeps the data of an existing object: only the labels change.
            execute(manager, Command::UpsertObject { kind, id, spec }).await?;
            Ok(Reply::ObjectsChanged {
                objects: vec![object],
            })
        }
        _ => Err(ApiError::new(
            "internal error: not a secret or config request",
        )),
    }
}
