//! The node's traffic counters for its heartbeats (the cluster page's rates per node):
//! every [`EVERY`], the routing mesh's new flows and bytes and the VIP connects, read
//! from the eBPF maps' pins (as a metrics scrape reads them, on a blocking thread), are
//! handed to the cluster role, whose next heartbeat carries them to the leader.
use std::{path::PathBuf, sync::Arc, time::Duration};

use shoal::cluster_agent::ClusterAgent;
use shoal_cluster::manager::NodeTraffic;
use shoal_common::{mesh::Counter as MeshCounter, vip::Counter as VipCounter};
use shoal_dataplane::{
    lb::{
        mesh::MeshStats,
        vip::{VipStats, PIN_SUBDIR as VIP_PIN_SUBDIR},
    },
    underlay::MESH_PIN_DIR,
};

/// How often the counters are read (a heartbeat goes about every second).
const EVERY: Duration = Duration::from_secs(1);

/// Reads the counters and hands them over, until dropped.
pub async fn run(pin_dir: PathBuf, cluster: Arc<ClusterAgent>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let dir = pin_dir.clone();
        let Ok(traffic) = tokio::task::spawn_blocking(move || read(&dir)).await else {
            continue;
        };
        cluster.set_traffic(traffic).await;
    }
}

/// The counters now; a map not there yet (no published port, no VIP) counts 0.
fn read(pin_dir: &std::path::Path) -> NodeTraffic {
    let mesh_dir = pin_dir.join(MESH_PIN_DIR);
    let mesh = mesh_dir
        .join(shoal_common::mesh::STATS_MAP)
        .exists()
        .then(|| MeshStats::read_pinned(&mesh_dir).ok())
        .flatten();
    let vip = VipStats::read_pinned(&pin_dir.join(VIP_PIN_SUBDIR))
        .ok()
        .flatten();
    NodeTraffic {
        mesh_new_flows: mesh.as_ref().map_or(0, |m| m.get(MeshCounter::NewFlows)),
        mesh_bytes: mesh.as_ref().map_or(0, |m| m.get(MeshCounter::Bytes)),
        vip_connects: vip.as_ref().map_or(0, |v| {
            v.get(VipCounter::ConnectTcp) + v.get(VipCounter::ConnectUdp)
        }),
    }
}
