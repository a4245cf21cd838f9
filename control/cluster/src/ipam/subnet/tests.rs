use std::{collections::HashSet, time::Instant};

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
fn net4(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}
fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| net(s)).collect()
}
fn pools(list: &[&str], subnet_prefix_len: u8) -> PoolConfig {
    PoolConfig {
        pools: list.iter().map(|s| net4(s)).collect(),
        subnet_prefix_len,
    }
}

#[test]
fn default_pool_gives_consecutive_24s() {
    assert_eq!(PoolConfig::default(), pools(&["10.0.0.0/8"], 24));
    let mut a = SubnetAllocator::new(PoolConfig::default(), vec![]).unwrap();
    assert_eq!(a.allocate("one").unwrap(), net4("10.0.0.0/24"));
    assert_eq!(a.allocate("two").unwrap(), net4("10.0.1.0/24"));
    assert_eq!(a.owner(net4("10.0.1.0/24")), Some("two"));
    assert_eq!(
        a.networks().collect::<Vec<_>>(),
        [(net("10.0.0.0/24"), "one"), (net("10.0.1.0/24"), "two")]
    );
}

#[test]
fn default_pool_skips_reserved_prefixes() {
    // Same size, smaller (an interface address, given with host bits) and bigger.
    let reserved = nets(&[
        "10.0.0.0/24",
        "10.0.1.77/32",
        "10.0.2.0/23",
        "192.168.77.11/24",
    ]);
    let mut a = SubnetAllocator::new(PoolConfig::default(), reserved).unwrap();
    assert!(a.reserved().contains(&net("10.0.1.77/32")));
    assert!(a.reserved().contains(&net("192.168.77.0/24")));
    assert_eq!(a.allocate("n").unwrap(), net4("10.0.4.0/24"));
    assert_eq!(a.allocate("n").unwrap(), net4("10.0.5.0/24"));

    // A reserved prefix much bigger than a subnet is jumped over in one go.
    let mut a = SubnetAllocator::new(PoolConfig::default(), nets(&["10.0.0.0/10"])).unwrap();
    assert_eq!(a.allocate("n").unwrap(), net4("10.64.0.0/24"));

    // Changing the reserved list affects later allocations only.
    a.set_reserved(nets(&["10.64.1.0/24"]));
    assert_eq!(a.allocate("n").unwrap(), net4("10.0.0.0/24"));
    assert_eq!(a.allocate("n").unwrap(), net4("10.0.1.0/24"));
}

#[test]
fn custom_pools_and_mask_length() {
    let cfg = pools(&["192.168.0.0/20", "172.20.0.0/16"], 22);
    let mut a = SubnetAllocator::new(cfg, vec![]).unwrap();
    let got: Vec<_> = (0..6)
        .map(|_| a.allocate("n").unwrap().to_string())
        .collect();
    assert_eq!(
        got,
        [
            "192.168.0.0/22",
            "192.168.4.0/22",
            "192.168.8.0/22",
            "192.168.12.0/22",
            "172.20.0.0/22",
            "172.20.4.0/22"
        ]
    );
    // A subnet as big as its pool.
    let mut a = SubnetAllocator::new(pools(&["172.30.0.0/16"], 16), vec![]).unwrap();
    assert_eq!(a.allocate("n").unwrap(), net4("172.30.0.0/16"));
    assert!(a.allocate("n").is_err());
}

#[test]
fn pool_exhaustion_names_the_pools() {
    let cfg = pools(&["192.168.0.0/23", "172.31.0.0/24"], 24);
    let mut a = SubnetAllocator::new(cfg, nets(&["172.31.0.0/25"])).unwrap();
    a.allocate("a").unwrap();
    a.allocate("b").unwrap();
    let err = a.allocate("c").unwrap_err();
    assert_eq!(
        err.to_string(),
        "no free /24 subnet left in address pools 192.168.0.0/23, 172.31.0.0/24 \
         (2 subnets allocated, 1 reserved prefixes overlap the pools)"
    );
    assert!(matches!(
        err,
        IpamError::PoolsExhausted {
            prefix_len: 24,
            allocated: 2,
            reserved: 1,
            ..
        }
    ));
}

#[test]
fn release_makes_a_subnet_allocatable_again() {
    let mut a = SubnetAllocator::new(PoolConfig::default(), vec![]).unwrap();
    let first = a.allocate("a").unwrap();
    let second = a.allocate("b").unwrap();
    a.release(first).unwrap();
    assert_eq!(a.owner(first), None);
    assert_eq!(a.allocate("c").unwrap(), first);
    assert_eq!(a.allocate("d").unwrap(), net4("10.0.2.0/24"));
    a.release(second).unwrap();
    assert_eq!(
        a.release(second).unwrap_err().to_string(),
        "subnet 10.0.1.0/24 is not allocated"
    );
    a.allocate_specific("e", net4("10.0.1.0/24")).unwrap();
}

#[test]
fn requested_subnet_accepted_if_free_and_then_skipped() {
    let mut a = SubnetAllocator::new(PoolConfig::default(), vec![]).unwrap();
    a.allocate_specific("mine", net4("10.0.1.0/24")).unwrap();
    a.allocate_specific("big", net4("10.0.4.0/22")).unwrap();
    // Outside the pools is fine too, and IPv6 as well.
    a.allocate_specific("other", net4("172.28.0.0/16")).unwrap();
    a.allocate_specific("v6", net("fd00:1::/64")).unwrap();
    let got: Vec<_> = (0..4)
        .map(|_| a.allocate("n").unwrap().to_string())
        .collect();
    assert_eq!(
        got,
        ["10.0.0.0/24", "10.0.2.0/24", "10.0.3.0/24", "10.0.8.0/24"]
    );
}

#[test]
fn requested_subnet_overlapping_a_network_is_refused_both_ways() {
    let mut a = SubnetAllocator::new(PoolConfig::default(), vec![]).unwrap();
    a.allocate_specific("web", net4("10.0.9.0/24")).unwrap();
    a.allocate_specific("db", net4("10.1.0.0/16")).unwrap();
    let refuse = |a: &mut SubnetAllocator, s: &str| a.allocate_specific("x", net(s)).unwrap_err();

    // Bigger than an existing subnet (it starts inside the request).
    let err = refuse(&mut a, "10.0.0.0/16");
    assert_eq!(
        err,
        IpamError::SubnetOverlap {
            requested: net("10.0.0.0/16"),
            existing: net("10.0.9.0/24"),
            owner: "web".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "subnet 10.0.0.0/16 overlaps 10.0.9.0/24, the subnet of network \"web\""
    );
    // Smaller (inside an existing subnet, at its start or further in), and equal.
    for s in [
        "10.0.9.128/25",
        "10.0.9.0/25",
        "10.0.9.0/24",
        "10.1.200.0/24",
        "10.1.0.0/24",
    ] {
        assert!(
            matches!(refuse(&mut a, s), IpamError::SubnetOverlap { .. }),
            "{s}"
        );
    }
    // Much bigger, covering both.
    assert!(matches!(
        refuse(&mut a, "0.0.0.0/0"),
        IpamError::SubnetOverlap { .. }
    ));
    // Neighbours are fine, and a refused request changed nothing.
    a.allocate_specific("x", net4("10.0.8.0/24")).unwrap();
    a.allocate_specific("y", net4("10.0.10.0/24")).unwrap();
    a.allocate_specific("z", net4("10.2.0.0/16")).unwrap();
    assert_eq!(a.networks().count(), 5);

    // IPv6 likewise; the families never overlap each other.
    a.allocate_specific("v6", net("fd00:1::/64")).unwrap();
    assert!(matches!(
        refuse(&mut a, "fd00::/16"),
        IpamError::SubnetOverlap { .. }
    ));
    assert!(matches!(
        refuse(&mut a, "fd00:1::/96"),
        IpamError::SubnetOverlap { .. }
    ));
    a.allocate_specific("v6b", net("fd00:2::/64")).unwrap();
}

#[test]
fn requested_subnet_overlapping_a_reserved_prefix_is_refused_both_ways() {
    let reserved = nets(&["192.168.77.0/24", "10.0.9.5/32"]);
    let mut a = SubnetAllocator::new(PoolConfig::default(), reserved).unwrap();
    for (req, res) in [
        ("192.168.0.0/16", "192.168.77.0/24"),
        ("192.168.77.0/28", "192.168.77.0/24"),
        ("192.168.77.0/24", "192.168.77.0/24"),
        ("10.0.9.0/24", "10.0.9.5/32"),
    ] {
        assert_eq!(
            a.allocate_specific("x", net(req)),
            Err(IpamError::ReservedOverlap {
                requested: net(req),
                reserved: net(res)
            })
        );
    }
    assert_eq!(
        a.allocate_specific("x", net4("10.0.9.0/24"))
            .unwrap_err()
            .to_string(),
        "subnet 10.0.9.0/24 overlaps 10.0.9.5/32, which is reserved (a route of this host)"
    );
    a.allocate_specific("x", net4("192.168.78.0/24")).unwrap();
}

#[test]
fn requested_subnet_covering_a_pool() {
    let mut a = SubnetAllocator::new(PoolConfig::default(), vec![]).unwrap();
    a.allocate_specific("x", net4("10.0.0.0/12")).unwrap();
    assert_eq!(a.allocate("n").unwrap(), net4("10.16.0.0/24"));

    // A network that starts before the pool and covers all of it.
    let mut a = SubnetAllocator::new(pools(&["10.1.0.0/16"], 24), vec![]).unwrap();
    a.allocate_specific("x", net4("10.0.0.0/8")).unwrap();
    assert!(matches!(
        a.allocate("n"),
        Err(IpamError::PoolsExhausted { .. })
    ));
}

#[test]
fn bad_input_refused() {
    let new = |cfg: PoolConfig| SubnetAllocator::new(cfg, vec![]).unwrap_err();
    assert_eq!(new(pools(&[], 24)), IpamError::NoPools);
    assert_eq!(
        new(pools(&["10.0.0.0/16"], 8)).to_string(),
        "subnet size /8 does not fit in address pool 10.0.0.0/16: \
         the subnet prefix length must be at least 16"
    );
    assert_eq!(
        new(pools(&["10.0.0.0/8"], 31)),
        IpamError::PrefixTooLong {
            prefix_len: 31,
            max: 30
        }
    );
    assert_eq!(
        new(pools(&["10.0.0.1/8"], 24)).to_string(),
        "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"
    );
    assert_eq!(
        new(pools(&["10.0.0.0/8", "192.168.0.0/16", "10.20.0.0/16"], 24)),
        IpamError::PoolsOverlap {
            first: net4("10.0.0.0/8"),
            second: net4("10.20.0.0/16")
        }
    );

    let mut a = SubnetAllocator::new(PoolConfig::default(), vec![]).unwrap();
    assert!(matches!(
        a.allocate_specific("x", net("10.0.9.1/24")),
        Err(IpamError::HostBitsSet { .. })
    ));
    assert!(matches!(
        a.release(net("10.0.9.0/24")),
        Err(IpamError::SubnetNotAllocated { .. })
    ));
    // Releasing needs the exact subnet, not one inside it.
    a.allocate_specific("x", net("10.0.9.0/24")).unwrap();
    assert!(a.release(net("10.0.9.0/25")).is_err());
    assert_eq!(a.owner(net("10.0.9.0/24")), Some("x"));
}

#[test]
fn thousands_of_networks_quickly() {
    let start = Instant::now();
    let mut a = SubnetAllocator::new(PoolConfig::default(), nets(&["10.0.7.0/24"])).unwrap();
    let got: Vec<_> = (0..3_000)
        .map(|i| a.allocate(&format!("n{i}")).unwrap())
        .collect();
    let unique: HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), 3_000);
    assert!(!unique.contains(&net4("10.0.7.0/24")));
    // The 3000th, one past 10.0.7.0/24: 10.0.0.0 + 3000 * 256.
    assert_eq!(got[2_999], net4("10.11.184.0/24"));
    // A hole in the middle is found again.
    a.release(net4("10.5.0.0/24")).unwrap();
    assert_eq!(a.allocate("again").unwrap(), net4("10.5.0.0/24"));
    assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
}

#[test]
fn serde_round_trip_preserves_behavior() {
    let mut a = SubnetAllocator::new(
        pools(&["10.10.0.0/16", "10.20.0.0/16"], 24),
        nets(&["10.10.2.0/24"]),
    )
    .unwrap();
    a.allocate("a").unwrap();
    a.allocate("b").unwrap();
    a.allocate_specific("c", net4("10.10.4.0/24")).unwrap();
    a.allocate_specific("v6", net("fd00:1::/64")).unwrap();
    a.release(net4("10.10.0.0/24")).unwrap();

    let json = serde_json::to_string(&a).unwrap();
    assert!(json.contains("\"10.10.4.0/24\""), "{json}");
    let mut b: SubnetAllocator = serde_json::from_str(&json).unwrap();
    assert_eq!(b, a);
    assert_eq!(serde_json::to_string(&b).unwrap(), json);
    for x in [&mut a, &mut b] {
        assert_eq!(x.allocate("d").unwrap(), net4("10.10.0.0/24"));
        assert_eq!(x.allocate("e").unwrap(), net4("10.10.3.0/24"));
        assert_eq!(x.allocate("f").unwrap(), net4("10.10.5.0/24"));
        assert!(x.allocate_specific("g", net4("10.10.4.128/25")).is_err());
    }
    assert_eq!(a, b);

    // Stored state with overlapping networks, or a bad config, is refused.
    let mut v = serde_json::to_value(&a).unwrap();
    v["networks"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"subnet": "10.10.0.128/25", "owner": "dup"}));
    let err = serde_json::from_value::<SubnetAllocator>(v)
        .unwrap_err()
        .to_string();
    assert!(err.contains("overlaps 10.10.0.0/24"), "{err}");
    let mut v = serde_json::to_value(&a).unwrap();
    v["config"]["subnet_prefix_len"] = 8.into();
    assert!(serde_json::from_value::<SubnetAllocator>(v).is_err());
    // A network overlapping a reserved prefix (the routes changed) still loads.
    let mut v = serde_json::to_value(&a).unwrap();
    v["reserved"] = serde_json::json!(["10.10.0.0/16"]);
    serde_json::from_value::<SubnetAllocator>(v).unwrap();
}
