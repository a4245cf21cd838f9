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
//! | `<alias>`, `tasks.<alias>` | as `web` and `tasks.web`, on the alias's network only (`--network name=NET,alias=A`) |
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
//! aliases): the answer is all their addresses there. A service's alias comes after
//! every service, task and slot name on its network (one of those keeps the name);
//! services and containers sharing it answer together.
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

mod build;
mod reverse;
mod shared;
mod state;
mod table;

pub use reverse::reverse_name;
pub use shared::SharedTable;
pub use state::{
    Container, DnsState, DnsStateError, EndpointMode, NetAddr, NetAlias, Service, Task,
};
pub use table::{Lookup, RecordData, RecordTable};

/// Whether `name` may be a container's name or alias in a [`DnsState`] (labels of
/// letters, digits, `-` and `_`, dots between them).
pub fn valid_name(name: &str) -> bool {
    build::check_name("name", name, false).is_ok()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_aliases;
