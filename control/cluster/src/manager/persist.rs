//! The node's cluster files in its data directory.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ClusterError, NodeInfo, Role, Timings};
use crate::pki::{ClusterCa, NodeIdentity};
use crate::store::RaftId;

const IDENTITY: &str = "identity.json";
const CA_KEY: &str = "ca-key.pem";
const LOCAL: &str = "node.json";
const RAFT: &str = "raft";

/// What a node keeps about itself besides its identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Local {
    /// Where the API listens (as bound, for a manager).
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
    pub info: NodeInfo,
    /// Managers' advertise addresses, last known.
    pub managers: Vec<String>,
    /// The node's member ID while it is a manager.
    pub raft_id: Option<RaftId>,
    pub timings: Timings,
}

fn files_error(path: &Path, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Files {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes `path` atomically (temporary file, then rename), owner-only.
fn write_private(path: &Path, data: &[u8]) -> Result<(), ClusterError> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| files_error(path, e))
}

pub(crate) fn raft_dir(dir: &Path) -> PathBuf {
    dir.join(RAFT)
}

pub(crate) fn in_cluster(dir: &Path) -> bool {
    dir.join(IDENTITY).exists()
}

pub(crate) fn ensure_dir(dir: &Path) -> Result<(), ClusterError> {
    std::fs::create_dir_all(dir).map_err(|e| files_error(dir, e))?;
    Ok(())
}

pub(crate) fn save_identity(dir: &Path, identity: &NodeIdentity) -> Result<(), ClusterError> {
    let json = serde_json::to_vec(identity).map_err(|e| files_error(dir, e))?;
    write_private(&dir.join(IDENTITY), &json)
}

pub(crate) fn load_identity(dir: &Path) -> Result<NodeIdentity, ClusterError> {
    let path = dir.join(IDENTITY);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ClusterError::NotInCluster)
        }
        Err(e) => return Err(files_error(&path, e)),
    };
    serde_json::from_slice(&text).map_err(|e| files_error(&path, e))
}

pub(crate) fn save_ca_key(dir: &Path, key_pem: &str) -> Result<(), ClusterError> {
    write_private(&dir.join(CA_KEY), key_pem.as_bytes())
}

pub(crate) fn load_ca(dir: &Path, identity: &NodeIdentity) -> Result<ClusterCa, ClusterError> {
    let path = dir.join(CA_KEY);
    let key = std::fs::read_to_string(&path).map_err(|e| files_error(&path, e))?;
    Ok(ClusterCa::from_pem(&identity.ca().pem(), &key)?)
}

pub(crate) fn remove_ca_key(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(CA_KEY));
}

pub(crate) fn save_local(dir: &Path, local: &Local) -> Result<(), ClusterError> {
    let json = serde_json::to_vec_pretty(local).map_err(|e| files_error(dir, e))?;
    write_private(&dir.join(LOCAL), &json)
}

pub(crate) fn load_local(dir: &Path) -> Result<Local, ClusterError> {
    let path = dir.join(LOCAL);
    let text = std::fs::read(&path).map_err(|e| files_error(&path, e))?;
    serde_json::from_slice(&text).map_err(|e| files_error(&path, e))
}

pub(crate) fn local_role(dir: &Path) -> Result<Option<Role>, ClusterError> {
    match load_identity(dir) {
        Ok(id) => Ok(Some(id.role())),
        Err(ClusterError::NotInCluster) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the node's cluster files (and nothing else in `dir`).
pub(crate) fn wipe(dir: &Path) -> Result<(), ClusterError> {
    let _ = std::fs::remove_dir_all(dir.join(RAFT));
    for name in [CA_KEY, LOCAL, IDENTITY] {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(files_error(&dir.join(name), e)),
        }
    }
    Ok(())
}
