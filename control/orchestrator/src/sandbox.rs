//! A task's sandbox: a small container that holds the task's network namespace, made
//! and plumbed before the task's own container starts in it (as Kubernetes' pod
//! sandbox and Swarm's pre-made namespace do), so a program that resolves a name or
//! connects at its first instruction finds its network in place.
//!
//! ```text
//!  executor ─create─▶ <task container>.sandbox (/pause, --network none,
//!     │                the task's hostname and resolv.conf)
//!     ├─start─▶ sandbox               ├─create─▶ <task container>
//!     │   pipeline: its namespace ─▶  │   (--network container:<sandbox>,
//!     │   overlay attaches it, VIP    │    meanwhile: not started)
//!     │   maps scope it, DNS serves   │
//!     │   its first network, egress   │
//!     │   gives it its veth and route │
//!     ├─ wait_ready (bounded) ◀── reconcilers' readiness watch
//!     └─start─▶ <task container>
//! ```
//! The overlay's local endpoints and egress's task containers name the sandbox (a task
//! with no network gets one too, for egress), so the namespace stays plumbed for
//! the task's whole life whatever its own process does. Docker takes a joined
//! container's hostname, resolv.conf and /etc/hosts from the container whose namespace
//! it joins, so all three are set here (the service's `--hostname`, `--dns-*` and
//! `--host`). Removing a task removes its sandbox; a task whose sandbox
//! stopped has lost its network and fails.
pub mod image;

use std::{collections::HashMap, time::Duration};

use bollard::{
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{
        CreateContainerOptions, ImportImageOptions, RemoveContainerOptions, RemoveImageOptions,
    },
};
use futures::StreamExt;
use shoal_dataplane::reconcile::ready::{self, ReadinessWatch, Wanted};

use crate::docker::DockerClient;
use image::SandboxImage;

/// On every sandbox: the ID of the task it holds the namespace of, and its service's
/// name. Sandboxes carry none of Swarm's labels (task containers do), so tools that
/// list a service's containers by them see the same containers as under Swarm.
pub const LABEL_SANDBOX_TASK_ID: &str = "shoal.sandbox.task.id";
pub const LABEL_SANDBOX_SERVICE_NAME: &str = "shoal.sandbox.service.name";
/// Longest wait for the dataplane to make a new sandbox's network ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The sandbox of the task container `task_container`.
pub fn name(task_container: &str) -> String {
    format!("{task_container}.sandbox")
}

/// Makes sure the node's dockerd has the sandbox image (loads it if not, or if the tag
/// names another image).
pub async fn ensure_image(docker: &DockerClient, image: &SandboxImage) -> Result<(), String> {
    let api = docker.engine();
    let have = |id: &Option<String>| id.as_deref() == Some(image.id.as_str());
    match api.inspect_image(image::TAG).await {
        Ok(i) if have(&i.id) => return Ok(()),
        Ok(_)
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => return Err(format!("checking the sandbox image {}: {e}", image::TAG)),
    }
    let mut load = api.import_image(
        ImportImageOptions {
            quiet: true,
            ..Default::default()
        },
        bollard::body_full(image.tarball.clone().into()),
        None,
    );
    while let Some(step) = load.next().await {
        step.map_err(|e| format!("loading the sandbox image {}: {e}", image::TAG))?;
    }
    match api.inspect_image(image::TAG).await {
        Ok(i) if have(&i.id) => Ok(()),
        Ok(i) => Err(format!(
            "the sandbox image {} loaded as {}, expected {}",
            image::TAG,
            i.id.unwrap_or_default(),
            image.id
        )),
        Err(e) => Err(format!(
            "the sandbox image {} is missing after loading it: {e}",
            image::TAG
        )),
    }
}

/// Removes the sandbox image from the node's dockerd (`shoal agent cleanup`, after the
/// sandboxes): true if it was there.
pub async fn remove_image(docker: &DockerClient) -> Result<bool, String> {
    match docker
        .engine()
        .remove_image(image::TAG, None::<RemoveImageOptions>, None)
        .await
    {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(format!("removing the sandbox image {}: {e}", image::TAG)),
    }
}

/// What a sandbox is made with: everything a task container takes from the container
/// whose namespace it joins (hostname, resolv.conf, /etc/hosts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// [`name`] of the task's container.
    pub name: String,
    pub task_id: String,
    pub service_name: String,
    pub hostname: String,
    /// The resolvers in the task's resolv.conf: its first network's gateway (the
    /// embedded DNS), or for a task with no network the egress listener or the
    /// service's `--dns` servers.
    pub nameservers: Vec<String>,
    /// `--dns-search`, `--dns-option`.
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    /// `--host` entries in Docker's `HOST:IP` form.
    pub extra_hosts: Vec<String>,
    /// The service's `net.*` `--sysctl`s: set in the network namespace the sandbox
    /// owns (Docker refuses them on a container that joins another's).
    pub sysctls: std::collections::BTreeMap<String, String>,
}

/// The container a sandbox is (pure, so its settings can be checked without dockerd).
pub fn create_body(spec: &Spec) -> ContainerCreateBody {
    let labels = HashMap::from([
        (LABEL_SANDBOX_TASK_ID.to_owned(), spec.task_id.clone()),
        (
            LABEL_SANDBOX_SERVICE_NAME.to_owned(),
            spec.service_name.clone(),
        ),
    ]);
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    ContainerCreateBody {
        image: Some(image::TAG.to_owned()),
        labels: Some(labels),
        hostname: Some(spec.hostname.clone()),
        stop_signal: Some("SIGKILL".to_owned()),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            dns: non_empty(&spec.nameservers),
            dns_search: non_empty(&spec.dns_search),
            dns_options: non_empty(&spec.dns_options),
            extra_hosts: non_empty(&spec.extra_hosts),
            sysctls: (!spec.sysctls.is_empty()).then(|| {
                spec.sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A started sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    pub id: String,
    /// Identity of its network namespace (what the readiness watch names).
    pub netns_id: u64,
}

/// Creates a sandbox, not started yet. `leftover`, a sandbox of the task that dockerd
/// listed (a start cut short), is removed first. Nothing else is removed up front: a
/// container that holds the name without being listed as a sandbox is removed only
/// when the create meets it, and the create tried once more (one call per task saved
/// on the path of every start).
pub async fn create(
    docker: &DockerClient,
    spec: &Spec,
    leftover: Option<&str>,
) -> Result<String, String> {
    if let Some(old) = leftover {
        remove(docker, old).await?;
    }
    let api = docker.engine();
    let create = || {
        api.create_container(
            Some(CreateContainerOptions {
                name: Some(spec.name.clone()),
                ..Default::default()
            }),
            create_body(spec),
        )
    };
    let created = match create().await {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => {
            remove(docker, &spec.name).await?;
            create().await
        }
        other => other,
    };
    created
        .map(|r| r.id)
        .map_err(|e| format!("creating the task's sandbox {}: {e}", spec.name))
}

/// Starts the created sandbox `id` and finds its network namespace; a sandbox that
/// cannot be started is removed again.
pub async fn start(docker: &DockerClient, spec: &Spec, id: &str) -> Result<Started, String> {
    let started = async {
        docker
            .engine()
            .start_container(id, None)
            .await
            .map_err(|e| format!("starting the task's sandbox {}: {e}", spec.name))?;
        match docker.container_netns(id).await {
            Ok(Some(c)) => Ok(Started {
                id: id.to_owned(),
                netns_id: c.netns_id,
            }),
            Ok(None) => Err(format!(
                "the task's sandbox {} stopped as it started",
                spec.name
            )),
            Err(e) => Err(format!("finding the namespace of {}: {e}", spec.name)),
        }
    }
    .await;
    if started.is_err() {
        let _ = remove(docker, id).await;
    }
    started
}

/// Waits (at most [`READY_TIMEOUT`]) until the dataplane has made the sandbox's
/// network ready ([`Wanted`]: attached to its networks and to egress, scoped for VIPs,
/// its resolver serving, every reconciler at the declared state holding its peers).
pub async fn wait_ready(watch: &mut ReadinessWatch, wanted: &Wanted) -> Result<(), String> {
    ready::wait_ready(watch, wanted, READY_TIMEOUT).await
}

/// Removes a sandbox (killed: it holds nothing worth a grace period); one that does not
/// exist is not an error.
pub async fn remove(docker: &DockerClient, reference: &str) -> Result<(), String> {
    match docker
        .engine()
        .remove_container(
            reference,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
    {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(format!("removing the task's sandbox {reference}: {e}")),
    }
}
