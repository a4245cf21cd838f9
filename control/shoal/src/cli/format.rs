//! What the CLI prints, in Docker's words and layout.

use std::fmt::Write as _;

use serde_json::json;

use super::{
    template::{unescape, Format, Template},
    NodeCommand, SwarmCommand,
};
use crate::api::{Availability, NodeRole, NodeStatus, NodeView, Reply};

/// The command that joins a node with `token` through the manager at `addr`.
pub fn join_command(token: &str, addr: &str) -> String {
    format!("shoal swarm join --token {token} {addr}")
}

/// How to unlock a restarted manager with `key`, as Docker says it.
pub fn unlock_instructions(key: &str) -> String {
    format!(
        "To unlock a swarm manager after it restarts, run the `shoal swarm unlock`\n\
         command and provide the following key:\n\n    {key}\n\n\
         Please remember to store this key in a password manager, since without it you\n\
         will not be able to restart the manager.\n"
    )
}

/// Output of a `swarm` command.
pub fn swarm(command: &SwarmCommand, reply: &Reply) -> Result<String, String> {
    match (command, reply) {
        (
            SwarmCommand::Init(_),
            Reply::SwarmInit {
                node_id,
                worker_token,
                manager_addr,
                unlock_key,
            },
        ) => {
            let mut out = format!(
                "Swarm initialized: current node ({node_id}) is now a manager.\n\n\
                 To add a worker to this swarm, run the following command:\n\n    {}\n\n\
                 To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n",
                join_command(worker_token.expose(), manager_addr)
            );
            if let Some(key) = unlock_key {
                out.push('\n');
                out.push_str(&unlock_instructions(key.expose()));
            }
            Ok(out)
        }
        (SwarmCommand::Update(_), Reply::SwarmUpdated { unlock_key }) => {
            let mut out = "Swarm updated.\n".to_owned();
            if let Some(key) = unlock_key {
                out.push_str(&unlock_instructions(key.expose()));
            }
            Ok(out)
        }
        (SwarmCommand::Unlock, Reply::SwarmUnlocked) => Ok(String::new()),
        (SwarmCommand::UnlockKey(args), Reply::UnlockKey { key, rotated }) => {
            if args.quiet {
                return Ok(format!("{}\n", key.expose()));
            }
            let mut out = String::new();
            if *rotated {
                out.push_str("Successfully rotated manager unlock key.\n\n");
            }
            out.push_str(&unlock_instructions(key.expose()));
            Ok(out)
        }
        (SwarmCommand::Join(_), Reply::SwarmJoin { role, .. }) => {
            Ok(format!("This node joined a swarm as a {role}.\n"))
        }
        (
            SwarmCommand::JoinToken(args),
            Reply::JoinToken {
                role,
                token,
                manager_addr,
                rotated,
            },
        ) => {
            if args.quiet {
                return Ok(format!("{}\n", token.expose()));
            }
            let mut out = String::new();
            if *rotated {
                let _ = write!(out, "Successfully rotated {role} join token.\n\n");
            }
            let _ = write!(
                out,
                "To add a {role} to this swarm, run the following command:\n\n    {}\n",
                join_command(token.expose(), manager_addr)
            );
            Ok(out)
        }
        (SwarmCommand::Leave(_), Reply::SwarmLeave) => Ok("Node left the swarm.\n".into()),
        (_, other) => Err(unexpected(other)),
    }
}

/// Output of a `node` command.
pub fn node(command: &NodeCommand, reply: &Reply) -> Result<String, String> {
    match (command, reply) {
        (NodeCommand::Ls(args), Reply::Nodes { self_id, nodes, .. }) => {
            let filters = crate::filters::from_args(&args.filters, crate::filters::NODE_KEYS)?;
            let nodes: Vec<NodeView> = nodes
                .iter()
                .filter(|n| crate::filters::node_matches(n, &filters))
                .cloned()
                .collect();
            let mut sorted: Vec<&NodeView> = nodes.iter().collect();
            sort_nodes(&mut sorted);
            if args.quiet {
                return Ok(sorted.iter().map(|n| format!("{}\n", n.id)).collect());
            }
            match Format::parse(args.format.as_deref())? {
                Format::Default => Ok(node_table(self_id, &nodes)),
                Format::Lines(t) => sorted
                    .iter()
                    .map(|n| Ok(t.render(&ls_row(self_id, n))? + "\n"))
                    .collect(),
                Format::Table(t) => {
                    let mut text = t.render(&ls_header())? + "\n";
                    for n in sorted {
                        text += &t.render(&ls_row(self_id, n))?;
                        text.push('\n');
                    }
                    Ok(align_tabs(&text))
                }
            }
        }
        (NodeCommand::Inspect(args), Reply::Nodes { self_id, nodes, .. }) => {
            match args.format.as_deref() {
                None | Some("") | Some("json") => {}
                Some(f) => {
                    let t = Template::parse(&unescape(f))?;
                    return inspect_values(nodes)
                        .iter()
                        .map(|v| Ok(t.render(v)? + "\n"))
                        .collect();
                }
            }
            Ok(if args.pretty {
                nodes
                    .iter()
                    .map(|n| inspect_pretty(n, n.id == *self_id))
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                format!("{}\n", inspect_json(nodes))
            })
        }
        (NodeCommand::Rm(_) | NodeCommand::Update(_), Reply::NodesChanged { nodes }) => {
            Ok(nodes.iter().map(|n| format!("{n}\n")).collect())
        }
        (NodeCommand::Promote(_), Reply::NodesChanged { nodes }) => Ok(nodes
            .iter()
            .map(|n| format!("Node {n} promoted to a manager in the swarm.\n"))
            .collect()),
        (NodeCommand::Demote(_), Reply::NodesChanged { nodes }) => Ok(nodes
            .iter()
            .map(|n| format!("Manager {n} demoted in the swarm.\n"))
            .collect()),
        (_, other) => Err(unexpected(other)),
    }
}

/// Warnings that come with a reply (to print on stderr).
pub fn warnings(reply: &Reply) -> &[String] {
    match reply {
        Reply::Nodes { warnings, .. } | Reply::SwarmJoin { warnings, .. } => warnings,
        _ => &[],
    }
}

fn unexpected(reply: &Reply) -> String {
    let kind = serde_json::to_value(reply)
        .ok()
        .and_then(|v| v.get("reply").and_then(|r| r.as_str()).map(str::to_owned))
        .unwrap_or_default();
    format!("the agent answered with an unexpected reply ({kind}); is the CLI the same version as the agent?")
}

/// Docker's order: by hostname, then ID.
fn sort_nodes(nodes: &mut [&NodeView]) {
    nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
}

pub fn status_title(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Ready => "Ready",
        NodeStatus::Down => "Down",
        NodeStatus::Unknown => "Unknown",
    }
}

pub fn availability_title(availability: Availability) -> &'static str {
    match availability {
        Availability::Active => "Active",
        Availability::Pause => "Pause",
        Availability::Drain => "Drain",
    }
}

/// The `node ls` table: Docker's columns and layout (tabwriter with minimum width 10
/// and padding 3), `*` after the current node's ID, sorted by hostname.
pub fn node_table(self_id: &str, nodes: &[NodeView]) -> String {
    let mut sorted: Vec<&NodeView> = nodes.iter().collect();
    sort_nodes(&mut sorted);
    let mut rows: Vec<[String; 6]> = vec![[
        "ID".into(),
        "HOSTNAME".into(),
        "STATUS".into(),
        "AVAILABILITY".into(),
        "MANAGER STATUS".into(),
        "ENGINE VERSION".into(),
    ]];
    for n in sorted {
        let id = if n.id == self_id {
            format!("{} *", n.id)
        } else {
            n.id.clone()
        };
        rows.push([
            id,
            n.hostname.clone(),
            status_title(n.status).into(),
            availability_title(n.availability).into(),
            n.manager_status
                .map(|m| m.title().to_owned())
                .unwrap_or_default(),
            n.engine_version.clone(),
        ]);
    }
    table(&rows)
}

/// Left-aligned columns as Go's tabwriter lays them out for the docker CLI
/// (`NewWriter(out, 10, 1, 3, ' ', 0)`): each column as wide as its widest cell plus 3,
/// at least 10; the last column is not padded.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.to_vec()).collect();
    align(&rows)
}

/// [`table`] for rows of any length: every cell but a row's last is padded to its
/// column's width.
pub fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            widths[i] = widths[i].max((cell.chars().count() + 3).max(10));
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Text whose lines hold tab-separated cells, laid out as [`align`] does (what the
/// docker CLI's tabwriter does to `--format 'table ...'` output).
pub fn align_tabs(text: &str) -> String {
    let rows: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    align(&rows)
}

/// Labels as Docker's list formatters print `.Labels`: `KEY=VALUE` joined by commas.
pub fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// An ID as the tables show it: its first 12 characters.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// One `node ls` row as `--format` sees it: the fields of Docker's node formatter.
pub fn ls_row(self_id: &str, n: &NodeView) -> serde_json::Value {
    json!({
        "Availability": availability_title(n.availability),
        "EngineVersion": n.engine_version,
        "Hostname": n.hostname,
        "ID": n.id,
        "ManagerStatus": n.manager_status.map(|m| m.title()).unwrap_or_default(),
        "Self": n.id == self_id,
        "Status": status_title(n.status),
    })
}

/// The `node ls --format 'table ...'` header: Docker's column titles (none for Self).
fn ls_header() -> serde_json::Value {
    json!({
        "Availability": "AVAILABILITY",
        "EngineVersion": "ENGINE VERSION",
        "Hostname": "HOSTNAME",
        "ID": "ID",
        "ManagerStatus": "MANAGER STATUS",
        "Self": "",
        "Status": "STATUS",
    })
}

/// The IP part of an ADDR:PORT (the whole text if it has no port).
fn host_of(addr: &str) -> &str {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(_) => addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(addr),
        Err(_) => addr,
    }
}

/// `node inspect`: a JSON array shaped like Docker's (ID, Version, Spec, Description,
/// Status, ManagerStatus).
pub fn inspect_json(nodes: &[NodeView]) -> String {
    serde_json::to_string_pretty(&inspect_values(nodes)).unwrap_or_else(|_| "[]".into())
}

/// The objects of [`inspect_json`]'s array (what `node inspect --format` sees).
pub fn inspect_values(nodes: &[NodeView]) -> Vec<serde_json::Value> {
    nodes
        .iter()
        .map(|n| {
            let mut v = json!({
                "ID": n.id,
                "Version": { "Index": n.version },
                "Spec": {
                    "Labels": n.labels,
                    "Role": n.role.as_str(),
                    "Availability": n.availability,
                },
                "Description": {
                    "Hostname": n.hostname,
                    "Resources": {
                        "NanoCPUs": n.resources.nano_cpus,
                        "MemoryBytes": n.resources.memory_bytes,
                    },
                    "Engine": { "EngineVersion": n.engine_version },
                },
                "Status": {
                    "State": match n.status {
                        NodeStatus::Ready => "ready",
                        NodeStatus::Down => "down",
                        NodeStatus::Unknown => "unknown",
                    },
                    "Addr": host_of(&n.addr),
                },
            });
            if let Some(m) = n.manager_status {
                v["ManagerStatus"] = json!({
                    "Leader": m == crate::api::ManagerStatus::Leader,
                    "Reachability": match m {
                        crate::api::ManagerStatus::Unreachable => "unreachable",
                        _ => "reachable",
                    },
                    "Addr": n.addr,
                });
            }
            v
        })
        .collect()
}

/// `node inspect --pretty`, Docker's layout.
pub fn inspect_pretty(n: &NodeView, is_self: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "ID:\t\t\t{}{}", n.id, if is_self { " *" } else { "" });
    if !n.labels.is_empty() {
        let _ = writeln!(out, "Labels:");
        for (k, v) in &n.labels {
            let _ = writeln!(out, " - {k}={v}");
        }
    }
    let _ = writeln!(out, "Hostname:\t\t{}", n.hostname);
    let _ = writeln!(out, "Status:");
    let _ = writeln!(out, " State:\t\t\t{}", status_title(n.status));
    let _ = writeln!(
        out,
        " Availability:\t\t{}",
        availability_title(n.availability)
    );
    let _ = writeln!(out, " Address:\t\t{}", host_of(&n.addr));
    if n.role == NodeRole::Manager {
        let _ = writeln!(out, "Manager Status:");
        let _ = writeln!(out, " Address:\t\t{}", n.addr);
        let (raft, leader) = match n.manager_status {
            Some(crate::api::ManagerStatus::Leader) => ("Reachable", "Yes"),
            Some(crate::api::ManagerStatus::Reachable) => ("Reachable", "No"),
            _ => ("Unreachable", "No"),
        };
        let _ = writeln!(out, " Raft Status:\t\t{raft}");
        let _ = writeln!(out, " Leader:\t\t{leader}");
    }
    let _ = writeln!(out, "Resources:");
    let _ = writeln!(
        out,
        " CPUs:\t\t\t{}",
        n.resources.nano_cpus / shoal_cluster::store::NANO_CPUS_PER_CPU as i64
    );
    let _ = writeln!(
        out,
        " Memory:\t\t{}",
        human_memory(n.resources.memory_bytes)
    );
    let _ = writeln!(out, "Engine Version:\t\t{}", n.engine_version);
    out
}

/// Bytes as `docker node inspect --pretty` shows memory: the largest binary unit, with
/// up to 4 significant digits (`1.944GiB`, `512MiB`).
fn human_memory(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes.max(0) as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.4}");
    let digits = text.split('.').next().map_or(0, str::len);
    let decimals = 4usize.saturating_sub(digits);
    let mut text = format!("{value:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", UNITS[unit])
}
