//! Secrets and configs (`secret create`, `config create`): named, immutable data that a
//! service's tasks get as files, and a service's references to them.
//!
//! Both kinds have one shape, as in Swarm (a name, labels, the data); what differs is
//! how far they travel: a secret's data never leaves the managers but for a node that
//! runs a task using it (see the node view), and never in a reply to a client; a
//! config's data is shown by `config inspect`. In the store, the data sits in the Raft
//! log and snapshots, which are sealed with each manager's data key.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Swarm's bounds on the data: more than 0 bytes and less than 500 KiB for a secret,
/// 1000 KiB for a config.
pub const MAX_SECRET_BYTES: usize = 500 * 1024;
pub const MAX_CONFIG_BYTES: usize = 1000 * 1024;

/// Where a secret's relative target lands in the container, as in Swarm.
pub const SECRETS_DIR: &str = "/run/secrets";

/// Swarm's default mode of a secret's or config's file.
pub const DEFAULT_FILE_MODE: u32 = 0o444;

/// A secret or a config.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataObject {
    pub id: String,
    /// Unique among objects of its kind.
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The content (base64 in JSON).
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
    /// Milliseconds since the epoch, chosen by the proposer.
    #[serde(default)]
    pub created_ms: u64,
    #[serde(default)]
    pub updated_ms: u64,
    /// Store version at this object's last change (set by `apply`, ignored on input).
    #[serde(default)]
    pub version: u64,
}

/// Never prints the data (a secret's would end up in a log).
impl fmt::Debug for DataObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataObject")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .field("version", &self.version)
            .finish()
    }
}

impl DataObject {
    /// Why `data` cannot be the data of a `kind` (`secret` or `config`), in Swarm's
    /// words; None: it can.
    pub fn data_problem(kind: &str, data: &[u8]) -> Option<String> {
        let max = if kind == "config" {
            MAX_CONFIG_BYTES
        } else {
            MAX_SECRET_BYTES
        };
        if data.is_empty() || data.len() >= max {
            Some(format!(
                "{kind} data must be larger than 0 and less than {max} bytes ({}KB); it is {} bytes",
                max / 1024,
                data.len()
            ))
        } else {
            None
        }
    }
}

/// A service's use of a secret or config: which one, and the file its tasks get
/// (Swarm's `SecretReference` / `ConfigReference` with its `File` target).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReference {
    /// The object's ID (the store refuses a service naming an unknown one).
    pub id: String,
    /// The object's name, as the service was given it.
    pub name: String,
    /// The file in the container: absolute, or (a secret's) relative to
    /// [`SECRETS_DIR`].
    pub target: String,
    /// Owner and group, numeric, as strings (Swarm's form).
    pub uid: String,
    pub gid: String,
    pub mode: u32,
}

impl FileReference {
    /// The absolute path of the file in the container.
    pub fn container_path(&self) -> String {
        if self.target.starts_with('/') {
            self.target.clone()
        } else {
            format!("{SECRETS_DIR}/{}", self.target)
        }
    }

    /// Why this reference cannot be used; None: it can.
    pub fn problem(&self) -> Option<String> {
        if self.target.is_empty() {
            return Some(format!("{}: the target must not be empty", self.name));
        }
        let path = self.container_path();
        if path
            .split('/')
            .any(|part| part == ".." || part == "." && path != "/")
            || path.ends_with('/')
            || path.contains('\0')
        {
            return Some(format!(
                "{}: target {:?} is not a file path",
                self.name, self.target
            ));
        }
        for (what, v) in [("uid", &self.uid), ("gid", &self.gid)] {
            if v.parse::<u32>().is_err() {
                return Some(format!("{}: {what} {v:?} is not a number", self.name));
            }
        }
        if self.mode > 0o777 {
            return Some(format!(
                "{}: mode {:o} is not a file mode",
                self.name, self.mode
            ));
        }
        None
    }
}

/// Checks a service's references of one kind: each valid, no two on the same file.
pub fn check_references(kind: &str, refs: &[FileReference]) -> Result<(), String> {
    let mut paths = std::collections::BTreeSet::new();
    for r in refs {
        if let Some(p) = r.problem() {
            return Err(format!("{kind} {p}"));
        }
        if !paths.insert(r.container_path()) {
            return Err(format!(
                "{kind} target {} is used more than once",
                r.container_path()
            ));
        }
    }
    Ok(())
}

mod base64_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(target: &str) -> FileReference {
        FileReference {
            id: "s1".into(),
            name: "pw".into(),
            target: target.into(),
            uid: "0".into(),
            gid: "0".into(),
            mode: 0o400,
        }
    }

    #[test]
    fn relative_targets_are_under_run_secrets() {
        assert_eq!(
            reference("mysql_pw").container_path(),
            "/run/secrets/mysql_pw"
        );
        assert_eq!(reference("/etc/app.conf").container_path(), "/etc/app.conf");
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in ["", "../x", "/etc/", "a/../../b"] {
            assert!(reference(bad).problem().is_some(), "{bad:?}");
        }
        let mut r = reference("x");
        r.uid = "root".into();
        assert!(r.problem().unwrap().contains("uid"));
        let mut r = reference("x");
        r.mode = 0o1777;
        assert!(r.problem().is_some());
        assert!(
            check_references("secret", &[reference("a"), reference("/run/secrets/a")])
                .unwrap_err()
                .contains("more than once")
        );
        assert!(check_references("secret", &[reference("a"), reference("b")]).is_ok());
    }

    #[test]
    fn data_is_bounded_as_swarm_does_and_never_printed() {
        assert!(DataObject::data_problem("secret", b"").is_some());
        assert!(
            DataObject::data_problem("secret", &vec![b'x'; MAX_SECRET_BYTES])
                .unwrap()
                .contains("secret data must be larger than 0 and less than 512000 bytes (500KB)")
        );
        assert!(DataObject::data_problem("secret", &vec![b'x'; MAX_SECRET_BYTES - 1]).is_none());
        assert!(DataObject::data_problem("config", &vec![b'x'; MAX_SECRET_BYTES]).is_none());
        let o = DataObject {
            id: "i".into(),
            name: "n".into(),
            labels: BTreeMap::new(),
            data: b"hunter2".to_vec(),
            created_ms: 0,
            updated_ms: 0,
            version: 0,
        };
        assert!(!format!("{o:?}").contains("hunter2"));
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(json["data"], "aHVudGVyMg==");
        assert_eq!(serde_json::from_value::<DataObject>(json).unwrap(), o);
    }
}
