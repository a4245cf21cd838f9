//! `shoal secret ...` and `shoal config ...`: Docker's forms and output. A secret's
//! data is read here (a file or stdin) and never shown again; a config's is shown by
//! `config inspect` (base64, as Docker's `Spec.Data`).

use std::io::Read as _;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use shoal_cluster::store::{DataObject, ObjectKind};

use super::{
    call,
    format::{align, align_tabs, labels_text, short},
    parse_label,
    service::{inspect::iso, views::human_duration},
    template::{unescape, Format, Template},
    ApiSocketArg, CliError, Output,
};
use crate::api::{client::Client, Reply, Request, Secret};

/// `shoal secret ...` / `shoal config ...`
#[derive(Args, Debug, Clone, PartialEq)]
pub struct DataObjectArgs {
    #[command(flatten)]
    pub socket: ApiSocketArg,
    #[command(subcommand)]
    pub command: DataObjectCommand,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum DataObjectCommand {
    /// Create one from a file or stdin (`-`)
    Create(CreateArgs),
    /// List them
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show them in detail (never a secret's data)
    Inspect(InspectArgs),
    /// Remove them (refused while a service uses one)
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct CreateArgs {
    /// Label K=V (repeatable)
    #[arg(short = 'l', long = "label", value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The file holding the data, or `-` for stdin
    #[arg(value_name = "FILE|-")]
    pub file: String,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct LsArgs {
    /// Only print IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// `json`, `table TEMPLATE` or a Go template
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct InspectArgs {
    /// `json` or a Go template such as '{{.Spec.Name}}'
    #[arg(short, long, value_name = "FORMAT")]
    pub format: Option<String>,
    #[arg(value_name = "NAME|ID", required = true)]
    pub objects: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct RmArgs {
    #[arg(value_name = "NAME|ID", required = true)]
    pub objects: Vec<String>,
}

/// One secret or config in Docker's JSON layout (`Spec.Data` for a config only).
pub fn object_value(kind: ObjectKind, o: &DataObject) -> Value {
    let mut spec = json!({"Name": o.name, "Labels": o.labels});
    if kind == ObjectKind::Config {
        spec["Data"] = json!(STANDARD.encode(&o.data));
    }
    json!({
        "ID": o.id,
        "Version": {"Index": o.version},
        "CreatedAt": iso(o.created_ms),
        "UpdatedAt": iso(o.updated_ms),
        "Spec": spec,
    })
}

/// Reads the data `file` names (`-`: stdin).
fn read_data(file: &str) -> Result<Vec<u8>, CliError> {
    let mut data = Vec::new();
    if file == "-" {
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|e| CliError::Usage(format!("reading stdin: {e}")))?;
    } else {
        data = std::fs::read(file).map_err(|e| CliError::Usage(format!("reading {file}: {e}")))?;
    }
    Ok(data)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ls_output(kind: ObjectKind, args: &LsArgs, objects: &[DataObject]) -> Result<String, String> {
    let mut objects: Vec<&DataObject> = objects.iter().collect();
    objects.sort_by(|a, b| a.name.cmp(&b.name));
    if args.quiet {
        return Ok(objects.iter().map(|o| format!("{}\n", o.id)).collect());
    }
    let now = now_ms();
    let ago = |ms: u64| format!("{} ago", human_duration(now.saturating_sub(ms)));
    let secret = kind == ObjectKind::Secret;
    // The keys of Docker's secret and config formatters (only secrets have a driver).
    let row = |o: &DataObject| {
        let mut v = json!({"ID": o.id, "Name": o.name, "CreatedAt": ago(o.created_ms),
            "UpdatedAt": ago(o.updated_ms), "Labels": labels_text(&o.labels)});
        if secret {
            v["Driver"] = json!("");
        }
        v
    };
    match Format::parse(args.format.as_deref())? {
        Format::Default => {
            let mut header = vec!["ID".to_string(), "NAME".into()];
            if secret {
                header.push("DRIVER".into());
            }
            header.extend(["CREATED".into(), "UPDATED".into()]);
            let mut rows = vec![header];
            for o in objects {
                let mut r = vec![short(&o.id).to_string(), o.name.clone()];
                if secret {
                    r.push(String::new());
                }
                r.extend([ago(o.created_ms), ago(o.updated_ms)]);
                rows.push(r);
            }
            Ok(align(&rows))
        }
        Format::Lines(t) => objects
            .iter()
            .map(|o| Ok(t.render(&row(o))? + "\n"))
            .collect(),
        Format::Table(t) => {
            let mut text = t.render(&json!({"ID": "ID", "Name": "NAME", "Driver": "DRIVER",
                "CreatedAt": "CREATED", "UpdatedAt": "UPDATED", "Labels": "LABELS"}))?
                + "\n";
            for o in objects {
                text += &t.render(&row(o))?;
                text.push('\n');
            }
            Ok(align_tabs(&text))
        }
    }
}

fn inspect_output(
    kind: ObjectKind,
    format: Option<&str>,
    objects: &[DataObject],
) -> Result<String, String> {
    let values: Vec<Value> = objects.iter().map(|o| object_value(kind, o)).collect();
    match format {
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

/// Runs `shoal secret ...` (`kind` Secret) or `shoal config ...` (Config).
pub fn run_data_object(kind: ObjectKind, args: &DataObjectArgs) -> Result<Output, CliError> {
    let client = Client::new(&args.socket.api_socket);
    let unexpected = |what: &str| CliError::Output(format!("unexpected reply to {kind} {what}"));
    let stdout = match &args.command {
        DataObjectCommand::Create(a) => {
            let data = read_data(&a.file)?;
            match call(
                &client,
                &Request::ObjectCreate {
                    kind,
                    name: a.name.clone(),
                    labels: a.labels.iter().cloned().collect(),
                    data_base64: Secret::new(STANDARD.encode(&data)),
                },
            )? {
                Reply::ObjectCreated { id } => format!("{id}\n"),
                _ => return Err(unexpected("create")),
            }
        }
        DataObjectCommand::Ls(a) => {
            Format::parse(a.format.as_deref()).map_err(CliError::Usage)?;
            match call(
                &client,
                &Request::ObjectState {
                    kind,
                    objects: Vec::new(),
                },
            )? {
                Reply::Objects { objects } => {
                    ls_output(kind, a, &objects).map_err(CliError::Output)?
                }
                _ => return Err(unexpected("ls")),
            }
        }
        DataObjectCommand::Inspect(a) => {
            if let Some(f) = a.format.as_deref().filter(|f| *f != "json") {
                Template::parse(&unescape(f)).map_err(CliError::Usage)?;
            }
            match call(
                &client,
                &Request::ObjectState {
                    kind,
                    objects: a.objects.clone(),
                },
            )? {
                Reply::Objects { objects } => {
                    inspect_output(kind, a.format.as_deref(), &objects).map_err(CliError::Output)?
                }
                _ => return Err(unexpected("inspect")),
            }
        }
        DataObjectCommand::Rm(a) => match call(
            &client,
            &Request::ObjectRm {
                kind,
                objects: a.objects.clone(),
            },
        )? {
            Reply::ObjectsChanged { objects } => objects.iter().map(|o| format!("{o}\n")).collect(),
            _ => return Err(unexpected("rm")),
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

    fn object(data: &[u8]) -> DataObject {
        DataObject {
            id: "abc123".into(),
            name: "registry_conf".into(),
            labels: [("env".to_string(), "lab".to_string())].into(),
            data: data.to_vec(),
            created_ms: 1_700_000_000_000,
            updated_ms: 1_700_000_000_000,
            version: 7,
        }
    }

    #[test]
    fn inspect_has_dockers_layout_and_a_configs_data_in_base64() {
        let v = object_value(ObjectKind::Config, &object(b"version: 0.1\n"));
        assert_eq!(v["ID"], "abc123");
        assert_eq!(v["Version"]["Index"], 7);
        assert_eq!(v["CreatedAt"], "2023-11-14T22:13:20.000000000Z");
        assert_eq!(v["Spec"]["Name"], "registry_conf");
        assert_eq!(v["Spec"]["Labels"]["env"], "lab");
        assert_eq!(v["Spec"]["Data"], "dmVyc2lvbjogMC4xCg==");
    }

    #[test]
    fn ls_json_lines_have_dockers_keys() {
        let args = LsArgs {
            quiet: false,
            format: Some("json".into()),
        };
        let line = |kind| {
            let out = ls_output(kind, &args, &[object(b"x")]).unwrap();
            let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
            assert_eq!(out.lines().count(), 1);
            v
        };
        let secret = line(ObjectKind::Secret);
        let keys: Vec<&String> = secret.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["CreatedAt", "Driver", "ID", "Labels", "Name", "UpdatedAt"]
        );
        assert_eq!(secret["Labels"], "env=lab");
        assert_eq!(secret["Name"], "registry_conf");
        // A config has no driver.
        assert!(line(ObjectKind::Config).get("Driver").is_none());
    }

    #[test]
    fn a_secrets_inspect_has_no_data() {
        let v = object_value(ObjectKind::Secret, &object(b"hunter2"));
        assert!(v["Spec"].get("Data").is_none());
        assert!(!v.to_string().contains("aHVudGVyMg"));
    }
}
