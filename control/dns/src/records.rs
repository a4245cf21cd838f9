//! The declared DNS state and the record table built from it.
//!
//! [`DnsState`] is what the control plane computes for a node (until it exists, the agent
//! reads it from a JSON file): services with their VIPs and tasks, and attachable
//! (non-task) containers with their addresses and network aliases, every address tagged
//! with the network it is on. [`RecordTable::build`] checks it and turns it into a table
//! of names per network; a state that contradicts itself is refused whole
//! ([`DnsStateError`]), so the caller keeps the last good table.
//!
//! # Names
//!
//! All names are case-insensitive and a trailing dot is optional. On each network a
//! service `web` is on, the table holds:
//!
//! | name | answer |
//! |---|---|
//! | `web` | the VIP on that network (vip mode), or the addresses of its healthy tasks there (dnsrr) |
//! | `tasks.web` | the addresses of its healthy tasks on that network |
//! | `web.<slot>.<taskid>`, `web.<slot>` | the task's addresses on that network (healthy or not) |
//! | `web.<taskid>` | the same for a global service's task (no slot) |
//!
//! A service of stack `app` named `web` is `app_web` in all of the above (task names
//! included: `app_web.1.<taskid>`, as Swarm names task containers). Its short name `web`
//! (and `tasks.web`) also works, on every network the service is on (each of which is a
//! network with a service of the stack, the service itself). Short names come second:
//! on a network where some other service, container or alias has the exact name, that
//! one answers, and on a network where two stacks' services share a short name it is
//! ambiguous and answers for neither (a container of stack `a` still finds `a_web`
//! through the short name on `a`'s own networks). An attachable container answers to its
//! name on every network it is on, and a network alias only on the alias's network;
//! several containers may share a name or alias on a network (Docker's round robin
//! aliases): the answer is all their addresses there.
//!
//! Reverse names (`d.c.b.a.in-addr.arpa`, `<32 nibbles>.ip6.arpa`) answer with a PTR to
//! the service name for a VIP, to `<service>.<slot>.<taskid>` (`<service>.<taskid>` for
//! a global service) for a task address, and to the container name for a container
//! address.
//!
//! # Scoping
//!
//! Every lookup is scoped to a set of networks (the asking container's): a name answers
//! with the records it has on those networks only. A name with no entry on any of them is
//! [`Lookup::NxDomain`] (the handler forwards it upstream, since it is not ours to deny); a
//! name with an entry but no record of the asked type is [`Lookup::NoData`] (e.g. AAAA
//! on an IPv4-only service, or a dnsrr service with no healthy task right now).
//! [`RecordTable::scope`] computes the set from the network the query arrived on and its
//! source address.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, RwLock};

use hickory_proto::rr::RecordType;
use serde::{Deserialize, Serialize};

/// Everything the resolver needs to know about a node's view of the cluster.
///
/// JSON, unknown fields refused:
///
/// ```json
/// {
///   "services": [
///     { "name": "web", "stack": "app", "endpoint_mode": "vip",
///       "vips": [{ "network": "front", "ip": "10.0.1.2" }],
///       "tasks": [
///         { "id": "k3l9x0", "slot": 1, "healthy": true,
///           "addresses": [{ "network": "front", "ip": "10.0.1.5" }] }
///       ] },
///     { "name": "db", "endpoint_mode": "dnsrr", "networks": ["back"], "tasks": [] }
///   ],
///   "containers": [
///     { "name": "debug", "addresses": [{ "network": "front", "ip": "10.0.1.9" }],
///       "aliases": [{ "network": "front", "alias": "toolbox" }] }
///   ]
/// }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsState {
    #[serde(default)]
    pub services: Vec<Service>,
    /// Attachable containers that are not tasks of a service.
    #[serde(default)]
    pub containers: Vec<Container>,
}

/// A service: its VIPs (vip mode) and its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The service's name; with `stack`, the short name (the full name is `<stack>_<name>`).
    pub name: String,
    #[serde(default)]
    pub stack: Option<String>,
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// One VIP per network the service is on (vip mode only).
    #[serde(default)]
    pub vips: Vec<NetAddr>,
    /// Networks the service is attached to, beyond those its VIPs and task addresses
    /// name. It lets a dnsrr service with no task running stay known (NODATA, not
    /// NXDOMAIN). In vip mode every network listed must have a VIP.
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub tasks: Vec<Task>,
}

/// How a service's name resolves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// `<service>` answers with the VIP on the asker's network.
    #[default]
    Vip,
    /// `<service>` answers with the addresses of the healthy tasks (DNS round robin).
    Dnsrr,
}

/// A task of a service (a running container).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub id: String,
    /// The replica slot; `None` for the tasks of a global service.
    #[serde(default)]
    pub slot: Option<u32>,
    /// Unhealthy tasks keep their task names but leave `<service>` (dnsrr) and
    /// `tasks.<service>`.
    #[serde(default = "default_true")]
    pub healthy: bool,
    pub addresses: Vec<NetAddr>,
}

fn default_true() -> bool {
    true
}

/// An attachable container that is not a task (`docker run --network <overlay>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub name: String,
    pub addresses: Vec<NetAddr>,
    #[serde(default)]
    pub aliases: Vec<NetAlias>,
}

/// An address on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetAddr {
    pub network: String,
    pub ip: IpAddr,
}

/// A container's extra name on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetAlias {
    pub network: String,
    pub alias: String,
}

/// Why a declared state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsStateError {
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("invalid network name {0:?}: must be 1-255 printable characters without spaces")]
    InvalidNetwork(String),
    #[error("service {0:?} is declared twice")]
    DuplicateService(String),
    #[error("task ID {0:?} is declared twice")]
    DuplicateTask(String),
    #[error("service {service:?}: {reason}")]
    Service { service: String, reason: String },
    #[error("container {container:?}: {reason}")]
    Container { container: String, reason: String },
    #[error("name {name:?} on network {network:?} is claimed by both {first} and {second}")]
    NameConflict {
        name: String,
        network: String,
        first: String,
        second: String,
    },
    #[error("address {ip} on network {network:?} is claimed by both {first} and {second}")]
    AddressConflict {
        ip: IpAddr,
        network: String,
        first: String,
        second: String,
    },
    #[error("{owner}: address {ip} cannot be a container's or service's address")]
    InvalidAddress { owner: String, ip: IpAddr },
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name has no entry on any of the networks in scope.
    NxDomain,
    /// The name is known in scope but has no record of the asked type.
    NoData,
    /// The records, in table order (the handler rotates them).
    Found(Vec<RecordData>),
}

/// One record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    /// An A (IPv4) or AAAA (IPv6) record.
    Addr(IpAddr),
    /// A PTR record's target, lowercase, without trailing dot.
    Name(String),
}

/// What kind of thing a name belongs to, to tell contradictions from shared names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Service,
    Tasks,
    Task,
    /// `<service>.<slot>`: two tasks may share a slot during an update.
    Slot(String),
    /// Container names and aliases: containers may share them (Docker's round robin).
    Shared,
}

#[derive(Debug, Clone)]
struct Entry {
    network: Arc<str>,
    kind: Kind,
    /// Who holds the name, for error messages.
    owner: String,
    addrs: Vec<IpAddr>,
}

#[derive(Debug, Clone)]
struct ShortEntry {
    network: Arc<str>,
    service: String,
    addrs: Vec<IpAddr>,
}

#[derive(Debug, Clone)]
struct PtrEntry {
    network: Arc<str>,
    target: String,
}

/// The container or task that holds an address.
#[derive(Debug, Clone)]
struct Owner {
    /// The network the address is on.
    network: Arc<str>,
    /// All the networks of the owner.
    networks: Vec<Arc<str>>,
}

/// The names and addresses of a [`DnsState`], by network. Immutable once built: updates
/// build a new table and swap it in ([`SharedTable`]).
#[derive(Debug, Clone, Default)]
pub struct RecordTable {
    exact: HashMap<String, Vec<Entry>>,
    short: HashMap<String, Vec<ShortEntry>>,
    ptr: HashMap<IpAddr, Vec<PtrEntry>>,
    owners: HashMap<IpAddr, Vec<Owner>>,
}

impl RecordTable {
    /// Checks `state` and builds its table, or says what contradicts itself.
    pub fn build(state: &DnsState) -> Result<RecordTable, DnsStateError> {
        Builder::default().build(state)
    }

    /// The records of `name` of type `qtype` on `networks`.
    ///
    /// `qtype` A and AAAA give addresses, PTR names (for reverse names), ANY everything
    /// the name has; any other type on a known name is [`Lookup::NoData`].
    pub fn lookup(&self, name: &str, qtype: RecordType, networks: &[String]) -> Lookup {
        let name = normalize(name);
        if let Some(ip) = parse_reverse(&name) {
            let mut targets: Vec<String> = Vec::new();
            for entry in self.ptr.get(&ip).into_iter().flatten() {
                if in_scope(&entry.network, networks) && !targets.contains(&entry.target) {
                    targets.push(entry.target.clone());
                }
            }
            if targets.is_empty() {
                return Lookup::NxDomain;
            }
            return match qtype {
                RecordType::PTR | RecordType::ANY => {
                    Lookup::Found(targets.into_iter().map(RecordData::Name).collect())
                }
                _ => Lookup::NoData,
            };
        }

        let mut known = false;
        let mut addrs: Vec<IpAddr> = Vec::new();
        let exact = self.exact.get(name.as_ref());
        let short = self.short.get(name.as_ref());
        if exact.is_none() && short.is_none() {
            return Lookup::NxDomain;
        }
        for network in networks {
            let mut found = false;
            for entry in exact.into_iter().flatten() {
                if *entry.network == **network {
                    found = true;
                    extend_unique(&mut addrs, &entry.addrs);
                }
            }
            if !found {
                for entry in short.into_iter().flatten() {
                    if *entry.network == **network {
                        found = true;
                        extend_unique(&mut addrs, &entry.addrs);
                    }
                }
            }
            known |= found;
        }
        if !known {
            return Lookup::NxDomain;
        }
        let wanted = |ip: &IpAddr| match qtype {
            RecordType::A => ip.is_ipv4(),
            RecordType::AAAA => ip.is_ipv6(),
            RecordType::ANY => true,
            _ => false,
        };
        let found: Vec<RecordData> = addrs
            .into_iter()
            .filter(wanted)
            .map(RecordData::Addr)
            .collect();
        if found.is_empty() {
            Lookup::NoData
        } else {
            Lookup::Found(found)
        }
    }

    /// The networks of the containers and tasks that hold `ip` (on any network), sorted.
    pub fn networks_of(&self, ip: IpAddr) -> Vec<String> {
        let mut networks = BTreeSet::new();
        for owner in self.owners.get(&ip).into_iter().flatten() {
            networks.extend(owner.networks.iter().map(|n| n.to_string()));
        }
        networks.into_iter().collect()
    }

    /// The networks a query from `src` arriving on `network`'s socket may see: `network`
    /// and every network of the container or task that holds `src` on `network`. A
    /// source the table does not know on `network` sees `network` only.
    ///
    /// Matching the owner on the arrival network (rather than [`Self::networks_of`]'s
    /// any network) keeps two networks with overlapping subnets apart.
    pub fn scope(&self, network: &str, src: IpAddr) -> Vec<String> {
        let mut networks = BTreeSet::new();
        networks.insert(network.to_string());
        for owner in self.owners.get(&src).into_iter().flatten() {
            if &*owner.network == network {
                networks.extend(owner.networks.iter().map(|n| n.to_string()));
            }
        }
        networks.into_iter().collect()
    }

    /// Whether the table has no names at all.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.short.is_empty() && self.ptr.is_empty()
    }
}

/// The current [`RecordTable`], swapped whole on update: a query takes the table as it
/// is when it starts, and the next query after [`SharedTable::store`] sees the new one.
#[derive(Debug, Default)]
pub struct SharedTable {
    current: RwLock<Arc<RecordTable>>,
}

impl SharedTable {
    pub fn new(table: RecordTable) -> Self {
        Self {
            current: RwLock::new(Arc::new(table)),
        }
    }

    /// The current table.
    pub fn load(&self) -> Arc<RecordTable> {
        // The lock only guards a pointer swap, so a poisoned lock still holds a whole table.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Makes `table` the current table.
    pub fn store(&self, table: RecordTable) {
        let table = Arc::new(table);
        let old = std::mem::replace(
            &mut *self
                .current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            table,
        );
        // The old table is freed here, outside the lock, unless a query still holds it.
        drop(old);
    }

    /// Builds the table of `state` and makes it current; a refused state leaves the
    /// current table in force.
    pub fn update(&self, state: &DnsState) -> Result<(), DnsStateError> {
        self.store(RecordTable::build(state)?);
        Ok(())
    }
}

/// Lowercases `name` and drops one trailing dot.
fn normalize(name: &str) -> std::borrow::Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

fn in_scope(network: &str, networks: &[String]) -> bool {
    networks.iter().any(|n| n == network)
}

fn extend_unique(into: &mut Vec<IpAddr>, from: &[IpAddr]) {
    for ip in from {
        if !into.contains(ip) {
            into.push(*ip);
        }
    }
}

/// The address a full reverse name (lowercase, no trailing dot) stands for.
pub(crate) fn parse_reverse(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut octets = [0u8; 4];
        let mut count = 0;
        for label in rest.split('.') {
            if count == 4 || label.is_empty() || label.len() > 3 {
                return None;
            }
            if !label.bytes().all(|b| b.is_ascii_digit())
                || (label.len() > 1 && label.starts_with('0'))
            {
                return None;
            }
            octets[3 - count] = label.parse().ok()?;
            count += 1;
        }
        return (count == 4).then(|| IpAddr::V4(Ipv4Addr::from(octets)));
    }
    if let Some(rest) = name.strip_suffix(".ip6.arpa") {
        let mut value: u128 = 0;
        let mut count = 0;
        for label in rest.split('.') {
            if count == 32 || label.len() != 1 {
                return None;
            }
            let nibble = char::from(label.as_bytes()[0]).to_digit(16)?;
            value |= u128::from(nibble) << (4 * count);
            count += 1;
        }
        return (count == 32).then(|| IpAddr::V6(Ipv6Addr::from(value)));
    }
    None
}

/// The reverse name of `ip`, lowercase, without trailing dot.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let value = u128::from(v6);
            let mut name = String::with_capacity(72);
            for i in 0..32 {
                let nibble = (value >> (4 * i)) & 0xf;
                name.push(char::from_digit(nibble as u32, 16).unwrap_or('0'));
                name.push('.');
            }
            name.push_str("ip6.arpa");
            name
        }
    }
}

/// Checks a DNS name: dot-separated labels of 1-63 letters, digits, `-` and `_`, at most
/// 253 characters, one label only when `single_label`; names under `arpa` are reserved
/// for reverse lookups.
fn check_name(what: &'static str, name: &str, single_label: bool) -> Result<(), DnsStateError> {
    let invalid = |reason| DnsStateError::InvalidName {
        what,
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > 253 {
        return Err(invalid("longer than 253 characters"));
    }
    if single_label && name.contains('.') {
        return Err(invalid("must be a single label (no dots)"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(invalid("empty label (leading, trailing or double dot)"));
        }
        if label.len() > 63 {
            return Err(invalid("a label is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "only letters, digits, '-', '_' and '.' are allowed",
            ));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.eq_ignore_ascii_case("arpa"))
    {
        return Err(invalid("names under arpa are reserved for reverse lookups"));
    }
    Ok(())
}

fn check_network(network: &str) -> Result<(), DnsStateError> {
    let ok = !network.is_empty()
        && network.len() <= 255
        && network
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(DnsStateError::InvalidNetwork(network.to_string()))
    }
}

fn check_address(owner: &str, ip: IpAddr) -> Result<(), DnsStateError> {
    if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Err(DnsStateError::InvalidAddress {
            owner: owner.to_string(),
            ip,
        });
    }
    Ok(())
}

#[derive(Default)]
struct Builder {
    networks: HashMap<String, Arc<str>>,
    exact: HashMap<String, Vec<Entry>>,
    short: HashMap<String, Vec<ShortEntry>>,
    ptr: HashMap<IpAddr, Vec<PtrEntry>>,
    owners: HashMap<IpAddr, Vec<Owner>>,
    /// (network, ip) -> who holds it.
    addresses: HashMap<(Arc<str>, IpAddr), String>,
}

impl Builder {
    fn network(&mut self, name: &str) -> Result<Arc<str>, DnsStateError> {
        if let Some(network) = self.networks.get(name) {
            return Ok(network.clone());
        }
        check_network(name)?;
        let network: Arc<str> = Arc::from(name);
        self.networks.insert(name.to_string(), network.clone());
        Ok(network)
    }

    fn claim_address(
        &mut self,
        network: &Arc<str>,
        ip: IpAddr,
        owner: &str,
    ) -> Result<(), DnsStateError> {
        check_address(owner, ip)?;
        match self.addresses.get(&(network.clone(), ip)) {
            Some(first) if first == owner => Ok(()),
            Some(first) => Err(DnsStateError::AddressConflict {
                ip,
                network: network.to_string(),
                first: first.clone(),
                second: owner.to_string(),
            }),
            None => {
                self.addresses
                    .insert((network.clone(), ip), owner.to_string());
                Ok(())
            }
        }
    }

    fn add_name(
        &mut self,
        name: &str,
        network: &Arc<str>,
        kind: Kind,
        owner: &str,
        addrs: &[IpAddr],
    ) -> Result<(), DnsStateError> {
        let entries = self.exact.entry(name.to_ascii_lowercase()).or_default();
        if let Some(entry) = entries.iter_mut().find(|e| e.network == *network) {
            let mergeable = match (&entry.kind, &kind) {
                (Kind::Shared, Kind::Shared) => true,
                (Kind::Slot(a), Kind::Slot(b)) => a == b,
                _ => false,
            };
            if !mergeable {
                return Err(DnsStateError::NameConflict {
                    name: name.to_ascii_lowercase(),
                    network: network.to_string(),
                    first: entry.owner.clone(),
                    second: owner.to_string(),
                });
            }
            extend_unique(&mut entry.addrs, addrs);
            return Ok(());
        }
        entries.push(Entry {
            network: network.clone(),
            kind,
            owner: owner.to_string(),
            addrs: addrs.to_vec(),
        });
        Ok(())
    }

    fn add_short(&mut self, name: &str, network: &Arc<str>, service: &str, addrs: &[IpAddr]) {
        self.short
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push(ShortEntry {
                network: network.clone(),
                service: service.to_string(),
                addrs: addrs.to_vec(),
            });
    }

    fn add_ptr(&mut self, ip: IpAddr, network: &Arc<str>, target: &str) {
        let target = target.to_ascii_lowercase();
        let entries = self.ptr.entry(ip).or_default();
        if !entries
            .iter()
            .any(|e| e.network == *network && e.target == target)
        {
            entries.push(PtrEntry {
                network: network.clone(),
                target,
            });
        }
    }

    fn add_owner(&mut self, addresses: &[(Arc<str>, IpAddr)]) {
        let mut networks: Vec<Arc<str>> = Vec::new();
        for (network, _) in addresses {
            if !networks.contains(network) {
                networks.push(network.clone());
            }
        }
        for (network, ip) in addresses {
            self.owners.entry(*ip).or_default().push(Owner {
                network: network.clone(),
                networks: networks.clone(),
            });
        }
    }

    fn build(mut self, state: &DnsState) -> Result<RecordTable, DnsStateError> {
        let mut service_names = HashSet::new();
        let mut task_ids = HashSet::new();
        for service in &state.services {
            self.add_service(service, &mut service_names, &mut task_ids)?;
        }
        for container in &state.containers {
            self.add_container(container)?;
        }

        // A short name two services share on a network answers for neither there.
        for entries in self.short.values_mut() {
            let mut ambiguous: Vec<Arc<str>> = Vec::new();
            for (i, a) in entries.iter().enumerate() {
                if entries[i + 1..]
                    .iter()
                    .any(|b| b.network == a.network && b.service != a.service)
                {
                    ambiguous.push(a.network.clone());
                }
            }
            entries.retain(|e| !ambiguous.contains(&e.network));
        }
        self.short.retain(|_, entries| !entries.is_empty());

        Ok(RecordTable {
            exact: self.exact,
            short: self.short,
            ptr: self.ptr,
            owners: self.owners,
        })
    }

    fn add_service(
        &mut self,
        service: &Service,
        service_names: &mut HashSet<String>,
        task_ids: &mut HashSet<String>,
    ) -> Result<(), DnsStateError> {
        check_name("service name", &service.name, true)?;
        let full = match &service.stack {
            Some(stack) => {
                check_name("stack name", stack, true)?;
                format!("{stack}_{}", service.name)
            }
            None => service.name.clone(),
        };
        check_name("service name", &full, true)?;
        let full = full.to_ascii_lowercase();
        if !service_names.insert(full.clone()) {
            return Err(DnsStateError::DuplicateService(full));
        }
        let fail = |reason: String| DnsStateError::Service {
            service: full.clone(),
            reason,
        };
        let owner = format!("service {full:?}");

        // The service's networks, in declaration order, and its VIP on each.
        let mut networks: Vec<Arc<str>> = Vec::new();
        let mut vips: HashMap<Arc<str>, IpAddr> = HashMap::new();
        match service.endpoint_mode {
            EndpointMode::Vip => {
                for vip in &service.vips {
                    let network = self.network(&vip.network)?;
                    if vips.insert(network.clone(), vip.ip).is_some() {
                        return Err(fail(format!("two VIPs on network {network:?}")));
                    }
                    self.claim_address(&network, vip.ip, &format!("the VIP of {owner}"))?;
                    networks.push(network);
                }
            }
            EndpointMode::Dnsrr => {
                if !service.vips.is_empty() {
                    return Err(fail("a dnsrr service has no VIPs".to_string()));
                }
            }
        }
        let mut add_network = |network: Arc<str>, why: &str| {
            if networks.contains(&network) {
                return Ok(());
            }
            if service.endpoint_mode == EndpointMode::Vip {
                return Err(fail(format!(
                    "{why} network {network:?}, but the service (vip mode) has no VIP there"
                )));
            }
            networks.push(network);
            Ok(())
        };
        for network in &service.networks {
            let network = self.network(network)?;
            add_network(network, "attached to")?;
        }

        // Tasks: check them, and collect the healthy addresses per network.
        let with_slot = service.tasks.iter().filter(|t| t.slot.is_some()).count();
        if with_slot != 0 && with_slot != service.tasks.len() {
            return Err(fail(
                "some tasks have a slot and some do not (replicated or global?)".to_string(),
            ));
        }
        let mut task_addrs: Vec<Vec<(Arc<str>, IpAddr)>> = Vec::new();
        for task in &service.tasks {
            check_name("task ID", &task.id, true)?;
            if !task_ids.insert(task.id.to_ascii_lowercase()) {
                return Err(DnsStateError::DuplicateTask(task.id.clone()));
            }
            let task_owner = format!("task {:?} of {owner}", task.id);
            let mut addrs = Vec::new();
            for addr in &task.addresses {
                let network = self.network(&addr.network)?;
                self.claim_address(&network, addr.ip, &task_owner)?;
                add_network(network.clone(), &format!("task {:?} is on", task.id))?;
                addrs.push((network, addr.ip));
            }
            task_addrs.push(addrs);
        }

        for network in &networks {
            let healthy: Vec<IpAddr> = service
                .tasks
                .iter()
                .zip(&task_addrs)
                .filter(|(task, _)| task.healthy)
                .flat_map(|(_, addrs)| addrs.iter())
                .filter(|(n, _)| n == network)
                .map(|(_, ip)| *ip)
                .collect();
            let service_addrs = match service.endpoint_mode {
                EndpointMode::Vip => vec![vips[network]],
                EndpointMode::Dnsrr => healthy.clone(),
            };
            let tasks_name = format!("tasks.{full}");
            self.add_name(&full, network, Kind::Service, &owner, &service_addrs)?;
            self.add_name(&tasks_name, network, Kind::Tasks, &owner, &healthy)?;
            if service.stack.is_some() {
                let short = service.name.to_ascii_lowercase();
                self.add_short(&short, network, &full, &service_addrs);
                self.add_short(&format!("tasks.{short}"), network, &full, &healthy);
            }
            if let Some(vip) = vips.get(network) {
                self.add_ptr(*vip, network, &full);
            }
        }

        for (task, addrs) in service.tasks.iter().zip(&task_addrs) {
            let id = task.id.to_ascii_lowercase();
            let task_owner = format!("task {:?} of {owner}", task.id);
            let (task_name, slot_name) = match task.slot {
                Some(slot) => (
                    format!("{full}.{slot}.{id}"),
                    Some(format!("{full}.{slot}")),
                ),
                None => (format!("{full}.{id}"), None),
            };
            let mut done: Vec<&Arc<str>> = Vec::new();
            for (network, _) in addrs {
                if done.contains(&network) {
                    continue;
                }
                done.push(network);
                let here: Vec<IpAddr> = addrs
                    .iter()
                    .filter(|(n, _)| n == network)
                    .map(|(_, ip)| *ip)
                    .collect();
                self.add_name(&task_name, network, Kind::Task, &task_owner, &here)?;
                if let Some(slot_name) = &slot_name {
                    self.add_name(
                        slot_name,
                        network,
                        Kind::Slot(full.clone()),
                        &task_owner,
                        &here,
                    )?;
                }
                for ip in here {
                    self.add_ptr(ip, network, &task_name);
                }
            }
            self.add_owner(addrs);
        }
        Ok(())
    }

    fn add_container(&mut self, container: &Container) -> Result<(), DnsStateError> {
        check_name("container name", &container.name, false)?;
        let owner = format!("container {:?}", container.name);
        let fail = |reason: String| DnsStateError::Container {
            container: container.name.clone(),
            reason,
        };
        let mut addrs: Vec<(Arc<str>, IpAddr)> = Vec::new();
        for addr in &container.addresses {
            let network = self.network(&addr.network)?;
            self.claim_address(&network, addr.ip, &owner)?;
            addrs.push((network, addr.ip));
        }
        let on = |network: &Arc<str>| -> Vec<IpAddr> {
            addrs
                .iter()
                .filter(|(n, _)| n == network)
                .map(|(_, ip)| *ip)
                .collect()
        };
        let mut done: Vec<Arc<str>> = Vec::new();
        for (network, _) in &addrs {
            if done.contains(network) {
                continue;
            }
            done.push(network.clone());
            let here = on(network);
            self.add_name(&container.name, network, Kind::Shared, &owner, &here)?;
            for ip in here {
                self.add_ptr(ip, network, &container.name);
            }
        }
        for alias in &container.aliases {
            check_name("network alias", &alias.alias, false)?;
            let network = self.network(&alias.network)?;
            let here = on(&network);
            if here.is_empty() {
                return Err(fail(format!(
                    "alias {:?} is on network {:?}, where the container has no address",
                    alias.alias, alias.network
                )));
            }
            let alias_owner = format!("alias {:?} of {owner}", alias.alias);
            self.add_name(&alias.alias, &network, Kind::Shared, &alias_owner, &here)?;
        }
        self.add_owner(&addrs);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
