//! `shoal swarm|node`: argument parsing, output formatting, node references, and the
//! agent's API socket, with an in-process server (a fake backend, then real
//! `shoal_cluster` managers on 127.0.0.1); `shoal service`'s create and update flags
//! read into a spec and a change request. No root needed.
use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use futures::future::BoxFuture;
use shoal::{
    api::{
        client::{Client, ClientError},
        resolve_node,
        server::{self, Backend, BindError},
        ApiError, Availability, ManagerStatus, NodeRole, NodeStatus, NodeView, Reply, Request,
        Secret, ServiceChanges,
    },
    cli::{
        self, format,
        service::{ServiceArgs, ServiceCommand},
        NodeArgs, NodeCommand, SwarmArgs, SwarmCommand,
    },
};
use shoal_cluster::store::{
    FailureAction, PortConfig, Protocol, PublishMode, RestartCondition, UpdateConfig, UpdateOrder,
};

const TOKEN: &str =
    "SWMTKN-1-68oev8kt07ycxy45r54o7ilttvkzjgzmhnziamvgbzz02486rz-14ac1drnfc1qv5wugt8g90635";

#[derive(Parser, Debug)]
#[command(name = "shoal")]
struct TestCli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
    Swarm(SwarmArgs),
    Node(NodeArgs),
    Info(cli::info::InfoArgs),
    Service(ServiceArgs),
}

fn parse(args: &str) -> Result<Top, clap::Error> {
    TestCli::try_parse_from(std::iter::once("shoal").chain(args.split_whitespace()))
        .map(|c| c.command)
}

/// The request a command line sends.
fn request(args: &str) -> Request {
    match parse(args).unwrap_or_else(|e| panic!("{args}: {e}")) {
        Top::Swarm(s) => s.command.request().unwrap(),
        Top::Node(n) => n.command.request(),
        Top::Info(_) => Request::Info,
        Top::Service(_) => panic!("{args}: service commands have no single request"),
    }
}

fn parse_error(args: &str) -> String {
    match parse(args) {
        Ok(parsed) => panic!("{args}: parsed as {parsed:?}"),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Arguments

#[test]
fn swarm_init_forms() {
    assert_eq!(
        request("swarm init"),
        Request::SwarmInit {
            advertise_addr: None,
            listen_addr: None,
            data_path_addr: None,
            data_path_port: None,
            default_addr_pool: vec![],
            default_addr_pool_mask_length: None,
            autolock: false,
            force_new_cluster: false,
        }
    );
    let Request::SwarmInit {
        force_new_cluster, ..
    } = request("swarm init --force-new-cluster")
    else {
        panic!("not a swarm init");
    };
    assert!(force_new_cluster);
    assert_eq!(
        request(
            "swarm init --advertise-addr 192.168.77.11 --listen-addr 0.0.0.0:2377 \
             --data-path-port 4790 --default-addr-pool 10.20.0.0/16 \
             --default-addr-pool 10.30.0.0/16 --default-addr-pool-mask-length 26 \
             --data-path-addr eth1"
        ),
        Request::SwarmInit {
            advertise_addr: Some("192.168.77.11".into()),
            listen_addr: Some("0.0.0.0:2377".into()),
            data_path_addr: Some("eth1".into()),
            data_path_port: Some(4790),
            default_addr_pool: vec![
                "10.20.0.0/16".parse().unwrap(),
                "10.30.0.0/16".parse().unwrap()
            ],
            default_addr_pool_mask_length: Some(26),
            autolock: false,
            force_new_cluster: false,
        }
    );
    for (args, needle) in [
        ("swarm init --data-path-port 0", "--data-path-port"),
        ("swarm init --data-path-port 70000", "--data-path-port"),
        (
            "swarm init --default-addr-pool 10.0.0.0",
            "--default-addr-pool",
        ),
        (
            "swarm init --default-addr-pool-mask-length 31",
            "mask-length",
        ),
        ("swarm init --advertise", "unexpected argument"),
        ("swarm init extra", "unexpected argument"),
        ("swarm", "Usage"),
        ("swarm frobnicate", "unrecognized subcommand"),
    ] {
        let e = parse_error(args);
        assert!(e.contains(needle), "{args}: {e}");
    }
}

#[test]
fn swarm_autolock_forms() {
    assert!(matches!(
        request("swarm init --autolock"),
        Request::SwarmInit { autolock: true, .. }
    ));
    assert_eq!(
        request("swarm update --autolock"),
        Request::SwarmUpdate {
            autolock: Some(true)
        }
    );
    assert_eq!(
        request("swarm update --autolock=false"),
        Request::SwarmUpdate {
            autolock: Some(false)
        }
    );
    assert_eq!(
        request("swarm update"),
        Request::SwarmUpdate { autolock: None }
    );
    assert_eq!(
        request("swarm unlock-key"),
        Request::UnlockKey { rotate: false }
    );
    assert_eq!(
        request("swarm unlock-key -q --rotate"),
        Request::UnlockKey { rotate: true }
    );
    assert!(parse_error("swarm update --autolock=maybe").contains("--autolock"));
    // The key is never an argument (shell histories, process lists).
    assert!(parse_error("swarm unlock SWMKEY-1-x").contains("unexpected argument"));
    let key = "SWMKEY-1-WuYH/IX284+lRcXuoVf38viIDK3HJEKY13MIHX+tTt8";
    let r = cli::unlock_key::request_from(&format!("{key}\n")).unwrap();
    let Request::SwarmUnlock { key: got } = &r else {
        panic!("{r:?}")
    };
    assert_eq!(got.expose(), key);
    assert!(
        !format!("{r:?}").contains("WuYH"),
        "the key is not in debug output"
    );
    for (text, needle) in [
        ("", "no unlock key given"),
        ("  \n", "no unlock key given"),
        ("WuYH/IX284+lRcXuoVf38viIDK3HJEKY13MIHX+tTt8", "SWMKEY-1-"),
        ("SWMKEY-1-tooshort", "32 bytes"),
    ] {
        let e = cli::unlock_key::request_from(text).unwrap_err();
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn swarm_join_forms() {
    let Request::SwarmJoin {
        token,
        remote,
        advertise_addr,
        listen_addr,
        data_path_addr,
    } = request(&format!(
        "swarm join --token {TOKEN} --advertise-addr eth0 --listen-addr 0.0.0.0:2377 \
         --data-path-addr 192.168.78.12 192.168.77.11:2377"
    ))
    else {
        panic!("not a join");
    };
    assert_eq!(token.expose(), TOKEN);
    assert_eq!(remote, "192.168.77.11:2377");
    assert_eq!(advertise_addr.as_deref(), Some("eth0"));
    assert_eq!(listen_addr.as_deref(), Some("0.0.0.0:2377"));
    assert_eq!(data_path_addr.as_deref(), Some("192.168.78.12"));
    assert!(matches!(
        request(&format!("swarm join --token {TOKEN} manager.example")),
        Request::SwarmJoin { remote, .. } if remote == "manager.example"
    ));
    assert!(parse_error("swarm join 192.168.77.11:2377").contains("--token"));
    assert!(parse_error(&format!("swarm join --token {TOKEN}")).contains("HOST:PORT"));
    // A bad port is refused before the agent is asked.
    let Top::Swarm(s) = parse(&format!("swarm join --token {TOKEN} 10.0.0.1:99999")).unwrap()
    else {
        panic!()
    };
    assert!(s.command.request().unwrap_err().contains("HOST:PORT"));
}

#[test]
fn the_token_never_shows_in_debug_output() {
    let r = request(&format!("swarm join --token {TOKEN} 10.0.0.1"));
    let debug = format!("{r:?}");
    assert!(!debug.contains("14ac1drnfc1qv5wugt8g90635"), "{debug}");
    let reply = Reply::JoinToken {
        role: NodeRole::Worker,
        token: Secret::new(TOKEN),
        manager_addr: "10.0.0.1:2377".into(),
        rotated: false,
    };
    assert!(!format!("{reply:?}").contains("14ac1drnfc1qv5wugt8g90635"));
}

#[test]
fn swarm_join_token_and_leave_forms() {
    assert_eq!(
        request("swarm join-token worker"),
        Request::JoinToken {
            role: NodeRole::Worker,
            rotate: false
        }
    );
    assert_eq!(
        request("swarm join-token --rotate -q manager"),
        Request::JoinToken {
            role: NodeRole::Manager,
            rotate: true
        }
    );
    assert!(parse_error("swarm join-token").contains("worker|manager"));
    assert!(parse_error("swarm join-token boss").contains("possible values: worker, manager"));
    assert_eq!(request("swarm leave"), Request::SwarmLeave { force: false });
    assert_eq!(
        request("swarm leave --force"),
        Request::SwarmLeave { force: true }
    );
    assert_eq!(
        request("swarm leave -f"),
        Request::SwarmLeave { force: true }
    );
}

#[test]
fn node_forms() {
    assert_eq!(request("node ls"), Request::NodeLs);
    assert_eq!(request("node list -q"), Request::NodeLs);
    assert_eq!(
        request("node inspect --pretty self h2"),
        Request::NodeInspect {
            nodes: vec!["self".into(), "h2".into()]
        }
    );
    assert_eq!(
        request("node rm --force lxqz h3"),
        Request::NodeRm {
            nodes: vec!["lxqz".into(), "h3".into()],
            force: true
        }
    );
    assert_eq!(
        request("node promote h2 h3"),
        Request::NodePromote {
            nodes: vec!["h2".into(), "h3".into()]
        }
    );
    assert_eq!(
        request("node demote h2"),
        Request::NodeDemote {
            nodes: vec!["h2".into()]
        }
    );
    assert_eq!(
        request(
            "node update --availability drain --label-add zone=a --label-add ssd --label-rm old h2"
        ),
        Request::NodeUpdate {
            node: "h2".into(),
            availability: Some(Availability::Drain),
            label_add: BTreeMap::from([("zone".into(), "a".into()), ("ssd".into(), "".into())]),
            label_rm: vec!["old".into()],
            rotate_wireguard_key: false,
        }
    );
    assert_eq!(
        request("node update --rotate-wireguard-key h2"),
        Request::NodeUpdate {
            node: "h2".into(),
            availability: None,
            label_add: BTreeMap::new(),
            label_rm: vec![],
            rotate_wireguard_key: true,
        }
    );
    for (args, needle) in [
        ("node rm", "<NODE>"),
        ("node inspect", "<NODE>"),
        ("node promote", "<NODE>"),
        ("node demote", "<NODE>"),
        ("node update", "<NODE>"),
        (
            "node update --availability sleepy h2",
            "possible values: active, pause, drain",
        ),
        ("node update --label-add =x h2", "key is empty"),
        ("node update h2 h3", "unexpected argument"),
        ("node ls --bogus", "unexpected argument '--bogus'"),
    ] {
        let e = parse_error(args);
        assert!(e.contains(needle), "{args}: {e}");
    }
}

/// A `shoal service ...` command line, as the shell would pass it.
fn service_cmd(argv: &[&str]) -> Result<ServiceCommand, String> {
    let argv = ["shoal", "service"].iter().chain(argv);
    match TestCli::try_parse_from(argv)
        .map_err(|e| e.to_string())?
        .command
    {
        Top::Service(s) => Ok(s.command),
        other => panic!("{other:?}"),
    }
}

/// What `service update ARGV` asks to change.
fn update_changes(argv: &[&str]) -> Result<ServiceChanges, String> {
    let argv: Vec<&str> = ["update"].iter().chain(argv).copied().collect();
    match service_cmd(&argv)? {
        ServiceCommand::Update(a) => a.changes(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn service_create_reads_the_update_restart_and_stop_flags() {
    let ServiceCommand::Create(a) = service_cmd(&["create", "--name", "web", "nginx"]).unwrap()
    else {
        panic!()
    };
    let spec = a.spec().unwrap();
    assert_eq!(spec.update_config, UpdateConfig::default());
    assert_eq!(spec.rollback_config, UpdateConfig::rollback_default());
    assert_eq!(
        (
            spec.restart_delay_ms,
            spec.stop_grace_ms,
            spec.update_config.monitor_ms
        ),
        (5000, 10_000, 5000)
    );
    let ServiceCommand::Create(a) = service_cmd(&[
        "create",
        "--update-parallelism",
        "0",
        "--update-delay",
        "10s",
        "--update-order",
        "start-first",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "1m",
        "--update-max-failure-ratio",
        "0.5",
        "--rollback-parallelism",
        "3",
        "--rollback-failure-action",
        "continue",
        "--restart-condition",
        "on-failure",
        "--restart-delay",
        "2s",
        "--restart-max-attempts",
        "4",
        "--restart-window",
        "30s",
        "--stop-grace-period",
        "1m30s",
        "nginx",
    ])
    .unwrap() else {
        panic!()
    };
    let spec = a.spec().unwrap();
    assert_eq!(
        spec.update_config,
        UpdateConfig {
            parallelism: 0,
            delay_ms: 10_000,
            order: UpdateOrder::StartFirst,
            failure_action: FailureAction::Rollback,
            monitor_ms: 60_000,
            max_failure_ratio_ppm: 500_000,
        }
    );
    assert_eq!(
        spec.rollback_config,
        UpdateConfig {
            parallelism: 3,
            failure_action: FailureAction::Continue,
            ..UpdateConfig::rollback_default()
        }
    );
    assert_eq!(
        (
            spec.restart_condition,
            spec.restart_delay_ms,
            spec.restart_max_attempts,
            spec.restart_window_ms,
            spec.stop_grace_ms
        ),
        (RestartCondition::OnFailure, 2000, 4, 30_000, 90_000)
    );

    for (argv, want) in [
        (
            &["--update-parallelism", "-1"][..],
            "invalid --update-parallelism value \"-1\": must be a non-negative integer",
        ),
        (
            &["--update-max-failure-ratio", "1.01"],
            "invalid --update-max-failure-ratio value \"1.01\": must be a number from 0 to 1",
        ),
        (
            &["--update-order", "sideways"],
            "invalid --update-order value \"sideways\": stop-first or start-first",
        ),
        (
            &["--rollback-failure-action", "rollback"],
            "invalid --rollback-failure-action value \"rollback\": pause or continue",
        ),
        (
            &["--stop-grace-period", "soon"],
            "--stop-grace-period: invalid duration \"soon\": use e.g. 500ms, 2s, 1m30s",
        ),
        (
            &["--no-healthcheck", "--health-cmd", "true"],
            "--no-healthcheck conflicts with --health-* options",
        ),
    ] {
        let argv: Vec<&str> = ["create"]
            .iter()
            .chain(argv)
            .chain(&["nginx"])
            .copied()
            .collect();
        let ServiceCommand::Create(a) = service_cmd(&argv).unwrap() else {
            panic!()
        };
        assert_eq!(a.spec().unwrap_err(), want, "{argv:?}");
    }
}

#[test]
fn service_update_sends_only_what_the_flags_change() {
    assert_eq!(update_changes(&["web"]), Ok(ServiceChanges::default()));
    let changes = update_changes(&[
        "--image",
        "nginx:2",
        "--replicas",
        "3",
        "--args",
        "sh -c 'sleep 10; exit 1'",
        "--env-add",
        "A=1",
        "--env-rm",
        "B",
        "--label-add",
        "tier=front",
        "--label-rm",
        "old",
        "--publish-add",
        "8080:80",
        "--publish-rm",
        "53/udp",
        "--network-add",
        "back",
        "--network-rm",
        "front",
        "--constraint-add",
        "node.role==worker",
        "--constraint-rm",
        "node.role==manager",
        "--endpoint-mode",
        "dnsrr",
        "--health-interval",
        "2s",
        "--restart-max-attempts",
        "5",
        "--stop-grace-period",
        "3s",
        "--update-parallelism",
        "2",
        "--rollback-order",
        "start-first",
        "--force",
        "web",
    ])
    .unwrap();
    assert_eq!(changes.image.as_deref(), Some("nginx:2"));
    assert_eq!(changes.replicas, Some(3));
    assert_eq!(
        changes.args,
        Some(vec!["sh".into(), "-c".into(), "sleep 10; exit 1".into()])
    );
    assert_eq!(
        (changes.env_add, changes.env_rm),
        (vec!["A=1".into()], vec!["B".into()])
    );
    assert_eq!(
        changes.label_add,
        BTreeMap::from([("tier".into(), "front".into())])
    );
    assert_eq!(
        changes.publish_add,
        [PortConfig {
            protocol: Protocol::Tcp,
            target: 80,
            published: 8080,
            mode: PublishMode::Ingress,
            balance: None,
        }]
    );
    assert_eq!(changes.publish_rm[0].target, 53);
    assert_eq!(changes.publish_rm[0].protocol, Protocol::Udp);
    assert_eq!(
        (changes.network_add, changes.network_rm),
        (vec!["back".into()], vec!["front".into()])
    );
    assert_eq!(changes.constraint_rm, ["node.role==manager"]);
    assert_eq!(changes.health.interval_ms, Some(2000));
    assert_eq!(changes.health.cmd, None);
    assert_eq!(changes.restart.max_attempts, Some(5));
    assert_eq!(changes.restart.condition, None);
    assert_eq!(changes.stop_grace_ms, Some(3000));
    assert_eq!(changes.update_config.parallelism, Some(2));
    assert_eq!(changes.update_config.order, None);
    assert_eq!(changes.rollback_config.order, Some(UpdateOrder::StartFirst));
    assert!(changes.force && !changes.rollback);

    // Checked as create checks them.
    for (argv, want) in [
        (
            &["--update-parallelism", "-1"][..],
            "invalid --update-parallelism value \"-1\"",
        ),
        (&["--constraint-add", "node.colour"], "constraint"),
        (&["--env-add", "=x"], "invalid environment variable"),
        (&["--publish-add", "8080:80/sctp"], "is not tcp or udp"),
        (&["--args", "'unclosed"], "unclosed quote"),
        (&["--no-healthcheck", "--health-retries", "2"], "conflicts"),
    ] {
        let argv: Vec<&str> = argv.iter().chain(&["web"]).copied().collect();
        let e = update_changes(&argv).unwrap_err();
        assert!(e.contains(want), "{argv:?}: {e}");
    }
}

#[test]
fn rollback_stands_alone() {
    assert_eq!(
        update_changes(&["--rollback", "web"]),
        Ok(ServiceChanges {
            rollback: true,
            ..Default::default()
        })
    );
    for other in [
        &["--image", "nginx:2"][..],
        &["--force"],
        &["--replicas", "2"],
        &["--update-delay", "1s"],
        &["--with-registry-auth"],
    ] {
        let argv: Vec<&str> = ["--rollback"]
            .iter()
            .chain(other)
            .chain(&["web"])
            .copied()
            .collect();
        assert_eq!(
            update_changes(&argv).unwrap_err(),
            "other flags may not be combined with --rollback",
            "{argv:?}"
        );
    }
    // -d waits no more; it is no change.
    assert!(update_changes(&["--rollback", "-d", "web"]).is_ok());
    assert!(matches!(
        service_cmd(&["rollback", "-d", "web"]).unwrap(),
        ServiceCommand::Rollback(a) if a.detach && a.service == "web"
    ));
    assert!(service_cmd(&["rollback"]).is_err());
}

#[test]
fn api_socket_flag_is_on_every_command() {
    for args in [
        "swarm init --api-socket /tmp/a.sock",
        "swarm --api-socket /tmp/a.sock leave",
        "node ls --api-socket /tmp/a.sock",
        "node --api-socket /tmp/a.sock rm h2",
        "info --api-socket /tmp/a.sock",
        "service --api-socket /tmp/a.sock rollback web",
    ] {
        let socket = match parse(args).unwrap() {
            Top::Swarm(s) => s.socket.api_socket,
            Top::Node(n) => n.socket.api_socket,
            Top::Info(i) => i.socket.api_socket,
            Top::Service(s) => s.socket.api_socket,
        };
        assert_eq!(socket, Path::new("/tmp/a.sock"), "{args}");
    }
}

// ---------------------------------------------------------------------------
// Output

fn view(
    id: &str,
    host: &str,
    role: NodeRole,
    status: NodeStatus,
    ms: Option<ManagerStatus>,
    engine: &str,
) -> NodeView {
    NodeView {
        id: id.into(),
        hostname: host.into(),
        role,
        availability: Availability::Active,
        status,
        manager_status: ms,
        engine_version: engine.into(),
        resources: Default::default(),
        addr: "10.102.20.32:2377".into(),
        labels: BTreeMap::new(),
        version: 3,
    }
}

/// The seed's cluster (003): three nodes, the current one the leader.
fn seed_nodes() -> Vec<NodeView> {
    vec![
        view(
            "pthddquqfyyf4f9kp41domb5c",
            "lp-pc-2023-026",
            NodeRole::Manager,
            NodeStatus::Ready,
            Some(ManagerStatus::Leader),
            "27.3.1",
        ),
        view(
            "bo5kl3l26mubrik6czb4i3l5e",
            "colima",
            NodeRole::Worker,
            NodeStatus::Down,
            None,
            "28.3.3",
        ),
        view(
            "jot0fw3jxcaqu6istj8d2l5qk",
            "baroserver66-ubuntu18",
            NodeRole::Worker,
            NodeStatus::Ready,
            None,
            "24.0.2",
        ),
    ]
}

#[test]
fn node_ls_table_is_dockers() {
    let table = format::node_table("pthddquqfyyf4f9kp41domb5c", &seed_nodes());
    let expected = "\
ID                            HOSTNAME                STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION
jot0fw3jxcaqu6istj8d2l5qk     baroserver66-ubuntu18   Ready     Active                          24.0.2
bo5kl3l26mubrik6czb4i3l5e     colima                  Down      Active                          28.3.3
pthddquqfyyf4f9kp41domb5c *   lp-pc-2023-026          Ready     Active         Leader           27.3.1
";
    assert_eq!(table, expected);
}

#[test]
fn node_ls_shows_reachable_managers_and_drained_nodes() {
    let mut nodes = vec![
        view(
            "ewkgh1qli9wvpayxaeqbikidh",
            "swarm-manager",
            NodeRole::Manager,
            NodeStatus::Ready,
            Some(ManagerStatus::Leader),
            "20.10.2",
        ),
        view(
            "lxqz76lzffifj25um47ebgx19",
            "swarm-worker1",
            NodeRole::Manager,
            NodeStatus::Ready,
            Some(ManagerStatus::Reachable),
            "20.10.2",
        ),
        view(
            "yx2h31i8fz57j0rbwry5gl9u0",
            "swarm-worker2",
            NodeRole::Manager,
            NodeStatus::Down,
            Some(ManagerStatus::Unreachable),
            "20.10.2",
        ),
    ];
    nodes[2].availability = Availability::Drain;
    let table = format::node_table("lxqz76lzffifj25um47ebgx19", &nodes);
    let expected = "\
ID                            HOSTNAME        STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION
ewkgh1qli9wvpayxaeqbikidh     swarm-manager   Ready     Active         Leader           20.10.2
lxqz76lzffifj25um47ebgx19 *   swarm-worker1   Ready     Active         Reachable        20.10.2
yx2h31i8fz57j0rbwry5gl9u0     swarm-worker2   Down      Drain          Unreachable      20.10.2
";
    assert_eq!(table, expected);
}

fn swarm_cmd(args: &str) -> SwarmCommand {
    match parse(args).unwrap() {
        Top::Swarm(s) => s.command,
        _ => panic!(),
    }
}

/// A `node` command from whole arguments (for templates with spaces).
fn node_argv(argv: &[&str]) -> NodeCommand {
    match TestCli::try_parse_from(["shoal", "node"].iter().chain(argv))
        .unwrap()
        .command
    {
        Top::Node(n) => n.command,
        _ => panic!(),
    }
}

fn node_cmd(args: &str) -> NodeCommand {
    match parse(args).unwrap() {
        Top::Node(n) => n.command,
        _ => panic!(),
    }
}

#[test]
fn swarm_outputs_are_dockers() {
    let init = format::swarm(
        &swarm_cmd("swarm init"),
        &Reply::SwarmInit {
            node_id: "gr9hx828svz91anfynghcb1bc".into(),
            worker_token: Secret::new(TOKEN),
            manager_addr: "10.102.20.32:2377".into(),
            unlock_key: None,
        },
    )
    .unwrap();
    assert_eq!(
        init,
        format!(
            "Swarm initialized: current node (gr9hx828svz91anfynghcb1bc) is now a manager.\n\n\
             To add a worker to this swarm, run the following command:\n\n    \
             shoal swarm join --token {TOKEN} 10.102.20.32:2377\n\n\
             To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n"
        )
    );
    let key = "SWMKEY-1-WuYH/IX284+lRcXuoVf38viIDK3HJEKY13MIHX+tTt8";
    let unlock = format!(
        "To unlock a swarm manager after it restarts, run the `shoal swarm unlock`\n\
         command and provide the following key:\n\n    {key}\n\n\
         Please remember to store this key in a password manager, since without it you\n\
         will not be able to restart the manager.\n"
    );
    let locked_init = format::swarm(
        &swarm_cmd("swarm init --autolock"),
        &Reply::SwarmInit {
            node_id: "gr9hx828svz91anfynghcb1bc".into(),
            worker_token: Secret::new(TOKEN),
            manager_addr: "10.102.20.32:2377".into(),
            unlock_key: Some(Secret::new(key)),
        },
    )
    .unwrap();
    assert_eq!(locked_init, format!("{init}\n{unlock}"));
    assert_eq!(
        format::swarm(
            &swarm_cmd("swarm update --autolock"),
            &Reply::SwarmUpdated {
                unlock_key: Some(Secret::new(key))
            }
        )
        .unwrap(),
        format!("Swarm updated.\n{unlock}")
    );
    assert_eq!(
        format::swarm(
            &swarm_cmd("swarm update --autolock=false"),
            &Reply::SwarmUpdated { unlock_key: None }
        )
        .unwrap(),
        "Swarm updated.\n"
    );
    let unlock_key = |rotated| Reply::UnlockKey {
        key: Secret::new(key),
        rotated,
    };
    assert_eq!(
        format::swarm(&swarm_cmd("swarm unlock-key"), &unlock_key(false)).unwrap(),
        unlock
    );
    assert_eq!(
        format::swarm(&swarm_cmd("swarm unlock-key --rotate"), &unlock_key(true)).unwrap(),
        format!("Successfully rotated manager unlock key.\n\n{unlock}")
    );
    assert_eq!(
        format::swarm(
            &swarm_cmd("swarm unlock-key -q --rotate"),
            &unlock_key(true)
        )
        .unwrap(),
        format!("{key}\n")
    );
    assert_eq!(
        format::swarm(&SwarmCommand::Unlock, &Reply::SwarmUnlocked).unwrap(),
        ""
    );
    assert!(!format!("{:?}", unlock_key(false)).contains("WuYH"));
    let token = |rotated| Reply::JoinToken {
        role: NodeRole::Manager,
        token: Secret::new(TOKEN),
        manager_addr: "10.102.20.32:2377".into(),
        rotated,
    };
    assert_eq!(
        format::swarm(&swarm_cmd("swarm join-token manager"), &token(false)).unwrap(),
        format!("To add a manager to this swarm, run the following command:\n\n    shoal swarm join --token {TOKEN} 10.102.20.32:2377\n")
    );
    assert!(format::swarm(
        &swarm_cmd("swarm join-token --rotate manager"),
        &token(true)
    )
    .unwrap()
    .starts_with("Successfully rotated manager join token.\n\nTo add a manager"));
    assert_eq!(
        format::swarm(&swarm_cmd("swarm join-token -q manager"), &token(true)).unwrap(),
        format!("{TOKEN}\n")
    );
    for (role, text) in [(NodeRole::Worker, "worker"), (NodeRole::Manager, "manager")] {
        assert_eq!(
            format::swarm(
                &swarm_cmd("swarm join --token x 10.0.0.1"),
                &Reply::SwarmJoin {
                    node_id: "n".into(),
                    role,
                    warnings: vec![],
                }
            )
            .unwrap(),
            format!("This node joined a swarm as a {text}.\n")
        );
    }
    // A skewed clock at join comes back as a warning (printed on stderr).
    let skewed = Reply::SwarmJoin {
        node_id: "n".into(),
        role: NodeRole::Worker,
        warnings: vec!["this node's clock differs from the manager's by 90 s".into()],
    };
    assert_eq!(format::warnings(&skewed).len(), 1);
    assert_eq!(
        format::swarm(&swarm_cmd("swarm leave"), &Reply::SwarmLeave).unwrap(),
        "Node left the swarm.\n"
    );
    // A reply that does not fit the command is an error, not garbage.
    assert!(format::swarm(
        &swarm_cmd("swarm leave"),
        &Reply::NodesChanged { nodes: vec![] }
    )
    .unwrap_err()
    .contains("unexpected reply (nodes_changed)"));
}

#[test]
fn node_outputs_are_dockers() {
    let changed = Reply::NodesChanged {
        nodes: vec!["colima".into()],
    };
    assert_eq!(
        format::node(&node_cmd("node rm colima"), &changed).unwrap(),
        "colima\n"
    );
    assert_eq!(
        format::node(&node_cmd("node promote colima"), &changed).unwrap(),
        "Node colima promoted to a manager in the swarm.\n"
    );
    assert_eq!(
        format::node(&node_cmd("node demote colima"), &changed).unwrap(),
        "Manager colima demoted in the swarm.\n"
    );
    let mut seed = seed_nodes();
    for n in &mut seed {
        if n.id == "pthddquqfyyf4f9kp41domb5c" {
            n.resources = shoal::api::NodeResources {
                nano_cpus: 2_000_000_000,
                memory_bytes: 2_087_428_096,
            };
        }
    }
    let nodes = Reply::Nodes {
        self_id: "pthddquqfyyf4f9kp41domb5c".into(),
        nodes: seed,
        warnings: vec![],
    };
    assert_eq!(
        format::node(&node_cmd("node ls -q"), &nodes).unwrap(),
        "jot0fw3jxcaqu6istj8d2l5qk\nbo5kl3l26mubrik6czb4i3l5e\npthddquqfyyf4f9kp41domb5c\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&format::node(&node_cmd("node inspect self"), &nodes).unwrap())
            .unwrap();
    assert_eq!(json[0]["ID"], "pthddquqfyyf4f9kp41domb5c");
    assert_eq!(json[0]["Description"]["Hostname"], "lp-pc-2023-026");
    assert_eq!(json[0]["Spec"]["Role"], "manager");
    assert_eq!(json[0]["ManagerStatus"]["Leader"], true);
    assert_eq!(json[0]["Status"]["Addr"], "10.102.20.32");
    assert_eq!(
        json[0]["Description"]["Resources"],
        serde_json::json!({"NanoCPUs": 2_000_000_000i64, "MemoryBytes": 2_087_428_096i64})
    );
    assert!(json[1].get("ManagerStatus").is_none());
    let pretty = format::node(&node_cmd("node inspect --pretty self"), &nodes).unwrap();
    assert!(pretty.contains("Hostname:\t\tlp-pc-2023-026\n"), "{pretty}");
    assert!(pretty.contains(" Leader:\t\tYes\n"), "{pretty}");
    assert!(pretty.contains("Engine Version:\t\t27.3.1\n"), "{pretty}");
    assert!(
        pretty.contains("Resources:\n CPUs:\t\t\t2\n Memory:\t\t1.944GiB\n"),
        "{pretty}"
    );
}

#[test]
fn node_ls_format_is_dockers() {
    let nodes = Reply::Nodes {
        self_id: "pthddquqfyyf4f9kp41domb5c".into(),
        nodes: seed_nodes(),
        warnings: vec![],
    };
    let ls = |args: &str| format::node(&node_cmd(args), &nodes);
    // `json`: one object a line, sorted like the table, Docker's keys (sorted, as Go's).
    assert_eq!(
        ls("node ls --format json").unwrap(),
        "\
{\"Availability\":\"Active\",\"EngineVersion\":\"24.0.2\",\"Hostname\":\"baroserver66-ubuntu18\",\"ID\":\"jot0fw3jxcaqu6istj8d2l5qk\",\"ManagerStatus\":\"\",\"Self\":false,\"Status\":\"Ready\"}
{\"Availability\":\"Active\",\"EngineVersion\":\"28.3.3\",\"Hostname\":\"colima\",\"ID\":\"bo5kl3l26mubrik6czb4i3l5e\",\"ManagerStatus\":\"\",\"Self\":false,\"Status\":\"Down\"}
{\"Availability\":\"Active\",\"EngineVersion\":\"27.3.1\",\"Hostname\":\"lp-pc-2023-026\",\"ID\":\"pthddquqfyyf4f9kp41domb5c\",\"ManagerStatus\":\"Leader\",\"Self\":true,\"Status\":\"Ready\"}
"
    );
    // A template without `table`: tab-separated, no header.
    assert_eq!(
        format::node(
            &node_argv(&[
                "ls",
                "--format",
                r"{{.Hostname}}\t{{.Self}}\t{{json .ManagerStatus}}"
            ]),
            &nodes
        )
        .unwrap(),
        "baroserver66-ubuntu18\tfalse\t\"\"\ncolima\tfalse\t\"\"\nlp-pc-2023-026\ttrue\t\"Leader\"\n"
    );
    // `table`: Docker's titles, columns aligned as the default table's.
    assert_eq!(
        ls(r"node ls --format table{{.ID}}\t{{.ManagerStatus}}\t{{.EngineVersion}}").unwrap(),
        "\
ID                          MANAGER STATUS   ENGINE VERSION
jot0fw3jxcaqu6istj8d2l5qk                    24.0.2
bo5kl3l26mubrik6czb4i3l5e                    28.3.3
pthddquqfyyf4f9kp41domb5c   Leader           27.3.1
"
    );
    assert_eq!(
        ls("node ls --format table").unwrap(),
        format::node_table("pthddquqfyyf4f9kp41domb5c", &seed_nodes())
    );
    // -q wins over --format, as in Docker.
    assert_eq!(
        ls("node ls -q --format json").unwrap(),
        ls("node ls -q").unwrap()
    );
    assert_eq!(
        ls("node ls --format {{.Nope}}").unwrap_err(),
        "template: :1:2: executing \"\" at <.Nope>: can't evaluate field Nope"
    );
    assert_eq!(
        ls("node ls --format {{.ID").unwrap_err(),
        "template: :1: unclosed action"
    );
}

#[test]
fn node_ls_filters_are_dockers() {
    let mut nodes = seed_nodes();
    nodes[2].labels.insert("zone".into(), "b".into());
    let nodes = Reply::Nodes {
        self_id: "pthddquqfyyf4f9kp41domb5c".into(),
        nodes,
        warnings: vec![],
    };
    let ls = |args: &str| format::node(&node_cmd(args), &nodes);
    assert_eq!(
        ls("node ls -q -f role=manager").unwrap(),
        "pthddquqfyyf4f9kp41domb5c\n"
    );
    assert_eq!(
        ls("node ls --format {{.Hostname}} -f role=worker -f name=col").unwrap(),
        "colima\n"
    );
    assert_eq!(
        ls("node ls --format {{.Hostname}} -f id=jot -f id=bo5").unwrap(),
        "baroserver66-ubuntu18\ncolima\n"
    );
    assert_eq!(
        ls("node ls --format {{.Hostname}} --filter node.label=zone=b").unwrap(),
        "baroserver66-ubuntu18\n"
    );
    assert_eq!(
        ls("node ls -q -f membership=accepted").unwrap(),
        ls("node ls -q").unwrap()
    );
    assert_eq!(ls("node ls -q -f membership=pending").unwrap(), "");
    let table = ls("node ls -f role=worker").unwrap();
    assert!(table.starts_with("ID "), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(!table.contains("lp-pc-2023-026"), "{table}");
    assert_eq!(ls("node ls -f x=1").unwrap_err(), "invalid filter 'x'");
    // Refused before the agent is asked.
    assert_eq!(
        node_cmd("node ls -f nope=1").check_format().unwrap_err(),
        "invalid filter 'nope'"
    );
    assert!(node_cmd("node ls -f role").check_format().is_err());
}

#[test]
fn node_ps_asks_for_this_node_by_default() {
    assert_eq!(
        request("node ps"),
        Request::NodeInspect {
            nodes: vec!["self".into()]
        }
    );
    assert_eq!(
        request("node ps -f desired-state=running h1 h2"),
        Request::NodeInspect {
            nodes: vec!["h1".into(), "h2".into()]
        }
    );
    assert_eq!(
        node_cmd("node ps -f x=1").check_format().unwrap_err(),
        "invalid filter 'x'"
    );
    assert!(node_cmd("node ps --format {{").check_format().is_err());
}

#[test]
fn node_inspect_format_is_dockers() {
    let nodes = Reply::Nodes {
        self_id: "pthddquqfyyf4f9kp41domb5c".into(),
        nodes: seed_nodes()[..2].to_vec(),
        warnings: vec![],
    };
    let inspect = |args: &str| format::node(&node_cmd(args), &nodes);
    assert_eq!(
        inspect("node inspect --format json self").unwrap(),
        inspect("node inspect self").unwrap()
    );
    assert_eq!(
        inspect(r"node inspect -f {{.ID}}\t{{.Description.Hostname}}\t{{.Spec.Role}} self")
            .unwrap(),
        "pthddquqfyyf4f9kp41domb5c\tlp-pc-2023-026\tmanager\ncolima\tworker\n"
            .replace("colima", "bo5kl3l26mubrik6czb4i3l5e\tcolima")
    );
    assert_eq!(
        format::node(
            &node_argv(&["inspect", "--format", "{{json .ManagerStatus}}", "self"]),
            &nodes
        )
        .unwrap_err(),
        "template: :1:7: executing \"\" at <.ManagerStatus>: can't evaluate field ManagerStatus"
    );
    let one = Reply::Nodes {
        self_id: "pthddquqfyyf4f9kp41domb5c".into(),
        nodes: seed_nodes()[..1].to_vec(),
        warnings: vec![],
    };
    assert_eq!(
        format::node(
            &node_argv(&["inspect", "--format", "{{json .ManagerStatus}}", "self"]),
            &one
        )
        .unwrap(),
        "{\"Addr\":\"10.102.20.32:2377\",\"Leader\":true,\"Reachability\":\"reachable\"}\n"
    );
    assert_eq!(
        format::node(&node_cmd("node inspect -f {{.Spec.Labels}} self"), &one).unwrap(),
        "map[]\n"
    );
    assert!(inspect("node inspect -f {{.Description.Nope}} self")
        .unwrap_err()
        .contains("can't evaluate field Nope"));
    assert!(parse_error("node inspect --pretty --format json self").contains("cannot be used with"));
}

// ---------------------------------------------------------------------------
// Node references

#[test]
fn node_references_resolve_like_dockers() {
    let nodes = [
        ("lxqz76lzffifj25um47ebgx19", "swarm-worker1"),
        ("lxqa1111111111111111111111", "swarm-worker2"),
        ("ewkgh1qli9wvpayxaeqbikidh", "swarm-manager"),
        ("yx2h31i8fz57j0rbwry5gl9u0", "twin"),
        ("yy2h31i8fz57j0rbwry5gl9u0", "twin"),
    ];
    let r = |reference| resolve_node(nodes.iter().copied(), reference);
    assert_eq!(
        r("ewkgh1qli9wvpayxaeqbikidh").unwrap(),
        "ewkgh1qli9wvpayxaeqbikidh"
    );
    assert_eq!(r("lxqz").unwrap(), "lxqz76lzffifj25um47ebgx19");
    assert_eq!(r("swarm-worker2").unwrap(), "lxqa1111111111111111111111");
    let e = r("lxq").unwrap_err().to_string();
    assert!(
        e.contains("ambiguous")
            && e.contains("lxqz76lzffifj25um47ebgx19")
            && e.contains("lxqa1111111111111111111111"),
        "{e}"
    );
    let e = r("twin").unwrap_err().to_string();
    assert!(e.contains("ambiguous") && e.contains("hostname"), "{e}");
    assert_eq!(r("nope").unwrap_err().to_string(), "node nope not found");
    assert!(r("").is_err());
    // An exact ID wins over a hostname that happens to be the same text.
    let tricky = [("abc", "def"), ("def", "ghi")];
    assert_eq!(resolve_node(tricky.iter().copied(), "def").unwrap(), "def");
}

// ---------------------------------------------------------------------------
// The socket

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "shoal-cli-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn socket_is_owner_only_and_stale_sockets_are_replaced() {
    let rt = runtime();
    let _guard = rt.enter();
    let dir = TempDir::new("perm");
    let path = dir.0.join("sub/shoal.sock");
    // A stale socket: bound, then its listener gone.
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(fs::metadata(&path).unwrap().file_type().is_socket());

    let socket = server::bind(&path).unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Nothing left behind in the directory but the socket.
    let names: Vec<_> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("shoal.sock")]);

    // Someone answers there: a second agent is refused.
    assert!(matches!(server::bind(&path), Err(BindError::InUse { .. })));
    drop(socket);
    assert!(!path.exists(), "the socket is removed when dropped");

    let file = dir.0.join("not-a-socket");
    fs::write(&file, "x").unwrap();
    assert!(matches!(
        server::bind(&file),
        Err(BindError::NotASocket { .. })
    ));
    assert_eq!(fs::read_to_string(&file).unwrap(), "x");
}

#[test]
fn no_agent_is_one_clear_error() {
    let err = Client::new("/nonexistent/shoal.sock")
        .call(&Request::NodeLs)
        .unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }));
    assert_eq!(
        err.to_string(),
        "cannot reach the shoal agent at /nonexistent/shoal.sock: is `shoal agent` running?"
    );
}

/// A backend with a fixed node list that records what it was asked.
#[derive(Default)]
struct Fake {
    asked: Mutex<Vec<Request>>,
}

impl Backend for Fake {
    fn handle(&self, request: Request) -> BoxFuture<'_, Result<Reply, ApiError>> {
        Box::pin(async move {
            self.asked.lock().unwrap().push(request.clone());
            let nodes = seed_nodes();
            let pairs = || nodes.iter().map(|n| (n.id.as_str(), n.hostname.as_str()));
            match request {
                Request::NodeLs => Ok(Reply::Nodes {
                    self_id: "pthddquqfyyf4f9kp41domb5c".into(),
                    nodes: nodes.clone(),
                    warnings: vec!["the swarm has 2 managers".into()],
                }),
                Request::NodeInspect { nodes: refs } => {
                    let self_id = "pthddquqfyyf4f9kp41domb5c";
                    let mut found = vec![];
                    for r in &refs {
                        let r = if r == "self" { self_id } else { r.as_str() };
                        let id = resolve_node(pairs(), r)?;
                        found.extend(nodes.iter().filter(|n| n.id == id).cloned());
                    }
                    Ok(Reply::Nodes {
                        self_id: self_id.into(),
                        nodes: found,
                        warnings: vec![],
                    })
                }
                Request::NodeRm { nodes: refs, .. } => {
                    for r in &refs {
                        resolve_node(pairs(), r)?;
                    }
                    Ok(Reply::NodesChanged { nodes: refs })
                }
                Request::SwarmInit { .. } => Ok(Reply::SwarmInit {
                    node_id: "pthddquqfyyf4f9kp41domb5c".into(),
                    worker_token: Secret::new(TOKEN),
                    manager_addr: "10.102.20.32:2377".into(),
                    unlock_key: None,
                }),
                _ => Err(ApiError::new("This node is not a swarm manager.")),
            }
        })
    }
}

/// Serves `backend` at a new socket in `dir` on `rt`.
fn serve(rt: &tokio::runtime::Runtime, dir: &TempDir, backend: Arc<dyn Backend>) -> PathBuf {
    let path = dir.0.join("shoal.sock");
    let socket = {
        let _guard = rt.enter();
        server::bind(&path).unwrap()
    };
    rt.spawn(server::serve(socket, backend));
    path
}

#[test]
fn requests_reach_the_backend_and_answers_come_back() {
    let rt = runtime();
    let dir = TempDir::new("fake");
    let fake = Arc::new(Fake::default());
    let path = serve(&rt, &dir, fake.clone());
    let client = Client::new(&path);

    let reply = client.call(&Request::NodeLs).unwrap();
    assert!(matches!(&reply, Reply::Nodes { nodes, .. } if nodes.len() == 3));
    let e = client
        .call(&Request::NodeRm {
            nodes: vec!["zzz".into()],
            force: false,
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "node zzz not found");
    let e = client
        .call(&Request::JoinToken {
            role: NodeRole::Worker,
            rotate: false,
        })
        .unwrap_err();
    assert!(matches!(e, ClientError::Api(_)), "{e:?}");
    assert_eq!(fake.asked.lock().unwrap().len(), 3);

    // Garbage gets an error line, and the connection stays usable.
    use std::io::{BufRead, BufReader, Write};
    let mut raw = std::os::unix::net::UnixStream::connect(&path).unwrap();
    raw.write_all(b"{\"request\":\"nope\"}\n{\"request\":\"node_ls\"}\n")
        .unwrap();
    let mut lines = BufReader::new(raw).lines();
    assert!(lines.next().unwrap().unwrap().contains("malformed request"));
    assert!(lines.next().unwrap().unwrap().starts_with("{\"ok\":"));
}

/// The `shoal` binary itself, against the fake agent: output, warnings, exit codes.
#[test]
fn the_binary_prints_dockers_output_and_one_line_errors() {
    let rt = runtime();
    let dir = TempDir::new("bin");
    let path = serve(&rt, &dir, Arc::new(Fake::default()));
    let shoal = |args: &[&str], socket: &Path| {
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .env("SHOAL_API_SOCKET", socket)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };

    let out = shoal(&["node", "ls"], &path);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format::node_table("pthddquqfyyf4f9kp41domb5c", &seed_nodes())
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "WARNING: the swarm has 2 managers\n"
    );

    let out = shoal(
        &["swarm", "init", "--advertise-addr", "10.102.20.32"],
        &path,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!(
        "shoal swarm join --token {TOKEN} 10.102.20.32:2377"
    )));

    let out = shoal(&["node", "rm", "lxq-nope"], &path);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "shoal: node lxq-nope not found\n"
    );

    let out = shoal(&["node", "ls"], &dir.0.join("absent.sock"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "shoal: cannot reach the shoal agent at {}: is `shoal agent` running?\n",
            dir.0.join("absent.sock").display()
        )
    );

    // --format, through the binary.
    let out = shoal(&["node", "ls", "--format", "{{.ID}} {{.Self}}"], &path);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "jot0fw3jxcaqu6istj8d2l5qk false\nbo5kl3l26mubrik6czb4i3l5e false\npthddquqfyyf4f9kp41domb5c true\n"
    );
    let out = shoal(
        &[
            "node",
            "ls",
            "--format",
            "table {{.Hostname}}\\t{{.Status}}",
        ],
        &path,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "HOSTNAME                STATUS\nbaroserver66-ubuntu18   Ready\ncolima                  Down\nlp-pc-2023-026          Ready\n"
    );
    let out = shoal(&["node", "ls", "--format", "json"], &path);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["Self"], true);
    let out = shoal(
        &[
            "node",
            "inspect",
            "-f",
            "{{.Description.Engine.EngineVersion}}",
            "self",
            "colima",
        ],
        &path,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "27.3.1\n28.3.3\n");
    let out = shoal(&["node", "ls", "--format", "{{.Nope}}"], &path);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "shoal: template: :1:2: executing \"\" at <.Nope>: can't evaluate field Nope\n"
    );
    assert!(out.stdout.is_empty());
    // A malformed template is refused without asking the agent.
    let out = shoal(
        &["node", "inspect", "-f", "{{.ID", "self"],
        &dir.0.join("absent.sock"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "shoal: template: :1: unclosed action\n"
    );

    // Bad service flag values: one line, before the agent is asked.
    for (args, want) in [
        (
            &["service", "update", "--update-parallelism", "-1", "web"][..],
            "invalid --update-parallelism value \"-1\": must be a non-negative integer",
        ),
        (
            &["service", "create", "--update-order", "random", "nginx"],
            "invalid --update-order value \"random\": stop-first or start-first",
        ),
        (
            &["service", "update", "--rollback", "--force", "web"],
            "other flags may not be combined with --rollback",
        ),
    ] {
        let out = shoal(args, &dir.0.join("absent.sock"));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("shoal: {want}\n")
        );
    }

    let out = shoal(&["node", "ls", "--frobnicate"], &path);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument '--frobnicate'"));
}

// ---------------------------------------------------------------------------
// End to end, in process: agents backed by real shoal_cluster managers on 127.0.0.1.

mod real {
    use shoal::cluster_agent::{ClusterAgent, ClusterAgentConfig, EngineSource};
    use shoal_cluster::manager::Timings;

    use super::*;

    /// A port for a host's swarm listener, which the agent binds only at
    /// `swarm init`/`join`. Taken below the kernel's ephemeral range
    /// (32768-60999): a port the kernel handed out and this test let go can be
    /// handed out again to any outgoing connection before the join binds it
    /// ("Address already in use"). Each call moves on, so parallel tests of
    /// this binary never pick the same one.
    fn free_port() -> u16 {
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let base = 20_000 + (std::process::id() % 500) as u16 * 20;
        loop {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            assert!(n < 2_000, "no free port below the ephemeral range");
            let port = base + n;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }

    fn fast_timings() -> Timings {
        Timings {
            heartbeat_interval: Duration::from_millis(200),
            node_down_after: Duration::from_secs(2),
            ..Timings::default()
        }
    }

    struct Host {
        name: String,
        dir: TempDir,
        socket: PathBuf,
        agent: Arc<ClusterAgent>,
        port: u16,
        /// Agents started on this host so far (each restart serves a new socket).
        starts: usize,
    }

    fn agent_config(
        dir: &TempDir,
        port: u16,
        name: &str,
        no_swarm: Option<&str>,
    ) -> ClusterAgentConfig {
        ClusterAgentConfig {
            data_dir: dir.0.join("data"),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            underlay_interface: None,
            advertise_addr: None,
            data_path_port: 4789,
            engine: EngineSource::Fixed("20.10.24".into()),
            hostname: Some(name.into()),
            timings: Some(fast_timings()),
            node: None,
            gossip_listen: None,
            no_swarm: no_swarm.map(str::to_owned),
            dataplane: None,
            task_files_dir: None,
        }
    }

    impl Host {
        fn start(rt: &tokio::runtime::Runtime, name: &str) -> Host {
            Host::start_with(rt, name, None)
        }

        fn start_with(rt: &tokio::runtime::Runtime, name: &str, no_swarm: Option<&str>) -> Host {
            let dir = TempDir::new(name);
            let port = free_port();
            let agent = rt
                .block_on(ClusterAgent::start(agent_config(
                    &dir, port, name, no_swarm,
                )))
                .unwrap();
            let socket = serve(rt, &dir, agent.clone());
            Host {
                name: name.into(),
                dir,
                socket,
                agent,
                port,
                starts: 1,
            }
        }

        /// Stops the agent (its role shut down cleanly, files kept) and starts a new one
        /// on the same data directory, as a restart of `shoal agent` does.
        fn restart(&mut self, rt: &tokio::runtime::Runtime) {
            rt.block_on(self.agent.shutdown());
            self.agent = rt
                .block_on(ClusterAgent::start(agent_config(
                    &self.dir, self.port, &self.name, None,
                )))
                .unwrap();
            self.starts += 1;
            let path = self.dir.0.join(format!("shoal-{}.sock", self.starts));
            let socket = {
                let _guard = rt.enter();
                server::bind(&path).unwrap()
            };
            rt.spawn(server::serve(socket, self.agent.clone()));
            self.socket = path;
        }

        /// `swarm unlock` with `key` as if typed.
        fn unlock(&self, key: &str) -> Result<(), String> {
            let request = cli::unlock_key::request_from(key)?;
            match Client::new(&self.socket).call(&request) {
                Ok(Reply::SwarmUnlocked) => Ok(()),
                Ok(other) => Err(format!("{other:?}")),
                Err(e) => Err(e.to_string()),
            }
        }

        fn cli(&self, args: &str) -> Result<String, String> {
            let top = parse(&format!("{args} --api-socket {}", self.socket.display()))
                .map_err(|e| e.to_string())?;
            let out = match top {
                Top::Swarm(s) => cli::run_swarm(&s),
                Top::Node(n) => cli::run_node(&n),
                Top::Info(i) => cli::info::run_info(&i),
                Top::Service(s) => cli::service::run_service(&s),
            };
            out.map(|o| o.stdout).map_err(|e| e.to_string())
        }

        fn addr(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }
    }

    /// Polls `f` until it is true, up to `limit`; the last value otherwise.
    fn wait_for(
        limit: Duration,
        mut f: impl FnMut() -> Result<bool, String>,
    ) -> Result<(), String> {
        let start = Instant::now();
        loop {
            match f() {
                Ok(true) => return Ok(()),
                other if start.elapsed() > limit => {
                    return Err(format!("gave up after {limit:?}: {other:?}"))
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    #[test]
    fn an_agent_that_may_not_swarm_refuses_init_and_join_and_changes_nothing() {
        let rt = runtime();
        let h1 = Host::start(&rt, "ns1");
        let h2 = Host::start_with(&rt, "ns2", Some("standalone mode: no swarm here"));
        let e = h2.cli("swarm init --listen-addr 127.0.0.1").unwrap_err();
        assert_eq!(e.trim(), "standalone mode: no swarm here");
        h1.cli("swarm init --listen-addr 127.0.0.1").unwrap();
        let token = h1
            .cli("swarm join-token -q worker")
            .unwrap()
            .trim()
            .to_owned();
        let e = h2
            .cli(&format!(
                "swarm join --token {token} --listen-addr 127.0.0.1 {}",
                h1.addr()
            ))
            .unwrap_err();
        assert_eq!(e.trim(), "standalone mode: no swarm here");
        assert_eq!(rt.block_on(h2.agent.role_name()), "none");
        let nodes = h1.cli("node ls -q").unwrap();
        assert_eq!(nodes.lines().count(), 1, "{nodes}");
    }

    #[test]
    fn info_says_inactive_then_what_a_manager_and_a_worker_know() {
        let rt = runtime();
        let h1 = Host::start(&rt, "in1");
        let h2 = Host::start(&rt, "in2");
        assert_eq!(
            h1.cli("info").unwrap(),
            format!("Swarm: inactive\nVersion: {}\n", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            h1.cli("info --format {{.Swarm.LocalNodeState}}").unwrap(),
            "inactive\n"
        );
        h1.cli("swarm init --listen-addr 127.0.0.1 --data-path-port 4790")
            .unwrap();
        let token = h1
            .cli("swarm join-token -q worker")
            .unwrap()
            .trim()
            .to_owned();
        h2.cli(&format!(
            "swarm join --token {token} --listen-addr 127.0.0.1 {}",
            h1.addr()
        ))
        .unwrap();
        let out = h1.cli("info").unwrap();
        let id = rt.block_on(h1.agent.role_name());
        assert_eq!(id, "manager");
        for line in [
            "Swarm: active\n",
            " Is Manager: true\n",
            " Managers: 1\n",
            " Nodes: 2\n",
            " Data Path Port: 4790\n",
            " Default Address Pool: 10.0.0.0/8\n",
            " SubnetSize: 24\n",
            " Node Address: 127.0.0.1\n",
        ] {
            assert!(out.contains(line), "{line:?} in {out}");
        }
        assert!(
            out.contains(&format!(" Manager Addresses:\n  {}\n", h1.addr())),
            "{out}"
        );
        let out = h2.cli("info").unwrap();
        assert!(out.contains(" Is Manager: false\n"), "{out}");
        assert!(
            !out.contains(" Managers:"),
            "a worker does not count them: {out}"
        );
        assert!(out.contains(&format!("  {}\n", h1.addr())), "{out}");
        assert_eq!(
            h2.cli("info --format {{.Swarm.ControlAvailable}}").unwrap(),
            "false\n"
        );
    }

    #[test]
    fn init_join_ls_leave_rm_through_the_cli() {
        let rt = runtime();
        let h1 = Host::start(&rt, "h1");
        let h2 = Host::start(&rt, "h2");

        let out = h1.cli("swarm init --listen-addr 127.0.0.1").unwrap();
        assert!(
            out.starts_with("Swarm initialized: current node ("),
            "{out}"
        );
        let token = h1
            .cli("swarm join-token -q worker")
            .unwrap()
            .trim()
            .to_owned();
        assert!(token.starts_with("SWMTKN-1-"), "{token}");
        assert!(
            out.contains(&format!("shoal swarm join --token {token} {}", h1.addr())),
            "{out}"
        );
        let e = h1.cli("swarm init").unwrap_err();
        assert!(e.contains("already part of a swarm"), "{e}");

        // Joins as a worker; the worker cannot list nodes.
        let e = h2
            .cli(&format!("swarm join --token {token}x {}", h1.addr()))
            .unwrap_err();
        assert!(!e.is_empty());
        let out = h2
            .cli(&format!(
                "swarm join --token {token} --listen-addr 127.0.0.1 {}",
                h1.addr()
            ))
            .unwrap();
        assert_eq!(out, "This node joined a swarm as a worker.\n");
        let e = h2.cli("node ls").unwrap_err();
        assert!(e.contains("Worker nodes can't be used"), "{e}");

        wait_for(Duration::from_secs(20), || {
            let ls = h1.cli("node ls")?;
            Ok(ls.lines().count() == 3 && ls.matches("Ready").count() == 2)
        })
        .unwrap();
        let ls = h1.cli("node ls").unwrap();
        println!("{out}{ls}");
        let lines: Vec<&str> = ls.lines().collect();
        assert!(lines[0].starts_with("ID "), "{ls}");
        assert!(
            lines[1].contains(" *   h1 ")
                && lines[1].contains("Leader")
                && lines[1].contains("20.10.24"),
            "{ls}"
        );
        assert!(
            lines[2].contains("   h2 ") && !lines[2].contains('*'),
            "{ls}"
        );

        assert_eq!(
            h1.cli("node update --availability drain --label-add zone=a h2")
                .unwrap(),
            "h2\n"
        );
        let inspect = h1.cli("node inspect h2").unwrap();
        let json: serde_json::Value = serde_json::from_str(&inspect).unwrap();
        assert_eq!(json[0]["Spec"]["Availability"], "drain");
        assert_eq!(json[0]["Spec"]["Labels"]["zone"], "a");

        // The worker leaves: shown Down, then removed by hostname.
        assert_eq!(h2.cli("swarm leave").unwrap(), "Node left the swarm.\n");
        wait_for(Duration::from_secs(20), || {
            Ok(h1
                .cli("node ls")?
                .lines()
                .any(|l| l.contains(" h2 ") && l.contains("Down")))
        })
        .unwrap();
        assert_eq!(h1.cli("node rm h2").unwrap(), "h2\n");
        assert_eq!(h1.cli("node ls").unwrap().lines().count(), 2);
        let e = h1.cli("node rm h2").unwrap_err();
        assert!(e.contains("not found"), "{e}");

        // The last manager needs --force.
        let e = h1.cli("swarm leave").unwrap_err();
        assert!(e.contains("--force"), "{e}");
        assert_eq!(
            h1.cli("swarm leave --force").unwrap(),
            "Node left the swarm.\n"
        );
        let e = h1.cli("node ls").unwrap_err();
        assert!(e.contains("not a swarm manager"), "{e}");

        rt.block_on(h1.agent.shutdown());
        rt.block_on(h2.agent.shutdown());
        drop((h1.dir, h2.dir));
    }

    #[test]
    fn managers_join_promote_demote_and_the_last_one_stays() {
        let rt = runtime();
        let h1 = Host::start(&rt, "m1");
        let h2 = Host::start(&rt, "m2");
        let h3 = Host::start(&rt, "m3");
        h1.cli("swarm init --listen-addr 127.0.0.1").unwrap();
        let manager_token = h1.cli("swarm join-token -q manager").unwrap();
        let worker_token = h1.cli("swarm join-token -q worker").unwrap();
        let out = h2
            .cli(&format!(
                "swarm join --token {} --listen-addr 127.0.0.1 {}",
                manager_token.trim(),
                h1.addr()
            ))
            .unwrap();
        assert_eq!(
            out,
            "This node joined a swarm as a manager.
"
        );

        // Two managers: an even number is warned about; h2 answers `node ls` too.
        let top = parse(&format!("node ls --api-socket {}", h2.socket.display())).unwrap();
        let Top::Node(args) = top else { panic!() };
        let mut output = None;
        wait_for(Duration::from_secs(20), || {
            let o = cli::run_node(&args).map_err(|e| e.to_string())?;
            let ok = o.stdout.contains("Reachable") && o.stdout.contains("Leader");
            output = Some(o);
            Ok(ok)
        })
        .unwrap();
        let output = output.unwrap();
        assert!(
            output.stdout.lines().any(|l| l.contains(" *   m2 ")),
            "{output:?}"
        );
        assert!(
            output.warnings.iter().any(|w| w.contains("2 managers")),
            "{output:?}"
        );

        // A rotated worker token is refused; the new one works.
        let rotated = h1.cli("swarm join-token --rotate worker").unwrap();
        assert!(
            rotated.starts_with("Successfully rotated worker join token."),
            "{rotated}"
        );
        let e = h3
            .cli(&format!(
                "swarm join --token {} {}",
                worker_token.trim(),
                h1.addr()
            ))
            .unwrap_err();
        assert!(e.contains("token"), "{e}");
        let new_token = h1.cli("swarm join-token -q worker").unwrap();
        assert_ne!(new_token, worker_token);
        h3.cli(&format!(
            "swarm join --token {} --listen-addr 127.0.0.1 {}",
            new_token.trim(),
            h1.addr()
        ))
        .unwrap();
        let e = h3.cli("swarm init").unwrap_err();
        assert!(e.contains("already part of a swarm"), "{e}");

        assert_eq!(
            h1.cli("node promote m3").unwrap(),
            "Node m3 promoted to a manager in the swarm.\n"
        );
        wait_for(Duration::from_secs(30), || {
            Ok(h1.cli("node ls")?.matches("Reachable").count() == 2)
        })
        .unwrap();
        // Two membership changes back to back: on a loaded machine the second may not be
        // confirmed within the request bound and is refused as "no quorum" with nothing
        // recorded (the first one done, as the error says); the user's retry then works.
        match h1.cli("node demote m3 m2") {
            Ok(out) => assert_eq!(
                out,
                "Manager m3 demoted in the swarm.\nManager m2 demoted in the swarm.\n"
            ),
            Err(e) => {
                assert!(
                    e.contains("node m2: no quorum") && e.contains("done before it: m3"),
                    "{e}"
                );
                wait_for(Duration::from_secs(30), || match h1.cli("node demote m2") {
                    Ok(out) => {
                        assert_eq!(out, "Manager m2 demoted in the swarm.\n");
                        Ok(true)
                    }
                    Err(e) if e.contains("no quorum") => Ok(false),
                    Err(e) => Err(e),
                })
                .unwrap();
            }
        }
        let e = h1.cli("node demote m1").unwrap_err();
        assert!(e.contains("last manager"), "{e}");
        let e = h1.cli("node rm m2").unwrap_err();
        assert!(e.contains("--force"), "{e}");

        for h in [&h1, &h2, &h3] {
            rt.block_on(h.agent.shutdown());
        }
    }

    #[test]
    fn a_restarted_agent_resumes_its_manager_role() {
        let rt = runtime();
        let h1 = Host::start(&rt, "r1");
        h1.cli("swarm init --listen-addr 127.0.0.1").unwrap();
        let id_before = h1.cli("node ls -q").unwrap();
        rt.block_on(h1.agent.shutdown());
        let agent = rt
            .block_on(ClusterAgent::start(ClusterAgentConfig {
                data_dir: h1.dir.0.join("data"),
                listen: SocketAddr::from(([127, 0, 0, 1], h1.port)),
                underlay_interface: None,
                advertise_addr: None,
                data_path_port: 4789,
                engine: EngineSource::Fixed("20.10.24".into()),
                hostname: Some("r1".into()),
                timings: None,
                node: None,
                gossip_listen: None,
                no_swarm: None,
                dataplane: None,
                task_files_dir: None,
            }))
            .unwrap();
        assert_eq!(rt.block_on(agent.role_name()), "manager");
        let dir2 = TempDir::new("r1b");
        let socket = serve(&rt, &dir2, agent.clone());
        let client = Client::new(&socket);
        let mut ids = String::new();
        wait_for(Duration::from_secs(20), || {
            match client.call(&Request::NodeLs) {
                Ok(Reply::Nodes { nodes, .. }) => {
                    ids = nodes.iter().map(|n| format!("{}\n", n.id)).collect();
                    Ok(true)
                }
                other => Err(format!("{other:?}")),
            }
        })
        .unwrap();
        assert_eq!(ids, id_before);
        rt.block_on(agent.shutdown());
    }

    /// Every file under `dir` checked owner-only on the way (dirs 0700, files 0600).
    fn walk_owner_only(dir: &Path) -> usize {
        use std::os::unix::fs::MetadataExt;
        let mode = fs::symlink_metadata(dir).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
        let mut files = 0;
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                files += walk_owner_only(&path);
            } else {
                let mode = meta.mode() & 0o7777;
                assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
                files += 1;
            }
        }
        files
    }

    fn unlock_key_in(out: &str) -> String {
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with("SWMKEY-1-"))
            .unwrap_or_else(|| panic!("no unlock key in {out}"))
            .to_owned()
    }

    fn key_file(h: &Host) -> String {
        fs::read_to_string(h.dir.0.join("data/cluster/manager-key.json")).unwrap()
    }

    #[test]
    fn autolocked_managers_restart_locked_and_unlock_with_the_current_key_only() {
        let rt = runtime();
        let mut h1 = Host::start(&rt, "al1");
        let mut h2 = Host::start(&rt, "al2");
        let out = h1
            .cli("swarm init --autolock --listen-addr 127.0.0.1")
            .unwrap();
        assert!(
            out.contains(
                "To unlock a swarm manager after it restarts, run the `shoal swarm unlock`"
            ),
            "{out}"
        );
        let key = unlock_key_in(&out);
        assert_eq!(h1.cli("swarm unlock-key -q").unwrap().trim(), key);
        assert!(h1.cli("swarm unlock-key").unwrap().contains(&key));
        let token = h1
            .cli("swarm join-token -q manager")
            .unwrap()
            .trim()
            .to_owned();
        h2.cli(&format!(
            "swarm join --token {token} --listen-addr 127.0.0.1 {}",
            h1.addr()
        ))
        .unwrap();
        // The second manager has the key from the store and wrapped its data key in it.
        wait_for(Duration::from_secs(20), || {
            Ok(!key_file(&h2).contains("local_kek"))
        })
        .unwrap();
        assert_eq!(h2.cli("swarm unlock-key -q").unwrap().trim(), key);
        for h in [&h1, &h2] {
            assert!(walk_owner_only(&h.dir.0.join("data")) >= 5);
        }

        // Restarted: locked, every request says so, nothing is served.
        h1.restart(&rt);
        h2.restart(&rt);
        for h in [&h1, &h2] {
            assert_eq!(rt.block_on(h.agent.role_name()), "locked");
            for args in [
                "node ls",
                "swarm join-token worker",
                "swarm unlock-key",
                "service ls",
            ] {
                let e = h.cli(args).unwrap_err();
                assert_eq!(
                    e,
                    "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"shoal swarm unlock\" to unlock it.",
                    "{args}"
                );
            }
            assert!(h.cli("info").unwrap().starts_with("Swarm: locked\n"));
        }
        // A wrong key: refused, still locked.
        let wrong = "SWMKEY-1-WuYH/IX284+lRcXuoVf38viIDK3HJEKY13MIHX+tTt8";
        assert_eq!(
            h1.unlock(wrong).unwrap_err(),
            "swarm could not be unlocked: invalid key provided"
        );
        assert_eq!(rt.block_on(h1.agent.role_name()), "locked");
        assert!(h1
            .cli("node ls")
            .unwrap_err()
            .contains("Swarm is encrypted"));
        // The right key: both serve again.
        h1.unlock(&key).unwrap();
        h2.unlock(&key).unwrap();
        assert_eq!(h1.unlock(&key).unwrap_err(), "Error: swarm is not locked");
        for h in [&h1, &h2] {
            wait_for(Duration::from_secs(20), || {
                let rows = h.cli("node ls")?;
                Ok(rows.matches("Ready").count() == 2)
            })
            .unwrap();
        }

        // Rotation on h2: h1 follows; after a restart the old key is refused.
        let before = key_file(&h1);
        let out = h2.cli("swarm unlock-key --rotate").unwrap();
        assert!(
            out.starts_with("Successfully rotated manager unlock key.\n\n"),
            "{out}"
        );
        let new_key = unlock_key_in(&out);
        assert_ne!(new_key, key);
        wait_for(Duration::from_secs(20), || Ok(key_file(&h1) != before)).unwrap();
        h1.restart(&rt);
        assert_eq!(
            h1.unlock(&key).unwrap_err(),
            "swarm could not be unlocked: invalid key provided"
        );
        h1.unlock(&new_key).unwrap();
        wait_for(Duration::from_secs(20), || {
            Ok(h1.cli("node ls")?.matches("Ready").count() == 2)
        })
        .unwrap();

        // Off: no key to show or rotate, and a restart needs none.
        assert_eq!(
            h1.cli("swarm update --autolock=false").unwrap(),
            "Swarm updated.\n"
        );
        assert_eq!(
            h1.cli("swarm unlock-key").unwrap_err(),
            "no unlock key is set"
        );
        assert_eq!(
            h1.cli("swarm unlock-key --rotate").unwrap_err(),
            "cannot rotate because autolock is not turned on"
        );
        wait_for(Duration::from_secs(20), || {
            Ok(key_file(&h2).contains("local_kek"))
        })
        .unwrap();
        h2.restart(&rt);
        assert_eq!(rt.block_on(h2.agent.role_name()), "manager");
        // On again: a new key, printed once.
        let out = h2.cli("swarm update --autolock").unwrap();
        assert!(out.starts_with("Swarm updated.\nTo unlock"), "{out}");
        assert_ne!(unlock_key_in(&out), new_key);
        assert_eq!(
            h2.cli("swarm update --autolock").unwrap(),
            "Swarm updated.\n"
        );
        for h in [&h1, &h2] {
            rt.block_on(h.agent.shutdown());
        }
    }

    #[test]
    fn a_locked_node_may_leave_with_force() {
        let rt = runtime();
        let mut h1 = Host::start(&rt, "lf1");
        h1.cli("swarm init --autolock --listen-addr 127.0.0.1")
            .unwrap();
        h1.restart(&rt);
        assert!(h1
            .cli("swarm leave")
            .unwrap_err()
            .contains("Swarm is encrypted"));
        assert_eq!(
            h1.cli("swarm leave --force").unwrap(),
            "Node left the swarm.\n"
        );
        assert_eq!(rt.block_on(h1.agent.role_name()), "none");
        assert!(h1.cli("swarm init --listen-addr 127.0.0.1").is_ok());
        rt.block_on(h1.agent.shutdown());
    }

    #[test]
    fn swarm_ca_prints_the_root_and_rotate_moves_every_node_to_a_new_one() {
        use shoal_cluster::pki::CaCertificate;
        let rt = runtime();
        let h1 = Host::start(&rt, "ca1");
        let h2 = Host::start(&rt, "ca2");
        h1.cli("swarm init --listen-addr 127.0.0.1").unwrap();
        let old_token = h1
            .cli("swarm join-token -q worker")
            .unwrap()
            .trim()
            .to_owned();
        h2.cli(&format!("swarm join --token {old_token} {}", h1.addr()))
            .unwrap();
        let root = CaCertificate::from_pem(&h1.cli("swarm ca").unwrap()).unwrap();
        let digest_of = |t: &str| {
            *shoal_cluster::token::JoinToken::parse(t.trim())
                .unwrap()
                .ca_digest()
        };
        assert_eq!(digest_of(&old_token), root.digest());
        // A worker has no say; Swarm's options for a root brought along are refused.
        assert!(h2
            .cli("swarm ca")
            .unwrap_err()
            .contains("not a swarm manager"));
        for (args, needle) in [
            (
                "swarm ca --rotate --ca-cert /tmp/root.pem",
                "--ca-cert is not supported",
            ),
            (
                "swarm ca --rotate --ca-key /tmp/key.pem",
                "--ca-key is not supported",
            ),
            (
                "swarm ca --rotate --external-ca protocol=cfssl,url=https://x",
                "--external-ca is not supported",
            ),
            (
                "swarm ca --rotate --cert-expiry 720h",
                "--cert-expiry is not supported",
            ),
            ("swarm ca --detach", "--detach needs --rotate"),
        ] {
            let e = h1.cli(args).unwrap_err();
            assert!(e.contains(needle), "{args}: {e}");
        }
        assert_eq!(
            CaCertificate::from_pem(&h1.cli("swarm ca").unwrap()).unwrap(),
            root,
            "a refused option changed nothing"
        );

        let printed = h1.cli("swarm ca --rotate -q").unwrap();
        let new_root = CaCertificate::from_pem(&printed).unwrap();
        assert_ne!(new_root, root);
        assert_eq!(new_root.cluster_id(), root.cluster_id());
        assert_eq!(
            CaCertificate::from_pem(&h1.cli("swarm ca").unwrap()).unwrap(),
            new_root
        );
        for h in [&h1, &h2] {
            let identity =
                shoal_cluster::manager::kept_identity(&h.dir.0.join("data/cluster")).unwrap();
            assert_eq!(identity.issuer(), &new_root, "{}", h.name);
            assert_eq!(identity.trust().digests(), (new_root.digest(), None));
        }
        let token = h1.cli("swarm join-token -q worker").unwrap();
        assert_eq!(digest_of(&token), new_root.digest());
        rt.block_on(h2.agent.shutdown());
        rt.block_on(h1.agent.shutdown());
    }
}

#[test]
fn replicas_max_per_node_on_create_and_update() {
    let create = |argv: &[&str]| {
        let argv: Vec<&str> = ["create"].iter().chain(argv).copied().collect();
        match service_cmd(&argv).unwrap() {
            ServiceCommand::Create(a) => a.spec(),
            other => panic!("{other:?}"),
        }
    };
    let spec = create(&["--replicas-max-per-node", "2", "nginx"]).unwrap();
    assert_eq!(spec.placement.max_replicas_per_node, 2);
    assert_eq!(
        create(&["nginx"]).unwrap().placement.max_replicas_per_node,
        0
    );
    let e = create(&["--mode", "global", "--replicas-max-per-node", "1", "nginx"]).unwrap_err();
    assert!(e.contains("replicas-max-per-node"), "{e}");
    assert!(service_cmd(&["create", "--replicas-max-per-node", "-1", "nginx"]).is_err());
    let c = update_changes(&["--replicas-max-per-node", "3", "web"]).unwrap();
    assert_eq!(c.max_replicas_per_node, Some(3));
    let c = update_changes(&["--replicas", "3", "web"]).unwrap();
    assert_eq!(c.max_replicas_per_node, None);
}

#[test]
fn placement_prefs_on_create_and_update() {
    let create = |argv: &[&str]| {
        let argv: Vec<&str> = ["create"].iter().chain(argv).copied().collect();
        match service_cmd(&argv).unwrap() {
            ServiceCommand::Create(a) => a.spec(),
            other => panic!("{other:?}"),
        }
    };
    let spec = create(&[
        "--placement-pref",
        "spread=node.labels.zone",
        "--placement-pref",
        "SPREAD=node.labels.rack",
        "nginx",
    ])
    .unwrap();
    assert_eq!(
        spec.placement.preferences,
        ["node.labels.zone", "node.labels.rack"]
    );
    for (bad, says) in [
        ("node.labels.zone", "expected spread=node.labels.KEY"),
        ("pack=node.labels.zone", "unknown strategy"),
        ("spread=engine.labels.zone", "node labels only"),
        ("spread=node.labels.", "a label key is required"),
    ] {
        let e = create(&["--placement-pref", bad, "nginx"]).unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }
    let c = update_changes(&[
        "--placement-pref-add",
        "spread=node.labels.zone",
        "--placement-pref-rm",
        "spread=node.labels.rack",
        "web",
    ])
    .unwrap();
    assert_eq!(c.placement_pref_add, ["node.labels.zone"]);
    assert_eq!(c.placement_pref_rm, ["node.labels.rack"]);
    assert!(update_changes(&["--placement-pref-add", "spread=node.id", "web"]).is_err());
}

#[test]
fn ulimits_and_sysctls_on_create_and_update() {
    let create = |argv: &[&str]| {
        let argv: Vec<&str> = ["create"].iter().chain(argv).copied().collect();
        match service_cmd(&argv).unwrap() {
            ServiceCommand::Create(a) => a.spec(),
            other => panic!("{other:?}"),
        }
    };
    let spec = create(&[
        "--ulimit",
        "nofile=1024:2048",
        "--ulimit",
        "nproc=100",
        "--sysctl",
        "net.core.somaxconn=4096",
        "nginx",
    ])
    .unwrap();
    let u = &spec.container.ulimits;
    assert_eq!((u["nofile"].soft, u["nofile"].hard), (1024, 2048));
    assert_eq!((u["nproc"].soft, u["nproc"].hard), (100, 100));
    assert_eq!(spec.container.sysctls["net.core.somaxconn"], "4096");
    for (flag, bad, says) in [
        ("--ulimit", "nofile", "expected NAME=SOFT[:HARD]"),
        ("--ulimit", "nofile=2048:1024", "soft limit"),
        ("--ulimit", "colour=1", "invalid ulimit type"),
        ("--ulimit", "nofile=many", "is not a number"),
        ("--sysctl", "kernel.hostname=x", "is not whitelisted"),
        ("--sysctl", "net.core.somaxconn", "is not whitelisted"),
    ] {
        let e = create(&[flag, bad, "nginx"]).unwrap_err();
        assert!(e.contains(says), "{flag} {bad}: {e}");
    }
    let c = update_changes(&[
        "--ulimit-add",
        "nofile=10:20",
        "--ulimit-rm",
        "nproc",
        "--sysctl-add",
        "net.ipv4.tcp_syncookies=0",
        "--sysctl-rm",
        "net.core.somaxconn",
        "web",
    ])
    .unwrap();
    let mut o = spec.container.clone();
    c.container.apply(&mut o);
    assert_eq!(o.ulimits.keys().collect::<Vec<_>>(), ["nofile"]);
    assert_eq!(
        (o.ulimits["nofile"].soft, o.ulimits["nofile"].hard),
        (10, 20)
    );
    assert_eq!(
        o.sysctls.keys().collect::<Vec<_>>(),
        ["net.ipv4.tcp_syncookies"]
    );
    assert!(update_changes(&["--sysctl-add", "vm.swappiness=1", "web"]).is_err());
}

#[test]
fn privileged_and_devices_on_create_and_update() {
    let create = |argv: &[&str]| {
        let argv: Vec<&str> = ["create"].iter().chain(argv).copied().collect();
        match service_cmd(&argv).unwrap() {
            ServiceCommand::Create(a) => a.spec(),
            other => panic!("{other:?}"),
        }
    };
    let plain = create(&["nginx"]).unwrap();
    assert!(!plain.container.privileged && plain.container.devices.is_empty());
    let spec = create(&[
        "--privileged",
        "--device",
        "/dev/null:/dev/xnull",
        "--device",
        "/dev/zero:r",
        "--device",
        "/dev/fuse:/dev/f:rw",
        "nginx",
    ])
    .unwrap();
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
            "/dev/zero:/dev/zero:r",
            "/dev/fuse:/dev/f:rw"
        ]
    );
    for (bad, says) in [
        ("dev/null", "not an absolute path"),
        ("/dev/null:", "no empty part"),
        ("/dev/null:/dev/x:rwz", "not a combination of r, w and m"),
        ("/dev/null:/dev/x:rw:m", "expected PATH_ON_HOST"),
    ] {
        let e = create(&["--device", bad, "nginx"]).unwrap_err();
        assert!(
            e.contains("invalid --device") && e.contains(says),
            "{bad}: {e}"
        );
    }
    let e = create(&[
        "--device",
        "/dev/null:/dev/x",
        "--device",
        "/dev/zero:/dev/x",
        "nginx",
    ])
    .unwrap_err();
    assert!(e.contains("given twice"), "{e}");
    // `--privileged` takes no value on create, as `docker run`'s.
    assert!(service_cmd(&["create", "--privileged=false", "nginx"]).is_err());

    let c = update_changes(&["--privileged=false", "web"]).unwrap();
    assert_eq!(c.container.privileged, Some(false));
    let c = update_changes(&["--privileged", "web"]).unwrap();
    assert_eq!(c.container.privileged, Some(true));
    let c = update_changes(&["--env-add", "A=1", "web"]).unwrap();
    assert_eq!(c.container.privileged, None, "not said: left alone");
    let c = update_changes(&[
        "--device-add",
        "/dev/full:/dev/xnull:r",
        "--device-rm",
        "/dev/f",
        "web",
    ])
    .unwrap();
    let mut o = spec.container.clone();
    c.container.apply(&mut o);
    let shown: Vec<String> = o.devices.iter().map(|d| d.to_string()).collect();
    assert_eq!(shown, ["/dev/zero:/dev/zero:r", "/dev/full:/dev/xnull:r"]);
    assert!(update_changes(&["--device-add", "null", "web"]).is_err());
    let e = update_changes(&["--device-rm", "dev/f", "web"]).unwrap_err();
    assert!(e.contains("--device-rm"), "{e}");
}
