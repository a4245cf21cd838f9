//! Autolock on a running manager: its data key follows the store's setting, and the
//! requests that change it (`swarm update --autolock`, `swarm unlock-key --rotate`).
//!
//! The unlock key is replicated like any state: a `SetAutolock` command in the log. Each
//! manager, as it applies one, rewraps its own data key (`keys::ManagerKeys::follow`):
//! under the new unlock key (and the local KEK leaves the disk), or, when autolock is
//! turned off, under a new local KEK. A manager that was down at the time follows when
//! it is back, so until then it still unlocks with the key it last followed.

use std::sync::Arc;
use std::time::Instant;

use super::{lock, Core, Runtime};
use crate::manager::ClusterError;
use crate::seal::KeyEncryptionKey;
use crate::store::{ApplyResult, Command, UnlockKey};

/// Follows the store's autolock setting on this manager for as long as its core runs.
pub(super) async fn autolock_loop(rt: Arc<Runtime>, core: Arc<Core>) {
    let mut versions = core.store.subscribe();
    loop {
        if let Err(e) = rt.follow_autolock(&core) {
            tracing::warn!(error = %e, "this manager's data key does not follow the swarm's autolock setting; will retry on the next change");
        }
        if versions.changed().await.is_err() {
            return;
        }
    }
}

fn decode(key: &UnlockKey) -> Result<KeyEncryptionKey, ClusterError> {
    KeyEncryptionKey::decode(&key.key)
        .map_err(|e| ClusterError::Store(format!("the unlock key in the store: {e}")))
}

impl Runtime {
    /// Rewraps this manager's data key if the store's autolock setting is newer than the
    /// one it follows.
    pub(super) fn follow_autolock(&self, core: &Core) -> Result<(), ClusterError> {
        let (version, unlock_key) = core
            .store
            .read_stale_with(|s| (s.autolock_version, s.unlock_key.clone()));
        let mut keys = lock(&self.keys);
        let Some(keys) = keys.as_mut() else {
            return Ok(());
        };
        if version <= keys.follows_version() {
            return Ok(());
        }
        let kek = unlock_key.as_ref().map(decode).transpose()?;
        if keys.follow(&self.dir, kek.as_ref(), version)? {
            tracing::info!(
                autolock = kek.is_some(),
                version,
                "this manager's data key is rewrapped to follow the swarm's autolock setting"
            );
        }
        Ok(())
    }

    /// The store's unlock key (linearizable read).
    pub(crate) async fn unlock_key(
        self: &Arc<Self>,
    ) -> Result<Option<KeyEncryptionKey>, ClusterError> {
        let state = self.read_state().await?;
        state.unlock_key.as_ref().map(decode).transpose()
    }

    pub(crate) async fn set_autolock(
        self: &Arc<Self>,
        on: bool,
    ) -> Result<Option<KeyEncryptionKey>, ClusterError> {
        let current = self.unlock_key().await?;
        match (on, current) {
            (true, Some(_)) | (false, None) => Ok(None),
            (true, None) => {
                let key = KeyEncryptionKey::generate();
                self.propose_autolock(Some(&key)).await?;
                Ok(Some(key))
            }
            (false, Some(_)) => {
                self.propose_autolock(None).await?;
                Ok(None)
            }
        }
    }

    pub(crate) async fn rotate_unlock_key(
        self: &Arc<Self>,
    ) -> Result<KeyEncryptionKey, ClusterError> {
        if self.unlock_key().await?.is_none() {
            return Err(ClusterError::AutolockOff);
        }
        let key = KeyEncryptionKey::generate();
        self.propose_autolock(Some(&key)).await?;
        Ok(key)
    }

    /// Writes the setting, then waits until this manager has applied it and rewrapped
    /// its data key: when the request returns, a restart of this manager needs the new
    /// key (and the old one no longer opens it).
    async fn propose_autolock(
        self: &Arc<Self>,
        key: Option<&KeyEncryptionKey>,
    ) -> Result<(), ClusterError> {
        let command = Command::SetAutolock {
            unlock_key: key.map(|k| UnlockKey { key: k.encode() }),
        };
        let version = match self.execute(command).await? {
            ApplyResult::Applied { version } => version,
            ApplyResult::Rejected { rejection, .. } => {
                return Err(ClusterError::Rejected(rejection))
            }
        };
        let core = self.require_manager()?;
        let deadline = Instant::now() + self.timings.request_timeout;
        let mut versions = core.store.subscribe();
        while *versions.borrow_and_update() < version {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, versions.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ClusterError::NotManager),
                Err(_) => return Err(ClusterError::NoQuorum),
            }
        }
        self.follow_autolock(&core)
    }
}
