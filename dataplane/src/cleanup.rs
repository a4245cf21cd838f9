//! Removing what an agent's dataplane made on the host (`shoal agent cleanup`), with the
//! agent stopped. What the dataplane makes, and where this finds it:
//! - the overlay networks: one namespace per network pinned at `<netns_dir>/vni-<VNI>`,
//!   holding `br0`, `vxlan0` and the containers' veths; the ingress network's also holds
//!   the routing mesh's `shmesh0`, whose peer `shm<VNI>` is in the host's namespace with
//!   an address, a route to the ingress subnet and a TC filter. Deleting a network's
//!   devices before unpinning it (the overlay's own `DeleteNetwork`) takes the host end,
//!   its address, route and filter with it, at once rather than when the namespace dies;
//! - the eBPF objects, all pinned under `<pin_dir>`: the underlay XDP program's link
//!   (`underlay_xdp_link_<mode>`; unpinned, the program detaches), the data path guard's
//!   program on a separate data-path interface (`data_path_xdp_<mode>_<interface>`), the
//!   service VIPs' cgroup
//!   links (`vip/link_*`), and every map (`underlay_stats`, `mesh/`, `vip/`);
//! - the node's sysctls the routing mesh changed (forwarding, rp_filter), put back from
//!   the journal (`sysctl.rs`).
//!
//! Nothing else of the host's is touched: the dataplane makes no rules, no NAT and no
//! devices in the host's namespace but the mesh's veth.
use std::{
    fs, io,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    bpffs, egress,
    lb::{mesh_reply, vip},
    overlay::{
        kernel::{NetlinkKernel, PIN_PREFIX},
        model::{Op, OverlayKernel},
    },
    sysctl::{self, Restored},
    underlay::{AttachedMode, DataPathProgram, LINK_PIN},
};

/// Where one agent keeps what it made.
#[derive(Clone, Debug)]
pub struct AgentPaths {
    pub pin_dir: PathBuf,
    pub netns_dir: PathBuf,
    /// Holds the sysctl journal.
    pub data_dir: PathBuf,
}

/// What cleanup did and what it could not do, one line each.
#[derive(Debug, Default)]
pub struct Report {
    pub done: Vec<String>,
    pub problems: Vec<String>,
}

impl Report {
    fn done(&mut self, line: String) {
        self.done.push(line);
    }
    fn problem(&mut self, line: String) {
        self.problems.push(line);
    }
}

/// Removes the overlay networks, the routing mesh's host veths, every pin (so the
/// programs detach), and restores the journaled sysctls, in that order: a sysctl of a
/// device that is gone by then needs no restoring.
pub fn remove_dataplane(paths: &AgentPaths) -> Report {
    let mut report = Report::default();
    remove_networks(&paths.netns_dir, &mut report);
    remove_mesh_veths(&mut report);
    remove_egress(&mut report);
    remove_pins(&paths.pin_dir, &mut report);
    restore_sysctls(&paths.data_dir, &mut report);
    report
}

/// The VNIs pinned in `netns_dir` under their canonical names (`vni-7`): the overlay
/// networks an agent made and left for the next one.
pub fn pinned_networks(netns_dir: &Path) -> io::Result<Vec<u32>> {
    let entries = match fs::read_dir(netns_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut vnis = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(vni) = name
            .strip_prefix(PIN_PREFIX)
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|vni| name == format!("{PIN_PREFIX}{vni}"))
        {
            vnis.push(vni);
        }
    }
    vnis.sort_unstable();
    Ok(vnis)
}

fn remove_networks(netns_dir: &Path, report: &mut Report) {
    let vnis = match pinned_networks(netns_dir) {
        Ok(v) => v,
        Err(e) => {
            report.problem(format!(
                "listing the network namespaces in {}: {e}",
                netns_dir.display()
            ));
            return;
        }
    };
    if !vnis.is_empty() {
        match NetlinkKernel::new(None, netns_dir.to_owned()) {
            Ok(mut kernel) => {
                for vni in vnis {
                    match kernel.apply(&Op::DeleteNetwork { vni }) {
                        Ok(()) => report.done(format!(
                            "removed network namespace {} and its devices",
                            netns_dir.join(format!("{PIN_PREFIX}{vni}")).display()
                        )),
                        Err(e) => report.problem(format!("removing network {vni}: {e}")),
                    }
                }
            }
            Err(e) => report.problem(format!("opening netlink to remove the networks: {e}")),
        }
    }
    // The WireGuard namespace (encrypted networks' VXLAN sockets; its TUN went with the
    // agent), once no network is left in it.
    let wg = crate::wireguard::netns_path(netns_dir);
    if fs::symlink_metadata(&wg).is_ok() {
        match super::overlay::netns::remove_pinned(&wg) {
            Ok(()) => report.done(format!("removed the WireGuard namespace {}", wg.display())),
            Err(e) => report.problem(format!("removing {}: {e}", wg.display())),
        }
    }
    remove_empty_dir(netns_dir, "network namespace directory", report);
}

/// Host ends of the routing mesh's veth (`shm<VNI>`) left without their namespace.
fn remove_mesh_veths(report: &mut Report) {
    let out = match Command::new("ip")
        .args(["-o", "link", "show", "type", "veth"])
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            report.problem(format!(
                "listing veths: ip: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            return;
        }
        Err(e) => {
            report.problem(format!("listing veths: running ip: {e}"));
            return;
        }
    };
    for name in veth_names(&out) {
        let ours = name
            .strip_prefix("shm")
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|vni| mesh_reply::host_veth(vni) == name);
        if !ours {
            continue;
        }
        match Command::new("ip")
            .args(["link", "del", "dev", &name])
            .output()
        {
            Ok(o) if o.status.success() => report.done(format!("removed veth {name}")),
            Ok(o) => report.problem(format!(
                "removing veth {name}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => report.problem(format!("removing veth {name}: running ip: {e}")),
        }
    }
}

/// Task egress: the veths left into the bridge (their task containers are gone by now,
/// which usually takes them along), the bridge, and the NAT chain; the `shoal` table
/// goes too when nothing else is left in it.
fn remove_egress(report: &mut Report) {
    if let Ok(o) = Command::new("ip").args(["-o", "link", "show"]).output() {
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        for name in veth_names(&out) {
            if name.starts_with(egress::VETH_PREFIX) || name == egress::BRIDGE {
                run_step(
                    report,
                    &format!("removed {name}"),
                    "ip",
                    &["link", "del", "dev", &name],
                );
            }
        }
    }
    let table = egress::nat::TABLE;
    let listed = Command::new("nft")
        .args(["list", "table", "ip", table])
        .output();
    let Ok(listed) = listed else {
        return; // no nft: no rules were ever made
    };
    if !listed.status.success() {
        return; // no such table
    }
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    if text.contains(&format!("chain {} ", egress::nat::CHAIN)) {
        run_step(
            report,
            &format!(
                "removed the nftables chain ip {table} {}",
                egress::nat::CHAIN
            ),
            "nft",
            &["delete", "chain", "ip", table, egress::nat::CHAIN],
        );
    }
    let others = text.lines().any(|l| {
        l.trim_start().starts_with("chain ")
            && !l.contains(&format!("chain {} ", egress::nat::CHAIN))
    });
    if !others {
        run_step(
            report,
            &format!("removed the nftables table ip {table}"),
            "nft",
            &["delete", "table", "ip", table],
        );
    }
}

/// Runs one removal command and reports it as `done` or as a problem.
fn run_step(report: &mut Report, done: &str, program: &str, args: &[&str]) {
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => report.done(done.to_owned()),
        Ok(o) => report.problem(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => report.problem(format!("{program} {}: {e}", args.join(" "))),
    }
}

/// Interface names in `ip -o link` output (`7: shm4096@if2: <...`).
fn veth_names(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

fn remove_pins(pin_dir: &Path, report: &mut Report) {
    if !pin_dir.exists() {
        return;
    }
    if pin_dir == Path::new(bpffs::BPFFS_ROOT) || !bpffs::is_bpffs(pin_dir) {
        report.problem(format!(
            "pin_dir {} is not an agent's own directory on bpffs; its pins are left alone",
            pin_dir.display()
        ));
        return;
    }
    // Links first, so the programs detach before their maps go.
    for mode in [AttachedMode::Native, AttachedMode::Generic] {
        let link = pin_dir.join(format!("{LINK_PIN}_{mode}"));
        match fs::remove_file(&link) {
            Ok(()) => report.done(format!(
                "detached the underlay XDP program (unpinned {})",
                link.display()
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => report.problem(format!("unpinning {}: {e}", link.display())),
        }
    }
    for interface in DataPathProgram::detach_pinned(pin_dir, None) {
        report.done(format!(
            "detached the data path guard's XDP program from {interface}"
        ));
    }
    let vip_dir = pin_dir.join(vip::PIN_SUBDIR);
    if vip_dir.exists() {
        match vip::VipProgram::unpin_links(&vip_dir) {
            Ok(()) => report.done(format!(
                "detached the service VIP cgroup programs (unpinned their links in {})",
                vip_dir.display()
            )),
            Err(e) => report.problem(format!("unpinning the VIP links: {e}")),
        }
    }
    match fs::remove_dir_all(pin_dir) {
        Ok(()) => report.done(format!("removed the pinned maps in {}", pin_dir.display())),
        Err(e) => report.problem(format!("removing {}: {e}", pin_dir.display())),
    }
}

fn restore_sysctls(data_dir: &Path, report: &mut Report) {
    match sysctl::restore(data_dir) {
        Ok(entries) => {
            for (entry, outcome) in entries {
                let key = &entry.key;
                let previous = &entry.previous;
                match outcome {
                    Restored::Restored => {
                        report.done(format!("restored sysctl {key} = {previous}"))
                    }
                    Restored::Unchanged => {
                        report.done(format!("sysctl {key} is {previous} already"))
                    }
                    Restored::Gone => report.done(format!(
                        "sysctl {key} is gone with its interface; nothing to restore"
                    )),
                    Restored::Failed(why) => {
                        report.problem(format!("restoring sysctl {key} to {previous}: {why}"))
                    }
                }
            }
        }
        Err(e) => report.problem(e.to_string()),
    }
}

/// Removes `dir` if it is empty; says what is left in it otherwise.
pub fn remove_empty_dir(dir: &Path, what: &str, report: &mut Report) {
    match fs::remove_dir(dir) {
        Ok(()) => report.done(format!("removed the {what} {}", dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
            let left: Vec<String> = fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            report.problem(format!(
                "the {what} {} still holds {} (not the agent's; left alone)",
                dir.display(),
                left.join(", ")
            ));
        }
        Err(e) => report.problem(format!("removing the {what} {}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_come_without_their_peer() {
        let out = "7: shm4096@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue\\    link/ether 02:..\n\
                   9: veth1@if8: <BROADCAST> mtu 1500\n";
        assert_eq!(veth_names(out), vec!["shm4096", "veth1"]);
    }

    #[test]
    fn only_canonical_network_pins_are_ours() {
        let dir = std::env::temp_dir().join(format!("shoal-cleanup-pins-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for name in ["vni-4096", "vni-007", "vni-x", "other", "vni-7"] {
            fs::write(dir.join(name), "").unwrap();
        }
        assert_eq!(pinned_networks(&dir).unwrap(), vec![7, 4096]);
        assert!(pinned_networks(&dir.join("missing")).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
