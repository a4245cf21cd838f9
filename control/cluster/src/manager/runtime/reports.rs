//! Task reports and the store writes nodes cause, on the leader. Every write is an entry
//! in the Raft log, fsynced on every manager, so what a node sends is cut down first to
//! what changes something: updates of its own tasks that move them forward (a task only
//! moves forward), the latest per task, with bounded text. A report left with nothing
//! writes nothing. What does write is bounded per node ([`WriteBudget`]): a node that
//! reports faster is told to retry, and its executor sends the latest states again on its
//! next pass.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::store::{ClusterState, TaskStatusUpdate};

/// Longest status text kept (message, error, container ID), in bytes.
pub(super) const MAX_STATUS_TEXT: usize = 2048;
/// Store writes a node may cause at once...
const BURST: f64 = 20.0;
/// ...and per second after that.
const PER_SECOND: f64 = 10.0;

/// The updates of `updates` that change something in `state`: for tasks placed on
/// `node_id`, moving them forward, the furthest per task, text cut to
/// [`MAX_STATUS_TEXT`].
pub(super) fn useful_updates(
    state: &ClusterState,
    node_id: &str,
    updates: Vec<TaskStatusUpdate>,
) -> Vec<TaskStatusUpdate> {
    let mut latest: BTreeMap<String, TaskStatusUpdate> = BTreeMap::new();
    for mut u in updates {
        let Some(task) = state.tasks.get(&u.task_id) else {
            continue;
        };
        if task.node_id.as_deref() != Some(node_id) || u.status.state <= task.status.state {
            continue;
        }
        if latest
            .get(&u.task_id)
            .is_some_and(|prev| prev.status.state >= u.status.state)
        {
            continue;
        }
        cut(&mut u.status.message);
        if let Some(err) = u.status.err.as_mut() {
            cut(err);
        }
        if let Some(id) = u.status.container_id.as_mut() {
            cut(id);
        }
        latest.insert(u.task_id.clone(), u);
    }
    latest.into_values().collect()
}

/// Cuts `text` to at most [`MAX_STATUS_TEXT`] bytes, on a character boundary.
fn cut(text: &mut String) {
    if text.len() > MAX_STATUS_TEXT {
        let mut end = MAX_STATUS_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// How many store writes each node may still cause: a token bucket per node ([`BURST`]
/// at once, [`PER_SECOND`] after that). In the leader's memory; a new leader starts
/// everyone full.
#[derive(Default)]
pub(super) struct WriteBudget {
    by_node: HashMap<String, (f64, Instant)>,
}

impl WriteBudget {
    /// Takes one write from `node`'s budget at `now`; false when it has none left.
    pub(super) fn take(&mut self, node: &str, now: Instant) -> bool {
        let (tokens, at) = self.by_node.entry(node.to_owned()).or_insert((BURST, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * PER_SECOND;
        *tokens = (*tokens + refill).min(BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets nodes that are no longer in `state`.
    pub(super) fn retain_members(&mut self, state: &ClusterState) {
        self.by_node.retain(|id, _| state.nodes.contains_key(id));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{Task, TaskState, TaskStatus};

    fn task(id: &str, node: &str, state: TaskState) -> Task {
        Task {
            id: id.into(),
            service_id: "s1".into(),
            slot: 1,
            node_id: Some(node.into()),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn update(id: &str, state: TaskState, message: &str) -> TaskStatusUpdate {
        TaskStatusUpdate {
            task_id: id.into(),
            status: TaskStatus {
                state,
                message: message.into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn only_forward_moves_of_the_nodes_own_tasks_are_kept() {
        let mut state = ClusterState::default();
        for t in [
            task("mine", "n1", TaskState::Starting),
            task("theirs", "n2", TaskState::Starting),
        ] {
            state.tasks.insert(t.id.clone(), t);
        }
        let kept = useful_updates(
            &state,
            "n1",
            vec![
                update("theirs", TaskState::Failed, "not yours"),
                update("unknown", TaskState::Running, "no such task"),
                update("mine", TaskState::Starting, "same state: nothing new"),
                update("mine", TaskState::Preparing, "backwards"),
                update("mine", TaskState::Failed, "furthest"),
                update("mine", TaskState::Running, "behind the furthest"),
            ],
        );
        assert_eq!(kept, vec![update("mine", TaskState::Failed, "furthest")]);
        // Empty and no-op reports come out empty: nothing to write.
        assert!(useful_updates(&state, "n1", vec![]).is_empty());
        assert!(useful_updates(
            &state,
            "n1",
            vec![update("mine", TaskState::Starting, "again")]
        )
        .is_empty());
    }

    #[test]
    fn status_text_is_bounded() {
        let mut state = ClusterState::default();
        state
            .tasks
            .insert("t1".into(), task("t1", "n1", TaskState::Starting));
        let mut long = update("t1", TaskState::Failed, &"é".repeat(MAX_STATUS_TEXT));
        long.status.err = Some("x".repeat(10 * MAX_STATUS_TEXT));
        let kept = useful_updates(&state, "n1", vec![long]);
        assert!(kept[0].status.message.len() <= MAX_STATUS_TEXT);
        assert!(kept[0].status.message.chars().all(|c| c == 'é'));
        assert_eq!(kept[0].status.err.as_ref().unwrap().len(), MAX_STATUS_TEXT);
    }

    #[test]
    fn each_node_has_a_burst_then_a_steady_rate() {
        let mut budget = WriteBudget::default();
        let t0 = Instant::now();
        let burst = (0..100).take_while(|_| budget.take("n1", t0)).count();
        assert_eq!(burst, BURST as usize);
        assert!(budget.take("n2", t0), "another node has its own budget");
        assert!(!budget.take("n1", t0 + Duration::from_millis(50)));
        let later = t0 + Duration::from_secs(1);
        let refilled = (0..100).take_while(|_| budget.take("n1", later)).count();
        assert_eq!(refilled, PER_SECOND as usize);
        let mut state = ClusterState::default();
        state.nodes.clear();
        budget.retain_members(&state);
        assert!(budget.by_node.is_empty());
    }
}
