//! The agent's one declared-state pipeline.
//!
//! ```text
//!  source (executor: store view + gossip table;   ─watch: intent─▶  pipeline  ─watch─▶ reconcilers
//!   or the standalone --declared-* files)                            │  ▲                (dataplane)
//!                                                                    │  └─ dockerd events (one watch)
//!                                                                    └──▶ <data_dir>/declared/*.json
//!                                                                         (for people; read by nothing)
//! ```
//! The source publishes what the node should hold (an [`DeclaredNode`] with no
//! containers). The pipeline adds where each local endpoint's and task's container
//! runs (its network namespace, asked of dockerd once and kept until an event says the
//! container changed) and publishes the whole as one value the reconcilers follow. A
//! declared container found not running is not asked of dockerd again until an event
//! names it (its start): a scale-up declares dozens of sandboxes before they start, and
//! asking after each of them at every start event made dockerd answer for containers it
//! was still starting (an inspect waits for the container's start to end), holding the
//! ones already running back with them. Nothing here polls a file: a change reaches the
//! reconcilers as soon as it is computed.
//!
//! It also follows which nodes this one cannot reach by its own gossip probes
//! ([`shoal_gossip::reach`]): their backends are draining in this node's load balancing,
//! then unhealthy once the node has been silent for long
//! ([`shoal_dataplane::lb::state::LbState::drain_unreachable`]), at once, whatever the
//! source is doing (the executor may be in the middle of a pass): each change of the
//! verdicts is a pass of its own.
use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use futures::{stream, StreamExt};
use shoal_dataplane::{
    lb::state::Unreached, overlay::plan::ContainerNetns, reconcile::DeclaredNode,
};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::{
    docker::DockerClient,
    events::{Subscription, Watched},
    node_state::write_if_changed,
};

/// How often every container's namespace is looked up again, in case an event was
/// missed.
const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Lookups in flight at once (a scale-up starts dozens of containers).
const PARALLEL_LOOKUPS: usize = 16;

/// The sending side of the intent: what a source publishes.
pub type IntentSender = watch::Sender<Option<Arc<DeclaredNode>>>;

/// The nodes this one cannot reach, as its gossip member judges them.
pub type ReachWatch = watch::Receiver<Arc<shoal_gossip::Unreachable>>;

/// A running container, as the pipeline keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Full container ID (events name containers by ID).
    pub id: String,
    pub netns: ContainerNetns,
}

/// Where containers run: dockerd in the agent, a fake in tests.
pub trait Resolve {
    /// The container named `name`, if it runs.
    fn resolve(&self, name: &str) -> impl Future<Output = Result<Option<Resolved>, String>>;
}

impl Resolve for DockerClient {
    async fn resolve(&self, name: &str) -> Result<Option<Resolved>, String> {
        match self.container_netns(name).await {
            Ok(Some(c)) => Ok(Some(Resolved {
                id: c.id,
                netns: ContainerNetns {
                    path: c.netns_path,
                    id: c.netns_id,
                },
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The pipeline's state between wake-ups.
pub struct Pipeline<R: Resolve> {
    resolver: R,
    out: watch::Sender<Option<Arc<DeclaredNode>>>,
    /// Where the declared state is dumped for people; None: nowhere.
    dump_dir: Option<PathBuf>,
    /// Running containers by name.
    known: BTreeMap<String, Resolved>,
    /// Declared containers dockerd said were not running: asked again only once an
    /// event names them (or at the periodic refresh, or after the event watch
    /// resubscribed). A name in neither set is looked up on the next pass.
    absent: BTreeSet<String>,
    /// The nodes this one cannot reach; None: every node counts as reachable.
    reach: Option<ReachWatch>,
}

impl<R: Resolve> Pipeline<R> {
    pub fn new(
        resolver: R,
        out: watch::Sender<Option<Arc<DeclaredNode>>>,
        dump_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            resolver,
            out,
            dump_dir,
            known: BTreeMap::new(),
            absent: BTreeSet::new(),
            reach: None,
        }
    }

    /// Takes out of the load balancing it publishes the backends on the nodes `reach`
    /// says this node cannot reach: draining, then unhealthy once a node is lost.
    pub fn with_reachability(mut self, reach: Option<ReachWatch>) -> Self {
        self.reach = reach;
        self
    }

    /// The underlay addresses of the nodes this one cannot reach now, and for how long.
    fn unreachable(&self) -> BTreeMap<Ipv4Addr, Unreached> {
        let Some(reach) = &self.reach else {
            return BTreeMap::new();
        };
        let set = reach.borrow().clone();
        set.values()
            .filter_map(|u| match u.addr {
                IpAddr::V4(v4) => Some((
                    v4,
                    if u.lost {
                        Unreached::Lost
                    } else {
                        Unreached::Draining
                    },
                )),
                IpAddr::V6(_) => None,
            })
            .collect()
    }

    /// Follows `intent` and `events` until the intent's source is gone.
    pub async fn run(
        mut self,
        mut intent: watch::Receiver<Option<Arc<DeclaredNode>>>,
        mut events: Subscription,
    ) {
        let mut refresh = tokio::time::interval(REFRESH_EVERY);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        let mut current = intent.borrow_and_update().clone();
        let mut reach = self.reach.clone();
        loop {
            self.pass(current.as_deref()).await;
            let reach_changed = async {
                match reach.as_mut() {
                    Some(r) => {
                        if r.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::pin!(reach_changed);
            let intent_changed = loop {
                tokio::select! {
                    () = &mut reach_changed => break false,
                    changed = intent.changed() => match changed {
                        Ok(()) => break true,
                        Err(_) => return,
                    },
                    w = events.next() => {
                        let mut all = vec![w];
                        all.extend(events.drain());
                        if self.forget(current.as_deref(), &all) {
                            break false;
                        }
                    }
                    _ = refresh.tick() => {
                        self.known.clear();
                        self.absent.clear();
                        break false;
                    }
                }
            };
            if intent_changed {
                current = intent.borrow_and_update().clone();
            }
        }
    }

    /// Forgets what `updates` say changed; returns whether a declared container is
    /// among them (then a pass is due).
    pub fn forget(&mut self, intent: Option<&DeclaredNode>, updates: &[Watched]) -> bool {
        let declared: BTreeSet<&str> = intent
            .map(DeclaredNode::container_names)
            .unwrap_or_default();
        let mut due = false;
        for u in updates {
            match u {
                Watched::Subscribed => {
                    self.known.clear();
                    self.absent.clear();
                    due = true;
                }
                Watched::Event(ev) => {
                    let by_id = self
                        .known
                        .iter()
                        .find(|(_, r)| r.id == ev.id)
                        .map(|(n, _)| n.clone());
                    if let Some(name) = by_id {
                        self.known.remove(&name);
                        due = true;
                    }
                    if declared.contains(ev.name.as_str()) {
                        self.known.remove(&ev.name);
                        self.absent.remove(&ev.name);
                        due = true;
                    }
                }
                Watched::Lost(_) => {}
            }
        }
        due
    }

    /// Looks up the declared containers neither known to run nor found absent since the
    /// last event naming them, and publishes the result if it differs from what was
    /// published.
    pub async fn pass(&mut self, intent: Option<&DeclaredNode>) {
        let Some(intent) = intent else { return };
        let names = intent.container_names();
        self.known.retain(|n, _| names.contains(n.as_str()));
        self.absent.retain(|n| names.contains(n.as_str()));
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !self.known.contains_key(**n) && !self.absent.contains(**n))
            .map(|n| (*n).to_owned())
            .collect();
        let resolver = &self.resolver;
        let t0 = std::time::Instant::now();
        let asked = missing.len();
        let found: Vec<(String, Result<Option<Resolved>, String>)> = stream::iter(missing)
            .map(|n: String| async move {
                let r = resolver.resolve(&n).await;
                (n, r)
            })
            .buffer_unordered(PARALLEL_LOOKUPS)
            .collect()
            .await;
        if asked > 0 {
            debug!(
                asked,
                ms = t0.elapsed().as_millis() as u64,
                "declared containers looked up"
            );
        }
        for (name, r) in found {
            match r {
                Ok(Some(r)) => {
                    self.known.insert(name, r);
                }
                Ok(None) => {
                    debug!(container = %name, "declared container not running (yet)");
                    self.absent.insert(name);
                }
                Err(e) => warn!(container = %name, error = %e, "looking up a declared container"),
            }
        }
        let mut next = DeclaredNode {
            containers: (self.known.iter())
                .map(|(n, r)| (n.clone(), r.netns.clone()))
                .collect(),
            ..intent.clone()
        };
        let unreachable = self.unreachable();
        if let Some(lb) = next.lb.as_mut() {
            let changed = lb.drain_unreachable(&unreachable);
            if changed > 0 {
                debug!(
                    changed,
                    ?unreachable,
                    "backends on nodes this one cannot reach: out of the balancing here"
                );
            }
        }
        if self.out.borrow().as_deref() == Some(&next) {
            return;
        }
        // What the reconcilers follow, reachability verdicts included, is what people see.
        self.dump(&next);
        self.out.send_replace(Some(Arc::new(next)));
    }

    /// Writes the published state to `<dump_dir>/{overlay,dns,lb}.json` (each only if
    /// changed), for people and tools.
    fn dump(&self, d: &DeclaredNode) {
        let Some(dir) = &self.dump_dir else {
            return;
        };
        let mut results = vec![write_if_changed(&dir.join("overlay.json"), &d.overlay)];
        if let Some(dns) = &d.dns {
            results.push(write_if_changed(&dir.join("dns.json"), dns));
        }
        if let Some(lb) = &d.lb {
            results.push(write_if_changed(&dir.join("lb.json"), lb));
        }
        for r in results {
            if let Err(e) = r {
                warn!(dir = %dir.display(), error = %e, "writing the declared state for people");
            }
        }
    }
}

#[cfg(test)]
mod tests;
