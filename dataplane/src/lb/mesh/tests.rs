use super::*;
use crate::overlay::state::Network;

fn overlay() -> OverlayState {
    OverlayState {
        networks: vec![Network {
            id: "ingress".into(),
            vni: 4096,
            subnet: "10.255.0.0/16".parse().unwrap(),
            gateway: "10.255.0.1".parse().unwrap(),
            mtu: None,
            encrypted: false,
        }],
        ..Default::default()
    }
}

fn state(balance: &str, states: [&str; 3]) -> LbState {
    serde_json::from_str(&format!(
            r#"{{"ingress_network": "ingress", "services": [{{
                "id": "s1", "name": "web", "balance": "{balance}",
                "ports": [{{"protocol": "tcp", "published": 8080, "target": 80}},
                          {{"protocol": "udp", "published": 5353, "target": 53, "mode": "host"}}],
                "backends": [
                  {{"task": "t1", "node": "192.168.77.11", "addresses": {{"ingress": "10.255.0.3"}}, "state": "{}"}},
                  {{"task": "t2", "node": "192.168.77.12", "addresses": {{"ingress": "10.255.0.4"}}, "state": "{}"}},
                  {{"task": "t3", "node": "192.168.77.11", "addresses": {{"ingress": "10.255.0.5"}}, "state": "{}"}}
                ]}}]}}"#,
            states[0], states[1], states[2]
        ))
        .unwrap()
}

fn node() -> NodeMesh {
    NodeMesh {
        vtep: "192.168.77.11".parse().unwrap(),
        addresses: vec!["192.168.77.11".parse().unwrap()],
        vxlan_port: 4789,
        netns_veth_ifindex: 7,
        underlay_ifindex: 2,
        tx_redirect: true,
    }
}

#[test]
fn plan_has_all_backends_and_healthy_slots() {
    let s = state("round_robin", ["healthy", "draining", "healthy"]);
    s.validate(&overlay()).unwrap();
    let p = plan(&s, &overlay(), &node(), &MeshPlan::default()).unwrap();
    assert_eq!(p.frontends.len(), 2);
    let tcp = p
        .frontends
        .values()
        .find(|f| f.0.mode == MODE_INGRESS)
        .unwrap()
        .0;
    assert_eq!(tcp.count, 2, "the draining backend takes no new flows");
    assert_eq!(
        p.slots[&tcp.id],
        vec![
            addr("10.255.0.3".parse().unwrap()),
            addr("10.255.0.5".parse().unwrap())
        ]
    );
    let host = p
        .frontends
        .values()
        .find(|f| f.0.mode == MODE_HOST)
        .unwrap()
        .0;
    assert_eq!(host.count, 2, "host mode: only this node's backends");
    // 3 backends for the ingress port, 2 local ones for the host port.
    assert_eq!(p.backends.len(), 5);
    assert_eq!(p.config.unwrap().0.vni, 4096);
    assert_eq!(p.config.unwrap().0.vxlan_port, port(4789));
}

#[test]
fn indices_are_kept_across_plans() {
    let s = state("round_robin", ["healthy"; 3]);
    let first = plan(&s, &overlay(), &node(), &MeshPlan::default()).unwrap();
    let mut s2 = s.clone();
    s2.services[0].ports.remove(0);
    s2.services[0].ports.push(crate::lb::state::PublishedPort {
        protocol: Protocol::Tcp,
        published: 9090,
        target: 90,
        mode: PublishMode::Ingress,
        balance: None,
    });
    let second = plan(&s2, &overlay(), &node(), &first).unwrap();
    let id_of = |p: &MeshPlan, proto: u8, pub_port: u16| {
        p.frontends[&Wire(FrontendKey {
            protocol: proto,
            pad: 0,
            port: port(pub_port),
        })]
            .0
            .id
    };
    assert_eq!(id_of(&first, 17, 5353), id_of(&second, 17, 5353));
    assert_ne!(id_of(&second, 6, 9090), id_of(&second, 17, 5353));
}

#[test]
fn maglev_table_is_full_balanced_and_order_free() {
    let a: Vec<u32> = (3..7).map(|i| addr(Ipv4Addr::new(10, 255, 0, i))).collect();
    let t = maglev_table(&a);
    assert!(t.iter().all(|x| a.contains(x)));
    for b in &a {
        let n = t.iter().filter(|x| *x == b).count();
        let fair = MAGLEV_SIZE as usize / a.len();
        assert!(n.abs_diff(fair) < fair / 10, "{n} entries vs fair {fair}");
    }
    let mut rev = a.clone();
    rev.reverse();
    assert_eq!(t, maglev_table(&rev));
    // Removing one backend moves only its own entries (and a few more).
    let t2 = maglev_table(&a[..3]);
    let moved = t
        .iter()
        .zip(&t2)
        .filter(|(x, y)| x != y && **x != a[3])
        .count();
    assert!(moved < MAGLEV_SIZE as usize / 20, "{moved} entries moved");
    assert!(maglev_table(&[]).iter().all(|x| *x == 0));
}
