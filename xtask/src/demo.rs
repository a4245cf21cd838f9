//! `cargo xtask demo`: README's main job. Sets up what is missing, builds, brings up a
//! 3-host lab and runs the Swarm flow on it through the real `shoal` CLI:
//! - `swarm init` on h1, h2 and h3 join; every agent applies the overlay, DNS, service
//!   VIP and routing-mesh state its node's executor declares;
//! - an overlay network `demo` and the service `myweb` (`shoal/web:1` from the lab's
//!   registry, pinned to its digest and pulled by each node; 4 replicas, port 80
//!   published on every node, on `demo`);
//! - from the client namespace (a machine outside the cluster), requests to every node's
//!   address reach all 4 tasks, and each task answers with the client's real address;
//! - a `client` task on `demo` resolves `myweb` and `tasks.myweb` by name and reaches
//!   the service through its VIP.
//!
//! The lab stays up afterwards; `cargo xtask lab down` removes it.
use std::{
    collections::{BTreeMap, BTreeSet},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    lab::{self, LabState, Layout},
    setup,
    util::shoal_binary,
};

/// The port `myweb` is published on, on every node.
pub const DEMO_PORT: u16 = 80;
/// The demo's service.
const SERVICE: &str = "myweb";
/// How long any one step may take before the demo gives up and says what it saw.
const BOUND: Duration = Duration::from_secs(90);

pub fn run() -> Result<()> {
    setup::ensure(false)?;
    println!("demo: building shoal");
    let status = crate::util::cargo().arg("build").status()?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let layout = Layout::new(lab::layout::DEFAULT_PREFIX)?;
    if !lab::leftovers(&layout).is_empty() {
        println!("demo: taking down the previous demo lab");
        lab::down(&layout)?;
    }
    let state = lab::up(&layout, 3)?;
    print!("{}", lab::describe(&state));

    let shoal = shoal_binary()?;
    for h in &state.hosts {
        let status: serde_json::Value =
            serde_json::from_str(&lab::agent::start(&state, h, &shoal, &[])?)?;
        println!(
            "demo: {}: shoal agent up, underlay XDP attached to {} in {} mode",
            h.name, status["underlay_interface"], status["xdp_mode"]
        );
    }
    form_cluster(&state)?;

    let h1 = &state.hosts[0].name;
    shell(
        &state,
        h1,
        &["shoal", "network", "create", "-d", "overlay", "demo"],
    )?;
    let port = format!("{DEMO_PORT}:80");
    // From the lab registry: the manager pins the tag to its digest, each node pulls it.
    let image = format!("{}/shoal/web:1", state.registry);
    shell(
        &state,
        h1,
        &[
            "shoal",
            "service",
            "create",
            "--detach",
            "--name",
            SERVICE,
            "--replicas",
            "4",
            "-p",
            &port,
            "--network",
            "demo",
            &image,
        ],
    )?;
    let tasks = wait_tasks(&state, SERVICE, 4)?;
    shell(&state, h1, &["shoal", "service", "ps", SERVICE])?;

    // Requests from outside the cluster to every node's address.
    let client = state.client.address.to_string();
    println!(
        "\ndemo: from the client ({client}), requests to every node's address, port {DEMO_PORT}:"
    );
    for h in &state.hosts {
        let url = format!("http://{}:{DEMO_PORT}/", h.address);
        let seen = reach_all(&tasks, || client_get(&state, &url))
            .with_context(|| format!("requests through {} ({url})", h.name))?;
        for (host, (sent, clients)) in by_task(&tasks, &seen) {
            let t = &tasks[host];
            println!(
                "  {url:<28} -> task {:<10} on {}  ({sent} of the requests)  it saw client={}",
                t.name,
                t.node,
                clients.iter().cloned().collect::<Vec<_>>().join(",")
            );
        }
        if seen.values().any(|(_, c)| c.iter().any(|a| *a != client)) {
            bail!("a task saw another client address than {client}: {seen:?}");
        }
    }
    println!(
        "demo: every node's address reached all 4 tasks, and the tasks saw the client's own \
         address {client} (the routing mesh keeps it)."
    );

    // A container on the service's network, by name.
    shell(
        &state,
        h1,
        &[
            "shoal",
            "service",
            "create",
            "--detach",
            "--name",
            "client",
            "--network",
            "demo",
            &image,
        ],
    )?;
    let c = wait_tasks(&state, "client", 1)?
        .into_values()
        .next()
        .context("the client task")?;
    println!(
        "\ndemo: in the container {} on {} (network demo):",
        c.container, c.node
    );
    let in_client = |argv: &[&str]| -> Result<String> {
        let mut full = vec!["docker", "exec", c.container.as_str()];
        full.extend_from_slice(argv);
        lab::exec_output(&state, &c.node, &full)
    };
    let names = wait(&format!("{SERVICE} resolving by name"), || {
        in_client(&["nslookup", SERVICE]).map_err(|e| e.to_string())
    })?;
    println!("$ nslookup {SERVICE}\n{}", indent(&names));
    let tasks_names = wait(&format!("tasks.{SERVICE} listing 4 tasks"), || {
        let out =
            in_client(&["nslookup", &format!("tasks.{SERVICE}")]).map_err(|e| e.to_string())?;
        if out.matches("Address:").count() == 5 {
            Ok(out)
        } else {
            Err(out)
        }
    })?;
    println!("$ nslookup tasks.{SERVICE}\n{}", indent(&tasks_names));
    let url = format!("http://{SERVICE}/");
    println!("$ wget -qO- {url}   (repeated until every task has answered)");
    let seen = reach_all(&tasks, || {
        in_client(&["timeout", "10", "wget", "-qO-", &url]).map_err(|e| e.to_string())
    })
    .context("requests from the client container to the service's name")?;
    for (host, (sent, clients)) in by_task(&tasks, &seen) {
        println!(
            "  wget {url:<16} -> task {:<10} on {}  ({sent} of the requests)  it saw client={}",
            tasks[host].name,
            tasks[host].node,
            clients.iter().cloned().collect::<Vec<_>>().join(",")
        );
    }

    println!(
        "\ndemo: the lab stays up. Try:\n\
         \x20 cargo xtask lab exec h1 -- shoal service ls\n\
         \x20 cargo xtask lab exec h1 -- shoal service scale {SERVICE}=6\n\
         \x20 cargo xtask lab client -- curl -s http://{}:{DEMO_PORT}/\n\
         \x20 cargo xtask lab exec {} -- docker exec {} wget -qO- http://{SERVICE}/\n\
         \x20 cargo xtask lab exec h2 -- shoal dataplane stats\n\
         \x20 docker -H unix://{} service ls     # the docker CLI through h1's Engine API\n\
         \x20 cargo xtask lab down",
        state.hosts[1].address,
        c.node,
        c.container,
        crate::lab::agent::engine_api_socket(&state.hosts[0]).display()
    );
    Ok(())
}

/// `shoal swarm init` on h1, the other hosts join as workers, then `node ls`.
fn form_cluster(state: &LabState) -> Result<()> {
    let h1 = &state.hosts[0];
    let manager = format!("{}:2377", h1.address);
    shell(
        state,
        &h1.name,
        &[
            "shoal",
            "swarm",
            "init",
            "--advertise-addr",
            &h1.address.to_string(),
        ],
    )?;
    let token = lab::exec_output(
        state,
        &h1.name,
        &["shoal", "swarm", "join-token", "-q", "worker"],
    )?;
    for h in &state.hosts[1..] {
        println!(
            "{}$ shoal swarm join --token SWMTKN-1-... {manager}",
            h.name
        );
        let joined = lab::exec_output(
            state,
            &h.name,
            &["shoal", "swarm", "join", "--token", &token, &manager],
        )?;
        println!("{}", indent(&joined));
    }
    // Joins are recorded at once; wait (bounded) until every node reports Ready.
    let nodes = wait("every node Ready", || {
        let nodes = lab::exec_output(state, &h1.name, &["shoal", "node", "ls"])
            .map_err(|e| e.to_string())?;
        if nodes.matches("Ready").count() == state.hosts.len() {
            Ok(nodes)
        } else {
            Err(nodes)
        }
    })?;
    println!("{}$ shoal node ls\n{}", h1.name, indent(&nodes));
    Ok(())
}

/// Runs a command in a host, printed as a user would type it, with its output.
fn shell(state: &LabState, host: &str, argv: &[&str]) -> Result<()> {
    println!("{host}$ {}", argv.join(" "));
    let out = lab::exec_output(state, host, argv)?;
    if !out.is_empty() {
        println!("{}", indent(&out));
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `probe` until it returns Ok, for at most [`BOUND`]; the error says what it saw.
fn wait<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> Result<T> {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(v) => return Ok(v),
            Err(seen) if start.elapsed() > BOUND => {
                bail!("{what}: not true within {BOUND:?}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// One running task: its name (`myweb.2`), its node and its container.
#[derive(Debug, Clone)]
struct Task {
    name: String,
    node: String,
    container: String,
}

/// Waits until `service` has `n` running tasks; they are keyed by their container's
/// hostname (the first 12 characters of the task ID), which `shoal/web` answers with.
fn wait_tasks(state: &LabState, service: &str, n: usize) -> Result<BTreeMap<String, Task>> {
    wait(&format!("{n} running {service} tasks"), || {
        let out = lab::exec_output(
            state,
            &state.hosts[0].name,
            &["shoal", "service", "ps", "--no-trunc", service],
        )
        .map_err(|e| e.to_string())?;
        let mut lines = out.lines();
        let header = lines.next().ok_or("no header")?;
        let col = |name: &str| header.find(name).ok_or(format!("no {name} column"));
        let cols = [
            0,
            col("NAME")?,
            col("IMAGE")?,
            col("NODE")?,
            col("DESIRED STATE")?,
            col("CURRENT STATE")?,
            col("ERROR")?,
        ];
        let mut tasks = BTreeMap::new();
        for l in lines {
            let cell = |i: usize| {
                let end = cols.get(i + 1).copied().unwrap_or(l.len()).min(l.len());
                l.get(cols[i].min(l.len())..end)
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            if cell(1).starts_with("\\_") || cell(4) != "Running" || !cell(5).starts_with("Running")
            {
                continue;
            }
            let id = cell(0);
            tasks.insert(
                id.chars().take(12).collect(),
                Task {
                    container: format!("{}.{id}", cell(1)),
                    name: cell(1),
                    node: cell(3),
                },
            );
        }
        if tasks.len() == n {
            Ok(tasks)
        } else {
            Err(out)
        }
    })
}

/// Sends requests with `fetch` until every task has answered. Returns, per task
/// hostname, how many requests it answered and the client addresses it reported.
#[allow(clippy::type_complexity)]
fn reach_all(
    tasks: &BTreeMap<String, Task>,
    mut fetch: impl FnMut() -> Result<String, String>,
) -> Result<BTreeMap<String, (usize, BTreeSet<String>)>> {
    let mut seen: BTreeMap<String, (usize, BTreeSet<String>)> = BTreeMap::new();
    wait("requests reaching every task", || {
        let body = fetch()?;
        let field = |key: &str| {
            body.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_owned)
        };
        let (Some(host), Some(client)) = (field("host="), field("client=")) else {
            return Err(format!("not a shoal/web answer: {body}"));
        };
        if !tasks.contains_key(&host) {
            return Err(format!(
                "answered by {host}, not one of the service's tasks"
            ));
        }
        let e = seen.entry(host).or_default();
        e.0 += 1;
        e.1.insert(client);
        if seen.len() == tasks.len() {
            Ok(())
        } else {
            Err(format!("answered so far by {:?}", seen.keys()))
        }
    })?;
    Ok(seen)
}

/// `reach_all`'s answer in task-name order.
#[allow(clippy::type_complexity)]
fn by_task<'a>(
    tasks: &BTreeMap<String, Task>,
    seen: &'a BTreeMap<String, (usize, BTreeSet<String>)>,
) -> Vec<(&'a String, &'a (usize, BTreeSet<String>))> {
    let mut rows: Vec<_> = seen.iter().collect();
    rows.sort_by_key(|(host, _)| tasks.get(*host).map(|t| t.name.clone()));
    rows
}

/// One `curl` from the client namespace.
fn client_get(state: &LabState, url: &str) -> Result<String, String> {
    let argv = ["curl", "-sS", "--max-time", "5", url].map(String::from);
    let out = lab::client_command(state, &argv)
        .map_err(|e| e.to_string())?
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}
