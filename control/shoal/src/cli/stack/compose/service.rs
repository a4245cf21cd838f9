//! One compose service as Docker's `ServiceSpec` JSON, then shoal's [`ServiceSpec`]
//! through the Engine API's conversion.

use std::{collections::BTreeMap, path::Path};

use docker_compose_types::{
    Command, Entrypoint, Environment, HealthcheckTest, Labels, Networks, Ports, PublishedPort,
    Service, StringOrList, StringOrUnsigned, SysCtls, Ulimit,
};
use serde_json::{json, Map, Value};
use shoal_cluster::store::{Device, ObjectKind, PublishMode, ServiceSpec};

use super::super::extras::{self, Extras};
use super::deploy::{deploy, Deploy};
use super::volumes::{mount, TopVolumes};
use super::{refusal, NAMESPACE_LABEL};
use crate::cli::service::spec::{parse_duration, parse_publish};
use crate::engine_api::service_spec::from_docker;

/// A converted service: its spec and the warnings about keys skipped.
#[derive(Debug)]
pub struct Converted {
    pub spec: ServiceSpec,
    pub warnings: Vec<String>,
}

fn one_line(c: &Command) -> Vec<String> {
    match c {
        Command::Simple(s) => s.split_whitespace().map(String::from).collect(),
        Command::Args(a) => a.clone(),
    }
}

/// A service's `env_file`, read as Docker's `--env-file`: `KEY=VALUE` lines taken
/// verbatim (no quote removal), blank lines and `#` comments skipped, and a bare `KEY`
/// taken from `lookup` (left out when unset).
pub fn read_env_file(
    text: &str,
    file: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (line.trim_end(), None),
        };
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Err(format!(
                "{file}:{}: variable {k:?} is empty or has whitespace",
                n + 1
            ));
        }
        if let Some(v) = v.or_else(|| lookup(k)) {
            vars.push((k.to_string(), v));
        }
    }
    Ok(vars)
}

/// `service`'s spec in stack `stack`, as Docker's `ServiceSpec` JSON and then shoal's;
/// relative `env_file` paths are read from `dir` (the first compose file's directory).
pub fn convert_service(
    stack: &str,
    name: &str,
    s: &Service,
    dir: &Path,
    volumes: &TopVolumes,
    extras: &Extras,
) -> Result<Converted, String> {
    let mut warnings = Vec::new();
    let mut warn = |key: &str, set: bool| {
        if set {
            warnings.push(format!(
                "Ignoring unsupported options: {key} (service {name})"
            ));
        }
    };
    warn("container_name", s.container_name.is_some());
    warn("depends_on", !s.depends_on.is_empty());
    warn("build", s.build_.is_some());
    warn("restart", s.restart.is_some());
    warn("links", !s.links.is_empty());

    let image = s
        .image
        .clone()
        .ok_or_else(|| format!("service {name}: an image is required"))?;
    let mut container = Map::new();
    container.insert("Image".into(), json!(image));
    if let Some(e) = &s.entrypoint {
        let list = match e {
            Entrypoint::Simple(t) => t.split_whitespace().map(String::from).collect(),
            Entrypoint::List(l) => l.clone(),
        };
        container.insert("Command".into(), json!(list));
    }
    if let Some(c) = &s.command {
        container.insert("Args".into(), json!(one_line(c)));
    }
    let mut env: Vec<String> = match &s.environment {
        Environment::List(l) => l.clone(),
        Environment::KvPair(m) => m
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => std::env::var(k)
                    .map(|v| format!("{k}={v}"))
                    .unwrap_or_else(|_| k.clone()),
            })
            .collect(),
    };
    if let Some(files) = &s.env_file {
        let files = match files {
            StringOrList::Simple(f) => std::slice::from_ref(f),
            StringOrList::List(l) => l.as_slice(),
        };
        let mut from_files: BTreeMap<String, String> = BTreeMap::new();
        for f in files {
            let path = dir.join(f);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("service {name}: env_file {}: {e}", path.display()))?;
            from_files.extend(
                read_env_file(&text, &path.display().to_string(), &|k| {
                    std::env::var(k).ok()
                })
                .map_err(|e| format!("service {name}: env_file {e}"))?,
            );
        }
        // `environment` wins over the files, key by key.
        let set: Vec<&str> = env
            .iter()
            .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k))
            .collect();
        let mut merged: Vec<String> = from_files
            .into_iter()
            .filter(|(k, _)| !set.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        merged.append(&mut env);
        env = merged;
    }
    if !env.is_empty() {
        container.insert("Env".into(), json!(env));
    }
    for (key, v) in [
        ("User", &s.user),
        ("Dir", &s.working_dir),
        ("Hostname", &s.hostname),
        ("StopSignal", &s.stop_signal),
    ] {
        if let Some(v) = v {
            container.insert(key.into(), json!(v));
        }
    }
    if let Some(g) = &s.stop_grace_period {
        let ms =
            parse_duration(g).map_err(|e| format!("service {name}: stop_grace_period: {e}"))?;
        container.insert("StopGracePeriod".into(), json!(ms * 1_000_000));
    }
    if !s.dns.is_empty() || !s.dns_opt.is_empty() {
        container.insert(
            "DNSConfig".into(),
            json!({"Nameservers": s.dns, "Options": s.dns_opt}),
        );
    }
    if !s.extra_hosts.is_empty() {
        // Docker's `Hosts` are `IP NAME`; compose writes `NAME:IP`.
        let hosts = s
            .extra_hosts
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(n, ip)| format!("{ip} {n}"))
                    .ok_or_else(|| format!("service {name}: extra_hosts {h:?} is not NAME:IP"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        container.insert("Hosts".into(), json!(hosts));
    }
    if s.init {
        container.insert("Init".into(), json!(true));
    }
    if let Some(h) = &s.healthcheck {
        if h.start_interval.is_some() {
            // Docker's HealthConfig.StartInterval came with Engine API 1.44 (dockerd
            // 25); an older dockerd, as the nodes' 20.10 (API 1.41), drops it unread.
            return Err(format!(
                "{}: it needs Docker Engine API 1.44 (dockerd 25 or later) on every node, and a dockerd before that ignores it",
                refusal(name, "healthcheck.start_interval")
            ));
        }
        let test: Vec<String> = if h.disable {
            vec!["NONE".into()]
        } else {
            match &h.test {
                None => Vec::new(),
                Some(HealthcheckTest::Single(t)) => vec!["CMD-SHELL".into(), t.clone()],
                Some(HealthcheckTest::Multiple(l)) => l.clone(),
            }
        };
        let mut check = Map::new();
        check.insert("Test".into(), json!(test));
        for (key, field, v) in [
            ("Interval", "interval", &h.interval),
            ("Timeout", "timeout", &h.timeout),
            ("StartPeriod", "start_period", &h.start_period),
        ] {
            if let Some(t) = v {
                let ms = parse_duration(t)
                    .map_err(|e| format!("service {name}: healthcheck.{field}: {e}"))?;
                check.insert(key.into(), json!(ms * 1_000_000));
            }
        }
        let retries = u64::try_from(h.retries)
            .map_err(|_| format!("service {name}: healthcheck.retries is negative"))?;
        check.insert("Retries".into(), json!(retries));
        container.insert("Healthcheck".into(), Value::Object(check));
    }
    if s.read_only {
        container.insert("ReadOnly".into(), json!(true));
    }
    if !s.cap_add.is_empty() {
        container.insert("CapabilityAdd".into(), json!(s.cap_add));
    }
    if !s.cap_drop.is_empty() {
        container.insert("CapabilityDrop".into(), json!(s.cap_drop));
    }
    if !s.ulimits.is_empty() {
        let number = |n: &StringOrUnsigned, key: &str| match n {
            StringOrUnsigned::Unsigned(v) => Ok(*v),
            StringOrUnsigned::String(t) => t
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("service {name}: ulimits.{key}: {t:?} is not a number")),
        };
        let mut list = Vec::new();
        for (key, u) in &s.ulimits.0 {
            let (soft, hard) = match u {
                Ulimit::Single(v) => (number(v, key)?, number(v, key)?),
                Ulimit::SoftHard { soft, hard } => (number(soft, key)?, number(hard, key)?),
            };
            list.push(json!({"Name": key, "Soft": soft, "Hard": hard}));
        }
        container.insert("Ulimits".into(), json!(list));
    }
    if !s.sysctls.is_empty() {
        let sysctls: BTreeMap<String, String> = match &s.sysctls {
            SysCtls::List(l) => l
                .iter()
                .map(|e| {
                    let (k, v) = e.split_once('=').unwrap_or((e, ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
            SysCtls::Map(m) => m
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                    )
                })
                .collect(),
        };
        container.insert("Sysctls".into(), json!(sysctls));
    }

    let Deploy {
        mut labels,
        mode,
        restart_policy,
        constraints,
        preferences,
        update_config,
        resources,
    } = deploy(name, s)?;
    labels.insert(NAMESPACE_LABEL.into(), stack.into());
    let mut container_labels: BTreeMap<String, String> = match &s.labels {
        Labels::List(l) => l
            .iter()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or((l, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        Labels::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    container_labels.insert(NAMESPACE_LABEL.into(), stack.into());
    container.insert("Labels".into(), json!(container_labels));

    let ports = match &s.ports {
        Ports::Short(list) => list
            .iter()
            .map(|p| parse_publish(p).map_err(|e| format!("service {name}: ports: {e}")))
            .collect::<Result<Vec<_>, _>>()?,
        Ports::Long(list) => list
            .iter()
            .map(|p| {
                let published = match &p.published {
                    None => String::new(),
                    Some(PublishedPort::Single(n)) => format!(",published={n}"),
                    Some(PublishedPort::Range(r)) => format!(",published={r}"),
                };
                let mut text = format!("target={}{published}", p.target);
                if let Some(proto) = &p.protocol {
                    text.push_str(&format!(",protocol={proto}"));
                }
                if let Some(mode) = &p.mode {
                    text.push_str(&format!(",mode={mode}"));
                }
                parse_publish(&text).map_err(|e| format!("service {name}: ports: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            json!({
                "Protocol": format!("{:?}", p.protocol).to_lowercase(),
                "TargetPort": p.target,
                "PublishedPort": p.published,
                "PublishMode": match p.mode { PublishMode::Host => "host", PublishMode::Ingress => "ingress" },
            })
        })
        .collect();

    // Each network knows the service by its name in the file too (as docker's stacks do).
    let attach = |n: &str, extra: &[String]| {
        let mut aliases = vec![name.to_string()];
        aliases.extend(extra.iter().filter(|a| *a != name).cloned());
        json!({"Target": format!("{stack}_{n}"), "Aliases": aliases})
    };
    let networks: Vec<Value> = match &s.networks {
        Networks::Simple(l) if l.is_empty() => vec![attach("default", &[])],
        Networks::Simple(l) => l.iter().map(|n| attach(n, &[])).collect(),
        Networks::Advanced(a) => {
            a.0.iter()
                .map(|(n, opts)| match opts {
                    docker_compose_types::MapOrEmpty::Map(o) => attach(n, &o.aliases),
                    docker_compose_types::MapOrEmpty::Empty => attach(n, &[]),
                })
                .collect()
        }
    };
    let mounts = s
        .volumes
        .iter()
        .map(|v| mount(stack, name, v, dir, volumes))
        .collect::<Result<Vec<_>, _>>()?;
    if !mounts.is_empty() {
        container.insert("Mounts".into(), json!(mounts));
    }
    for (kind, key) in [
        (ObjectKind::Secret, "Secrets"),
        (ObjectKind::Config, "Configs"),
    ] {
        let refs = extras::references(stack, name, kind, extras)?;
        if !refs.is_empty() {
            container.insert(key.into(), json!(refs));
        }
    }

    let mut task = json!({"ContainerSpec": Value::Object(container), "Networks": networks});
    if let Some(r) = restart_policy {
        task["RestartPolicy"] = r;
    }
    let max_replicas = extras::max_replicas_per_node(name, extras);
    if !constraints.is_empty() || max_replicas > 0 || !preferences.is_empty() {
        task["Placement"] = json!({"Constraints": constraints, "MaxReplicas": max_replicas,
            "Preferences": preferences});
    }
    if !resources.is_empty() {
        task["Resources"] = Value::Object(resources);
    }
    let mut docker = json!({
        "Name": format!("{stack}_{name}"),
        "Labels": labels,
        "TaskTemplate": task,
        "Mode": mode,
        "EndpointSpec": {"Ports": ports},
    });
    if let Some(u) = update_config {
        docker["UpdateConfig"] = u;
    }
    let (mut spec, _) = from_docker(docker).map_err(|e| format!("service {name}: {e}"))?;
    // Docker's ServiceSpec has no field for these (shoal's own, as --privileged and
    // --device): set on shoal's spec directly.
    spec.container.privileged = s.privileged;
    spec.container.devices = s
        .devices
        .iter()
        .map(|d| Device::parse(d).map_err(|e| format!("service {name}: devices: {e}")))
        .collect::<Result<_, _>>()?;
    // Checked here as the managers will, so that a mistake changes nothing.
    crate::api::check_container_options(&spec.container)
        .map_err(|e| format!("service {name}: {e}"))?;
    Ok(Converted { spec, warnings })
}
