//! Reading compose files (interpolated, then checked against the crate's types and
//! shoal's own) and merging several of them as docker does.

use std::{collections::BTreeMap, path::Path};

use docker_compose_types::Compose;
use serde_json::{Map, Value};

use super::super::extras::{self, Extras};
use super::interpolation::{interpolate, parse_env_file};

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
