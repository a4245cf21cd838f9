//! The egress NAT: one nftables chain, `egress` in `table ip shoal`, that masquerades
//! what leaves the node from the egress subnet (the source becomes the address of the
//! interface it leaves by: the node's). Applied with `nft -f -`, one transaction: the
//! chain is flushed and filled again atomically, so no packet ever meets it half made,
//! and only this chain is touched (other chains of the table, anyone's, stay).
//!
//! Why the kernel's NAT and not an eBPF SNAT: connection tracking already does the
//! work (ports, ICMP errors, expiry), and a NAT in the postrouting hook sees only what
//! the node forwards out of the bridge, after the routing mesh's XDP and TC programs
//! have taken every packet they want. An eBPF SNAT would sit in the same XDP/TC hooks
//! as the mesh and need a connection table of its own.
use std::{
    io::Write,
    process::{Command, Stdio},
};

use super::{EgressParams, BRIDGE};

/// The nftables table shoal's rules live in.
pub const TABLE: &str = "shoal";
/// The chain of the egress NAT.
pub const CHAIN: &str = "egress";

/// The `nft -f` script that makes the chain hold exactly the egress rule for `params`.
pub fn script(params: &EgressParams) -> String {
    let subnet = params.subnet;
    format!(
        "add table ip {TABLE}\n\
         add chain ip {TABLE} {CHAIN} {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain ip {TABLE} {CHAIN}\n\
         add rule ip {TABLE} {CHAIN} ip saddr {subnet} ip daddr != {subnet} oifname != \"{BRIDGE}\" masquerade\n"
    )
}

/// Applies [`script`] in the calling thread's network namespace.
pub fn apply(params: &EgressParams) -> Result<(), String> {
    run_nft(&script(params))
}

/// Runs `nft -f -` with `script` on its standard input.
fn run_nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("running nft (the egress NAT needs it: install the nftables package): {e}")
        })?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(script.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if let Some(Err(e)) = written {
        return Err(format!("writing the egress rules to nft: {e}"));
    }
    if !out.status.success() {
        return Err(format!(
            "nft refused the egress rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_replaces_only_the_egress_chain() {
        let p = EgressParams::new("172.18.0.0/16".parse().unwrap(), 1500).unwrap();
        let s = script(&p);
        assert_eq!(
            s.lines().collect::<Vec<_>>(),
            [
                "add table ip shoal",
                "add chain ip shoal egress { type nat hook postrouting priority srcnat; policy accept; }",
                "flush chain ip shoal egress",
                "add rule ip shoal egress ip saddr 172.18.0.0/16 ip daddr != 172.18.0.0/16 oifname != \"shoal_gwbridge\" masquerade",
            ]
        );
    }
}
