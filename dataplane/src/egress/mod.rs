//! Task egress, as Swarm's gateway network gives it: every task container reaches
//! addresses outside the cluster through its node, its source translated to the node's
//! address.
//!
//! ```text
//!  node's namespace:  shoal_gwbridge (gateway, e.g. 172.18.0.1/16, forwarding on)
//!                       │  └─ nft: table ip shoal, chain egress (postrouting):
//!                       │        from the subnet to elsewhere -> masquerade
//!                       ├── shgw<ns id> ══ egress0 in task A's namespace (172.18.0.2,
//!                       │                  default route via the gateway)
//!                       └── shgw<ns id> ══ egress0 in task B's namespace ...
//! ```
//! - The bridge lives in the node's namespace; each running task container gets a
//!   veth into it, named `shgw` + its namespace's identity in hex on the node's side (so
//!   a cleanup finds them by prefix), `egress0` on the task's side, with an address
//!   from the subnet and the main table's default route. The task's overlay networks
//!   keep their subnets; replies on its first network go back through it by policy
//!   routing (`overlay/kernel/attach.rs`).
//! - The bridge's ports are isolated: tasks reach the node and the world through it,
//!   never each other (they talk over their networks, as with Swarm's gateway bridge,
//!   whose inter-container traffic is off).
//! - NAT is the kernel's (nftables, [`nat`]): it runs only on what the node forwards
//!   out of the bridge, after the routing mesh's XDP and TC programs have had every
//!   packet they want, so the mesh's path is not touched.
//! - What the bridge side records (the veth's alias) is how a restarted agent adopts
//!   the attachments it made ([`kernel`]); the plan ([`plan`]) is pure.
pub mod kernel;
pub mod nat;
pub mod plan;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The bridge in the node's namespace.
pub const BRIDGE: &str = "shoal_gwbridge";
/// The task's end of its veth.
pub const CONTAINER_IFNAME: &str = "egress0";
/// Prefix of the node's end of every task's veth.
pub const VETH_PREFIX: &str = "shgw";
/// The default subnet of the bridge (Docker's `docker_gwbridge` usually gets the same).
pub const DEFAULT_SUBNET: &str = "172.18.0.0/16";

/// The bridge's subnet, its gateway (the first address) and the MTU of the bridge and
/// every veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressParams {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

impl EgressParams {
    /// Checks `subnet` (an IPv4 network of at least 4 addresses, given by its network
    /// address) and takes its first address as the gateway.
    pub fn new(subnet: Ipv4Net, mtu: u32) -> Result<Self, String> {
        if subnet.prefix_len() > 30 {
            return Err(format!(
                "egress subnet {subnet} is too small: a /30 or larger holds the gateway and a task"
            ));
        }
        if subnet.network() != subnet.addr() {
            return Err(format!(
                "egress subnet {subnet} is not a network address (did you mean {}?)",
                subnet.trunc()
            ));
        }
        let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        Ok(Self {
            subnet,
            gateway,
            mtu,
        })
    }

    /// The addresses a task may get: the subnet's hosts but the gateway.
    pub fn task_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.subnet.hosts().filter(|a| *a != self.gateway)
    }
}

/// The node's end of the veth of the task whose namespace has identity `netns_id`.
pub fn veth_name(netns_id: u64) -> Result<String, String> {
    let name = format!("{VETH_PREFIX}{netns_id:x}");
    if name.len() > 15 {
        return Err(format!(
            "namespace identity {netns_id} is too large for an interface name"
        ));
    }
    Ok(name)
}

/// The MAC of a task's `egress0`, from its address (as Docker does: 02:42 and the
/// address), so an address given to another task later keeps neighbour caches right.
pub fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_take_the_first_address_and_refuse_bad_subnets() {
        let p = EgressParams::new("172.18.0.0/16".parse().unwrap(), 1500).unwrap();
        assert_eq!(p.gateway, Ipv4Addr::new(172, 18, 0, 1));
        assert_eq!(
            p.task_addresses().next(),
            Some(Ipv4Addr::new(172, 18, 0, 2))
        );
        assert_eq!(p.task_addresses().count(), 65533);
        let small = EgressParams::new("10.9.0.0/30".parse().unwrap(), 1500).unwrap();
        assert_eq!(
            small.task_addresses().collect::<Vec<_>>(),
            [Ipv4Addr::new(10, 9, 0, 2)]
        );
        let e = EgressParams::new("10.9.0.0/31".parse().unwrap(), 1500).unwrap_err();
        assert!(e.contains("too small"), "{e}");
        let e = EgressParams::new("172.18.3.0/16".parse().unwrap(), 1500).unwrap_err();
        assert!(e.contains("172.18.0.0/16"), "{e}");
    }

    #[test]
    fn names_fit_an_interface_and_macs_follow_addresses() {
        assert_eq!(veth_name(0x1234).unwrap(), "shgw1234");
        assert_eq!(veth_name(0xfff_ffff_ffff).unwrap().len(), 15);
        assert!(veth_name(u64::MAX).is_err());
        assert_eq!(
            mac_of(Ipv4Addr::new(172, 18, 0, 2)),
            [0x02, 0x42, 172, 18, 0, 2]
        );
    }
}
