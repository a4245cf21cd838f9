//! Holding a task's stop until no node sends it new connections.
//!
//! A task told to stop (a rolling update, a scale-down, `service rm`, a node drain)
//! leaves every node's declared state at the store version that told it: no DNS record,
//! a draining backend (no new connections). Each node applies that on its own time; a
//! container stopped before some node has would still get new connections there, and
//! they would fail. So the stop of a running container waits until the leader says
//! every Ready node's dataplane follows a store version at or past the task's
//! withdrawal ([`Withdrawal`]), at most [`BOUND`] (a node that never says must not block
//! stops for good: then the nodes that lag are named). Containers that cannot serve
//! (exited, their network gone) are not held.
//!
//! The withdrawal's store version: the task's own `version` in the state where this
//! executor first sees it told to stop. That is the store version of the task's last
//! change, so it is at or after the change that told it to stop (every later state
//! withdraws it too), and at or before the state's version; a later change of the task
//! (a status report) cannot raise it, since it is taken once. A container whose task the
//! store no longer has (or gives to another node) takes the state's version.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use shoal_cluster::{manager::Withdrawal, store::Task};
use tracing::warn;

use super::plan::Action;

/// Longest a stop is held for its task's withdrawal.
pub(super) const BOUND: Duration = Duration::from_secs(10);

/// A stop held until its task is withdrawn on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Held {
    /// The store version at or past which a node no longer sends the task new
    /// connections.
    pub(super) target: u64,
    /// When this executor first saw the task told to stop.
    pub(super) told: Instant,
}

/// What the leader last said of the nodes' dataplanes, and when.
#[derive(Debug, Clone)]
pub(super) struct Heard {
    /// None: the leader does not keep it (a version from before it did).
    pub(super) withdrawal: Option<Withdrawal>,
    /// When the answer came: as far as this executor can tell, when what it says
    /// became true.
    pub(super) at: Instant,
}

/// What to do with a held stop now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    /// Withdrawn on every node (as this executor learnt at `withdrawn`): stop.
    Stop { withdrawn: Instant },
    /// The leader does not say: stop, as before it did.
    Untold,
    /// Not withdrawn everywhere yet: keep the container.
    Wait,
    /// Held for [`BOUND`] already: stop anyway; these nodes (with the store version
    /// their dataplane follows) have not withdrawn the task.
    BoundHit { lagging: Vec<(String, u64)> },
}

/// The withdrawal's store version of a container whose task is `task` (None: the store
/// has no task of this node for it), first seen told to stop in the state at
/// `state_version`.
pub(super) fn target_version(task: Option<&Task>, state_version: u64) -> u64 {
    task.map(|t| t.version)
        .filter(|v| *v > 0)
        .map_or(state_version, |v| v.min(state_version))
}

/// Whether the stop `held` goes ahead at `now`, after what the leader said (`heard`).
pub(super) fn decide(held: &Held, heard: &Heard, now: Instant) -> Decision {
    let Some(w) = &heard.withdrawal else {
        return Decision::Untold;
    };
    if w.withdrawn_everywhere_version >= held.target {
        return Decision::Stop {
            withdrawn: heard.at,
        };
    }
    if now.duration_since(held.told) >= BOUND {
        return Decision::BoundHit {
            lagging: (w.behind.iter())
                .filter(|(_, v)| **v < held.target)
                .map(|(n, v)| (n.clone(), *v))
                .collect(),
        };
    }
    Decision::Wait
}

/// How a stop that was held came about, for its line at SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Released {
    pub(super) told: Instant,
    /// When every node had withdrawn the task, as far as this executor can tell; None:
    /// the bound was hit first.
    pub(super) withdrawn: Option<Instant>,
}

/// The stops held now, by container ID.
#[derive(Debug, Default)]
pub(super) struct HeldStops {
    held: HashMap<String, Held>,
}

impl HeldStops {
    /// Takes out of `actions` the removals of serving containers whose task is not
    /// withdrawn on every node yet, and marks the ones that go ahead after being held.
    /// `state_version`: the store version the actions were planned from.
    pub(super) fn hold(
        &mut self,
        actions: &mut Vec<Action>,
        state_version: u64,
        heard: &Heard,
        now: Instant,
    ) {
        let mut still = HashMap::new();
        actions.retain_mut(|a| {
            let Action::Remove {
                container,
                task,
                serving: true,
                released,
                ..
            } = a
            else {
                return true;
            };
            let held = self.held.get(container.as_str()).copied().unwrap_or(Held {
                target: target_version(task.as_deref(), state_version),
                told: now,
            });
            let withdrawn = match decide(&held, heard, now) {
                Decision::Wait => {
                    still.insert(container.clone(), held);
                    return false;
                }
                Decision::Untold => return true,
                Decision::Stop { withdrawn } => Some(withdrawn),
                Decision::BoundHit { lagging } => {
                    warn!(
                        task = task.as_ref().map(|t| t.id.as_str()),
                        container = %container,
                        withdrawal = held.target,
                        ?lagging,
                        "stopping a task before every node has withdrawn it (these lag)"
                    );
                    None
                }
            };
            *released = Some(Released {
                told: held.told,
                withdrawn,
            });
            true
        });
        // A container gone, or no longer to stop, is held no more.
        self.held = still;
    }
}

#[cfg(test)]
mod tests {
    use shoal_cluster::store::{TaskState, TaskStatus};

    use super::*;

    fn task(version: u64) -> Task {
        Task {
            id: "t1".into(),
            service_id: "s1".into(),
            slot: 1,
            node_id: Some("n1".into()),
            desired_state: TaskState::Shutdown,
            status: TaskStatus {
                state: TaskState::Running,
                ..Default::default()
            },
            networks: vec![],
            force_update: 0,
            spec: None,
            restarts: 0,
            restart_window_start_ms: 0,
            failures_in_a_row: 0,
            job_iteration: None,
            created_ms: 0,
            version,
        }
    }

    fn heard(everywhere: u64, behind: &[(&str, u64)], at: Instant) -> Heard {
        Heard {
            withdrawal: Some(Withdrawal {
                withdrawn_everywhere_version: everywhere,
                behind: behind.iter().map(|(n, v)| ((*n).into(), *v)).collect(),
            }),
            at,
        }
    }

    fn remove(container: &str, task: Option<Task>, serving: bool) -> Action {
        Action::Remove {
            container: container.into(),
            sandbox: None,
            task: task.map(Box::new),
            failed: None,
            serving,
            released: None,
        }
    }

    #[test]
    fn the_withdrawal_is_the_tasks_own_version_when_the_store_has_it() {
        assert_eq!(target_version(Some(&task(40)), 45), 40);
        assert_eq!(
            target_version(None, 45),
            45,
            "a task gone from the store left it by this state"
        );
        assert_eq!(
            target_version(Some(&task(0)), 45),
            45,
            "a task with no version takes the state's"
        );
    }

    #[test]
    fn a_stop_waits_for_every_node_then_goes_or_gives_up_at_the_bound() {
        let t0 = Instant::now();
        let held = Held {
            target: 40,
            told: t0,
        };
        let at = t0 + Duration::from_millis(300);
        assert_eq!(
            decide(&held, &heard(39, &[("n2", 39)], at), at),
            Decision::Wait
        );
        assert_eq!(
            decide(&held, &heard(40, &[], at), at),
            Decision::Stop { withdrawn: at }
        );
        assert_eq!(
            decide(&held, &heard(52, &[("n3", 52)], at), at),
            Decision::Stop { withdrawn: at },
            "nodes behind the leader but past the task do not hold it"
        );
        let late = t0 + BOUND;
        assert_eq!(
            decide(&held, &heard(0, &[("n2", 0), ("n3", 45)], late), late),
            Decision::BoundHit {
                lagging: vec![("n2".into(), 0)]
            },
            "only the nodes short of the task's withdrawal lag"
        );
        let untold = Heard {
            withdrawal: None,
            at,
        };
        assert_eq!(decide(&held, &untold, at), Decision::Untold);
    }

    #[test]
    fn only_serving_containers_are_held_and_the_hold_ends_with_the_withdrawal() {
        let mut stops = HeldStops::default();
        let t0 = Instant::now();
        let mut actions = vec![
            remove("c1", Some(task(40)), true),
            remove("c2", Some(task(41)), false),
            Action::RemoveSandbox {
                sandbox: "s9".into(),
            },
        ];
        stops.hold(&mut actions, 45, &heard(30, &[], t0), t0);
        assert_eq!(actions.len(), 2, "c1 is held, the exited c2 is not");
        assert!(
            matches!(&actions[0], Action::Remove { container, released: None, .. } if container == "c2")
        );

        // Later states do not move the withdrawal on: the task's version then counts.
        let t1 = t0 + Duration::from_millis(400);
        let mut actions = vec![remove("c1", Some(task(47)), true)];
        stops.hold(&mut actions, 47, &heard(44, &[], t1), t1);
        let [Action::Remove { released, .. }] = actions.as_slice() else {
            panic!("c1 goes: every node is past version 40");
        };
        assert_eq!(
            *released,
            Some(Released {
                told: t0,
                withdrawn: Some(t1)
            })
        );
        assert!(stops.held.is_empty());
    }

    #[test]
    fn a_container_no_longer_to_stop_is_forgotten() {
        let mut stops = HeldStops::default();
        let t0 = Instant::now();
        let mut actions = vec![remove("c1", None, true)];
        stops.hold(&mut actions, 45, &heard(30, &[], t0), t0);
        assert!(actions.is_empty());
        stops.hold(&mut Vec::new(), 46, &heard(30, &[], t0), t0);
        assert!(stops.held.is_empty(), "c1 is gone");
    }
}
