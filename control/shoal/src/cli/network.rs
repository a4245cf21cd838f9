//! `shoal network ...`: Docker's forms and output.

use std::net::Ipv4Addr;

use clap::{Args, Subcommand};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use shoal_cluster::store::Network;

use super::{
    call,
    format::{align, align_tabs, labels_text, short},
    parse_label,
    template::{unescape, Format, Template},
    ApiSocketArg, CliError, Output,
};
use crate::api::{client::Client, Reply, Request};
use crate::filters;

/// `shoal network ...`
#[derive(Args, Debug, Clone, PartialEq)]
pub struct NetworkArgs {
    #[command(flatten)]
    pub socket: ApiSocketArg,
    #[command(subcommand)]
    pub command: NetworkCommand,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum NetworkCommand {
    /// Create an overlay network
    Create(NetworkCreateArgs),
    /// List networks
    #[command(visible_alias = "list")]
    Ls(NetworkLsArgs),
    /// Show networks in detail
    Inspect(NetworkInspectArgs),
    /// Remove networks (refused while a service uses one)
    #[command(visible_alias = "remove")]
    Rm(NetworkRmArgs),
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct NetworkCreateArgs {
    /// Driver (only overlay)
    #[arg(short, long, default_value = "overlay")]
    pub driver: String,
    /// Subnet in CIDR form [default: the next free one from the cluster's pools]
    #[arg(long)]
    pub subnet: Option<Ipv4Net>,
    /// Gateway address [default: the subnet's first address]
    #[arg(long)]
    pub gateway: Option<Ipv4Addr>,
    /// Let standalone containers attach
    #[arg(long)]
    pub attachable: bool,
    /// Driver option K=V (repeatable; `encrypted`: the network's traffic between nodes
    /// travels in WireGuard sessions)
    #[arg(short, long = "opt", value_name = "K=V", value_parser = parse_label)]
    pub opts: Vec<(String, String)>,
    /// Label K=V (repeatable)
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct NetworkLsArgs {
    /// Only print IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// `json`, `table TEMPLATE` or a Go template
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Filter (repeatable): driver=D, id=ID, label=KEY[=VALUE], name=NAME,
    /// scope=swarm|global|local, type=custom|builtin
    #[arg(short, long = "filter", value_name = "K=V")]
    pub filters: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct NetworkInspectArgs {
    /// `json` or a Go template such as '{{range .IPAM.Config}}...'
    #[arg(short, long, value_name = "FORMAT")]
    pub format: Option<String>,
    #[arg(value_name = "NETWORK", required = true)]
    pub networks: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct NetworkRmArgs {
    #[arg(value_name = "NETWORK", required = true)]
    pub networks: Vec<String>,
}

pub(crate) fn network_value(n: &Network) -> Value {
    let mut config = json!({});
    if let Some(s) = &n.subnet {
        config["Subnet"] = json!(s);
    }
    if let Some(g) = &n.gateway {
        config["Gateway"] = json!(g);
    }
    // Docker shows the driver's options (`encrypted` among them) beside the VNI.
    let mut options = serde_json::Map::new();
    for (k, v) in &n.options {
        options.insert(k.clone(), json!(v));
    }
    if n.encrypted {
        options.entry("encrypted").or_insert_with(|| json!(""));
    }
    options.insert(
        "com.docker.network.driver.overlay.vxlanid_list".into(),
        json!(n.vni.map(|v| v.to_string()).unwrap_or_default()),
    );
    json!({
        "Name": n.name,
        "Id": n.id,
        "Scope": "swarm",
        "Driver": n.driver,
        "IPAM": {"Driver": "default", "Config": [config]},
        "Internal": n.internal,
        "Attachable": n.attachable,
        "Ingress": n.ingress,
        "Options": options,
        "Labels": n.labels,
        "DriverOptions": n.options,
    })
}

/// One `network ls` row as `--format` sees it: the keys of Docker's network formatter
/// (all but `CreatedAt`, which shoal's store does not record).
fn ls_row(n: &Network) -> Value {
    json!({
        "ID": short(&n.id),
        "Name": n.name,
        "Driver": n.driver,
        "Scope": "swarm",
        "IPv4": "true",
        "IPv6": "false",
        "Internal": n.internal.to_string(),
        "Labels": labels_text(&n.labels),
    })
}

fn networks_output(command: &NetworkCommand, networks: &[Network]) -> Result<String, String> {
    match command {
        NetworkCommand::Ls(args) => {
            let filters = filters::from_args(&args.filters, filters::NETWORK_KEYS)?;
            let mut nets: Vec<&Network> = networks
                .iter()
                .filter(|n| filters::network_matches(n, &filters))
                .collect();
            nets.sort_by(|a, b| a.name.cmp(&b.name));
            if args.quiet {
                return Ok(nets.iter().map(|n| format!("{}\n", short(&n.id))).collect());
            }
            let row = |n: &Network| ls_row(n);
            match Format::parse(args.format.as_deref())? {
                Format::Default => {
                    let mut rows = vec![vec![
                        "NETWORK ID".to_string(),
                        "NAME".into(),
                        "DRIVER".into(),
                        "SCOPE".into(),
                    ]];
                    for n in nets {
                        rows.push(vec![
                            short(&n.id).to_string(),
                            n.name.clone(),
                            n.driver.clone(),
                            "swarm".into(),
                        ]);
                    }
                    Ok(align(&rows))
                }
                Format::Lines(t) => nets.iter().map(|n| Ok(t.render(&row(n))? + "\n")).collect(),
                Format::Table(t) => {
                    let mut text = t.render(&json!({"ID": "NETWORK ID", "Name": "NAME",
                        "Driver": "DRIVER", "Scope": "SCOPE"}))?
                        + "\n";
                    for n in nets {
                        text += &t.render(&row(n))?;
                        text.push('\n');
                    }
                    Ok(align_tabs(&text))
                }
            }
        }
        NetworkCommand::Inspect(args) => {
            let values: Vec<Value> = networks.iter().map(network_value).collect();
            match args.format.as_deref() {
                None | Some("") | Some("json") => Ok(format!(
                    "{}\n",
                    serde_json::to_string_pretty(&values).unwrap_or_default()
                )),
                Some(f) => {
                    let t = Template::parse(&unescape(f))?;
                    values.iter().map(|v| Ok(t.render(v)? + "\n")).collect()
                }
            }
        }
        _ => Err("unexpected reply".into()),
    }
}

/// Runs `shoal network ...` against the agent.
pub fn run_network(args: &NetworkArgs) -> Result<Output, CliError> {
    let client = Client::new(&args.socket.api_socket);
    let stdout = match &args.command {
        NetworkCommand::Create(a) => match call(
            &client,
            &Request::NetworkCreate {
                name: a.name.clone(),
                driver: Some(a.driver.clone()),
                subnet: a.subnet,
                gateway: a.gateway,
                attachable: a.attachable,
                options: a.opts.iter().cloned().collect(),
                labels: a.labels.iter().cloned().collect(),
            },
        )? {
            Reply::NetworkCreated { id } => format!("{id}\n"),
            _ => {
                return Err(CliError::Output(
                    "unexpected reply to network create".into(),
                ))
            }
        },
        NetworkCommand::Ls(a) => {
            Format::parse(a.format.as_deref()).map_err(CliError::Usage)?;
            filters::from_args(&a.filters, filters::NETWORK_KEYS).map_err(CliError::Usage)?;
            match call(&client, &Request::NetworkLs)? {
                Reply::Networks { networks } => {
                    networks_output(&args.command, &networks).map_err(CliError::Output)?
                }
                _ => return Err(CliError::Output("unexpected reply to network ls".into())),
            }
        }
        NetworkCommand::Inspect(a) => {
            if let Some(f) = a.format.as_deref().filter(|f| *f != "json") {
                Template::parse(&unescape(f)).map_err(CliError::Usage)?;
            }
            match call(
                &client,
                &Request::NetworkInspect {
                    networks: a.networks.clone(),
                },
            )? {
                Reply::Networks { networks } => {
                    networks_output(&args.command, &networks).map_err(CliError::Output)?
                }
                _ => {
                    return Err(CliError::Output(
                        "unexpected reply to network inspect".into(),
                    ))
                }
            }
        }
        NetworkCommand::Rm(a) => match call(
            &client,
            &Request::NetworkRm {
                networks: a.networks.clone(),
            },
        )? {
            Reply::NetworksChanged { networks } => {
                networks.iter().map(|n| format!("{n}\n")).collect()
            }
            _ => return Err(CliError::Output("unexpected reply to network rm".into())),
        },
    };
    Ok(Output {
        stdout,
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(id: &str, name: &str, labels: &[(&str, &str)]) -> Network {
        let labels: std::collections::BTreeMap<&str, &str> = labels.iter().copied().collect();
        serde_json::from_value(json!({"id": id, "name": name, "driver": "overlay",
            "labels": labels}))
        .expect("a network")
    }

    fn ls(format: &str, filters: &[&str]) -> Result<String, String> {
        let command = NetworkCommand::Ls(NetworkLsArgs {
            quiet: false,
            format: Some(format.to_owned()),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        });
        let networks = [
            net("aaa111", "ingress", &[]),
            net("bbb222", "web", &[("env", "prod")]),
        ];
        networks_output(&command, &networks)
    }

    #[test]
    fn ls_filters_and_json_lines_are_dockers() {
        assert_eq!(
            ls("json", &["label=env=prod"]).unwrap(),
            "{\"Driver\":\"overlay\",\"ID\":\"bbb222\",\"IPv4\":\"true\",\"IPv6\":\"false\",\
             \"Internal\":\"false\",\"Labels\":\"env=prod\",\"Name\":\"web\",\"Scope\":\"swarm\"}\n"
        );
        assert_eq!(ls("{{.Name}}", &["name=gre"]).unwrap(), "ingress\n");
        assert_eq!(ls("{{.Name}}", &["id=bbb"]).unwrap(), "web\n");
        assert_eq!(
            ls(
                "{{.Name}}",
                &["driver=overlay", "scope=swarm", "type=custom"]
            )
            .unwrap(),
            "ingress\nweb\n"
        );
        assert_eq!(ls("{{.Name}}", &["scope=local"]).unwrap(), "");
        assert_eq!(ls("{{.Name}}", &["driver=bridge"]).unwrap(), "");
        assert_eq!(
            ls("{{.Name}}", &["dangling=true"]).unwrap_err(),
            "invalid filter 'dangling'"
        );
    }
}
