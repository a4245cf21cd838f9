//! Task containers made by agents before shoal's own task label
//! ([`LABEL_SHOAL_TASK_ID`](super::LABEL_SHOAL_TASK_ID)): they carry Swarm's task labels
//! and shoal's slot label only. Such a container is adopted, and from then on stopped
//! and removed like any of the executor's, only when its task is in the store and placed
//! on this node: then shoal made it for that very task. Any other is left alone (its
//! task is gone from the store, or it names another node's task: nothing says it is
//! shoal's to remove), logged once; `shoal agent cleanup` removes what is left.
//!
//! Why not adopt every container with the slot label: that label alone is no proof, and
//! removing a container is not undone. Why not relabel: Docker cannot add a label to an
//! existing container, and the container is replaced anyway at the task's next update.

use std::collections::HashSet;

use shoal_cluster::store::ClusterState;
use tracing::{info, warn};

use super::containers::Observed;

/// What the executor remembers of older agents' containers.
#[derive(Debug, Default)]
pub(super) struct Legacy {
    /// Containers already reported as adopted or left alone (each is logged once).
    logged: HashSet<String>,
}

impl Legacy {
    /// The containers of `found` to adopt on node `me`; the others are left alone.
    pub(super) fn adopt(
        &mut self,
        state: &ClusterState,
        me: &str,
        found: Vec<Observed>,
    ) -> Vec<Observed> {
        let mut adopted = Vec::new();
        for o in found {
            let ours = state
                .tasks
                .get(&o.task_id)
                .is_some_and(|t| t.node_id.as_deref() == Some(me));
            let first = self.logged.insert(o.id.clone());
            if ours {
                if first {
                    info!(container = %o.id, task = %o.task_id, "adopted a task container made before shoal's own task label");
                }
                adopted.push(o);
            } else if first {
                warn!(container = %o.id, task = %o.task_id, "a container with Swarm's task labels whose task this node does not have is left alone (remove it with docker rm, or shoal agent cleanup, if it is a leftover)");
            }
        }
        adopted
    }
}

#[cfg(test)]
mod tests {
    use shoal_cluster::store::{Task, TaskState, TaskStatus};

    use super::*;

    fn observed(container: &str, task: &str) -> Observed {
        Observed::running(container, task)
    }

    fn task(id: &str, node: &str) -> Task {
        Task {
            id: id.into(),
            service_id: "s1".into(),
            slot: 1,
            node_id: Some(node.into()),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Running,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn only_containers_of_this_nodes_tasks_in_the_store_are_adopted() {
        let mut state = ClusterState::default();
        state.tasks.insert("t1".into(), task("t1", "me"));
        state.tasks.insert("t2".into(), task("t2", "other"));
        let mut legacy = Legacy::default();
        let found = vec![
            observed("c1", "t1"),
            observed("c2", "t2"),
            observed("c3", "gone"),
        ];
        let adopted = legacy.adopt(&state, "me", found.clone());
        assert_eq!(
            adopted.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
            ["c1"]
        );
        // The same again: the same answer (logged once, decided each time).
        assert_eq!(legacy.adopt(&state, "me", found).len(), 1);
    }
}
