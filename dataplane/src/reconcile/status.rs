//! The one status writer of every reconciler: `<data_dir>/<name>.json`, for people and
//! tools (nothing in the agent reads it back). Each write carries a generation that
//! grows with every apply (a reader can wait for the next one) and the time it was
//! written, and replaces the file atomically (a reader sees the old file or the new).
use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Serialize;
use tracing::warn;

/// A reconciler's status file.
#[derive(Debug)]
pub struct StatusFile {
    path: PathBuf,
    generation: u64,
}

impl StatusFile {
    /// `dir/<name>.json`. A file left by an earlier agent is removed: it describes a
    /// process that is gone, and a reader waiting for this agent's first apply must not
    /// take it for one.
    pub fn new(dir: &Path, name: &str) -> Self {
        let path = dir.join(format!("{name}.json"));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %path.display(), error = %e, "removing an old status file"),
        }
        Self {
            path,
            generation: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `status` (an object) with `generation` and `applied_at_ms` added. A
    /// failure is logged: the status is for people, the dataplane goes on.
    pub fn write<T: Serialize>(&mut self, status: &T) {
        self.generation += 1;
        if let Err(e) = self.try_write(status) {
            warn!(path = %self.path.display(), error = %e, "writing a status file");
        }
    }

    fn try_write<T: Serialize>(&self, status: &T) -> io::Result<()> {
        let mut value = serde_json::to_value(status).map_err(io::Error::other)?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("generation".into(), self.generation.into());
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            obj.insert("applied_at_ms".into(), now.into());
        }
        let mut body = serde_json::to_vec_pretty(&value).map_err(io::Error::other)?;
        body.push(b'\n');
        write_atomic(&self.path, &body)
    }
}

/// Writes `body` to `path` through a temporary file renamed into place. No fsync: every
/// file written this way is recomputed after a crash. Owner-only, like everything in the
/// agent's data directory: the file is created 0600 (a missing directory 0700).
pub fn write_atomic(path: &Path, body: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?
        .write_all(body)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_grows_and_the_body_keeps_its_fields() {
        let dir = std::env::temp_dir().join(format!("shoal-status-{}", std::process::id()));
        let mut file = StatusFile::new(&dir, "vip");
        file.write(&serde_json::json!({"vips": 2, "refused": null}));
        file.write(&serde_json::json!({"vips": 3, "refused": "bad"}));
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("vip.json")).unwrap()).unwrap();
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(v["generation"], 2);
        assert_eq!(v["vips"], 3);
        assert_eq!(v["refused"], "bad");
        assert!(v["applied_at_ms"].as_u64().unwrap() > 0);
        assert_eq!(left, ["vip.json"]);
    }
}
