use std::collections::{BTreeMap, BTreeSet};

use shoal_cluster::store::{
    Availability, Command, JobStatus, NodeStatus, RestartCondition, Role, Service, ServiceMode,
    TaskState, TaskStatus, TaskStatusUpdate, DEFAULT_RESTART_DELAY_MS,
};

use super::super::tests::{node, service, Sim};

fn job(id: &str, mode: ServiceMode) -> Service {
    let mut s = service(id, mode);
    s.job_status = Some(JobStatus::default());
    s
}

/// Tasks of `id` by state, for messages.
fn states(sim: &Sim, id: &str) -> Vec<(u64, Option<u64>, TaskState, TaskState)> {
    let mut v: Vec<_> = sim
        .state
        .service_tasks(id)
        .map(|t| (t.slot, t.job_iteration, t.desired_state, t.status.state))
        .collect();
    v.sort();
    v
}

fn running(sim: &Sim, id: &str) -> Vec<String> {
    sim.state
        .service_tasks(id)
        .filter(|t| t.status.state == TaskState::Running)
        .map(|t| t.id.clone())
        .collect()
}

fn completed(sim: &Sim, id: &str, iteration: u64) -> usize {
    sim.state
        .service_tasks(id)
        .filter(|t| t.job_iteration == Some(iteration) && t.status.state == TaskState::Complete)
        .count()
}

/// What a node reports when a task's process exits.
fn exit(sim: &mut Sim, task: &str, state: TaskState) {
    let node = sim.state.tasks[task].node_id.clone().unwrap();
    let now = sim.now;
    sim.set(Command::UpdateTaskStatus {
        node_id: node,
        updates: vec![TaskStatusUpdate {
            task_id: task.into(),
            status: TaskStatus {
                state,
                timestamp_ms: now,
                exit_code: Some(if state == TaskState::Complete { 0 } else { 1 }),
                ..Default::default()
            },
        }],
    });
}

/// What the manager does on any change of a job: a new iteration.
fn next_iteration(sim: &mut Sim, id: &str) {
    let mut s = sim.state.services[id].clone();
    let j = s.job_status.get_or_insert_with(JobStatus::default);
    j.job_iteration += 1;
    j.last_execution_ms = sim.now;
    sim.set(Command::UpdateService {
        service: Box::new(s),
    });
}

#[test]
fn a_replicated_job_runs_its_completions_at_most_max_concurrent_at_once() {
    let mut sim = Sim::new(&["a", "b", "c"]);
    sim.add(job(
        "j",
        ServiceMode::ReplicatedJob {
            max_concurrent: 2,
            total_completions: 5,
        },
    ));
    sim.settle();
    let mut most = 0;
    for _ in 0..10 {
        let now_running = running(&sim, "j");
        most = most.max(now_running.len());
        let Some(first) = now_running.first().cloned() else {
            break;
        };
        // One at a time: the next one starts as soon as a place is free.
        exit(&mut sim, &first, TaskState::Complete);
        sim.settle();
    }
    assert_eq!(most, 2, "{:?}", states(&sim, "j"));
    assert_eq!(completed(&sim, "j", 0), 5, "{:?}", states(&sim, "j"));
    let done: Vec<_> = states(&sim, "j");
    assert_eq!(done.len(), 5, "no task beyond the completions: {done:?}");
    let slots: BTreeSet<u64> = done.iter().map(|t| t.0).collect();
    assert_eq!(slots, (1..=5).collect());
    assert!(
        done.iter()
            .all(|t| t.2 == TaskState::Complete && t.3 == TaskState::Complete),
        "{done:?}"
    );
    // Done: nothing restarts, however long one waits.
    sim.now += 10 * DEFAULT_RESTART_DELAY_MS;
    sim.settle();
    assert_eq!(states(&sim, "j"), done);
}

#[test]
fn max_concurrent_defaults_and_bounds_hold_at_the_edges() {
    let mut sim = Sim::new(&["a"]);
    // More places than completions: only the completions run.
    sim.add(job(
        "wide",
        ServiceMode::ReplicatedJob {
            max_concurrent: 9,
            total_completions: 3,
        },
    ));
    // No completions wanted: nothing at all.
    sim.add(job(
        "none",
        ServiceMode::ReplicatedJob {
            max_concurrent: 1,
            total_completions: 0,
        },
    ));
    sim.settle();
    assert_eq!(running(&sim, "wide").len(), 3);
    assert_eq!(sim.state.service_tasks("none").count(), 0);
}

#[test]
fn a_failed_job_task_is_replaced_in_its_slot_by_the_restart_policy() {
    let mut sim = Sim::new(&["a", "b"]);
    sim.add(job(
        "j",
        ServiceMode::ReplicatedJob {
            max_concurrent: 1,
            total_completions: 2,
        },
    ));
    sim.settle();
    let first = running(&sim, "j");
    assert_eq!(first.len(), 1);
    let slot = sim.state.tasks[&first[0]].slot;
    exit(&mut sim, &first[0], TaskState::Failed);
    // Within the restart delay the failed task keeps its place: nothing else starts.
    sim.now += 100;
    sim.settle();
    assert!(running(&sim, "j").is_empty(), "{:?}", states(&sim, "j"));
    sim.now += DEFAULT_RESTART_DELAY_MS;
    sim.settle();
    let second = running(&sim, "j");
    assert_eq!(second.len(), 1, "{:?}", states(&sim, "j"));
    let replacement = &sim.state.tasks[&second[0]];
    assert_eq!(replacement.slot, slot, "the same slot");
    assert_eq!(replacement.restarts, 1, "the restart is counted");
    assert_eq!(
        sim.state.tasks[&first[0]].desired_state,
        TaskState::Shutdown
    );
    exit(&mut sim, &second[0], TaskState::Complete);
    sim.settle();
    let third = running(&sim, "j");
    assert_eq!(third.len(), 1);
    exit(&mut sim, &third[0], TaskState::Complete);
    sim.settle();
    assert_eq!(completed(&sim, "j", 0), 2);
    assert!(running(&sim, "j").is_empty());

    // `--restart-condition none`: a failed task stays failed and keeps its place, so
    // the job does not go on without it.
    let mut none = job(
        "n",
        ServiceMode::ReplicatedJob {
            max_concurrent: 1,
            total_completions: 2,
        },
    );
    none.spec.restart_condition = RestartCondition::None;
    sim.add(none);
    sim.settle();
    let only = running(&sim, "n");
    exit(&mut sim, &only[0], TaskState::Failed);
    sim.now += 10 * DEFAULT_RESTART_DELAY_MS;
    sim.settle();
    assert_eq!(
        sim.state.service_tasks("n").count(),
        1,
        "{:?}",
        states(&sim, "n")
    );
}

#[test]
fn a_change_starts_a_new_iteration_and_stops_the_old_ones_tasks() {
    let mut sim = Sim::new(&["a", "b"]);
    sim.add(job(
        "j",
        ServiceMode::ReplicatedJob {
            max_concurrent: 2,
            total_completions: 2,
        },
    ));
    sim.settle();
    for t in running(&sim, "j") {
        exit(&mut sim, &t, TaskState::Complete);
    }
    sim.settle();
    assert_eq!(completed(&sim, "j", 0), 2);

    // `service update --force`: the job runs again, its first run kept as history.
    next_iteration(&mut sim, "j");
    sim.settle();
    let again = running(&sim, "j");
    assert_eq!(again.len(), 2, "{:?}", states(&sim, "j"));
    assert!(again
        .iter()
        .all(|t| sim.state.tasks[t].job_iteration == Some(1)));
    assert_eq!(completed(&sim, "j", 0), 2, "the first run stays as history");

    // A change while it runs: the running tasks of iteration 1 are told to stop.
    next_iteration(&mut sim, "j");
    sim.settle();
    for t in &again {
        assert_eq!(sim.state.tasks[t].desired_state, TaskState::Shutdown);
    }
    let third = running(&sim, "j");
    assert_eq!(third.len(), 2, "{:?}", states(&sim, "j"));
    assert!(third
        .iter()
        .all(|t| sim.state.tasks[t].job_iteration == Some(2)));
}

#[test]
fn a_global_job_runs_once_per_node_and_on_nodes_that_come_later() {
    let mut sim = Sim::new(&["a", "b"]);
    sim.add(job("g", ServiceMode::GlobalJob));
    sim.settle();
    let first = running(&sim, "g");
    assert_eq!(first.len(), 2);
    assert!(sim.state.service_tasks("g").all(|t| t.slot == 0));
    for t in &first {
        exit(&mut sim, t, TaskState::Complete);
    }
    sim.settle();
    sim.now += 10 * DEFAULT_RESTART_DELAY_MS;
    sim.settle();
    assert_eq!(sim.state.service_tasks("g").count(), 2, "once per node");
    assert_eq!(completed(&sim, "g", 0), 2);

    // A node that joins gets its run; a drained one does not.
    sim.set(Command::UpsertNode {
        node: node("c", Role::Worker),
    });
    let mut d = node("d", Role::Worker);
    d.availability = Availability::Drain;
    sim.set(Command::UpsertNode { node: d });
    sim.settle();
    let on: BTreeMap<String, usize> =
        sim.state
            .service_tasks("g")
            .fold(BTreeMap::new(), |mut m, t| {
                *m.entry(t.node_id.clone().unwrap()).or_default() += 1;
                m
            });
    assert_eq!(
        on,
        BTreeMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)])
    );

    // A task that fails is run again on its node after the delay; a Down node's task
    // is stopped and not replaced elsewhere.
    let on_c = running(&sim, "g");
    assert_eq!(on_c.len(), 1);
    exit(&mut sim, &on_c[0], TaskState::Failed);
    sim.now += DEFAULT_RESTART_DELAY_MS;
    sim.settle();
    let retry = running(&sim, "g");
    assert_eq!(retry.len(), 1, "{:?}", states(&sim, "g"));
    assert_eq!(sim.state.tasks[&retry[0]].node_id.as_deref(), Some("c"));
    sim.set(Command::SetStatus {
        id: "c".into(),
        status: NodeStatus::Down,
    });
    sim.settle();
    assert_eq!(
        sim.state.tasks[&retry[0]].desired_state,
        TaskState::Shutdown
    );
    assert!(
        sim.state
            .service_tasks("g")
            .all(|t| t.desired_state != TaskState::Running),
        "{:?}",
        states(&sim, "g")
    );
}
