//! A manager whose Raft store stopped on its own (a full or failing disk, a panic of the
//! Raft core) is stopped and started again from its directory, as an agent restart
//! would, with a backoff while starting fails: the disk may need minutes to get room.
//! In between the node says why in `shoal info` and refuses the cluster's requests
//! with the reason, instead of answering "no quorum" for good.
//!
//! The role is started again only once its Raft directory takes a write ([`room`]).
//! Why: a manager that was the leader starts again with its vote and resumes leading
//! before the others' election timeout; on a disk still full its first write fails,
//! and so on every second or two: measured (`cargo xtask chaos --scenario disk_full`),
//! the leader's store restarted 20 times in 25 s, still leader of its term, and the
//! cluster accepted no write at all through the other managers. Kept down while there
//! is no room, it lets them elect a leader that can write.
use std::io::Write;

use super::*;

/// What a write must fit in the Raft directory before the role starts again.
const ROOM_PROBE: usize = 256 * 1024;

/// Whether the Raft directory under `cluster_dir` takes a write of [`ROOM_PROBE`]
/// bytes, synced (then removed); Ok when there is no Raft directory (nothing to write).
fn room(cluster_dir: &std::path::Path) -> std::io::Result<()> {
    let raft = cluster_dir.join("raft");
    if !raft.is_dir() {
        return Ok(());
    }
    let probe = raft.join(".room-probe");
    let written = (|| {
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(&vec![0u8; ROOM_PROBE])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    written
}

/// The first wait before starting the role again, doubled while starting fails.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A stopped manager being started again.
#[derive(Debug)]
pub(super) struct Restart {
    /// Why the store stopped, and the last failed start, if any.
    why: String,
    last_error: Option<String>,
    next_try: tokio::time::Instant,
    backoff: Duration,
}

impl Restart {
    fn new(why: String) -> Self {
        Restart {
            why,
            last_error: None,
            next_try: tokio::time::Instant::now() + FIRST_BACKOFF,
            backoff: FIRST_BACKOFF,
        }
    }

    fn failed_again(&mut self, error: String) {
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.next_try = tokio::time::Instant::now() + self.backoff;
        self.last_error = Some(error);
    }

    /// What requests and `shoal info` say while the role is down.
    pub(super) fn message(&self) -> String {
        let mut m = format!(
            "this manager's Raft store stopped ({}); the agent is starting it again from its directory",
            self.why
        );
        if let Some(e) = &self.last_error {
            m += &format!(" (the last try failed: {e})");
        }
        m
    }
}

impl ClusterAgent {
    /// One pass: stops a manager whose store has failed, or tries to start a stopped
    /// one again when its backoff has passed.
    pub(super) async fn restart_failed_store(&self) {
        let mut role = self.role.lock().await;
        if let Some(Role::Restarting(r)) = &mut *role {
            if tokio::time::Instant::now() < r.next_try {
                return;
            }
            let dir = self.config.cluster_dir();
            let checked = tokio::task::spawn_blocking(move || room(&dir))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            if let Err(e) = checked {
                let e = format!("no room in the Raft directory: {e}");
                tracing::warn!(error = %e, retry_in = ?r.backoff * 2, "the stopped manager role is not started again yet");
                r.failed_again(e);
                return;
            }
            match resume(&self.config).await {
                Ok(Some(again)) => {
                    info!(
                        role = again.name(),
                        "the manager role started again after its store stopped"
                    );
                    *role = Some(again);
                }
                Ok(None) => *role = None,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?r.backoff * 2, "starting the stopped manager role again failed");
                    r.failed_again(e.to_string());
                }
            }
            return;
        }
        let failure = role
            .as_ref()
            .and_then(Role::acting_manager)
            .and_then(|m| m.store_status())
            .and_then(|s| s.failure);
        let Some(why) = failure else { return };
        tracing::error!(error = %why, "this manager's Raft store stopped; stopping the role and starting it again from its directory");
        self.background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stop();
        stop_role(role.take()).await;
        *role = Some(Role::Restarting(Restart::new(why)));
    }
}

/// Shuts a role down, keeping its files.
pub(super) async fn stop_role(role: Option<Role>) {
    match role {
        Some(Role::Manager(m)) => {
            m.shutdown().await;
            info!("cluster manager stopped");
        }
        Some(Role::Worker(w)) => {
            w.shutdown().await;
            info!("cluster worker stopped");
        }
        Some(Role::Locked(_)) | Some(Role::Restarting(_)) | None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_a_synced_write_in_the_raft_directory_left_behind_by_nobody() {
        let dir = std::env::temp_dir().join(format!("shoal-room-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        // No Raft directory: nothing to check.
        room(&dir).unwrap();
        std::fs::create_dir(dir.join("raft")).unwrap();
        room(&dir).unwrap();
        let left = std::fs::read_dir(dir.join("raft")).unwrap().count();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(left, 0, "the probe is removed");
    }

    #[test]
    fn the_backoff_doubles_to_its_bound_and_the_message_says_why() {
        let mut r = Restart::new("storage error: No space left on device".into());
        assert_eq!(r.backoff, FIRST_BACKOFF);
        for _ in 0..10 {
            r.failed_again("still full".into());
        }
        assert_eq!(r.backoff, MAX_BACKOFF);
        let m = r.message();
        assert!(m.contains("No space left on device"), "{m}");
        assert!(m.contains("still full"), "{m}");
    }
}
