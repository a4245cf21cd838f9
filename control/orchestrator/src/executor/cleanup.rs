//! `shoal agent cleanup`'s part in dockerd: removing every container a shoal executor
//! made there, whatever its task's state.

use std::collections::HashMap;

use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};

use super::containers::LABEL_SLOT;
use crate::{docker::DockerClient, sandbox::LABEL_SANDBOX_TASK_ID};

/// Removes every container any shoal executor made on this dockerd, running or not
/// (`shoal agent cleanup`): task containers, then sandboxes. Task containers are told
/// apart by [`LABEL_SLOT`], shoal's own label that every agent put on them (also those
/// made before `shoal.task.id`; Swarm's labels alone would also match a Docker Swarm's
/// tasks), sandboxes by [`LABEL_SANDBOX_TASK_ID`]. Returns each
/// container's name with what happened to it; Err if they could not be listed.
pub async fn remove_all_task_containers(
    docker: &DockerClient,
) -> Result<Vec<(String, Result<(), String>)>, String> {
    let api = docker.engine();
    let mut out = Vec::new();
    for (label, what) in [
        (LABEL_SLOT, "task containers"),
        (LABEL_SANDBOX_TASK_ID, "task sandboxes"),
    ] {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![label.to_string()],
            )])),
            ..Default::default()
        };
        let list = api
            .list_containers(Some(options))
            .await
            .map_err(|e| format!("listing the {what}: {e}"))?;
        for c in list {
            let Some(id) = c.id else { continue };
            let name = c
                .names
                .and_then(|n| n.into_iter().next())
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_else(|| id.clone());
            let removed = api
                .remove_container(
                    &id,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(|e| e.to_string());
            out.push((name, removed));
        }
    }
    Ok(out)
}
