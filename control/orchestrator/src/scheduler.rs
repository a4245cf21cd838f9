//! The scheduler: on the Raft leader, turns services into tasks placed on nodes.
//!
//! [`plan`] is a pure function of the cluster state and the time: it returns the
//! commands that move the store one step toward what the services declare (new tasks,
//! tasks told to stop, placements, addresses, VIPs, history pruning). [`run`] calls it on
//! the leader whenever the store changes, and on a tick for time-based decisions
//! (restart delay).
//!
//! - Replicated services: slots `1..=replicas`; a slot whose task ended is given a new
//!   task by the restart policy ([`restart`]); slots above `replicas` are removed.
//! - Tasks made from an older spec are replaced by the rolling update ([`update`]).
//! - Global services: one task per eligible node, including nodes that join later.
//! - Jobs (replicated and global) run their tasks to completion once per iteration
//!   ([`job`]).
//! - Placement ([`placement`], spread): among eligible nodes (Ready, availability active, constraints
//!   met), the one with the fewest tasks of this service, then fewest tasks overall;
//!   nodes where this service failed twice or more recently come last. A service with
//!   reservations (CPUs, memory) goes only to a node whose reported capacity, less
//!   what its live tasks reserve, holds them; else its task stays pending
//!   ("insufficient resources on N nodes") until one does. A service with
//!   `--replicas-max-per-node N` never gets a new task on a node holding N live tasks
//!   of it; the rest stay pending ("max replicas per node limit exceed"). Placement
//!   preferences (`spread=node.labels.X`) come before the spread by task count: the
//!   task goes to the label value whose nodes hold the fewest tasks of the service
//!   (nodes without the label are one group), level by level.
//! - A node that is Down, drained or no longer meets the constraints loses its tasks
//!   (they are replaced elsewhere). Like Swarm there is no rebalancing when a node comes
//!   back; `service update --force` replaces every task.
//! - Addresses: each task gets one per network of its service (ingress first when a port
//!   is published in ingress mode), each vip-mode service one VIP per network, each
//!   attached container that is not a task one on its network, from
//!   [`ipam::Addresses`] rebuilt from the store on every plan: addresses never used
//!   first, and an ended task's address is held back for a while after it ended.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use shoal_cluster::{
    ipam::{self, Millis},
    manager::Manager,
    store::{
        ClusterState, Command, EndpointMode, NodeStatus, Service, ServiceMode, Task, TaskState,
        TaskStatus, UpdateOrder, VirtualIp,
    },
};
use tracing::{debug, warn};

mod constraint;
pub mod job;
mod placement;
pub mod restart;
pub mod update;

use constraint::constraints_of;
pub use constraint::Constraint;
use placement::{may_keep, may_take, reservation_of};

use restart::Restart;
use update::{Group, UpdateStep};

/// Ended tasks kept per slot (per node for global services) for `service ps`.
pub const TASK_HISTORY: usize = 5;
/// How often the leader re-plans without a store change.
const TICK: Duration = Duration::from_millis(500);

/// The networks a service's tasks join, in order: `ingress` first when it publishes a
/// port (in host mode too: the routing mesh reaches a host-mode task, on its own node
/// only, through its ingress address), then its own.
pub fn effective_networks(state: &ClusterState, service: &Service) -> Vec<String> {
    let mut out = Vec::new();
    if !service.spec.ports.is_empty() {
        if let Some(ingress) = state.networks.values().find(|n| n.ingress) {
            out.push(ingress.id.clone());
        }
    }
    for n in &service.spec.networks {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

/// The planner's working copy.
struct Planner<'a> {
    state: &'a ClusterState,
    now_ms: u64,
    addresses: ipam::Addresses,
    /// Tasks changed or created in this plan, by ID.
    changed: BTreeMap<String, Task>,
    removed: BTreeSet<String>,
    services: Vec<Service>,
    /// Live (desired running) tasks per node, and per (service, node).
    per_node: HashMap<String, usize>,
    per_service_node: HashMap<(String, String), usize>,
    /// What live tasks placed on each node reserve (NanoCPUs, bytes).
    reserved: HashMap<String, (u64, u64)>,
    /// Restart counters a group's next task starts with (see [`restart::carried`]).
    carry: BTreeMap<Group, (u64, u64, u32)>,
}

impl Planner<'_> {
    /// The service as this plan will store it (VIPs, update status), to change further.
    fn service_mut(&mut self, service: &Service) -> &mut Service {
        match self.services.iter().position(|s| s.id == service.id) {
            Some(i) => &mut self.services[i],
            None => {
                self.services.push(service.clone());
                self.services.last_mut().expect("just pushed")
            }
        }
    }

    fn current(&self, id: &str) -> Option<Task> {
        self.changed
            .get(id)
            .cloned()
            .or_else(|| self.state.tasks.get(id).cloned())
    }

    fn stop(&mut self, task: &Task, desired: TaskState) {
        let mut t = self.current(&task.id).unwrap_or_else(|| task.clone());
        if t.desired_state != desired {
            if t.desired_state == TaskState::Running {
                if let Some(node) = &t.node_id {
                    let (cpus, memory) = reservation_of(&t, self.state.services.get(&t.service_id));
                    if let Some(r) = self.reserved.get_mut(node) {
                        r.0 = r.0.saturating_sub(cpus);
                        r.1 = r.1.saturating_sub(memory);
                    }
                    dec(&mut self.per_node, node.clone());
                    dec(
                        &mut self.per_service_node,
                        (t.service_id.clone(), node.clone()),
                    );
                }
            }
            t.desired_state = desired;
            // A task that never reached a node just ends.
            if t.node_id.is_none() && !t.status.state.is_terminal() {
                t.status = TaskStatus {
                    state: TaskState::Shutdown,
                    timestamp_ms: self.now_ms,
                    message: "shutdown".into(),
                    ..Default::default()
                };
            }
            self.changed.insert(t.id.clone(), t);
        }
    }

    fn new_task(
        &mut self,
        service: &Service,
        constraints: &[Constraint],
        slot: u64,
        node: Option<String>,
        new_id: &mut dyn FnMut() -> String,
    ) {
        let group = if service.spec.mode.is_global() {
            (0, node.clone().unwrap_or_default())
        } else {
            (slot, String::new())
        };
        let (restarts, restart_window_start_ms, failures_in_a_row) =
            self.carry.remove(&group).unwrap_or_default();
        let task = Task {
            id: new_id(),
            service_id: service.id.clone(),
            slot,
            node_id: node,
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::New,
                timestamp_ms: self.now_ms,
                message: "created".into(),
                ..Default::default()
            },
            networks: Vec::new(),
            force_update: service.force_update,
            spec: Some(Box::new(service.spec.clone())),
            restarts,
            restart_window_start_ms,
            failures_in_a_row,
            job_iteration: service.spec.mode.is_job().then(|| job::iteration(service)),
            created_ms: self.now_ms,
            version: 0,
        };
        let task = self.place(task, service, constraints);
        self.changed.insert(task.id.clone(), task);
    }

    /// Whether an ended task should be replaced now: None while it has not ended, else
    /// the restart policy of the spec it was made from. A replacement made now carries
    /// the policy's counters.
    fn replace_ended(&mut self, t: &Task, service: &Service) -> Option<bool> {
        if !t.status.state.is_terminal() {
            return None;
        }
        let spec = t.spec.as_deref().unwrap_or(&service.spec);
        match restart::decide(t, spec, self.now_ms) {
            Restart::Now => {
                let counters = restart::carried(t, spec, self.now_ms);
                self.carry.insert(update::group_of(t, service), counters);
                Some(true)
            }
            Restart::Later | Restart::Never => Some(false),
        }
    }
}

fn dec<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: K) {
    if let Some(v) = m.get_mut(&k) {
        *v = v.saturating_sub(1);
    }
}

/// The commands that move `state` one step toward its services' declared tasks.
pub fn plan(state: &ClusterState, now_ms: u64, new_id: &mut dyn FnMut() -> String) -> Vec<Command> {
    let mut p = Planner {
        state,
        now_ms,
        addresses: ipam::Addresses::from_state(state, Millis(now_ms)),
        changed: BTreeMap::new(),
        removed: BTreeSet::new(),
        services: Vec::new(),
        per_node: HashMap::new(),
        per_service_node: HashMap::new(),
        reserved: HashMap::new(),
        carry: BTreeMap::new(),
    };
    for t in state.tasks.values() {
        if t.desired_state == TaskState::Running {
            if let Some(n) = &t.node_id {
                let (cpus, memory) = reservation_of(t, state.services.get(&t.service_id));
                let r = p.reserved.entry(n.clone()).or_default();
                r.0 = r.0.saturating_add(cpus);
                r.1 = r.1.saturating_add(memory);
                *p.per_node.entry(n.clone()).or_default() += 1;
                *p.per_service_node
                    .entry((t.service_id.clone(), n.clone()))
                    .or_default() += 1;
            }
        }
    }

    // VIPs: one per network of each vip-mode service.
    for s in state.services.values() {
        let wanted = match s.spec.endpoint_mode {
            EndpointMode::Vip => effective_networks(state, s),
            EndpointMode::Dnsrr => Vec::new(),
        };
        let have: Vec<&str> = s
            .endpoint
            .virtual_ips
            .iter()
            .map(|v| v.network_id.as_str())
            .collect();
        if have == wanted.iter().map(String::as_str).collect::<Vec<_>>() {
            continue;
        }
        let mut vips = Vec::new();
        for net in &wanted {
            let existing = s.endpoint.virtual_ips.iter().find(|v| &v.network_id == net);
            let addr = match existing {
                Some(v) => Ok(v.addr),
                None => p.addresses.allocate(net),
            };
            match addr {
                Ok(addr) => vips.push(VirtualIp {
                    network_id: net.clone(),
                    addr,
                }),
                Err(e) => {
                    warn!(service = %s.spec.name, network = %net, error = %e, "no address left for the service's VIP")
                }
            }
        }
        let mut s = s.clone();
        s.endpoint.virtual_ips = vips;
        p.services.push(s);
    }

    // Containers that are not tasks, attached with no address yet.
    let mut attachment_addresses = Vec::new();
    for a in state.attachments.values().filter(|a| a.addr.is_none()) {
        match p.addresses.allocate(&a.network_id) {
            Ok(addr) => attachment_addresses.push((a.id.clone(), addr)),
            Err(e) => {
                warn!(container = %a.container_name, network = %a.network_id, error = %e, "no address left for an attached container")
            }
        }
    }

    for service in state.services.values() {
        let constraints = constraints_of(service);
        if service.spec.mode.is_job() {
            job::plan(&mut p, service, &constraints, new_id);
            continue;
        }
        let mut up = update::step(state, service, now_ms);
        if let Some(changed) = up.service.take() {
            let rolled_back = changed.spec != service.spec;
            let s = p.service_mut(service);
            s.spec = changed.spec;
            s.previous_spec = changed.previous_spec;
            s.update_status = changed.update_status;
            if rolled_back {
                // The tasks are planned against the spec once it is stored.
                continue;
            }
        }
        // Live tasks by slot (by node for a global service), oldest first.
        let mut groups: BTreeMap<Group, Vec<&Task>> = BTreeMap::new();
        for t in state
            .service_tasks(&service.id)
            .filter(|t| t.desired_state == TaskState::Running)
        {
            if service.spec.mode == ServiceMode::Global && t.node_id.is_none() {
                p.stop(t, TaskState::Shutdown);
                continue;
            }
            groups
                .entry(update::group_of(t, service))
                .or_default()
                .push(t);
        }
        let replicas = match service.spec.mode {
            ServiceMode::Replicated { replicas } => Some(replicas),
            _ => None,
        };
        for (group, mut tasks) in groups.clone() {
            tasks.sort_by_key(|t| (t.created_ms, t.id.clone()));
            let newest = tasks.pop().expect("a group has a task");
            let out_of_range = replicas.is_some_and(|r| group.0 == 0 || group.0 > r);
            // Start-first: the outdated task serves until its replacement runs.
            let newest_pending = up.keeps_old_beside_new()
                && newest.status.state < TaskState::Running
                && !update::outdated(newest, service);
            for extra in tasks {
                let serving = !extra.status.state.is_terminal() && update::outdated(extra, service);
                if out_of_range || !(newest_pending && serving) {
                    p.stop(extra, TaskState::Shutdown);
                }
            }
            if out_of_range {
                p.stop(newest, TaskState::Remove);
                groups.remove(&group);
                continue;
            }
            if !keep_or_replace(&mut p, newest, service, &constraints, &mut up) {
                groups.remove(&group);
            }
        }
        let missing: Vec<Group> = match replicas {
            Some(r) => (1..=r).map(|slot| (slot, String::new())).collect(),
            None => state
                .nodes
                .values()
                .filter(|n| may_take(n, &constraints) && p.fits(n, service))
                .map(|n| (0, n.id.clone()))
                .collect(),
        };
        for group in missing {
            if !groups.contains_key(&group) && !up.held.contains(&group) {
                new_task_in(&mut p, service, &constraints, &group, new_id);
            }
        }
        for group in std::mem::take(&mut up.start_beside) {
            new_task_in(&mut p, service, &constraints, &group, new_id);
        }
    }

    // Deleting: tasks told to go that have stopped (or whose node cannot stop them),
    // tasks of services that are gone, and history beyond the limit.
    let node_gone = |t: &Task| {
        t.node_id
            .as_ref()
            .and_then(|n| state.nodes.get(n))
            .is_none_or(|n| n.status == NodeStatus::Down)
    };
    for t in state.tasks.values() {
        let t = p.current(&t.id).unwrap_or_else(|| t.clone());
        let service_gone = !state.services.contains_key(&t.service_id);
        if service_gone && t.desired_state < TaskState::Remove {
            p.stop(&t, TaskState::Remove);
        }
        let t = p.current(&t.id).unwrap_or(t);
        if (t.desired_state == TaskState::Remove || service_gone)
            && (t.status.state.is_terminal() || node_gone(&t))
        {
            p.removed.insert(t.id.clone());
        }
    }
    let mut history: BTreeMap<(String, u64, String), Vec<Task>> = BTreeMap::new();
    for t in state.tasks.values() {
        let t = p.current(&t.id).unwrap_or_else(|| t.clone());
        if t.desired_state != TaskState::Running && !p.removed.contains(&t.id) {
            let node = if t.slot == 0 {
                t.node_id.clone().unwrap_or_default()
            } else {
                String::new()
            };
            history
                .entry((t.service_id.clone(), t.slot, node))
                .or_default()
                .push(t);
        }
    }
    for (_, mut old) in history {
        if old.len() <= TASK_HISTORY {
            continue;
        }
        old.sort_by_key(|t| (t.created_ms, t.id.clone()));
        let excess = old.len() - TASK_HISTORY;
        for t in old.iter().take(excess) {
            if t.status.state.is_terminal() || node_gone(t) {
                p.removed.insert(t.id.clone());
            }
        }
    }

    let mut commands = Vec::new();
    if !attachment_addresses.is_empty() {
        commands.push(Command::SetAttachmentAddresses {
            addresses: attachment_addresses,
        });
    }
    for s in p.services {
        // Refused if an operator changed the service since this plan read it.
        let version = state.services.get(&s.id).map_or(0, |old| old.version);
        commands.push(Command::UpdateServiceIfUnchanged {
            service: Box::new(s),
            version,
        });
    }
    let removed = p.removed;
    let tasks: Vec<Task> = p
        .changed
        .into_values()
        .filter(|t| !removed.contains(&t.id))
        .collect();
    if !tasks.is_empty() {
        commands.push(Command::PutTasks { tasks });
    }
    if !removed.is_empty() {
        commands.push(Command::RemoveTasks {
            ids: removed.into_iter().collect(),
        });
    }
    commands
}

/// Makes the task of `group` (a slot, or a node for a global service).
fn new_task_in(
    p: &mut Planner<'_>,
    service: &Service,
    constraints: &[Constraint],
    group: &Group,
    new_id: &mut dyn FnMut() -> String,
) {
    if service.spec.mode.is_global() {
        p.new_task(service, constraints, 0, Some(group.1.clone()), new_id)
    } else {
        p.new_task(service, constraints, group.0, None, new_id)
    }
}

/// Looks at one live task: keeps it (true), or tells it to stop and leaves its group
/// for a replacement (false). A pending task is placed if it can be now; an outdated
/// one is replaced when the update's step says so (start-first: kept, and a new task
/// made beside it).
fn keep_or_replace(
    p: &mut Planner<'_>,
    t: &Task,
    service: &Service,
    constraints: &[Constraint],
    up: &mut UpdateStep,
) -> bool {
    if let Some(replace) = p.replace_ended(t, service) {
        if replace {
            p.stop(t, TaskState::Shutdown);
            return false;
        }
        return true;
    }
    let outdated = update::outdated(t, service);
    match &t.node_id {
        None if outdated => {
            p.stop(t, TaskState::Shutdown);
            false
        }
        None => {
            let placed = p.place(t.clone(), service, constraints);
            if placed != *t {
                p.changed.insert(placed.id.clone(), placed);
            }
            true
        }
        Some(node) => {
            if !may_keep(p.state.nodes.get(node), constraints) {
                p.stop(t, TaskState::Shutdown);
                return false;
            }
            if !outdated || !up.replace.contains(&t.id) {
                return true;
            }
            let group = update::group_of(t, service);
            match up.order {
                UpdateOrder::StopFirst => {
                    p.stop(t, TaskState::Shutdown);
                    up.held.insert(group);
                    false
                }
                UpdateOrder::StartFirst => {
                    up.start_beside.insert(group);
                    true
                }
            }
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new object ID (25 characters of `[a-z0-9]`, as Swarm's).
pub fn new_id() -> String {
    shoal_cluster::pki::new_node_id()
}

/// Runs the scheduler while this manager is the leader; returns when it stops being a
/// manager.
pub async fn run(manager: Manager) {
    let Some(mut versions) = manager.subscribe() else {
        return;
    };
    loop {
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(TICK) => {}
        }
        if !manager.is_leader() {
            continue;
        }
        let Some(state) = manager.local_state() else {
            return;
        };
        for command in plan(&state, now_ms(), &mut new_id) {
            debug!(change = %summary(&command), "scheduler change");
            match manager.execute(command).await {
                Ok(r) => {
                    if let Err(rejection) = r.into_result() {
                        warn!(%rejection, "scheduler change refused");
                    }
                }
                Err(e) => {
                    debug!(error = %e, "scheduler change not made");
                    break;
                }
            }
        }
    }
}

/// One line of what a scheduler change does, for the log: which tasks, where, told what.
fn summary(command: &Command) -> String {
    match command {
        Command::PutTasks { tasks } => {
            let each: Vec<String> = tasks
                .iter()
                .map(|t| {
                    format!(
                        "{} of {} slot {} on {} desired {:?} now {:?}",
                        t.id,
                        t.service_id,
                        t.slot,
                        t.node_id.as_deref().unwrap_or("-"),
                        t.desired_state,
                        t.status.state
                    )
                })
                .collect();
            format!("tasks: {}", each.join("; "))
        }
        Command::RemoveTasks { ids } => format!("remove tasks {}", ids.join(" ")),
        Command::UpdateServiceIfUnchanged { service, .. } => format!("service {}", service.id),
        Command::SetAttachmentAddresses { addresses } => {
            format!("{} attachment addresses", addresses.len())
        }
        _ => "another change".to_owned(),
    }
}

#[cfg(test)]
mod tests;
