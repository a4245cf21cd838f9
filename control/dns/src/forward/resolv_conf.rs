//! The `nameserver` lines of a resolv.conf, read the way glibc reads them.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// glibc uses at most this many nameservers (MAXNS); later lines are ignored there, so
/// they are ignored here too: the agent forwards to the servers the host itself uses.
pub(crate) const MAX_NAMESERVERS: usize = 3;
const DNS_PORT: u16 = 53;

/// Upstreams from resolv.conf text, in file order, at most [`MAX_NAMESERVERS`],
/// duplicates dropped. Lines starting with `#` or `;` are comments; every keyword but
/// `nameserver` (`search`, `domain`, `options`, `sortlist`) is ignored, as is anything
/// after the address (glibc stops at whitespace, `#` or `;`). A nameserver line whose
/// address does not parse is skipped with a warning, as glibc skips it. IPv6 addresses
/// may carry a zone (`fe80::1%eth0` or `fe80::1%2`). Loopback addresses are kept: the
/// agent forwards from the node's own network namespace, where a local stub resolver
/// (systemd-resolved's 127.0.0.53) is reachable.
pub(crate) fn nameservers(text: &str) -> Vec<SocketAddr> {
    let mut found: Vec<SocketAddr> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some(rest) = line.strip_prefix("nameserver") else {
            continue;
        };
        if !rest.starts_with([' ', '\t']) {
            continue;
        }
        let rest = rest.trim_start();
        let word = rest
            .split(|c: char| c.is_ascii_whitespace() || c == '#' || c == ';')
            .next()
            .unwrap_or("");
        match parse_address(word) {
            Ok(addr) => {
                if found.contains(&addr) {
                    continue;
                }
                if found.len() >= MAX_NAMESERVERS {
                    tracing::warn!(
                        line = index + 1,
                        %addr,
                        "resolv.conf: more than {MAX_NAMESERVERS} nameservers, ignoring this one (as glibc does)"
                    );
                } else {
                    found.push(addr);
                }
            }
            Err(e) => {
                tracing::warn!(
                    line = index + 1,
                    "resolv.conf: skipping nameserver {word:?}: {e}"
                );
            }
        }
    }
    found
}

fn parse_address(word: &str) -> Result<SocketAddr, String> {
    if word.is_empty() {
        return Err("no address".into());
    }
    let (addr, zone) = match word.split_once('%') {
        Some((addr, zone)) => (addr, Some(zone)),
        None => (word, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    match (ip, zone) {
        (ip, None) => Ok(SocketAddr::new(ip, DNS_PORT)),
        (IpAddr::V6(ip), Some(zone)) => Ok(SocketAddr::V6(SocketAddrV6::new(
            ip,
            DNS_PORT,
            0,
            zone_index(&ip, zone)?,
        ))),
        (IpAddr::V4(_), Some(_)) => Err("an IPv4 address cannot have a zone".into()),
    }
}

fn zone_index(ip: &Ipv6Addr, zone: &str) -> Result<u32, String> {
    if zone.is_empty() {
        return Err(format!("empty zone after {ip}"));
    }
    if let Ok(index) = zone.parse::<u32>() {
        return Ok(index);
    }
    let name = std::ffi::CString::new(zone).map_err(|_| format!("bad zone {zone:?}"))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(format!("no interface named {zone:?} for the zone of {ip}"));
    }
    Ok(index)
}
