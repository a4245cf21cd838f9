//! Owner-only files and directories: what the node writes that holds a secret (the
//! store's log and snapshot, its vote, node and CA keys, the managers' data key) is
//! created 0600 in directories created 0700, from the first byte: a file is opened with
//! its mode, never made and then narrowed, so no other local user can open it in
//! between. [`tighten`] narrows what an older agent left with looser modes.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every directory made here.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file made here.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents, each 0700 (existing ones are left as they are:
/// [`tighten`] is for those).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Opens `path` for appending and reading, created 0600 if missing.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Creates (or truncates) `path` for writing, 0600 if it is new.
pub fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Writes `bytes` to `path` through a 0600 temporary file beside it and a rename, so a
/// reader sees the old content or the new, never half; `durable` adds the fsyncs of the
/// file and of the directory (the rename).
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut f = create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

/// Removes group and other permissions from `root` and everything under it (symbolic
/// links are not followed): what an older agent made 0644/0755 becomes 0600/0700.
/// Returns how many entries it changed.
pub fn tighten(root: &Path) -> io::Result<usize> {
    let meta = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() {
        return Ok(0);
    }
    let mut changed = 0;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        fs::set_permissions(root, fs::Permissions::from_mode(mode & !0o077))?;
        changed += 1;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(root)? {
            changed += tighten(&entry?.path())?;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "shoal-private-fs-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn made_owner_only() {
        let dir = tempdir("made");
        create_dir(&dir.join("a/b")).unwrap();
        write_atomic(&dir.join("a/b/f"), b"x", true).unwrap();
        drop(open_append(&dir.join("a/log")).unwrap());
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("a")), 0o700);
        assert_eq!(mode(&dir.join("a/b")), 0o700);
        assert_eq!(mode(&dir.join("a/b/f")), 0o600);
        assert_eq!(mode(&dir.join("a/log")), 0o600);
        assert!(!dir.join("a/b/f.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tighten_narrows_an_old_tree_and_leaves_links_alone() {
        let dir = tempdir("tighten");
        fs::create_dir_all(dir.join("raft")).unwrap();
        fs::write(dir.join("raft/log.jsonl"), "x").unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(dir.join("raft"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(
            dir.join("raft/log.jsonl"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let outside = tempdir("outside");
        fs::write(&outside, "not ours").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();

        assert_eq!(tighten(&dir).unwrap(), 3);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("raft")), 0o700);
        assert_eq!(mode(&dir.join("raft/log.jsonl")), 0o600);
        assert_eq!(
            mode(&outside),
            0o644,
            "a link's target is not ours to change"
        );
        assert_eq!(tighten(&dir).unwrap(), 0, "nothing left to narrow");
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_file(&outside).unwrap();
    }
}
