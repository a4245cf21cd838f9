//! Revocation and least privilege on real TLS sockets (all nodes in this process, on
//! 127.0.0.1): a removed node's certificate, a demoted manager's manager certificate
//! (as a client and as a server) and callers without a certificate, each asking port
//! 2377 what they should not get.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::persist;
use super::wire::{Client, Reply, Request, Response, WireError};
use super::*;
use crate::pki::{bootstrap_client_config, client_config, manager_server_name};
use crate::store::{RaftRequest, TaskState, TaskStatus, TaskStatusUpdate};

const WAIT: Duration = Duration::from_secs(30);
const CALL: Duration = Duration::from_secs(10);

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
            "shoal-revoke-{name}-{}-{nanos}",
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

async fn join_as(base: &TempBase, name: &str, manager: &Manager, role: Role) -> Joined {
    let token = manager.join_token(role).await.unwrap();
    join_with(
        manager.advertise_addr(),
        &token.expose_secret(),
        base.config(name),
        info(name),
        timings(),
    )
    .await
    .unwrap()
}

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

/// A client holding the identity kept in `dir` (a copy of a node's files).
fn client_of(dir: &std::path::Path) -> Client {
    let identity = identity_of(dir);
    Client::new(
        client_config(&identity, identity.ca()).unwrap(),
        Default::default(),
    )
}

/// The identity kept in `dir`, opened with the manager's data key when there is one.
fn identity_of(dir: &std::path::Path) -> crate::pki::NodeIdentity {
    let keys = match super::keys::load(dir).unwrap() {
        super::keys::OnDisk::Open(keys) => Some(keys),
        _ => None,
    };
    persist::load_identity(dir, keys.as_ref().map(|k| k.data_key())).unwrap()
}

fn refusal(reply: Reply) -> String {
    match reply {
        Err(WireError::Unauthorized { detail }) => detail,
        Err(e) => panic!("expected a refusal, got {e:?}"),
        Ok(_) => panic!("expected a refusal, got an answer"),
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["identity.json", "node.json"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
    // A manager's node key is sealed with its data key, kept in its key file.
    let key_file = from.join(super::keys::KEY_FILE);
    if key_file.exists() {
        std::fs::copy(&key_file, to.join(super::keys::KEY_FILE)).unwrap();
    }
}

/// A server on 127.0.0.1 holding the identity kept in `dir`, answering every request
/// with a refusal; its address.
async fn fake_server(dir: &std::path::Path) -> String {
    let identity = identity_of(dir);
    let config = crate::pki::join_server_config(&identity, identity.ca()).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                while let Ok(Some(_)) =
                    super::wire::read_frame(&mut tls, 1 << 20, Duration::from_secs(5)).await
                {
                    let reply: Reply = Err(WireError::Unauthorized {
                        detail: "a fake".into(),
                    });
                    let body = serde_json::to_vec(&reply).unwrap();
                    if super::wire::write_frame(&mut tls, &body).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_nodes_certificate_fetches_and_reports_nothing_even_after_a_restart() {
    let base = TempBase::new("removed");
    let m1 = Manager::init_with(
        base.config("m1"),
        info("m1"),
        InitOptions::default(),
        timings(),
    )
    .await
    .unwrap();
    let Joined::Worker(w1) = join_as(&base, "w1", &m1, Role::Worker).await else {
        panic!("w1 joined as a manager");
    };
    let w1_id = w1.node_id().to_string();
    let client = w1.node_client();
    client
        .fetch(0, 0)
        .await
        .expect("a member fetches its state");

    // Removed while its agent runs on, holding its certificate.
    eventually("w1 removed", || async {
        m1.remove_node(&w1_id, true)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let state = m1.state().await.unwrap();
    assert!(!state.nodes.contains_key(&w1_id));
    assert!(state.removed_nodes.contains_key(&w1_id));

    match client.fetch(0, 0).await {
        Err(ClusterError::Unauthorized(why)) => assert!(why.contains("revoked"), "{why}"),
        other => panic!("a removed node fetched: {other:?}"),
    }
    let version = m1.state().await.unwrap().version;
    let report = vec![TaskStatusUpdate {
        task_id: "t1".into(),
        status: TaskStatus {
            state: TaskState::Running,
            ..Default::default()
        },
    }];
    match client.report_tasks(report.clone()).await {
        Err(ClusterError::Unauthorized(why)) => assert!(why.contains("revoked"), "{why}"),
        other => panic!("a removed node reported: {other:?}"),
    }
    // Its heartbeats bring it back neither.
    tokio::time::sleep(timings().heartbeat_interval * 5).await;
    let after = m1.state().await.unwrap();
    assert!(!after.nodes.contains_key(&w1_id));
    assert_eq!(
        after.version, version,
        "nothing the removed node sent was written"
    );

    // The record is the store's: a restarted manager refuses it too.
    let config = base.config("m1");
    m1.shutdown().await;
    let m1 = Manager::resume(config).await.unwrap();
    let refused = eventually("the restarted manager answers", || async {
        match client.fetch(0, 0).await {
            Err(ClusterError::Unauthorized(why)) => Ok(why),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(refused.contains("revoked"), "{refused}");
    w1.shutdown().await;
    m1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_demoted_managers_manager_certificate_cannot_write_but_it_works_as_a_worker() {
    let base = TempBase::new("demoted");
    let m1 = Manager::init_with(
        base.config("m1"),
        info("m1"),
        InitOptions::default(),
        timings(),
    )
    .await
    .unwrap();
    let Joined::Manager(m2) = join_as(&base, "m2", &m1, Role::Manager).await else {
        panic!("m2 joined as a worker");
    };
    let Joined::Manager(m3) = join_as(&base, "m3", &m1, Role::Manager).await else {
        panic!("m3 joined as a worker");
    };
    let m3_id = m3.node_id().to_string();
    // What m3 holds as a manager, kept aside: its manager certificate and key.
    let kept = base.0.join("m3-kept");
    copy_dir(&base.config("m3").data_dir, &kept);
    let old = client_of(&kept);
    let execute = Request::Execute(crate::store::Command::UpdateNodeLabels {
        id: m3_id.clone(),
        add: BTreeMap::from([("owned".into(), "yes".into())]),
        remove: vec![],
    });
    let leader_addr = || {
        let leader = m1.leader().unwrap();
        let state = m1.local_state().unwrap();
        state.nodes[&leader].advertise_addr.clone()
    };
    let before = old
        .call(&leader_addr(), &execute, CALL)
        .await
        .expect("an answer");
    assert!(
        matches!(before, Ok(Response::Applied(_))),
        "a manager writes"
    );

    // A server holding m3's manager certificate: a manager talks to it while m3 is one.
    let fake = fake_server(&kept).await;
    eventually("m1 reaches the server holding m3's certificate", || async {
        match m1.rt.client().call(&fake, &Request::ReadState, CALL).await {
            Ok(Err(WireError::Unauthorized { detail })) if detail == "a fake" => Ok(()),
            Ok(other) => Err(format!("{:?}", other.err())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;

    eventually("m3 demoted", || async {
        m1.demote(&m3_id).await.map_err(|e| e.to_string())
    })
    .await;
    eventually("m3 runs as a worker", || async {
        if m3.role() == Role::Worker {
            Ok(())
        } else {
            Err(format!("{}", m3.role()))
        }
    })
    .await;

    // Its old manager certificate: no write, no read of the state, on any manager.
    let addr = leader_addr();
    let why = refusal(old.call(&addr, &execute, CALL).await.unwrap());
    assert!(why.contains("is a worker now"), "{why}");
    let why = refusal(old.call(&addr, &Request::ReadState, CALL).await.unwrap());
    assert!(why.contains("is a worker now"), "{why}");
    // Posing as a Raft leader with a higher term to a follower: refused before Raft sees it.
    let follower = [&m1, &m2]
        .into_iter()
        .find(|m| !m.is_leader())
        .expect("a follower");
    let vote = Request::Raft(RaftRequest::Vote(openraft::raft::VoteRequest::new(
        openraft::Vote::new(1_000_000, 424242),
        None,
    )));
    let why = refusal(
        old.call(&follower.advertise_addr().to_string(), &vote, CALL)
            .await
            .unwrap(),
    );
    assert!(why.contains("is a worker now"), "{why}");
    let state = m1.state().await.unwrap();
    assert!(
        state.nodes.values().all(|n| n.raft_id != Some(424242)),
        "nothing of the forged vote reached the store"
    );
    // Nor does it pass for a manager as a server: the managers' clients know who the
    // managers are now.
    eventually("m1 refuses m3's old certificate as a server", || async {
        match m1.rt.client().call(&fake, &Request::ReadState, CALL).await {
            Err(super::wire::CallError::Connect(why)) if why.contains("not a manager") => Ok(()),
            Err(e) => Err(e.to_string()),
            Ok(_) => Err("m1 talked to it".into()),
        }
    })
    .await;
    // Worker calls still work with it (it keeps working as a worker until it renews),
    // and m3 itself works on as a worker.
    let fetched = old
        .call(
            &addr,
            &Request::NodeState {
                since: 0,
                applied: None,
            },
            CALL,
        )
        .await
        .unwrap();
    assert!(matches!(fetched, Ok(Response::NodeState(Some(_)))));
    let worker = Worker { rt: m3.rt.clone() };
    eventually("m3 holds a worker certificate", || async {
        match worker.certificate().role() {
            Role::Worker => Ok(()),
            r => Err(r.to_string()),
        }
    })
    .await;
    worker
        .node_client()
        .fetch(0, 0)
        .await
        .expect("the demoted node fetches as a worker");
    for m in [m1, m2, m3] {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_without_a_certificate_send_a_small_join_or_nothing() {
    let base = TempBase::new("strangers");
    let m1 = Manager::init_with(
        base.config("m1"),
        info("m1"),
        InitOptions::default(),
        timings(),
    )
    .await
    .unwrap();
    let token = m1.join_token(Role::Worker).await.unwrap();
    let connector = TlsConnector::from(Arc::new(
        bootstrap_client_config(token.ca_digest()).unwrap(),
    ));
    let stranger = || async {
        let tcp = TcpStream::connect(m1.advertise_addr()).await.unwrap();
        connector
            .connect(manager_server_name(), tcp)
            .await
            .expect("TLS without a certificate")
    };

    // A frame that says 64 MiB: the connection is closed on its length, nothing read.
    let mut tls = stranger().await;
    let started = Instant::now();
    tls.write_all(&(64u32 << 20).to_be_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
        .await
        .expect("closed, not held")
        .unwrap_or(0);
    assert_eq!(n, 0, "no answer to a frame over the bound");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A request other than a join: refused, then the connection ends.
    let mut tls = stranger().await;
    let body = serde_json::to_vec(&Request::ReadState).unwrap();
    let reply = super::wire::exchange(&mut tls, &body, CALL).await.unwrap();
    let why = refusal(reply);
    assert!(why.contains("needs a node certificate"), "{why}");
    assert_eq!(tls.read(&mut buf).await.unwrap_or(0), 0, "one request only");

    // A wrong token is refused without a write (and the store was never read through
    // the quorum for it).
    let version = m1.state().await.unwrap().version;
    let mut tls = stranger().await;
    let mut forged = token.expose_secret();
    let last = if forged.ends_with('a') { "b" } else { "a" };
    forged.pop();
    forged.push_str(last);
    let join = Request::Join {
        token: forged,
        csr_pem: "not read".into(),
        node: info("x"),
        advertise: "127.0.0.1:1".into(),
    };
    let reply = super::wire::exchange(&mut tls, &serde_json::to_vec(&join).unwrap(), CALL)
        .await
        .unwrap();
    assert!(
        matches!(
            reply,
            Err(WireError::BadToken) | Err(WireError::MalformedToken { .. })
        ),
        "{:?}",
        reply.err()
    );
    assert_eq!(m1.state().await.unwrap().version, version);

    // Silence after the handshake: closed by the manager, not kept.
    let mut idle = stranger().await;
    let closed = tokio::time::timeout(WAIT, idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "an idle stranger is closed"
    );

    // And joins work all along.
    let Joined::Worker(w1) = join_as(&base, "w1", &m1, Role::Worker).await else {
        panic!("w1 joined as a manager");
    };
    w1.shutdown().await;
    m1.shutdown().await;
}

fn task_on(id: &str, node: &str) -> crate::store::Task {
    crate::store::Task {
        id: id.into(),
        service_id: "s1".into(),
        slot: 1,
        node_id: Some(node.into()),
        desired_state: TaskState::Running,
        status: TaskStatus {
            state: TaskState::Assigned,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn moved(task: &str, state: TaskState) -> TaskStatusUpdate {
    TaskStatusUpdate {
        task_id: task.into(),
        status: TaskStatus {
            state,
            ..Default::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_and_heartbeats_write_only_what_their_node_may_change() {
    let base = TempBase::new("reports");
    let m1 = Manager::init_with(
        base.config("m1"),
        info("m1"),
        InitOptions::default(),
        timings(),
    )
    .await
    .unwrap();
    let Joined::Worker(w1) = join_as(&base, "w1", &m1, Role::Worker).await else {
        panic!("w1 joined as a manager");
    };
    let Joined::Worker(w2) = join_as(&base, "w2", &m1, Role::Worker).await else {
        panic!("w2 joined as a manager");
    };
    let (w1_id, w2_id) = (w1.node_id().to_string(), w2.node_id().to_string());
    let mut tasks: Vec<_> = (0..40).map(|i| task_on(&format!("t{i}"), &w1_id)).collect();
    tasks.push(task_on("theirs", &w2_id));
    m1.execute(crate::store::Command::PutTasks { tasks })
        .await
        .unwrap()
        .into_result()
        .unwrap();

    // Empty, no-op and other nodes' reports are answered and write nothing.
    let client = w1.node_client();
    let version = m1.state().await.unwrap().version;
    client.report_tasks(vec![]).await.unwrap();
    client
        .report_tasks(vec![moved("t0", TaskState::Assigned)])
        .await
        .unwrap();
    client
        .report_tasks(vec![moved("theirs", TaskState::Failed)])
        .await
        .unwrap();
    client
        .report_tasks(vec![moved("no-such-task", TaskState::Running)])
        .await
        .unwrap();
    let state = m1.state().await.unwrap();
    assert_eq!(
        state.version, version,
        "a report that changes nothing wrote"
    );
    assert_eq!(state.tasks["theirs"].status.state, TaskState::Assigned);

    // Reports that move the node's own tasks write, within the node's budget.
    let mut written = 0;
    let mut busy = None;
    for i in 0..40 {
        match client
            .report_tasks(vec![moved(&format!("t{i}"), TaskState::Running)])
            .await
        {
            Ok(()) => written += 1,
            Err(ClusterError::Busy(why)) => {
                busy = Some(why);
                break;
            }
            Err(e) => panic!("report {i}: {e}"),
        }
    }
    assert!(
        (10..40).contains(&written),
        "{written} reports written before the budget ran out"
    );
    assert!(busy.is_some_and(|why| why.contains("too often")));
    // The budget refills: the executor's next pass gets through.
    eventually("the budget refills", || async {
        client
            .report_tasks(vec![moved("t39", TaskState::Running)])
            .await
            .map_err(|e| e.to_string())
    })
    .await;

    // A heartbeat records the engine's version and the node's capacity, never a new name.
    let capacity = crate::store::NodeResources {
        nano_cpus: 4_000_000_000,
        memory_bytes: 8 << 30,
    };
    w1.rt
        .update_local(|l| {
            l.info.hostname = "renamed".into();
            l.info.engine_version = "28.0.0".into();
            l.info.resources = capacity;
        })
        .unwrap();
    let node = eventually("the new engine version and capacity recorded", || async {
        let state = m1.state().await.map_err(|e| e.to_string())?;
        let node = state.nodes[&w1_id].clone();
        if node.engine_version == "28.0.0" && node.resources == capacity {
            Ok(node)
        } else {
            Err(format!("{} {:?}", node.engine_version, node.resources))
        }
    })
    .await;
    assert_eq!(node.hostname, "w1", "a heartbeat renamed the node");
    // Unchanged heartbeats (five of them) write nothing more.
    let version = node.version;
    tokio::time::sleep(timings().heartbeat_interval * 5).await;
    let after = m1.state().await.unwrap().nodes[&w1_id].version;
    assert_eq!(after, version, "an unchanged heartbeat rewrote the node");
    for w in [w1, w2] {
        w.shutdown().await;
    }
    m1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gossip_keys_are_registered_by_their_own_node_only_and_leave_with_it() {
    let base = TempBase::new("gossipkeys");
    let m1 = Manager::init_with(
        base.config("m1"),
        info("m1"),
        InitOptions::default(),
        timings(),
    )
    .await
    .unwrap();
    let Joined::Worker(w1) = join_as(&base, "w1", &m1, Role::Worker).await else {
        panic!("w1 joined as a manager");
    };
    let Joined::Worker(w2) = join_as(&base, "w2", &m1, Role::Worker).await else {
        panic!("w2 joined as a manager");
    };
    let (w1_id, w2_id) = (w1.node_id().to_string(), w2.node_id().to_string());
    let identity = |key: &str, addr: &str| crate::store::GossipIdentity {
        key: key.repeat(32),
        generation: 42,
        addr: addr.parse().unwrap(),
        wireguard: None,
    };
    let client = w1.node_client();
    let mine = identity("ab", "127.0.0.1:7946");
    client.register_gossip(mine.clone()).await.unwrap();
    let state = m1.state().await.unwrap();
    assert_eq!(state.nodes[&w1_id].gossip.as_deref(), Some(&mine));
    assert_eq!(state.nodes[&w2_id].gossip, None, "only the caller's node");
    // The same again writes nothing.
    client.register_gossip(mine.clone()).await.unwrap();
    assert_eq!(m1.state().await.unwrap().version, state.version);
    // Another node's address, a key that is not one: refused, nothing written.
    for bad in [
        identity("ab", "10.9.9.9:7946"),
        identity("zz", "127.0.0.1:7946"),
    ] {
        match client.register_gossip(bad.clone()).await {
            Err(ClusterError::Rejected(r)) => {
                assert!(r.to_string().contains("gossip identity"), "{r}")
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let after = m1.state().await.unwrap();
    assert_eq!(after.version, state.version);
    assert_eq!(after.nodes[&w1_id].gossip.as_deref(), Some(&mine));
    // Every node is handed the key with the node list.
    let view = w2.node_client().node_state(0).await.unwrap().unwrap();
    assert!(view.state.nodes[&w1_id].gossip.is_some());

    // Removed: its key leaves the store with it, and it can register nothing more.
    m1.remove_node(&w1_id, true).await.unwrap();
    let state = m1.state().await.unwrap();
    assert!(!state.nodes.contains_key(&w1_id));
    match client
        .register_gossip(identity("cd", "127.0.0.1:7946"))
        .await
    {
        Err(ClusterError::Unauthorized(why)) => assert!(why.contains("revoked"), "{why}"),
        other => panic!("a removed node registered a gossip key: {other:?}"),
    }
    assert!(!m1.state().await.unwrap().nodes.contains_key(&w1_id));
    for w in [w1, w2] {
        w.shutdown().await;
    }
    m1.shutdown().await;
}

/// The node port answers a manager's certificate only: a worker's is closed on before
/// its request is read, and a node dialled by another node's ID fails the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_port_answers_managers_only() {
    let base = TempBase::new("node-port");
    let m1 = Manager::init_with(
        base.config("m1"),
        info("m1"),
        InitOptions::default(),
        timings(),
    )
    .await
    .unwrap();
    let Joined::Worker(w1) = join_as(&base, "w1", &m1, Role::Worker).await else {
        panic!("w1 joined as a manager");
    };
    let Joined::Worker(w2) = join_as(&base, "w2", &m1, Role::Worker).await else {
        panic!("w2 joined as a manager");
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = asked.clone();
    let handler: NodePortHandler = Arc::new(move |caller, body, frames| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            let mut reply = caller.into_bytes();
            reply.push(b':');
            reply.extend(body);
            let _ = frames.send(reply).await;
        })
    });
    let client = w1.node_client();
    let server = tokio::spawn(async move { client.serve_node_port(listener, handler).await });
    let deadline = Duration::from_secs(5);

    let reply = m1
        .call_node(w1.node_id(), addr, b"hello", deadline)
        .await
        .unwrap();
    assert_eq!(reply, format!("{}:hello", m1.node_id()).into_bytes());

    let refused = node_port::call(&w2.rt, w1.node_id(), addr, b"hello", deadline).await;
    assert!(refused.is_err(), "a worker's certificate was answered");

    let wrong = m1.call_node(w2.node_id(), addr, b"hello", deadline).await;
    assert!(wrong.is_err(), "w1 answered when dialled as w2");

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nobody = closed.local_addr().unwrap();
    drop(closed);
    let started = Instant::now();
    assert!(m1
        .call_node(w1.node_id(), nobody, b"hello", deadline)
        .await
        .is_err());
    assert!(started.elapsed() < deadline);
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the manager's request reached the handler"
    );
    server.abort();
}

/// A streaming answer: the node's frames reach the manager as they are sent, the end of
/// the handler ends the stream, and a manager that drops the stream ends the handler
/// instead of leaving it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_port_streams_frames_until_either_side_ends() {
    let base = TempBase::new("node-port-stream");
    let m1 = Manager::init_with(
        base.config("m1"),
        info("m1"),
        InitOptions::default(),
        timings(),
    )
    .await
    .unwrap();
    let Joined::Worker(w1) = join_as(&base, "w1", &m1, Role::Worker).await else {
        panic!("w1 joined as a manager");
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel::<(String, usize)>();
    // Reports when the handler's future ends: completed, or dropped by the node port.
    struct Ended {
        to: tokio::sync::mpsc::UnboundedSender<(String, usize)>,
        body: String,
        sent: usize,
    }
    impl Drop for Ended {
        fn drop(&mut self) {
            let _ = self.to.send((self.body.clone(), self.sent));
        }
    }
    let handler: NodePortHandler = Arc::new(move |_caller, body, frames| {
        let to = ended_tx.clone();
        Box::pin(async move {
            let body = String::from_utf8(body).unwrap();
            // "N": N frames then the end; "forever": one every 20 ms until refused.
            let count = body.parse::<usize>().unwrap_or(usize::MAX);
            let mut ended = Ended { to, body, sent: 0 };
            while ended.sent < count {
                let frame = format!("frame-{}", ended.sent).into_bytes();
                if frames.send(frame).await.is_err() {
                    break;
                }
                ended.sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    let client = w1.node_client();
    let server = tokio::spawn(async move { client.serve_node_port(listener, handler).await });
    let idle = Duration::from_secs(5);

    let mut stream = m1
        .call_node_stream(w1.node_id(), addr, b"3", idle)
        .await
        .unwrap();
    for i in 0..3 {
        let frame = stream.next_frame().await.unwrap();
        assert_eq!(frame, Some(format!("frame-{i}").into_bytes()));
    }
    assert_eq!(stream.next_frame().await.unwrap(), None);
    assert_eq!(ended.recv().await, Some(("3".into(), 3)));

    let mut stream = m1
        .call_node_stream(w1.node_id(), addr, b"forever", idle)
        .await
        .unwrap();
    for i in 0..5 {
        let frame = stream.next_frame().await.unwrap();
        assert_eq!(frame, Some(format!("frame-{i}").into_bytes()));
    }
    drop(stream);
    let (body, sent) = tokio::time::timeout(Duration::from_secs(10), ended.recv())
        .await
        .expect("the handler went on after the manager left")
        .unwrap();
    assert_eq!(body, "forever");
    assert!(sent >= 5, "{sent}");

    // A node that goes silent is an error after the idle bound, not a hang.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let quiet = silent.local_addr().unwrap();
    let started = Instant::now();
    let r = m1
        .call_node_stream(w1.node_id(), quiet, b"3", Duration::from_millis(500))
        .await;
    assert!(
        r.is_err(),
        "a listener that never answers TLS gave a stream"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(silent);
    server.abort();
}
