//! `lab down`: ends every process, removes every namespace, cgroup, mount, pin and file
//! a lab made, then checks that nothing is left.
use std::{collections::HashSet, fs, path::PathBuf, time::Duration};

use anyhow::{bail, Result};

use super::{ip, layout::Layout, netns_list, procs};
use crate::util::require_root;

/// Everything of the lab that still exists, one line each.
pub fn leftovers(layout: &Layout) -> Vec<String> {
    let mut out = Vec::new();
    for pid in lab_processes(layout) {
        let cmd = procs::cmdline(pid).unwrap_or_default().join(" ");
        out.push(format!("process {pid}: {cmd}"));
    }
    for ns in lab_netns(layout) {
        out.push(format!("network namespace {ns}"));
    }
    for dir in lab_cgroups(layout) {
        out.push(format!("cgroup {}", dir.display()));
    }
    for m in lab_mounts(layout) {
        out.push(format!("mount {m}"));
    }
    for path in lab_paths(layout) {
        out.push(format!("path {}", path.display()));
    }
    out
}

/// Tears the lab down. Errors if there was no lab, or if anything is left afterwards
/// (and says what).
pub fn down(layout: &Layout) -> Result<()> {
    require_root(
        "lab down",
        "it ends the lab's processes and removes its namespaces",
    )?;
    if leftovers(layout).is_empty() {
        bail!("no lab with prefix {:?} to take down", layout.prefix);
    }
    // dockerd first, gently: it stops its containers and its containerd. A pid file is
    // trusted only for a process that is the lab's (the PID may have been reused).
    let ours = lab_processes(layout);
    let dockerds: Vec<u32> = host_names(layout)
        .iter()
        .filter_map(|h| procs::read_pid_file(&layout.dockerd_pid_file(h)))
        .filter(|pid| ours.contains(pid))
        .collect();
    procs::end(&dockerds, Duration::from_secs(30));
    // The registries, by their PID files, on the same condition.
    let registries: Vec<u32> = super::registry::pid_files(layout)
        .iter()
        .filter_map(|p| procs::read_pid_file(p))
        .filter(|pid| ours.contains(pid))
        .collect();
    procs::end(&registries, Duration::from_secs(10));
    // Then whatever remains: shims, containers, holders.
    for _ in 0..3 {
        let rest = lab_processes(layout);
        if rest.is_empty() {
            break;
        }
        procs::end(&rest, Duration::from_secs(5));
    }
    for ns in lab_netns(layout) {
        if let Err(e) = ip(&["netns", "del", &ns]) {
            eprintln!("lab: {e:#}");
        }
    }
    for dir in lab_cgroups(layout) {
        if let Err(e) = procs::remove_cgroup(&dir) {
            eprintln!("lab: removing cgroup {}: {e}", dir.display());
        }
    }
    for m in lab_mounts(layout) {
        let _ = super::run("umount", &["-l", &m]);
    }
    for path in lab_paths(layout) {
        let r = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(e) = r {
            eprintln!("lab: removing {}: {e}", path.display());
        }
    }
    let left = leftovers(layout);
    if !left.is_empty() {
        bail!(
            "lab {:?} is down but these are left:\n  {}",
            layout.prefix,
            left.join("\n  ")
        );
    }
    println!("lab: {} is down, nothing left", layout.prefix);
    Ok(())
}

/// Host names the lab has or had: from its run directory and its namespaces, so a
/// half-made lab without a state file is found too.
fn host_names(layout: &Layout) -> Vec<String> {
    let mut names: HashSet<String> = HashSet::new();
    if let Ok(dir) = fs::read_dir(layout.run_dir()) {
        for e in dir.flatten() {
            if let Some(n) = e.file_name().to_str() {
                if is_host_name(n) {
                    names.insert(n.to_owned());
                }
            }
        }
    }
    let prefix = format!("{}-", layout.prefix);
    for ns in netns_list() {
        if let Some(n) = ns.strip_prefix(&prefix) {
            if is_host_name(n) {
                names.insert(n.to_owned());
            }
        }
    }
    let mut v: Vec<_> = names.into_iter().collect();
    v.sort();
    v
}

fn is_host_name(n: &str) -> bool {
    n.strip_prefix('h')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The lab's processes: a host's holder (by argv[0]), anything in a holder's mount
/// namespace (dockerd, containerd, shims), anything naming the lab's run directory on
/// its command line, and anything in one of the lab's cgroups (containers).
fn lab_processes(layout: &Layout) -> Vec<u32> {
    let holder_prefix = format!("shoal-lab:{}:", layout.prefix);
    let run_dir = layout.run_dir().display().to_string() + "/";
    let me = std::process::id();
    let mut holder_ns = HashSet::new();
    let mut found = HashSet::new();
    let all = procs::all_pids();
    for &pid in &all {
        if pid == me || !procs::alive(pid) {
            continue;
        }
        let Some(cmd) = procs::cmdline(pid) else {
            continue;
        };
        if cmd.first().is_some_and(|a| a.starts_with(&holder_prefix)) {
            found.insert(pid);
            if let Some(ns) = procs::mount_ns(pid) {
                holder_ns.insert(ns);
            }
        } else if cmd.iter().any(|a| a.contains(&run_dir)) {
            found.insert(pid);
        }
    }
    let my_ns = procs::mount_ns(me);
    for &pid in &all {
        if pid != me && procs::alive(pid) {
            if let Some(ns) = procs::mount_ns(pid) {
                if holder_ns.contains(&ns) && Some(ns) != my_ns {
                    found.insert(pid);
                }
            }
        }
    }
    for dir in lab_cgroups(layout) {
        for pid in procs::cgroup_pids(&dir) {
            if procs::alive(pid) {
                found.insert(pid);
            }
        }
    }
    let mut v: Vec<_> = found.into_iter().collect();
    v.sort();
    v
}

fn lab_netns(layout: &Layout) -> Vec<String> {
    let prefix = format!("{}-", layout.prefix);
    let mut v: Vec<_> = netns_list()
        .into_iter()
        .filter(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|rest| rest == "ul" || rest == "cl" || is_host_name(rest))
        })
        .collect();
    v.sort();
    v
}

/// The lab's cgroup parents (`<prefix>-hN`) under every hierarchy, found by name so
/// that they are found even when nothing else of the lab is left.
fn lab_cgroups(layout: &Layout) -> Vec<PathBuf> {
    let prefix = format!("{}-", layout.prefix);
    let mut v = Vec::new();
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return v;
    };
    let is_lab_group = |name: &str| name.strip_prefix(&prefix).is_some_and(is_host_name);
    for h in hierarchies.flatten() {
        // On a pure cgroup v2 machine the groups sit right under the root.
        if h.file_name().to_str().is_some_and(is_lab_group) {
            v.push(h.path());
            continue;
        }
        let Ok(groups) = fs::read_dir(h.path()) else {
            continue;
        };
        for g in groups.flatten() {
            let name = g.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_lab_group(name) && g.path().is_dir() {
                v.push(g.path());
            }
        }
    }
    v
}

/// Mounts in the machine's mount namespace under the lab's directories (normally none:
/// dockerd's mounts live in the host's private mount namespace).
fn lab_mounts(layout: &Layout) -> Vec<String> {
    let dirs = [
        layout.run_dir().display().to_string() + "/",
        layout.data_dir().display().to_string() + "/",
    ];
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut v: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| dirs.iter().any(|d| m.starts_with(d.as_str())))
        .map(str::to_owned)
        .collect();
    // Deepest first.
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v
}

fn lab_paths(layout: &Layout) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = [layout.run_dir(), layout.data_dir()]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    for h in host_names(layout) {
        let pin = layout.pin_dir(&h);
        if pin.exists() {
            v.push(pin);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::is_host_name;

    #[test]
    fn host_names_are_h_and_digits() {
        assert!(is_host_name("h1"));
        assert!(is_host_name("h12"));
        assert!(!is_host_name("h"));
        assert!(!is_host_name("hx"));
        assert!(!is_host_name("ul"));
    }
}
