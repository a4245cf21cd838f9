//! The container settings of a service (`--entrypoint`, `--user`, `--workdir`,
//! `--hostname`, `--dns*`, `--host`, `--init`, `--stop-signal`, `--container-label`,
//! `--cap-add`, `--cap-drop`, `--ulimit`, `--sysctl`, `--privileged`, `--device`,
//! network aliases): how their flags are read and checked, the same way by the CLI
//! and by the manager that stores them, and what `service update` asks to change.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};
use shoal_cluster::store::{
    check_devices, check_mounts, sysctl_problem, ulimit_problem, ContainerOptions, Device, Mount,
    Ulimit,
};

/// `--host HOST:IP` (or `HOST=IP`, the form that also takes an IPv6 address in
/// brackets) as Docker stores it: `IP HOST`.
pub fn parse_host(text: &str) -> Result<String, String> {
    let bad = || format!("invalid --host {text:?}: expected HOST:IP");
    let (host, ip) = text
        .split_once('=')
        .or_else(|| text.split_once(':'))
        .ok_or_else(bad)?;
    let host = host.trim();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    let ip = ip.trim();
    if ip == "host-gateway" {
        return Err(format!(
            "invalid --host {text:?}: host-gateway is not supported (a task has no Docker bridge); give an address"
        ));
    }
    let ip = ip
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(ip);
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("invalid --host {text:?}: {ip:?} is not an IP address"))?;
    Ok(format!("{ip} {host}"))
}

/// Linux's signal names, without `SIG` (Docker's list).
const SIGNALS: [&str; 34] = [
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "RTMAX", "RTMIN", "SEGV", "STKFLT", "STOP", "SYS",
    "TERM", "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH",
];

/// `--stop-signal`: a name (`SIGTERM`, `term`, `RTMIN+3`) or a number (1-64), as
/// dockerd accepts it.
pub fn check_stop_signal(text: &str) -> Result<(), String> {
    let bad = || format!("invalid --stop-signal {text:?}: not a signal name or number");
    if let Ok(n) = text.parse::<u32>() {
        return if (1..=64).contains(&n) {
            Ok(())
        } else {
            Err(bad())
        };
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let known = SIGNALS.contains(&name)
        || ["RTMIN+", "RTMAX-"].iter().any(|p| {
            name.strip_prefix(p)
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| (1..=15).contains(&n))
        });
    if known {
        Ok(())
    } else {
        Err(bad())
    }
}

/// A network alias: a DNS name (labels of letters, digits, `-` and `_`).
pub fn check_alias(alias: &str) -> Result<(), String> {
    let ok = !alias.is_empty()
        && alias.len() <= 253
        && alias.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid network alias {alias:?}: a DNS name (letters, digits, '-', '_' in dot-separated labels)"
        ))
    }
}

/// Checks a service's container settings as a whole (what create and update store).
pub fn check_container_options(o: &ContainerOptions) -> Result<(), String> {
    if !o.dir.is_empty() && !o.dir.starts_with('/') {
        return Err(format!(
            "invalid --workdir {:?}: it must be an absolute path",
            o.dir
        ));
    }
    if o.user.contains(char::is_whitespace) {
        return Err(format!("invalid --user {:?}", o.user));
    }
    shoal_orchestrator::task_template::check(&o.hostname)
        .map_err(|e| format!("invalid --hostname: {e}"))?;
    if !o.stop_signal.is_empty() {
        check_stop_signal(&o.stop_signal)?;
    }
    for ns in &o.dns.nameservers {
        ns.parse::<IpAddr>()
            .map_err(|_| format!("invalid --dns {ns:?}: not an IP address"))?;
    }
    for domain in &o.dns.search {
        let ok = domain == "." || check_alias(domain.strip_suffix('.').unwrap_or(domain)).is_ok();
        if !ok {
            return Err(format!(
                "invalid --dns-search {domain:?}: not a domain name"
            ));
        }
    }
    for option in &o.dns.options {
        if option.is_empty() || option.contains(char::is_whitespace) {
            return Err(format!("invalid --dns-option {option:?}"));
        }
    }
    for entry in &o.hosts {
        let mut words = entry.split_whitespace();
        let ip_ok = words.next().is_some_and(|ip| ip.parse::<IpAddr>().is_ok());
        if !ip_ok || words.next().is_none() {
            return Err(format!(
                "invalid host entry {entry:?}: expected IP HOSTNAME"
            ));
        }
    }
    if o.labels.keys().any(|k| k.is_empty()) {
        return Err("invalid --container-label: the key is empty".into());
    }
    check_mounts(&o.mounts).map_err(|e| format!("invalid --mount: {e}"))?;
    for c in &o.cap_add {
        check_capability(c).map_err(|e| format!("invalid --cap-add: {e}"))?;
    }
    for c in &o.cap_drop {
        check_capability(c).map_err(|e| format!("invalid --cap-drop: {e}"))?;
    }
    for (name, u) in &o.ulimits {
        if let Some(p) = ulimit_problem(name, u) {
            return Err(format!("invalid --ulimit: {p}"));
        }
    }
    for name in o.sysctls.keys() {
        if let Some(p) = sysctl_problem(name) {
            return Err(format!("invalid --sysctl: {p}"));
        }
    }
    check_devices(&o.devices).map_err(|e| format!("invalid --device {e}"))?;
    Ok(())
}

/// `--ulimit NAME=SOFT[:HARD]` (the hard limit is the soft one when not given).
pub fn parse_ulimit(text: &str) -> Result<(String, Ulimit), String> {
    let bad = |why: &str| format!("invalid --ulimit {text:?}: {why}");
    let (name, values) = text
        .split_once('=')
        .ok_or_else(|| bad("expected NAME=SOFT[:HARD]"))?;
    let number = |v: &str| {
        v.trim()
            .parse::<i64>()
            .map_err(|_| bad(&format!("{v:?} is not a number")))
    };
    let (soft, hard) = match values.split_once(':') {
        Some((s, h)) => (number(s)?, number(h)?),
        None => {
            let v = number(values)?;
            (v, v)
        }
    };
    let u = Ulimit { soft, hard };
    let name = name.trim().to_string();
    if let Some(p) = ulimit_problem(&name, &u) {
        return Err(bad(&p));
    }
    Ok((name, u))
}

/// `--sysctl K=V`, with the names Docker allows for services.
pub fn parse_sysctl(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("sysctl '{text}' is not whitelisted"))?;
    if let Some(p) = sysctl_problem(k) {
        return Err(p);
    }
    Ok((k.to_string(), v.to_string()))
}

/// The Linux capabilities (without `CAP_`), as the kernel numbers them.
const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A stored capability: `ALL`, or a known one in Docker's form `CAP_NAME`.
fn check_capability(c: &str) -> Result<(), String> {
    let known = c == "ALL"
        || c.strip_prefix("CAP_")
            .is_some_and(|name| CAPABILITIES.contains(&name));
    if known {
        Ok(())
    } else {
        Err(format!("unknown capability {c:?}"))
    }
}

/// A capability as Docker stores it: upper case with the `CAP_` prefix (`ALL` kept),
/// checked against the kernel's list.
pub fn normalize_capability(text: &str) -> Result<String, String> {
    let upper = text.trim().to_ascii_uppercase();
    let c = if upper == "ALL" || upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    check_capability(&c).map_err(|_| format!("unknown capability {text:?}"))?;
    Ok(c)
}

/// Sorted, each once, `ALL` standing alone when given.
fn tidy_capabilities(list: &mut Vec<String>) {
    list.sort();
    list.dedup();
    if list.iter().any(|c| c == "ALL") {
        *list = vec!["ALL".to_owned()];
    }
}

/// `--cap-add` and `--cap-drop` of `service create`, as Docker makes them effective:
/// normalized, sorted, `ALL` trumping the others of its list, and a capability both
/// added and dropped only added.
pub fn effective_capabilities(
    add: &[String],
    drop: &[String],
) -> Result<(Vec<String>, Vec<String>), String> {
    let read = |list: &[String], flag: &str| -> Result<Vec<String>, String> {
        let mut caps = list
            .iter()
            .map(|c| normalize_capability(c).map_err(|e| format!("invalid {flag}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        tidy_capabilities(&mut caps);
        Ok(caps)
    };
    let add = read(add, "--cap-add")?;
    let mut drop = read(drop, "--cap-drop")?;
    drop.retain(|c| !add.contains(c));
    Ok((add, drop))
}

/// `service update`'s container flags: every field left alone when it is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerChanges {
    /// `--entrypoint`, split (empty: back to the image's).
    pub entrypoint: Option<Vec<String>>,
    pub user: Option<String>,
    pub dir: Option<String>,
    pub hostname: Option<String>,
    pub dns_add: Vec<String>,
    pub dns_rm: Vec<String>,
    pub dns_search_add: Vec<String>,
    pub dns_search_rm: Vec<String>,
    pub dns_option_add: Vec<String>,
    pub dns_option_rm: Vec<String>,
    /// `--host-add`, already in the stored form `IP HOST`.
    pub host_add: Vec<String>,
    /// `--host-rm HOST` (every entry of HOST) or `HOST:IP` (that one).
    pub host_rm: Vec<String>,
    pub init: Option<bool>,
    pub stop_signal: Option<String>,
    pub label_add: BTreeMap<String, String>,
    pub label_rm: Vec<String>,
    /// `--mount-add`: a mount on a target the service already mounts replaces it.
    pub mount_add: Vec<Mount>,
    /// `--mount-rm TARGET`.
    pub mount_rm: Vec<String>,
    /// `--read-only[=BOOL]`.
    pub read_only: Option<bool>,
    /// `--limit-cpu`, `--limit-memory`, `--limit-pids` (0: no limit any more).
    pub limit_nano_cpus: Option<u64>,
    pub limit_memory_bytes: Option<u64>,
    pub limit_pids: Option<u64>,
    /// `--reserve-cpu`, `--reserve-memory` (0: no reservation any more).
    pub reserve_nano_cpus: Option<u64>,
    pub reserve_memory_bytes: Option<u64>,
    /// `--cap-add` on update, normalized: added, and taken off the dropped ones.
    pub cap_add: Vec<String>,
    /// `--cap-drop` on update, normalized: dropped, and taken off the added ones
    /// (unless also given to `--cap-add`).
    pub cap_drop: Vec<String>,
    /// `--ulimit-add` (replacing the same name) and `--ulimit-rm NAME`.
    pub ulimit_add: BTreeMap<String, Ulimit>,
    pub ulimit_rm: Vec<String>,
    /// `--sysctl-add K=V` and `--sysctl-rm K`.
    pub sysctl_add: BTreeMap<String, String>,
    pub sysctl_rm: Vec<String>,
    /// `--privileged[=BOOL]`.
    pub privileged: Option<bool>,
    /// `--device-add`: a device at a path in the container the service already has
    /// replaces it.
    pub device_add: Vec<Device>,
    /// `--device-rm PATH_IN_CONTAINER`.
    pub device_rm: Vec<String>,
}

/// `list` with `add` appended and `rm` taken out (Docker's order), each entry once.
fn add_rm(list: &mut Vec<String>, add: &[String], rm: &[String]) {
    list.extend(add.iter().cloned());
    list.retain(|e| !rm.contains(e));
    let mut seen = Vec::new();
    list.retain(|e| {
        let first = !seen.contains(e);
        seen.push(e.clone());
        first
    });
}

/// `hosts` (`IP HOST [ALIAS...]` entries) without the names `--host-rm` gives.
fn remove_hosts(hosts: &mut Vec<String>, rm: &[String]) {
    for r in rm {
        let (name, ip) = match r.split_once(':') {
            Some((n, ip)) => (n, Some(ip)),
            None => (r.as_str(), None),
        };
        *hosts = hosts
            .iter()
            .filter_map(|entry| {
                let mut words = entry.split_whitespace();
                let addr = words.next()?;
                let ip_matches = ip.is_none_or(|ip| {
                    let ip = ip.trim_start_matches('[').trim_end_matches(']');
                    ip.parse::<IpAddr>().ok() == addr.parse::<IpAddr>().ok()
                });
                let names: Vec<&str> = words.filter(|w| !ip_matches || *w != name).collect();
                (!names.is_empty()).then(|| format!("{addr} {}", names.join(" ")))
            })
            .collect();
    }
}

impl ContainerChanges {
    /// `o` with the changes made (then checked by the caller as create's are).
    pub fn apply(&self, o: &mut ContainerOptions) {
        if let Some(e) = &self.entrypoint {
            o.entrypoint = e.clone();
        }
        if let Some(u) = &self.user {
            o.user = u.clone();
        }
        if let Some(d) = &self.dir {
            o.dir = d.clone();
        }
        if let Some(h) = &self.hostname {
            o.hostname = h.clone();
        }
        add_rm(&mut o.dns.nameservers, &self.dns_add, &self.dns_rm);
        add_rm(&mut o.dns.search, &self.dns_search_add, &self.dns_search_rm);
        add_rm(
            &mut o.dns.options,
            &self.dns_option_add,
            &self.dns_option_rm,
        );
        remove_hosts(&mut o.hosts, &self.host_rm);
        add_rm(&mut o.hosts, &self.host_add, &[]);
        if let Some(init) = self.init {
            o.init = Some(init);
        }
        if let Some(s) = &self.stop_signal {
            o.stop_signal = s.clone();
        }
        o.labels.extend(self.label_add.clone());
        for k in &self.label_rm {
            o.labels.remove(k);
        }
        // Docker's order: removals first, then additions (replacing the same target).
        let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
        o.mounts
            .retain(|m| !self.mount_rm.iter().any(|t| same(t, &m.target)));
        for added in &self.mount_add {
            o.mounts.retain(|m| !same(&m.target, &added.target));
            o.mounts.push(added.clone());
        }
        if let Some(r) = self.read_only {
            o.read_only = r;
        }
        for (given, limit) in [
            (self.limit_nano_cpus, &mut o.limits.nano_cpus),
            (self.limit_memory_bytes, &mut o.limits.memory_bytes),
            (self.limit_pids, &mut o.limits.pids),
            (self.reserve_nano_cpus, &mut o.reservations.nano_cpus),
            (self.reserve_memory_bytes, &mut o.reservations.memory_bytes),
        ] {
            if let Some(v) = given {
                *limit = v;
            }
        }
        // Docker's update: a capability given to both flags is added.
        for c in &self.cap_drop {
            if !self.cap_add.contains(c) {
                o.cap_add.retain(|a| a != c);
                o.cap_drop.push(c.clone());
            }
        }
        for c in &self.cap_add {
            o.cap_drop.retain(|d| d != c);
            o.cap_add.push(c.clone());
        }
        tidy_capabilities(&mut o.cap_add);
        tidy_capabilities(&mut o.cap_drop);
        let added = o.cap_add.clone();
        o.cap_drop.retain(|c| !added.contains(c));
        // Docker's order: removals, then additions.
        for name in &self.ulimit_rm {
            o.ulimits.remove(name);
        }
        o.ulimits.extend(self.ulimit_add.clone());
        for name in &self.sysctl_rm {
            o.sysctls.remove(name);
        }
        o.sysctls.extend(self.sysctl_add.clone());
        if let Some(p) = self.privileged {
            o.privileged = p;
        }
        // As mounts: removals, then additions (replacing the same path in the container).
        o.devices
            .retain(|d| !self.device_rm.contains(&d.path_in_container));
        for added in &self.device_add {
            o.devices
                .retain(|d| d.path_in_container != added.path_in_container);
            o.devices.push(added.clone());
        }
    }
}

#[cfg(test)]
mod tests;
