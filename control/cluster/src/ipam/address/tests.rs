use std::{collections::HashSet, time::Instant};

use super::*;

const HOLD: Duration = Duration::from_secs(60);
const T0: Millis = Millis(1_700_000_000_000);

fn net4(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}
fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn at(ms: u64) -> Millis {
    Millis(T0.0 + ms)
}

#[test]
fn gateway_is_first_usable_and_allocated_first() {
    let mut pool = AddressPool::new(net4("10.0.9.0/24"), HOLD).unwrap();
    assert_eq!(pool.gateway(), ip4("10.0.9.1"));
    assert_eq!(pool.in_use(), 1);
    assert!(pool.is_allocated(ip4("10.0.9.1")));
    assert_eq!(pool.allocate(T0).unwrap(), ip4("10.0.9.2"));
    assert_eq!(pool.allocate(T0).unwrap(), ip4("10.0.9.3"));
    assert_eq!(pool.in_use(), 3);
}

#[test]
fn explicit_gateway() {
    let mut pool = AddressPool::with_gateway(net4("10.0.9.0/24"), ip4("10.0.9.254"), HOLD).unwrap();
    assert_eq!(pool.gateway(), ip4("10.0.9.254"));
    assert_eq!(pool.allocate(T0).unwrap(), ip4("10.0.9.1"));
    assert_eq!(
        AddressPool::with_gateway(net4("10.0.9.0/24"), ip4("10.0.9.255"), HOLD).unwrap_err(),
        IpamError::BroadcastAddress {
            addr: "10.0.9.255".parse().unwrap(),
            subnet: "10.0.9.0/24".parse().unwrap()
        }
    );
    assert!(matches!(
        AddressPool::with_gateway(net4("10.0.9.0/24"), ip4("10.0.8.1"), HOLD),
        Err(IpamError::OutOfSubnet { .. })
    ));
}

#[test]
fn exhaustion_names_the_subnet() {
    // A /30 has two usable addresses: the gateway and one more.
    let mut pool = AddressPool::new(net4("10.0.9.4/30"), HOLD).unwrap();
    assert_eq!(pool.allocate(T0).unwrap(), ip4("10.0.9.6"));
    let err = pool.allocate(T0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no free address in 10.0.9.4/30 (2 in use, 0 held back after release)"
    );

    // A /29 has six; with two released and held back the message says so.
    let mut pool = AddressPool::new(net4("10.0.9.0/29"), HOLD).unwrap();
    let got: Vec<_> = (0..5).map(|_| pool.allocate(T0).unwrap()).collect();
    assert_eq!(got.last(), Some(&ip4("10.0.9.6")));
    pool.release(got[0], T0).unwrap();
    pool.release(got[1], T0).unwrap();
    let err = pool.allocate(at(1000)).unwrap_err();
    assert_eq!(
        err,
        IpamError::AddressesExhausted {
            subnet: "10.0.9.0/29".parse().unwrap(),
            in_use: 4,
            held_back: 2
        }
    );
    assert_eq!(
        err.to_string(),
        "no free address in 10.0.9.0/29 (4 in use, 2 held back after release)"
    );
    assert_eq!(pool.held_back(at(1000)), 2);
}

#[test]
fn released_address_held_back_until_delay_is_over() {
    let mut pool = AddressPool::new(net4("10.0.9.0/29"), HOLD).unwrap();
    let got: Vec<_> = (0..5).map(|_| pool.allocate(T0).unwrap()).collect();
    pool.release(got[2], at(5_000)).unwrap();
    // Never early, not even by a millisecond.
    assert!(matches!(
        pool.allocate(at(5_000)),
        Err(IpamError::AddressesExhausted { held_back: 1, .. })
    ));
    assert!(pool.allocate(at(64_999)).is_err());
    assert_eq!(pool.held_back(at(64_999)), 1);
    assert_eq!(pool.held_back(at(65_000)), 0);
    assert_eq!(pool.allocate(at(65_000)).unwrap(), got[2]);
}

#[test]
fn never_used_addresses_preferred_then_oldest_release() {
    let mut pool = AddressPool::new(net4("10.0.9.0/29"), HOLD).unwrap();
    let a = pool.allocate(T0).unwrap(); // .2
    let b = pool.allocate(T0).unwrap(); // .3
    pool.release(b, at(10)).unwrap();
    pool.release(a, at(20)).unwrap();
    // Long after the hold-back: never-used .4 .5 .6 still come first.
    let later = at(1_000_000);
    assert_eq!(pool.allocate(later).unwrap(), ip4("10.0.9.4"));
    assert_eq!(pool.allocate(later).unwrap(), ip4("10.0.9.5"));
    assert_eq!(pool.allocate(later).unwrap(), ip4("10.0.9.6"));
    // Then the one released longest ago.
    assert_eq!(pool.allocate(later).unwrap(), b);
    assert_eq!(pool.allocate(later).unwrap(), a);
    assert!(pool.allocate(later).is_err());
}

#[test]
fn hold_back_zero_reuses_at_once_and_clock_going_back_does_not_release_early() {
    let mut pool = AddressPool::new(net4("10.0.9.0/30"), Duration::ZERO).unwrap();
    let a = pool.allocate(T0).unwrap();
    pool.release(a, T0).unwrap();
    assert_eq!(pool.allocate(T0).unwrap(), a);

    let mut pool = AddressPool::new(net4("10.0.9.0/30"), HOLD).unwrap();
    let a = pool.allocate(T0).unwrap();
    pool.release(a, at(100_000)).unwrap();
    // Another manager's clock is behind: still held back.
    assert!(pool.allocate(at(50_000)).is_err());
    assert_eq!(pool.allocate(at(160_000)).unwrap(), a);
}

#[test]
fn allocate_specific_checks() {
    let subnet: IpNet = "10.0.9.0/24".parse().unwrap();
    let mut pool = AddressPool::new(net4("10.0.9.0/24"), HOLD).unwrap();
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    assert_eq!(
        pool.allocate_specific(ip4("10.0.10.5"), T0),
        Err(IpamError::OutOfSubnet {
            addr: ip("10.0.10.5"),
            subnet
        })
    );
    assert_eq!(
        pool.allocate_specific(ip4("10.0.9.0"), T0),
        Err(IpamError::NetworkAddress {
            addr: ip("10.0.9.0"),
            subnet
        })
    );
    assert_eq!(
        pool.allocate_specific(ip4("10.0.9.255"), T0),
        Err(IpamError::BroadcastAddress {
            addr: ip("10.0.9.255"),
            subnet
        })
    );
    assert_eq!(
        pool.allocate_specific(ip4("10.0.9.1"), T0),
        Err(IpamError::AddressInUse {
            addr: ip("10.0.9.1"),
            subnet
        })
    );
    pool.allocate_specific(ip4("10.0.9.3"), T0).unwrap();
    assert_eq!(
        pool.allocate_specific(ip4("10.0.9.3"), T0)
            .unwrap_err()
            .to_string(),
        "10.0.9.3 is already in use in 10.0.9.0/24"
    );
    // The cursor skips addresses taken specifically ahead of it.
    assert_eq!(pool.allocate(T0).unwrap(), ip4("10.0.9.2"));
    assert_eq!(pool.allocate(T0).unwrap(), ip4("10.0.9.4"));

    // A held address is refused until its hold-back is over.
    pool.release(ip4("10.0.9.3"), at(1_000)).unwrap();
    let err = pool
        .allocate_specific(ip4("10.0.9.3"), at(21_000))
        .unwrap_err();
    assert_eq!(
        err,
        IpamError::AddressHeldBack {
            addr: ip("10.0.9.3"),
            subnet,
            available_at: at(61_000),
            remaining_ms: 40_000
        }
    );
    assert!(
        err.to_string().contains("held back for another 40000 ms"),
        "{err}"
    );
    pool.allocate_specific(ip4("10.0.9.3"), at(61_000)).unwrap();
    assert_eq!(pool.held_back(at(61_000)), 0);
}

#[test]
fn specific_release_ahead_of_cursor_is_not_never_used() {
    let mut pool = AddressPool::new(net4("10.0.9.0/29"), HOLD).unwrap();
    pool.allocate_specific(ip4("10.0.9.4"), T0).unwrap();
    pool.release(ip4("10.0.9.4"), T0).unwrap();
    // .4 was used: the cursor must not hand it out while it is held back.
    let got: Vec<_> = (0..4).map(|_| pool.allocate(at(1)).unwrap()).collect();
    assert_eq!(
        got,
        [
            ip4("10.0.9.2"),
            ip4("10.0.9.3"),
            ip4("10.0.9.5"),
            ip4("10.0.9.6")
        ]
    );
    assert!(pool.allocate(at(1)).is_err());
    assert_eq!(pool.allocate(at(60_000)).unwrap(), ip4("10.0.9.4"));
}

#[test]
fn release_checks() {
    let mut pool = AddressPool::new(net4("10.0.9.0/24"), HOLD).unwrap();
    assert_eq!(
        pool.release(ip4("10.0.9.1"), T0).unwrap_err().to_string(),
        "10.0.9.1 is the gateway of 10.0.9.0/24 and cannot be released"
    );
    assert_eq!(
        pool.release(ip4("10.0.9.7"), T0).unwrap_err().to_string(),
        "10.0.9.7 is not allocated in 10.0.9.0/24"
    );
    assert!(matches!(
        pool.release(ip4("192.168.1.7"), T0),
        Err(IpamError::OutOfSubnet { .. })
    ));
    let a = pool.allocate(T0).unwrap();
    pool.release(a, T0).unwrap();
    // Released twice: the second one is an error and does not move the hold-back.
    assert!(matches!(
        pool.release(a, at(30_000)),
        Err(IpamError::AddressNotAllocated { .. })
    ));
    assert_eq!(pool.held_back(at(59_999)), 1);
    assert_eq!(pool.held_back(at(60_000)), 0);
}

#[test]
fn bad_subnets_refused() {
    for s in ["10.0.9.0/31", "10.0.9.1/32"] {
        assert!(matches!(
            AddressPool::new(net4(s), HOLD),
            Err(IpamError::SubnetTooSmall { .. })
        ));
    }
    assert_eq!(
        AddressPool::new(net4("10.0.9.1/24"), HOLD)
            .unwrap_err()
            .to_string(),
        "10.0.9.1/24 has host bits set; did you mean 10.0.9.0/24?"
    );
    let v6: Ipv6Net = "fd00::/127".parse().unwrap();
    assert!(matches!(
        AddressPool::new(v6, HOLD),
        Err(IpamError::SubnetTooSmall { .. })
    ));
}

#[test]
fn ten_thousand_addresses_in_a_slash_16_quickly() {
    let start = Instant::now();
    let mut pool = AddressPool::new(net4("10.1.0.0/16"), HOLD).unwrap();
    let got: Vec<_> = (0..10_000).map(|_| pool.allocate(T0).unwrap()).collect();
    let unique: HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), 10_000);
    assert!(!unique.contains(&pool.gateway()));
    assert_eq!(pool.in_use(), 10_001);
    // Past the /24 boundary without trouble.
    assert_eq!(got[253], ip4("10.1.0.255"));
    assert_eq!(got[254], ip4("10.1.1.0"));
    // Release half, then fill the whole /16: all 65534 usable addresses, each once.
    for ip in got.iter().step_by(2) {
        pool.release(*ip, T0).unwrap();
    }
    let later = at(HOLD.as_millis() as u64);
    while pool.allocate(later).is_ok() {}
    assert_eq!(pool.in_use(), 65_534);
    let all: HashSet<_> = pool.allocated().collect();
    assert_eq!(all.len(), 65_534);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn huge_subnets_cost_nothing_up_front() {
    // A /8 and an IPv6 /64 (and even /0): made and used in no time, no per-address state.
    let mut pool = AddressPool::new(net4("10.0.0.0/8"), HOLD).unwrap();
    assert_eq!(pool.allocate(T0).unwrap(), ip4("10.0.0.2"));
    pool.allocate_specific(ip4("10.255.255.254"), T0).unwrap();
    assert!(matches!(
        pool.allocate_specific(ip4("10.255.255.255"), T0),
        Err(IpamError::BroadcastAddress { .. })
    ));
    assert!(serde_json::to_string(&pool).unwrap().len() < 300);

    let v6: Ipv6Net = "fd00:1:2:3::/64".parse().unwrap();
    let mut pool = AddressPool::new(v6, HOLD).unwrap();
    assert_eq!(pool.gateway(), "fd00:1:2:3::1".parse::<Ipv6Addr>().unwrap());
    for _ in 0..1_000 {
        pool.allocate(T0).unwrap();
    }
    // No broadcast in IPv6: the all-ones address is usable.
    let top: Ipv6Addr = "fd00:1:2:3:ffff:ffff:ffff:ffff".parse().unwrap();
    pool.allocate_specific(top, T0).unwrap();
    pool.release(top, T0).unwrap();
    assert_eq!(pool.in_use(), 1_001);

    let mut pool = AddressPool::new("::/0".parse::<Ipv6Net>().unwrap(), HOLD).unwrap();
    pool.allocate_specific(Ipv6Addr::from(u128::MAX), T0)
        .unwrap();
    assert_eq!(pool.allocate(T0).unwrap(), Ipv6Addr::from(2));
}

#[test]
fn cursor_at_the_end_of_the_subnet() {
    let mut pool = AddressPool::new("::/0".parse::<Ipv6Net>().unwrap(), Duration::ZERO).unwrap();
    // Jump the cursor to the very last address through a stored state.
    let mut json: serde_json::Value = serde_json::to_value(&pool).unwrap();
    json["next_unused"] = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".into();
    pool = serde_json::from_value(json).unwrap();
    assert_eq!(pool.allocate(T0).unwrap(), Ipv6Addr::from(u128::MAX));
    assert!(pool.allocate(T0).is_err());
}

#[test]
fn serde_round_trip_preserves_behavior() {
    let mut pool = AddressPool::new(net4("10.0.9.0/29"), HOLD).unwrap();
    let a = pool.allocate(T0).unwrap(); // .2
    pool.allocate(T0).unwrap(); // .3
    pool.allocate_specific(ip4("10.0.9.5"), T0).unwrap();
    pool.release(a, at(1_000)).unwrap();

    let json = serde_json::to_string(&pool).unwrap();
    assert!(json.contains("\"10.0.9.5\""), "{json}");
    let mut restored: AddressPool = serde_json::from_str(&json).unwrap();
    assert_eq!(restored, pool);
    assert_eq!(serde_json::to_string(&restored).unwrap(), json);

    // Same operations, same outcomes: the hold-back survived the restart.
    for p in [&mut pool, &mut restored] {
        assert!(p.allocate_specific(a, at(2_000)).is_err());
        assert_eq!(p.allocate(at(2_000)).unwrap(), ip4("10.0.9.4"));
        assert_eq!(p.allocate(at(2_000)).unwrap(), ip4("10.0.9.6"));
        assert!(matches!(
            p.allocate(at(60_999)),
            Err(IpamError::AddressesExhausted { held_back: 1, .. })
        ));
        assert_eq!(p.allocate(at(61_000)).unwrap(), a);
    }
    assert_eq!(restored, pool);

    let v6: Ipv6Net = "fd00::/64".parse().unwrap();
    let mut pool6 = AddressPool::new(v6, HOLD).unwrap();
    let b = pool6.allocate(T0).unwrap();
    pool6.release(b, T0).unwrap();
    let back: AddressPool<Ipv6Net> =
        serde_json::from_str(&serde_json::to_string(&pool6).unwrap()).unwrap();
    assert_eq!(back, pool6);
}

#[test]
fn inconsistent_stored_state_refused() {
    let pool = AddressPool::new(net4("10.0.9.0/29"), HOLD).unwrap();
    let good = serde_json::to_value(&pool).unwrap();
    let bad = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        edit(&mut v);
        serde_json::from_value::<AddressPool>(v)
            .unwrap_err()
            .to_string()
    };
    let err = bad(&|v| v["allocated"] = serde_json::json!(["10.0.9.1", "10.0.9.9"]));
    assert!(
        err.contains("10.0.9.9 is not in subnet 10.0.9.0/29"),
        "{err}"
    );
    let err = bad(&|v| v["allocated"] = serde_json::json!(["10.0.9.1", "10.0.9.1"]));
    assert!(err.contains("listed twice"), "{err}");
    let err = bad(&|v| v["allocated"] = serde_json::json!(["10.0.9.2"]));
    assert!(err.contains("gateway 10.0.9.1 is not allocated"), "{err}");
    let err = bad(&|v| {
        v["released"] = serde_json::json!([{"addr": "10.0.9.1", "at": 5}]);
    });
    assert!(err.contains("listed twice"), "{err}");
    let err = bad(&|v| v["subnet"] = "10.0.9.0/31".into());
    assert!(err.contains("too small"), "{err}");
}

#[test]
fn restored_pool_hands_out_never_used_then_forgotten_then_held_back() {
    // A record: .2 and .5 in use, .3 released at T0; .4 was used once and is no longer
    // listed anywhere; .6 is past the highest listed.
    let mut pool = AddressPool::restore(
        net4("10.0.9.0/29"),
        ip4("10.0.9.1"),
        HOLD,
        [ip4("10.0.9.2"), ip4("10.0.9.5")],
        [(ip4("10.0.9.3"), T0)],
    )
    .unwrap();
    assert_eq!(pool.in_use(), 3);
    assert_eq!(pool.held_back(at(1)), 1);
    assert_eq!(pool.allocate(at(1)).unwrap(), ip4("10.0.9.6"));
    assert_eq!(pool.allocate(at(1)).unwrap(), ip4("10.0.9.4"));
    assert!(matches!(
        pool.allocate(at(59_999)),
        Err(IpamError::AddressesExhausted { held_back: 1, .. })
    ));
    assert_eq!(pool.allocate(at(60_000)).unwrap(), ip4("10.0.9.3"));
    assert!(pool.allocate(at(60_000)).is_err());
}

#[test]
fn restored_pool_from_an_empty_record_is_a_new_pool() {
    let record: [Ipv4Addr; 0] = [];
    let restored =
        AddressPool::restore(net4("10.0.9.0/24"), ip4("10.0.9.1"), HOLD, record, []).unwrap();
    let mut fresh = AddressPool::new(net4("10.0.9.0/24"), HOLD).unwrap();
    let mut restored = restored;
    for _ in 0..5 {
        assert_eq!(restored.allocate(T0).unwrap(), fresh.allocate(T0).unwrap());
    }

    // A gateway at the end: nothing is above it, so everything below counts as forgotten
    // and comes in order, as from a pool made with that gateway.
    let mut restored =
        AddressPool::restore(net4("10.0.9.0/29"), ip4("10.0.9.6"), HOLD, record, []).unwrap();
    let mut fresh = AddressPool::with_gateway(net4("10.0.9.0/29"), ip4("10.0.9.6"), HOLD).unwrap();
    for _ in 0..5 {
        assert_eq!(restored.allocate(T0).unwrap(), fresh.allocate(T0).unwrap());
    }
    assert!(restored.allocate(T0).is_err());
}

#[test]
fn restore_is_lenient_with_the_record_but_not_with_the_gateway() {
    let mut pool = AddressPool::restore(
        net4("10.0.9.0/29"),
        ip4("10.0.9.1"),
        HOLD,
        // Twice, outside the subnet, the network and the broadcast address.
        [
            ip4("10.0.9.2"),
            ip4("10.0.9.2"),
            ip4("10.0.8.3"),
            ip4("10.0.9.0"),
            ip4("10.0.9.7"),
        ],
        // In use and released: in use. Released twice: from the latest release.
        [
            (ip4("10.0.9.2"), T0),
            (ip4("10.0.9.3"), at(5_000)),
            (ip4("10.0.9.3"), T0),
        ],
    )
    .unwrap();
    assert!(pool.is_allocated(ip4("10.0.9.2")));
    assert_eq!(pool.in_use(), 2);
    assert_eq!(pool.allocate(T0).unwrap(), ip4("10.0.9.4"));
    assert_eq!(pool.allocate(T0).unwrap(), ip4("10.0.9.5"));
    assert_eq!(pool.allocate(T0).unwrap(), ip4("10.0.9.6"));
    assert!(pool.allocate(at(64_999)).is_err());
    assert_eq!(pool.allocate(at(65_000)).unwrap(), ip4("10.0.9.3"));

    let none: [Ipv4Addr; 0] = [];
    for gateway in ["10.0.9.0", "10.0.9.7", "10.0.8.1"] {
        assert!(
            AddressPool::restore(net4("10.0.9.0/29"), ip4(gateway), HOLD, none, []).is_err(),
            "{gateway}"
        );
    }
}

#[test]
fn restored_pool_round_trips_and_a_released_forgotten_address_is_held_back() {
    let mut pool = AddressPool::restore(
        net4("10.0.9.0/29"),
        ip4("10.0.9.1"),
        HOLD,
        [ip4("10.0.9.5")],
        [],
    )
    .unwrap();
    // .2 .3 .4 are forgotten; .6 never used.
    assert_eq!(pool.allocate(T0).unwrap(), ip4("10.0.9.6"));
    assert_eq!(pool.allocate(T0).unwrap(), ip4("10.0.9.2"));
    let json = serde_json::to_string(&pool).unwrap();
    assert!(json.contains("\"next_forgotten\":\"10.0.9.3\""), "{json}");
    let mut back: AddressPool = serde_json::from_str(&json).unwrap();
    assert_eq!(back, pool);
    // Released now: tracked and held back like any other release, not forgotten.
    for p in [&mut pool, &mut back] {
        p.release(ip4("10.0.9.2"), T0).unwrap();
        assert_eq!(p.allocate(T0).unwrap(), ip4("10.0.9.3"));
        assert_eq!(p.allocate(T0).unwrap(), ip4("10.0.9.4"));
        assert!(p.allocate(at(1)).is_err());
        assert_eq!(p.allocate(at(60_000)).unwrap(), ip4("10.0.9.2"));
    }
    // A pool that was never restored writes no such field.
    let fresh = AddressPool::new(net4("10.0.9.0/29"), HOLD).unwrap();
    assert!(!serde_json::to_string(&fresh)
        .unwrap()
        .contains("next_forgotten"));
}

#[test]
fn restoring_a_big_subnet_costs_what_the_record_holds() {
    let start = Instant::now();
    let in_use: Vec<Ipv4Addr> = (2..2_000u32)
        .map(|i| Ipv4Addr::from(u32::from(ip4("10.1.0.0")) + i * 30))
        .collect();
    let mut pool = AddressPool::restore(
        net4("10.1.0.0/16"),
        ip4("10.1.0.1"),
        HOLD,
        in_use.iter().copied(),
        [],
    )
    .unwrap();
    // Fill the /16: never-used first, then the forgotten ones, each once.
    let mut got = HashSet::new();
    while let Ok(a) = pool.allocate(T0) {
        assert!(got.insert(a), "{a} twice");
    }
    assert_eq!(got.len() + in_use.len() + 1, 65_534);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}
