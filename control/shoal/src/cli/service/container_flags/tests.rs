use std::path::Path;

use clap::Parser;

use super::*;
use crate::cli::service::ServiceCommand;

/// `shoal service ...` alone, as the binary parses it.
#[derive(Parser)]
struct Service {
    #[command(subcommand)]
    command: ServiceCommand,
}

fn env_file(text: &str) -> Result<Vec<String>, String> {
    let lookup = |k: &str| (k == "FROM_SHELL").then(|| "shell value".to_string());
    parse_env_file(Path::new("app.env"), text.as_bytes(), &lookup)
}

#[test]
fn env_files_read_as_docker_reads_them() {
    let text =
        "\u{feff}# a comment\n\nA=1\n  B= spaced value \nEMPTY=\nFROM_SHELL\nUNSET\nC=x=y\r\n";
    assert_eq!(
        env_file(text).unwrap(),
        [
            "A=1",
            "B= spaced value ",
            "EMPTY=",
            "FROM_SHELL=shell value",
            "C=x=y"
        ]
    );
    let e = env_file("A=1\nBAD NAME=2\n").unwrap_err();
    assert_eq!(
        e,
        "env file app.env: line 2: variable \"BAD NAME\" contains whitespace"
    );
    assert!(env_file("=value")
        .unwrap_err()
        .contains("line 1: no variable name"));
    assert!(parse_env_file(Path::new("f"), b"A=\xff", &|_| None)
        .unwrap_err()
        .contains("not valid UTF-8"));
}

#[test]
fn network_specs_short_and_long() {
    assert_eq!(
        parse_network("front").unwrap(),
        ("front".to_string(), vec![])
    );
    assert_eq!(
        parse_network("name=back,alias=db,alias=primary").unwrap(),
        (
            "back".to_string(),
            vec!["db".to_string(), "primary".to_string()]
        )
    );
    for bad in [
        "alias=db",
        "name=back,alias=bad name",
        "name=back,ip=10.0.0.9",
        "name=x,oops",
    ] {
        assert!(parse_network(bad).is_err(), "{bad}");
    }
}

fn create(args: &[&str]) -> CreateArgs {
    let mut argv = vec!["service", "create"];
    argv.extend(args);
    match Service::try_parse_from(argv).expect("parses").command {
        ServiceCommand::Create(c) => *c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn create_flags_reach_the_spec() {
    let dir = std::env::temp_dir().join(format!("shoal-env-{}", std::process::id()));
    std::fs::write(&dir, "FROM_FILE=1\nSHARED=file\n").unwrap();
    let file = dir.to_str().unwrap().to_string();
    let a = create(&[
        "--name",
        "web",
        "--entrypoint",
        "/bin/sh -c",
        "-u",
        "1000:100",
        "-w",
        "/srv",
        "--hostname",
        "{{.Service.Name}}-{{.Task.Slot}}",
        "--dns",
        "10.0.0.53",
        "--dns-option",
        "ndots:2",
        "--dns-search",
        "example.org",
        "--host",
        "db:10.1.2.3",
        "--init=false",
        "--stop-signal",
        "SIGINT",
        "--env-file",
        &file,
        "-e",
        "SHARED=flag",
        "--container-label",
        "tier=web",
        "--network",
        "front",
        "--network",
        "name=back,alias=db",
        "busybox",
        "sleep",
        "60",
    ]);
    let spec = a.spec().unwrap();
    std::fs::remove_file(&dir).unwrap();
    let c = &spec.container;
    assert_eq!(c.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!((c.user.as_str(), c.dir.as_str()), ("1000:100", "/srv"));
    assert_eq!(c.hostname, "{{.Service.Name}}-{{.Task.Slot}}");
    assert_eq!(c.dns.nameservers, ["10.0.0.53"]);
    assert_eq!(c.dns.options, ["ndots:2"]);
    assert_eq!(c.dns.search, ["example.org"]);
    assert_eq!(c.hosts, ["10.1.2.3 db"]);
    assert_eq!(c.init, Some(false));
    assert_eq!(c.stop_signal, "SIGINT");
    assert_eq!(c.labels.get("tier").map(String::as_str), Some("web"));
    // The file first, then -e (the later one wins in the container).
    assert_eq!(spec.env, ["FROM_FILE=1", "SHARED=file", "SHARED=flag"]);
    assert_eq!(spec.networks, ["front", "back"]);
    assert_eq!(
        spec.network_aliases,
        BTreeMap::from([("back".to_string(), vec!["db".to_string()])])
    );
    assert_eq!(spec.args, ["sleep", "60"]);
    assert_eq!(create(&["--init", "busybox"]).init, Some(true));
    assert_eq!(
        create(&["busybox"]).spec().unwrap().container,
        ContainerOptions::default()
    );
}

#[test]
fn bad_create_flags_are_one_clear_line() {
    let err = |args: &[&str]| create(args).spec().unwrap_err();
    assert!(err(&["--host", "db", "busybox"]).starts_with("invalid --host \"db\""));
    assert!(err(&["--hostname", "{{.Task.Nope}}", "busybox"]).contains("unknown field"));
    assert!(err(&["-w", "srv", "busybox"]).contains("absolute path"));
    assert!(err(&["--stop-signal", "SIGNOPE", "busybox"]).contains("--stop-signal"));
    assert!(err(&["--dns", "ns1", "busybox"]).contains("--dns"));
    assert!(err(&["--env-file", "/nonexistent/shoal.env", "busybox"])
        .starts_with("reading env file /nonexistent/shoal.env"));
    assert!(err(&["--entrypoint", "'open", "busybox"]).contains("--entrypoint"));
    for e in [
        err(&["--host", "db", "busybox"]),
        err(&["--hostname", "{{.X}}", "busybox"]),
    ] {
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn cap_flags_reach_the_spec_normalized() {
    let o = create(&[
        "--cap-add",
        "net_admin",
        "--cap-add",
        "CAP_SYS_TIME",
        "--cap-drop",
        "chown",
        "busybox",
    ])
    .container_options()
    .unwrap();
    assert_eq!(o.cap_add, ["CAP_NET_ADMIN", "CAP_SYS_TIME"]);
    assert_eq!(o.cap_drop, ["CAP_CHOWN"]);
    let e = create(&["--cap-add", "warp_drive", "busybox"])
        .container_options()
        .unwrap_err();
    assert_eq!(e, "invalid --cap-add: unknown capability \"warp_drive\"");
}
