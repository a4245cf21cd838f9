//! The restart policy: when an ended task's slot gets a new task (`--restart-condition`,
//! `--restart-delay`, `--restart-max-attempts`, `--restart-window`), with a backoff for
//! a crash loop.
//!
//! The counters travel on the tasks (each replacement carries its predecessor's, see
//! [`carried`]), so they are store state: a new leader goes on counting, and the leader
//! keeps no table of its own.

use shoal_cluster::store::{RestartCondition, ServiceSpec, Task, TaskState};

/// The longest a crash-looping slot waits between restarts.
pub const MAX_BACKOFF_MS: u64 = 5 * 60 * 1000;
/// A task that ran at least this long before failing ends a run of failures: its
/// replacement waits the plain restart delay again.
pub const STABLE_RUN_MS: u64 = 60 * 1000;

/// What to do with a slot whose task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Replace it now.
    Now,
    /// Not yet: its delay has not passed.
    Later,
    /// Never: the restart condition or the attempt limit says so.
    Never,
}

/// The wait before the replacement of a task that is the `failures_in_a_row`-th failure
/// in a row: the restart delay, doubled for each failure after the first, capped.
pub fn backoff_ms(delay_ms: u64, failures_in_a_row: u32) -> u64 {
    let doublings = failures_in_a_row.saturating_sub(1).min(16);
    delay_ms
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF_MS.max(delay_ms))
}

fn failed(t: &Task) -> bool {
    matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
}

/// Restarts counted in the window as of `now` (0 once the window has passed).
fn attempts_in_window(t: &Task, spec: &ServiceSpec, now_ms: u64) -> u64 {
    let window = spec.restart_window_ms;
    if window > 0 && now_ms.saturating_sub(t.restart_window_start_ms) > window {
        0
    } else {
        t.restarts
    }
}

/// Whether the ended task `t` (made from `spec`) is replaced, and when. A job's task
/// that completed is never replaced: for a job `any` means `on-failure` (as Swarm).
pub fn decide(t: &Task, spec: &ServiceSpec, now_ms: u64) -> Restart {
    let wanted = match spec.restart_condition {
        RestartCondition::Any if spec.mode.is_job() => t.status.state != TaskState::Complete,
        RestartCondition::Any => true,
        RestartCondition::OnFailure => t.status.state != TaskState::Complete,
        RestartCondition::None => false,
    };
    if !wanted {
        return Restart::Never;
    }
    if spec.restart_max_attempts > 0
        && attempts_in_window(t, spec, now_ms) >= spec.restart_max_attempts
    {
        return Restart::Never;
    }
    let failures = if failed(t) {
        t.failures_in_a_row + 1
    } else {
        0
    };
    let wait = backoff_ms(spec.restart_delay_ms, failures);
    if now_ms >= t.status.timestamp_ms.saturating_add(wait) {
        Restart::Now
    } else {
        Restart::Later
    }
}

/// The counters a replacement of the ended task `ended` starts with.
pub fn carried(ended: &Task, spec: &ServiceSpec, now_ms: u64) -> (u64, u64, u32) {
    let (restarts, window_start) = match attempts_in_window(ended, spec, now_ms) {
        0 => (1, now_ms),
        n => (n + 1, ended.restart_window_start_ms),
    };
    let ran_ms = ended.status.timestamp_ms.saturating_sub(ended.created_ms);
    let failures = if !failed(ended) {
        0
    } else if ran_ms >= STABLE_RUN_MS {
        1
    } else {
        ended.failures_in_a_row + 1
    };
    (restarts, window_start, failures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_cluster::store::{ServiceMode, TaskStatus};

    fn spec() -> ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "name": "s", "image": "i", "mode": {"replicated": {"replicas": 1}}
        }))
        .unwrap()
    }

    fn ended(state: TaskState, at: u64, failures_in_a_row: u32) -> Task {
        Task {
            id: "t".into(),
            service_id: "s".into(),
            slot: 1,
            node_id: Some("n".into()),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state,
                timestamp_ms: at,
                ..Default::default()
            },
            networks: vec![],
            force_update: 0,
            spec: None,
            restarts: 0,
            restart_window_start_ms: 0,
            failures_in_a_row,
            job_iteration: None,
            created_ms: at.saturating_sub(1000),
            version: 0,
        }
    }

    #[test]
    fn a_crash_loop_backs_off_and_a_long_run_resets_it() {
        let s = spec();
        assert_eq!(s.restart_delay_ms, 5_000, "Swarm's default");
        assert!(matches!(s.mode, ServiceMode::Replicated { replicas: 1 }));
        assert_eq!(backoff_ms(5_000, 0), 5_000);
        assert_eq!(backoff_ms(5_000, 1), 5_000);
        assert_eq!(backoff_ms(5_000, 2), 10_000);
        assert_eq!(backoff_ms(5_000, 4), 40_000);
        assert_eq!(backoff_ms(5_000, 40), MAX_BACKOFF_MS);
        assert_eq!(backoff_ms(0, 9), 0, "no delay asked: none");

        // Third failure in a row: waits 4 x 5 s.
        let t = ended(TaskState::Failed, 100_000, 2);
        assert_eq!(decide(&t, &s, 100_000 + 19_999), Restart::Later);
        assert_eq!(decide(&t, &s, 100_000 + 20_000), Restart::Now);
        assert_eq!(carried(&t, &s, 120_000).2, 3);
        // A task that ran a minute before failing starts the count again.
        let mut long = ended(TaskState::Failed, 100_000, 5);
        long.created_ms = 100_000 - STABLE_RUN_MS;
        assert_eq!(carried(&long, &s, 120_000).2, 1);
        // A clean exit is no failure.
        assert_eq!(carried(&ended(TaskState::Complete, 1, 3), &s, 9).2, 0);
    }

    #[test]
    fn attempts_are_limited_within_the_window_and_conditions_hold() {
        let mut s = spec();
        s.restart_max_attempts = 2;
        s.restart_window_ms = 60_000;
        let mut t = ended(TaskState::Failed, 10_000, 0);
        t.restarts = 2;
        t.restart_window_start_ms = 5_000;
        assert_eq!(decide(&t, &s, 30_000), Restart::Never, "two restarts used");
        assert_eq!(
            decide(&t, &s, 70_000),
            Restart::Now,
            "the window has passed: counting starts again"
        );
        assert_eq!(carried(&t, &s, 70_000), (1, 70_000, 1));
        t.restarts = 1;
        assert_eq!(carried(&t, &s, 30_000), (2, 5_000, 1));

        s.restart_condition = RestartCondition::OnFailure;
        assert_eq!(
            decide(&ended(TaskState::Complete, 0, 0), &s, 99_999),
            Restart::Never
        );
        s.restart_condition = RestartCondition::None;
        assert_eq!(
            decide(&ended(TaskState::Failed, 0, 0), &s, 99_999),
            Restart::Never
        );
    }

    #[test]
    fn a_job_restarts_only_what_failed_even_with_condition_any() {
        let mut s = spec();
        s.mode = ServiceMode::GlobalJob;
        assert_eq!(s.restart_condition, RestartCondition::Any);
        assert_eq!(
            decide(&ended(TaskState::Complete, 0, 0), &s, 99_999),
            Restart::Never
        );
        assert_eq!(
            decide(&ended(TaskState::Failed, 0, 0), &s, 99_999),
            Restart::Now
        );
    }
}
