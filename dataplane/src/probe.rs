//! Checks of the host an agent is to run on (`shoal agent --validate`): what the
//! dataplane needs from the kernel and the machine. Each check says what is wrong in one
//! line, or what it found.
use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    path::Path,
};

use crate::{bpffs, iface, lb::vip, underlay::UnderlayProgram};

/// Where the kernel exposes its BTF (type information): CO-RE and the loader need it.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// What one check found: `Ok(what was found)` or `Err(the problem)`.
pub type Finding = Result<String, String>;

/// True if the process runs as root (the agent loads eBPF and makes namespaces).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Root, which the agent needs.
pub fn root() -> Finding {
    if running_as_root() {
        Ok("running as root".into())
    } else {
        // SAFETY: as above.
        let uid = unsafe { libc::geteuid() };
        Err(format!(
            "not running as root (uid {uid}): the agent loads eBPF programs and makes network namespaces"
        ))
    }
}

/// The kernel's BTF.
pub fn btf() -> Finding {
    match std::fs::metadata(VMLINUX_BTF) {
        Ok(_) => Ok(format!("kernel BTF at {VMLINUX_BTF}")),
        Err(e) => Err(format!(
            "no kernel BTF at {VMLINUX_BTF} ({e}): the kernel needs CONFIG_DEBUG_INFO_BTF=y"
        )),
    }
}

/// The agent's programs load: the underlay XDP program with the routing mesh's TC
/// programs, and the service VIPs' cgroup socket programs (private maps, nothing
/// attached; all unloaded again when this returns). Needs root.
pub fn programs_load() -> Finding {
    UnderlayProgram::load_with_flows(1024).map_err(|e| {
        format!("the kernel refused the underlay XDP/TC programs: {e} (needs BPF, XDP and TC clsact support)")
    })?;
    vip::VipProgram::load().map_err(|e| {
        format!("the kernel refused the service VIP cgroup programs: {e} (needs BPF cgroup sock_addr hooks)")
    })?;
    Ok("the XDP, TC and cgroup socket programs load".into())
}

/// A cgroup v2 hierarchy to attach the service VIP programs at.
pub fn cgroup2() -> Finding {
    vip::cgroup2_root()
        .map(|root| format!("cgroup v2 mounted at {}", root.display()))
        .map_err(|e| e.to_string())
}

/// bpffs where `pin_dir` lives. Under [`bpffs::BPFFS_ROOT`] the agent mounts it itself
/// when it is missing, so only another place without bpffs is a problem.
pub fn bpffs(pin_dir: &Path) -> Finding {
    if pin_dir.starts_with(bpffs::BPFFS_ROOT) {
        if bpffs::is_bpffs(Path::new(bpffs::BPFFS_ROOT)) {
            return Ok(format!("bpffs mounted at {}", bpffs::BPFFS_ROOT));
        }
        if Path::new(bpffs::BPFFS_ROOT).is_dir() {
            return Ok(format!(
                "bpffs is not mounted at {} yet; the agent mounts it at start",
                bpffs::BPFFS_ROOT
            ));
        }
        return Err(format!(
            "{} does not exist: the kernel has no bpf filesystem for the agent's pins",
            bpffs::BPFFS_ROOT
        ));
    }
    // Elsewhere: the nearest existing directory must be on bpffs.
    let existing = pin_dir.ancestors().find(|p| p.exists()).unwrap_or(pin_dir);
    if bpffs::is_bpffs(existing) {
        Ok(format!("{} is on bpffs", existing.display()))
    } else {
        Err(format!(
            "pin_dir {} is not on a bpf filesystem (mount one with `mount -t bpf bpf DIR`, or use a directory under {})",
            pin_dir.display(),
            bpffs::BPFFS_ROOT
        ))
    }
}

/// The underlay interface exists and has an IPv4 address (the node's VTEP and the
/// default advertise address).
pub fn underlay_interface(name: &str) -> Finding {
    iface::mtu(name).map_err(|e| format!("underlay interface {name}: {e}"))?;
    match iface::ipv4_address(name) {
        Ok(Some(addr)) => Ok(format!("underlay interface {name} has {addr}")),
        Ok(None) => Err(format!(
            "underlay interface {name} has no IPv4 address: the overlay needs one as its VTEP"
        )),
        Err(e) => Err(format!("reading the addresses of {name}: {e}")),
    }
}

/// Nothing listens on `addr` over TCP (a manager's port, 2377).
pub fn tcp_port_free(addr: SocketAddr, what: &str) -> Finding {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(format!("{addr}/tcp ({what}) is free")),
        Err(e) => Err(format!("{addr}/tcp ({what}) cannot be bound: {e}")),
    }
}

/// Nothing holds `addr` over UDP (gossip, 7946; the VXLAN port, 4789).
pub fn udp_port_free(addr: SocketAddr, what: &str) -> Finding {
    match UdpSocket::bind(addr) {
        Ok(_) => Ok(format!("{addr}/udp ({what}) is free")),
        Err(e) => Err(format!("{addr}/udp ({what}) cannot be bound: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_use_is_a_problem_and_a_free_one_is_not() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let e = tcp_port_free(addr, "test").unwrap_err();
        assert!(e.contains(&format!("{addr}/tcp (test)")), "{e}");
        drop(held);
        tcp_port_free(addr, "test").unwrap();

        let held = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        assert!(udp_port_free(addr, "test").is_err());
        drop(held);
        udp_port_free(addr, "test").unwrap();
    }

    #[test]
    fn a_missing_interface_is_named() {
        let e = underlay_interface("nosuchif0").unwrap_err();
        assert!(e.contains("nosuchif0"), "{e}");
        underlay_interface("lo").unwrap();
    }

    #[test]
    fn a_pin_dir_off_bpffs_is_a_problem() {
        let e = bpffs(Path::new("/tmp/shoal-not-bpffs/pins")).unwrap_err();
        assert!(e.contains("not on a bpf filesystem"), "{e}");
    }
}
