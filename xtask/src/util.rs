//! Small helpers shared by xtask's commands.
use std::{ffi::CString, path::Path};

use anyhow::{bail, Result};

/// Fails with one clear line unless running as root; `why` says what needs it.
pub fn require_root(what: &str, why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root ({why}); run it as root");
    }
    Ok(())
}

/// True if `path` is on a bpf filesystem. (The dataplane crate has the same check;
/// xtask must build before setup has installed the eBPF toolchain, so it cannot depend
/// on that crate.)
pub fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own; c is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// `cargo` (the one running us, if any) in the workspace root.
pub fn cargo() -> std::process::Command {
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory for this workspace (honours CARGO_TARGET_DIR).
pub fn target_dir() -> std::path::PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = std::path::PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The `shoal` binary of a debug build (`cargo build` makes it).
pub fn shoal_binary() -> Result<std::path::PathBuf> {
    let path = target_dir().join("debug/shoal");
    if !path.exists() {
        bail!("{} is missing: run `cargo build` first", path.display());
    }
    Ok(path)
}
