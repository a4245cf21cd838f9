//! Facts about an interface of the current network namespace, asked of the kernel
//! directly (not through /sys, which may belong to another namespace).
use std::{ffi::CStr, io, net::Ipv4Addr};

/// The first IPv4 address of `ifname`, if it has one.
pub fn ipv4_address(ifname: &str) -> io::Result<Option<Ipv4Addr>> {
    Ok(ipv4_addresses()?
        .into_iter()
        .find(|(name, _)| name == ifname)
        .map(|(_, a)| a))
}

/// The interface that holds `addr`, if one does.
pub fn interface_with(addr: Ipv4Addr) -> io::Result<Option<String>> {
    Ok(ipv4_addresses()?
        .into_iter()
        .find(|(_, a)| *a == addr)
        .map(|(name, _)| name))
}

/// The interface of the namespace's IPv4 default route (the one with the lowest
/// metric), if there is one. Read from `/proc/net/route`, which shows the calling
/// process's namespace.
pub fn default_route_interface() -> io::Result<Option<String>> {
    Ok(default_route_in(&std::fs::read_to_string(
        "/proc/net/route",
    )?))
}

/// The default route's interface in the text of `/proc/net/route`.
fn default_route_in(table: &str) -> Option<String> {
    // Columns: Iface Destination Gateway Flags RefCnt Use Metric Mask ...; the
    // addresses in hex. A default route has destination and mask 0 and is up (flag 1).
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let metric: u32 = f.get(6)?.parse().ok()?;
            (*f.get(1)? == "00000000" && *f.get(7)? == "00000000" && flags & 1 == 1)
                .then(|| (metric, f[0].to_owned()))
        })
        .min()
        .map(|(_, name)| name)
}

/// Every IPv4 address of the namespace's interfaces but loopback and link-local ones
/// and the egress bridge's (the tasks' gateway, inside the node), without repeats: the
/// addresses the node's published ports answer on.
pub fn node_addresses() -> io::Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    for (name, a) in ipv4_addresses()? {
        if name != crate::egress::BRIDGE
            && !a.is_loopback()
            && !a.is_link_local()
            && !out.contains(&a)
        {
            out.push(a);
        }
    }
    Ok(out)
}

/// (interface name, IPv4 address) of every interface address, in the kernel's order.
fn ipv4_addresses() -> io::Result<Vec<(String, Ipv4Addr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a valid node of the list until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null and at least a sockaddr.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        if family == libc::AF_INET {
            // SAFETY: family AF_INET means the address is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            found.push((
                name.to_string_lossy().into_owned(),
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            ));
        }
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// The MTU of `ifname`.
pub fn mtu(ifname: &str) -> io::Result<u32> {
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed ifreq with the name copied in; SIOCGIFMTU fills ifru_mtu.
    let result = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
            *d = s as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFMTU, &mut req);
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(req.ifr_ifru.ifru_mtu as u32)
        }
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_route_with_the_lowest_metric_wins() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t00000000\t0101A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0
eth0.100\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth2\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";
        assert_eq!(super::default_route_in(table).as_deref(), Some("eth0.100"));
        let none = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                    eth2\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(super::default_route_in(none), None);
    }

    #[test]
    fn loopback_has_127_0_0_1_and_a_big_mtu() {
        assert_eq!(
            super::ipv4_address("lo").unwrap(),
            Some(std::net::Ipv4Addr::LOCALHOST)
        );
        assert!(super::mtu("lo").unwrap() >= 1500);
        assert!(super::mtu("no-such-if0").is_err());
    }
}
