//! A second underlay: a data-path network beside the hosts' first one, for a swarm whose
//! overlay traffic (`--data-path-addr`) is to go over another interface than its
//! management traffic (`--advertise-addr`), as on hosts with a storage or cluster NIC.
//!
//! ```text
//!            netns <p>-ul: bridge br1 (192.168.78.0/24, no route anywhere else)
//!           /        |         \
//!   <p>-h1 eth1  <p>-h2 eth1  <p>-h3 eth1          (the client stays on br0 only)
//!   .11          .12          .13
//! ```
//! Lives in the lab's own namespaces: `lab down` removes it with them.
use std::net::Ipv4Addr;

use anyhow::Result;

use super::{ip, run, LabState};

/// The data-path interface inside every host.
pub const DATA_PATH_IF: &str = "eth1";
const DATA_PATH_NET: [u8; 3] = [192, 168, 78];
const PREFIX_LEN: u8 = 24;
const BRIDGE: &str = "br1";

/// Host `index`'s (1-based) address on the data-path network.
pub fn data_path_address(index: u32) -> Ipv4Addr {
    let [a, b, c] = DATA_PATH_NET;
    Ipv4Addr::new(a, b, c, 10 + index as u8)
}

/// Gives every host of `state` an `eth1` on a second bridge of the underlay namespace.
pub fn add(state: &LabState) -> Result<()> {
    let ul = &state.underlay_netns;
    ip(&["-n", ul, "link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["-n", ul, "link", "set", BRIDGE, "up"])?;
    for (i, h) in state.hosts.iter().enumerate() {
        let port = format!("{}d", h.name);
        ip(&[
            "link",
            "add",
            DATA_PATH_IF,
            "netns",
            &h.netns,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            ul,
        ])?;
        ip(&["-n", ul, "link", "set", &port, "master", BRIDGE, "up"])?;
        // As on the first underlay: the routing mesh redirects frames into this veth
        // from the other one's XDP program, which only arrive with GRO on the peer.
        run(
            "ip",
            &["netns", "exec", ul, "ethtool", "-K", &port, "gro", "on"],
        )?;
        let cidr = format!("{}/{PREFIX_LEN}", data_path_address(i as u32 + 1));
        ip(&["-n", &h.netns, "addr", "add", &cidr, "dev", DATA_PATH_IF])?;
        ip(&["-n", &h.netns, "link", "set", DATA_PATH_IF, "up"])?;
    }
    Ok(())
}
