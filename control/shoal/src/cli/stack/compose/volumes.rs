//! The top-level `volumes` of the files, and a service's `volumes` entries as Docker's
//! `Mount`s.

use std::{collections::BTreeMap, path::Path};

use docker_compose_types::{Compose, ComposeVolume, ExternalVolume, Labels, MapOrEmpty, Volumes};
use serde_json::{json, Map, Value};

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
pub(super) fn mount(
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
