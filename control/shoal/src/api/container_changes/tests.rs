use shoal_cluster::store::DnsConfig;

use super::*;

#[test]
fn hosts_read_as_docker_reads_them() {
    assert_eq!(parse_host("db:10.1.2.3").unwrap(), "10.1.2.3 db");
    assert_eq!(parse_host("six:fe80::1").unwrap(), "fe80::1 six");
    assert_eq!(parse_host("six=[2001:db8::1]").unwrap(), "2001:db8::1 six");
    for bad in ["db", ":10.1.2.3", "db:", "db:not-an-ip", "a b:10.0.0.1"] {
        let e = parse_host(bad).unwrap_err();
        assert!(e.starts_with("invalid --host"), "{bad}: {e}");
    }
    assert!(parse_host("gw:host-gateway")
        .unwrap_err()
        .contains("host-gateway is not supported"));
}

#[test]
fn stop_signals_as_dockerd_takes_them() {
    for ok in ["SIGTERM", "term", "INT", "9", "64", "SIGRTMIN+3", "RTMAX-1"] {
        assert_eq!(check_stop_signal(ok), Ok(()), "{ok}");
    }
    for bad in ["0", "65", "SIGNOPE", "", "RTMIN+99"] {
        assert!(check_stop_signal(bad).is_err(), "{bad}");
    }
}

#[test]
fn container_options_are_checked_whole() {
    let ok = ContainerOptions {
        dir: "/srv".into(),
        hostname: "{{.Service.Name}}-{{.Task.Slot}}".into(),
        stop_signal: "SIGINT".into(),
        dns: DnsConfig {
            nameservers: vec!["10.0.0.53".into()],
            search: vec!["example.org".into()],
            options: vec!["ndots:2".into()],
        },
        hosts: vec!["10.1.2.3 db".into()],
        ..Default::default()
    };
    assert_eq!(check_container_options(&ok), Ok(()));
    let bad = |f: &dyn Fn(&mut ContainerOptions)| {
        let mut o = ok.clone();
        f(&mut o);
        check_container_options(&o).unwrap_err()
    };
    assert!(bad(&|o| o.dir = "srv".into()).contains("absolute path"));
    assert!(bad(&|o| o.hostname = "{{.Service.Nmae}}".into()).contains("unknown field"));
    assert!(bad(&|o| o.stop_signal = "NOPE".into()).contains("--stop-signal"));
    assert!(bad(&|o| o.dns.nameservers = vec!["ns1".into()]).contains("--dns"));
    assert!(bad(&|o| o.dns.search = vec!["a..b".into()]).contains("--dns-search"));
    assert!(bad(&|o| o.hosts = vec!["db".into()]).contains("host entry"));
}

#[test]
fn update_changes_add_then_remove_in_docker_order() {
    let mut o = ContainerOptions {
        dns: DnsConfig {
            nameservers: vec!["10.0.0.1".into(), "10.0.0.2".into()],
            ..Default::default()
        },
        hosts: vec![
            "10.1.2.3 db".into(),
            "10.1.2.4 db cache".into(),
            "10.1.2.5 web".into(),
        ],
        labels: BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]),
        ..Default::default()
    };
    ContainerChanges {
        entrypoint: Some(vec!["/init".into()]),
        user: Some("nobody".into()),
        init: Some(false),
        dns_add: vec!["10.0.0.3".into(), "10.0.0.1".into()],
        dns_rm: vec!["10.0.0.2".into()],
        host_rm: vec!["db".into(), "web:10.9.9.9".into()],
        host_add: vec!["10.1.2.6 new".into()],
        label_add: BTreeMap::from([("c".into(), "3".into())]),
        label_rm: vec!["a".into()],
        ..Default::default()
    }
    .apply(&mut o);
    assert_eq!(o.entrypoint, ["/init"]);
    assert_eq!(o.user, "nobody");
    assert_eq!(o.init, Some(false));
    assert_eq!(o.dns.nameservers, ["10.0.0.1", "10.0.0.3"]);
    // `db` leaves every entry; `web:10.9.9.9` names no entry.
    assert_eq!(o.hosts, ["10.1.2.4 cache", "10.1.2.5 web", "10.1.2.6 new"]);
    assert_eq!(
        o.labels,
        BTreeMap::from([("b".into(), "2".into()), ("c".into(), "3".into())])
    );
    let before = o.clone();
    ContainerChanges::default().apply(&mut o);
    assert_eq!(o, before, "no flag, no change");
}

#[test]
fn aliases_are_dns_names() {
    assert_eq!(check_alias("db"), Ok(()));
    assert_eq!(check_alias("db.internal"), Ok(()));
    assert!(check_alias("").is_err());
    assert!(check_alias("a b").is_err());
    assert!(check_alias("a..b").is_err());
}

#[test]
fn mount_changes_remove_by_target_then_add_replacing_the_same_target() {
    let volume = |source: &str, target: &str| Mount {
        source: source.into(),
        target: target.into(),
        ..Default::default()
    };
    let mut o = ContainerOptions {
        mounts: vec![volume("a", "/a"), volume("b", "/b"), volume("c", "/c")],
        ..Default::default()
    };
    ContainerChanges {
        mount_rm: vec!["/a/".into()],
        mount_add: vec![volume("b2", "/b"), volume("d", "/d")],
        read_only: Some(true),
        limit_nano_cpus: Some(500_000_000),
        limit_pids: Some(100),
        ..Default::default()
    }
    .apply(&mut o);
    assert_eq!(
        (o.limits.nano_cpus, o.limits.memory_bytes, o.limits.pids),
        (500_000_000, 0, 100)
    );
    let shown: Vec<_> = o
        .mounts
        .iter()
        .map(|m| (m.source.as_str(), m.target.as_str()))
        .collect();
    assert_eq!(shown, [("c", "/c"), ("b2", "/b"), ("d", "/d")]);
    assert!(o.read_only);
    // Absent flags leave both alone.
    ContainerChanges::default().apply(&mut o);
    assert_eq!(o.mounts.len(), 3);
    assert!(o.read_only);
    assert_eq!(o.limits.pids, 100);
    // A mount checked with the service's others: two on one target are refused.
    o.mounts.push(volume("e", "/c"));
    assert!(check_container_options(&o)
        .unwrap_err()
        .contains("more than once"));
}

#[test]
fn capabilities_made_effective_as_docker_makes_them() {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(normalize_capability(" net_admin").unwrap(), "CAP_NET_ADMIN");
    assert_eq!(
        normalize_capability("CAP_SYS_TIME").unwrap(),
        "CAP_SYS_TIME"
    );
    assert_eq!(normalize_capability("all").unwrap(), "ALL");
    for bad in ["", "CAP_", "NOT_A_CAP", "net admin"] {
        let e = normalize_capability(bad).unwrap_err();
        assert!(e.contains("unknown capability"), "{bad}: {e}");
    }
    // Sorted, once each; one both added and dropped is only added.
    let (add, drop) = effective_capabilities(
        &v(&["sys_time", "NET_ADMIN", "CAP_NET_ADMIN"]),
        &v(&["chown", "net_admin"]),
    )
    .unwrap();
    assert_eq!(add, v(&["CAP_NET_ADMIN", "CAP_SYS_TIME"]));
    assert_eq!(drop, v(&["CAP_CHOWN"]));
    // ALL trumps the rest of its list.
    let (add, drop) = effective_capabilities(&v(&["ALL", "chown"]), &v(&["kill"])).unwrap();
    assert_eq!((add, drop), (v(&["ALL"]), v(&["CAP_KILL"])));
    let e = effective_capabilities(&[], &v(&["bogus"])).unwrap_err();
    assert!(e.starts_with("invalid --cap-drop"), "{e}");
    // A stored unknown one (from a bad API request) is refused by the check.
    let o = ContainerOptions {
        cap_add: v(&["CAP_BOGUS"]),
        ..Default::default()
    };
    assert!(check_container_options(&o)
        .unwrap_err()
        .contains("--cap-add"));
}

#[test]
fn capability_updates_move_between_the_lists() {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut o = ContainerOptions {
        cap_add: v(&["CAP_NET_ADMIN", "CAP_SYS_TIME"]),
        cap_drop: v(&["CAP_CHOWN"]),
        ..Default::default()
    };
    ContainerChanges {
        cap_add: v(&["CAP_CHOWN", "CAP_KILL"]),
        cap_drop: v(&["CAP_SYS_TIME", "CAP_KILL", "CAP_MKNOD"]),
        ..Default::default()
    }
    .apply(&mut o);
    // Dropping takes it off the added ones; adding off the dropped ones; both: added.
    assert_eq!(o.cap_add, v(&["CAP_CHOWN", "CAP_KILL", "CAP_NET_ADMIN"]));
    assert_eq!(o.cap_drop, v(&["CAP_MKNOD", "CAP_SYS_TIME"]));
    // No cap flags: nothing changes.
    let before = o.clone();
    ContainerChanges::default().apply(&mut o);
    assert_eq!(o, before);
}

#[test]
fn privileged_and_devices_on_update() {
    let dev = |t: &str| Device::parse(t).unwrap();
    let mut o = ContainerOptions {
        privileged: true,
        devices: vec![dev("/dev/null:/dev/xnull"), dev("/dev/zero:/dev/z:r")],
        ..Default::default()
    };
    ContainerChanges {
        privileged: Some(false),
        device_rm: vec!["/dev/z".into()],
        device_add: vec![dev("/dev/full:/dev/xnull:rw"), dev("/dev/random")],
        ..Default::default()
    }
    .apply(&mut o);
    assert!(!o.privileged);
    let shown: Vec<String> = o.devices.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        shown,
        ["/dev/full:/dev/xnull:rw", "/dev/random:/dev/random:rwm"]
    );
    // Nothing said: nothing changes.
    let before = o.clone();
    ContainerChanges::default().apply(&mut o);
    assert_eq!(o, before);
    let mut twice = o.clone();
    twice.devices.push(dev("/dev/zero:/dev/random"));
    assert!(check_container_options(&twice)
        .unwrap_err()
        .contains("given twice"));
}
