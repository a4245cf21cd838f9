//! Compose files for `shoal stack deploy`: reading them (variable interpolation, `.env`
//! beside the file, several files merged as docker does), and turning each service into
//! shoal's [`ServiceSpec`] through the Engine API's conversion of Docker's `ServiceSpec`
//! ([`crate::engine_api::service_spec::from_docker`]), so the rules live in one place.
//!
//! Names are `<stack>_<name>`, labelled `com.docker.stack.namespace=<stack>`. Keys Swarm
//! ignores are warned about and skipped; keys shoal's service spec cannot carry yet are
//! refused ([`UNSUPPORTED_KEYS`]).

use std::{collections::BTreeMap, path::Path};

use docker_compose_types::{
    Command, Compose, ComposeVolume, Entrypoint, Environment, ExternalVolume, HealthcheckTest,
    Labels, MapOrEmpty, Networks, Ports, PublishedPort, Service, StringOrList, StringOrUnsigned,
    SysCtls, Ulimit, Volumes,
};
use serde_json::{json, Map, Value};
use shoal_cluster::store::{ObjectKind, PublishMode, ServiceSpec};

use super::extras::{self, Extras, StackObject};
use crate::cli::service::limit_flags::{parse_cpus, parse_memory};
use crate::cli::service::spec::{parse_duration, parse_publish};
use crate::engine_api::service_spec::from_docker;

/// The label naming a stack on its services, networks, secrets and configs.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// Service keys Swarm ignores: warned about, then skipped.
pub const IGNORED_KEYS: &[&str] = &["container_name", "depends_on", "build", "restart", "links"];

/// Service keys shoal's service spec cannot carry yet: a file using one is refused,
/// naming the key and the service.
pub const UNSUPPORTED_KEYS: &[&str] = &["privileged", "devices", "deploy.resources.limits.devices"];

/// Expands `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`, `${VAR?err}`,
/// `$VAR` and `$$` (a literal `$`) in `text`, line by line so a later parse error still
/// points at the right line. `file` names the file in errors.
pub fn interpolate(
    text: &str,
    file: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let col = line.len() - rest.len() + i + 1;
            let at = || format!("{file}:{}:{col}", n + 1);
            if let Some(r) = after.strip_prefix('$') {
                out.push('$');
                rest = r;
            } else if let Some(r) = after.strip_prefix('{') {
                let end = r
                    .find('}')
                    .ok_or_else(|| format!("{}: invalid interpolation: no closing }}", at()))?;
                out.push_str(&expand(&r[..end], lookup).map_err(|e| format!("{}: {e}", at()))?);
                rest = &r[end + 1..];
            } else {
                let len = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                if len == 0 {
                    return Err(format!(
                        "{}: invalid interpolation: a lone $ (write $$ for a literal $)",
                        at()
                    ));
                }
                out.push_str(&lookup(&after[..len]).unwrap_or_default());
                rest = &after[len..];
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

fn expand(expr: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let name_len = expr
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(expr.len());
    let (name, op) = expr.split_at(name_len);
    if name.is_empty() {
        return Err(format!("invalid interpolation ${{{expr}}}"));
    }
    let value = lookup(name);
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    Ok(match op {
        "" => value.unwrap_or_default(),
        _ if op.starts_with(":-") => {
            if set_nonempty {
                value.unwrap_or_default()
            } else {
                op[2..].to_string()
            }
        }
        _ if op.starts_with('-') => value.unwrap_or_else(|| op[1..].to_string()),
        _ if op.starts_with(":?") || op.starts_with('?') => {
            let unset = if op.starts_with(':') {
                !set_nonempty
            } else {
                value.is_none()
            };
            if unset {
                let msg = op.trim_start_matches(':')[1..].trim();
                return Err(if msg.is_empty() {
                    format!("required variable {name} is missing a value")
                } else {
                    format!("required variable {name} is missing a value: {msg}")
                });
            }
            value.unwrap_or_default()
        }
        _ => return Err(format!("invalid interpolation ${{{expr}}}")),
    })
}

/// `KEY=VALUE` lines of a `.env` file (blank lines and `#` comments skipped, quotes
/// around a value removed).
pub fn parse_env_file(text: &str, file: &str) -> Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("{file}:{}:1: expected KEY=VALUE", n + 1))?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
            .unwrap_or(v);
        vars.insert(k.trim().to_string(), v.to_string());
    }
    Ok(vars)
}

/// One compose file's text, interpolated with `lookup`, parsed; a malformed file gives
/// one error `FILE:LINE:COL: ...`.
pub fn parse(
    text: &str,
    file: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Value, String> {
    let text = interpolate(text, file, lookup)?;
    let located = |e: serde_yaml::Error| match e.location() {
        Some(l) => format!("{file}:{}:{}: {e}", l.line(), l.column()),
        None => format!("{file}: {e}"),
    };
    // The typed parses check the file's shape (with the place of a mistake); the
    // untyped value is what several files are merged on. The keys read by shoal's own
    // types ([`extras`]) are checked by those, and taken out for the crate's.
    let value: Value = serde_yaml::from_str(&text).map_err(located)?;
    if !value.is_object() {
        return Err(format!("{file}:1:1: a compose file is a mapping"));
    }
    serde_yaml::from_str::<Extras>(&text).map_err(located)?;
    if let Err(e) = serde_yaml::from_str::<Compose>(&text) {
        let mut rest = value.clone();
        extras::strip(&mut rest);
        if let Err(e2) = serde_json::from_value::<Compose>(rest) {
            return Err(if extras::about_extras(&e.to_string()) {
                format!("{file}: {e2}")
            } else {
                located(e)
            });
        }
    }
    Ok(value)
}

/// Reads a compose file, with the variables of the process's environment and of a
/// `.env` file beside it (the environment wins).
pub fn load(path: &Path) -> Result<Value, String> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: {e}"))?;
    let env_path = path.parent().unwrap_or(Path::new(".")).join(".env");
    let dot_env = match std::fs::read_to_string(&env_path) {
        Ok(t) => parse_env_file(&t, &env_path.display().to_string())?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(format!("{}: {e}", env_path.display())),
    };
    parse(&text, &file, &|k| {
        std::env::var(k).ok().or_else(|| dot_env.get(k).cloned())
    })
}

/// Merges several files' values as docker does: mappings merge key by key, a later
/// file's scalar or list replaces an earlier one's; `ports`, `volumes`, `secrets`,
/// `configs` and `extra_hosts`/`dns` lists of a service are concatenated.
pub fn merge(files: Vec<Value>) -> Result<Merged, String> {
    let mut merged = Value::Object(Map::new());
    for f in files {
        merge_value(&mut merged, f, "");
    }
    let extras: Extras =
        serde_json::from_value(merged.clone()).map_err(|e| format!("merged compose files: {e}"))?;
    extras::strip(&mut merged);
    let compose =
        serde_json::from_value(merged).map_err(|e| format!("merged compose files: {e}"))?;
    Ok(Merged { compose, extras })
}

/// The compose files merged: what the crate's types read, and what shoal's own do.
#[derive(Debug, Clone)]
pub struct Merged {
    pub compose: Compose,
    pub extras: Extras,
}

fn merge_value(into: &mut Value, from: Value, key: &str) {
    const APPENDED: &[&str] = &[
        "ports",
        "volumes",
        "secrets",
        "configs",
        "extra_hosts",
        "dns",
    ];
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(slot) => merge_value(slot, v, &k),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if APPENDED.contains(&key) => a.extend(b),
        (slot, v) => *slot = v,
    }
}

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

/// The top-level `volumes` of the files, by their name in the files.
pub type TopVolumes = BTreeMap<String, ComposeVolume>;

/// The top-level volumes, checked: `labels` cannot be carried on a volume mount yet.
pub fn top_volumes(compose: &Compose) -> Result<TopVolumes, String> {
    let mut out = TopVolumes::new();
    for (n, v) in &compose.volumes.0 {
        let v = match v {
            MapOrEmpty::Map(v) => v.clone(),
            MapOrEmpty::Empty => ComposeVolume {
                driver: None,
                driver_opts: Default::default(),
                external: None,
                labels: Labels::List(Vec::new()),
                name: None,
            },
        };
        let external = matches!(
            v.external,
            Some(ExternalVolume::Bool(true)) | Some(ExternalVolume::Name { .. })
        );
        if external && (v.driver.is_some() || !v.driver_opts.is_empty()) {
            return Err(format!(
                "volume {n}: conflicting parameters \"external\" and \"driver\" specified"
            ));
        }
        if !v.labels.is_empty() {
            return Err(format!(
                "volume {n}: labels are not supported by stack deploy yet"
            ));
        }
        out.insert(n.clone(), v);
    }
    Ok(out)
}

/// One service volume as Docker's `Mount`: a name declared at the top level is the
/// volume `<stack>_<name>` (or its `name:`, or the external one), with its driver and
/// options; a path (`/`, `.`, `~`) is a bind mount (relative to `dir`); `tmpfs` too.
fn mount(
    stack: &str,
    service: &str,
    v: &Volumes,
    dir: &Path,
    top: &TopVolumes,
) -> Result<Value, String> {
    let bad = |what: String| format!("service {service}: volumes: {what}");
    let (kind, source, target, read_only, tmpfs_size) = match v {
        Volumes::Simple(text) => {
            let parts: Vec<&str> = text.split(':').collect();
            let (src, dst, mode) = match parts.as_slice() {
                [dst] => ("", *dst, ""),
                [src, dst] => (*src, *dst, ""),
                [src, dst, mode] => (*src, *dst, *mode),
                _ => return Err(bad(format!("{text:?} is not SOURCE:TARGET[:MODE]"))),
            };
            let read_only = match mode {
                "" | "rw" => false,
                "ro" => true,
                other => return Err(bad(format!("{text:?}: mode {other:?} is not ro or rw"))),
            };
            let kind = if src.is_empty()
                || !(src.starts_with('/') || src.starts_with('.') || src.starts_with('~'))
            {
                "volume"
            } else {
                "bind"
            };
            (
                kind.to_string(),
                src.to_string(),
                dst.to_string(),
                read_only,
                None,
            )
        }
        Volumes::Advanced(a) => {
            if a.bind.is_some() {
                return Err(bad(format!(
                    "{}: bind options are not supported yet",
                    a.target
                )));
            }
            if a.volume.is_some() {
                return Err(bad(format!(
                    "{}: volume options are not supported yet",
                    a.target
                )));
            }
            (
                a._type.clone(),
                a.source.clone().unwrap_or_default(),
                a.target.clone(),
                a.read_only,
                a.tmpfs.as_ref().map(|t| t.size),
            )
        }
    };
    let mut m = Map::new();
    m.insert("Type".into(), json!(kind));
    m.insert("Target".into(), json!(target));
    if read_only {
        m.insert("ReadOnly".into(), json!(true));
    }
    match kind.as_str() {
        "volume" if source.is_empty() => {}
        "volume" => {
            let decl = top.get(&source).ok_or_else(|| {
                bad(format!(
                    "undefined volume {source:?} (declare it under the top-level volumes)"
                ))
            })?;
            let real = match (&decl.external, &decl.name) {
                (Some(ExternalVolume::Name { name }), _) => name.clone(),
                (_, Some(n)) => n.clone(),
                (Some(ExternalVolume::Bool(true)), None) => source.clone(),
                _ => format!("{stack}_{source}"),
            };
            m.insert("Source".into(), json!(real));
            let external = matches!(
                decl.external,
                Some(ExternalVolume::Bool(true)) | Some(ExternalVolume::Name { .. })
            );
            if !external && (decl.driver.is_some() || !decl.driver_opts.is_empty()) {
                let opts: BTreeMap<String, String> = decl
                    .driver_opts
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                        )
                    })
                    .collect();
                m.insert(
                    "VolumeOptions".into(),
                    json!({"DriverConfig": {"Name": decl.driver.clone().unwrap_or_default(), "Options": opts}}),
                );
            }
        }
        "bind" => {
            let path = match source.strip_prefix('~') {
                Some(rest) => {
                    let home = std::env::var("HOME")
                        .map_err(|_| bad(format!("{source:?}: HOME is not set")))?;
                    format!("{home}{rest}")
                }
                None if source.starts_with('/') => source.clone(),
                None => dir
                    .join(&source)
                    .components()
                    .collect::<std::path::PathBuf>()
                    .display()
                    .to_string(),
            };
            m.insert("Source".into(), json!(path));
        }
        "tmpfs" => {
            if !source.is_empty() {
                return Err(bad(format!("{target}: a tmpfs mount has no source")));
            }
            if let Some(size) = tmpfs_size {
                m.insert("TmpfsOptions".into(), json!({"SizeBytes": size}));
            }
        }
        other => return Err(bad(format!("type {other:?} is not volume, bind or tmpfs"))),
    }
    Ok(Value::Object(m))
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
    let refuse = |key: &str| {
        Err(format!(
            "service {name}: {key} is not supported by shoal's services yet"
        ))
    };
    if s.privileged {
        return refuse("privileged");
    }
    if !s.devices.is_empty() {
        return refuse("devices");
    }
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
            return refuse("healthcheck.start_interval");
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

    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut mode = json!({"Replicated": {"Replicas": 1}});
    let mut restart_policy: Option<Value> = None;
    let mut constraints: Vec<String> = Vec::new();
    let mut preferences: Vec<Value> = Vec::new();
    let mut update_config: Option<Value> = None;
    let mut resources = Map::new();
    if let Some(d) = &s.deploy {
        for l in &d.labels {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            labels.insert(k.into(), v.into());
        }
        match d.mode.as_deref() {
            None | Some("replicated") => {
                mode = json!({"Replicated": {"Replicas": d.replicas.unwrap_or(1)}});
            }
            Some("global") => {
                if d.replicas.is_some() {
                    return Err(format!(
                        "service {name}: deploy.replicas cannot be set with mode global"
                    ));
                }
                mode = json!({"Global": {}});
            }
            Some(other) => {
                return Err(format!(
                    "service {name}: deploy.mode {other:?} is not replicated or global"
                ))
            }
        }
        if let Some(u) = &d.update_config {
            let mut c = Map::new();
            if let Some(p) = u.parallelism {
                let p = u64::try_from(p).map_err(|_| {
                    format!("service {name}: deploy.update_config.parallelism is negative")
                })?;
                c.insert("Parallelism".into(), json!(p));
            }
            for (key, field, v) in [
                ("Delay", "delay", &u.delay),
                ("Monitor", "monitor", &u.monitor),
            ] {
                if let Some(t) = v {
                    let ms = parse_duration(t).map_err(|e| {
                        format!("service {name}: deploy.update_config.{field}: {e}")
                    })?;
                    c.insert(key.into(), json!(ms * 1_000_000));
                }
            }
            if let Some(a) = &u.failure_action {
                c.insert("FailureAction".into(), json!(a));
            }
            if let Some(r) = u.max_failure_ratio {
                c.insert("MaxFailureRatio".into(), json!(r));
            }
            update_config = Some(Value::Object(c));
        }
        if let Some(r) = &d.resources {
            // Limits are set on each container; reservations count against the nodes'
            // capacity (the scheduler's).
            for (field, l) in [("limits", &r.limits), ("reservations", &r.reservations)] {
                let Some(l) = l else { continue };
                if l.devices.is_some() {
                    return refuse(&format!("deploy.resources.{field}.devices"));
                }
                let mut c = Map::new();
                if let Some(cpus) = &l.cpus {
                    let n = parse_cpus(cpus).map_err(|e| {
                        format!("service {name}: deploy.resources.{field}.cpus: {e}")
                    })?;
                    c.insert("NanoCPUs".into(), json!(n));
                }
                if let Some(m) = &l.memory {
                    let b = parse_memory(m).map_err(|e| {
                        format!("service {name}: deploy.resources.{field}.memory: {e}")
                    })?;
                    c.insert("MemoryBytes".into(), json!(b));
                }
                let key = if field == "limits" {
                    "Limits"
                } else {
                    "Reservations"
                };
                resources.insert(key.into(), Value::Object(c));
            }
        }
        if let Some(r) = &d.restart_policy {
            let ns = |key: &str, v: &Option<String>| -> Result<Option<u64>, String> {
                v.as_deref()
                    .map(|t| {
                        parse_duration(t).map(|ms| ms * 1_000_000).map_err(|e| {
                            format!("service {name}: deploy.restart_policy.{key}: {e}")
                        })
                    })
                    .transpose()
            };
            let mut policy = Map::new();
            if let Some(c) = &r.condition {
                policy.insert("Condition".into(), json!(c));
            }
            if let Some(d) = ns("delay", &r.delay)? {
                policy.insert("Delay".into(), json!(d));
            }
            if let Some(w) = ns("window", &r.window)? {
                policy.insert("Window".into(), json!(w));
            }
            if let Some(m) = r.max_attempts {
                let m = u64::try_from(m).map_err(|_| {
                    format!("service {name}: deploy.restart_policy.max_attempts is negative")
                })?;
                policy.insert("MaxAttempts".into(), json!(m));
            }
            restart_policy = Some(Value::Object(policy));
        }
        if let Some(p) = &d.placement {
            constraints.clone_from(&p.constraints);
            preferences = p
                .preferences
                .iter()
                .map(|p| json!({"Spread": {"SpreadDescriptor": p.spread}}))
                .collect();
        }
    }
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
    let (spec, _) = from_docker(docker).map_err(|e| format!("service {name}: {e}"))?;
    // Checked here as the managers will, so that a mistake changes nothing.
    crate::api::check_container_options(&spec.container)
        .map_err(|e| format!("service {name}: {e}"))?;
    Ok(Converted { spec, warnings })
}

/// A stack as the files declare it: its services, secrets and configs.
#[derive(Debug)]
pub struct Stack {
    pub services: Vec<Converted>,
    /// Secrets, then configs.
    pub objects: Vec<StackObject>,
}

/// Every service of the files converted, in the file's order, and every top-level
/// secret and config read (files relative to `dir`); the first error stops it (so
/// nothing is deployed from a file with a mistake).
pub fn convert(stack: &str, merged: &Merged, dir: &Path) -> Result<Stack, String> {
    let compose = &merged.compose;
    if compose.services.is_empty() {
        return Err("the compose files have no services".into());
    }
    let volumes = top_volumes(compose)?;
    let services = compose
        .services
        .0
        .iter()
        .map(|(name, s)| {
            convert_service(
                stack,
                name,
                &s.clone().unwrap_or_default(),
                dir,
                &volumes,
                &merged.extras,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut objects = extras::objects(stack, ObjectKind::Secret, &merged.extras, dir)?;
    objects.extend(extras::objects(
        stack,
        ObjectKind::Config,
        &merged.extras,
        dir,
    )?);
    Ok(Stack { services, objects })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(k: &str) -> Option<String> {
        match k {
            "TAG" => Some("1.2".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn interpolation_forms() {
        let t = "a: ${TAG}\nb: ${NOPE:-def}\nc: $$HOME\nd: ${EMPTY:-x}\ne: ${EMPTY-x}\nf: $TAG.0\n";
        let out = interpolate(t, "f.yml", &vars).unwrap();
        assert_eq!(out, "a: 1.2\nb: def\nc: $HOME\nd: x\ne: \nf: 1.2.0\n");
    }

    #[test]
    fn required_variable_error_has_place() {
        let e = interpolate("x: 1\ny: ${NOPE:?set it}\n", "f.yml", &vars).unwrap_err();
        assert_eq!(
            e,
            "f.yml:2:4: required variable NOPE is missing a value: set it"
        );
    }

    #[test]
    fn malformed_file_gives_file_line_col() {
        let e = parse("services:\n  web:\n    image: [\n", "s.yml", &vars).unwrap_err();
        assert!(e.starts_with("s.yml:"), "{e}");
        let parts: Vec<&str> = e.splitn(4, ':').collect();
        assert!(
            parts[1].parse::<u64>().is_ok() && parts[2].parse::<u64>().is_ok(),
            "{e}"
        );
        let e = parse("services:\n  web:\n    ports: 5\n", "s.yml", &vars).unwrap_err();
        assert!(e.starts_with("s.yml:3:5: "), "{e}");
    }

    #[test]
    fn env_file() {
        let v = parse_env_file("# c\nA=1\nexport B=\"two\"\n\n", ".env").unwrap();
        assert_eq!(v["A"], "1");
        assert_eq!(v["B"], "two");
        assert!(parse_env_file("nope\n", ".env").is_err());
    }

    #[test]
    fn merge_overrides_and_appends() {
        let a = parse(
            "services:\n  web:\n    image: nginx:1\n    ports: [\"80:80\"]\n    environment: {A: \"1\"}\n",
            "a.yml",
            &vars,
        )
        .unwrap();
        let b = parse(
            "services:\n  web:\n    image: nginx:${TAG}\n    ports: [\"443:443\"]\n    environment: {B: \"2\"}\n",
            "b.yml",
            &vars,
        )
        .unwrap();
        let c = merge(vec![a, b]).unwrap().compose;
        let web = c.services.0["web"].clone().unwrap();
        assert_eq!(web.image.as_deref(), Some("nginx:1.2"));
        let Ports::Short(p) = &web.ports else {
            panic!()
        };
        assert_eq!(p, &vec!["80:80".to_string(), "443:443".to_string()]);
        let Environment::KvPair(env) = &web.environment else {
            panic!()
        };
        assert_eq!(env.len(), 2);
    }

    fn compose(text: &str) -> Merged {
        merge(vec![parse(text, "s.yml", &vars).unwrap()]).unwrap()
    }

    #[test]
    fn converts_a_service() {
        let c = compose(
            "services:\n  web:\n    image: nginx:1\n    command: [\"-g\", \"x\"]\n    environment: [\"A=1\"]\n    ports: [\"8080:80\"]\n    networks:\n      front: {aliases: [www]}\n    user: \"1000\"\n    deploy: {replicas: 3, labels: [\"tier=web\"]}\n    container_name: ignored\n",
        );
        let out = convert("app", &c, Path::new(".")).unwrap().services;
        let web = &out[0];
        assert_eq!(web.spec.name, "app_web");
        assert_eq!(web.spec.image, "nginx:1");
        assert_eq!(web.spec.labels[NAMESPACE_LABEL], "app");
        assert_eq!(web.spec.labels["tier"], "web");
        assert_eq!(web.spec.ports.len(), 1);
        assert_eq!(web.spec.ports[0].published, 8080);
        assert_eq!(web.spec.ports[0].target, 80);
        assert_eq!(web.warnings.len(), 1, "{:?}", web.warnings);
        assert!(web.warnings[0].contains("container_name"));
    }

    #[test]
    fn default_network_and_global_mode() {
        let c = compose("services:\n  agent:\n    image: busybox\n    deploy: {mode: global}\n");
        let out = convert("app", &c, Path::new(".")).unwrap().services;
        let dbg = format!("{:?}", out[0].spec);
        assert!(dbg.contains("app_default"), "{dbg}");
        assert!(dbg.contains("Global"), "{dbg}");
    }

    #[test]
    fn unsupported_keys_are_refused_by_name() {
        for (key, yaml) in [
            ("privileged", "privileged: true"),
            (
                "deploy.resources.limits.devices",
                "deploy: {resources: {limits: {devices: [{driver: x}]}}}",
            ),
            ("devices", "devices: [\"/dev/null:/dev/null\"]"),
        ] {
            let c = compose(&format!(
                "services:\n  w:\n    image: busybox\n    {yaml}\n"
            ));
            let e = convert("app", &c, Path::new(".")).unwrap_err();
            assert!(e.contains(key) && e.contains("service w"), "{e}");
            assert!(UNSUPPORTED_KEYS.contains(&key));
        }
    }

    #[test]
    fn ulimits_and_sysctls() {
        let c = compose(concat!(
            "services:\n  w:\n    image: busybox\n",
            "    ulimits:\n      nproc: 65535\n      nofile: {soft: 1024, hard: 2048}\n",
            "    sysctls:\n      net.core.somaxconn: 4096\n      kernel.shmmax: \"1000\"\n",
        ));
        let spec = convert("app", &c, Path::new("."))
            .unwrap()
            .services
            .remove(0)
            .spec;
        let u = &spec.container.ulimits;
        assert_eq!((u["nproc"].soft, u["nproc"].hard), (65535, 65535));
        assert_eq!((u["nofile"].soft, u["nofile"].hard), (1024, 2048));
        assert_eq!(spec.container.sysctls["net.core.somaxconn"], "4096");
        assert_eq!(spec.container.sysctls["kernel.shmmax"], "1000");
        let listed = compose(
            "services:\n  w:\n    image: busybox\n    sysctls: [net.ipv4.tcp_syncookies=0]\n",
        );
        let spec = convert("app", &listed, Path::new("."))
            .unwrap()
            .services
            .remove(0)
            .spec;
        assert_eq!(spec.container.sysctls["net.ipv4.tcp_syncookies"], "0");
        for (yaml, want) in [
            (
                "sysctls: {kernel.hostname: x}",
                "sysctl 'kernel.hostname' is not whitelisted",
            ),
            ("ulimits: {nofile: {soft: 10, hard: 5}}", "soft limit"),
            ("ulimits: {colour: 5}", "invalid ulimit type"),
        ] {
            let c = compose(&format!(
                "services:\n  w:\n    image: busybox\n    {yaml}\n"
            ));
            let e = convert("app", &c, Path::new(".")).unwrap_err();
            assert!(e.contains("service w") && e.contains(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn capabilities_update_config_and_limits() {
        let c = compose(
            "services:\n  w:\n    image: busybox\n    cap_add: [net_admin]\n    cap_drop: [CAP_CHOWN]\n    deploy:\n      update_config: {parallelism: 2, delay: 3s, failure_action: rollback, monitor: 4s, max_failure_ratio: 0.5}\n      resources: {limits: {cpus: \"0.5\", memory: 64M}, reservations: {cpus: \"0.25\", memory: 32M}}\n",
        );
        let spec = convert("app", &c, Path::new("."))
            .unwrap()
            .services
            .remove(0)
            .spec;
        assert_eq!(spec.container.cap_add, vec!["CAP_NET_ADMIN".to_string()]);
        assert_eq!(spec.container.cap_drop, vec!["CAP_CHOWN".to_string()]);
        assert_eq!(spec.container.limits.nano_cpus, 500_000_000);
        assert_eq!(spec.container.limits.memory_bytes, 64 << 20);
        assert_eq!(spec.container.reservations.nano_cpus, 250_000_000);
        assert_eq!(spec.container.reservations.memory_bytes, 32 << 20);
        let u = &spec.update_config;
        assert_eq!((u.parallelism, u.delay_ms, u.monitor_ms), (2, 3_000, 4_000));
        assert_eq!(format!("{:?}", u.failure_action), "Rollback");
        assert_eq!(u.max_failure_ratio_ppm, 500_000);

        let bad = compose(
            "services:\n  w:\n    image: busybox\n    deploy: {update_config: {failure_action: explode}}\n",
        );
        let e = convert("app", &bad, Path::new(".")).unwrap_err();
        assert!(e.contains("service w") && e.contains("explode"), "{e}");
        let bad = compose(
            "services:\n  w:\n    image: busybox\n    deploy: {resources: {limits: {cpus: lots}}}\n",
        );
        let e = convert("app", &bad, Path::new(".")).unwrap_err();
        assert!(e.contains("deploy.resources.limits.cpus"), "{e}");
        let bad = compose(
            "services:\n  w:\n    image: busybox\n    deploy: {resources: {reservations: {memory: 12Q}}}\n",
        );
        let e = convert("app", &bad, Path::new(".")).unwrap_err();
        assert!(
            e.contains("service w: deploy.resources.reservations.memory"),
            "{e}"
        );
    }

    #[test]
    fn env_file_read_as_docker_reads_it_and_environment_wins() {
        let vars = read_env_file("# c\nA=\"q\"\n  B=2\nFROM_HOST\nUNSET\n", "e", &|k| {
            (k == "FROM_HOST").then(|| "h".to_string())
        })
        .unwrap();
        let want = [("A", "\"q\""), ("B", "2"), ("FROM_HOST", "h")];
        assert_eq!(
            vars,
            want.map(|(k, v)| (k.to_string(), v.to_string())).to_vec()
        );
        assert!(read_env_file("BAD KEY=1\n", "e", &|_| None).is_err());

        let dir = std::env::temp_dir().join(format!("shoal-envfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.env"), "A=1\nB=file\n").unwrap();
        std::fs::write(dir.join("b.env"), "C=3\n").unwrap();
        let c = compose(
            "services:\n  w:\n    image: busybox\n    env_file: [a.env, b.env]\n    environment: [B=env]\n",
        );
        let spec = convert("app", &c, &dir).unwrap().services.remove(0).spec;
        assert_eq!(spec.env, vec!["A=1", "C=3", "B=env"]);
        let missing = compose("services:\n  w:\n    image: busybox\n    env_file: nope.env\n");
        let e = convert("app", &missing, &dir).unwrap_err();
        assert!(e.contains("service w") && e.contains("nope.env"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn volumes_named_bind_tmpfs_and_top_level() {
        use shoal_cluster::store::MountKind;
        let c = compose(concat!(
            "services:\n  w:\n    image: busybox\n    volumes:\n",
            "      - data:/data\n      - ./conf:/conf:ro\n      - ext:/ext\n      - named:/n\n",
            "      - {type: tmpfs, target: /t, tmpfs: {size: 1048576}}\n",
            "      - {type: volume, source: data, target: /d2, read_only: true}\n",
            "volumes:\n  data: {driver: local, driver_opts: {type: tmpfs, device: tmpfs}}\n",
            "  ext: {external: true}\n  named: {name: fixed}\n",
        ));
        let spec = convert("app", &c, Path::new("/srv/app"))
            .unwrap()
            .services
            .remove(0)
            .spec;
        let m = &spec.container.mounts;
        assert_eq!(m.len(), 6, "{m:?}");
        assert_eq!(
            (m[0].kind, m[0].source.as_str()),
            (MountKind::Volume, "app_data")
        );
        assert_eq!(m[0].volume_driver, "local");
        assert_eq!(
            m[0].volume_options.get("type").map(String::as_str),
            Some("tmpfs")
        );
        assert_eq!(
            (m[1].kind, m[1].source.as_str()),
            (MountKind::Bind, "/srv/app/conf")
        );
        assert!(m[1].read_only);
        assert_eq!(m[2].source, "ext");
        assert!(m[2].volume_driver.is_empty());
        assert_eq!(m[3].source, "fixed");
        assert_eq!(
            (m[4].kind, m[4].tmpfs_size),
            (MountKind::Tmpfs, Some(1_048_576))
        );
        assert!(m[5].read_only && m[5].source == "app_data");

        for (yaml, want) in [
            ("volumes: [nope:/x]", "undefined volume \"nope\""),
            ("volumes: [\"a:b:c:d\"]", "SOURCE:TARGET"),
            ("volumes: [\"/a:/b:zz\"]", "mode \"zz\""),
        ] {
            let c = compose(&format!(
                "services:\n  w:\n    image: busybox\n    {yaml}\n"
            ));
            let e = convert("app", &c, Path::new(".")).unwrap_err();
            assert!(e.contains("service w") && e.contains(want), "{e}");
        }
        let labelled =
            compose("services:\n  w:\n    image: busybox\nvolumes:\n  v: {labels: [a=b]}\n");
        let e = convert("app", &labelled, Path::new(".")).unwrap_err();
        assert!(e.contains("volume v") && e.contains("labels"), "{e}");
    }

    #[test]
    fn restart_policy_and_constraints() {
        let c = compose(
            "services:\n  w:\n    image: busybox\n    deploy:\n      restart_policy: {condition: on-failure, delay: 2s, max_attempts: 3}\n      placement: {constraints: [\"node.role==manager\"], max_replicas_per_node: 2, preferences: [{spread: node.labels.zone}, {spread: node.labels.rack}]}\n",
        );
        let spec = convert("app", &c, Path::new("."))
            .unwrap()
            .services
            .remove(0)
            .spec;
        assert_eq!(spec.placement.max_replicas_per_node, 2);
        assert_eq!(
            spec.placement.preferences,
            ["node.labels.zone", "node.labels.rack"]
        );
        let bad = compose(
            "services:\n  w:\n    image: busybox\n    deploy: {placement: {preferences: [{spread: node.hostname}]}}\n",
        );
        let e = convert("app", &bad, Path::new(".")).unwrap_err();
        assert!(
            e.contains("service w") && e.contains("node.hostname"),
            "{e}"
        );
        let dbg = format!("{spec:?}");
        assert!(
            dbg.contains("OnFailure") && dbg.contains("node.role==manager"),
            "{dbg}"
        );
        assert!(
            dbg.contains("restart_delay_ms: 2000") && dbg.contains("restart_max_attempts: 3"),
            "{dbg}"
        );
    }

    #[test]
    fn healthcheck() {
        let c = compose(
            "services:\n  w:\n    image: busybox\n    healthcheck: {test: \"wget -q localhost\", interval: 5s, retries: 2}\n",
        );
        let spec = convert("app", &c, Path::new("."))
            .unwrap()
            .services
            .remove(0)
            .spec;
        let h = spec.healthcheck.expect("a health check");
        assert_eq!(
            h.test,
            vec!["CMD-SHELL".to_string(), "wget -q localhost".into()]
        );
        assert_eq!((h.interval_ms, h.retries), (5000, 2));
    }

    #[test]
    fn secrets_and_configs_top_level_and_per_service() {
        let dir = std::env::temp_dir().join(format!("shoal-stack-objects-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw.txt"), "hunter2\n").unwrap();
        std::fs::write(dir.join("app.conf"), "a = 1\n").unwrap();
        let c = compose(concat!(
            "services:\n  w:\n    image: busybox\n",
            "    secrets:\n      - pw\n",
            "      - {source: ext, target: db_pw, uid: \"100\", gid: 101, mode: 0400}\n",
            "    configs:\n      - conf\n",
            "      - {source: conf, target: /etc/app.conf, mode: 0o440}\n",
            "secrets:\n  pw: {file: ./pw.txt, labels: {team: db}}\n  ext: {external: true}\n",
            "configs:\n  conf: {file: app.conf, name: fixed_conf}\n",
        ));
        let stack = convert("app", &c, &dir).unwrap();
        let spec = &stack.services[0].spec;
        let s = &spec.secrets;
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!((s[0].name.as_str(), s[0].target.as_str()), ("app_pw", "pw"));
        assert_eq!(
            (s[0].uid.as_str(), s[0].gid.as_str(), s[0].mode),
            ("0", "0", 0o444)
        );
        assert!(s[0].id.is_empty());
        assert_eq!((s[1].name.as_str(), s[1].target.as_str()), ("ext", "db_pw"));
        assert_eq!(
            (s[1].uid.as_str(), s[1].gid.as_str(), s[1].mode),
            ("100", "101", 0o400)
        );
        let k = &spec.configs;
        assert_eq!(
            (k[0].name.as_str(), k[0].target.as_str()),
            ("fixed_conf", "/conf")
        );
        assert_eq!((k[1].target.as_str(), k[1].mode), ("/etc/app.conf", 0o440));

        let o = &stack.objects;
        assert_eq!(o.len(), 3, "{o:?}");
        let pw = o.iter().find(|o| o.key == "pw").unwrap();
        assert_eq!(
            (pw.kind, pw.name.as_str(), pw.external),
            (ObjectKind::Secret, "app_pw", false)
        );
        assert_eq!(pw.data, b"hunter2\n");
        assert_eq!(pw.labels[NAMESPACE_LABEL], "app");
        assert_eq!(pw.labels["team"], "db");
        let ext = o.iter().find(|o| o.key == "ext").unwrap();
        assert!(ext.external && ext.data.is_empty() && ext.labels.is_empty());
        let conf = o.iter().find(|o| o.key == "conf").unwrap();
        assert_eq!(
            (conf.kind, conf.name.as_str()),
            (ObjectKind::Config, "fixed_conf")
        );

        for (yaml, want) in [
            (
                "    secrets: [nope]\nsecrets: {}\n",
                "undefined secret \"nope\"",
            ),
            (
                "    configs: [c]\nconfigs:\n  c: {file: missing.conf}\n",
                "config c: file",
            ),
            (
                "secrets:\n  s: {}\n",
                "secret s: a file (or external: true) is required",
            ),
            (
                "secrets:\n  s: {file: pw.txt, external: true}\n",
                "conflicting parameters",
            ),
            (
                "secrets:\n  s: {environment: PW}\n",
                "environment is not supported",
            ),
            (
                "    secrets: [{source: s, mode: 0999}]\nsecrets:\n  s: {file: pw.txt}\n",
                "mode \"0999\"",
            ),
        ] {
            let c = compose(&format!("services:\n  w:\n    image: busybox\n{yaml}"));
            let e = convert("app", &c, &dir).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        std::fs::write(dir.join("empty"), "").unwrap();
        let c = compose("services:\n  w:\n    image: busybox\nsecrets:\n  s: {file: empty}\n");
        let e = convert("app", &c, &dir).unwrap_err();
        assert!(e.contains("secret s") && e.contains("larger than 0"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_wrong_secret_entry_is_placed() {
        let e = parse(
            "services:\n  w:\n    image: busybox\n    secrets:\n      - {source: s, colour: red}\n",
            "s.yml",
            &vars,
        )
        .unwrap_err();
        assert!(e.starts_with("s.yml:5:"), "{e}");
        let e = parse(
            "secrets:\n  s: {file: a, flavour: b}\nservices:\n  w:\n    image: busybox\n",
            "s.yml",
            &vars,
        )
        .unwrap_err();
        assert!(e.starts_with("s.yml:2:") && e.contains("flavour"), "{e}");
        // A mistake elsewhere in a file with secrets still names its place (serde_yaml
        // places a wrong value at the start of the mapping holding it).
        let e = parse(
            "secrets:\n  s: {file: a}\nservices:\n  w:\n    image: busybox\n    ports: 5\n",
            "s.yml",
            &vars,
        )
        .unwrap_err();
        assert!(e.starts_with("s.yml:5:5: services.w"), "{e}");
    }

    #[test]
    fn missing_image_is_an_error() {
        let c = compose("services:\n  w:\n    command: [\"true\"]\n");
        assert!(convert("app", &c, Path::new("."))
            .unwrap_err()
            .contains("image"));
    }
}
