//! The record table built from a [`DnsState`]: the names and addresses per network, and
//! the lookups scoped to a set of networks.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::RecordType;

use super::build::Builder;
use super::reverse::parse_reverse;
use super::state::{DnsState, DnsStateError};

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
pub(super) enum Kind {
    Service,
    Tasks,
    Task,
    /// `<service>.<slot>`: two tasks may share a slot during an update.
    Slot(String),
    /// Container names and aliases: containers may share them (Docker's round robin).
    Shared,
}

#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) network: Arc<str>,
    pub(super) kind: Kind,
    /// Who holds the name, for error messages.
    pub(super) owner: String,
    pub(super) addrs: Vec<IpAddr>,
}

#[derive(Debug, Clone)]
pub(super) struct ShortEntry {
    pub(super) network: Arc<str>,
    pub(super) service: String,
    pub(super) addrs: Vec<IpAddr>,
}

#[derive(Debug, Clone)]
pub(super) struct PtrEntry {
    pub(super) network: Arc<str>,
    pub(super) target: String,
}

/// The container or task that holds an address.
#[derive(Debug, Clone)]
pub(super) struct Owner {
    /// The network the address is on.
    pub(super) network: Arc<str>,
    /// All the networks of the owner.
    pub(super) networks: Vec<Arc<str>>,
    /// Where the owner's names that are not the cluster's go (empty: the node's
    /// upstreams).
    pub(super) nameservers: Arc<[IpAddr]>,
}

/// The names and addresses of a [`DnsState`], by network. Immutable once built: updates
/// build a new table and swap it in ([`SharedTable`](super::SharedTable)).
#[derive(Debug, Clone, Default)]
pub struct RecordTable {
    pub(super) exact: HashMap<String, Vec<Entry>>,
    pub(super) short: HashMap<String, Vec<ShortEntry>>,
    pub(super) ptr: HashMap<IpAddr, Vec<PtrEntry>>,
    pub(super) owners: HashMap<IpAddr, Vec<Owner>>,
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

    /// The resolvers of the task that holds `src` on `network` (its `--dns`), if it
    /// has its own: a name it asks that the table does not own is forwarded there.
    pub fn nameservers(&self, network: &str, src: IpAddr) -> Option<&[IpAddr]> {
        self.owners
            .get(&src)?
            .iter()
            .find(|o| &*o.network == network && !o.nameservers.is_empty())
            .map(|o| &*o.nameservers)
    }

    /// Whether the table has no names at all.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.short.is_empty() && self.ptr.is_empty()
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

pub(super) fn extend_unique(into: &mut Vec<IpAddr>, from: &[IpAddr]) {
    for ip in from {
        if !into.contains(ip) {
            into.push(*ip);
        }
    }
}
