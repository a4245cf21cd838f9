//! Service aliases (`--network name=NET,alias=A`) in the record table.

use std::net::IpAddr;

use hickory_proto::rr::RecordType;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn at(network: &str, address: &str) -> NetAddr {
    NetAddr {
        network: network.to_string(),
        ip: ip(address),
    }
}

fn alias(network: &str, name: &str) -> NetAlias {
    NetAlias {
        network: network.to_string(),
        alias: name.to_string(),
    }
}

fn task(id: &str, slot: u32, addresses: Vec<NetAddr>) -> Task {
    Task {
        id: id.to_string(),
        slot: Some(slot),
        healthy: true,
        nameservers: Vec::new(),
        addresses,
    }
}

/// `web` (vip) on front and back, alias `www` on front; `db` (dnsrr) on back, alias
/// `primary` there; `web` also claims `db` as an alias on back (a service's name wins).
fn state() -> DnsState {
    DnsState {
        services: vec![
            Service {
                name: "web".into(),
                stack: None,
                endpoint_mode: EndpointMode::Vip,
                vips: vec![at("front", "10.0.1.2"), at("back", "10.0.2.2")],
                networks: Vec::new(),
                aliases: vec![alias("front", "www"), alias("back", "db")],
                tasks: vec![task(
                    "w1",
                    1,
                    vec![at("front", "10.0.1.5"), at("back", "10.0.2.5")],
                )],
            },
            Service {
                name: "db".into(),
                stack: None,
                endpoint_mode: EndpointMode::Dnsrr,
                vips: Vec::new(),
                networks: Vec::new(),
                aliases: vec![alias("back", "primary")],
                tasks: vec![
                    task("d1", 1, vec![at("back", "10.0.2.10")]),
                    task("d2", 2, vec![at("back", "10.0.2.11")]),
                ],
            },
        ],
        containers: Vec::new(),
    }
}

fn a(table: &RecordTable, name: &str, networks: &[&str]) -> Lookup {
    let networks: Vec<String> = networks.iter().map(|n| n.to_string()).collect();
    table.lookup(name, RecordType::A, &networks)
}

fn found(addrs: &[&str]) -> Lookup {
    Lookup::Found(addrs.iter().map(|s| RecordData::Addr(ip(s))).collect())
}

#[test]
fn an_alias_answers_as_the_service_on_its_network_only() {
    let table = RecordTable::build(&state()).unwrap();
    // vip mode: the VIP on the alias's network; dnsrr: the tasks.
    assert_eq!(a(&table, "www", &["front"]), found(&["10.0.1.2"]));
    assert_eq!(a(&table, "tasks.www", &["front"]), found(&["10.0.1.5"]));
    assert_eq!(a(&table, "www", &["back"]), Lookup::NxDomain);
    assert_eq!(
        a(&table, "primary", &["back"]),
        found(&["10.0.2.10", "10.0.2.11"])
    );
    assert_eq!(
        a(&table, "tasks.primary", &["back"]),
        found(&["10.0.2.10", "10.0.2.11"])
    );
    // `db` is a service's own name on back: the alias does not take it over.
    assert_eq!(
        a(&table, "db", &["back"]),
        found(&["10.0.2.10", "10.0.2.11"])
    );
}

#[test]
fn services_sharing_an_alias_answer_together() {
    let mut s = state();
    s.services[1].aliases.push(alias("back", "store"));
    s.services[0].aliases.push(alias("back", "store"));
    let table = RecordTable::build(&s).unwrap();
    assert_eq!(
        a(&table, "store", &["back"]),
        found(&["10.0.2.2", "10.0.2.10", "10.0.2.11"])
    );
}

#[test]
fn an_alias_off_the_services_networks_or_badly_named_is_refused() {
    let mut s = state();
    s.services[1].aliases.push(alias("front", "nope"));
    let e = RecordTable::build(&s).unwrap_err();
    assert!(e.to_string().contains("which the service is not on"), "{e}");
    let mut s = state();
    s.services[0].aliases.push(alias("front", "bad name"));
    assert!(RecordTable::build(&s).is_err());
}
