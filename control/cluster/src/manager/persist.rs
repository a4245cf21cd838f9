//! The node's cluster files in its data directory, all 0600 in 0700 directories
//! ([`crate::private_fs`]).
//!
//! A manager's secrets are sealed with its data key ([`DataKey`], see `keys`): the node
//! key inside `identity.json` (`sealed_key`), the root CA (`ca-key.sealed`: its
//! certificate and key; an older agent's holds the key alone, the certificate being the
//! identity's root), and the store under `raft/`. A worker's node key is kept in the clear (0600): it has no data
//! key, and nothing it holds opens the cluster's secrets. Plain files of an older agent
//! (`key_pem` in a manager's identity, `ca-key.pem`) are sealed when the manager starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{keys, ClusterError, NodeInfo, Role, Timings};
use crate::pki::{ClusterCa, NodeCertificate, NodeIdentity};
use crate::private_fs;
use crate::seal::DataKey;
use crate::store::RaftId;

const IDENTITY: &str = "identity.json";
/// The CA key of an older agent, in the clear; sealed into [`CA_KEY`] at start.
const PLAIN_CA_KEY: &str = "ca-key.pem";
const CA_KEY: &str = "ca-key.sealed";
const LOCAL: &str = "node.json";
const RAFT: &str = "raft";
/// Associated data of the sealed node key and CA key.
const NODE_KEY_CONTEXT: &[u8] = b"shoal node key v1";
const CA_KEY_CONTEXT: &[u8] = b"shoal ca key v1";
const KEY_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";

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

/// Writes `path` atomically (temporary file, then rename), durably, owner-only.
fn write_private(path: &Path, data: &[u8]) -> Result<(), ClusterError> {
    private_fs::write_atomic(path, data, true).map_err(|e| files_error(path, e))
}

/// `identity.json`: the certificates, and the node key either in the clear (a worker)
/// or sealed with the manager's data key. Older agents wrote `key_pem` for managers too.
#[derive(Serialize, Deserialize)]
struct StoredIdentity {
    cert_pem: String,
    ca_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_pem: Option<String>,
    /// base64 of the sealed key PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_key: Option<String>,
    /// During a root CA rotation: the next root and its certificate cross-signed by
    /// the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cross_signed_pem: Option<String>,
}

pub(crate) fn raft_dir(dir: &Path) -> PathBuf {
    dir.join(RAFT)
}

pub(crate) fn in_cluster(dir: &Path) -> bool {
    dir.join(IDENTITY).exists()
}

/// Creates the node's cluster directory (0700) and narrows what an older agent left in
/// it to owner-only.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), ClusterError> {
    private_fs::create_dir(dir).map_err(|e| files_error(dir, e))?;
    let narrowed = private_fs::tighten(dir).map_err(|e| files_error(dir, e))?;
    if narrowed > 0 {
        tracing::info!(dir = %dir.display(), narrowed, "made the cluster files owner-only");
    }
    Ok(())
}

/// Saves the node's identity: a manager's key sealed with `data_key` (which it must
/// have), a worker's in the clear.
pub(crate) fn save_identity(
    dir: &Path,
    identity: &NodeIdentity,
    data_key: Option<&DataKey>,
) -> Result<(), ClusterError> {
    let path = dir.join(IDENTITY);
    let key_pem = identity.key().to_pem_secret();
    let (key_pem, sealed_key) = match (identity.role(), data_key) {
        (Role::Worker, _) => (Some(key_pem), None),
        (Role::Manager, Some(data_key)) => {
            let sealed = data_key
                .seal(NODE_KEY_CONTEXT, key_pem.as_bytes())
                .map_err(|e| files_error(&path, e))?;
            (None, Some(STANDARD.encode(sealed)))
        }
        (Role::Manager, None) => {
            return Err(files_error(
                &path,
                "a manager's node key is only saved sealed, and there is no data key",
            ))
        }
    };
    let next = identity.trust().next();
    let stored = StoredIdentity {
        cert_pem: identity.certificate().pem(),
        ca_pem: identity.ca().pem(),
        key_pem,
        sealed_key,
        next_ca_pem: next.map(|n| n.cert().pem()),
        cross_signed_pem: next.map(|n| n.cross_signed_pem()),
    };
    let json = serde_json::to_vec(&stored).map_err(|e| files_error(dir, e))?;
    write_private(&path, &json)
}

fn read_identity(dir: &Path) -> Result<StoredIdentity, ClusterError> {
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

/// Loads the node's identity; a sealed key needs the manager's `data_key`. A manager's
/// key found in the clear (an older agent's) is sealed on the way.
pub(crate) fn load_identity(
    dir: &Path,
    data_key: Option<&DataKey>,
) -> Result<NodeIdentity, ClusterError> {
    let path = dir.join(IDENTITY);
    let stored = read_identity(dir)?;
    let key_pem = match (&stored.key_pem, &stored.sealed_key, data_key) {
        (Some(pem), _, _) => pem.clone(),
        (None, Some(sealed), Some(data_key)) => {
            let sealed = STANDARD
                .decode(sealed)
                .map_err(|e| files_error(&path, format!("the sealed node key: {e}")))?;
            let plain = data_key
                .open(NODE_KEY_CONTEXT, &sealed)
                .map_err(|e| files_error(&path, format!("the sealed node key: {e}")))?;
            String::from_utf8(plain).map_err(|e| files_error(&path, e))?
        }
        (None, Some(_), None) => return Err(ClusterError::Locked),
        (None, None, _) => return Err(files_error(&path, "no node key")),
    };
    let next = match (&stored.next_ca_pem, &stored.cross_signed_pem) {
        (Some(cert), Some(cross)) => Some((cert.as_str(), cross.as_str())),
        (None, None) => None,
        _ => {
            return Err(files_error(
                &path,
                "a next root CA without its cross-signed certificate, or the reverse",
            ))
        }
    };
    let identity =
        NodeIdentity::from_pem_rotating(&key_pem, &stored.cert_pem, &stored.ca_pem, next)
            .map_err(|e| files_error(&path, e))?;
    if stored.key_pem.is_some() && identity.role() == Role::Manager {
        if let Some(data_key) = data_key {
            save_identity(dir, &identity, Some(data_key))?;
            tracing::info!(path = %path.display(), "sealed the manager's node key an older agent left in the clear");
        }
    }
    Ok(identity)
}

/// Saves the root CA, certificate and key (managers only), sealed with the manager's
/// data key. The certificate goes with the key: after a rotation the manager's identity
/// may name another root for a moment than the one it signs with.
pub(crate) fn save_ca(dir: &Path, ca: &ClusterCa, data_key: &DataKey) -> Result<(), ClusterError> {
    let path = dir.join(CA_KEY);
    let plain = format!("{}{}", ca.cert_pem(), ca.key_pem_secret());
    let sealed = data_key
        .seal(CA_KEY_CONTEXT, plain.as_bytes())
        .map_err(|e| files_error(&path, e))?;
    write_private(&path, &sealed)?;
    // An older agent's plain copy goes once the sealed one is in place.
    let _ = std::fs::remove_file(dir.join(PLAIN_CA_KEY));
    Ok(())
}

/// The cluster's root CA with its key, opened with the manager's data key (a file that
/// holds the key alone, an older agent's, goes with the identity's root). An older
/// agent's plain `ca-key.pem` is sealed on the way.
pub(crate) fn load_ca(
    dir: &Path,
    identity: &NodeIdentity,
    data_key: &DataKey,
) -> Result<ClusterCa, ClusterError> {
    let path = dir.join(CA_KEY);
    let key = match std::fs::read(&path) {
        Ok(sealed) => {
            let plain = data_key
                .open(CA_KEY_CONTEXT, &sealed)
                .map_err(|e| files_error(&path, e))?;
            String::from_utf8(plain).map_err(|e| files_error(&path, e))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let plain_path = dir.join(PLAIN_CA_KEY);
            let key =
                std::fs::read_to_string(&plain_path).map_err(|e| files_error(&plain_path, e))?;
            let ca = ClusterCa::from_pem(&identity.ca().pem(), &key)?;
            save_ca(dir, &ca, data_key)?;
            tracing::info!(path = %path.display(), "sealed the CA key an older agent left in the clear");
            return Ok(ca);
        }
        Err(e) => return Err(files_error(&path, e)),
    };
    match key.find(KEY_BEGIN) {
        Some(at) if key.contains("-----BEGIN CERTIFICATE-----") => {
            Ok(ClusterCa::from_pem(&key[..at], &key[at..]).map_err(|e| files_error(&path, e))?)
        }
        _ => Ok(ClusterCa::from_pem(&identity.ca().pem(), &key)?),
    }
}

pub(crate) fn remove_ca_key(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(CA_KEY));
    let _ = std::fs::remove_file(dir.join(PLAIN_CA_KEY));
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

/// The role in the node's certificate (no key needed), `None` outside a cluster.
pub(crate) fn local_role(dir: &Path) -> Result<Option<Role>, ClusterError> {
    match read_identity(dir) {
        Ok(stored) => {
            let cert = NodeCertificate::from_pem(&stored.cert_pem)
                .map_err(|e| files_error(&dir.join(IDENTITY), e))?;
            Ok(Some(cert.role()))
        }
        Err(ClusterError::NotInCluster) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the node's cluster files (and nothing else in `dir`).
pub(crate) fn wipe(dir: &Path) -> Result<(), ClusterError> {
    let _ = std::fs::remove_dir_all(dir.join(RAFT));
    for name in [CA_KEY, PLAIN_CA_KEY, keys::KEY_FILE, LOCAL, IDENTITY] {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(files_error(&dir.join(name), e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{new_node_id, IssueOptions};

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "shoal-persist-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        private_fs::create_dir(&d).unwrap();
        d
    }

    fn identity(ca: &ClusterCa, role: Role) -> NodeIdentity {
        let node_id = new_node_id();
        let (key, csr) = NodeIdentity::generate_key_and_csr(&node_id).unwrap();
        let cert = ca
            .issue(&csr, &node_id, role, &IssueOptions::default())
            .unwrap();
        NodeIdentity::new(key, cert, ca.certificate().clone()).unwrap()
    }

    /// Every file under `dir`, read whole.
    fn all_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(all_bytes(&path));
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
        out
    }

    fn has(bytes: &[u8], needle: &str) -> bool {
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn an_older_managers_plain_keys_are_sealed_and_a_workers_stays_plain() {
        let dir = tempdir("migrate");
        let ca = ClusterCa::new(&new_node_id()).unwrap();
        let manager = identity(&ca, Role::Manager);
        // As older agents wrote them: the key in the clear, the CA key as PEM.
        std::fs::write(dir.join(IDENTITY), serde_json::to_vec(&manager).unwrap()).unwrap();
        std::fs::write(dir.join(PLAIN_CA_KEY), ca.key_pem_secret()).unwrap();
        assert!(all_bytes(&dir).iter().any(|(_, b)| has(b, "PRIVATE KEY")));

        assert_eq!(local_role(&dir).unwrap(), Some(Role::Manager));
        let data_key = DataKey::generate();
        let loaded = load_identity(&dir, Some(&data_key)).unwrap();
        assert_eq!(loaded.node_id(), manager.node_id());
        let opened = load_ca(&dir, &loaded, &data_key).unwrap();
        assert_eq!(opened.key_pem_secret(), ca.key_pem_secret());
        assert!(!dir.join(PLAIN_CA_KEY).exists());
        for (path, bytes) in all_bytes(&dir) {
            assert!(
                !has(&bytes, "PRIVATE KEY"),
                "{} holds a key in the clear",
                path.display()
            );
        }
        // Sealed now: no data key, no identity; the role still reads from the certificate.
        assert!(matches!(
            load_identity(&dir, None),
            Err(ClusterError::Locked)
        ));
        assert_eq!(local_role(&dir).unwrap(), Some(Role::Manager));
        assert!(load_identity(&dir, Some(&DataKey::generate())).is_err());
        assert_eq!(
            load_identity(&dir, Some(&data_key)).unwrap().node_id(),
            manager.node_id()
        );

        let worker = identity(&ca, Role::Worker);
        save_identity(&dir, &worker, Some(&data_key)).unwrap();
        assert!(has(
            &std::fs::read(dir.join(IDENTITY)).unwrap(),
            "PRIVATE KEY"
        ));
        assert_eq!(load_identity(&dir, None).unwrap().role(), Role::Worker);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
