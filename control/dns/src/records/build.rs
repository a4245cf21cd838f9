//! Building a [`RecordTable`] from a [`DnsState`]: the checks that refuse a state that
//! contradicts itself, and the names, short names, reverse names and address owners each
//! service, task and container adds.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::state::{Container, DnsState, DnsStateError, EndpointMode, Service};
use super::table::{extend_unique, Entry, Kind, Owner, PtrEntry, RecordTable, ShortEntry};

/// Checks a DNS name: dot-separated labels of 1-63 letters, digits, `-` and `_`, at most
/// 253 characters, one label only when `single_label`; names under `arpa` are reserved
/// for reverse lookups.
pub(super) fn check_name(
    what: &'static str,
    name: &str,
    single_label: bool,
) -> Result<(), DnsStateError> {
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

/// Per network a service is on: what its name answers there, and its healthy tasks.
type AliasTargets = Vec<(Arc<str>, Vec<IpAddr>, Vec<IpAddr>)>;

#[derive(Default)]
pub(super) struct Builder {
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

    fn add_owner(&mut self, addresses: &[(Arc<str>, IpAddr)], nameservers: &[IpAddr]) {
        let nameservers: Arc<[IpAddr]> = Arc::from(nameservers);
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
                nameservers: nameservers.clone(),
            });
        }
    }

    pub(super) fn build(mut self, state: &DnsState) -> Result<RecordTable, DnsStateError> {
        let mut service_names = HashSet::new();
        let mut task_ids = HashSet::new();
        let mut service_aliases = Vec::new();
        for service in &state.services {
            let names = self.add_service(service, &mut service_names, &mut task_ids)?;
            service_aliases.push((service, names));
        }
        for container in &state.containers {
            self.add_container(container)?;
        }
        // Aliases after every name, so a name always beats an alias.
        for (service, names) in service_aliases {
            self.add_service_aliases(service, names)?;
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

    /// Adds a service's names; returns, per network it is on, what its name and
    /// `tasks.` name answer there (for its aliases, added once every name is in).
    fn add_service(
        &mut self,
        service: &Service,
        service_names: &mut HashSet<String>,
        task_ids: &mut HashSet<String>,
    ) -> Result<AliasTargets, DnsStateError> {
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

        let mut targets = AliasTargets::new();
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
            targets.push((network.clone(), service_addrs.clone(), healthy.clone()));
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
            self.add_owner(addrs, &task.nameservers);
        }
        Ok(targets)
    }

    /// A service's aliases, each on its network: what the service's name answers there,
    /// and `tasks.<alias>` its healthy tasks. Services may share an alias (their
    /// answers merge, as Docker's do); a name something else holds on that network
    /// keeps its answer and the alias is left out there.
    fn add_service_aliases(
        &mut self,
        service: &Service,
        targets: AliasTargets,
    ) -> Result<(), DnsStateError> {
        for alias in &service.aliases {
            check_name("network alias", &alias.alias, false)?;
            let network = self.network(&alias.network)?;
            let Some((_, service_addrs, healthy)) = targets.iter().find(|(n, _, _)| *n == network)
            else {
                return Err(DnsStateError::Service {
                    service: service.name.clone(),
                    reason: format!(
                        "alias {:?} is on network {:?}, which the service is not on",
                        alias.alias, alias.network
                    ),
                });
            };
            let owner = format!("alias {:?} of service {:?}", alias.alias, service.name);
            for (name, addrs) in [
                (alias.alias.clone(), service_addrs),
                (format!("tasks.{}", alias.alias), healthy),
            ] {
                if self.held_by_a_name(&name, &network) {
                    continue;
                }
                self.add_name(&name, &network, Kind::Shared, &owner, addrs)?;
            }
        }
        Ok(())
    }

    /// Whether `name` is on `network` as a service's, task's or slot's name.
    fn held_by_a_name(&self, name: &str, network: &Arc<str>) -> bool {
        self.exact
            .get(&name.to_ascii_lowercase())
            .is_some_and(|entries| {
                entries
                    .iter()
                    .any(|e| e.network == *network && e.kind != Kind::Shared)
            })
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
        self.add_owner(&addrs, &[]);
        Ok(())
    }
}
