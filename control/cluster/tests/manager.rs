//! The manager API on real TLS sockets, all nodes in one process on 127.0.0.1 (ephemeral
//! ports, temporary data directories): init, joins, forwarding, tokens, liveness,
//! promotion and demotion, removal, leader loss, restart.
//!
//! Conditions are polled with generous bounds; no fixed sleep is an assertion.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_cluster::manager::{
    join_with, local_role, ClusterError, InitOptions, Joined, Manager, ManagerConfig,
    ManagerStatus, NodeInfo, Role, Timings, Worker,
};
use shoal_cluster::store::{ApplyResult, ClusterState, Command, NodeStatus};
use shoal_cluster::token::JoinToken;

/// Generous bound for a condition that should hold soon.
const WAIT: Duration = Duration::from_secs(30);

fn timings() -> Timings {
    Timings {
        heartbeat_interval: Duration::from_millis(200),
        node_down_after: Duration::from_millis(1500),
        raft_heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(600),
        election_timeout_max: Duration::from_millis(1200),
        request_timeout: Duration::from_secs(3),
        ..Timings::default()
    }
}

/// A temporary base directory, removed on drop.
struct TempBase(PathBuf);

impl TempBase {
    fn new(name: &str) -> TempBase {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "shoal-manager-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempBase(dir)
    }

    fn config(&self, node: &str) -> ManagerConfig {
        ManagerConfig {
            data_dir: self.0.join(node),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: "127.0.0.1:0".parse().unwrap(),
        }
    }
}

impl Drop for TempBase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn info(hostname: &str) -> NodeInfo {
    NodeInfo {
        hostname: hostname.to_string(),
        engine_version: "27.3.1".to_string(),
        resources: Default::default(),
        addr: "127.0.0.1".parse().unwrap(),
        data_path_addr: None,
        labels: BTreeMap::new(),
    }
}

async fn init(base: &TempBase, name: &str) -> Manager {
    Manager::init_with(
        base.config(name),
        info(name),
        InitOptions::default(),
        timings(),
    )
    .await
    .unwrap()
}

async fn join(
    base: &TempBase,
    name: &str,
    manager: &Manager,
    token: &JoinToken,
) -> Result<Joined, ClusterError> {
    join_with(
        manager.advertise_addr(),
        &token.expose_secret(),
        base.config(name),
        info(name),
        timings(),
    )
    .await
}

async fn join_worker(base: &TempBase, name: &str, manager: &Manager) -> Worker {
    let token = manager.join_token(Role::Worker).await.unwrap();
    match join(base, name, manager, &token).await.unwrap() {
        Joined::Worker(w) => w,
        Joined::Manager(_) => panic!("{name} joined as a manager with the worker token"),
    }
}

async fn join_manager(base: &TempBase, name: &str, manager: &Manager) -> Manager {
    let token = manager.join_token(Role::Manager).await.unwrap();
    match join(base, name, manager, &token).await.unwrap() {
        Joined::Manager(m) => m,
        Joined::Worker(_) => panic!("{name} joined as a worker with the manager token"),
    }
}

/// Polls `check` until it returns `Some`, or fails after `WAIT` with `what` and the last
/// thing seen.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) if start.elapsed() > WAIT => {
                panic!("timed out after {WAIT:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn status_of(state: &ClusterState, id: &str) -> Option<NodeStatus> {
    state.nodes.get(id).map(|n| n.status)
}

/// The manager that the others agree is the leader, with every other one Reachable.
async fn settled_leader(managers: &[&Manager]) -> String {
    eventually("one Leader and the other managers Reachable", || async {
        let m = managers[0];
        let state = m.state().await.map_err(|e| e.to_string())?;
        let statuses = m.manager_status(&state);
        let leaders: Vec<&String> = statuses
            .iter()
            .filter(|(_, s)| **s == ManagerStatus::Leader)
            .map(|(id, _)| id)
            .collect();
        let ok = leaders.len() == 1
            && statuses.len() == managers.len()
            && statuses
                .values()
                .all(|s| matches!(s, ManagerStatus::Leader | ManagerStatus::Reachable));
        if ok {
            Ok(leaders[0].clone())
        } else {
            Err(format!("{statuses:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_of_five_nodes_lives_through_joins_tokens_roles_and_leader_loss() {
    let base = TempBase::new("life");
    let m1 = init(&base, "m1").await;
    let state = m1.state().await.unwrap();
    assert_eq!(state.nodes.len(), 1);
    let ingress = state
        .networks
        .values()
        .find(|n| n.name == "ingress")
        .expect("an ingress network");
    assert_eq!(ingress.subnet, Some("10.0.0.0/24".parse().unwrap()));
    assert_eq!(ingress.vni, Some(4096));
    assert_eq!(state.cluster.as_ref().unwrap().data_path_port, 4789);

    let w1 = join_worker(&base, "w1", &m1).await;
    let w2 = join_worker(&base, "w2", &m1).await;
    let m2 = join_manager(&base, "m2", &m1).await;
    // The third manager joins through a follower.
    let m3 = join_manager(&base, "m3", &m2).await;

    let state = m1.state().await.unwrap();
    assert_eq!(state.nodes.len(), 5, "{:?}", state.nodes.keys());
    let role = |id: &str| state.nodes[id].role;
    use shoal_cluster::store::Role as R;
    assert_eq!(role(m1.node_id()), R::Manager);
    assert_eq!(role(m2.node_id()), R::Manager);
    assert_eq!(role(m3.node_id()), R::Manager);
    assert_eq!(role(w1.node_id()), R::Worker);
    assert_eq!(role(w2.node_id()), R::Worker);
    assert!(state.nodes.values().all(|n| n.status == NodeStatus::Ready));
    assert_eq!(state.nodes[w1.node_id()].engine_version, "27.3.1");
    assert_eq!(state.nodes[w1.node_id()].hostname, "w1");

    let leader = settled_leader(&[&m1, &m2, &m3]).await;
    assert_eq!(leader, m1.node_id());

    // A follower forwards writes to the leader.
    let applied = m3
        .execute(Command::UpdateNodeLabels {
            id: w1.node_id().to_string(),
            add: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            remove: vec![],
        })
        .await
        .unwrap();
    assert!(
        matches!(applied, ApplyResult::Applied { .. }),
        "{applied:?}"
    );
    let state = m2.state().await.unwrap();
    assert_eq!(state.nodes[w1.node_id()].labels["zone"], "a");

    // Worker token rotation: the old token is refused, the new one works, nodes stay.
    let old = m1.join_token(Role::Worker).await.unwrap();
    let new = m2.rotate_token(Role::Worker).await.unwrap();
    assert_ne!(old, new);
    assert_eq!(m3.join_token(Role::Worker).await.unwrap(), new);
    let refused = join(&base, "w3-old", &m2, &old).await;
    assert!(
        matches!(refused, Err(ClusterError::BadToken)),
        "{:?}",
        refused.err()
    );
    assert_eq!(local_role(&base.config("w3-old").data_dir).unwrap(), None);
    let w3 = match join(&base, "w3", &m2, &new).await.unwrap() {
        Joined::Worker(w) => w,
        Joined::Manager(_) => panic!("w3 is a worker"),
    };
    let w3_id = w3.node_id().to_string();
    // The manager token was not touched.
    assert_eq!(
        m1.join_token(Role::Manager).await.unwrap(),
        m3.join_token(Role::Manager).await.unwrap()
    );
    // Nodes already in still heartbeat with their certificates.
    let state = m1.state().await.unwrap();
    assert_eq!(status_of(&state, w1.node_id()), Some(NodeStatus::Ready));

    // A worker leaves: Down, still listed.
    w3.leave().await.unwrap();
    assert_eq!(local_role(&base.config("w3").data_dir).unwrap(), None);
    eventually("w3 Down after leaving", || async {
        let state = m1.state().await.map_err(|e| e.to_string())?;
        match status_of(&state, &w3_id) {
            Some(NodeStatus::Down) => Ok(()),
            s => Err(format!("{s:?}")),
        }
    })
    .await;

    // A Down node cannot be promoted: it could never join the Raft group.
    let refused = m1.promote(&w3_id).await;
    assert!(refused.is_err(), "promoting a Down node: {refused:?}");
    let state = m1.state().await.unwrap();
    assert_eq!(state.nodes[&w3_id].role, R::Worker);
    assert_eq!(state.nodes[&w3_id].raft_id, None);

    // Promote w1: the promotion answers only once w1 is a voter (no waiting after it),
    // then it is Reachable, with a manager certificate.
    m2.promote(w1.node_id()).await.unwrap();
    let w1_id = w1.node_id().to_string();
    let state = m1.state().await.unwrap();
    let w1_raft = state.nodes[&w1_id]
        .raft_id
        .expect("a promoted node has a Raft ID");
    let leader_view = m1.store_status().expect("m1 runs a store member");
    assert!(
        leader_view.voters.contains_key(&w1_raft),
        "w1 ({w1_raft}) a voter when promote returns: {leader_view:?}"
    );
    eventually("w1 Reachable as a manager", || async {
        let state = m1.state().await.map_err(|e| e.to_string())?;
        match m1.manager_status(&state).get(&w1_id) {
            Some(ManagerStatus::Reachable) => Ok(()),
            s => Err(format!("{s:?}")),
        }
    })
    .await;
    let w1_manager = w1.manager().expect("w1 runs as a manager");
    assert_eq!(w1_manager.role(), Role::Manager);
    assert_eq!(w1_manager.state().await.unwrap().nodes.len(), 6);
    assert!(matches!(
        m1.promote(w1.node_id()).await,
        Err(ClusterError::AlreadyRole { .. })
    ));

    // Demote it again: a worker, out of the managers.
    m1.demote(w1.node_id()).await.unwrap();
    eventually("w1 back to a worker", || async {
        let state = m1.state().await.map_err(|e| e.to_string())?;
        let in_status = m1.manager_status(&state).contains_key(&w1_id);
        if w1.role() == Role::Worker && w1.manager().is_none() && !in_status {
            Ok(())
        } else {
            Err(format!(
                "role {:?}, listed as manager {in_status}",
                w1.role()
            ))
        }
    })
    .await;
    drop(w1_manager);

    // Removing a Ready node needs force.
    let refused = m1.remove_node(w2.node_id(), false).await;
    assert!(
        matches!(refused, Err(ClusterError::NodeIsReady(_))),
        "{refused:?}"
    );
    let refused = m1.remove_node("nosuchnode", true).await;
    assert!(
        matches!(refused, Err(ClusterError::UnknownNode(_))),
        "{refused:?}"
    );
    let refused = m2.remove_node(m3.node_id(), false).await;
    assert!(refused.is_err(), "a Ready manager without force");
    m3.remove_node(w2.node_id(), true).await.unwrap();
    let state = m1.state().await.unwrap();
    assert!(!state.nodes.contains_key(w2.node_id()));
    w2.shutdown().await;

    // Kill the leader: another is elected, the state is readable and writable.
    let m1_config = ManagerConfig {
        data_dir: base.config("m1").data_dir,
        listen: m1.listen_addr(),
        advertise: m1.advertise_addr(),
    };
    let m1_id = m1.node_id().to_string();
    m1.shutdown().await;
    let new_leader = eventually("a new leader", || async {
        match m2.leader() {
            Some(l) if l != m1_id => Ok(l),
            l => Err(format!("{l:?}")),
        }
    })
    .await;
    assert!(new_leader == m2.node_id() || new_leader == m3.node_id());
    let applied = m3
        .execute(Command::UpdateNodeLabels {
            id: w1.node_id().to_string(),
            add: BTreeMap::from([("after".to_string(), "failover".to_string())]),
            remove: vec![],
        })
        .await
        .unwrap();
    assert!(matches!(applied, ApplyResult::Applied { .. }));
    let state = m2.state().await.unwrap();
    assert_eq!(state.nodes[w1.node_id()].labels["after"], "failover");
    assert_eq!(state.nodes[w1.node_id()].labels["zone"], "a");
    eventually("m1 Unreachable", || async {
        let state = m2.state().await.map_err(|e| e.to_string())?;
        match m2.manager_status(&state).get(&m1_id) {
            Some(ManagerStatus::Unreachable) => Ok(()),
            s => Err(format!("{s:?}")),
        }
    })
    .await;

    // The old leader restarts from its data directory and rejoins.
    let m1 = Manager::resume(m1_config).await.unwrap();
    assert_eq!(m1.node_id(), m1_id);
    eventually("m1 back and Reachable", || async {
        let state = m2.state().await.map_err(|e| e.to_string())?;
        match m2.manager_status(&state).get(&m1_id) {
            Some(ManagerStatus::Reachable | ManagerStatus::Leader) => Ok(()),
            s => Err(format!("{s:?}")),
        }
    })
    .await;
    let state = eventually("m1 serves the current state", || async {
        m1.state().await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(state.nodes[w1.node_id()].labels["after"], "failover");

    for m in [m1, m2, m3] {
        m.shutdown().await;
    }
    w1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_of_another_cluster_or_with_a_wrong_secret_are_refused() {
    let base = TempBase::new("tokens");
    let a = init(&base, "a").await;
    let b = init(&base, "b").await;

    // B's token names B's CA: the handshake with A fails before anything is sent.
    let b_token = b.join_token(Role::Worker).await.unwrap();
    let r = join(&base, "x1", &a, &b_token).await;
    assert!(matches!(r, Err(ClusterError::CaMismatch)), "{:?}", r.err());
    assert_eq!(
        ClusterError::CaMismatch.to_string(),
        "the manager's CA does not match the token"
    );
    assert_eq!(a.join_requests(), 0, "A never saw a join request");

    // A's CA digest with a made-up secret: refused by A, and the message hides the secret.
    let a_digest = *a.join_token(Role::Worker).await.unwrap().ca_digest();
    let forged = JoinToken::generate(a_digest);
    let r = join(&base, "x2", &a, &forged).await;
    let err = r.err().expect("a wrong secret is refused");
    assert!(matches!(err, ClusterError::BadToken), "{err:?}");
    assert!(!err.to_string().contains(&forged.expose_secret()[60..]));
    assert_eq!(a.join_requests(), 1);

    // Not a token at all.
    let r = join_with(
        a.advertise_addr(),
        "SWMTKN-1-nonsense",
        base.config("x3"),
        info("x3"),
        timings(),
    )
    .await;
    assert!(
        matches!(r, Err(ClusterError::MalformedToken(_))),
        "{:?}",
        r.err()
    );

    // Address pools no subnet can be cut from: refused before anything is made.
    let pools = InitOptions {
        default_addr_pools: vec!["10.20.0.0/16".parse().unwrap()],
        subnet_prefix_len: 8,
        ..InitOptions::default()
    };
    let r = Manager::init_with(base.config("x5"), info("x5"), pools, timings()).await;
    let err = r.err().expect("unusable pools are refused");
    assert!(matches!(err, ClusterError::AddressPools(_)), "{err:?}");
    assert!(err.to_string().contains("10.20.0.0/16"), "{err}");
    assert!(!base.config("x5").data_dir.exists());

    // A second init in the same directory.
    let again = Manager::init_with(
        base.config("a"),
        info("a"),
        InitOptions::default(),
        timings(),
    )
    .await;
    assert!(matches!(again, Err(ClusterError::AlreadyInCluster)));
    // A join into a directory that is in a cluster.
    let token = a.join_token(Role::Worker).await.unwrap();
    let r = join(&base, "b", &a, &token).await;
    assert!(
        matches!(r, Err(ClusterError::AlreadyInCluster)),
        "{:?}",
        r.err()
    );
    // A manager address that is not listening.
    let dead: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let r = join_with(
        dead,
        &token.expose_secret(),
        base.config("x4"),
        info("x4"),
        timings(),
    )
    .await;
    assert!(
        matches!(r, Err(ClusterError::Unreachable(_))),
        "{:?}",
        r.err()
    );

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_manager_is_kept_and_silent_workers_go_down() {
    let base = TempBase::new("last");
    let m = init(&base, "m").await;
    let w = join_worker(&base, "w", &m).await;
    let w_id = w.node_id().to_string();

    let r = m.demote(m.node_id()).await;
    assert!(matches!(r, Err(ClusterError::LastManager)), "{r:?}");
    let r = m.remove_node(m.node_id(), true).await;
    assert!(matches!(r, Err(ClusterError::LastManager)), "{r:?}");
    let r = m.demote(&w_id).await;
    assert!(matches!(r, Err(ClusterError::AlreadyRole { .. })), "{r:?}");

    // A worker that stops heartbeating is Down within the grace plus slack.
    let stopped = Instant::now();
    w.shutdown().await;
    eventually("the silent worker Down", || async {
        let state = m.state().await.map_err(|e| e.to_string())?;
        match status_of(&state, &w_id) {
            Some(NodeStatus::Down) => Ok(()),
            s => Err(format!("{s:?}")),
        }
    })
    .await;
    let took = stopped.elapsed();
    assert!(
        took < timings().node_down_after + Duration::from_secs(5),
        "Down after {took:?}"
    );
    // It comes back Ready when it heartbeats again.
    let w = Worker::resume(&base.config("w").data_dir).await.unwrap();
    eventually("the worker Ready again", || async {
        let state = m.state().await.map_err(|e| e.to_string())?;
        match status_of(&state, &w_id) {
            Some(NodeStatus::Ready) => Ok(()),
            s => Err(format!("{s:?}")),
        }
    })
    .await;
    assert!(matches!(
        Manager::resume(base.config("w")).await,
        Err(ClusterError::NotManager)
    ));
    // A node that stops right before its promotion (still Ready for the grace) never
    // joins the Raft group: the promotion fails and it stays a worker.
    w.shutdown().await;
    let r = m.promote(&w_id).await;
    let e = r.expect_err("promoting a node that cannot join");
    assert!(e.to_string().contains("stays a worker"), "{e}");
    let state = m.state().await.unwrap();
    assert_eq!(state.nodes[&w_id].role, shoal_cluster::store::Role::Worker);
    assert_eq!(state.nodes[&w_id].raft_id, None);
    assert_eq!(m.store_status().unwrap().voters.len(), 1);

    // Then a Down node is removed without force.
    eventually("the worker Down again", || async {
        let state = m.state().await.map_err(|e| e.to_string())?;
        match status_of(&state, &w_id) {
            Some(NodeStatus::Down) => Ok(()),
            s => Err(format!("{s:?}")),
        }
    })
    .await;
    m.remove_node(&w_id, false).await.unwrap();

    // A manager leaves only with force; the last one ends the cluster.
    let m2 = m.clone();
    assert!(matches!(
        m2.leave(false).await,
        Err(ClusterError::ManagerNeedsForce)
    ));
    let dir = base.config("m").data_dir;
    m.leave(true).await.unwrap();
    assert_eq!(local_role(&dir).unwrap(), None);
    assert!(matches!(
        Manager::resume(base.config("m")).await,
        Err(ClusterError::NotInCluster)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_are_renewed_before_they_expire() {
    let base = TempBase::new("renew");
    // Lifetime = validity + the 1 h backdate; renewal is due with a third of it left,
    // so a 20-minute certificate is due at once: every heartbeat renews.
    let short = Timings {
        cert_validity: Duration::from_secs(20 * 60),
        ..timings()
    };
    let m = Manager::init_with(
        base.config("m"),
        info("m"),
        InitOptions::default(),
        short.clone(),
    )
    .await
    .unwrap();
    let token = m.join_token(Role::Worker).await.unwrap();
    let w = match join_with(
        m.advertise_addr(),
        &token.expose_secret(),
        base.config("w"),
        info("w"),
        short,
    )
    .await
    .unwrap()
    {
        Joined::Worker(w) => w,
        Joined::Manager(_) => panic!("a worker"),
    };
    let (w_first, m_first) = (w.certificate(), m.certificate());
    eventually("both certificates renewed", || async {
        let (wc, mc) = (w.certificate(), m.certificate());
        if wc != w_first && mc != m_first {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    let wc = w.certificate();
    assert_eq!(wc.node_id(), w.node_id());
    assert_eq!(wc.role(), Role::Worker);
    assert_eq!(m.certificate().role(), Role::Manager);
    // The renewed certificates still work: the worker stays Ready past the Down grace.
    let w_id = w.node_id().to_string();
    let until = Instant::now() + timings().node_down_after * 2;
    while Instant::now() < until {
        let state = m.state().await.unwrap();
        assert_eq!(status_of(&state, &w_id), Some(NodeStatus::Ready));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.shutdown().await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_leaving_with_force_leaves_a_working_pair() {
    let base = TempBase::new("leaderleaves");
    let m1 = init(&base, "m1").await;
    let m2 = join_manager(&base, "m2", &m1).await;
    let m3 = join_manager(&base, "m3", &m2).await;
    let leader = settled_leader(&[&m1, &m2, &m3]).await;
    assert_eq!(leader, m1.node_id());
    let m1_id = m1.node_id().to_string();
    let dir = base.config("m1").data_dir;
    m1.leave(true).await.unwrap();
    assert_eq!(local_role(&dir).unwrap(), None);
    let state = eventually("a new leader serving the state", || async {
        m3.state().await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(status_of(&state, &m1_id), Some(NodeStatus::Down));
    assert_eq!(
        m2.manager_status(&state).get(&m1_id),
        Some(&ManagerStatus::Unreachable)
    );
    let applied = m2
        .execute(Command::SetAvailability {
            id: m3.node_id().to_string(),
            availability: shoal_cluster::store::Availability::Drain,
        })
        .await
        .unwrap();
    assert!(matches!(applied, ApplyResult::Applied { .. }));
    // The two left are Leader and Reachable; the one that left stays listed, Unreachable.
    let (m2_id, m3_id) = (m2.node_id().to_string(), m3.node_id().to_string());
    eventually("the pair Leader and Reachable", || async {
        let state = m2.state().await.map_err(|e| e.to_string())?;
        let s = m2.manager_status(&state);
        let mut pair = [s.get(&m2_id).copied(), s.get(&m3_id).copied()];
        pair.sort_by_key(|p| format!("{p:?}"));
        match pair {
            [Some(ManagerStatus::Leader), Some(ManagerStatus::Reachable)] => Ok(()),
            _ => Err(format!("{s:?}")),
        }
    })
    .await;
    m2.shutdown().await;
    m3.shutdown().await;
}

// ---------------------------------------------------------------------------
// Secrets at rest: owner-only files, sealed store, autolock.

/// Every file under `dir` (its path and bytes), checking on the way that every
/// directory is 0700 and every file 0600.
fn owner_only_files(dir: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mode = std::fs::symlink_metadata(dir).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(owner_only_files(&path));
        } else {
            let mode = meta.mode() & 0o7777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn holds(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_is_on_disk_in_the_clear_and_every_file_is_owner_only() {
    let base = TempBase::new("sealed");
    let m1 = init(&base, "m1").await;
    let m2 = join_manager(&base, "m2", &m1).await;
    let w1 = join_worker(&base, "w1", &m1).await;
    let service: shoal_cluster::store::Service = serde_json::from_value(serde_json::json!({
        "id": "svc-vault",
        "spec": {
            "name": "vault",
            "image": "shoal/web:1",
            "env": ["SECRET_ENV=topsecretvalue"],
            "mode": {"replicated": {"replicas": 0}}
        }
    }))
    .unwrap();
    let applied = m1
        .execute(Command::CreateService {
            service: Box::new(service),
        })
        .await
        .unwrap();
    assert!(
        matches!(applied, ApplyResult::Applied { .. }),
        "{applied:?}"
    );
    let worker_token = m1.join_token(Role::Worker).await.unwrap().expose_secret();
    let manager_token = m1.join_token(Role::Manager).await.unwrap().expose_secret();
    let state = m1.state().await.unwrap();
    let version = state.version;
    eventually("m2 applied the service", || async {
        let v = m2.local_state().map(|s| s.version).unwrap_or(0);
        if v >= version {
            Ok(())
        } else {
            Err(format!("m2 at {v}, m1 at {version}"))
        }
    })
    .await;

    let mut secrets: Vec<(String, String)> = vec![
        ("the service's env".into(), "topsecretvalue".into()),
        ("the worker token".into(), worker_token.clone()),
        ("the manager token".into(), manager_token.clone()),
    ];
    // The secret part of each token (after the CA digest) stands alone too.
    for token in [&worker_token, &manager_token] {
        let secret = token.rsplit('-').next().unwrap().to_string();
        secrets.push(("a token's secret".into(), secret));
    }
    assert!(!state.gossip_keys.is_empty());
    for key in &state.gossip_keys {
        secrets.push((format!("gossip key {}", key.id), key.secret.clone()));
    }

    let mut files = 0;
    for node in ["m1", "m2", "w1"] {
        let dir = base.config(node).data_dir;
        for (path, bytes) in owner_only_files(&dir) {
            files += 1;
            for (what, secret) in &secrets {
                assert!(
                    !holds(&bytes, secret),
                    "{} holds {what} in the clear",
                    path.display()
                );
            }
            // Managers hold the CA key and their node key only sealed; a worker's own
            // node key is the one key kept in the clear (0600).
            let workers_own_key = node == "w1" && path.ends_with("identity.json");
            assert!(
                workers_own_key || !holds(&bytes, "PRIVATE KEY"),
                "{} holds a private key in the clear",
                path.display()
            );
        }
    }
    assert!(files >= 12, "only {files} files looked at");
    for m in [m1, m2] {
        m.shutdown().await;
    }
    w1.shutdown().await;
}

/// The manager key file's text (whether a local key is in it says whether it is
/// autolocked).
fn key_file(base: &TempBase, node: &str) -> String {
    std::fs::read_to_string(base.config(node).data_dir.join("manager-key.json")).unwrap()
}

/// Waits until `node`'s data key is wrapped by the unlock key (`locked`) or by a local
/// key, and differs from `before` when given.
async fn key_file_follows(base: &TempBase, node: &str, locked: bool, before: Option<&str>) {
    eventually(
        &format!("{node}'s key file follows (locked: {locked})"),
        || async {
            let text = key_file(base, node);
            let is_locked = !text.contains("local_kek");
            if is_locked == locked && before != Some(text.as_str()) {
                Ok(())
            } else {
                Err(text)
            }
        },
    )
    .await
}

/// Every file's bytes under `dir`, to see that something changed nothing.
fn snapshot_files(dir: &std::path::Path) -> BTreeMap<PathBuf, Vec<u8>> {
    owner_only_files(dir).into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn autolocked_managers_stay_locked_until_unlocked_and_a_rotated_key_retires_the_old() {
    use shoal_cluster::seal::KeyEncryptionKey;

    let base = TempBase::new("autolock");
    let m1 = Manager::init_with(
        base.config("m1"),
        info("m1"),
        InitOptions {
            autolock: true,
            ..InitOptions::default()
        },
        timings(),
    )
    .await
    .unwrap();
    let key1 = m1.unlock_key().await.unwrap().expect("autolock is on");
    assert!(!key_file(&base, "m1").contains("local_kek"));
    // A manager joining later gets the key through the store and rewraps its data key.
    let m2 = join_manager(&base, "m2", &m1).await;
    key_file_follows(&base, "m2", true, None).await;
    let m1_id = m1.node_id().to_string();
    m1.shutdown().await;
    m2.shutdown().await;

    // Restarted: locked, nothing starts; a wrong key is refused and changes nothing.
    for node in ["m1", "m2"] {
        let r = Manager::resume(base.config(node)).await;
        assert!(
            matches!(r, Err(ClusterError::Locked)),
            "{node}: {:?}",
            r.err()
        );
        let before = snapshot_files(&base.config(node).data_dir);
        let r = Manager::unlock(base.config(node), &KeyEncryptionKey::generate()).await;
        let e = r.err().expect("a wrong key must not unlock");
        assert!(matches!(e, ClusterError::BadUnlockKey), "{node}: {e:?}");
        assert_eq!(
            e.to_string(),
            "swarm could not be unlocked: invalid key provided"
        );
        assert_eq!(
            snapshot_files(&base.config(node).data_dir),
            before,
            "{node}"
        );
    }
    let m1 = Manager::unlock(base.config("m1"), &key1).await.unwrap();
    let m2 = Manager::unlock(base.config("m2"), &key1).await.unwrap();
    assert_eq!(m1.node_id(), m1_id);
    settled_leader(&[&m1, &m2]).await;
    let state = eventually("the unlocked managers serve", || async {
        m1.state().await.map_err(|e| e.to_string())
    })
    .await;
    assert!(state.nodes.contains_key(m2.node_id()));
    assert_eq!(m2.unlock_key().await.unwrap(), Some(key1.clone()));

    // Rotation: both managers rewrap; after a restart only the new key unlocks.
    let before = key_file(&base, "m2");
    let key2 = m2.rotate_unlock_key().await.unwrap();
    assert_ne!(key2, key1);
    key_file_follows(&base, "m1", true, None).await;
    key_file_follows(&base, "m2", true, Some(&before)).await;
    assert_eq!(m1.unlock_key().await.unwrap(), Some(key2.clone()));
    m1.shutdown().await;
    m2.shutdown().await;
    for node in ["m1", "m2"] {
        let r = Manager::unlock(base.config(node), &key1).await;
        assert!(
            matches!(r, Err(ClusterError::BadUnlockKey)),
            "{node}: the rotated-out key still unlocks: {:?}",
            r.err()
        );
    }
    let m1 = Manager::unlock(base.config("m1"), &key2).await.unwrap();
    let m2 = Manager::unlock(base.config("m2"), &key2).await.unwrap();
    settled_leader(&[&m1, &m2]).await;

    // Off: a local key again on every manager, and they restart on their own.
    assert_eq!(m1.set_autolock(false).await.unwrap(), None);
    key_file_follows(&base, "m2", false, None).await;
    assert!(matches!(
        m1.rotate_unlock_key().await,
        Err(ClusterError::AutolockOff)
    ));
    assert_eq!(m1.unlock_key().await.unwrap(), None);
    m1.shutdown().await;
    m2.shutdown().await;
    let m1 = Manager::resume(base.config("m1")).await.unwrap();
    let m2 = Manager::resume(base.config("m2")).await.unwrap();
    assert!(matches!(
        Manager::unlock(base.config("m1"), &key2).await,
        Err(ClusterError::NotLocked)
    ));
    settled_leader(&[&m1, &m2]).await;
    // And on again: a new key, printed once.
    let key3 = m1.set_autolock(true).await.unwrap().expect("a new key");
    assert_ne!(key3, key2);
    assert_eq!(m1.set_autolock(true).await.unwrap(), None, "already on");
    key_file_follows(&base, "m2", true, None).await;
    m1.shutdown().await;
    m2.shutdown().await;
}

/// Issue figure: a cluster grown to three managers by `promote` keeps a quorum when its
/// first manager dies right after the last promotion; a new leader accepts writes within
/// 5 s, every time (the promotion only answers once the node votes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promote_then_kill_the_leader_leaves_a_quorum_every_time() {
    const ROUNDS: usize = 20;
    const WRITABLE_WITHIN: Duration = Duration::from_secs(5);
    let mut took = Vec::new();
    for round in 0..ROUNDS {
        let base = TempBase::new(&format!("pk{round}"));
        let m1 = init(&base, "m1").await;
        let w1 = join_worker(&base, "w1", &m1).await;
        let w2 = join_worker(&base, "w2", &m1).await;
        m1.promote(w1.node_id()).await.unwrap();
        m1.promote(w2.node_id()).await.unwrap();
        let m2 = w1.manager().expect("w1 runs a manager once promoted");
        let m3 = w2.manager().expect("w2 runs a manager once promoted");
        let m1_id = m1.node_id().to_string();
        let killed = Instant::now();
        m1.shutdown().await;
        let mut last = String::new();
        let written = loop {
            let write = m2.execute(Command::UpdateNodeLabels {
                id: w1.node_id().to_string(),
                add: BTreeMap::from([("round".to_string(), round.to_string())]),
                remove: vec![],
            });
            match tokio::time::timeout(Duration::from_secs(1), write).await {
                Ok(Ok(ApplyResult::Applied { .. })) => break Some(killed.elapsed()),
                Ok(other) => last = format!("{other:?}"),
                Err(_) => last = "no answer within 1 s".to_string(),
            }
            if killed.elapsed() > WRITABLE_WITHIN * 3 {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let leader = m3.leader();
        let Some(written) = written else {
            panic!("round {round}: no write accepted 15 s after the leader died; last: {last}; m3 sees leader {leader:?}");
        };
        assert_ne!(leader.as_deref(), Some(m1_id.as_str()), "round {round}");
        assert!(
            written <= WRITABLE_WITHIN,
            "round {round}: a write was accepted {written:?} after the leader died (over {WRITABLE_WITHIN:?})"
        );
        took.push(written);
        drop((m2, m3));
        w1.shutdown().await;
        w2.shutdown().await;
    }
    took.sort();
    println!(
        "promote twice, kill the first manager: writes accepted after {:?} (median) .. {:?} (max) over {ROUNDS} rounds",
        took[ROUNDS / 2],
        took[ROUNDS - 1]
    );
}

/// `swarm init --force-new-cluster`: of three managers, two are gone for good and the
/// last has no quorum; forced, it leads alone within a bound, with every object it held
/// (the node list, a drained node), accepts writes, says the lost managers are
/// Unreachable, and keeps all of it across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_new_cluster_recovers_a_manager_that_lost_its_majority() {
    let base = TempBase::new("forcenew");
    let m1 = init(&base, "m1").await;
    let m2 = join_manager(&base, "m2", &m1).await;
    let m3 = join_manager(&base, "m3", &m1).await;
    let w1 = join_worker(&base, "w1", &m1).await;
    settled_leader(&[&m1, &m2, &m3]).await;
    let w1_id = w1.node_id().to_string();
    let drained = m1
        .execute(Command::SetAvailability {
            id: w1_id.clone(),
            availability: shoal_cluster::store::Availability::Drain,
        })
        .await
        .unwrap();
    assert!(matches!(drained, ApplyResult::Applied { .. }));
    let (m2_id, m3_id) = (m2.node_id().to_string(), m3.node_id().to_string());
    m2.shutdown().await;
    m3.shutdown().await;
    // Without its majority, m1 takes no write (it may have appended it to its log:
    // then the forced group commits it, as Raft commits a leader's entries).
    let refused = m1
        .execute(Command::SetAvailability {
            id: w1_id.clone(),
            availability: shoal_cluster::store::Availability::Pause,
        })
        .await;
    assert!(refused.is_err(), "a write without quorum: {refused:?}");

    let started = Instant::now();
    m1.force_new_cluster().await.unwrap();
    let took = started.elapsed();
    println!("FIGURE force_new_cluster leads_alone_after {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let state = m1.state().await.unwrap();
    let kept = state.nodes.get(&w1_id).map(|n| n.availability);
    assert!(
        matches!(
            kept,
            Some(
                shoal_cluster::store::Availability::Drain
                    | shoal_cluster::store::Availability::Pause
            )
        ),
        "the state held before is kept: {kept:?}"
    );
    assert_eq!(state.nodes.len(), 4, "{:?}", state.nodes.keys());
    let statuses = m1.manager_status(&state);
    assert_eq!(statuses.get(m1.node_id()), Some(&ManagerStatus::Leader));
    for lost in [&m2_id, &m3_id] {
        assert_eq!(
            statuses.get(lost),
            Some(&ManagerStatus::Unreachable),
            "{statuses:?}"
        );
    }
    let applied = m1
        .execute(Command::SetAvailability {
            id: w1_id.clone(),
            availability: shoal_cluster::store::Availability::Active,
        })
        .await
        .unwrap();
    assert!(matches!(applied, ApplyResult::Applied { .. }));
    // The worker follows the one manager left.
    eventually(
        "the worker's heartbeats reach the forced leader",
        || async {
            let state = m1.state().await.map_err(|e| e.to_string())?;
            match status_of(&state, &w1_id) {
                Some(NodeStatus::Ready) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // A restart keeps the single-voter group and everything in it.
    let config = base.config("m1");
    m1.shutdown().await;
    // Ports 0: the addresses it had.
    let m1 = Manager::resume(config).await.unwrap();
    let state = eventually("the resumed manager leads alone", || async {
        m1.state().await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(
        state.nodes.get(&w1_id).map(|n| n.availability),
        Some(shoal_cluster::store::Availability::Active)
    );
    m1.shutdown().await;
    w1.shutdown().await;
}

/// A manager demoted and promoted again before its next heartbeat (the node still runs
/// the Raft member the group took out) joins again under its new Raft ID: the promotion
/// answers, and the node is a voter running the new member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manager_demoted_and_promoted_at_once_joins_again() {
    let base = TempBase::new("repromote");
    let m1 = init(&base, "m1").await;
    let w1 = join_worker(&base, "w1", &m1).await;
    let _w2 = join_worker(&base, "w2", &m1).await;
    m1.promote(w1.node_id()).await.unwrap();
    let w1_id = w1.node_id().to_string();
    let first = m1.state().await.unwrap().nodes[&w1_id]
        .raft_id
        .expect("a promoted node has a Raft ID");
    assert!(w1.manager().is_some(), "w1 runs a manager once promoted");

    m1.demote(&w1_id).await.unwrap();
    let again = m1.promote(&w1_id).await;
    assert!(again.is_ok(), "promoted again at once: {again:?}");
    let second = m1.state().await.unwrap().nodes[&w1_id]
        .raft_id
        .expect("promoted again: a Raft ID");
    assert_ne!(first, second, "a promotion gives a fresh Raft ID");
    let voters = m1.store_status().expect("m1 runs a store member").voters;
    assert!(voters.contains_key(&second), "{voters:?}");
    assert!(!voters.contains_key(&first), "{voters:?}");
    eventually("w1 running the member under its new Raft ID", || async {
        match w1.manager().and_then(|m| m.store_status()) {
            Some(st) if st.voters.contains_key(&second) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
