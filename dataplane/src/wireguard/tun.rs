//! The TUN interface of the WireGuard device, made inside the WireGuard namespace
//! (`/dev/net/tun` makes its interface in the namespace of whoever opened it), then
//! addressed and routed there over rtnetlink. It exists while the device's file is
//! open: an agent that stops takes it along, and encrypted traffic stops with it
//! (nothing is ever sent in the clear instead).
use std::{
    fs::OpenOptions,
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use netlink_packet_route::{link::LinkAttribute, route::RouteScope};
use rtnetlink::RouteMessageBuilder;

use crate::overlay::{kernel::nl, netns};

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
/// Every packet read or written carries a `virtio_net_hdr` (see [`super::batch`]): how
/// the device writes many datagrams at once. No offload is asked for reads
/// (`TUNSETOFFLOAD`), so what the kernel hands the device is always one whole packet
/// with its checksums done.
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// Several queues, each its own descriptor: the kernel hands each flow's packets to one
/// queue (by the flow's hash), so each queue's reader sees its flows in order.
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TUN interface: one descriptor per queue.
pub struct Tun {
    pub queues: Vec<OwnedFd>,
    pub name: String,
}

/// Makes TUN interface `name` in the namespace pinned at `netns_path`, with `addr`/32,
/// `mtu`, up, and the default route through it; with `queues` queues (at least one;
/// more than one makes it a multi-queue TUN).
pub fn open(
    netns_path: &Path,
    name: &str,
    addr: Ipv4Addr,
    mtu: u32,
    queues: usize,
) -> io::Result<Tun> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} is too long"),
        ));
    }
    let mut flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR;
    if queues > 1 {
        flags |= IFF_MULTI_QUEUE;
    }
    let mut fds = Vec::with_capacity(queues.max(1));
    for q in 0..queues.max(1) {
        let fd: OwnedFd = netns::in_netns_at(netns_path, || -> io::Result<OwnedFd> {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")?;
            Ok(f.into())
        })??;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one ifreq through the pointer.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("TUNSETIFF {name} (queue {q} of {queues}): {e}"),
            ));
        }
        fds.push(fd);
    }
    configure(netns_path, name, addr, mtu)?;
    Ok(Tun {
        queues: fds,
        name: name.to_owned(),
    })
}

fn configure(netns_path: &Path, name: &str, addr: Ipv4Addr, mtu: u32) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let socket = netns::in_netns_at(netns_path, nl::socket)??;
    let conn = nl::Conn::new(&rt, socket);
    let h = conn.handle.clone();
    let done = rt.block_on(async {
        let what = |w: &str, e: nl::NlError| io::Error::other(format!("{name}: {w}: {e}"));
        let lo = nl::link_by_name(&h, "lo")
            .await
            .map_err(|e| what("find lo", e))?;
        nl::set_link(&h, nl::up_message(lo.header.index))
            .await
            .map_err(|e| what("set lo up", e))?;
        let link = nl::link_by_name(&h, name)
            .await
            .map_err(|e| what("find", e))?;
        let index = link.header.index;
        let mut up = nl::up_message(index);
        up.attributes.push(LinkAttribute::Mtu(mtu));
        nl::set_link(&h, up)
            .await
            .map_err(|e| what(&format!("set up, mtu {mtu}"), e))?;
        nl::add_address(&h, index, addr, 32)
            .await
            .map_err(|e| what(&format!("add {addr}/32"), e))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        nl::add_route(&h, route)
            .await
            .map_err(|e| what("add the default route", e))?;
        Ok::<_, io::Error>(())
    });
    conn.close(&rt);
    done
}
