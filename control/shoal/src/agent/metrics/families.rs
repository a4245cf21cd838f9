//! The metric families a scrape writes, from one [`Readings`] of every source.
//!
//! Names follow the Prometheus conventions: the `shoal_` prefix, the unit in the name
//! (`_bytes`, `_seconds`), `_total` on counters, and labels with bounded values only
//! (a reason, a layer, a reconciler, a service name: the cluster bounds those; never a
//! client, a flow or a connection).
use std::path::Path;

use shoal_cluster::store::{MemberState, StoreStatus};
use shoal_common::{
    mesh::Counter as MeshCounter, underlay::Counter as UnderlayCounter, vip::Counter as VipCounter,
};
use shoal_dataplane::{
    guard::GuardMaps,
    lb::{
        mesh::{FlowTables, MeshMaps, MeshStats, PortCounts},
        vip::{VipStats, VipUsage, PIN_SUBDIR as VIP_PIN_SUBDIR},
    },
    reconcile::runner::ReconcileStatsSnapshot,
    underlay::{UnderlayStats, MESH_PIN_DIR},
};
use shoal_dns::stats::{DnsStatsSnapshot, HistogramSnapshot};
use shoal_orchestrator::node_report::{GossipReport, NodeReport};
use tracing::debug;

use super::{
    exposition::{Exposition, Kind},
    Sources,
};

/// Everything one scrape reports, read first, then written.
#[derive(Default)]
pub struct Readings {
    pub role: &'static str,
    pub node: NodeReport,
    pub raft: Option<StoreStatus>,
    pub maps: MapReadings,
    pub dns: Option<DnsStatsSnapshot>,
    pub reconcilers: Vec<(&'static str, ReconcileStatsSnapshot)>,
}

/// The eBPF maps' counters and fill levels; None where a map is not pinned (yet) or
/// could not be read.
#[derive(Default)]
pub struct MapReadings {
    pub underlay: Option<UnderlayStats>,
    /// (enforced, VTEPs accepted).
    pub guard: Option<(bool, u64)>,
    pub mesh: Option<MeshReading>,
    pub vip: Option<VipStats>,
    pub vip_usage: Option<VipUsage>,
    /// Connects and new UDP flows per VIP (per service and network).
    pub vip_connects: Option<Vec<(std::net::Ipv4Addr, u64)>>,
}

pub struct MeshReading {
    pub stats: MeshStats,
    /// Per published port (the service it belongs to); empty when unreadable.
    pub ports: Vec<PortCounts>,
    pub tables: FlowTables,
    pub reply_flows: u64,
    pub reply_opening_closing: (u64, u64),
}

/// How long a scrape waits for the cluster role's lock.
const ROLE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// One scrape's text.
pub async fn scrape(sources: &Sources) -> String {
    let pin_dir = sources.pin_dir.clone();
    let maps = tokio::task::spawn_blocking(move || MapReadings::read(&pin_dir))
        .await
        .unwrap_or_default();
    // The role is behind the lock every API request holds while it runs (a write
    // waiting for a quorum holds it for seconds): a scrape waits a moment, then makes do
    // with the role it saw last and leaves Raft's families out rather than time out.
    let (role, raft) = match tokio::time::timeout(ROLE_WAIT, sources.cluster.role_and_raft()).await
    {
        Ok((role, raft)) => {
            *sources.last_role.lock().unwrap_or_else(|p| p.into_inner()) = role;
            (role, raft)
        }
        Err(_) => (
            *sources.last_role.lock().unwrap_or_else(|p| p.into_inner()),
            None,
        ),
    };
    let readings = Readings {
        role,
        node: (**sources.node.borrow()).clone(),
        raft,
        maps,
        dns: Some(sources.dns.snapshot()),
        reconcilers: sources
            .reconcilers
            .iter()
            .map(|(name, stats)| (*name, stats.snapshot()))
            .collect(),
    };
    write(&readings).into_text()
}

impl MapReadings {
    fn read(pin_dir: &Path) -> MapReadings {
        fn logged<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Option<T> {
            r.map_err(|e| debug!(error = %e, "metrics: reading {what}"))
                .ok()
        }
        let underlay = logged("the underlay counters", UnderlayStats::read_pinned(pin_dir));
        let guard = if pin_dir.join(shoal_common::underlay::VTEPS_MAP).exists() {
            logged("the guard's maps", GuardMaps::open_pinned(pin_dir)).and_then(|maps| {
                let plan = logged("the guard's plan", maps.read_plan())?;
                Some((plan.port.is_some(), maps.vtep_count() as u64))
            })
        } else {
            None
        };
        let mesh_dir = pin_dir.join(MESH_PIN_DIR);
        let mesh = if mesh_dir.join(shoal_common::mesh::STATS_MAP).exists() {
            let stats = logged("the mesh counters", MeshStats::read_pinned(&mesh_dir));
            let maps = logged("the mesh maps", MeshMaps::open_pinned(&mesh_dir));
            match (stats, maps) {
                (Some(stats), Some(maps)) => logged("the flow tables", maps.flow_tables(&stats))
                    .map(|tables| {
                        let (opening, closing) = maps.reply_opening_closing_count();
                        MeshReading {
                            stats,
                            ports: logged(
                                "the ports' counters",
                                PortCounts::read_pinned(&mesh_dir),
                            )
                            .unwrap_or_default(),
                            tables,
                            reply_flows: maps.reply_count() as u64,
                            reply_opening_closing: (opening as u64, closing as u64),
                        }
                    }),
                _ => None,
            }
        } else {
            None
        };
        let vip_dir = pin_dir.join(VIP_PIN_SUBDIR);
        MapReadings {
            underlay,
            guard,
            mesh,
            vip: logged("the VIP counters", VipStats::read_pinned(&vip_dir)).flatten(),
            vip_usage: logged("the VIP maps' fill", VipUsage::read_pinned(&vip_dir)).flatten(),
            vip_connects: logged(
                "the VIPs' connects",
                shoal_dataplane::lb::vip::connects_pinned(&vip_dir),
            )
            .flatten(),
        }
    }
}

/// Writes every family `r` has values for.
pub fn write(r: &Readings) -> Exposition {
    let mut e = Exposition::new();
    e.family(
        "shoal_build_info",
        Kind::Gauge,
        "The agent's version (1, labelled).",
    )
    .int(&[("version", env!("CARGO_PKG_VERSION"))], 1);
    let node_id = if r.node.node_id.is_empty() {
        "none"
    } else {
        r.node.node_id.as_str()
    };
    e.family(
        "shoal_node_info",
        Kind::Gauge,
        "This node's ID and its role now: manager, worker, locked or none (1, labelled).",
    )
    .int(&[("node_id", node_id), ("role", r.role)], 1);
    tasks(&mut e, &r.node);
    if let Some(u) = &r.maps.underlay {
        underlay(&mut e, u);
    }
    if let Some((enforced, vteps)) = r.maps.guard {
        e.family(
            "shoal_guard_enforced",
            Kind::Gauge,
            "1 while VXLAN on the data-path port is accepted only from cluster VTEPs.",
        )
        .int(&[], u64::from(enforced));
        e.family(
            "shoal_guard_vteps",
            Kind::Gauge,
            "Cluster VTEPs the data path's guard accepts VXLAN from.",
        )
        .int(&[], vteps);
    }
    if let Some(m) = &r.maps.mesh {
        mesh(&mut e, m);
    }
    if let Some(v) = &r.maps.vip {
        vip(&mut e, v);
    }
    if let Some(usage) = &r.maps.vip_usage {
        let mut f = e.family(
            "shoal_vip_map_entries",
            Kind::Gauge,
            "Entries in each service VIP map.",
        );
        for (name, entries, _) in &usage.maps {
            f.int(&[("map", &name.to_ascii_lowercase())], *entries);
        }
        let mut f = e.family(
            "shoal_vip_map_capacity_entries",
            Kind::Gauge,
            "Capacity of each service VIP map.",
        );
        for (name, _, capacity) in &usage.maps {
            f.int(&[("map", &name.to_ascii_lowercase())], *capacity);
        }
    }
    if let Some(connects) = &r.maps.vip_connects {
        let mut f = e.family(
            "shoal_vip_service_connects_total",
            Kind::Counter,
            "Connects and new UDP flows balanced at the socket on this node, by VIP (one service's address on one network).",
        );
        for (vip, n) in connects {
            f.int(&[("vip", &vip.to_string())], *n);
        }
    }
    if let Some(d) = &r.dns {
        dns(&mut e, d);
    }
    reconcilers(&mut e, &r.reconcilers);
    if let Some(g) = &r.node.gossip {
        gossip(&mut e, g);
    }
    if let Some(s) = &r.raft {
        raft(&mut e, s);
    }
    e
}

fn tasks(e: &mut Exposition, node: &NodeReport) {
    let mut f = e.family(
        "shoal_tasks",
        Kind::Gauge,
        "Tasks the store assigns to this node, by service and state (as `service ps` shows them).",
    );
    for ((service, state), n) in &node.tasks {
        f.int(&[("service", service), ("state", state)], *n);
    }
}

fn underlay(e: &mut Exposition, u: &UnderlayStats) {
    e.family(
        "shoal_underlay_packets_total",
        Kind::Counter,
        "Frames the underlay XDP program saw.",
    )
    .int(&[], u.get(UnderlayCounter::Packets));
    e.family(
        "shoal_underlay_bytes_total",
        Kind::Counter,
        "Bytes of the frames the underlay XDP program saw, Ethernet header included.",
    )
    .int(&[], u.get(UnderlayCounter::Bytes));
    let mut f = e.family(
        "shoal_underlay_parsed_packets_total",
        Kind::Counter,
        "Underlay frames by what the parser found in them (a frame counts once per layer it reached).",
    );
    for (c, v) in u.iter() {
        match c {
            UnderlayCounter::Packets
            | UnderlayCounter::Bytes
            | UnderlayCounter::VxlanFromCluster
            | UnderlayCounter::VxlanDropped => {}
            _ => {
                f.int(&[("layer", c.name())], v);
            }
        }
    }
    e.family(
        "shoal_guard_vxlan_packets_total",
        Kind::Counter,
        "VXLAN datagrams on the data-path port, by the guard's verdict.",
    )
    .int(
        &[("verdict", "accepted")],
        u.get(UnderlayCounter::VxlanFromCluster),
    )
    .int(
        &[("verdict", "dropped_not_cluster")],
        u.get(UnderlayCounter::VxlanDropped),
    );
}

fn mesh(e: &mut Exposition, m: &MeshReading) {
    // Per published port: a port belongs to one service, cluster-wide.
    type Read = fn(&PortCounts) -> u64;
    let port_families: [(&str, &str, Read); 3] = [
        (
            "shoal_mesh_port_new_flows_total",
            "New flows (TCP connections, UDP flows) the routing mesh balanced on this node, by published port.",
            |c| c.new_flows,
        ),
        (
            "shoal_mesh_port_packets_total",
            "Frames the routing mesh forwarded on this node, by published port.",
            |c| c.packets,
        ),
        (
            "shoal_mesh_port_bytes_total",
            "Bytes of the frames the routing mesh forwarded on this node (IP packets), by published port.",
            |c| c.bytes,
        ),
    ];
    for (name, help, value) in port_families {
        let mut f = e.family(name, Kind::Counter, help);
        for c in &m.ports {
            let port = c.port.to_string();
            f.int(&[("port", &port), ("protocol", c.protocol)], value(c));
        }
    }
    let s = &m.stats;
    e.family(
        "shoal_mesh_packets_total",
        Kind::Counter,
        "Frames to a published port the routing mesh sent on, by where the backend is.",
    )
    .int(&[("backend", "remote")], s.get(MeshCounter::Remote))
    .int(&[("backend", "local")], s.get(MeshCounter::Local));
    e.family(
        "shoal_mesh_bytes_total",
        Kind::Counter,
        "Bytes of the frames the routing mesh sent on, before encapsulation.",
    )
    .int(&[], s.get(MeshCounter::Bytes));
    e.family(
        "shoal_mesh_new_flows_total",
        Kind::Counter,
        "Flows (connections) to a published port that entered the cluster at this node and were given a backend.",
    )
    .int(&[], s.get(MeshCounter::NewFlows));
    e.family(
        "shoal_mesh_flows_rechosen_total",
        Kind::Counter,
        "Flows whose backend became unhealthy or was removed and that got another.",
    )
    .int(&[], s.get(MeshCounter::Rechosen));
    e.family(
        "shoal_mesh_flows_ended_total",
        Kind::Counter,
        "Flows ended by a TCP reset (their entry removed).",
    )
    .int(&[], s.get(MeshCounter::FlowsEnded));
    e.family(
        "shoal_mesh_flow_insert_failures_total",
        Kind::Counter,
        "Flow table inserts the kernel refused.",
    )
    .int(&[], s.get(MeshCounter::FlowInsertFailed));
    let mut f = e.family(
        "shoal_mesh_dropped_packets_total",
        Kind::Counter,
        "Frames to a published port the routing mesh dropped, by reason.",
    );
    for (c, reason) in [
        (MeshCounter::DropNoBackend, "no_backend"),
        (MeshCounter::DropNoFlow, "no_flow"),
        (MeshCounter::DropFragment, "fragment"),
        (MeshCounter::DropNoRoute, "no_route"),
        (MeshCounter::DropEncap, "encap"),
        (MeshCounter::DropMalformed, "malformed"),
    ] {
        f.int(&[("reason", reason)], s.get(c));
    }
    e.family(
        "shoal_mesh_reply_packets_total",
        Kind::Counter,
        "The reply path on a task's node: flows recorded, replies rewritten to the published address, replies sent out of the underlay, replies dropped.",
    )
    .int(&[("stage", "recorded")], s.get(MeshCounter::RepliesRecorded))
    .int(&[("stage", "rewritten")], s.get(MeshCounter::Replies))
    .int(&[("stage", "sent")], s.get(MeshCounter::RepliesOut))
    .int(&[("stage", "dropped")], s.get(MeshCounter::RepliesDropped));
    e.family(
        "shoal_mesh_flow_misses_total",
        Kind::Counter,
        "TCP segments (not SYNs) of a connection in neither flow table (its entry evicted, or it began before this node held it): sent to the Maglev backend, or dropped in round-robin mode.",
    )
    .int(&[], s.get(MeshCounter::FlowMisses));
    let t = &m.tables;
    e.family(
        "shoal_mesh_flows",
        Kind::Gauge,
        "Entries in the routing mesh's live flow table (UDP flows, TCP connections past their handshake).",
    )
    .int(&[], t.live);
    e.family(
        "shoal_mesh_flow_capacity_entries",
        Kind::Gauge,
        "Capacity of the routing mesh's live flow table (--lb-flows).",
    )
    .int(&[], t.live_capacity);
    e.family(
        "shoal_mesh_opening_closing_flows",
        Kind::Gauge,
        "Entries in the routing mesh's tables of TCP connections opening and closing.",
    )
    .int(&[("state", "opening")], t.opening)
    .int(&[("state", "closing")], t.closing);
    e.family(
        "shoal_mesh_opening_closing_flow_capacity_entries",
        Kind::Gauge,
        "Capacity of each of the routing mesh's tables of TCP connections opening and closing (--lb-flows).",
    )
    .int(&[("state", "opening")], t.opening_capacity)
    .int(&[("state", "closing")], t.closing_capacity);
    e.family(
        "shoal_mesh_flows_evicted_total",
        Kind::Counter,
        "Live flows pushed out of the full live flow table (entries inserted, minus those whose connection ended, minus those held).",
    )
    .int(&[], t.live_evicted);
    e.family(
        "shoal_mesh_reply_flows",
        Kind::Gauge,
        "Entries in the reply path's table of live flows to local tasks.",
    )
    .int(&[], m.reply_flows);
    e.family(
        "shoal_mesh_reply_opening_closing_flows",
        Kind::Gauge,
        "Entries in the reply path's tables of connections to local tasks opening and closing.",
    )
    .int(&[("state", "opening")], m.reply_opening_closing.0)
    .int(&[("state", "closing")], m.reply_opening_closing.1);
}

fn vip(e: &mut Exposition, v: &VipStats) {
    e.family(
        "shoal_vip_connects_total",
        Kind::Counter,
        "Connects to a service VIP given a backend, by protocol.",
    )
    .int(&[("protocol", "tcp")], v.get(VipCounter::ConnectTcp))
    .int(&[("protocol", "udp")], v.get(VipCounter::ConnectUdp));
    e.family(
        "shoal_vip_udp_sends_total",
        Kind::Counter,
        "Unconnected UDP sends to a service VIP sent to a backend.",
    )
    .int(&[], v.get(VipCounter::Sendmsg));
    e.family(
        "shoal_vip_udp_new_flows_total",
        Kind::Counter,
        "Unconnected UDP sends to a service VIP that started a new flow.",
    )
    .int(&[], v.get(VipCounter::UdpFlowNew));
    e.family(
        "shoal_vip_reverse_translations_total",
        Kind::Counter,
        "Backend addresses given back as the VIP, by call.",
    )
    .int(&[("call", "recvmsg")], v.get(VipCounter::Recvmsg))
    .int(&[("call", "getpeername")], v.get(VipCounter::Getpeername));
    e.family(
        "shoal_vip_no_backend_total",
        Kind::Counter,
        "Connects or sends to a VIP that had no healthy backend.",
    )
    .int(&[], v.get(VipCounter::NoBackend));
    e.family(
        "shoal_vip_map_update_failures_total",
        Kind::Counter,
        "Flow or reverse entries the VIP programs could not write (map pressure).",
    )
    .int(&[], v.get(VipCounter::MapUpdateFailed));
}

fn dns(e: &mut Exposition, d: &DnsStatsSnapshot) {
    e.family(
        "shoal_dns_queries_total",
        Kind::Counter,
        "Queries the embedded resolver received, by transport.",
    )
    .int(&[("transport", "udp")], d.queries_udp)
    .int(&[("transport", "tcp")], d.queries_tcp);
    e.family(
        "shoal_dns_local_answers_total",
        Kind::Counter,
        "Queries answered from the cluster's names (or refused) without asking upstream.",
    )
    .int(&[], d.answered_local);
    e.family(
        "shoal_dns_forwards_total",
        Kind::Counter,
        "Queries forwarded upstream and answered (with the upstream's answer or SERVFAIL).",
    )
    .int(&[], d.forwarded);
    let mut f = e.family(
        "shoal_dns_dropped_queries_total",
        Kind::Counter,
        "Queries given no answer, by reason.",
    );
    for (why, n) in &d.dropped {
        f.int(&[("reason", why.name())], *n);
    }
    e.family(
        "shoal_dns_response_duration_seconds",
        Kind::Histogram,
        "Time from a query's arrival to its answer, local and forwarded.",
    )
    .histogram(&[], &d.latency);
}

fn reconcilers(e: &mut Exposition, r: &[(&'static str, ReconcileStatsSnapshot)]) {
    if r.is_empty() {
        return;
    }
    let mut f = e.family(
        "shoal_reconcile_duration_seconds",
        Kind::Histogram,
        "How long each reconcile of the dataplane took, by reconciler.",
    );
    for (name, s) in r {
        f.histogram(&[("reconciler", name)], &s.duration);
    }
    let mut f = e.family(
        "shoal_reconcile_errors_total",
        Kind::Counter,
        "Reconciles that left part of the declared state unapplied (failed) or refused it whole (refused), by reconciler.",
    );
    for (name, s) in r {
        f.int(&[("reconciler", name), ("kind", "failed")], s.failed);
        f.int(&[("reconciler", name), ("kind", "refused")], s.refused);
    }
    let mut f = e.family(
        "shoal_reconcile_restarts_total",
        Kind::Counter,
        "Times a reconciler panicked and was built again, by reconciler.",
    );
    for (name, s) in r {
        f.int(&[("reconciler", name)], s.restarts);
    }
}

fn gossip(e: &mut Exposition, g: &GossipReport) {
    let c = &g.counters;
    e.family(
        "shoal_gossip_members",
        Kind::Gauge,
        "Nodes the gossip member sees live, itself included.",
    )
    .int(&[], g.live_members as u64);
    e.family(
        "shoal_gossip_table_entries",
        Kind::Gauge,
        "Endpoints in the table derived from every live member.",
    )
    .int(&[], g.table_entries as u64);
    e.family(
        "shoal_gossip_packets_total",
        Kind::Counter,
        "Gossip messages passed to and from chitchat, by direction.",
    )
    .int(&[("direction", "sent")], c.sent)
    .int(&[("direction", "received")], c.received);
    e.family(
        "shoal_gossip_dropped_packets_total",
        Kind::Counter,
        "Gossip datagrams dropped, by reason.",
    )
    .int(&[("reason", "oversized")], c.oversized)
    .int(&[("reason", "malformed")], c.malformed)
    .int(&[("reason", "old_version")], c.old_version)
    .int(&[("reason", "unknown_key")], c.unknown_key)
    .int(&[("reason", "auth_failed")], c.auth_failed)
    .int(&[("reason", "stale")], c.stale)
    .int(&[("reason", "replayed")], c.replayed)
    .int(&[("reason", "too_many_senders")], c.too_many_senders)
    .int(&[("reason", "unknown_sender")], c.unknown_sender)
    .int(&[("reason", "shed")], c.shed)
    .int(&[("reason", "bad_message")], c.bad_message)
    .int(&[("reason", "send_too_big")], c.send_too_big);
    e.family(
        "shoal_gossip_refused_records_total",
        Kind::Counter,
        "Gossip records left out of the endpoint table, by reason.",
    )
    .int(&[("reason", "bad_record")], c.bad_record)
    .int(&[("reason", "foreign_claim")], c.foreign_claim)
    .int(&[("reason", "unknown_network")], c.unknown_network)
    .int(&[("reason", "outside_subnet")], c.outside_subnet)
    .int(&[("reason", "address_conflict")], c.address_conflict);
}

/// Entries after the purged prefix of the log (indexes start at 0).
fn log_entries_held(s: &StoreStatus) -> u64 {
    match (s.last_log_index, s.purged_index) {
        (Some(last), Some(purged)) => last.saturating_sub(purged),
        (Some(last), None) => last + 1,
        (None, _) => 0,
    }
}

fn raft(e: &mut Exposition, s: &StoreStatus) {
    e.family(
        "shoal_raft_term",
        Kind::Gauge,
        "This manager's current Raft term.",
    )
    .int(&[], s.term);
    let state = match s.state {
        MemberState::Leader => "leader",
        MemberState::Follower => "follower",
        MemberState::Candidate => "candidate",
        MemberState::Learner => "learner",
        MemberState::Stopped => "stopped",
    };
    let mut f = e.family(
        "shoal_raft_state",
        Kind::Gauge,
        "This manager's Raft state (1 for the current one).",
    );
    for name in ["leader", "follower", "candidate", "learner", "stopped"] {
        f.int(&[("state", name)], u64::from(name == state));
    }
    e.family(
        "shoal_raft_has_leader",
        Kind::Gauge,
        "1 while this manager knows a Raft leader.",
    )
    .int(&[], u64::from(s.leader.is_some()));
    let mut f = e.family(
        "shoal_raft_leader_id",
        Kind::Gauge,
        "The Raft ID of the leader this manager knows (no sample while it knows none).",
    );
    if let Some(leader) = s.leader {
        f.int(&[], leader);
    }
    e.family(
        "shoal_raft_voters",
        Kind::Gauge,
        "Voting members of the Raft group.",
    )
    .int(&[], s.voters.len() as u64);
    e.family(
        "shoal_raft_last_log_index",
        Kind::Gauge,
        "Index of the last entry in this manager's Raft log.",
    )
    .int(&[], s.last_log_index.unwrap_or(0));
    e.family(
        "shoal_raft_applied_index",
        Kind::Gauge,
        "Index of the last Raft entry this manager's store applied (committed entries only).",
    )
    .int(&[], s.last_applied_index.unwrap_or(0));
    e.family(
        "shoal_raft_apply_lag_entries",
        Kind::Gauge,
        "Log entries not applied yet (last log index - applied index).",
    )
    .int(
        &[],
        s.last_log_index
            .unwrap_or(0)
            .saturating_sub(s.last_applied_index.unwrap_or(0)),
    );
    // What the log holds in memory until the next snapshot purges it: the store's share
    // of a manager's memory that grows with writes.
    e.family(
        "shoal_raft_log_entries",
        Kind::Gauge,
        "Entries in this manager's Raft log not purged yet (held until a snapshot covers them).",
    )
    .int(&[], log_entries_held(s));
    let fsync = HistogramSnapshot {
        buckets: s
            .fsync
            .buckets
            .iter()
            .map(|&(micros, n)| (micros as f64 / 1e6, n))
            .collect(),
        count: s.fsync.count,
        sum_seconds: s.fsync.sum_nanos as f64 / 1e9,
    };
    e.family(
        "shoal_raft_fsync_duration_seconds",
        Kind::Histogram,
        "How long this manager's Raft log writes (entries, votes) waited on the disk.",
    )
    .histogram(&[], &fsync);
}

#[cfg(test)]
mod tests;
