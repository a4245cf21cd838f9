//! `--mount` (and `--mount-add`): Docker's CSV form,
//! `type=volume|bind|tmpfs,source=,target=,readonly[,volume-driver=,volume-opt=K=V,
//! tmpfs-size=,tmpfs-mode=]`, read into the spec's [`Mount`].

use shoal_cluster::store::{Mount, MountKind};

/// A size as Docker reads a memory size: bytes, or a number with a binary unit
/// (`k`, `m`, `g`, `t`, optionally followed by `b` or `ib`; `64m` is 64 MiB).
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => {
            return Err(format!(
                "invalid size {text:?}: a number of bytes, or with k, m, g or t"
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("invalid size {text:?}: a number of bytes, or with k, m, g or t"))
}

/// `readonly`, `readonly=true|false|1|0`.
fn parse_bool(key: &str, value: Option<&str>) -> Result<bool, String> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(v) => Err(format!("invalid value {v:?} for {key}: true or false")),
    }
}

/// One `--mount` value.
pub(super) fn parse_mount<'a>(value: &'a str) -> Result<Mount, String> {
    let bad = |why: String| format!("invalid --mount {value:?}: {why}");
    let mut mount = Mount::default();
    let mut kind = None;
    let mut target = None;
    for field in value.split(',') {
        let (key, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v)),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let need = |v: Option<&'a str>| v.ok_or_else(|| bad(format!("{key} needs a value")));
        match key.as_str() {
            "type" => {
                let t = need(v)?;
                kind = Some(MountKind::parse(t).ok_or_else(|| {
                    bad(format!("type {t:?} is not one of volume, bind, tmpfs"))
                })?);
            }
            "source" | "src" => mount.source = need(v)?.to_string(),
            "target" | "destination" | "dst" => target = Some(need(v)?.to_string()),
            "readonly" | "ro" => mount.read_only = parse_bool(&key, v).map_err(bad)?,
            "volume-driver" => mount.volume_driver = need(v)?.to_string(),
            "volume-opt" => {
                let (k, v) = need(v)?
                    .split_once('=')
                    .ok_or_else(|| bad("volume-opt takes K=V".into()))?;
                mount.volume_options.insert(k.to_string(), v.to_string());
            }
            "tmpfs-size" => mount.tmpfs_size = Some(parse_size(need(v)?).map_err(bad)?),
            "tmpfs-mode" => {
                let m = need(v)?;
                mount.tmpfs_mode = Some(
                    u32::from_str_radix(m, 8)
                        .map_err(|_| bad(format!("tmpfs-mode {m:?} is not an octal mode")))?,
                );
            }
            "" => return Err(bad("an empty field".into())),
            other => {
                return Err(bad(format!(
                    "field {other:?} is not supported (type, source, target, readonly, volume-driver, volume-opt, tmpfs-size, tmpfs-mode are)"
                )))
            }
        }
    }
    mount.kind = kind.unwrap_or_default();
    mount.target = target.ok_or_else(|| bad("target is required".into()))?;
    if let Some(p) = mount.problem() {
        return Err(bad(p));
    }
    Ok(mount)
}

/// Every value of `--mount` / `--mount-add`.
pub(super) fn parse_mounts(values: &[String]) -> Result<Vec<Mount>, String> {
    values.iter().map(|v| parse_mount(v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_reads_its_fields() {
        let v = parse_mount("type=volume,source=data,target=/data,volume-driver=local,volume-opt=type=tmpfs,volume-opt=device=tmpfs").unwrap();
        assert_eq!(v.kind, MountKind::Volume);
        assert_eq!((v.source.as_str(), v.target.as_str()), ("data", "/data"));
        assert_eq!(v.volume_driver, "local");
        assert_eq!(v.volume_options["type"], "tmpfs");
        assert_eq!(v.volume_options["device"], "tmpfs");
        assert!(!v.read_only);
        let b = parse_mount("type=bind,src=/srv/conf,dst=/etc/app,readonly").unwrap();
        assert_eq!(
            (b.kind, b.source.as_str(), b.target.as_str(), b.read_only),
            (MountKind::Bind, "/srv/conf", "/etc/app", true)
        );
        let t = parse_mount("type=tmpfs,target=/scratch,tmpfs-size=64m,tmpfs-mode=1770").unwrap();
        assert_eq!(
            (t.kind, t.tmpfs_size, t.tmpfs_mode),
            (MountKind::Tmpfs, Some(64 << 20), Some(0o1770))
        );
        // Docker's default type is a volume; no source: an anonymous one.
        let a = parse_mount("target=/cache,ro=false").unwrap();
        assert_eq!(
            (a.kind, a.source.as_str(), a.read_only),
            (MountKind::Volume, "", false)
        );
    }

    #[test]
    fn sizes_read_as_docker_reads_them() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1k").unwrap(), 1024);
        assert_eq!(parse_size("64MB").unwrap(), 64 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("1.5x").is_err());
        assert!(parse_size("m").is_err());
    }

    #[test]
    fn bad_values_are_refused_naming_the_value() {
        for (bad, why) in [
            ("type=volume,source=data", "target is required"),
            ("type=nfs,target=/d", "not one of volume"),
            (
                "type=bind,source=rel,target=/d",
                "absolute path on the node",
            ),
            ("type=tmpfs,source=x,target=/d", "no source"),
            (
                "type=bind,source=/a,target=/d,bind-propagation=shared",
                "not supported",
            ),
            ("type=volume,target=/d,volume-opt=x", "K=V"),
            ("type=tmpfs,target=/d,tmpfs-size=lots", "invalid size"),
            ("type=tmpfs,target=/d,tmpfs-mode=9", "octal"),
            ("type=volume,target=/d,readonly=maybe", "true or false"),
            ("target=relative", "absolute path"),
        ] {
            let err = parse_mount(bad).unwrap_err();
            assert!(err.contains(bad) && err.contains(why), "{bad}: {err}");
        }
    }
}
