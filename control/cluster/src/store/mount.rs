//! A service's mounts (Docker's `ContainerSpec.Mounts`): a named or anonymous volume
//! that the node's dockerd creates on first use (with the driver and options given), a
//! host path bound into the container, or a tmpfs. Carried out by the executor when it
//! makes a task's container.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// `type=` of `--mount`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    #[default]
    Volume,
    Bind,
    Tmpfs,
}

impl MountKind {
    /// Docker's word.
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Volume => "volume",
            MountKind::Bind => "bind",
            MountKind::Tmpfs => "tmpfs",
        }
    }

    pub fn parse(text: &str) -> Option<MountKind> {
        match text {
            "volume" => Some(MountKind::Volume),
            "bind" => Some(MountKind::Bind),
            "tmpfs" => Some(MountKind::Tmpfs),
            _ => None,
        }
    }
}

/// One mount of a task's container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Mount {
    pub kind: MountKind,
    /// A volume's name (empty: an anonymous volume), a bind's host path; empty for a
    /// tmpfs.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// The absolute path in the container.
    pub target: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// `volume-driver`; empty: dockerd's default (`local`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub volume_driver: String,
    /// `volume-opt=K=V`: the driver's options for the volume it creates.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_options: BTreeMap<String, String>,
    /// `tmpfs-size`, in bytes; None: the kernel's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<u64>,
    /// `tmpfs-mode`, the permission bits of the tmpfs's root; None: 1777.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmpfs_mode: Option<u32>,
}

impl Mount {
    /// Why this mount cannot be made; None: it can.
    pub fn problem(&self) -> Option<String> {
        let target = &self.target;
        if !target.starts_with('/') || target.contains('\0') {
            return Some(format!(
                "mount target {target:?} is not an absolute path in the container"
            ));
        }
        if target.split('/').any(|part| part == "..") {
            return Some(format!("mount target {target:?} must not contain \"..\""));
        }
        let volume_only = !self.volume_driver.is_empty() || !self.volume_options.is_empty();
        let tmpfs_only = self.tmpfs_size.is_some() || self.tmpfs_mode.is_some();
        match self.kind {
            MountKind::Volume => {
                if tmpfs_only {
                    return Some(format!(
                        "mount {target}: tmpfs options are for type=tmpfs only"
                    ));
                }
                let name_ok = self.source.chars().enumerate().all(|(i, c)| {
                    c.is_ascii_alphanumeric() || (i > 0 && matches!(c, '_' | '.' | '-'))
                });
                if !name_ok {
                    return Some(format!(
                        "mount {target}: invalid volume name {:?} (letters, digits, _ . - and not starting with one of _ . -)",
                        self.source
                    ));
                }
            }
            MountKind::Bind => {
                if volume_only || tmpfs_only {
                    return Some(format!(
                        "mount {target}: volume and tmpfs options are not for type=bind"
                    ));
                }
                if !self.source.starts_with('/') {
                    return Some(format!(
                        "mount {target}: a bind's source must be an absolute path on the node, not {:?}",
                        self.source
                    ));
                }
            }
            MountKind::Tmpfs => {
                if volume_only {
                    return Some(format!(
                        "mount {target}: volume options are for type=volume only"
                    ));
                }
                if !self.source.is_empty() {
                    return Some(format!("mount {target}: a tmpfs has no source"));
                }
                if self.tmpfs_mode.is_some_and(|m| m > 0o7777) {
                    return Some(format!("mount {target}: tmpfs-mode is not a file mode"));
                }
            }
        }
        None
    }
}

/// Checks a service's mounts: each valid, no two on the same target.
pub fn check_mounts(mounts: &[Mount]) -> Result<(), String> {
    let mut targets = BTreeSet::new();
    for m in mounts {
        if let Some(p) = m.problem() {
            return Err(p);
        }
        if !targets.insert(m.target.trim_end_matches('/')) {
            return Err(format!("mount target {} is used more than once", m.target));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: MountKind, source: &str, target: &str) -> Mount {
        Mount {
            kind,
            source: source.into(),
            target: target.into(),
            ..Default::default()
        }
    }

    #[test]
    fn valid_mounts_pass() {
        let mut tmpfs = mount(MountKind::Tmpfs, "", "/scratch");
        tmpfs.tmpfs_size = Some(1 << 20);
        tmpfs.tmpfs_mode = Some(0o700);
        let mut vol = mount(MountKind::Volume, "data", "/data");
        vol.volume_options.insert("type".into(), "tmpfs".into());
        check_mounts(&[
            vol,
            mount(MountKind::Volume, "", "/anon"),
            mount(MountKind::Bind, "/srv/www", "/www"),
            tmpfs,
        ])
        .unwrap();
    }

    #[test]
    fn bad_mounts_are_refused_saying_why() {
        let mut tmpfs_with_driver = mount(MountKind::Tmpfs, "", "/t");
        tmpfs_with_driver.volume_driver = "local".into();
        let mut volume_with_size = mount(MountKind::Volume, "v", "/v");
        volume_with_size.tmpfs_size = Some(1);
        for (m, why) in [
            (mount(MountKind::Volume, "v", "data"), "absolute path"),
            (mount(MountKind::Volume, "v", "/a/../b"), ".."),
            (mount(MountKind::Volume, "-v", "/v"), "invalid volume name"),
            (mount(MountKind::Volume, "a/b", "/v"), "invalid volume name"),
            (
                mount(MountKind::Bind, "rel", "/b"),
                "absolute path on the node",
            ),
            (mount(MountKind::Tmpfs, "x", "/t"), "no source"),
            (tmpfs_with_driver, "volume options"),
            (volume_with_size, "tmpfs options"),
        ] {
            let err = check_mounts(&[m]).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let err = check_mounts(&[
            mount(MountKind::Volume, "a", "/d"),
            mount(MountKind::Tmpfs, "", "/d/"),
        ])
        .unwrap_err();
        assert!(err.contains("more than once"), "{err}");
    }
}
