//! Revocation and least privilege on a real 3-host lab, asked through the managers'
//! port 2377 with the identities the agents keep in their data directories (and
//! through the CLI): a worker's fetched state holds its own service's env and no other
//! service's; a demoted manager's manager certificate writes and reads nothing (the node
//! works on as a worker); a removed node's agent, left running with its certificate,
//! fetches nothing and reports nothing.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use serde_json::{json, Value};
use shoal_tests::{
    lab,
    manager_port::{self, cluster_dir, identity_in, node_config, refusal},
    privileged,
    swarm::{in_netns, Cli, BOUND},
    wait_for, LabGuard,
};

const ALPHA_ENV: &str = "ALPHA_SECRET=alpha-env-7f3c";
const BRAVO_ENV: &str = "BRAVO_SECRET=bravo-env-91ad";

/// Asks the managers, from the client namespace, with `config`: starting at `addr`,
/// following "not the leader" answers.
fn ask(
    client_ns: &Path,
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    request: &Value,
) -> Result<Value, Value> {
    let mut addr = addr;
    for _ in 0..5 {
        let answer = in_netns(client_ns, || manager_port::call_once(addr, config, request))
            .unwrap_or_else(|e| panic!("asking {addr}: {e}"));
        match answer {
            Err(e) if e["error"] == "not_leader" && e["leader"].is_string() => {
                addr = e["leader"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .expect("leader address");
            }
            other => return other,
        }
    }
    panic!("no leader answered {request}");
}

/// The node ID of host `name` (from `node ls` on h1).
fn node_id(cli: &Cli, name: &str) -> String {
    let out = cli.ok("h1", &["node", "inspect", "--format", "{{.ID}}", name]);
    out.trim().to_owned()
}

#[test]
fn removed_and_demoted_nodes_get_nothing_and_workers_only_their_own() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('v', 3);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    let hosts = &guard.state.hosts;
    let h1 = hosts[0].address.to_string();
    let manager: SocketAddr = format!("{h1}:2377").parse().unwrap();
    let client_ns = PathBuf::from("/run/netns").join(&guard.state.client.netns);
    cli.ok("h1", &["swarm", "init", "--advertise-addr", &h1]);
    let worker_token = cli.ok("h1", &["swarm", "join-token", "-q", "worker"]);
    let manager_token = cli.ok("h1", &["swarm", "join-token", "-q", "manager"]);
    cli.ok(
        "h2",
        &[
            "swarm",
            "join",
            "--token",
            worker_token.trim(),
            &manager.to_string(),
        ],
    );
    cli.ok(
        "h3",
        &[
            "swarm",
            "join",
            "--token",
            manager_token.trim(),
            &manager.to_string(),
        ],
    );
    wait_for("3 nodes Ready", BOUND, || {
        let rows = cli.run("h1", &["node", "ls"])?;
        (rows.matches("Ready").count() == 3)
            .then_some(())
            .ok_or(rows)
    });

    // Two services sharing one network, one on h1 and one on h2, each with its env.
    cli.ok("h1", &["network", "create", "-d", "overlay", "shared"]);
    for (name, env, host) in [("alpha", ALPHA_ENV, "h1"), ("bravo", BRAVO_ENV, "h2")] {
        cli.ok(
            "h1",
            &[
                "service",
                "create",
                "-d",
                "--name",
                name,
                "--network",
                "shared",
                "-e",
                env,
                "--constraint",
                &format!("node.hostname=={host}"),
                "shoal/web:1",
            ],
        );
    }
    cli.wait_running("alpha", 1, |_| true);
    cli.wait_running("bravo", 1, |_| true);

    // h2 fetches its state as its executor does: bravo whole, alpha by name only.
    let h2_identity = identity_in(&cluster_dir(&hosts[1]));
    let h2 = node_config(&h2_identity);
    let fetch = json!({"node_state": {"since": 0}});
    let view = ask(&client_ns, manager, &h2, &fetch).expect("h2 fetches its state");
    let text = view.to_string();
    eprintln!("h2's fetched state: {} bytes", text.len());
    assert!(text.contains(BRAVO_ENV), "h2's own service's env: {text}");
    assert!(
        text.contains("\"alpha\""),
        "alpha is named on the shared network"
    );
    assert!(
        !text.contains(ALPHA_ENV),
        "another service's env reached h2: {text}"
    );
    assert!(!text.contains("SWMTKN"), "a join token reached h2");

    // h3's manager certificate, kept before it is demoted, writes while it is one...
    let h3_id = node_id(&cli, "h3");
    let h3_kept = node_config(&identity_in(&cluster_dir(&hosts[2])));
    let label = |value: &str| json!({"execute": {"op": "update_node_labels", "id": h3_id, "add": {"kept": value}}});
    let wrote = ask(&client_ns, manager, &h3_kept, &label("manager"));
    assert!(wrote.is_ok(), "a manager's certificate writes: {wrote:?}");
    // ... and after the demotion, nothing, anywhere.
    cli.ok("h1", &["node", "demote", "h3"]);
    wait_for("h3 is a worker", BOUND, || {
        let rows = cli.run("h1", &["node", "ls"])?;
        let h3 = rows
            .lines()
            .find(|r| r.contains("h3"))
            .unwrap_or("")
            .to_owned();
        (h3.contains("Ready") && !h3.contains("Reachable") && !h3.contains("Leader"))
            .then_some(())
            .ok_or(rows)
    });
    for request in [label("demoted"), json!("read_state")] {
        let answer = wait_for("the demotion applied", BOUND, || {
            match ask(&client_ns, manager, &h3_kept, &request) {
                Err(e) if e["error"] == "unauthorized" => Ok(Err(e)),
                other => Err(format!("{other:?}")),
            }
        });
        let why = refusal(&answer).expect("a refusal");
        eprintln!("demoted manager's certificate, {request}: refused: {why}");
        assert!(why.contains("is a worker now"), "{why}");
    }
    // Posing as a Raft candidate with a far higher term: refused before Raft sees it.
    let vote = json!({"raft": {"vote": {
        "vote": {"leader_id": {"term": 999_999, "node_id": 1}, "committed": false},
        "last_log_id": null
    }}});
    let answer = in_netns(&client_ns, || {
        manager_port::call_once(manager, &h3_kept, &vote)
    })
    .expect("h1 answers");
    let why = refusal(&answer).unwrap_or_else(|| panic!("h1 took a Raft vote request: {answer:?}"));
    assert!(why.contains("is a worker now"), "{why}");
    // The refused write left nothing.
    let inspect = cli.ok("h1", &["node", "inspect", "h3"]);
    assert!(!inspect.contains("demoted"), "{inspect}");
    let refused = cli.err("h3", &["node", "update", "--label-add", "x=y", "h1"]);
    assert!(refused.to_lowercase().contains("worker"), "{refused}");
    // It works on as a worker: Ready, and its own certificate fetches.
    wait_for("h3 fetches as a worker", BOUND, || {
        let h3 = node_config(&identity_in(&cluster_dir(&hosts[2])));
        ask(&client_ns, manager, &h3, &fetch)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });

    // h2 is removed while its agent runs on with its certificate.
    let bravo_task = cli.running("bravo").expect("bravo's task")[0].id.clone();
    cli.ok("h1", &["node", "rm", "--force", "h2"]);
    let removed_at = Instant::now();
    let info = wait_for("h2's agent is refused its state", BOUND, || {
        let info = cli.run("h2", &["info"])?;
        info.contains("revoked").then_some(info.clone()).ok_or(info)
    });
    eprintln!(
        "h2's agent refused after {:?}: {}",
        removed_at.elapsed(),
        info.lines().find(|l| l.contains("Error")).unwrap_or("")
    );
    let answer = ask(&client_ns, manager, &h2, &fetch);
    let why = refusal(&answer).unwrap_or_else(|| panic!("a removed node fetched: {answer:?}"));
    assert!(why.contains("revoked"), "{why}");
    let report = json!({"report_tasks": {"updates": [
        {"task_id": bravo_task, "status": {"state": "failed", "message": "forged"}}
    ]}});
    let answer = ask(&client_ns, manager, &h2, &report);
    let why = refusal(&answer).unwrap_or_else(|| panic!("a removed node reported: {answer:?}"));
    eprintln!("removed node's report: refused: {why}");
    let ps = cli.ok("h1", &["service", "ps", "--no-trunc", "bravo"]);
    assert!(!ps.contains("forged"), "{ps}");
    let heartbeat = json!({"heartbeat": {"node": {"hostname": "h2", "engine_version": "x", "addr": hosts[1].address.to_string()}}});
    let answer = ask(&client_ns, manager, &h2, &heartbeat);
    assert!(
        refusal(&answer).is_some(),
        "a removed node's heartbeat: {answer:?}"
    );
    let rows = cli.ok("h1", &["node", "ls"]);
    assert!(
        !rows
            .lines()
            .any(|r| r.split_whitespace().any(|w| w == "h2")),
        "h2 is listed again: {rows}"
    );
    // The revocation is the store's: every manager has it.
    let state = ask(
        &client_ns,
        manager,
        &node_config(&identity_in(&cluster_dir(&hosts[0]))),
        &json!("read_state"),
    )
    .expect("h1 reads the state");
    let removed = &state["state"]["removed_nodes"];
    assert!(removed.get(h2_identity.node_id()).is_some(), "{removed}");

    lab::down(&guard.layout).expect("lab down");
    assert_eq!(lab::leftovers(&guard.layout), Vec::<String>::new());
}
