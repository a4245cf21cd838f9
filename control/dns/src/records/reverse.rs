//! Reverse names (`d.c.b.a.in-addr.arpa`, `<32 nibbles>.ip6.arpa`) to addresses and back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The address a full reverse name (lowercase, no trailing dot) stands for.
pub(crate) fn parse_reverse(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut octets = [0u8; 4];
        let mut count = 0;
        for label in rest.split('.') {
            if count == 4 || label.is_empty() || label.len() > 3 {
                return None;
            }
            if !label.bytes().all(|b| b.is_ascii_digit())
                || (label.len() > 1 && label.starts_with('0'))
            {
                return None;
            }
            octets[3 - count] = label.parse().ok()?;
            count += 1;
        }
        return (count == 4).then(|| IpAddr::V4(Ipv4Addr::from(octets)));
    }
    if let Some(rest) = name.strip_suffix(".ip6.arpa") {
        let mut value: u128 = 0;
        let mut count = 0;
        for label in rest.split('.') {
            if count == 32 || label.len() != 1 {
                return None;
            }
            let nibble = char::from(label.as_bytes()[0]).to_digit(16)?;
            value |= u128::from(nibble) << (4 * count);
            count += 1;
        }
        return (count == 32).then(|| IpAddr::V6(Ipv6Addr::from(value)));
    }
    None
}

/// The reverse name of `ip`, lowercase, without trailing dot.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let value = u128::from(v6);
            let mut name = String::with_capacity(72);
            for i in 0..32 {
                let nibble = (value >> (4 * i)) & 0xf;
                name.push(char::from_digit(nibble as u32, 16).unwrap_or('0'));
                name.push('.');
            }
            name.push_str("ip6.arpa");
            name
        }
    }
}
