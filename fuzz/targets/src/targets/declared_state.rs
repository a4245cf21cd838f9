//! The declared state the agent takes in its standalone mode (`--declared-state`,
//! `--declared-dns`, `--declared-lb`): the input is up to three JSON documents
//! separated by NUL bytes (overlay, DNS, LB), each decoded as the file source decodes
//! its file (`serde_json::from_slice`). What decodes is then taken as the reconcilers
//! take it: the overlay validated and planned against an empty kernel, the DNS state
//! built into the record table, the LB state validated against the overlay and turned
//! into the VIP table and the routing mesh's maps.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use shoal_dataplane::lb::mesh::{self, MeshPlan, NodeMesh};
use shoal_dataplane::lb::state::LbState;
use shoal_dataplane::overlay::model::KernelState;
use shoal_dataplane::overlay::plan::{self, ContainerNetns, NodeParams};
use shoal_dataplane::overlay::state::OverlayState;
use shoal_dataplane::reconcile::vip::desired_table;
use shoal_dns::records::{DnsState, RecordTable};

/// One input, as libFuzzer hands it to the target: panics on a finding.
pub fn run(input: &[u8]) {
    let mut documents = input.split(|b| *b == crate::DOCUMENT_SEPARATOR);
    let Some(overlay) = documents.next() else {
        return;
    };
    // The agent takes nothing until the overlay document decodes.
    let Ok(overlay) = serde_json::from_slice::<OverlayState>(overlay) else {
        return;
    };
    let dns = documents
        .next()
        .and_then(|d| serde_json::from_slice::<DnsState>(d).ok());
    let lb = documents
        .next()
        .and_then(|d| serde_json::from_slice::<LbState>(d).ok());

    if let Some(dns) = &dns {
        if let Ok(table) = RecordTable::build(dns) {
            for n in ["front", "ingress", ""] {
                let _ = table.scope(n, "10.0.1.50".parse().expect("an address"));
            }
        }
    }

    // A state that fails validation is refused whole; nothing else is looked at.
    if overlay.validate().is_err() {
        return;
    }
    let node = NodeParams {
        vtep: Ipv4Addr::from(crate::NODE),
        underlay_interface: "ul0".into(),
        underlay_mtu: 1500,
        port: crate::VXLAN_PORT,
    };
    // Every declared container runs here, each in a namespace of its own.
    let mut cookies = HashMap::new();
    let desired = plan::desired(&overlay, &node, |c| {
        let id = 1000 + cookies.len() as u64;
        cookies.insert(c.to_string(), id);
        Some(ContainerNetns {
            path: PathBuf::from(format!("/proc/{id}/ns/net")),
            id,
        })
    });
    assert!(desired.absent_containers.is_empty());
    let ops = plan::diff(&desired, &KernelState::default());
    // Planned from nothing, nothing is removed, and applying the plan gives the state.
    let mut applied = KernelState::default();
    for op in &ops {
        plan::record(&mut applied, op);
    }
    assert!(
        plan::diff(&desired, &applied).is_empty(),
        "applying the plan leaves more to do"
    );

    let Some(lb) = lb else {
        return;
    };
    if lb.validate(&overlay).is_err() {
        return;
    }
    let _ = desired_table(
        &lb,
        &overlay,
        &cookies,
        Some(1),
        &[Ipv4Addr::from(crate::NODE)],
    );
    let node = NodeMesh {
        vtep: Ipv4Addr::from(crate::NODE),
        addresses: vec![Ipv4Addr::from(crate::NODE)],
        vxlan_port: crate::VXLAN_PORT,
        netns_veth_ifindex: 42,
        underlay_ifindex: 2,
        tx_redirect: true,
    };
    if let Ok(first) = mesh::plan(&lb, &overlay, &node, &MeshPlan::default()) {
        // Planned again from its own result, the same state gives the same maps.
        let again = mesh::plan(&lb, &overlay, &node, &first).expect("the same state planned again");
        assert_eq!(first, again, "the mesh's maps move without a change");
    }
}
