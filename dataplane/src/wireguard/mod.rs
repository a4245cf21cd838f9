//! Encrypted overlay networks: a userspace WireGuard device (boringtun) that carries the
//! VXLAN traffic of networks created with `--opt encrypted`, and only theirs.
//!
//! ```text
//!  host namespace                               WireGuard namespace (<netns_dir>/shoalwg)
//!  ────────────────                             ──────────────────────────────────────────
//!  UDP socket <data-path addr>:<port + 1>  ◀──▶  shoalwg0 (TUN, <data-path addr>/32,
//!    one boringtun Tunn per peer                  default route, MTU underlay - 60)
//!    (every other node with a registered key)     UDP sockets of encrypted networks' vxlan0
//!                                                  (their devices live in vni-<VNI>)
//! ```
//! An encrypted network's `vxlan0` is created by a netlink socket in the WireGuard
//! namespace, so its UDP socket lives there: the only interface that namespace has is
//! the TUN, so every frame it sends is read by the device, encrypted for the peer whose
//! data-path address it is sent to and sent over the underlay, and the only frames it
//! receives are the ones the device decrypted (from the peer whose address they come
//! from). Nothing on the underlay reaches those sockets: plaintext VXLAN for an
//! encrypted network cannot be injected. Plain networks keep their sockets in the host
//! namespace and never touch the device.
//!
//! - [`key`]: the node's X25519 identity, kept in the agent's data directory.
//! - [`tun`]: the TUN interface, made inside the WireGuard namespace.
//! - [`device`]: the sockets, the peers' sessions and the worker threads.
use std::{
    io,
    path::{Path, PathBuf},
    sync::Mutex,
};

pub mod batch;
pub mod device;
pub mod key;
pub mod tun;

/// The TUN interface every encrypted network's VXLAN traffic goes through.
pub const IFNAME: &str = "shoalwg0";
/// Pin name of the WireGuard namespace under the agent's namespace directory.
pub const NETNS_PIN: &str = "shoalwg";
/// WireGuard over IPv4 adds 60 bytes: outer IPv4 20, UDP 8, WireGuard data header 16,
/// authentication tag 16 (boringtun does not pad).
pub const OVERHEAD: u32 = 60;
/// Alias written on an encrypted network's `vxlan0`: how a snapshot tells it apart.
pub const VXLAN_ALIAS: &str = "shoal:wireguard";

/// Where the WireGuard namespace is pinned.
pub fn netns_path(netns_dir: &Path) -> PathBuf {
    netns_dir.join(NETNS_PIN)
}

/// The WireGuard port of a cluster: the data-path (VXLAN) port plus one (4790 by
/// default). None when the data-path port is the last one.
pub fn port_for(data_path_port: u16) -> Option<u16> {
    data_path_port.checked_add(1)
}

/// Makes the WireGuard namespace if it is not there yet; returns its pin. The overlay
/// (making an encrypted network) and the device (making the TUN) both call it.
pub fn ensure_netns(netns_dir: &Path) -> io::Result<PathBuf> {
    static MAKING: Mutex<()> = Mutex::new(());
    let _one = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let path = netns_path(netns_dir);
    // A pin that can be entered is a namespace (a plain file, half-made, cannot).
    if crate::overlay::netns::in_netns_at(&path, || ()).is_ok() {
        return Ok(path);
    }
    std::fs::create_dir_all(netns_dir)?;
    if std::fs::symlink_metadata(&path).is_ok() {
        // A pin that is not a namespace (half-made): make it again.
        let _ = crate::overlay::netns::remove_pinned(&path);
    }
    crate::overlay::netns::create_pinned(&path)?;
    Ok(path)
}
