//! The cached netlink connections of a [`NetlinkKernel`]: one into the host namespace,
//! one into each network's namespace (checked against its pin), and the indexes of the
//! network's `br0` and `vxlan0`.
use std::io;

use rtnetlink::Handle;

use super::super::{model::KernelError, netns};
use super::{
    io_err,
    nl::{self, Conn},
    nl_err, NetConn, NetlinkKernel, BRIDGE, VXLAN,
};

impl NetlinkKernel {
    pub(super) fn host(&mut self) -> Result<Handle, KernelError> {
        if let Some(c) = &self.host {
            return Ok(c.handle.clone());
        }
        let socket = match &self.host_netns {
            None => nl::socket(),
            Some(p) => netns::in_netns_at(p, nl::socket).and_then(|r| r),
        }
        .map_err(|e| io_err("open a netlink socket in the host namespace", e))?;
        let conn = Conn::new(&self.rt, socket);
        let h = conn.handle.clone();
        self.host = Some(conn);
        Ok(h)
    }

    /// The cached connection into network `vni`'s namespace, made if needed.
    pub(super) fn net(&mut self, vni: u32) -> Result<&mut NetConn, KernelError> {
        let path = self.netns_path(vni);
        let inode = match netns::inode(&path) {
            Ok(i) => i,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(vni);
                return Err(KernelError::NoSuchNetwork { vni });
            }
            Err(e) => return Err(io_err(format!("stat {}", path.display()), e)),
        };
        if self.nets.get(&vni).is_some_and(|n| n.inode != inode) {
            self.forget(vni);
        }
        if !self.nets.contains_key(&vni) {
            let socket = netns::in_netns_at(&path, nl::socket)
                .and_then(|r| r)
                .map_err(|e| {
                    io_err(
                        format!(
                            "open a netlink socket in network namespace {}",
                            path.display()
                        ),
                        e,
                    )
                })?;
            let conn = Conn::new(&self.rt, socket);
            self.nets.insert(
                vni,
                NetConn {
                    conn,
                    inode,
                    bridge: None,
                    vxlan: None,
                },
            );
        }
        Ok(self.nets.get_mut(&vni).expect("inserted above"))
    }

    /// Drops the cached connection into network `vni`'s namespace (its socket would
    /// keep the namespace alive).
    pub(super) fn forget(&mut self, vni: u32) {
        if let Some(n) = self.nets.remove(&vni) {
            n.conn.close(&self.rt);
        }
    }

    /// Handle and index of `vxlan0` (cached) in network `vni`.
    pub(super) fn vxlan(&mut self, vni: u32) -> Result<(Handle, u32), KernelError> {
        let n = self.net(vni)?;
        let h = n.conn.handle.clone();
        if let Some(i) = n.vxlan {
            return Ok((h, i));
        }
        let index = self
            .rt
            .block_on(nl::link_by_name(&h, VXLAN))
            .map_err(|e| nl_err(format!("find {VXLAN} of network {vni}"), e))?
            .header
            .index;
        self.net(vni)?.vxlan = Some(index);
        Ok((h, index))
    }

    /// Handle and index of `br0` (cached) in network `vni`.
    pub(super) fn bridge(&mut self, vni: u32) -> Result<(Handle, u32), KernelError> {
        let n = self.net(vni)?;
        let h = n.conn.handle.clone();
        if let Some(i) = n.bridge {
            return Ok((h, i));
        }
        let index = self
            .rt
            .block_on(nl::link_by_name(&h, BRIDGE))
            .map_err(|e| nl_err(format!("find {BRIDGE} of network {vni}"), e))?
            .header
            .index;
        self.net(vni)?.bridge = Some(index);
        Ok((h, index))
    }

    pub(super) fn forget_indexes(&mut self, vni: u32) {
        if let Some(n) = self.nets.get_mut(&vni) {
            n.bridge = None;
            n.vxlan = None;
        }
    }
}
