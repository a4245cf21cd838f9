//! The compose module's tests: interpolation, files and their merge, and each part of a
//! service's conversion.

use std::path::Path;

use docker_compose_types::{Environment, Ports};
use shoal_cluster::store::ObjectKind;

use super::*;

fn vars(k: &str) -> Option<String> {
    match k {
        "TAG" => Some("1.2".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

#[test]
fn interpolation_forms() {
    let t = "a: ${TAG}\nb: ${NOPE:-def}\nc: $$HOME\nd: ${EMPTY:-x}\ne: ${EMPTY-x}\nf: $TAG.0\n";
    let out = interpolate(t, "f.yml", &vars).unwrap();
    assert_eq!(out, "a: 1.2\nb: def\nc: $HOME\nd: x\ne: \nf: 1.2.0\n");
}

#[test]
fn required_variable_error_has_place() {
    let e = interpolate("x: 1\ny: ${NOPE:?set it}\n", "f.yml", &vars).unwrap_err();
    assert_eq!(
        e,
        "f.yml:2:4: required variable NOPE is missing a value: set it"
    );
}

#[test]
fn malformed_file_gives_file_line_col() {
    let e = parse("services:\n  web:\n    image: [\n", "s.yml", &vars).unwrap_err();
    assert!(e.starts_with("s.yml:"), "{e}");
    let parts: Vec<&str> = e.splitn(4, ':').collect();
    assert!(
        parts[1].parse::<u64>().is_ok() && parts[2].parse::<u64>().is_ok(),
        "{e}"
    );
    let e = parse("services:\n  web:\n    ports: 5\n", "s.yml", &vars).unwrap_err();
    assert!(e.starts_with("s.yml:3:5: "), "{e}");
}

#[test]
fn env_file() {
    let v = parse_env_file("# c\nA=1\nexport B=\"two\"\n\n", ".env").unwrap();
    assert_eq!(v["A"], "1");
    assert_eq!(v["B"], "two");
    assert!(parse_env_file("nope\n", ".env").is_err());
}

#[test]
fn merge_overrides_and_appends() {
    let a = parse(
        "services:\n  web:\n    image: nginx:1\n    ports: [\"80:80\"]\n    environment: {A: \"1\"}\n",
        "a.yml",
        &vars,
    )
    .unwrap();
    let b = parse(
        "services:\n  web:\n    image: nginx:${TAG}\n    ports: [\"443:443\"]\n    environment: {B: \"2\"}\n",
        "b.yml",
        &vars,
    )
    .unwrap();
    let c = merge(vec![a, b]).unwrap().compose;
    let web = c.services.0["web"].clone().unwrap();
    assert_eq!(web.image.as_deref(), Some("nginx:1.2"));
    let Ports::Short(p) = &web.ports else {
        panic!()
    };
    assert_eq!(p, &vec!["80:80".to_string(), "443:443".to_string()]);
    let Environment::KvPair(env) = &web.environment else {
        panic!()
    };
    assert_eq!(env.len(), 2);
}

fn compose(text: &str) -> Merged {
    merge(vec![parse(text, "s.yml", &vars).unwrap()]).unwrap()
}

#[test]
fn converts_a_service() {
    let c = compose(
        "services:\n  web:\n    image: nginx:1\n    command: [\"-g\", \"x\"]\n    environment: [\"A=1\"]\n    ports: [\"8080:80\"]\n    networks:\n      front: {aliases: [www]}\n    user: \"1000\"\n    deploy: {replicas: 3, labels: [\"tier=web\"]}\n    container_name: ignored\n",
    );
    let out = convert("app", &c, Path::new(".")).unwrap().services;
    let web = &out[0];
    assert_eq!(web.spec.name, "app_web");
    assert_eq!(web.spec.image, "nginx:1");
    assert_eq!(web.spec.labels[NAMESPACE_LABEL], "app");
    assert_eq!(web.spec.labels["tier"], "web");
    assert_eq!(web.spec.ports.len(), 1);
    assert_eq!(web.spec.ports[0].published, 8080);
    assert_eq!(web.spec.ports[0].target, 80);
    assert_eq!(web.warnings.len(), 1, "{:?}", web.warnings);
    assert!(web.warnings[0].contains("container_name"));
}

#[test]
fn default_network_and_global_mode() {
    let c = compose("services:\n  agent:\n    image: busybox\n    deploy: {mode: global}\n");
    let out = convert("app", &c, Path::new(".")).unwrap().services;
    let dbg = format!("{:?}", out[0].spec);
    assert!(dbg.contains("app_default"), "{dbg}");
    assert!(dbg.contains("Global"), "{dbg}");
}

#[test]
fn unsupported_keys_are_refused_by_name() {
    for (key, yaml) in [
        (
            "deploy.resources.limits.devices",
            "deploy: {resources: {limits: {devices: [{driver: x}]}}}",
        ),
        (
            "deploy.resources.reservations.devices",
            "deploy: {resources: {reservations: {devices: [{capabilities: [gpu]}]}}}",
        ),
        (
            "healthcheck.start_interval",
            "healthcheck: {test: \"true\", start_interval: 1s}",
        ),
    ] {
        let c = compose(&format!(
            "services:\n  w:\n    image: busybox\n    {yaml}\n"
        ));
        let e = convert("app", &c, Path::new(".")).unwrap_err();
        assert!(e.contains(key) && e.contains("service w"), "{e}");
        assert!(UNSUPPORTED_KEYS.contains(&key));
    }
    let c = compose(
        "services:\n  w:\n    image: busybox\n    healthcheck: {test: \"true\", start_interval: 1s}\n",
    );
    let e = convert("app", &c, Path::new(".")).unwrap_err();
    assert!(e.contains("API 1.44"), "says why: {e}");
}

#[test]
fn privileged_and_devices() {
    let c = compose(concat!(
        "services:\n  w:\n    image: busybox\n    privileged: true\n",
        "    devices: [\"/dev/null:/dev/xnull\", \"/dev/zero:/dev/z:r\", /dev/full, \"/dev/random:rw\"]\n",
    ));
    let spec = convert("app", &c, Path::new("."))
        .unwrap()
        .services
        .remove(0)
        .spec;
    assert!(spec.container.privileged);
    let shown: Vec<String> = spec
        .container
        .devices
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(
        shown,
        [
            "/dev/null:/dev/xnull:rwm",
            "/dev/zero:/dev/z:r",
            "/dev/full:/dev/full:rwm",
            "/dev/random:/dev/random:rw"
        ]
    );
    let plain = compose("services:\n  w:\n    image: busybox\n");
    let spec = convert("app", &plain, Path::new("."))
        .unwrap()
        .services
        .remove(0)
        .spec;
    assert!(!spec.container.privileged && spec.container.devices.is_empty());
    for (devices, says) in [
        ("[\"dev/null:/dev/x\"]", "not an absolute path"),
        ("[\"/dev/null:x\"]", "not an absolute path"),
        ("[\"/dev/null::r\"]", "empty part"),
        ("[\"/dev/null:/dev/x:rwx\"]", "combination of r, w and m"),
        (
            "[\"/dev/null:/dev/x\", \"/dev/zero:/dev/x\"]",
            "given twice",
        ),
    ] {
        let c = compose(&format!(
            "services:\n  w:\n    image: busybox\n    devices: {devices}\n"
        ));
        let e = convert("app", &c, Path::new(".")).unwrap_err();
        assert!(
            e.contains("service w") && e.contains(says),
            "{devices}: {e}"
        );
    }
}

#[test]
fn ulimits_and_sysctls() {
    let c = compose(concat!(
        "services:\n  w:\n    image: busybox\n",
        "    ulimits:\n      nproc: 65535\n      nofile: {soft: 1024, hard: 2048}\n",
        "    sysctls:\n      net.core.somaxconn: 4096\n      kernel.shmmax: \"1000\"\n",
    ));
    let spec = convert("app", &c, Path::new("."))
        .unwrap()
        .services
        .remove(0)
        .spec;
    let u = &spec.container.ulimits;
    assert_eq!((u["nproc"].soft, u["nproc"].hard), (65535, 65535));
    assert_eq!((u["nofile"].soft, u["nofile"].hard), (1024, 2048));
    assert_eq!(spec.container.sysctls["net.core.somaxconn"], "4096");
    assert_eq!(spec.container.sysctls["kernel.shmmax"], "1000");
    let listed =
        compose("services:\n  w:\n    image: busybox\n    sysctls: [net.ipv4.tcp_syncookies=0]\n");
    let spec = convert("app", &listed, Path::new("."))
        .unwrap()
        .services
        .remove(0)
        .spec;
    assert_eq!(spec.container.sysctls["net.ipv4.tcp_syncookies"], "0");
    for (yaml, want) in [
        (
            "sysctls: {kernel.hostname: x}",
            "sysctl 'kernel.hostname' is not whitelisted",
        ),
        ("ulimits: {nofile: {soft: 10, hard: 5}}", "soft limit"),
        ("ulimits: {colour: 5}", "invalid ulimit type"),
    ] {
        let c = compose(&format!(
            "services:\n  w:\n    image: busybox\n    {yaml}\n"
        ));
        let e = convert("app", &c, Path::new(".")).unwrap_err();
        assert!(e.contains("service w") && e.contains(want), "{yaml}: {e}");
    }
}

#[test]
fn capabilities_update_config_and_limits() {
    let c = compose(
        "services:\n  w:\n    image: busybox\n    cap_add: [net_admin]\n    cap_drop: [CAP_CHOWN]\n    deploy:\n      update_config: {parallelism: 2, delay: 3s, failure_action: rollback, monitor: 4s, max_failure_ratio: 0.5}\n      resources: {limits: {cpus: \"0.5\", memory: 64M}, reservations: {cpus: \"0.25\", memory: 32M}}\n",
    );
    let spec = convert("app", &c, Path::new("."))
        .unwrap()
        .services
        .remove(0)
        .spec;
    assert_eq!(spec.container.cap_add, vec!["CAP_NET_ADMIN".to_string()]);
    assert_eq!(spec.container.cap_drop, vec!["CAP_CHOWN".to_string()]);
    assert_eq!(spec.container.limits.nano_cpus, 500_000_000);
    assert_eq!(spec.container.limits.memory_bytes, 64 << 20);
    assert_eq!(spec.container.reservations.nano_cpus, 250_000_000);
    assert_eq!(spec.container.reservations.memory_bytes, 32 << 20);
    let u = &spec.update_config;
    assert_eq!((u.parallelism, u.delay_ms, u.monitor_ms), (2, 3_000, 4_000));
    assert_eq!(format!("{:?}", u.failure_action), "Rollback");
    assert_eq!(u.max_failure_ratio_ppm, 500_000);

    let bad = compose(
        "services:\n  w:\n    image: busybox\n    deploy: {update_config: {failure_action: explode}}\n",
    );
    let e = convert("app", &bad, Path::new(".")).unwrap_err();
    assert!(e.contains("service w") && e.contains("explode"), "{e}");
    let bad = compose(
        "services:\n  w:\n    image: busybox\n    deploy: {resources: {limits: {cpus: lots}}}\n",
    );
    let e = convert("app", &bad, Path::new(".")).unwrap_err();
    assert!(e.contains("deploy.resources.limits.cpus"), "{e}");
    let bad = compose(
        "services:\n  w:\n    image: busybox\n    deploy: {resources: {reservations: {memory: 12Q}}}\n",
    );
    let e = convert("app", &bad, Path::new(".")).unwrap_err();
    assert!(
        e.contains("service w: deploy.resources.reservations.memory"),
        "{e}"
    );
}

#[test]
fn env_file_read_as_docker_reads_it_and_environment_wins() {
    let vars = read_env_file("# c\nA=\"q\"\n  B=2\nFROM_HOST\nUNSET\n", "e", &|k| {
        (k == "FROM_HOST").then(|| "h".to_string())
    })
    .unwrap();
    let want = [("A", "\"q\""), ("B", "2"), ("FROM_HOST", "h")];
    assert_eq!(
        vars,
        want.map(|(k, v)| (k.to_string(), v.to_string())).to_vec()
    );
    assert!(read_env_file("BAD KEY=1\n", "e", &|_| None).is_err());

    let dir = std::env::temp_dir().join(format!("shoal-envfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.env"), "A=1\nB=file\n").unwrap();
    std::fs::write(dir.join("b.env"), "C=3\n").unwrap();
    let c = compose(
        "services:\n  w:\n    image: busybox\n    env_file: [a.env, b.env]\n    environment: [B=env]\n",
    );
    let spec = convert("app", &c, &dir).unwrap().services.remove(0).spec;
    assert_eq!(spec.env, vec!["A=1", "C=3", "B=env"]);
    let missing = compose("services:\n  w:\n    image: busybox\n    env_file: nope.env\n");
    let e = convert("app", &missing, &dir).unwrap_err();
    assert!(e.contains("service w") && e.contains("nope.env"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn volumes_named_bind_tmpfs_and_top_level() {
    use shoal_cluster::store::MountKind;
    let c = compose(concat!(
        "services:\n  w:\n    image: busybox\n    volumes:\n",
        "      - data:/data\n      - ./conf:/conf:ro\n      - ext:/ext\n      - named:/n\n",
        "      - {type: tmpfs, target: /t, tmpfs: {size: 1048576}}\n",
        "      - {type: volume, source: data, target: /d2, read_only: true}\n",
        "volumes:\n  data: {driver: local, driver_opts: {type: tmpfs, device: tmpfs}}\n",
        "  ext: {external: true}\n  named: {name: fixed}\n",
    ));
    let spec = convert("app", &c, Path::new("/srv/app"))
        .unwrap()
        .services
        .remove(0)
        .spec;
    let m = &spec.container.mounts;
    assert_eq!(m.len(), 6, "{m:?}");
    assert_eq!(
        (m[0].kind, m[0].source.as_str()),
        (MountKind::Volume, "app_data")
    );
    assert_eq!(m[0].volume_driver, "local");
    assert_eq!(
        m[0].volume_options.get("type").map(String::as_str),
        Some("tmpfs")
    );
    assert_eq!(
        (m[1].kind, m[1].source.as_str()),
        (MountKind::Bind, "/srv/app/conf")
    );
    assert!(m[1].read_only);
    assert_eq!(m[2].source, "ext");
    assert!(m[2].volume_driver.is_empty());
    assert_eq!(m[3].source, "fixed");
    assert_eq!(
        (m[4].kind, m[4].tmpfs_size),
        (MountKind::Tmpfs, Some(1_048_576))
    );
    assert!(m[5].read_only && m[5].source == "app_data");

    for (yaml, want) in [
        ("volumes: [nope:/x]", "undefined volume \"nope\""),
        ("volumes: [\"a:b:c:d\"]", "SOURCE:TARGET"),
        ("volumes: [\"/a:/b:zz\"]", "mode \"zz\""),
    ] {
        let c = compose(&format!(
            "services:\n  w:\n    image: busybox\n    {yaml}\n"
        ));
        let e = convert("app", &c, Path::new(".")).unwrap_err();
        assert!(e.contains("service w") && e.contains(want), "{e}");
    }
    let labelled = compose("services:\n  w:\n    image: busybox\nvolumes:\n  v: {labels: [a=b]}\n");
    let e = convert("app", &labelled, Path::new(".")).unwrap_err();
    assert!(e.contains("volume v") && e.contains("labels"), "{e}");
}

#[test]
fn restart_policy_and_constraints() {
    let c = compose(
        "services:\n  w:\n    image: busybox\n    deploy:\n      restart_policy: {condition: on-failure, delay: 2s, max_attempts: 3}\n      placement: {constraints: [\"node.role==manager\"], max_replicas_per_node: 2, preferences: [{spread: node.labels.zone}, {spread: node.labels.rack}]}\n",
    );
    let spec = convert("app", &c, Path::new("."))
        .unwrap()
        .services
        .remove(0)
        .spec;
    assert_eq!(spec.placement.max_replicas_per_node, 2);
    assert_eq!(
        spec.placement.preferences,
        ["node.labels.zone", "node.labels.rack"]
    );
    let bad = compose(
        "services:\n  w:\n    image: busybox\n    deploy: {placement: {preferences: [{spread: node.hostname}]}}\n",
    );
    let e = convert("app", &bad, Path::new(".")).unwrap_err();
    assert!(
        e.contains("service w") && e.contains("node.hostname"),
        "{e}"
    );
    let dbg = format!("{spec:?}");
    assert!(
        dbg.contains("OnFailure") && dbg.contains("node.role==manager"),
        "{dbg}"
    );
    assert!(
        dbg.contains("restart_delay_ms: 2000") && dbg.contains("restart_max_attempts: 3"),
        "{dbg}"
    );
}

#[test]
fn healthcheck() {
    let c = compose(
        "services:\n  w:\n    image: busybox\n    healthcheck: {test: \"wget -q localhost\", interval: 5s, retries: 2}\n",
    );
    let spec = convert("app", &c, Path::new("."))
        .unwrap()
        .services
        .remove(0)
        .spec;
    let h = spec.healthcheck.expect("a health check");
    assert_eq!(
        h.test,
        vec!["CMD-SHELL".to_string(), "wget -q localhost".into()]
    );
    assert_eq!((h.interval_ms, h.retries), (5000, 2));
}

#[test]
fn secrets_and_configs_top_level_and_per_service() {
    let dir = std::env::temp_dir().join(format!("shoal-stack-objects-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pw.txt"), "hunter2\n").unwrap();
    std::fs::write(dir.join("app.conf"), "a = 1\n").unwrap();
    let c = compose(concat!(
        "services:\n  w:\n    image: busybox\n",
        "    secrets:\n      - pw\n",
        "      - {source: ext, target: db_pw, uid: \"100\", gid: 101, mode: 0400}\n",
        "    configs:\n      - conf\n",
        "      - {source: conf, target: /etc/app.conf, mode: 0o440}\n",
        "secrets:\n  pw: {file: ./pw.txt, labels: {team: db}}\n  ext: {external: true}\n",
        "configs:\n  conf: {file: app.conf, name: fixed_conf}\n",
    ));
    let stack = convert("app", &c, &dir).unwrap();
    let spec = &stack.services[0].spec;
    let s = &spec.secrets;
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!((s[0].name.as_str(), s[0].target.as_str()), ("app_pw", "pw"));
    assert_eq!(
        (s[0].uid.as_str(), s[0].gid.as_str(), s[0].mode),
        ("0", "0", 0o444)
    );
    assert!(s[0].id.is_empty());
    assert_eq!((s[1].name.as_str(), s[1].target.as_str()), ("ext", "db_pw"));
    assert_eq!(
        (s[1].uid.as_str(), s[1].gid.as_str(), s[1].mode),
        ("100", "101", 0o400)
    );
    let k = &spec.configs;
    assert_eq!(
        (k[0].name.as_str(), k[0].target.as_str()),
        ("fixed_conf", "/conf")
    );
    assert_eq!((k[1].target.as_str(), k[1].mode), ("/etc/app.conf", 0o440));

    let o = &stack.objects;
    assert_eq!(o.len(), 3, "{o:?}");
    let pw = o.iter().find(|o| o.key == "pw").unwrap();
    assert_eq!(
        (pw.kind, pw.name.as_str(), pw.external),
        (ObjectKind::Secret, "app_pw", false)
    );
    assert_eq!(pw.data, b"hunter2\n");
    assert_eq!(pw.labels[NAMESPACE_LABEL], "app");
    assert_eq!(pw.labels["team"], "db");
    let ext = o.iter().find(|o| o.key == "ext").unwrap();
    assert!(ext.external && ext.data.is_empty() && ext.labels.is_empty());
    let conf = o.iter().find(|o| o.key == "conf").unwrap();
    assert_eq!(
        (conf.kind, conf.name.as_str()),
        (ObjectKind::Config, "fixed_conf")
    );

    for (yaml, want) in [
        (
            "    secrets: [nope]\nsecrets: {}\n",
            "undefined secret \"nope\"",
        ),
        (
            "    configs: [c]\nconfigs:\n  c: {file: missing.conf}\n",
            "config c: file",
        ),
        (
            "secrets:\n  s: {}\n",
            "secret s: a file (or external: true) is required",
        ),
        (
            "secrets:\n  s: {file: pw.txt, external: true}\n",
            "conflicting parameters",
        ),
        (
            "secrets:\n  s: {environment: PW}\n",
            "environment is not supported",
        ),
        (
            "    secrets: [{source: s, mode: 0999}]\nsecrets:\n  s: {file: pw.txt}\n",
            "mode \"0999\"",
        ),
    ] {
        let c = compose(&format!("services:\n  w:\n    image: busybox\n{yaml}"));
        let e = convert("app", &c, &dir).unwrap_err();
        assert!(e.contains(want), "{yaml}: {e}");
    }
    std::fs::write(dir.join("empty"), "").unwrap();
    let c = compose("services:\n  w:\n    image: busybox\nsecrets:\n  s: {file: empty}\n");
    let e = convert("app", &c, &dir).unwrap_err();
    assert!(e.contains("secret s") && e.contains("larger than 0"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_wrong_secret_entry_is_placed() {
    let e = parse(
        "services:\n  w:\n    image: busybox\n    secrets:\n      - {source: s, colour: red}\n",
        "s.yml",
        &vars,
    )
    .unwrap_err();
    assert!(e.starts_with("s.yml:5:"), "{e}");
    let e = parse(
        "secrets:\n  s: {file: a, flavour: b}\nservices:\n  w:\n    image: busybox\n",
        "s.yml",
        &vars,
    )
    .unwrap_err();
    assert!(e.starts_with("s.yml:2:") && e.contains("flavour"), "{e}");
    // A mistake elsewhere in a file with secrets still names its place (serde_yaml
    // places a wrong value at the start of the mapping holding it).
    let e = parse(
        "secrets:\n  s: {file: a}\nservices:\n  w:\n    image: busybox\n    ports: 5\n",
        "s.yml",
        &vars,
    )
    .unwrap_err();
    assert!(e.starts_with("s.yml:5:5: services.w"), "{e}");
}

#[test]
fn missing_image_is_an_error() {
    let c = compose("services:\n  w:\n    command: [\"true\"]\n");
    assert!(convert("app", &c, Path::new("."))
        .unwrap_err()
        .contains("image"));
}
