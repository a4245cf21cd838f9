//! The compose keys that docker-compose-types does not read, or reads in a narrower form
//! than Docker's: the top-level `secrets` and `configs` (`file`, `external`, `name`,
//! `labels`), a service's `secrets` and `configs` (short and long form, with an octal
//! `mode` as Docker reads `0440`), and `deploy.placement.max_replicas_per_node`. They
//! are read here with shoal's own types ([`Extras`]) and taken out of the value before
//! the crate's types read the rest ([`strip`]).

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;
use serde_json::{json, Value};
use shoal_cluster::store::{DataObject, ObjectKind};

use super::compose::NAMESPACE_LABEL;

/// What a compose file holds beyond the crate's types (every other key is ignored
/// here).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Extras {
    #[serde(default)]
    pub secrets: Option<BTreeMap<String, Option<TopObject>>>,
    #[serde(default)]
    pub configs: Option<BTreeMap<String, Option<TopObject>>>,
    #[serde(default)]
    pub services: Option<BTreeMap<String, Option<ServiceExtras>>>,
}

/// A service's keys read here.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ServiceExtras {
    #[serde(default)]
    pub secrets: Option<Vec<FileUse>>,
    #[serde(default)]
    pub configs: Option<Vec<FileUse>>,
    #[serde(default)]
    pub deploy: Option<DeployExtras>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct DeployExtras {
    #[serde(default)]
    pub placement: Option<PlacementExtras>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct PlacementExtras {
    #[serde(default)]
    pub max_replicas_per_node: Option<u64>,
}

/// A top-level secret or config.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopObject {
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub external: Option<External>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: Option<LabelList>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub template_driver: Option<String>,
}

/// `external: true`, or the older `external: {name: N}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum External {
    Bool(bool),
    Named { name: String },
}

/// Labels as a list of `K=V` or a mapping.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum LabelList {
    List(Vec<String>),
    Map(BTreeMap<String, Scalar>),
}

/// A string or a number (a `uid: 1000` is a number to YAML).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Number(u64),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Text(t) => t.clone(),
            Scalar::Number(n) => n.to_string(),
        }
    }
}

/// A service's use of a secret or config: its name, or the long form.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FileUse {
    Short(String),
    Long(LongFileUse),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongFileUse {
    pub source: String,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub uid: Option<Scalar>,
    #[serde(default)]
    pub gid: Option<Scalar>,
    #[serde(default)]
    pub mode: Option<Scalar>,
}

/// A file mode as Docker's YAML reader takes it: `0440` and `0o440` are octal, `288`
/// is decimal.
pub fn parse_mode(m: &Scalar) -> Result<u32, String> {
    let n = match m {
        Scalar::Number(n) => u32::try_from(*n).ok(),
        Scalar::Text(t) => {
            let t = t.trim();
            if let Some(o) = t.strip_prefix("0o").or_else(|| t.strip_prefix("0O")) {
                u32::from_str_radix(o, 8).ok()
            } else if t.len() > 1 && t.starts_with('0') {
                u32::from_str_radix(&t[1..], 8).ok()
            } else {
                t.parse().ok()
            }
        }
    };
    n.filter(|n| *n <= 0o777)
        .ok_or_else(|| format!("mode {:?} is not a file mode", m.text()))
}

/// Takes the keys read here out of a file's value (the crate's types read the rest).
pub fn strip(v: &mut Value) {
    let Some(top) = v.as_object_mut() else {
        return;
    };
    top.remove("secrets");
    top.remove("configs");
    if let Some(Value::Object(services)) = top.get_mut("services") {
        for s in services.values_mut() {
            if let Value::Object(s) = s {
                s.remove("secrets");
                s.remove("configs");
                if let Some(Value::Object(p)) =
                    s.get_mut("deploy").and_then(|d| d.get_mut("placement"))
                {
                    p.remove("max_replicas_per_node");
                }
            }
        }
    }
}

/// Whether a message of the crate's parse is about a key read here.
pub fn about_extras(message: &str) -> bool {
    ["secrets", "configs", "max_replicas_per_node"]
        .iter()
        .any(|k| message.contains(k))
}

/// A secret or config of a stack: created from its file (named `<stack>_<key>`, or its
/// `name:`, labelled with the stack), or an external one that must exist.
#[derive(Debug, Clone, PartialEq)]
pub struct StackObject {
    pub kind: ObjectKind,
    /// Its name in the files.
    pub key: String,
    /// Its name in the cluster.
    pub name: String,
    pub external: bool,
    /// The file's content (empty for an external one).
    pub data: Vec<u8>,
    pub labels: BTreeMap<String, String>,
}

fn declared(kind: ObjectKind, extras: &Extras) -> BTreeMap<String, TopObject> {
    let top = match kind {
        ObjectKind::Config => &extras.configs,
        _ => &extras.secrets,
    };
    top.iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
        .collect()
}

fn is_external(o: &TopObject) -> bool {
    matches!(
        o.external,
        Some(External::Bool(true)) | Some(External::Named { .. })
    )
}

/// The name in the cluster of the object declared as `key`.
fn cluster_name(stack: &str, key: &str, o: &TopObject) -> String {
    match (&o.external, &o.name) {
        (Some(External::Named { name }), _) => name.clone(),
        (_, Some(n)) => n.clone(),
        (Some(External::Bool(true)), None) => key.to_string(),
        _ => format!("{stack}_{key}"),
    }
}

/// The top-level secrets (`kind` Secret) or configs of the files, checked and read
/// (files relative to `dir`): a mistake in any is an error naming it.
pub fn objects(
    stack: &str,
    kind: ObjectKind,
    extras: &Extras,
    dir: &Path,
) -> Result<Vec<StackObject>, String> {
    let mut out = Vec::new();
    for (key, o) in declared(kind, extras) {
        let bad = |what: &str| format!("{kind} {key}: {what}");
        for (field, set) in [
            ("environment", o.environment.is_some()),
            ("driver", o.driver.is_some()),
            ("template_driver", o.template_driver.is_some()),
        ] {
            if set {
                return Err(bad(&format!("{field} is not supported by stack deploy")));
            }
        }
        let external = is_external(&o);
        let mut labels: BTreeMap<String, String> = match &o.labels {
            None => BTreeMap::new(),
            Some(LabelList::List(l)) => l
                .iter()
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap_or((l, ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
            Some(LabelList::Map(m)) => m.iter().map(|(k, v)| (k.clone(), v.text())).collect(),
        };
        let data = match (&o.file, external) {
            (Some(_), true) => {
                return Err(bad(
                    "conflicting parameters \"external\" and \"file\" specified",
                ))
            }
            (None, true) => {
                if !labels.is_empty() {
                    return Err(bad(
                        "conflicting parameters \"external\" and \"labels\" specified",
                    ));
                }
                Vec::new()
            }
            (None, false) => return Err(bad("a file (or external: true) is required")),
            (Some(f), false) => {
                let path = dir.join(f);
                let data = std::fs::read(&path)
                    .map_err(|e| bad(&format!("file {}: {e}", path.display())))?;
                if let Some(problem) = DataObject::data_problem(&kind.to_string(), &data) {
                    return Err(bad(&problem));
                }
                data
            }
        };
        if !external {
            labels.insert(NAMESPACE_LABEL.into(), stack.into());
        }
        out.push(StackObject {
            kind,
            name: cluster_name(stack, &key, &o),
            key,
            external,
            data,
            labels,
        });
    }
    Ok(out)
}

/// A service's `secrets` (`kind` Secret) or `configs` as Docker's
/// `ContainerSpec.Secrets|Configs` (by name: the managers bind them to IDs). A source
/// not declared at the top level is an error naming it. A secret's relative target is
/// under `/run/secrets`, a config's under `/`, as Docker's.
pub fn references(
    stack: &str,
    service: &str,
    kind: ObjectKind,
    extras: &Extras,
) -> Result<Vec<Value>, String> {
    let uses = extras
        .services
        .as_ref()
        .and_then(|s| s.get(service))
        .and_then(|s| s.as_ref())
        .and_then(|s| match kind {
            ObjectKind::Config => s.configs.clone(),
            _ => s.secrets.clone(),
        })
        .unwrap_or_default();
    let top = declared(kind, extras);
    let (id_key, name_key) = match kind {
        ObjectKind::Config => ("ConfigName", "configs"),
        _ => ("SecretName", "secrets"),
    };
    uses.iter()
        .map(|u| {
            let long = match u {
                FileUse::Short(s) => LongFileUse {
                    source: s.clone(),
                    target: None,
                    uid: None,
                    gid: None,
                    mode: None,
                },
                FileUse::Long(l) => l.clone(),
            };
            let bad = |what: String| format!("service {service}: {name_key}: {what}");
            let decl = top.get(&long.source).ok_or_else(|| {
                bad(format!(
                    "undefined {kind} {:?} (declare it under the top-level {name_key})",
                    long.source
                ))
            })?;
            let mut target = long.target.clone().unwrap_or_else(|| long.source.clone());
            if kind == ObjectKind::Config && !target.starts_with('/') {
                target = format!("/{target}");
            }
            let mode = long
                .mode
                .as_ref()
                .map(parse_mode)
                .transpose()
                .map_err(|e| bad(format!("{}: {e}", long.source)))?
                .unwrap_or(0o444);
            let id_text = |v: &Option<Scalar>| v.as_ref().map_or("0".to_string(), Scalar::text);
            Ok(json!({
                id_key: cluster_name(stack, &long.source, decl),
                "File": {
                    "Name": target,
                    "UID": id_text(&long.uid),
                    "GID": id_text(&long.gid),
                    "Mode": mode,
                },
            }))
        })
        .collect()
}

/// A service's `deploy.placement.max_replicas_per_node` (0: none).
pub fn max_replicas_per_node(service: &str, extras: &Extras) -> u64 {
    extras
        .services
        .as_ref()
        .and_then(|s| s.get(service))
        .and_then(|s| s.as_ref())
        .and_then(|s| s.deploy.as_ref())
        .and_then(|d| d.placement.as_ref())
        .and_then(|p| p.max_replicas_per_node)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_as_docker_reads_them() {
        let t = |s: &str| parse_mode(&Scalar::Text(s.into()));
        assert_eq!(t("0440"), Ok(0o440));
        assert_eq!(t("0o400"), Ok(0o400));
        assert_eq!(t("288"), Ok(0o440));
        assert_eq!(parse_mode(&Scalar::Number(0o600)), Ok(0o600));
        assert!(t("0999").is_err());
        assert!(t("01000").is_err());
        assert!(t("rw").is_err());
    }

    #[test]
    fn strip_takes_only_the_keys_read_here() {
        let mut v = json!({
            "secrets": {"a": {"file": "a"}},
            "configs": {},
            "volumes": {"v": {}},
            "services": {"w": {"image": "x", "secrets": ["a"], "configs": [],
                "deploy": {"placement": {"constraints": ["c"], "max_replicas_per_node": 1}}}},
        });
        strip(&mut v);
        assert_eq!(
            v,
            json!({"volumes": {"v": {}}, "services": {"w": {"image": "x",
                "deploy": {"placement": {"constraints": ["c"]}}}}})
        );
    }
}
