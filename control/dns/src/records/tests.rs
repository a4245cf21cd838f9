use std::net::IpAddr;

use hickory_proto::rr::RecordType;

use super::reverse::parse_reverse;
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

fn task(id: &str, slot: Option<u32>, healthy: bool, addresses: Vec<NetAddr>) -> Task {
    Task {
        id: id.to_string(),
        slot,
        healthy,
        nameservers: Vec::new(),
        addresses,
    }
}

fn service(name: &str, mode: EndpointMode, vips: Vec<NetAddr>, tasks: Vec<Task>) -> Service {
    Service {
        name: name.to_string(),
        stack: None,
        endpoint_mode: mode,
        vips,
        networks: Vec::new(),
        aliases: Vec::new(),
        tasks,
    }
}

fn container(name: &str, addresses: Vec<NetAddr>, aliases: &[(&str, &str)]) -> Container {
    Container {
        name: name.to_string(),
        addresses,
        aliases: aliases
            .iter()
            .map(|(network, alias)| NetAlias {
                network: network.to_string(),
                alias: alias.to_string(),
            })
            .collect(),
    }
}

fn nets(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Networks: front, back, other, xnet.
fn state() -> DnsState {
    let web = service(
        "web",
        EndpointMode::Vip,
        vec![at("front", "10.0.1.2"), at("back", "10.0.2.2")],
        vec![
            task(
                "t1",
                Some(1),
                true,
                vec![at("front", "10.0.1.5"), at("back", "10.0.2.5")],
            ),
            task(
                "t2",
                Some(2),
                true,
                vec![at("front", "10.0.1.6"), at("back", "10.0.2.6")],
            ),
            task("t3", Some(3), false, vec![at("front", "10.0.1.7")]),
        ],
    );
    let db = service(
        "db",
        EndpointMode::Dnsrr,
        vec![],
        vec![
            task(
                "d1",
                Some(1),
                true,
                vec![at("back", "10.0.2.10"), at("back", "fd00::10")],
            ),
            task("d2", Some(2), true, vec![at("back", "10.0.2.11")]),
            task("d3", Some(3), false, vec![at("back", "10.0.2.12")]),
        ],
    );
    let agent = service(
        "agent",
        EndpointMode::Vip,
        vec![at("front", "10.0.1.3")],
        vec![
            task("g1", None, true, vec![at("front", "10.0.1.20")]),
            task("g2", None, true, vec![at("front", "10.0.1.21")]),
        ],
    );
    let mut api = service(
        "api",
        EndpointMode::Vip,
        vec![at("front", "10.0.1.30")],
        vec![task("a1", Some(1), true, vec![at("front", "10.0.1.31")])],
    );
    api.stack = Some("app".to_string());
    let mut x_cache = service(
        "cache",
        EndpointMode::Vip,
        vec![at("other", "10.0.3.2"), at("xnet", "10.0.4.2")],
        vec![],
    );
    x_cache.stack = Some("x".to_string());
    let mut y_cache = service(
        "cache",
        EndpointMode::Vip,
        vec![at("other", "10.0.3.3")],
        vec![],
    );
    y_cache.stack = Some("y".to_string());
    let secret = service(
        "secret",
        EndpointMode::Vip,
        vec![at("other", "10.0.3.4")],
        vec![],
    );
    DnsState {
        services: vec![web, db, agent, api, x_cache, y_cache, secret],
        containers: vec![
            container(
                "debug",
                vec![at("front", "10.0.1.9")],
                &[("front", "toolbox")],
            ),
            container(
                "backonly",
                vec![at("back", "10.0.2.50")],
                &[("back", "backalias")],
            ),
            container(
                "client",
                vec![at("front", "10.0.1.50"), at("back", "10.0.2.51")],
                &[],
            ),
        ],
    }
}

fn table() -> RecordTable {
    RecordTable::build(&state()).expect("the fixture state is valid")
}

fn a(table: &RecordTable, name: &str, scope: &[&str]) -> Lookup {
    table.lookup(name, RecordType::A, &nets(scope))
}

fn addrs(list: &[&str]) -> Lookup {
    Lookup::Found(list.iter().map(|s| RecordData::Addr(ip(s))).collect())
}

fn names(list: &[&str]) -> Lookup {
    Lookup::Found(
        list.iter()
            .map(|s| RecordData::Name(s.to_string()))
            .collect(),
    )
}

#[test]
fn vip_service_answers_its_vip_on_each_network_in_scope() {
    let t = table();
    assert_eq!(a(&t, "web", &["front"]), addrs(&["10.0.1.2"]));
    assert_eq!(a(&t, "web", &["back"]), addrs(&["10.0.2.2"]));
    assert_eq!(
        a(&t, "web", &["front", "back"]),
        addrs(&["10.0.1.2", "10.0.2.2"])
    );
}

#[test]
fn tasks_name_answers_healthy_task_addresses_on_the_network() {
    let t = table();
    assert_eq!(
        a(&t, "tasks.web", &["front"]),
        addrs(&["10.0.1.5", "10.0.1.6"]),
        "t3 is unhealthy"
    );
    assert_eq!(
        a(&t, "tasks.web", &["back"]),
        addrs(&["10.0.2.5", "10.0.2.6"])
    );
}

#[test]
fn dnsrr_service_answers_healthy_task_addresses() {
    let t = table();
    assert_eq!(a(&t, "db", &["back"]), addrs(&["10.0.2.10", "10.0.2.11"]));
    assert_eq!(
        t.lookup("db", RecordType::AAAA, &nets(&["back"])),
        addrs(&["fd00::10"])
    );
    assert_eq!(
        a(&t, "tasks.db", &["back"]),
        addrs(&["10.0.2.10", "10.0.2.11"])
    );
    assert_eq!(
        a(&t, "db", &["front"]),
        Lookup::NxDomain,
        "db is not on front"
    );
}

#[test]
fn task_names_answer_the_task_address_healthy_or_not() {
    let t = table();
    assert_eq!(a(&t, "web.1.t1", &["front"]), addrs(&["10.0.1.5"]));
    assert_eq!(a(&t, "web.1.t1", &["back"]), addrs(&["10.0.2.5"]));
    assert_eq!(a(&t, "web.2", &["front"]), addrs(&["10.0.1.6"]));
    assert_eq!(a(&t, "web.3.t3", &["front"]), addrs(&["10.0.1.7"]));
    assert_eq!(
        a(&t, "web.3", &["back"]),
        Lookup::NxDomain,
        "t3 is not on back"
    );
    assert_eq!(a(&t, "db.1.d1", &["back"]), addrs(&["10.0.2.10"]));
    assert_eq!(
        t.lookup("db.1.d1", RecordType::AAAA, &nets(&["back"])),
        addrs(&["fd00::10"])
    );
    assert_eq!(a(&t, "web.9", &["front"]), Lookup::NxDomain);
    assert_eq!(a(&t, "web.1.t2", &["front"]), Lookup::NxDomain);
}

#[test]
fn global_service_tasks_are_named_without_slot() {
    let t = table();
    assert_eq!(a(&t, "agent.g1", &["front"]), addrs(&["10.0.1.20"]));
    assert_eq!(a(&t, "agent.g2", &["front"]), addrs(&["10.0.1.21"]));
    assert_eq!(a(&t, "agent", &["front"]), addrs(&["10.0.1.3"]));
    assert_eq!(
        a(&t, "tasks.agent", &["front"]),
        addrs(&["10.0.1.20", "10.0.1.21"])
    );
    assert_eq!(a(&t, "agent.1", &["front"]), Lookup::NxDomain);
}

#[test]
fn containers_answer_on_their_networks_and_aliases_only_on_theirs() {
    let t = table();
    assert_eq!(a(&t, "debug", &["front"]), addrs(&["10.0.1.9"]));
    assert_eq!(a(&t, "toolbox", &["front"]), addrs(&["10.0.1.9"]));
    assert_eq!(a(&t, "debug", &["back"]), Lookup::NxDomain);
    assert_eq!(a(&t, "client", &["front"]), addrs(&["10.0.1.50"]));
    assert_eq!(a(&t, "client", &["back"]), addrs(&["10.0.2.51"]));
    assert_eq!(a(&t, "backalias", &["back"]), addrs(&["10.0.2.50"]));
    assert_eq!(
        a(&t, "backalias", &["front"]),
        Lookup::NxDomain,
        "an alias is only on its own network"
    );
}

#[test]
fn names_on_other_networks_are_not_in_scope() {
    let t = table();
    assert_eq!(a(&t, "secret", &["front", "back"]), Lookup::NxDomain);
    assert_eq!(a(&t, "secret", &["other"]), addrs(&["10.0.3.4"]));
    assert_eq!(a(&t, "web", &[]), Lookup::NxDomain);
    assert_eq!(a(&t, "web", &["nosuchnet"]), Lookup::NxDomain);
}

#[test]
fn stack_services_have_full_and_short_names() {
    let t = table();
    assert_eq!(a(&t, "app_api", &["front"]), addrs(&["10.0.1.30"]));
    assert_eq!(a(&t, "api", &["front"]), addrs(&["10.0.1.30"]));
    assert_eq!(a(&t, "tasks.api", &["front"]), addrs(&["10.0.1.31"]));
    assert_eq!(a(&t, "tasks.app_api", &["front"]), addrs(&["10.0.1.31"]));
    assert_eq!(a(&t, "app_api.1.a1", &["front"]), addrs(&["10.0.1.31"]));
    assert_eq!(a(&t, "app_api.1", &["front"]), addrs(&["10.0.1.31"]));
    assert_eq!(a(&t, "api", &["back"]), Lookup::NxDomain);
}

#[test]
fn a_short_name_two_stacks_share_on_a_network_is_ambiguous_there() {
    let t = table();
    assert_eq!(a(&t, "cache", &["other"]), Lookup::NxDomain);
    assert_eq!(a(&t, "cache", &["xnet"]), addrs(&["10.0.4.2"]));
    assert_eq!(
        a(&t, "cache", &["other", "xnet"]),
        addrs(&["10.0.4.2"]),
        "only x's own network answers"
    );
    assert_eq!(a(&t, "x_cache", &["other"]), addrs(&["10.0.3.2"]));
    assert_eq!(a(&t, "y_cache", &["other"]), addrs(&["10.0.3.3"]));
}

#[test]
fn exact_names_win_over_short_names() {
    let mut state = state();
    // A plain service named "api" on front: the stack's short name yields to it.
    state.services.push(service(
        "api",
        EndpointMode::Vip,
        vec![at("front", "10.0.1.40")],
        vec![],
    ));
    let t = RecordTable::build(&state).unwrap();
    assert_eq!(a(&t, "api", &["front"]), addrs(&["10.0.1.40"]));
    assert_eq!(a(&t, "app_api", &["front"]), addrs(&["10.0.1.30"]));
}

#[test]
fn nxdomain_and_nodata_are_told_apart() {
    let t = table();
    assert_eq!(
        t.lookup("web", RecordType::AAAA, &nets(&["front"])),
        Lookup::NoData,
        "IPv4-only service"
    );
    assert_eq!(
        t.lookup("web", RecordType::MX, &nets(&["front"])),
        Lookup::NoData
    );
    assert_eq!(
        t.lookup("web", RecordType::PTR, &nets(&["front"])),
        Lookup::NoData
    );
    assert_eq!(a(&t, "nosuchname", &["front"]), Lookup::NxDomain);
    assert_eq!(
        t.lookup("nosuchname", RecordType::AAAA, &nets(&["front"])),
        Lookup::NxDomain
    );

    // A dnsrr service with no healthy task, or none at all, is still known.
    let mut state = state();
    for task in &mut state.services[1].tasks {
        task.healthy = false;
    }
    let mut empty = service("empty", EndpointMode::Dnsrr, vec![], vec![]);
    empty.networks = vec!["back".to_string()];
    state.services.push(empty);
    let t = RecordTable::build(&state).unwrap();
    assert_eq!(a(&t, "db", &["back"]), Lookup::NoData);
    assert_eq!(a(&t, "tasks.db", &["back"]), Lookup::NoData);
    assert_eq!(a(&t, "db.1.d1", &["back"]), addrs(&["10.0.2.10"]));
    assert_eq!(a(&t, "empty", &["back"]), Lookup::NoData);
    assert_eq!(a(&t, "tasks.empty", &["back"]), Lookup::NoData);
    assert_eq!(a(&t, "empty", &["front"]), Lookup::NxDomain);
}

#[test]
fn any_answers_every_address() {
    let t = table();
    assert_eq!(
        t.lookup("db.1.d1", RecordType::ANY, &nets(&["back"])),
        addrs(&["10.0.2.10", "fd00::10"])
    );
}

#[test]
fn reverse_names_answer_for_vips_tasks_and_containers_in_scope() {
    let t = table();
    let ptr = |name: &str, scope: &[&str]| t.lookup(name, RecordType::PTR, &nets(scope));
    assert_eq!(ptr("2.1.0.10.in-addr.arpa", &["front"]), names(&["web"]));
    assert_eq!(ptr("2.2.0.10.in-addr.arpa", &["back"]), names(&["web"]));
    assert_eq!(
        ptr("5.1.0.10.in-addr.arpa", &["front"]),
        names(&["web.1.t1"])
    );
    assert_eq!(
        ptr("20.1.0.10.in-addr.arpa", &["front"]),
        names(&["agent.g1"])
    );
    assert_eq!(
        ptr("31.1.0.10.in-addr.arpa", &["front"]),
        names(&["app_api.1.a1"])
    );
    assert_eq!(
        ptr("30.1.0.10.in-addr.arpa", &["front"]),
        names(&["app_api"])
    );
    assert_eq!(ptr("9.1.0.10.in-addr.arpa", &["front"]), names(&["debug"]));
    assert_eq!(
        ptr("4.3.0.10.in-addr.arpa", &["front", "back"]),
        Lookup::NxDomain,
        "secret's VIP is on other only"
    );
    assert_eq!(ptr("4.3.0.10.in-addr.arpa", &["other"]), names(&["secret"]));
    assert_eq!(ptr("99.1.0.10.in-addr.arpa", &["front"]), Lookup::NxDomain);
    let v6 = reverse_name(ip("fd00::10"));
    assert_eq!(ptr(&v6, &["back"]), names(&["db.1.d1"]));
    assert_eq!(ptr(&v6.to_uppercase(), &["back"]), names(&["db.1.d1"]));
    assert_eq!(
        t.lookup("2.1.0.10.in-addr.arpa", RecordType::A, &nets(&["front"])),
        Lookup::NoData
    );
    assert_eq!(
        ptr("1.0.10.in-addr.arpa", &["front"]),
        Lookup::NxDomain,
        "partial"
    );
    assert_eq!(ptr("02.1.0.10.in-addr.arpa", &["front"]), Lookup::NxDomain);
    assert_eq!(ptr("256.1.0.10.in-addr.arpa", &["front"]), Lookup::NxDomain);
}

#[test]
fn reverse_names_round_trip() {
    for address in [
        "10.0.1.2",
        "0.0.0.1",
        "255.255.255.255",
        "fd00::10",
        "::1",
        "2001:db8::ff:1",
    ] {
        let address = ip(address);
        let name = reverse_name(address);
        assert_eq!(parse_reverse(&name), Some(address), "{name}");
    }
    assert_eq!(reverse_name(ip("10.0.1.2")), "2.1.0.10.in-addr.arpa");
    assert_eq!(parse_reverse("1.2.3.4.5.in-addr.arpa"), None);
    assert_eq!(parse_reverse("x.2.3.4.in-addr.arpa"), None);
    assert_eq!(parse_reverse("1.0.ip6.arpa"), None);
}

#[test]
fn lookups_ignore_case_and_a_trailing_dot() {
    let t = table();
    for name in ["WEB", "Web.", "web.", "wEb"] {
        assert_eq!(a(&t, name, &["front"]), addrs(&["10.0.1.2"]), "{name}");
    }
    assert_eq!(
        a(&t, "TASKS.Web.", &["front"]),
        addrs(&["10.0.1.5", "10.0.1.6"])
    );
    assert_eq!(a(&t, "WEB.1.T1", &["front"]), addrs(&["10.0.1.5"]));
    assert_eq!(a(&t, "App_Api", &["front"]), addrs(&["10.0.1.30"]));
    assert_eq!(a(&t, "API.", &["front"]), addrs(&["10.0.1.30"]));

    // Names declared in upper case are found in any case too.
    let mut state = state();
    state.containers.push(container(
        "BigName",
        vec![at("front", "10.0.1.60")],
        &[("front", "AliAs")],
    ));
    let t = RecordTable::build(&state).unwrap();
    assert_eq!(a(&t, "bigname", &["front"]), addrs(&["10.0.1.60"]));
    assert_eq!(a(&t, "ALIAS", &["front"]), addrs(&["10.0.1.60"]));
    assert_eq!(
        t.lookup("60.1.0.10.in-addr.arpa", RecordType::PTR, &nets(&["front"])),
        names(&["bigname"])
    );
}

#[test]
fn containers_may_share_a_name_or_alias() {
    let mut state = state();
    state.containers.push(container(
        "a1",
        vec![at("front", "10.0.1.61")],
        &[("front", "pool")],
    ));
    state.containers.push(container(
        "a2",
        vec![at("front", "10.0.1.62")],
        &[("front", "pool")],
    ));
    state
        .containers
        .push(container("pool", vec![at("front", "10.0.1.63")], &[]));
    let t = RecordTable::build(&state).unwrap();
    assert_eq!(
        a(&t, "pool", &["front"]),
        addrs(&["10.0.1.61", "10.0.1.62", "10.0.1.63"])
    );
}

#[test]
fn scope_is_the_socket_network_and_the_owners_networks() {
    let t = table();
    assert_eq!(t.networks_of(ip("10.0.1.5")), nets(&["back", "front"]));
    assert_eq!(t.networks_of(ip("10.0.1.50")), nets(&["back", "front"]));
    assert_eq!(t.networks_of(ip("10.0.1.9")), nets(&["front"]));
    assert_eq!(
        t.networks_of(ip("10.0.1.2")),
        Vec::<String>::new(),
        "a VIP asks nothing"
    );
    assert_eq!(t.networks_of(ip("192.0.2.1")), Vec::<String>::new());

    assert_eq!(t.scope("front", ip("10.0.1.5")), nets(&["back", "front"]));
    assert_eq!(t.scope("front", ip("10.0.1.9")), nets(&["front"]));
    assert_eq!(t.scope("front", ip("192.0.2.1")), nets(&["front"]));
    assert_eq!(
        t.scope("back", ip("10.0.1.5")),
        nets(&["back"]),
        "10.0.1.5 is t1's address on front, not on back"
    );

    // A container on front and back sees back's names through front's socket.
    let scope = t.scope("front", ip("10.0.1.50"));
    assert_eq!(
        a(
            &t,
            "db",
            &scope.iter().map(String::as_str).collect::<Vec<_>>()
        ),
        addrs(&["10.0.2.10", "10.0.2.11"])
    );
}

#[test]
fn overlapping_subnets_are_kept_apart_by_the_arrival_network() {
    let state = DnsState {
        services: vec![],
        containers: vec![
            container("one", vec![at("n1", "10.9.0.2"), at("n3", "10.9.3.2")], &[]),
            container("two", vec![at("n2", "10.9.0.2")], &[]),
        ],
    };
    let t = RecordTable::build(&state).unwrap();
    assert_eq!(t.networks_of(ip("10.9.0.2")), nets(&["n1", "n2", "n3"]));
    assert_eq!(t.scope("n1", ip("10.9.0.2")), nets(&["n1", "n3"]));
    assert_eq!(t.scope("n2", ip("10.9.0.2")), nets(&["n2"]));
}

fn refused(state: &DnsState) -> DnsStateError {
    RecordTable::build(state).expect_err("the state contradicts itself")
}

#[test]
fn a_name_that_is_a_service_and_a_container_on_one_network_is_refused() {
    let mut s = state();
    s.containers
        .push(container("web", vec![at("front", "10.0.1.70")], &[]));
    assert!(
        matches!(refused(&s), DnsStateError::NameConflict { ref name, ref network, .. } if name == "web" && network == "front"),
        "{}",
        refused(&s)
    );

    // The same name on different networks is no contradiction.
    let mut s = state();
    s.containers
        .push(container("web", vec![at("other", "10.0.3.70")], &[]));
    let t = RecordTable::build(&s).unwrap();
    assert_eq!(a(&t, "web", &["other"]), addrs(&["10.0.3.70"]));
    assert_eq!(a(&t, "web", &["front"]), addrs(&["10.0.1.2"]));

    let mut s = state();
    s.containers.push(container(
        "c",
        vec![at("front", "10.0.1.70")],
        &[("front", "WEB")],
    ));
    assert!(matches!(refused(&s), DnsStateError::NameConflict { .. }));

    let mut s = state();
    s.containers
        .push(container("tasks.web", vec![at("front", "10.0.1.70")], &[]));
    assert!(matches!(refused(&s), DnsStateError::NameConflict { .. }));

    let mut s = state();
    s.containers
        .push(container("web.1.t1", vec![at("front", "10.0.1.70")], &[]));
    assert!(matches!(refused(&s), DnsStateError::NameConflict { .. }));
}

#[test]
fn bad_names_are_refused() {
    let bad_service = |name: &str| {
        let mut s = state();
        s.services[0].name = name.to_string();
        refused(&s)
    };
    for name in ["", "we b", "web.x", "we/b", &"x".repeat(64), "wéb"] {
        assert!(
            matches!(
                bad_service(name),
                DnsStateError::InvalidName {
                    what: "service name",
                    ..
                }
            ),
            "{name:?}: {}",
            bad_service(name)
        );
    }
    let mut s = state();
    s.services[3].stack = Some("a.b".to_string());
    assert!(matches!(
        refused(&s),
        DnsStateError::InvalidName {
            what: "stack name",
            ..
        }
    ));
    let mut s = state();
    s.services[3].stack = Some("x".repeat(60));
    assert!(
        matches!(refused(&s), DnsStateError::InvalidName { .. }),
        "full name too long"
    );

    let bad_container = |name: &str| {
        let mut s = state();
        s.containers[0].name = name.to_string();
        refused(&s)
    };
    for name in ["", "a..b", ".a", "a.", "a b", "x.in-addr.arpa", "arpa"] {
        assert!(
            matches!(
                bad_container(name),
                DnsStateError::InvalidName {
                    what: "container name",
                    ..
                }
            ),
            "{name:?}"
        );
    }
    let mut s = state();
    s.containers[0].aliases[0].alias = "bad alias".to_string();
    assert!(matches!(
        refused(&s),
        DnsStateError::InvalidName {
            what: "network alias",
            ..
        }
    ));
    let mut s = state();
    s.services[0].tasks[0].id = "t.1".to_string();
    assert!(matches!(
        refused(&s),
        DnsStateError::InvalidName {
            what: "task ID",
            ..
        }
    ));
    let mut s = state();
    s.containers[0].addresses[0].network = String::new();
    assert!(matches!(refused(&s), DnsStateError::InvalidNetwork(_)));
    let mut s = state();
    s.containers[0].addresses[0].network = "a b".to_string();
    assert!(matches!(refused(&s), DnsStateError::InvalidNetwork(_)));

    // Dotted container names and aliases are fine (Docker allows them).
    let mut s = state();
    s.containers[0].name = "my.debug".to_string();
    s.containers[0].aliases[0].alias = "db.local".to_string();
    let t = RecordTable::build(&s).unwrap();
    assert_eq!(a(&t, "my.debug", &["front"]), addrs(&["10.0.1.9"]));
    assert_eq!(a(&t, "DB.local.", &["front"]), addrs(&["10.0.1.9"]));
}

#[test]
fn duplicates_are_refused() {
    let mut s = state();
    s.services[1].tasks[0].id = "T1".to_string();
    assert_eq!(refused(&s), DnsStateError::DuplicateTask("T1".to_string()));

    let mut s = state();
    s.services
        .push(service("WEB", EndpointMode::Vip, vec![], vec![]));
    assert_eq!(
        refused(&s),
        DnsStateError::DuplicateService("web".to_string())
    );

    // "app_api" as a plain name is the stack service's full name.
    let mut s = state();
    s.services
        .push(service("app_api", EndpointMode::Vip, vec![], vec![]));
    assert_eq!(
        refused(&s),
        DnsStateError::DuplicateService("app_api".to_string())
    );
}

#[test]
fn contradictory_addresses_and_modes_are_refused() {
    let mut s = state();
    s.services[1].tasks[1].addresses[0] = at("back", "10.0.2.10");
    assert!(
        matches!(refused(&s), DnsStateError::AddressConflict { .. }),
        "two tasks, one address"
    );

    let mut s = state();
    s.containers[0].addresses[0] = at("front", "10.0.1.2");
    assert!(
        matches!(refused(&s), DnsStateError::AddressConflict { .. }),
        "a container on a VIP"
    );

    // The same address on two networks is two addresses.
    let mut s = state();
    s.containers[0].addresses.push(at("back", "10.0.1.9"));
    RecordTable::build(&s).unwrap();

    let mut s = state();
    s.services[0].vips.push(at("front", "10.0.1.99"));
    assert!(
        matches!(refused(&s), DnsStateError::Service { .. }),
        "two VIPs on one network"
    );

    let mut s = state();
    s.services[1].vips.push(at("back", "10.0.2.99"));
    assert!(
        matches!(refused(&s), DnsStateError::Service { .. }),
        "dnsrr with a VIP"
    );

    let mut s = state();
    s.services[0].tasks[0]
        .addresses
        .push(at("other", "10.0.3.99"));
    assert!(
        matches!(refused(&s), DnsStateError::Service { .. }),
        "vip task where there is no VIP"
    );

    let mut s = state();
    s.services[0].networks.push("other".to_string());
    assert!(
        matches!(refused(&s), DnsStateError::Service { .. }),
        "vip service network without VIP"
    );

    let mut s = state();
    s.services[0].tasks[0].slot = None;
    assert!(
        matches!(refused(&s), DnsStateError::Service { .. }),
        "mixed slots"
    );

    let mut s = state();
    s.containers[0].aliases.push(NetAlias {
        network: "back".to_string(),
        alias: "x".to_string(),
    });
    assert!(
        matches!(refused(&s), DnsStateError::Container { .. }),
        "alias off the container's networks"
    );

    for bad in ["0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "ff02::1"] {
        let mut s = state();
        s.containers[0].addresses[0].ip = ip(bad);
        assert!(
            matches!(refused(&s), DnsStateError::InvalidAddress { .. }),
            "{bad}"
        );
    }
}

#[test]
fn two_tasks_in_one_slot_share_the_slot_name() {
    // During a rolling update the old and the new task briefly hold the same slot.
    let mut s = state();
    s.services[0].tasks[1].slot = Some(1);
    let t = RecordTable::build(&s).unwrap();
    assert_eq!(a(&t, "web.1", &["front"]), addrs(&["10.0.1.5", "10.0.1.6"]));
    assert_eq!(a(&t, "web.1.t2", &["front"]), addrs(&["10.0.1.6"]));
}

#[test]
fn the_documented_json_parses() {
    let json = r#"{
      "services": [
        { "name": "web", "stack": "app", "endpoint_mode": "vip",
          "vips": [{ "network": "front", "ip": "10.0.1.2" }],
          "tasks": [
            { "id": "k3l9x0", "slot": 1, "healthy": true,
              "addresses": [{ "network": "front", "ip": "10.0.1.5" }] }
          ] },
        { "name": "db", "endpoint_mode": "dnsrr", "networks": ["back"], "tasks": [] }
      ],
      "containers": [
        { "name": "debug", "addresses": [{ "network": "front", "ip": "10.0.1.9" }],
          "aliases": [{ "network": "front", "alias": "toolbox" }] }
      ]
    }"#;
    let state: DnsState = serde_json::from_str(json).unwrap();
    assert_eq!(state.services[0].stack.as_deref(), Some("app"));
    assert_eq!(state.services[1].endpoint_mode, EndpointMode::Dnsrr);
    let t = RecordTable::build(&state).unwrap();
    assert_eq!(a(&t, "app_web", &["front"]), addrs(&["10.0.1.2"]));
    assert_eq!(a(&t, "db", &["back"]), Lookup::NoData);

    // Round trip.
    let again: DnsState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    assert_eq!(again, state);
}

#[test]
fn json_defaults() {
    let state: DnsState = serde_json::from_str(
        r#"{"services": [{"name": "web", "tasks": [{"id": "t1", "addresses": []}]}]}"#,
    )
    .unwrap();
    let web = &state.services[0];
    assert_eq!(web.endpoint_mode, EndpointMode::Vip);
    assert!(web.stack.is_none() && web.vips.is_empty() && web.networks.is_empty());
    assert!(web.tasks[0].healthy, "healthy defaults to true");
    assert_eq!(web.tasks[0].slot, None);
    assert!(state.containers.is_empty());
    let empty: DnsState = serde_json::from_str("{}").unwrap();
    assert!(RecordTable::build(&empty).unwrap().is_empty());
}

#[test]
fn json_with_unknown_fields_or_bad_values_is_refused() {
    for json in [
        r#"{"services": [], "extra": 1}"#,
        r#"{"services": [{"name": "web", "ttl": 600}]}"#,
        r#"{"services": [{"name": "web", "tasks": [{"id": "t", "addresses": [], "state": "running"}]}]}"#,
        r#"{"services": [{"name": "web", "vips": [{"network": "n", "ip": "10.0.0.2", "prefix": 24}]}]}"#,
        r#"{"containers": [{"name": "c", "addresses": [], "aliases": [{"network": "n", "alias": "a", "x": 1}]}]}"#,
        r#"{"services": [{"name": "web", "endpoint_mode": "round-robin"}]}"#,
        r#"{"services": [{"name": "web", "vips": [{"network": "n", "ip": "10.0.0.300"}]}]}"#,
        r#"{"services": [{"stack": "x"}]}"#,
        r#"{"containers": [{"name": "c"}]}"#,
    ] {
        assert!(serde_json::from_str::<DnsState>(json).is_err(), "{json}");
    }
}

#[test]
fn shared_table_swaps_whole_tables() {
    let shared = SharedTable::default();
    assert!(shared.load().is_empty());
    shared.update(&state()).unwrap();
    let before = shared.load();
    assert_eq!(
        a(&before, "tasks.web", &["front"]),
        addrs(&["10.0.1.5", "10.0.1.6"])
    );

    // t2 is gone: the next load no longer has it.
    let mut s = state();
    s.services[0].tasks.remove(1);
    shared.update(&s).unwrap();
    assert_eq!(
        a(&shared.load(), "tasks.web", &["front"]),
        addrs(&["10.0.1.5"])
    );
    assert_eq!(a(&shared.load(), "web.2", &["front"]), Lookup::NxDomain);
    // A query that took the old table finishes with it.
    assert_eq!(a(&before, "web.2", &["front"]), addrs(&["10.0.1.6"]));

    // A refused state leaves the last good table in force.
    let mut bad = state();
    bad.containers
        .push(container("web", vec![at("front", "10.0.1.70")], &[]));
    assert!(shared.update(&bad).is_err());
    assert_eq!(
        a(&shared.load(), "tasks.web", &["front"]),
        addrs(&["10.0.1.5"])
    );
}
