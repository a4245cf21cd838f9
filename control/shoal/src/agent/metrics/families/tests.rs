use std::collections::BTreeMap;

use shoal_dataplane::reconcile::runner::ReconcileStats;
use shoal_dns::stats::DnsStats;

use super::*;

fn readings() -> Readings {
    let mut tasks = BTreeMap::new();
    tasks.insert(("web".to_string(), "running"), 2);
    tasks.insert(("web".to_string(), "shutdown"), 1);
    Readings {
        role: "manager",
        node: NodeReport {
            node_id: "n1".into(),
            tasks,
            gossip: Some(GossipReport {
                live_members: 3,
                table_entries: 7,
                counters: Default::default(),
            }),
        },
        raft: Some(StoreStatus {
            id: 1,
            state: MemberState::Leader,
            term: 4,
            leader: Some(1),
            voters: BTreeMap::from([(1, "10.0.0.1:2377".to_string())]),
            learners: Default::default(),
            last_log_index: Some(42),
            last_applied_index: Some(40),
            snapshot_index: None,
            purged_index: None,
            millis_since_quorum_ack: Some(3),
            fsync: {
                let h = shoal_cluster::store::latency::LatencyHistogram::default();
                h.observe(std::time::Duration::from_micros(300));
                h.snapshot()
            },
            failure: None,
        }),
        maps: MapReadings {
            underlay: Some(UnderlayStats::default()),
            guard: Some((true, 3)),
            mesh: Some(MeshReading {
                stats: MeshStats::default(),
                ports: vec![PortCounts {
                    port: 8080,
                    protocol: "tcp",
                    new_flows: 7,
                    packets: 30,
                    bytes: 4000,
                }],
                tables: FlowTables {
                    live: 5,
                    live_capacity: 1024,
                    opening: 3,
                    opening_capacity: 1024,
                    closing: 1,
                    closing_capacity: 1024,
                    live_evicted: 0,
                },
                reply_flows: 2,
                reply_opening_closing: (1, 0),
            }),
            vip: Some(VipStats::default()),
            vip_connects: Some(vec![("10.0.0.2".parse().unwrap(), 9)]),
            vip_usage: Some(VipUsage {
                maps: vec![("VIP_SERVICES", 2, 256)],
            }),
        },
        dns: Some(DnsStats::default().snapshot()),
        reconcilers: vec![
            ("overlay", ReconcileStats::default().snapshot()),
            ("lb-mesh", ReconcileStats::default().snapshot()),
        ],
    }
}

/// The format's structure: HELP then TYPE once per family, each sample right after
/// its family's header and named after it (histograms: `_bucket`, `_sum`, `_count`).
fn check_structure(text: &str) -> usize {
    let mut family: Option<(String, String)> = None;
    let mut seen = std::collections::BTreeSet::new();
    let mut help: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split(' ').next().unwrap().to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(help.as_deref(), Some(name), "HELP before TYPE of {name}");
            assert!(seen.insert(name.to_owned()), "{name} twice");
            assert!(name.starts_with("shoal_"), "{name}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
            family = Some((name.to_owned(), kind.to_owned()));
        } else {
            let (name, kind) = family.as_ref().expect("a sample before any family");
            let sample = line.split(['{', ' ']).next().unwrap();
            let ok = if kind == "histogram" {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| sample == format!("{name}{s}"))
            } else {
                sample == name
            };
            assert!(ok, "sample {line:?} under family {name}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(
                value.parse::<f64>().is_ok() || value == "+Inf",
                "value of {line:?}"
            );
        }
    }
    seen.len()
}

#[test]
fn every_family_is_well_formed() {
    let e = write(&readings());
    let families = e.families();
    let text = e.into_text();
    assert_eq!(check_structure(&text), families);
    for line in [
        "shoal_node_info{node_id=\"n1\",role=\"manager\"} 1",
        "shoal_tasks{service=\"web\",state=\"running\"} 2",
        "shoal_tasks{service=\"web\",state=\"shutdown\"} 1",
        "shoal_mesh_flows 5",
        "shoal_mesh_flow_capacity_entries 1024",
        "shoal_mesh_opening_closing_flows{state=\"opening\"} 3",
        "shoal_mesh_opening_closing_flows{state=\"closing\"} 1",
        "shoal_mesh_flows_evicted_total 0",
        "shoal_mesh_dropped_packets_total{reason=\"no_backend\"} 0",
        "shoal_guard_vteps 3",
        "shoal_vip_map_entries{map=\"vip_services\"} 2",
        "shoal_gossip_members 3",
        "shoal_raft_term 4",
        "shoal_raft_state{state=\"leader\"} 1",
        "shoal_raft_state{state=\"follower\"} 0",
        "shoal_raft_leader_id 1",
        "shoal_raft_apply_lag_entries 2",
        "shoal_raft_log_entries 43",
        "shoal_mesh_port_new_flows_total{port=\"8080\",protocol=\"tcp\"} 7",
        "shoal_vip_service_connects_total{vip=\"10.0.0.2\"} 9",
        "shoal_mesh_port_bytes_total{port=\"8080\",protocol=\"tcp\"} 4000",
        "shoal_raft_fsync_duration_seconds_bucket{le=\"0.00025\"} 0",
        "shoal_raft_fsync_duration_seconds_bucket{le=\"0.0005\"} 1",
        "shoal_raft_fsync_duration_seconds_count 1",
        "shoal_reconcile_duration_seconds_count{reconciler=\"lb-mesh\"} 0",
        "shoal_reconcile_errors_total{reconciler=\"overlay\",kind=\"refused\"} 0",
        "shoal_reconcile_restarts_total{reconciler=\"overlay\"} 0",
        "shoal_dns_response_duration_seconds_bucket{le=\"+Inf\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
}

#[test]
fn a_node_outside_a_cluster_writes_no_raft_or_gossip() {
    let text = write(&Readings {
        role: "none",
        ..Readings::default()
    })
    .into_text();
    check_structure(&text);
    assert!(text.contains("shoal_node_info{node_id=\"none\",role=\"none\"} 1"));
    assert!(!text.contains("shoal_raft_"));
    assert!(!text.contains("shoal_gossip_"));
    assert!(!text.contains("shoal_mesh_"));
}
