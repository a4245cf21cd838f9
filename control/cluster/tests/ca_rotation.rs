//! Rotating the root CA (`swarm ca --rotate`) on real TLS sockets, all nodes in this
//! process on 127.0.0.1: three managers and a worker; the rotation waits for a worker
//! that is down and survives the loss of its leader; afterwards every node holds a
//! certificate of the new root and trusts it alone, a certificate of the old root is
//! refused, the old join token no longer works and the new one does, and registry
//! credentials sealed before still open.
//!
//! Conditions are polled with generous bounds; no fixed sleep is an assertion.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_cluster::manager::{
    join_with, kept_identity, ClusterError, InitOptions, Joined, Manager, ManagerConfig, NodeInfo,
    Role, Timings, Worker,
};
use shoal_cluster::pki::{client_config, manager_server_name, CaDigest, CaTrust};
use shoal_cluster::registry_auth::RegistryCredentials;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(60);

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

struct TempBase(PathBuf);

impl TempBase {
    fn new(name: &str) -> TempBase {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("shoal-ca-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempBase(dir)
    }

    fn dir(&self, node: &str) -> PathBuf {
        self.0.join(node)
    }

    fn config(&self, node: &str) -> ManagerConfig {
        ManagerConfig {
            data_dir: self.dir(node),
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

async fn join(
    base: &TempBase,
    name: &str,
    via: &Manager,
    token: &str,
) -> Result<Joined, ClusterError> {
    join_with(
        via.advertise_addr(),
        token,
        base.config(name),
        info(name),
        timings(),
    )
    .await
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

/// Which root signed the certificate kept in `dir`, and the roots it trusts.
fn kept_roots(dir: &Path) -> (CaDigest, (CaDigest, Option<CaDigest>)) {
    let identity = kept_identity(dir).unwrap();
    (identity.issuer().digest(), identity.trust().digests())
}

type Conn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A mutual-TLS connection to `addr` with `identity`'s certificate and `trust`.
async fn connect_with(
    addr: std::net::SocketAddr,
    identity: &shoal_cluster::pki::NodeIdentity,
    trust: &CaTrust,
) -> Result<Conn, String> {
    let config = client_config(identity, trust).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(manager_server_name(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// One request over mutual TLS with `identity`'s certificate and `trust`: what came
/// back (`Err`: the connection was refused or ended without an answer).
async fn ask_with(
    addr: std::net::SocketAddr,
    identity: &shoal_cluster::pki::NodeIdentity,
    trust: &CaTrust,
) -> Result<Vec<u8>, String> {
    let mut tls = connect_with(addr, identity, trust).await?;
    ask_on(&mut tls).await
}

/// One request on an open connection.
async fn ask_on(tls: &mut Conn) -> Result<Vec<u8>, String> {
    let body = br#""read_state""#;
    let exchange = async {
        tls.write_all(&(body.len() as u32).to_be_bytes()).await?;
        tls.write_all(body).await?;
        tls.flush().await?;
        let mut len = [0u8; 4];
        tls.read_exact(&mut len).await?;
        let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
        tls.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_reissues_every_certificate_under_the_new_root_through_a_leader_change() {
    let base = TempBase::new("rotate");
    let m1 = Manager::init_with(
        base.config("m1"),
        info("m1"),
        InitOptions::default(),
        timings(),
    )
    .await
    .unwrap();
    let manager_token = m1.join_token(Role::Manager).await.unwrap().expose_secret();
    let worker_token = m1.join_token(Role::Worker).await.unwrap().expose_secret();
    let mut managers = vec![("m1", m1.clone())];
    for name in ["m2", "m3"] {
        match join(&base, name, &m1, &manager_token).await.unwrap() {
            Joined::Manager(m) => managers.push((name, m)),
            Joined::Worker(_) => panic!("{name} joined as a worker"),
        }
    }
    let Joined::Worker(w1) = join(&base, "w1", &m1, &worker_token).await.unwrap() else {
        panic!("w1 joined as a manager");
    };
    let old_root = m1.ca_status().await.unwrap().root;
    eventually(
        "4 nodes Ready, each having said its certificate's root",
        || async {
            let p = m1.ca_status().await.map_err(|e| e.to_string())?.progress;
            (p.nodes == 4 && p.certs_rotated == 4 && p.roots_rotated == 4 && !p.in_progress)
                .then_some(())
                .ok_or(format!("{p:?}"))
        },
    )
    .await;
    // What must still work, or no longer, afterwards.
    let m2_before = kept_identity(&base.dir("m2")).unwrap();
    let creds = RegistryCredentials {
        server_address: "192.168.77.100:5000".into(),
        username: "alice".into(),
        password: "pass-7f3c".into(),
    };
    let sealed = m1.seal_registry_auth("svc1", &creds).unwrap();
    // Connections opened with m2's certificate of the old root, to every manager: they
    // are answered now, and must end once the old root is trusted no more.
    let mut kept = Vec::new();
    for (name, m) in &managers {
        let mut conn = connect_with(m.advertise_addr(), &m2_before, m2_before.trust())
            .await
            .unwrap();
        ask_on(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{name} answers m2 before the rotation: {e}"));
        kept.push((*name, conn));
    }

    // The worker is down when the rotation starts: the rotation waits for it.
    let w1_id = w1.node_id().to_owned();
    w1.shutdown().await;
    let desired = m1.rotate_ca().await.unwrap();
    assert_ne!(desired, old_root.digest());
    let again = m1.rotate_ca().await.unwrap_err().to_string();
    assert!(again.contains("already in progress"), "{again}");
    eventually(
        "every manager holds a certificate of the new root",
        || async {
            let seen: Vec<_> = ["m1", "m2", "m3"]
                .iter()
                .map(|m| kept_roots(&base.dir(m)))
                .collect();
            seen.iter()
                .all(|(issuer, (root, next))| {
                    *issuer == desired && *root == old_root.digest() && *next == Some(desired)
                })
                .then_some(())
                .ok_or(format!("{seen:?}"))
        },
    )
    .await;
    let p = m1.ca_status().await.unwrap();
    assert!(p.progress.in_progress);
    assert_eq!(
        p.root, old_root,
        "the old root stays the root until all follow"
    );
    assert_eq!(p.progress.pending.len(), 4, "{:?}", p.progress);

    // The leader goes away mid-rotation, and comes back; so does the worker.
    let leader = m1.leader().expect("a leader");
    let (leader_name, leader_handle) = managers
        .iter()
        .find(|(_, m)| m.node_id() == leader)
        .cloned()
        .unwrap();
    managers.retain(|(n, _)| *n != leader_name);
    leader_handle.shutdown().await;
    let other = managers[0].1.clone();
    eventually("a new leader still rotating", || async {
        let s = other.ca_status().await.map_err(|e| e.to_string())?;
        s.progress
            .in_progress
            .then_some(())
            .ok_or(format!("{:?}", s.progress))
    })
    .await;
    let back = Manager::resume(base.config(leader_name)).await.unwrap();
    managers.push((leader_name, back));
    let w1 = Worker::resume(&base.dir("w1")).await.unwrap();

    let started = Instant::now();
    let status = eventually(
        "the rotation to finish and every node to trust the new root alone",
        || async {
            let s = other.ca_status().await.map_err(|e| e.to_string())?;
            let p = &s.progress;
            (!p.in_progress && p.nodes == 4 && p.certs_rotated == 4 && p.roots_rotated == 4)
                .then_some(s.clone())
                .ok_or(format!("{p:?}"))
        },
    )
    .await;
    eprintln!(
        "rotation finished {:.1} s after the leader and the worker came back",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(status.root.digest(), desired);
    for node in ["m1", "m2", "m3", "w1"] {
        assert_eq!(
            kept_roots(&base.dir(node)),
            (desired, (desired, None)),
            "{node}"
        );
    }
    assert_eq!(w1.node_id(), w1_id, "the node keeps its ID");

    // A certificate of the old root (m2's, kept from before) is refused, though m2 is
    // still a member; its new one is taken.
    let addr = other.advertise_addr();
    let new_trust = CaTrust::new(status.root.clone());
    let refused = ask_with(addr, &m2_before, &new_trust).await;
    assert!(refused.is_err(), "an old-root certificate was answered");
    eprintln!("old-root certificate: {}", refused.unwrap_err());
    let m2_now = kept_identity(&base.dir("m2")).unwrap();
    ask_with(addr, &m2_now, m2_now.trust())
        .await
        .expect("a new-root certificate is answered");

    for (name, conn) in &mut kept {
        let answer = ask_on(conn).await;
        assert!(
            answer.is_err(),
            "{name} still answers a connection made with an old-root certificate"
        );
    }

    // Registry credentials sealed before the rotation still open.
    assert_eq!(other.open_registry_auth("svc1", &sealed).unwrap(), creds);

    // The old token names the old root: refused. The new one joins, under the new root.
    let old = join(&base, "w2", &other, &worker_token).await;
    assert!(
        matches!(old, Err(ClusterError::CaMismatch)),
        "the old token: {:?}",
        old.err()
    );
    let new_token = other.join_token(Role::Worker).await.unwrap();
    assert_eq!(new_token.ca_digest(), &desired);
    let Joined::Worker(w2) = join(&base, "w2", &other, &new_token.expose_secret())
        .await
        .unwrap()
    else {
        panic!("w2 joined as a manager");
    };
    assert_eq!(kept_roots(&base.dir("w2")), (desired, (desired, None)));

    w1.shutdown().await;
    w2.shutdown().await;
    for (_, m) in managers {
        m.shutdown().await;
    }
}

/// A joining node's record says at once what its certificate and trust are (what its
/// heartbeats report), so its first heartbeat writes nothing more, and the record does
/// not change again while nothing rotates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joiner_is_recorded_with_its_certificate_s_root_and_heartbeats_write_nothing() {
    let base = TempBase::new("joiner-tls");
    let m1 = Manager::init_with(
        base.config("m1"),
        info("m1"),
        InitOptions::default(),
        timings(),
    )
    .await
    .unwrap();
    let worker_token = m1.join_token(Role::Worker).await.unwrap().expose_secret();
    let Joined::Worker(w1) = join(&base, "w1", &m1, &worker_token).await.unwrap() else {
        panic!("w1 joined as a manager");
    };
    let recorded = m1.state().await.unwrap().nodes[w1.node_id()].clone();
    let (issuer, (trust_root, trust_next)) = kept_roots(&base.dir("w1"));
    let tls = recorded
        .tls
        .as_deref()
        .expect("the join records the node's TLS");
    assert_eq!(
        (tls.cert_issuer, tls.trust_root, tls.trust_next),
        (issuer, trust_root, trust_next)
    );
    // Over five heartbeat intervals the record stays the one the join wrote (a window
    // in which nothing must happen has to be waited out).
    tokio::time::sleep(timings().heartbeat_interval * 5).await;
    let later = m1.state().await.unwrap().nodes[w1.node_id()].clone();
    assert_eq!(later.version, recorded.version, "{later:?}");
    w1.shutdown().await;
    m1.shutdown().await;
}
