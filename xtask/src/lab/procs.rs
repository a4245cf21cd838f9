//! Processes of a lab: starting them inside a host's namespaces, finding the ones a lab
//! started, and ending them by PID.
use std::{
    ffi::CString,
    fs, io,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

fn cstr(s: impl AsRef<[u8]>) -> Result<CString> {
    Ok(CString::new(s.as_ref().to_vec())?)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Starts the process that holds a host's mount and UTS namespaces for the life of the
/// lab: in the host's network namespace, with its own mount namespace (slave of the
/// machine's, so bpffs and /run stay visible), hostname `hostname`, and `etc_docker`
/// bound over /etc/docker (dockerd's engine ID lives there). It then sleeps, under the
/// argv[0] `name`, until teardown kills it.
pub fn spawn_holder(
    netns_path: &Path,
    hostname: &str,
    etc_docker: &Path,
    name: &str,
) -> Result<u32> {
    let netns = cstr(netns_path.as_os_str().as_encoded_bytes())?;
    let host = hostname.as_bytes().to_vec();
    let etc_src = cstr(etc_docker.as_os_str().as_encoded_bytes())?;
    let etc_dst = cstr("/etc/docker")?;
    let root = cstr("/")?;
    let run_containerd = cstr("/run/containerd")?;
    let tmpfs = cstr("tmpfs")?;
    let shadow_containerd = Path::new("/run/containerd").is_dir();
    let mut cmd = Command::new("sleep");
    cmd.arg0(name)
        .arg("infinity")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only makes syscalls
    // on memory prepared above.
    unsafe {
        cmd.pre_exec(move || {
            check(if libc::setsid() < 0 { -1 } else { 0 })?;
            let fd = libc::open(netns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            check(libc::setns(fd, libc::CLONE_NEWNET))?;
            libc::close(fd);
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            check(libc::sethostname(host.as_ptr().cast(), host.len()))?;
            check(libc::mount(
                etc_src.as_ptr(),
                etc_dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
            // A dockerd finds a system containerd by its socket there and would share
            // it; each lab dockerd must start its own.
            if shadow_containerd {
                check(libc::mount(
                    tmpfs.as_ptr(),
                    run_containerd.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    std::ptr::null(),
                ))?;
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .context("starting a lab host's namespace holder")?;
    Ok(child.id())
}

/// Makes `cmd` run in the network, mount and UTS namespaces of process `pid`, in a new
/// session (so it outlives the caller if it is a daemon).
pub fn enter_namespaces_of(cmd: &mut Command, pid: u32, new_session: bool) -> Result<()> {
    let paths: Vec<(CString, libc::c_int)> = [
        ("net", libc::CLONE_NEWNET),
        ("uts", libc::CLONE_NEWUTS),
        ("mnt", libc::CLONE_NEWNS),
    ]
    .iter()
    .map(|(ns, flag)| Ok((cstr(format!("/proc/{pid}/ns/{ns}"))?, *flag)))
    .collect::<Result<_>>()?;
    if !Path::new(&format!("/proc/{pid}")).exists() {
        bail!("the lab host's namespace holder (pid {pid}) is gone; run `lab down` then `lab up`");
    }
    let root = cstr("/")?;
    // SAFETY: as in spawn_holder: syscalls on memory prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            if new_session && libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Open every namespace first: after entering the mount namespace, /proc
            // paths still resolve, but keep the order independent of that.
            let mut fds = [-1; 3];
            for (i, (path, _)) in paths.iter().enumerate() {
                fds[i] = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fds[i] < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, (_, flag)) in paths.iter().enumerate() {
                check(libc::setns(fds[i], *flag))?;
                libc::close(fds[i]);
            }
            check(libc::chdir(root.as_ptr()))?;
            Ok(())
        });
    }
    Ok(())
}

/// Makes `cmd` run in the network namespace at `netns_path` (e.g. `/run/netns/<name>`)
/// and nothing else of another process, in a new session (a daemon that teardown ends
/// by PID).
pub fn enter_netns(cmd: &mut Command, netns_path: &Path) -> Result<()> {
    let path = cstr(netns_path.as_os_str().as_encoded_bytes())?;
    let root = cstr("/")?;
    // SAFETY: as in spawn_holder: syscalls on memory prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            check(if libc::setsid() < 0 { -1 } else { 0 })?;
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            check(libc::setns(fd, libc::CLONE_NEWNET))?;
            libc::close(fd);
            check(libc::chdir(root.as_ptr()))?;
            Ok(())
        });
    }
    Ok(())
}

/// True if `pid` runs (a zombie counts as gone: nobody may reap it here).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// Inode of a process's mount namespace.
pub fn mount_ns(pid: u32) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

pub fn read_pid_file(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions; pid was found as one of the lab's.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL; returns once every pid is gone
/// or 10 s after the SIGKILL.
pub fn end(pids: &[u32], grace: Duration) {
    let pids: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &pids {
        signal(p, libc::SIGTERM);
    }
    if !wait_gone(&pids, grace) {
        for &p in &pids {
            if alive(p) {
                signal(p, libc::SIGKILL);
            }
        }
        wait_gone(&pids, Duration::from_secs(10));
    }
}

pub fn wait_gone(pids: &[u32], limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        // Reap the ones that are our own children (a test that brought a lab up in
        // process), so they do not linger as zombies; others' children are not ours
        // to reap and waitpid leaves them alone.
        for &p in pids {
            // SAFETY: waitpid with a null status pointer and WNOHANG has no preconditions.
            unsafe {
                libc::waitpid(p as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG);
            }
        }
        if pids.iter().all(|&p| !alive(p)) {
            // A process that died between the waitpid above and this check is a zombie
            // now: reap it too, or its /proc entry stays and, for a dockerd, the next
            // dockerd refuses to start ("pid file found, ensure docker is not running").
            for &p in pids {
                // SAFETY: as above.
                unsafe {
                    libc::waitpid(p as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG);
                }
            }
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PIDs in a cgroup directory and everything below it.
pub fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(cgroup_pids(&e.path()));
            }
        }
    }
    out
}

/// Removes a cgroup directory tree, deepest first (cgroup dirs are removed with rmdir).
pub fn remove_cgroup(dir: &Path) -> io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup(&e.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
