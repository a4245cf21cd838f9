//! A host device given to a service's tasks (`service create --device`, compose
//! `devices:`): Docker's `HostConfig.Devices[]` of each task container. Docker's
//! `ContainerSpec` has no such field (moby#24862); shoal carries it in its own spec.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One `--device PATH_ON_HOST[:PATH_IN_CONTAINER[:CGROUP_PERMISSIONS]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Device {
    /// The device (or a directory of devices) on the node.
    pub path_on_host: String,
    /// Where the task sees it.
    pub path_in_container: String,
    /// What the task's devices cgroup allows: `r`ead, `w`rite, `m`knod, each at most once.
    pub cgroup_permissions: String,
}

/// The permissions Docker gives a device when none are said.
pub const DEFAULT_DEVICE_PERMISSIONS: &str = "rwm";

/// Whether `mode` is a combination of `r`, `w` and `m`, each at most once (Docker's
/// `validDeviceMode`).
fn valid_permissions(mode: &str) -> bool {
    !mode.is_empty()
        && mode.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
        && ['r', 'w', 'm']
            .iter()
            .all(|c| mode.chars().filter(|m| m == c).count() <= 1)
}

impl Device {
    /// `PATH_ON_HOST[:PATH_IN_CONTAINER[:CGROUP_PERMISSIONS]]`, as `docker run --device`
    /// reads it: `HOST:PERMISSIONS` when the second part is a set of permissions, the
    /// path in the container the host's when not given, permissions `rwm` when not
    /// given. Checked ([`Device::problem`]).
    pub fn parse(text: &str) -> Result<Device, String> {
        let bad = |why: &str| format!("invalid --device {text:?}: {why}");
        let parts: Vec<&str> = text.split(':').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad(
                "expected PATH_ON_HOST[:PATH_IN_CONTAINER[:CGROUP_PERMISSIONS]] with no empty part",
            ));
        }
        let (host, container, permissions) = match parts.as_slice() {
            [host] => (*host, *host, DEFAULT_DEVICE_PERMISSIONS),
            [host, mode] if valid_permissions(mode) => (*host, *host, *mode),
            [host, container] => (*host, *container, DEFAULT_DEVICE_PERMISSIONS),
            [host, container, mode] => (*host, *container, *mode),
            _ => {
                return Err(bad(
                    "expected PATH_ON_HOST[:PATH_IN_CONTAINER[:CGROUP_PERMISSIONS]]",
                ))
            }
        };
        let d = Device {
            path_on_host: host.to_owned(),
            path_in_container: container.to_owned(),
            cgroup_permissions: permissions.to_owned(),
        };
        match d.problem() {
            Some(p) => Err(bad(&p)),
            None => Ok(d),
        }
    }

    /// Why this device cannot be given; None: it can.
    pub fn problem(&self) -> Option<String> {
        for (what, path) in [
            ("the path on the host", &self.path_on_host),
            ("the path in the container", &self.path_in_container),
        ] {
            if !path.starts_with('/') || path.contains('\0') || path.contains(':') {
                return Some(format!("{what} {path:?} is not an absolute path"));
            }
            if path.split('/').any(|part| part == "..") {
                return Some(format!("{what} {path:?} must not contain \"..\""));
            }
        }
        if !valid_permissions(&self.cgroup_permissions) {
            return Some(format!(
                "cgroup permissions {:?} are not a combination of r, w and m",
                self.cgroup_permissions
            ));
        }
        None
    }
}

/// `HOST:CONTAINER:PERMISSIONS`, the form `--device` takes.
impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.path_on_host, self.path_in_container, self.cgroup_permissions
        )
    }
}

/// A service's devices, each checked, no two at the same path in the container.
pub fn check_devices(devices: &[Device]) -> Result<(), String> {
    for (i, d) in devices.iter().enumerate() {
        if let Some(p) = d.problem() {
            return Err(format!("{d}: {p}"));
        }
        if devices[..i]
            .iter()
            .any(|o| o.path_in_container == d.path_in_container)
        {
            return Err(format!(
                "{} is given twice as a path in the container",
                d.path_in_container
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(h: &str, c: &str, p: &str) -> Device {
        Device {
            path_on_host: h.into(),
            path_in_container: c.into(),
            cgroup_permissions: p.into(),
        }
    }

    #[test]
    fn forms_as_docker_run_reads_them() {
        for (text, want) in [
            ("/dev/null", dev("/dev/null", "/dev/null", "rwm")),
            (
                "/dev/null:/dev/xnull",
                dev("/dev/null", "/dev/xnull", "rwm"),
            ),
            ("/dev/null:r", dev("/dev/null", "/dev/null", "r")),
            ("/dev/null:mw", dev("/dev/null", "/dev/null", "mw")),
            ("/dev/fuse:/dev/f:rw", dev("/dev/fuse", "/dev/f", "rw")),
        ] {
            let d = Device::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(d, want, "{text}");
            assert_eq!(Device::parse(&d.to_string()).unwrap(), d);
        }
    }

    #[test]
    fn bad_devices_are_refused_saying_why() {
        for (text, says) in [
            ("", "no empty part"),
            ("dev/null", "not an absolute path"),
            ("/dev/null:xnull", "not an absolute path"),
            ("/dev/null::rw", "no empty part"),
            ("/dev/null:/dev/x:", "no empty part"),
            ("/dev/null:/dev/x:rx", "not a combination of r, w and m"),
            ("/dev/null:/dev/x:rr", "not a combination of r, w and m"),
            ("/dev/null:/dev/x:rw:m", "expected PATH_ON_HOST"),
            ("/dev/../etc/passwd", "\"..\""),
        ] {
            let e = Device::parse(text).unwrap_err();
            assert!(
                e.contains(says) && e.starts_with("invalid --device"),
                "{text}: {e}"
            );
        }
        let twice = [
            dev("/dev/null", "/dev/x", "rwm"),
            dev("/dev/zero", "/dev/x", "r"),
        ];
        assert!(check_devices(&twice).unwrap_err().contains("given twice"));
        assert!(check_devices(&twice[..1]).is_ok());
        assert!(check_devices(&[dev("/dev/null", "/dev/x", "q")]).is_err());
    }
}
