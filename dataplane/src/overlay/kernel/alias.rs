//! An [`AttachmentSpec`] as text, kept in the bridge-side veth's alias (IFLA_IFALIAS) so
//! a snapshot gets it back exactly:
//!
//! `shoal1 <container> <netns inode> <ifname> <ip>/<prefix len> <mac> <gateway or -> <mtu>`
use std::net::Ipv4Addr;

use super::super::{model::AttachmentSpec, state::Mac};

const TAG: &str = "shoal1";
/// IFALIASZ is 256 with the trailing NUL.
pub(crate) const MAX_ALIAS: usize = 255;
/// IFNAMSIZ is 16 with the trailing NUL.
pub(crate) const MAX_IFNAME: usize = 15;

/// Checks an interface name the way the kernel will (`dev_valid_name`).
pub(crate) fn check_ifname(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_IFNAME
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!(
            "{what} {name:?} is not a valid interface name (1..=15 bytes, no '/', ':' or spaces)"
        ));
    }
    Ok(())
}

/// The alias text for `spec`, or why it cannot be one.
pub(crate) fn encode(spec: &AttachmentSpec) -> Result<String, String> {
    if spec.container.is_empty()
        || spec
            .container
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "container {:?} cannot be recorded: it must be non-empty without spaces",
            spec.container
        ));
    }
    check_ifname("container interface name", &spec.ifname)?;
    let gateway = spec
        .default_gateway
        .map_or_else(|| "-".to_owned(), |g| g.to_string());
    let text = format!(
        "{TAG} {} {} {} {}/{} {} {} {}",
        spec.container,
        spec.netns_id,
        spec.ifname,
        spec.ip,
        spec.prefix_len,
        spec.mac,
        gateway,
        spec.mtu
    );
    if text.len() > MAX_ALIAS {
        return Err(format!(
            "container {:?} is too long to record ({} bytes of attachment record, at most {MAX_ALIAS})",
            spec.container,
            text.len()
        ));
    }
    Ok(text)
}

/// The spec recorded in an alias; None for anything [`encode`] did not write.
pub(crate) fn parse(text: &str) -> Option<AttachmentSpec> {
    let fields: Vec<&str> = text.split(' ').collect();
    let [tag, container, inode, ifname, cidr, mac, gateway, mtu] = fields.as_slice() else {
        return None;
    };
    if *tag != TAG {
        return None;
    }
    let (ip, prefix_len) = cidr.split_once('/')?;
    let spec = AttachmentSpec {
        container: (*container).to_owned(),
        netns_id: inode.parse().ok()?,
        ifname: (*ifname).to_owned(),
        ip: ip.parse::<Ipv4Addr>().ok()?,
        prefix_len: prefix_len.parse().ok()?,
        mac: mac.parse::<Mac>().ok()?,
        default_gateway: match *gateway {
            "-" => None,
            g => Some(g.parse().ok()?),
        },
        mtu: mtu.parse().ok()?,
    };
    // Only the canonical form counts: what encode writes for this spec, byte for byte.
    (encode(&spec).ok()?.as_str() == text).then_some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AttachmentSpec {
        AttachmentSpec {
            container: "a".repeat(64),
            netns_id: 4026532999,
            ifname: "eth0".into(),
            ip: Ipv4Addr::new(10, 0, 0, 2),
            prefix_len: 24,
            mac: Mac::from_ip(Ipv4Addr::new(10, 0, 0, 2)),
            default_gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            mtu: 1450,
        }
    }

    #[test]
    fn round_trip() {
        let s = spec();
        let text = encode(&s).unwrap();
        assert_eq!(
            text,
            format!(
                "shoal1 {} 4026532999 eth0 10.0.0.2/24 02:42:0a:00:00:02 10.0.0.1 1450",
                "a".repeat(64)
            )
        );
        assert_eq!(parse(&text), Some(s.clone()));
        let no_gw = AttachmentSpec {
            default_gateway: None,
            ifname: "eth1".into(),
            ..s
        };
        assert_eq!(parse(&encode(&no_gw).unwrap()), Some(no_gw));
        // The longest of every field still fits.
        let long = AttachmentSpec {
            netns_id: u64::MAX,
            ifname: "e".repeat(15),
            ip: Ipv4Addr::new(255, 255, 255, 255),
            default_gateway: Some(Ipv4Addr::new(255, 255, 255, 255)),
            mtu: u32::MAX,
            ..spec()
        };
        assert_eq!(parse(&encode(&long).unwrap()), Some(long));
    }

    #[test]
    fn refuses_and_rejects() {
        let too_long = AttachmentSpec {
            container: "c".repeat(200),
            ..spec()
        };
        assert!(encode(&too_long).is_err());
        let spaced = AttachmentSpec {
            container: "a b".into(),
            ..spec()
        };
        assert!(encode(&spaced).is_err());
        let bad_if = AttachmentSpec {
            ifname: "eth0/1".into(),
            ..spec()
        };
        assert!(encode(&bad_if).is_err());
        let good = encode(&spec()).unwrap();
        for bad in [
            "",
            "shoal1",
            "something else",
            &good.replace("shoal1", "shoal2"),
            &good.replace(" 1450", " 01450"),
            &good.replace("/24", "/x"),
            &format!("{good} extra"),
            &good.replace(' ', "  "),
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
