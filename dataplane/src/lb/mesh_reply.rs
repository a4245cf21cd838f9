//! The routing mesh's reply path on this node, kernel side: a veth pair between the
//! ingress network's namespace (`shmesh0`) and the host (`shm<VNI>`), and the two TC
//! programs of `tc_mesh.rs` attached to `br0` in that namespace and to the host end.
//! (Where each meshed flow entered the cluster is recorded by the underlay XDP program,
//! behind the data path's guard; the TC program that did it on `vxlan0`, from any
//! sender, is removed where an older agent left it.)
//!
//! The programs are attached with netlink (cls_bpf in a clsact qdisc), not with TCX
//! links: a netlink filter stays in the kernel when the agent exits, so replies keep
//! flowing while a restarted agent comes up; the next agent replaces the filters.
//!
//! Replies leave with `bpf_redirect_neigh`: the kernel finds the next hop and resolves
//! its neighbour entry if needed.
use std::{
    io,
    path::{Path, PathBuf},
    process::Command,
};

use aya::programs::{
    tc::{self, NlOptions, TcAttachOptions},
    TcAttachType,
};
use shoal_common::mesh::{LEGACY_TC_FROM_OVERLAY, TC_REPLY, TC_TO_UNDERLAY};

use crate::{
    overlay::{
        kernel::{BRIDGE, VXLAN},
        netns,
    },
    sysctl::{self, SysctlError, SysctlJournal},
    underlay::{UnderlayError, UnderlayProgram},
};

/// Name of the mesh veth's end inside the ingress network's namespace. The overlay
/// reconciler leaves a veth of this name alone.
pub const NETNS_VETH: &str = "shmesh0";

/// Name of the host end for the ingress network `vni`.
pub fn host_veth(vni: u32) -> String {
    format!("shm{vni}")
}

#[derive(Debug, thiserror::Error)]
pub enum ReplyPathError {
    #[error("{what}: {message}")]
    Command { what: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("attaching {program} to {interface}: {message}")]
    Attach {
        program: &'static str,
        interface: String,
        message: String,
    },
    #[error(transparent)]
    Program(#[from] UnderlayError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
}

/// What [`ensure`] set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyPath {
    pub netns_path: PathBuf,
    /// Inode of the namespace's pin when set up: another inode means the namespace was
    /// made again and the reply path must be too.
    pub netns_inode: u64,
    pub host_veth: String,
    /// Ifindex of [`NETNS_VETH`] inside the namespace.
    pub netns_ifindex: u32,
    pub underlay_ifindex: u32,
}

fn ip(args: &[&str]) -> Result<String, ReplyPathError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| ReplyPathError::Io {
            what: format!("running ip {}", args.join(" ")),
            source,
        })?;
    if !out.status.success() {
        return Err(ReplyPathError::Command {
            what: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip` run inside the namespace at `netns` (a child forked from a thread that entered
/// it; `ip -n` only takes names under /run/netns).
fn ip_in(netns: &Path, args: &[&str]) -> Result<String, ReplyPathError> {
    netns::in_netns_at(netns, || ip(args)).map_err(|source| ReplyPathError::Io {
        what: format!("entering {}", netns.display()),
        source,
    })?
}

/// Ifindex of `name` in the namespace at `netns` (the host's when None).
fn ifindex(netns: Option<&Path>, name: &str) -> Result<u32, ReplyPathError> {
    let args = ["-o", "link", "show", "dev", name];
    let out = match netns {
        Some(ns) => ip_in(ns, &args)?,
        None => ip(&args)?,
    };
    out.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| ReplyPathError::Command {
            what: format!("reading the ifindex of {name}"),
            message: out.trim().to_owned(),
        })
}

/// Makes the reply path for the ingress network `vni`, whose namespace is pinned at
/// `netns_path`, and attaches `program`'s TC programs. Idempotent: what exists is kept,
/// the filters are replaced.
pub fn ensure(
    program: &mut UnderlayProgram,
    netns_path: &Path,
    vni: u32,
    underlay: &str,
) -> Result<ReplyPath, ReplyPathError> {
    let host = host_veth(vni);
    let ns = netns_path.to_string_lossy().into_owned();
    let netns_inode = netns::inode(netns_path).map_err(|source| ReplyPathError::Io {
        what: format!("reading the namespace pin {}", netns_path.display()),
        source,
    })?;
    // The pair goes with the namespace; a host end without its peer in this very
    // namespace is a leftover of an older one.
    let peer_here = ifindex(Some(netns_path), NETNS_VETH).is_ok();
    let host_here = ifindex(None, &host).is_ok();
    if host_here && !peer_here {
        ip(&["link", "del", "dev", &host])?;
    }
    if !peer_here {
        if ifindex(None, &host).is_ok() {
            ip(&["link", "del", "dev", &host])?;
        }
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", NETNS_VETH, "netns", &ns,
        ])?;
    }
    ip(&["link", "set", "dev", &host, "up"])?;
    ip_in(netns_path, &["link", "set", "dev", NETNS_VETH, "up"])?;
    let netns_ifindex = ifindex(Some(netns_path), NETNS_VETH)?;
    let underlay_ifindex = ifindex(None, underlay)?;

    attach(program, TC_TO_UNDERLAY, &host)?;
    let attached = netns::in_netns_at(netns_path, || -> Result<(), ReplyPathError> {
        detach_legacy(VXLAN);
        attach(program, TC_REPLY, BRIDGE)?;
        Ok(())
    })
    .map_err(|source| ReplyPathError::Io {
        what: format!("entering {}", netns_path.display()),
        source,
    })?;
    attached?;
    Ok(ReplyPath {
        netns_path: netns_path.to_owned(),
        netns_inode,
        host_veth: host,
        netns_ifindex,
        underlay_ifindex,
    })
}

/// Address of the host end of the mesh veth (link scope, the same on every node).
pub const HOST_VETH_ADDR: &str = "169.254.255.253";
/// Address of the namespace end.
pub const NETNS_VETH_ADDR: &str = "169.254.255.254";

/// The path by which the node's own sockets reach published ports: their destination
/// is rewritten at connect or send to a backend's address on the ingress network
/// (`sock_vip.rs`), so the host routes `subnet` (the ingress network's) through the
/// mesh veth into the ingress namespace, with `underlay`'s address as source; the
/// namespace forwards to `br0` (a local task, or a remote one across the VXLAN), and
/// sends everything not on the ingress network (the tasks' replies to the node's
/// address) back through the veth to the host. A remote task's node forwards such a
/// reply out of its underlay, so the underlay's reverse-path filter is made loose: the
/// reply's source (a task) is routed through the veth here, not the underlay.
/// The node's parameters change through `sysctls`, so cleanup can restore them.
pub fn ensure_node_path(
    netns_path: &Path,
    vni: u32,
    subnet: &str,
    underlay: &str,
    sysctls: &SysctlJournal,
) -> Result<(), ReplyPathError> {
    let host = host_veth(vni);
    let src = ip(&["-4", "-o", "addr", "show", "dev", underlay])?
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_owned)
        .ok_or_else(|| ReplyPathError::Command {
            what: format!("reading the IPv4 address of {underlay}"),
            message: "none".into(),
        })?;
    let host_cidr = format!("{HOST_VETH_ADDR}/30");
    let netns_cidr = format!("{NETNS_VETH_ADDR}/30");
    ip(&["addr", "replace", &host_cidr, "dev", &host, "scope", "link"])?;
    ip_in(
        netns_path,
        &[
            "addr",
            "replace",
            &netns_cidr,
            "dev",
            NETNS_VETH,
            "scope",
            "link",
        ],
    )?;
    ip_in(
        netns_path,
        &[
            "route",
            "replace",
            "default",
            "via",
            HOST_VETH_ADDR,
            "dev",
            NETNS_VETH,
        ],
    )?;
    // The namespace is the agent's and goes whole at cleanup: nothing to journal.
    netns::in_netns_at(netns_path, || {
        sysctl::set_unrecorded("net/ipv4/ip_forward", "1")
    })
    .map_err(|source| ReplyPathError::Io {
        what: format!("enabling forwarding in {}", netns_path.display()),
        source,
    })??;
    ip(&[
        "route",
        "replace",
        subnet,
        "via",
        NETNS_VETH_ADDR,
        "dev",
        &host,
        "src",
        &src,
    ])?;
    sysctls.set(&format!("net/ipv4/conf/{host}/forwarding"), "1")?;
    sysctls.set(&format!("net/ipv4/conf/{underlay}/rp_filter"), "2")?;
    Ok(())
}

/// Attaches `name` to `interface`'s ingress (in the calling thread's namespace),
/// replacing a filter of the same program left by an earlier agent, and leaves it
/// attached when the program is dropped.
fn attach(
    program: &mut UnderlayProgram,
    name: &'static str,
    interface: &str,
) -> Result<(), ReplyPathError> {
    let err = |message: String| ReplyPathError::Attach {
        program: name,
        interface: interface.to_owned(),
        message,
    };
    // EEXIST: the qdisc is there already.
    if let Err(e) = tc::qdisc_add_clsact(interface) {
        let exists =
            matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(err(format!("adding the clsact qdisc: {e}")));
        }
    }
    let _ = tc::qdisc_detach_program(interface, TcAttachType::Ingress, name);
    let prog = program.tc_program_mut(name)?;
    let link = prog
        .attach_with_options(
            interface,
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .map_err(|e| err(e.to_string()))?;
    let link = prog.take_link(link).map_err(|e| err(e.to_string()))?;
    // Owned, never dropped: the filter outlives this process (see the module docs).
    std::mem::forget(link);
    Ok(())
}

/// Removes the filter an agent before the data path's guard attached to `interface`'s
/// ingress (in the calling thread's namespace): it recorded reply entries from any
/// VXLAN sender. Nothing to do when there is none.
fn detach_legacy(interface: &str) {
    match tc::qdisc_detach_program(interface, TcAttachType::Ingress, LEGACY_TC_FROM_OVERLAY) {
        Ok(()) => tracing::info!(
            interface,
            program = LEGACY_TC_FROM_OVERLAY,
            "removed an older agent's reply-recording filter (replies are recorded behind the data path's guard now)"
        ),
        Err(e) => tracing::debug!(interface, error = %e, "no older reply-recording filter"),
    }
}

/// True if `interface` (in the calling thread's namespace) is a veth: the mesh then
/// redirects instead of using XDP_TX (see `xdp_mesh.rs`).
pub fn is_veth(interface: &str) -> bool {
    ip(&["-d", "-o", "link", "show", "dev", interface])
        .map(|out| out.split_whitespace().any(|w| w == "veth"))
        .unwrap_or(false)
}

/// Switches forwarding on for `underlay`: the kernel's FIB lookup for XDP
/// (`bpf_fib_lookup`) answers only for an interface that forwards. Journaled in
/// `sysctls`, so cleanup can restore it.
pub fn enable_forwarding(underlay: &str, sysctls: &SysctlJournal) -> Result<(), ReplyPathError> {
    sysctls.set(&format!("net/ipv4/conf/{underlay}/forwarding"), "1")?;
    Ok(())
}

/// Makes the kernel resolve the neighbour entries of `nodes` (the XDP program can only
/// look them up): an empty datagram to each one's VXLAN port, which its VXLAN socket
/// drops as too short.
pub fn nudge_neighbours(nodes: &[std::net::Ipv4Addr], vxlan_port: u16) {
    let Ok(sock) = std::net::UdpSocket::bind("0.0.0.0:0") else {
        return;
    };
    for n in nodes {
        let _ = sock.send_to(&[], (*n, vxlan_port));
    }
}
