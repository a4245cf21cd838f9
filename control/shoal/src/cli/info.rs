//! `shoal info`: the Swarm part of `docker info` (the seeds' `docker info | grep Swarm`
//! habit), plus how this node's dataplane runs. `--format` renders a template over
//! Docker's field names (`{{.Swarm.LocalNodeState}}`, `{{.Swarm.NodeID}}`,
//! `{{.Swarm.ControlAvailable}}`, `{{json .Swarm}}`, ...).
use clap::Args;
use serde_json::{json, Value};

use super::{
    template::{Format, Template},
    ApiSocketArg, CliError, Output,
};
use crate::api::{client::Client, InfoView, Reply, Request};

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct InfoArgs {
    #[command(flatten)]
    pub socket: ApiSocketArg,
    /// Format the output with a Go-style template over Docker's info fields (e.g.
    /// '{{.Swarm.LocalNodeState}}', '{{json .Swarm}}'), or 'json'
    #[arg(long, short = 'f', value_name = "FORMAT")]
    pub format: Option<String>,
}

/// Runs `shoal info` against the agent.
pub fn run_info(args: &InfoArgs) -> Result<Output, CliError> {
    let format = Format::parse(args.format.as_deref()).map_err(CliError::Usage)?;
    let reply = Client::new(&args.socket.api_socket).call(&Request::Info)?;
    let Reply::Info(view) = reply else {
        return Err(CliError::Output(format!(
            "unexpected reply to info: {reply:?}"
        )));
    };
    let stdout = match format {
        Format::Default => text(&view),
        Format::Lines(t) | Format::Table(t) => render(&t, &view)?,
    };
    Ok(Output {
        stdout,
        warnings: Vec::new(),
    })
}

fn render(t: &Template, view: &InfoView) -> Result<String, CliError> {
    Ok(t.render(&docker_value(view)).map_err(CliError::Output)? + "\n")
}

/// Docker's lines for the Swarm part, then the dataplane's.
pub fn text(v: &InfoView) -> String {
    let mut out = format!("Swarm: {}\n", v.swarm);
    if let Some(id) = &v.node_id {
        out += &format!(" NodeID: {id}\n");
    }
    if let Some(e) = &v.error {
        out += &format!(" Error: {e}\n");
    }
    if v.swarm == "active" {
        out += &format!(" Is Manager: {}\n", v.is_manager);
    }
    if let Some(id) = &v.cluster_id {
        out += &format!(" ClusterID: {id}\n");
    }
    if let Some(n) = v.managers {
        out += &format!(" Managers: {n}\n");
    }
    if let Some(n) = v.nodes {
        out += &format!(" Nodes: {n}\n");
    }
    if let Some(p) = v.data_path_port {
        out += &format!(" Data Path Port: {p}\n");
    }
    if !v.default_addr_pools.is_empty() {
        let pools: Vec<String> = v.default_addr_pools.iter().map(|p| p.to_string()).collect();
        out += &format!(" Default Address Pool: {}\n", pools.join(" "));
    }
    if let Some(s) = v.subnet_size {
        out += &format!(" SubnetSize: {s}\n");
    }
    if let Some(a) = &v.node_addr {
        out += &format!(" Node Address: {a}\n");
    }
    if !v.manager_addrs.is_empty() {
        out += " Manager Addresses:\n";
        for a in &v.manager_addrs {
            out += &format!("  {a}\n");
        }
    }
    if let Some(d) = &v.dataplane {
        out += &format!("Dataplane: {d}\n");
    }
    if let Some(e) = &v.engine {
        out += &format!("Docker Engine: {e}\n");
    }
    out += &format!("Version: {}\n", v.version);
    out
}

/// The view under Docker's names (`docker info --format` templates work unchanged
/// for these fields).
pub fn docker_value(v: &InfoView) -> Value {
    let mut swarm = json!({
        "LocalNodeState": v.swarm,
        "NodeID": v.node_id.clone().unwrap_or_default(),
        "NodeAddr": v.node_addr.clone().unwrap_or_default(),
        "ControlAvailable": v.is_manager,
        "Error": v.error.clone().unwrap_or_default(),
        "RemoteManagers": v.manager_addrs.iter().map(|a| json!({"Addr": a})).collect::<Vec<_>>(),
    });
    if let Some(n) = v.managers {
        swarm["Managers"] = n.into();
    }
    if let Some(n) = v.nodes {
        swarm["Nodes"] = n.into();
    }
    if let Some(id) = &v.cluster_id {
        swarm["Cluster"] = json!({
            "ID": id,
            "DataPathPort": v.data_path_port.unwrap_or_default(),
            "DefaultAddrPool": v.default_addr_pools.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "SubnetSize": v.subnet_size.unwrap_or_default(),
        });
    }
    json!({
        "Swarm": swarm,
        "ServerVersion": v.version,
        "Dataplane": v.dataplane.clone().unwrap_or_default(),
        "Engine": v.engine.clone().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inactive_and_active_read_like_docker_info() {
        let inactive = InfoView {
            swarm: "inactive".into(),
            dataplane: Some("XDP native on eth0".into()),
            version: "0.1.0".into(),
            ..Default::default()
        };
        assert_eq!(
            text(&inactive),
            "Swarm: inactive\nDataplane: XDP native on eth0\nVersion: 0.1.0\n"
        );
        let active = InfoView {
            swarm: "active".into(),
            node_id: Some("n1".into()),
            is_manager: true,
            cluster_id: Some("c1".into()),
            managers: Some(1),
            nodes: Some(3),
            data_path_port: Some(4789),
            default_addr_pools: vec!["10.0.0.0/8".parse().unwrap()],
            subnet_size: Some(24),
            node_addr: Some("192.168.77.11".into()),
            manager_addrs: vec!["192.168.77.11:2377".into()],
            version: "0.1.0".into(),
            ..Default::default()
        };
        let t = text(&active);
        assert!(
            t.starts_with("Swarm: active\n NodeID: n1\n Is Manager: true\n"),
            "{t}"
        );
        assert!(
            t.contains(" Managers: 1\n Nodes: 3\n Data Path Port: 4789\n"),
            "{t}"
        );
        assert!(
            t.contains(" Default Address Pool: 10.0.0.0/8\n SubnetSize: 24\n"),
            "{t}"
        );
        assert!(
            t.contains(" Manager Addresses:\n  192.168.77.11:2377\n"),
            "{t}"
        );
        let one = |f: &str| {
            let Format::Lines(t) = Format::parse(Some(f)).unwrap() else {
                panic!("{f}")
            };
            render(&t, &active).unwrap()
        };
        assert_eq!(one("{{.Swarm.LocalNodeState}}"), "active\n");
        assert_eq!(
            one("{{.Swarm.ControlAvailable}} {{.Swarm.Nodes}}"),
            "true 3\n"
        );
        assert_eq!(one("{{.Swarm.Cluster.DataPathPort}}"), "4789\n");
    }
}
