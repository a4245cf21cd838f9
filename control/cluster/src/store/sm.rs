//! Openraft's state machine: the [`ClusterState`] plus what Raft needs beside it (last
//! applied log ID, last membership) and the snapshot.
//!
//! The state itself lives in memory. What makes it durable is the log plus `snapshot.json`
//! (written with fsync before openraft may purge the log it covers): at start the state is
//! the snapshot's, and openraft re-applies the log from there to the committed index.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::log::write_atomic;
use super::state::{ApplyResult, ClusterState};
use super::{RaftId, TypeConfig};

const SNAPSHOT_FILE: &str = "snapshot.json";

#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<RaftId, BasicNode>,
    /// The serialized [`ClusterState`].
    data: Vec<u8>,
}

pub(crate) struct Data {
    pub(crate) state: ClusterState,
    pub(crate) last_applied: Option<LogId<RaftId>>,
    pub(crate) membership: StoredMembership<RaftId, BasicNode>,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

pub(crate) struct Shared {
    dir: PathBuf,
    data: RwLock<Data>,
    version: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Data> {
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Data> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// Openraft's state machine; clones share one state.
#[derive(Clone)]
pub(crate) struct StateMachineStore {
    pub(crate) shared: Arc<Shared>,
}

impl StateMachineStore {
    /// Starts from the snapshot in `dir`, if there is one.
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join(SNAPSHOT_FILE);
        let snapshot: Option<StoredSnapshot> = match std::fs::read(&path) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| io::Error::other(format!("parse {}: {e}", path.display())))?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut data = Data {
            state: ClusterState::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
            snapshots_built: 0,
        };
        if let Some(s) = snapshot {
            data.state = serde_json::from_slice(&s.data)
                .map_err(|e| io::Error::other(format!("parse {}: {e}", path.display())))?;
            data.last_applied = s.meta.last_log_id;
            data.membership = s.meta.last_membership.clone();
            data.snapshot = Some(s);
        }
        let (version, _) = watch::channel(data.state.version);
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                data: RwLock::new(data),
                version,
            }),
        })
    }

    fn persist(&self, snapshot: &StoredSnapshot) -> io::Result<()> {
        let bytes = serde_json::to_vec(snapshot).map_err(io::Error::other)?;
        write_atomic(&self.shared.dir.join(SNAPSHOT_FILE), &bytes, true)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<RaftId>> {
        let stored = {
            let mut d = self.shared.write();
            d.snapshots_built += 1;
            let data =
                serde_json::to_vec(&d.state).map_err(|e| StorageIOError::read_state_machine(&e))?;
            let snapshot_id = match d.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, d.snapshots_built),
                None => format!("0-0-{}", d.snapshots_built),
            };
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: d.last_applied,
                    last_membership: d.membership.clone(),
                    snapshot_id,
                },
                data,
            }
        };
        // Durable before openraft may purge the log the snapshot covers.
        self.persist(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(stored.meta.signature()), &e))?;
        self.shared.write().snapshot = Some(stored.clone());
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<RaftId>>, StoredMembership<RaftId, BasicNode>), StorageError<RaftId>>
    {
        let d = self.shared.read();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError<RaftId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let version = {
            let mut d = self.shared.write();
            for entry in entries {
                d.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => ApplyResult::Applied {
                        version: d.state.version,
                    },
                    EntryPayload::Normal(ref command) => d.state.apply(command),
                    EntryPayload::Membership(m) => {
                        d.membership = StoredMembership::new(Some(entry.log_id), m);
                        ApplyResult::Applied {
                            version: d.state.version,
                        }
                    }
                };
                out.push(result);
            }
            d.state.version
        };
        self.shared.version.send_replace(version);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<RaftId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<RaftId>> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        let state: ClusterState = serde_json::from_slice(&stored.data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.persist(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let version = state.version;
        {
            let mut d = self.shared.write();
            d.state = state;
            d.last_applied = meta.last_log_id;
            d.membership = meta.last_membership.clone();
            d.snapshot = Some(stored);
        }
        self.shared.version.send_replace(version);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<RaftId>> {
        Ok(self.shared.read().snapshot.clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
