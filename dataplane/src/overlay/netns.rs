//! Network namespaces: make one and pin it on a file, remove a pin, open one, and run
//! code inside one.
//!
//! The caller's own thread never changes namespace: whatever has to happen inside
//! another namespace runs on a short-lived thread that enters it and then ends. A
//! netlink (or any other) socket stays bound to the namespace it was created in, so
//! the way to talk to a namespace from the caller's thread is to create the socket with
//! [`in_netns`] and use it from anywhere afterwards.
use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    io,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::Path,
};

/// The calling thread's own network namespace.
const THREAD_SELF_NET: &str = "/proc/thread-self/ns/net";

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} contains a NUL byte", path.display()),
        )
    })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes a new network namespace and pins it by bind-mounting it on `path` (a file,
/// created here; it must not exist yet). The namespace lives on as long as the pin
/// does (or anything else holds it), even though no process runs in it.
pub fn create_pinned(path: &Path) -> io::Result<()> {
    let target = cstring(path)?;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", path.display())))?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            // SAFETY: plain syscalls on this thread only; the thread ends right after,
            // so nothing else ever runs in the namespace it moved into.
            unsafe {
                check(libc::unshare(libc::CLONE_NEWNET))?;
                let source = CString::new(THREAD_SELF_NET).expect("no NUL");
                check(libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))
            }
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    });
    if let Err(e) = made {
        let _ = fs::remove_file(path);
        return Err(io::Error::new(
            e.kind(),
            format!("pin a new network namespace on {}: {e}", path.display()),
        ));
    }
    Ok(())
}

/// Removes a pin made by [`create_pinned`]: detaches the mount and deletes the file.
/// The namespace itself goes away once nothing else holds it (a process in it, an open
/// file descriptor, a socket created in it). A path that is not mounted, or is gone
/// already, is fine.
pub fn remove_pinned(path: &Path) -> io::Result<()> {
    let target = cstring(path)?;
    // SAFETY: umount2 on a valid C string.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // EINVAL: not a mount point (half-made pin); ENOENT: gone already.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(io::Error::new(
                e.kind(),
                format!("unmount {}: {e}", path.display()),
            ));
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("remove {}: {e}", path.display()),
        )),
    }
}

/// Opens a namespace file (a pin, or `/proc/<pid>/ns/net`) for [`in_netns`] or for
/// handing to the kernel (`IFLA_NET_NS_FD`).
pub fn open(path: &Path) -> io::Result<OwnedFd> {
    Ok(File::open(path)?.into())
}

/// The namespace's identity: the inode of its nsfs file (what `ls -iL` shows for
/// `/proc/<pid>/ns/net`).
pub fn inode(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.ino())
}

/// The identity of an open namespace file, as [`inode`].
pub fn inode_of(ns: impl AsFd) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the buffer on success.
    check(unsafe { libc::fstat(ns.as_fd().as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialized by the successful fstat.
    Ok(unsafe { st.assume_init() }.st_ino)
}

/// `NS_GET_ID`: `_IOR(0xb7, 13, __u64)`, from linux/nsfs.h (Linux 6.18).
const NS_GET_ID: libc::c_ulong = 0x8008_b70d;

/// A namespace's identity for telling an old namespace from a new one: the kernel's
/// 64-bit namespace ID (`NS_GET_ID`, never reused while the machine runs) where the
/// kernel has it, its inode otherwise. Inodes alone are not enough: the kernel hands a
/// freed namespace's inode to the next one, and a restarted container often gets its
/// old namespace's inode back.
pub fn identity_of(ns: impl AsFd) -> io::Result<u64> {
    let mut id: u64 = 0;
    // SAFETY: NS_GET_ID writes one u64 through the pointer; other files refuse it.
    let rc = unsafe { libc::ioctl(ns.as_fd().as_raw_fd(), NS_GET_ID as _, &mut id as *mut u64) };
    if rc == 0 {
        Ok(id)
    } else {
        inode_of(ns)
    }
}

/// [`identity_of`] the namespace file at `path`.
pub fn identity(path: &Path) -> io::Result<u64> {
    identity_of(open(path)?)
}

/// Runs `f` on a scoped thread that has entered the network namespace `ns`, and
/// returns what `f` returns. The caller's thread stays where it is.
pub fn in_netns<T: Send>(ns: impl AsFd, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let fd = ns.as_fd().as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on this thread only, which ends after `f`.
            check(unsafe { libc::setns(fd, libc::CLONE_NEWNET) })
                .map_err(|e| io::Error::new(e.kind(), format!("enter network namespace: {e}")))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// [`in_netns`] for the namespace at `path`.
pub fn in_netns_at<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let ns = open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
    in_netns(&ns, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_enter_remove() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            if std::env::var_os("SHOAL_REQUIRE_ROOT").is_some_and(|v| v == "1") {
                panic!("needs root and SHOAL_REQUIRE_ROOT=1");
            }
            eprintln!("skipped: network namespaces need root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("shoal-netns-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let pin = dir.join("ns");
        let _ = remove_pinned(&pin);
        create_pinned(&pin).unwrap();
        let own = inode(Path::new("/proc/self/ns/net")).unwrap();
        let pinned = inode(&pin).unwrap();
        assert_ne!(own, pinned);
        assert_eq!(inode_of(open(&pin).unwrap()).unwrap(), pinned);
        let seen = in_netns_at(&pin, || inode(Path::new(THREAD_SELF_NET)).unwrap()).unwrap();
        assert_eq!(seen, pinned);
        // The caller's thread did not move.
        assert_eq!(inode(Path::new(THREAD_SELF_NET)).unwrap(), own);
        // A pin already there is refused.
        assert!(create_pinned(&pin).is_err());
        remove_pinned(&pin).unwrap();
        assert!(!pin.exists());
        remove_pinned(&pin).unwrap();
        fs::remove_dir(&dir).unwrap();
    }
}
