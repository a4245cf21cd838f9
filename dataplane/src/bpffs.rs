//! The bpf filesystem: where shoal pins its maps so that a restarted agent finds them
//! and traffic keeps flowing while it is down.
use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

/// Where bpffs is normally mounted.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Default pin directory of one agent. Lab hosts on one machine each get their own.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/shoal";

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("{path} is not on a bpf filesystem (mount one with `mount -t bpf bpf {BPFFS_ROOT}`)")]
    NotBpffs { path: PathBuf },
    #[error("mounting bpffs on {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("creating pin directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
}

/// True if `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; c is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Mounts bpffs at [`BPFFS_ROOT`] if nothing is mounted there yet.
pub fn ensure_mounted() -> Result<(), BpffsError> {
    let root = Path::new(BPFFS_ROOT);
    if is_bpffs(root) {
        return Ok(());
    }
    let src = c"bpf";
    let target = c"/sys/fs/bpf";
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(BpffsError::Mount {
            path: root.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Creates `dir` (a pin directory) and checks that it is on bpffs, mounting bpffs at
/// its usual place first if needed.
pub fn prepare_pin_dir(dir: &Path) -> Result<(), BpffsError> {
    if dir.starts_with(BPFFS_ROOT) {
        ensure_mounted()?;
    }
    std::fs::create_dir_all(dir).map_err(|source| BpffsError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    if !is_bpffs(dir) {
        return Err(BpffsError::NotBpffs {
            path: dir.to_owned(),
        });
    }
    Ok(())
}
