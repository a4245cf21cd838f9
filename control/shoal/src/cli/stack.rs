//! `shoal stack deploy|ls|services|ps|rm`: a stack is the services (and their networks)
//! of compose files, named `<stack>_<name>` and labelled
//! `com.docker.stack.namespace=<stack>` ([`compose`] reads and converts the files).
//!
//! `deploy` reads, merges and converts every file (and reads every secret's and config's
//! file) before its first change, so a file with a mistake deploys nothing; a missing
//! external secret or config, or a stack's own one whose file changed (Swarm's are
//! immutable), stops it before its first change too. Then it creates the networks, the
//! secrets and configs (`<stack>_<name>`, labelled with the stack), and the services. A
//! service already deployed is updated (the rolling update of `service update`) only
//! when its converted spec differs; `--prune` removes the stack's services no longer in
//! the files. `rm` removes the services, then the stack's own secrets and configs (once
//! the tasks using them have stopped), then the networks.

pub mod compose;
pub mod extras;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use clap::{Args, Subcommand};
use serde_json::Value;
use shoal_cluster::store::{DataObject, ObjectKind, Service, ServiceSpec};

use super::{
    call,
    format::align_tabs,
    registry_auth::credentials_for,
    service::{state, views::service_ls, views::task_list, ServiceLsArgs, TaskListArgs},
    template::Format,
    ApiSocketArg, CliError, Output,
};
use crate::{
    api::{client::Client, Reply, Request, Secret},
    filters,
};
use compose::NAMESPACE_LABEL;
use extras::StackObject;

/// `shoal stack ...`
#[derive(Args, Debug, Clone, PartialEq)]
pub struct StackArgs {
    #[command(flatten)]
    pub socket: ApiSocketArg,
    #[command(subcommand)]
    pub command: StackCommand,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum StackCommand {
    /// Deploy a new stack or update an existing one from compose files
    #[command(alias = "up")]
    Deploy(DeployArgs),
    /// List stacks
    Ls(StackLsArgs),
    /// List the services of a stack
    Services(StackServicesArgs),
    /// List the tasks of a stack
    Ps(StackPsArgs),
    /// Remove stacks (services, then networks)
    #[command(alias = "remove", alias = "down")]
    Rm(StackRmArgs),
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct StackLsArgs {
    /// Format the output: `json`, `table TEMPLATE` or a Go-style template over
    /// `.Name` and `.Services`
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct DeployArgs {
    /// Compose file (repeatable: later files are merged over earlier ones)
    #[arg(
        short = 'c',
        long = "compose-file",
        value_name = "FILE",
        required = true
    )]
    pub files: Vec<PathBuf>,
    /// Remove the stack's services that are no longer in the files
    #[arg(long)]
    pub prune: bool,
    /// Send the registry credentials of the local docker login to the nodes
    #[arg(long)]
    pub with_registry_auth: bool,
    /// Pin images to their digest: always (default) or never
    #[arg(long, value_name = "always|never", default_value = "always")]
    pub resolve_image: String,
    /// Stack name
    pub name: String,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct StackServicesArgs {
    #[command(flatten)]
    pub ls: ServiceLsArgs,
    pub name: String,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct StackPsArgs {
    #[command(flatten)]
    pub tasks: TaskListArgs,
    pub name: String,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct StackRmArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

fn stack_of(s: &Service) -> Option<&str> {
    s.spec.labels.get(NAMESPACE_LABEL).map(String::as_str)
}

/// The service names of stack `name`, in name order.
/// The IDs of stack `name`'s services; none is an error, as Docker says it.
fn stack_service_ids(client: &Client, name: &str) -> Result<Vec<String>, CliError> {
    let ids: Vec<String> = stack_services(client, name)?
        .into_iter()
        .map(|s| s.id)
        .collect();
    if ids.is_empty() {
        return Err(CliError::Output(format!("Nothing found in stack: {name}")));
    }
    Ok(ids)
}

fn stack_services(client: &Client, name: &str) -> Result<Vec<Service>, CliError> {
    let mut list: Vec<Service> = state(client, Vec::new())?
        .services
        .into_iter()
        .filter(|s| stack_of(s) == Some(name))
        .collect();
    list.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    Ok(list)
}

/// Names -> IDs of what the managers hold by ID: networks, secrets, configs.
#[derive(Debug, Default)]
pub struct Ids {
    pub networks: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    pub configs: BTreeMap<String, String>,
}

/// Whether `deployed` already is `wanted`: the managers keep networks, secrets and
/// configs by ID (`ids`) and pin a tag to its digest, so an image written without a
/// digest matches the deployed one with it.
pub fn unchanged(deployed: &ServiceSpec, wanted: &ServiceSpec, ids: &Ids) -> bool {
    let id = |n: &String| ids.networks.get(n).cloned().unwrap_or_else(|| n.clone());
    let mut w = wanted.clone();
    w.networks = w.networks.iter().map(id).collect();
    w.network_aliases = w
        .network_aliases
        .iter()
        .map(|(n, a)| (id(n), a.clone()))
        .collect();
    for (refs, by_name) in [
        (&mut w.secrets, &ids.secrets),
        (&mut w.configs, &ids.configs),
    ] {
        for r in refs.iter_mut().filter(|r| r.id.is_empty()) {
            r.id = by_name.get(&r.name).cloned().unwrap_or_default();
        }
    }
    let wanted = &w;
    let mut d = deployed.clone();
    if !wanted.image.contains('@') {
        if let Some((tag, _digest)) = d.image.split_once('@') {
            d.image = tag.to_string();
        }
    }
    &d == wanted
}

/// Top-level keys this version of `stack deploy` cannot carry out: refused before any
/// change. Networks are the stack's own overlays (`driver: overlay` or nothing), plain or
/// encrypted (`driver_opts: {encrypted: ""}`).
fn check_top_level(file: &Path, v: &Value) -> Result<(), String> {
    if let Some(Value::Object(nets)) = v.get("networks") {
        for (name, opts) in nets {
            let ok = match opts {
                Value::Null => true,
                Value::Object(o) => o.iter().all(|(k, v)| match k.as_str() {
                    "driver" => v.as_str() == Some("overlay"),
                    "driver_opts" => encrypted_opts(v).is_some(),
                    _ => false,
                }),
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "{}: network {name}: only `driver: overlay` and `driver_opts: {{encrypted: \"\"}}` are supported by stack deploy yet",
                    file.display()
                ));
            }
        }
    }
    Ok(())
}

/// A network's `driver_opts` when they are only `encrypted` (empty, null or true):
/// the options to create it with.
fn encrypted_opts(v: &Value) -> Option<BTreeMap<String, String>> {
    let Value::Object(o) = v else {
        return None;
    };
    let mut out = BTreeMap::new();
    for (k, v) in o {
        let value = match v {
            Value::Null => String::new(),
            Value::String(s) if s.is_empty() || s == "true" => s.clone(),
            Value::Bool(true) => "true".into(),
            _ => return None,
        };
        if k != "encrypted" {
            return None;
        }
        out.insert(k.clone(), value);
    }
    Some(out)
}

/// The driver options of the stack's networks, by their full name (`<stack>_<name>`).
fn network_options(stack: &str, v: &Value) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if let Some(Value::Object(nets)) = v.get("networks") {
        for (name, decl) in nets {
            if let Some(opts) = decl.get("driver_opts").and_then(encrypted_opts) {
                out.insert(format!("{stack}_{name}"), opts);
            }
        }
    }
    out
}

/// The secrets (`kind` Secret) or configs the managers hold (a secret without its data).
fn data_objects(client: &Client, kind: ObjectKind) -> Result<Vec<DataObject>, CliError> {
    match call(
        client,
        &Request::ObjectState {
            kind,
            objects: Vec::new(),
        },
    )? {
        Reply::Objects { objects } => Ok(objects),
        _ => Err(CliError::Output(format!("unexpected reply to {kind} ls"))),
    }
}

/// The stack's secrets and configs, before any change: an external one must exist; one
/// of the stack's own that exists keeps its data (Swarm's objects are immutable: a
/// changed file is refused, naming it, as `docker stack deploy` does) and gets the
/// stack's labels. Returns the ones to create.
fn check_objects<'a>(
    client: &Client,
    objects: &'a [StackObject],
) -> Result<Vec<&'a StackObject>, CliError> {
    let secrets = data_objects(client, ObjectKind::Secret)?;
    let configs = data_objects(client, ObjectKind::Config)?;
    let find = |o: &StackObject| {
        let existing = match o.kind {
            ObjectKind::Config => &configs,
            _ => &secrets,
        };
        existing.iter().find(|e| e.name == o.name).cloned()
    };
    for o in objects.iter().filter(|o| o.external) {
        if find(o).is_none() {
            return Err(CliError::Usage(format!(
                "{kind} {key}: external {kind} {name} not found (create it with `shoal {kind} create {name} FILE`)",
                kind = o.kind,
                key = o.key,
                name = o.name
            )));
        }
    }
    let mut create = Vec::new();
    for o in objects.iter().filter(|o| !o.external) {
        match find(o) {
            None => create.push(o),
            Some(e) => {
                call(
                    client,
                    &Request::ObjectSetLabels {
                        kind: o.kind,
                        object: e.id.clone(),
                        version: e.version,
                        labels: o.labels.clone(),
                        data_base64: Some(Secret::new(STANDARD.encode(&o.data))),
                    },
                )
                .map_err(|e| {
                    CliError::Output(format!("failed to update {} {}: {e}", o.kind, o.name))
                })?;
            }
        }
    }
    Ok(create)
}

/// Network name -> ID.
fn network_ids(client: &Client) -> Result<BTreeMap<String, String>, CliError> {
    match call(client, &Request::NetworkLs)? {
        Reply::Networks { networks } => Ok(networks.into_iter().map(|n| (n.name, n.id)).collect()),
        _ => Err(CliError::Output("unexpected reply to network ls".into())),
    }
}

fn deploy(client: &Client, a: &DeployArgs, warnings: &mut Vec<String>) -> Result<String, CliError> {
    let no_resolve_image = match a.resolve_image.as_str() {
        "always" => false,
        "never" => true,
        other => {
            return Err(CliError::Usage(format!(
                "--resolve-image {other:?}: only always and never are supported"
            )))
        }
    };
    let mut values = Vec::new();
    for f in &a.files {
        let v = compose::load(f).map_err(CliError::Usage)?;
        check_top_level(f, &v).map_err(CliError::Usage)?;
        values.push(v);
    }
    // Later files' options win, as merging does.
    let options: BTreeMap<String, BTreeMap<String, String>> = values
        .iter()
        .flat_map(|v| network_options(&a.name, v))
        .collect();
    let merged = compose::merge(values).map_err(CliError::Usage)?;
    let dir = a
        .files
        .first()
        .and_then(|f| f.parent())
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stack = compose::convert(&a.name, &merged, dir).map_err(CliError::Usage)?;
    let converted = &stack.services;
    let mut registry_auth = BTreeMap::new();
    if a.with_registry_auth {
        for c in converted {
            let creds = credentials_for(&c.spec.image).map_err(CliError::Usage)?;
            registry_auth.insert(c.spec.name.clone(), Box::new(creds));
        }
    }
    for c in converted {
        warnings.extend(c.warnings.iter().cloned());
    }

    let deployed = stack_services(client, &a.name)?;
    // Secrets and configs first: a missing external one or a changed file stops the
    // deploy before its first change.
    let new_objects = check_objects(client, &stack.objects)?;
    let existing_networks: BTreeSet<String> = network_ids(client)?.into_keys().collect();
    let wanted_networks: BTreeSet<String> = converted
        .iter()
        .flat_map(|c| c.spec.networks.iter().cloned())
        .collect();
    let mut out = String::new();
    for net in wanted_networks.difference(&existing_networks) {
        out.push_str(&format!("Creating network {net}\n"));
        let reply = call(
            client,
            &Request::NetworkCreate {
                name: net.clone(),
                driver: Some("overlay".into()),
                subnet: None,
                gateway: None,
                attachable: false,
                options: options.get(net).cloned().unwrap_or_default(),
                labels: BTreeMap::from([(NAMESPACE_LABEL.to_string(), a.name.clone())]),
            },
        )?;
        if !matches!(reply, Reply::NetworkCreated { .. }) {
            return Err(CliError::Output(
                "unexpected reply to network create".into(),
            ));
        }
    }
    for o in new_objects {
        out.push_str(&format!("Creating {} {}\n", o.kind, o.name));
        let reply = call(
            client,
            &Request::ObjectCreate {
                kind: o.kind,
                name: o.name.clone(),
                labels: o.labels.clone(),
                data_base64: Secret::new(STANDARD.encode(&o.data)),
            },
        )?;
        if !matches!(reply, Reply::ObjectCreated { .. }) {
            return Err(CliError::Output(format!(
                "unexpected reply to {} create",
                o.kind
            )));
        }
    }
    let by_name = |kind| -> Result<BTreeMap<String, String>, CliError> {
        Ok(data_objects(client, kind)?
            .into_iter()
            .map(|o| (o.name, o.id))
            .collect())
    };
    let ids = Ids {
        networks: network_ids(client)?,
        secrets: by_name(ObjectKind::Secret)?,
        configs: by_name(ObjectKind::Config)?,
    };
    for c in converted {
        let name = &c.spec.name;
        let auth = registry_auth.get(name).cloned();
        match deployed.iter().find(|s| &s.spec.name == name) {
            Some(s) if unchanged(&s.spec, &c.spec, &ids) => {}
            Some(s) => {
                out.push_str(&format!("Updating service {name} (id: {})\n", s.id));
                let reply = call(
                    client,
                    &Request::ServiceSetSpec {
                        service: s.id.clone(),
                        spec: Box::new(c.spec.clone()),
                        version: s.version,
                        force_update: s.force_update,
                        keep_shoal_fields: false,
                        no_resolve_image,
                        registry_auth: auth,
                    },
                )?;
                let Reply::ServicesChanged { warnings: w, .. } = reply else {
                    return Err(CliError::Output(
                        "unexpected reply to service update".into(),
                    ));
                };
                warnings.extend(w);
            }
            None => {
                out.push_str(&format!("Creating service {name}\n"));
                let reply = call(
                    client,
                    &Request::ServiceCreate {
                        spec: Box::new(c.spec.clone()),
                        no_resolve_image,
                        registry_auth: auth,
                    },
                )?;
                let Reply::ServiceCreated { warnings: w, .. } = reply else {
                    return Err(CliError::Output(
                        "unexpected reply to service create".into(),
                    ));
                };
                warnings.extend(w);
            }
        }
    }
    if a.prune {
        let gone: Vec<String> = deployed
            .iter()
            .filter(|s| !converted.iter().any(|c| c.spec.name == s.spec.name))
            .map(|s| s.spec.name.clone())
            .collect();
        if !gone.is_empty() {
            for g in &gone {
                out.push_str(&format!("Removing service {g}\n"));
            }
            call(client, &Request::ServiceRm { services: gone })?;
        }
    }
    Ok(out)
}

fn rm(client: &Client, names: &[String]) -> Result<String, CliError> {
    let mut out = String::new();
    for name in names {
        let services = stack_services(client, name)?;
        let networks: Vec<String> = match call(client, &Request::NetworkLs)? {
            Reply::Networks { networks } => networks
                .into_iter()
                .filter(|n| n.labels.get(NAMESPACE_LABEL) == Some(name))
                .map(|n| n.name)
                .collect(),
            _ => return Err(CliError::Output("unexpected reply to network ls".into())),
        };
        let mut objects = Vec::new();
        for kind in [ObjectKind::Secret, ObjectKind::Config] {
            for o in data_objects(client, kind)? {
                if o.labels.get(NAMESPACE_LABEL) == Some(name) {
                    objects.push((kind, o.name));
                }
            }
        }
        if services.is_empty() && networks.is_empty() && objects.is_empty() {
            return Err(CliError::Output(format!("Nothing found in stack: {name}")));
        }
        if !services.is_empty() {
            for s in &services {
                out.push_str(&format!("Removing service {}\n", s.spec.name));
            }
            call(
                client,
                &Request::ServiceRm {
                    services: services.iter().map(|s| s.id.clone()).collect(),
                },
            )?;
        }
        for (kind, o) in objects {
            out.push_str(&format!("Removing {kind} {o}\n"));
            // A task of a service gone is named by the service's ID.
            let removed: Vec<String> = services
                .iter()
                .flat_map(|s| [s.spec.name.clone(), s.id.clone()])
                .collect();
            remove_object(client, kind, &o, &removed)?;
        }
        if !networks.is_empty() {
            for n in &networks {
                out.push_str(&format!("Removing network {n}\n"));
            }
            call(client, &Request::NetworkRm { networks })?;
        }
    }
    Ok(out)
}

/// How long `stack rm` waits for the stack's tasks to stop using a secret or config.
const OBJECT_RM_WAIT: Duration = Duration::from_secs(60);

/// Removes a secret or config of a removed stack: its services (`removed`: names and
/// IDs) are gone, but their tasks keep it in use until they stop, so a refusal naming
/// one of them is retried a while (one naming another service is final).
fn remove_object(
    client: &Client,
    kind: ObjectKind,
    name: &str,
    removed: &[String],
) -> Result<(), CliError> {
    let began = Instant::now();
    loop {
        match call(
            client,
            &Request::ObjectRm {
                kind,
                objects: vec![name.to_string()],
            },
        ) {
            Ok(_) => return Ok(()),
            Err(e)
                if removed.iter().any(|s| {
                    e.to_string()
                        .contains(&format!("in use by the following service: {s}"))
                }) && began.elapsed() < OBJECT_RM_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(e),
        }
    }
}

/// `stack ls`: each stack's name and number of services, in Docker's layouts.
fn stack_ls(format: &Format, counts: &BTreeMap<String, usize>) -> Result<String, String> {
    // Docker's stack formatter gives the count as text.
    let row = |name: &str, n: usize| serde_json::json!({"Name": name, "Services": n.to_string()});
    match format {
        Format::Default => {
            let mut out = format!("{:<10}{}\n", "NAME", "SERVICES");
            for (name, n) in counts {
                out.push_str(&format!("{name:<10}{n}\n"));
            }
            Ok(out)
        }
        Format::Lines(t) => counts
            .iter()
            .map(|(name, n)| Ok(t.render(&row(name, *n))? + "\n"))
            .collect(),
        Format::Table(t) => {
            let mut text =
                t.render(&serde_json::json!({"Name": "NAME", "Services": "SERVICES"}))? + "\n";
            for (name, n) in counts {
                text += &t.render(&row(name, *n))?;
                text.push('\n');
            }
            Ok(align_tabs(&text))
        }
    }
}

/// Runs `shoal stack ...` against the agent.
pub fn run_stack(args: &StackArgs) -> Result<Output, CliError> {
    let client = Client::new(&args.socket.api_socket);
    let mut warnings = Vec::new();
    let stdout = match &args.command {
        StackCommand::Deploy(a) => deploy(&client, a, &mut warnings)?,
        StackCommand::Ls(a) => {
            let format = Format::parse(a.format.as_deref()).map_err(CliError::Usage)?;
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for s in state(&client, Vec::new())?.services {
                if let Some(stack) = stack_of(&s) {
                    *counts.entry(stack.to_string()).or_default() += 1;
                }
            }
            stack_ls(&format, &counts).map_err(CliError::Output)?
        }
        StackCommand::Services(a) => {
            let filters = filters::from_args(&a.ls.filters, filters::SERVICE_KEYS)
                .map_err(CliError::Usage)?;
            let view = state(&client, stack_service_ids(&client, &a.name)?)?;
            service_ls(&a.ls, &filters, &view).map_err(CliError::Output)?
        }
        StackCommand::Ps(a) => {
            let filters = a.tasks.check().map_err(CliError::Usage)?;
            let view = state(&client, stack_service_ids(&client, &a.name)?)?;
            task_list(&a.tasks, &filters, &view).map_err(CliError::Output)?
        }
        StackCommand::Rm(a) => rm(&client, &a.names)?,
    };
    Ok(Output { stdout, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_may_be_encrypted_and_nothing_else() {
        let file = Path::new("stack.yml");
        let v = |text: &str| -> Value { serde_json::from_str(text).unwrap() };
        let ok = v(
            r#"{"networks": {"a": {"driver": "overlay", "driver_opts": {"encrypted": ""}},
                                     "b": {"driver_opts": {"encrypted": null}}, "c": null}}"#,
        );
        assert!(check_top_level(file, &ok).is_ok());
        let opts = network_options("s", &ok);
        assert_eq!(
            opts.keys().collect::<Vec<_>>(),
            ["s_a", "s_b"],
            "options only for the encrypted ones"
        );
        assert_eq!(
            opts["s_a"],
            BTreeMap::from([("encrypted".into(), String::new())])
        );
        for bad in [
            r#"{"networks": {"a": {"driver_opts": {"encrypted": "false"}}}}"#,
            r#"{"networks": {"a": {"driver_opts": {"com.docker.network.mtu": "1400"}}}}"#,
            r#"{"networks": {"a": {"driver": "bridge"}}}"#,
        ] {
            let e = check_top_level(file, &v(bad)).unwrap_err();
            assert!(e.contains("network a"), "{e}");
        }
    }

    #[test]
    fn stack_ls_formats_as_docker() {
        let counts = BTreeMap::from([("app".to_string(), 2), ("db".to_string(), 1)]);
        let ls = |f: Option<&str>| stack_ls(&Format::parse(f).unwrap(), &counts).unwrap();
        assert_eq!(ls(None), "NAME      SERVICES\napp       2\ndb        1\n");
        assert_eq!(
            ls(Some("json")),
            "{\"Name\":\"app\",\"Services\":\"2\"}\n{\"Name\":\"db\",\"Services\":\"1\"}\n"
        );
        assert_eq!(ls(Some("{{.Name}}")), "app\ndb\n");
        assert!(ls(Some("table {{.Name}}\t{{.Services}}")).starts_with("NAME"));
    }

    fn spec(image: &str, net: &str) -> ServiceSpec {
        let c = compose::merge(vec![compose::parse(
            &format!("services:\n  web:\n    image: {image}\n    networks: [{net}]\n"),
            "s.yml",
            &|_| None,
        )
        .unwrap()])
        .unwrap();
        compose::convert("app", &c, Path::new("."))
            .unwrap()
            .services
            .remove(0)
            .spec
    }

    #[test]
    fn plan_sees_only_real_changes() {
        let ids = Ids {
            networks: BTreeMap::from([("app_front".to_string(), "n1".to_string())]),
            ..Default::default()
        };
        let mut deployed = spec("nginx:1", "front");
        deployed.networks = vec!["n1".into()];
        deployed.network_aliases = deployed
            .network_aliases
            .into_values()
            .map(|a| ("n1".to_string(), a))
            .collect();
        deployed.image = "nginx:1@sha256:abc".into();
        assert!(unchanged(&deployed, &spec("nginx:1", "front"), &ids));
        assert!(!unchanged(&deployed, &spec("nginx:2", "front"), &ids));
        assert!(!unchanged(&deployed, &spec("nginx:1", "back"), &ids));
    }
}
