//! The images a pass's starts need: the task images checked (and pulled when the node
//! lacks them) and the sandbox image loaded, once per pass, not per task.
//!
//! Pulls run beside the passes, one per image (and per service whose registry
//! credentials it needs, `--with-registry-auth`): a pass that finds an image missing
//! starts its pull and reports the tasks `preparing`; the pull's end wakes the next pass,
//! which starts the tasks or rejects them with the pull's error.

use std::{collections::HashMap, time::Duration};

use shoal_cluster::store::Service;
use tracing::{info, warn};

use super::{config::NodeIdentity, containers::Prepared, plan::Action, Executor};
use crate::{
    image::{self, ImageRef},
    sandbox,
};

/// Longest an image pull may take before its tasks are rejected (a registry that
/// stops answering mid-pull must not hold them in `preparing` for ever).
const PULL_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// One pull: the image as the service names it, and the service whose registry
/// credentials it uses (None: pulled without credentials).
pub(super) type PullKey = (String, Option<String>);

/// Where a task's image stands on this node.
#[derive(Debug, Clone)]
pub(super) enum ImageCheck {
    /// Here; `healthcheck`: the image declares a health check of its own.
    Present { healthcheck: bool },
    /// Being pulled: the task waits in `preparing`.
    Pulling,
    /// It cannot be had: the task is rejected with this (the registry's words for a
    /// failed pull).
    Failed(String),
}

impl Executor {
    /// What every start among `actions` shares: one image check (and pull) per image,
    /// not per task; the sandbox image once; `version` and the dataplane's readiness; the
    /// `node` they start on.
    pub(super) async fn prepare_starts(
        &mut self,
        actions: &[Action],
        version: u64,
        node: NodeIdentity,
    ) -> Prepared {
        let mut images: HashMap<PullKey, ImageCheck> = HashMap::new();
        let mut sandbox_image: Result<(), String> = Ok(());
        if actions.iter().any(|a| matches!(a, Action::Start { .. })) {
            sandbox_image = match &self.sandbox_image {
                Ok(image) => sandbox::ensure_image(&self.docker, image).await,
                Err(e) => Err(e.clone()),
            };
        }
        for a in actions {
            if let Action::Start { service, .. } = a {
                let key = self.pull_key(service);
                if let std::collections::hash_map::Entry::Vacant(slot) = images.entry(key) {
                    let check = self.prepare_image(slot.key()).await;
                    slot.insert(check);
                }
            }
        }
        // A pull that ended before this pass was looked at by it if a task needed it; a
        // later pass must not take a pruned image for one dockerd lost after a pull.
        self.pulled.clear();
        let images: HashMap<String, ImageCheck> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { service, .. } => {
                    let key = self.pull_key(service);
                    let check = images.get(&key)?.clone();
                    Some((service.id.clone(), check))
                }
                Action::Remove { .. } | Action::RemoveSandbox { .. } => None,
            })
            .collect();
        // Secrets' and configs' files, on the node's tmpfs.
        let mut files = HashMap::new();
        for a in actions {
            if let Action::Start { task, service, .. } = a {
                let written = match (&self.task_files, &self.state) {
                    _ if service.spec.secrets.is_empty() && service.spec.configs.is_empty() => {
                        Ok(Vec::new())
                    }
                    (Some(tf), Some(state)) => tf.write(&task.id, &service.spec, state),
                    (None, _) => Err(
                        "this node has no tmpfs for secrets and configs (see the agent's log)"
                            .to_owned(),
                    ),
                    (Some(_), None) => Err("this node has no state from the managers".to_owned()),
                };
                files.insert(task.id.clone(), written);
            }
        }
        Prepared {
            node,
            images,
            sandbox_image,
            ready: self.ready.clone(),
            version,
            files,
        }
    }

    /// Which pull a service's image needs: with its credentials when it has some.
    fn pull_key(&self, service: &Service) -> PullKey {
        let with = self
            .registry_auth
            .contains_key(&service.id)
            .then(|| service.id.clone());
        (service.spec.image.clone(), with)
    }

    /// Whether the image of `key` is here; if it is missing, starts its pull (once).
    /// A pull that failed since the last pass gives its error, once.
    async fn prepare_image(&mut self, key: &PullKey) -> ImageCheck {
        let (reference, with) = key;
        let image = match ImageRef::parse(reference) {
            Ok(i) => i,
            Err(e) => return ImageCheck::Failed(e),
        };
        if let Some(err) = self.pull_failed.remove(key) {
            return ImageCheck::Failed(err);
        }
        if self.pulling.contains(key) {
            return ImageCheck::Pulling;
        }
        // dockerd takes the reference as the service gives it (`name:tag@digest` too).
        let found = self.docker.engine().inspect_image(reference).await;
        let just_pulled = self.pulled.remove(key);
        match found {
            Ok(i) => ImageCheck::Present {
                healthcheck: i
                    .config
                    .and_then(|c| c.healthcheck)
                    .and_then(|h| h.test)
                    .is_some_and(|t| t.first().map(String::as_str) != Some("NONE")),
            },
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) if just_pulled => {
                // Pulling again would loop for ever.
                ImageCheck::Failed(format!(
                    "pulled {reference}, but dockerd does not find it under that name"
                ))
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                let creds = with
                    .as_ref()
                    .and_then(|s| self.registry_auth.get(s))
                    .cloned();
                info!(%image, credentials = creds.is_some(), "pulling an image");
                self.pulling.insert(key.clone());
                let docker = self.docker.clone();
                let done = self.pull_done_tx.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let pulled = tokio::time::timeout(
                        PULL_TIMEOUT,
                        image::pull(&docker, &image, creds.as_ref()),
                    )
                    .await
                    .unwrap_or_else(|_| Err(format!("no end within {} s", PULL_TIMEOUT.as_secs())))
                    // The registry's words, with the image they are about.
                    .map_err(|e| format!("pulling {image}: {e}"));
                    // The executor may be gone (the node left): nothing to tell then.
                    let _ = done.send((key, pulled));
                });
                ImageCheck::Pulling
            }
            Err(other) => ImageCheck::Failed(format!("checking image {reference}: {other}")),
        }
    }

    /// A pull ended: its failure waits for the next pass to reject the tasks with it.
    pub(super) fn pull_ended(&mut self, key: PullKey, result: Result<(), String>) {
        self.pulling.remove(&key);
        match result {
            Ok(()) => {
                info!(image = %key.0, "image pulled");
                self.pulled.insert(key);
            }
            Err(err) => {
                warn!(image = %key.0, %err, "image pull failed");
                self.pull_failed.insert(key, err);
            }
        }
    }
}
