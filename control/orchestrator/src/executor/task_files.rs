//! Secrets and configs as files in a task's container, never on the node's disk.
//!
//! The agent mounts a tmpfs of its own (owner-only) at its task files directory; a task
//! that uses secrets or configs gets a directory there, `<dir>/<task ID>/`, holding one
//! file per reference with the reference's owner and mode. The container bind-mounts
//! each file read-only at its target (`/run/secrets/<target>`, or the absolute target).
//! The data comes from the node's view of the store (held in memory), so it reaches
//! only the tmpfs; the task's directory goes when its container does (see
//! [`TaskFiles::sweep`]).
//!
//! ```text
//!   node view (memory) ──write──▶ tmpfs <dir>/<task>/{secret-0,config-0} ──bind ro──▶
//!                                                         /run/secrets/<target>
//! ```

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use bollard::models::{Mount, MountType};
use shoal_cluster::store::{ClusterState, FileReference, ServiceSpec};

/// `statfs`'s `f_type` of a tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The node's task files: a tmpfs at `dir`.
#[derive(Debug, Clone)]
pub struct TaskFiles {
    dir: PathBuf,
}

impl TaskFiles {
    /// Mounts a tmpfs at `dir` (made, owner-only) unless one is there already (an agent
    /// restarted keeps it, and the files of the tasks still running).
    pub fn mount(dir: &Path) -> io::Result<TaskFiles> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        if !is_own_tmpfs(dir)? {
            let target = CString::new(dir.as_os_str().as_bytes())?;
            let fstype = CString::new("tmpfs")?;
            let options = CString::new("mode=0700,size=64m")?;
            // SAFETY: every pointer is to a NUL-terminated string that outlives the call.
            let rc = unsafe {
                libc::mount(
                    fstype.as_ptr(),
                    target.as_ptr(),
                    fstype.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    options.as_ptr().cast(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(TaskFiles {
            dir: dir.to_path_buf(),
        })
    }

    /// Unmounts the tmpfs at `dir` (every task's files go with it) and removes the
    /// directory; whether there was anything to remove (`shoal agent cleanup`).
    pub fn remove(dir: &Path) -> io::Result<bool> {
        if !dir.exists() {
            return Ok(false);
        }
        if is_own_tmpfs(dir)? {
            let target = CString::new(dir.as_os_str().as_bytes())?;
            // SAFETY: the path is NUL-terminated and outlives the call.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        fs::remove_dir_all(dir)?;
        Ok(true)
    }

    fn task_dir(&self, task_id: &str) -> PathBuf {
        self.dir.join(task_id)
    }

    /// Writes the files of task `task_id` running `spec` from the data in `state` (the
    /// node's view), and returns the container's bind mounts. Fails naming a secret or
    /// config the view does not hold.
    pub fn write(
        &self,
        task_id: &str,
        spec: &ServiceSpec,
        state: &ClusterState,
    ) -> Result<Vec<Mount>, String> {
        if spec.secrets.is_empty() && spec.configs.is_empty() {
            return Ok(Vec::new());
        }
        if task_id.is_empty() || task_id.contains(['/', '.']) {
            return Err(format!("task ID {task_id:?} cannot name a directory"));
        }
        let dir = self.task_dir(task_id);
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new()
            .mode(0o711)
            .create(&dir)
            .map_err(|e| format!("making {}: {e}", dir.display()))?;
        let mut mounts = Vec::new();
        for (kind, refs, objects) in [
            ("secret", &spec.secrets, &state.secrets),
            ("config", &spec.configs, &state.configs),
        ] {
            for (i, r) in refs.iter().enumerate() {
                let object = objects.get(&r.id).ok_or_else(|| {
                    format!("{kind} {} ({}) is not among this node's", r.name, r.id)
                })?;
                let path = dir.join(format!("{kind}-{i}"));
                write_file(&path, &object.data, r)
                    .map_err(|e| format!("{kind} {}: writing {}: {e}", r.name, path.display()))?;
                mounts.push(Mount {
                    target: Some(r.container_path()),
                    source: Some(path.display().to_string()),
                    typ: Some(MountType::BIND),
                    read_only: Some(true),
                    ..Default::default()
                });
            }
        }
        Ok(mounts)
    }

    /// Removes the files of every task but those in `keep` (tasks with a container here,
    /// or starting).
    pub fn sweep(&self, keep: &HashSet<&str>) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !keep.contains(name.to_string_lossy().as_ref()) {
                if let Err(e) = fs::remove_dir_all(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e, "removing a task's files");
                }
            }
        }
    }
}

/// Writes `data` at `path` (new), owned and moded as `r` says.
fn write_file(path: &Path, data: &[u8], r: &FileReference) -> io::Result<()> {
    use std::io::Write as _;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    let uid: u32 = r.uid.parse().map_err(|_| io::Error::other("bad uid"))?;
    let gid: u32 = r.gid.parse().map_err(|_| io::Error::other("bad gid"))?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    f.set_permissions(fs::Permissions::from_mode(r.mode))?;
    Ok(())
}

/// Whether a tmpfs is mounted at `dir` itself (not merely on a tmpfs such as /run).
fn is_own_tmpfs(dir: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if fs::metadata(dir)?.dev() == fs::metadata(parent)?.dev() {
        return Ok(false);
    }
    let path = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == TMPFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shoal_cluster::store::DataObject;

    use super::*;

    fn object(id: &str, data: &[u8]) -> DataObject {
        DataObject {
            id: id.into(),
            name: format!("name-{id}"),
            labels: BTreeMap::new(),
            data: data.to_vec(),
            created_ms: 0,
            updated_ms: 0,
            version: 0,
        }
    }

    fn reference(id: &str, target: &str, mode: u32) -> FileReference {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        FileReference {
            id: id.into(),
            name: format!("name-{id}"),
            target: target.into(),
            uid: uid.to_string(),
            gid: gid.to_string(),
            mode,
        }
    }

    #[test]
    fn files_get_their_data_mode_and_mount_and_go_with_their_task() {
        let root = std::env::temp_dir().join(format!("shoal-task-files-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        let files = TaskFiles { dir: root.clone() };
        let mut state = ClusterState::default();
        state
            .secrets
            .insert("s1".into(), object("s1", b"hunter2\n"));
        state
            .configs
            .insert("c1".into(), object("c1", b"version: 0.1\n"));
        let mut spec: ServiceSpec = serde_json::from_value(serde_json::json!({
            "name": "db", "image": "busybox", "mode": {"replicated": {"replicas": 1}}
        }))
        .unwrap();
        spec.secrets = vec![reference("s1", "mysql_pw", 0o400)];
        spec.configs = vec![reference("c1", "/etc/app/config.yml", 0o444)];
        let mounts = files.write("task1", &spec, &state).unwrap();
        let targets: Vec<_> = mounts.iter().map(|m| m.target.clone().unwrap()).collect();
        assert_eq!(targets, ["/run/secrets/mysql_pw", "/etc/app/config.yml"]);
        assert!(mounts.iter().all(|m| m.read_only == Some(true)));
        let secret = PathBuf::from(mounts[0].source.clone().unwrap());
        assert_eq!(fs::read(&secret).unwrap(), b"hunter2\n");
        assert_eq!(
            fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o400
        );
        // A reference the view does not hold: refused, naming it.
        spec.secrets.push(reference("ghost", "x", 0o400));
        let err = files.write("task2", &spec, &state).unwrap_err();
        assert!(err.contains("name-ghost"), "{err}");
        // Only the tasks kept keep their files.
        files.sweep(&HashSet::from(["task2"]));
        assert!(!root.join("task1").exists());
        assert!(root.join("task2").exists());
        files.sweep(&HashSet::new());
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
        fs::remove_dir_all(&root).unwrap();
    }
}
