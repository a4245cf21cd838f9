//! The standalone mode's source of declared state (`--declared-state`, and optionally
//! `--declared-dns` and `--declared-lb`): the files are read when one of them changes,
//! as inotify on their directories reports (a file replaced by a rename counts), and
//! published to the pipeline exactly as a cluster node's executor publishes its state.
//! A file that cannot be read or parsed is reported and its last good content stays.
use std::{
    collections::BTreeSet,
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::de::DeserializeOwned;
use shoal_dataplane::{lb::state::LbState, overlay::state::OverlayState, reconcile::DeclaredNode};
use shoal_dns::records::DnsState;
use shoal_orchestrator::pipeline::IntentSender;
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::config::DeclaredFiles;

/// The last good content of each file.
#[derive(Default)]
struct LastGood {
    overlay: Option<OverlayState>,
    dns: Option<DnsState>,
    lb: Option<LbState>,
}

/// Follows `files` until the agent stops, publishing into `intent`.
pub async fn follow(files: DeclaredFiles, intent: Arc<IntentSender>) -> io::Result<()> {
    let watch = DirWatch::new(&files)?;
    info!(overlay = %files.overlay.display(), "standalone mode: declared state from files, not from the cluster");
    let mut last = LastGood::default();
    loop {
        reload(&files, &mut last);
        if let Some(overlay) = &last.overlay {
            let next = DeclaredNode {
                overlay: overlay.clone(),
                dns: last.dns.clone(),
                lb: last.lb.clone(),
                data_path_port: None,
                data_path_addr: None,
                // No cluster: the data path's guard checks no VXLAN source.
                cluster_vteps: None,
                wireguard_peers: None,
                wireguard_rotation: 0,
                // The standalone mode runs no tasks: nothing gets egress.
                task_containers: Default::default(),
                containers: Default::default(),
                // Nothing waits on the dataplane in the standalone mode.
                version: 0,
                store_version: 0,
            };
            intent.send_if_modified(|old| {
                if old.as_deref() == Some(&next) {
                    return false;
                }
                *old = Some(Arc::new(next));
                true
            });
        }
        watch.changed().await?;
    }
}

fn reload(files: &DeclaredFiles, last: &mut LastGood) {
    take(&files.overlay, &mut last.overlay);
    if let Some(path) = &files.dns {
        take(path, &mut last.dns);
    }
    if let Some(path) = &files.lb {
        take(path, &mut last.lb);
    }
}

/// Reads `path` into `slot`, or keeps what `slot` holds and says why.
fn take<T: DeserializeOwned + PartialEq>(path: &Path, slot: &mut Option<T>) {
    let read = std::fs::read(path)
        .map_err(|e| format!("reading {}: {e}", path.display()))
        .and_then(|b| {
            serde_json::from_slice::<T>(&b).map_err(|e| format!("{}: {e}", path.display()))
        });
    match read {
        Ok(v) => *slot = Some(v),
        Err(e) => warn!(error = %e, "declared state file not taken; its last good content stays"),
    }
}

/// inotify on the directories holding the files, woken by a change to one of them.
struct DirWatch {
    fd: AsyncFd<OwnedFd>,
    names: BTreeSet<Vec<u8>>,
}

impl DirWatch {
    fn new(files: &DeclaredFiles) -> io::Result<Self> {
        let paths: Vec<&PathBuf> = [Some(&files.overlay), files.dns.as_ref(), files.lb.as_ref()]
            .into_iter()
            .flatten()
            .collect();
        // SAFETY: inotify_init1 has no preconditions; the fd is owned below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut names = BTreeSet::new();
        let mut dirs = BTreeSet::new();
        for p in paths {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            };
            if let Some(name) = p.file_name() {
                names.insert(name.as_bytes().to_vec());
            }
            dirs.insert(dir);
        }
        for dir in dirs {
            let c = CString::new(dir.as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a path"))?;
            let mask = libc::IN_CLOSE_WRITE
                | libc::IN_MOVED_TO
                | libc::IN_CREATE
                | libc::IN_DELETE
                | libc::IN_MODIFY;
            // SAFETY: fd is an inotify descriptor and c a NUL-terminated path.
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("watching {}: {e}", dir.display()),
                ));
            }
        }
        // SAFETY: the OwnedFd moves into the AsyncFd and is open for as long as it lives.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self { fd, names })
    }

    /// Waits until one of the files may have changed.
    async fn changed(&self) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            let mut guard = self.fd.readable().await?;
            let n = match guard.try_io(|fd| {
                // SAFETY: reading into a buffer we own, of its length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(r) => r?,
                Err(_would_block) => continue,
            };
            if self.mentions_ours(&buf[..n]) {
                return Ok(());
            }
        }
    }

    /// True if any event in `events` names one of the files (or overflowed).
    fn mentions_ours(&self, mut events: &[u8]) -> bool {
        const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
        while events.len() >= HEADER {
            // SAFETY: the kernel wrote whole events; read the header unaligned.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(events.as_ptr().cast()) };
            let len = ev.len as usize;
            let name = events.get(HEADER..HEADER + len).unwrap_or_default();
            let name = name.split(|b| *b == 0).next().unwrap_or_default();
            if ev.mask & libc::IN_Q_OVERFLOW != 0 || self.names.contains(name) {
                return true;
            }
            events = events.get(HEADER + len..).unwrap_or_default();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_renamed_or_rewritten_file_is_seen_at_once_and_a_bad_one_keeps_the_last_good() {
        let dir = std::env::temp_dir().join(format!("shoal-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let overlay = dir.join("overlay.json");
        std::fs::write(&overlay, r#"{"networks": []}"#).unwrap();
        let files = DeclaredFiles {
            overlay: overlay.clone(),
            dns: None,
            lb: None,
        };
        let (tx, mut rx) = tokio::sync::watch::channel(None);
        let task = tokio::spawn(follow(files, Arc::new(tx)));
        let wait = |rx: &mut tokio::sync::watch::Receiver<Option<Arc<DeclaredNode>>>| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(10), rx.changed())
                    .await
                    .expect("seen within 10 s")
                    .unwrap();
                rx.borrow_and_update().clone().unwrap()
            }
        };
        let first = wait(&mut rx).await;
        assert!(first.overlay.networks.is_empty());
        rx.borrow_and_update();

        // Replaced by a rename, as tools write it.
        let tmp = dir.join(".overlay.tmp");
        std::fs::write(&tmp, r#"{"networks": [], "local_endpoints": [{"network": "web", "container": "a", "ip": "10.0.9.2"}]}"#).unwrap();
        std::fs::rename(&tmp, &overlay).unwrap();
        let second = wait(&mut rx).await;
        assert_eq!(second.overlay.local_endpoints.len(), 1);
        rx.borrow_and_update();

        // Garbage: nothing published, the last good content stays.
        std::fs::write(&overlay, "{not json").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!rx.has_changed().unwrap());
        assert_eq!(
            rx.borrow().as_ref().unwrap().overlay.local_endpoints.len(),
            1
        );

        task.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
