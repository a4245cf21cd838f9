//! `--secret` / `--config` (and `--secret-add` / `--config-add`): Docker's short form
//! (`NAME`) and long form (`source=NAME,target=PATH,uid=N,gid=N,mode=0400`).

use shoal_cluster::store::data_object::DEFAULT_FILE_MODE;
use shoal_cluster::store::FileReference;

/// Which flag a value came from (they differ in the default target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    Secret,
    Config,
}

impl FileKind {
    fn flag(self) -> &'static str {
        match self {
            FileKind::Secret => "--secret",
            FileKind::Config => "--config",
        }
    }
}

/// One `--secret` / `--config` value. The reference's `name` holds the secret's or
/// config's name (or ID) as given; the manager binds it to the stored object. The
/// default target: a secret's name (under `/run/secrets`), `/<name>` for a config.
pub(super) fn parse_file_reference(kind: FileKind, value: &str) -> Result<FileReference, String> {
    let flag = kind.flag();
    let mut source = None;
    let mut target = None;
    let mut uid = "0".to_string();
    let mut gid = "0".to_string();
    let mut mode = DEFAULT_FILE_MODE;
    if !value.contains('=') {
        source = Some(value.to_string());
    } else {
        for field in value.split(',') {
            let (key, v) = field.split_once('=').ok_or_else(|| {
                format!("invalid field {field:?} in {flag} {value:?}: expected KEY=VALUE")
            })?;
            match key.trim().to_ascii_lowercase().as_str() {
                "source" | "src" => source = Some(v.to_string()),
                "target" => target = Some(v.to_string()),
                "uid" => uid = v.to_string(),
                "gid" => gid = v.to_string(),
                "mode" => {
                    mode = u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| {
                            format!("invalid mode {v:?} in {flag} {value:?}: an octal file mode such as 0400")
                        })?
                }
                other => {
                    return Err(format!(
                        "invalid field {other:?} in {flag} {value:?}: expected source, target, uid, gid or mode"
                    ))
                }
            }
        }
    }
    let source = source
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{flag} {value:?}: source is required"))?;
    let target = target.unwrap_or_else(|| match kind {
        FileKind::Secret => source.clone(),
        FileKind::Config => format!("/{source}"),
    });
    let reference = FileReference {
        id: String::new(),
        name: source,
        target,
        uid,
        gid,
        mode,
    };
    if let Some(p) = reference.problem() {
        return Err(format!("{flag} {value:?}: {p}"));
    }
    Ok(reference)
}

/// Every value of one repeatable flag.
pub(super) fn parse_file_references(
    kind: FileKind,
    values: &[String],
) -> Result<Vec<FileReference>, String> {
    values
        .iter()
        .map(|v| parse_file_reference(kind, v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_form_names_the_secret_and_its_file() {
        let r = parse_file_reference(FileKind::Secret, "my_mysql_password").unwrap();
        assert_eq!(
            (
                r.name.as_str(),
                r.target.as_str(),
                r.uid.as_str(),
                r.gid.as_str(),
                r.mode
            ),
            ("my_mysql_password", "my_mysql_password", "0", "0", 0o444)
        );
        assert_eq!(r.container_path(), "/run/secrets/my_mysql_password");
        let c = parse_file_reference(FileKind::Config, "registry_conf").unwrap();
        assert_eq!(c.container_path(), "/registry_conf");
    }

    #[test]
    fn the_long_form_sets_target_owner_and_mode() {
        let r = parse_file_reference(
            FileKind::Secret,
            "source=my_mysql_password,target=mysql_pw,uid=999,gid=998,mode=0400",
        )
        .unwrap();
        assert_eq!(
            (
                r.name.as_str(),
                r.target.as_str(),
                r.uid.as_str(),
                r.gid.as_str(),
                r.mode
            ),
            ("my_mysql_password", "mysql_pw", "999", "998", 0o400)
        );
        let c = parse_file_reference(FileKind::Config, "src=conf,target=/etc/registry/config.yml")
            .unwrap();
        assert_eq!(c.container_path(), "/etc/registry/config.yml");
    }

    #[test]
    fn bad_values_are_refused_with_the_flag() {
        for (bad, why) in [
            ("target=x", "source is required"),
            ("source=a,mode=0999", "invalid mode"),
            ("source=a,mode=rw", "invalid mode"),
            ("source=a,uid=root", "uid"),
            ("source=a,colour=red", "invalid field"),
            ("source=a,target=../etc/passwd", "not a file path"),
            ("source=a,target", "expected KEY=VALUE"),
        ] {
            let err = parse_file_reference(FileKind::Secret, bad).unwrap_err();
            assert!(
                err.contains("--secret") && err.contains(why),
                "{bad}: {err}"
            );
        }
    }
}
