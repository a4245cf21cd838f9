//! Node identity end to end: real TLS 1.3 handshakes on 127.0.0.1 with the configs from
//! `shoal_cluster::pki`, and a small join exchange (token + CSR in, certificate out) over
//! the bootstrap connection, as `shoal swarm join` will do it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use serde::{Deserialize, Serialize};
use shoal_cluster::pki::{
    bootstrap_client_config, client_config, is_ca_pin_mismatch, join_server_config,
    manager_server_name, pinned_ca_from_chain, server_config, CaCertificate, CaTrust, ClusterCa,
    IssueOptions, NextRoot, NodeCertificate, NodeIdentity, PeerIdentity, PkiError, Role,
};
use shoal_cluster::token::{JoinToken, JoinTokens, TokenError};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A node identity made the way a joining node gets one: its own key and CSR, signed by
/// the CA.
fn enroll(ca: &ClusterCa, node_id: &str, role: Role, opts: &IssueOptions) -> NodeIdentity {
    let (key, csr) = NodeIdentity::generate_key_and_csr(node_id).unwrap();
    let cert = ca.issue(&csr, node_id, role, opts).unwrap();
    NodeIdentity::new(key, cert, ca.certificate().clone()).unwrap()
}

fn manager_opts() -> IssueOptions {
    IssueOptions {
        ip_addresses: vec!["127.0.0.1".parse().unwrap()],
        ..IssueOptions::default()
    }
}

/// What the server saw of one connection.
#[derive(Debug)]
struct Served {
    peer: Result<PeerIdentity, PkiError>,
    received: String,
}

/// Accepts one connection, reads one line, answers `reply(line, peer)` and closes.
async fn serve_one<F>(
    listener: TcpListener,
    config: ServerConfig,
    reply: F,
) -> Result<Served, std::io::Error>
where
    F: FnOnce(&str, &Result<PeerIdentity, PkiError>) -> String,
{
    let (tcp, _) = listener.accept().await?;
    let tls = TlsAcceptor::from(Arc::new(config)).accept(tcp).await?;
    let peer = PeerIdentity::from_peer_certificates(tls.get_ref().1.peer_certificates());
    let mut tls = BufReader::new(tls);
    let mut line = String::new();
    tls.read_line(&mut line).await?;
    let answer = reply(line.trim_end(), &peer);
    tls.write_all(format!("{answer}\n").as_bytes()).await?;
    tls.shutdown().await?;
    Ok(Served {
        peer,
        received: line.trim_end().to_string(),
    })
}

/// What the client saw of one connection.
#[derive(Debug)]
struct Called {
    server: Option<Result<PeerIdentity, PkiError>>,
    server_chain_ca: Option<CaCertificate>,
    answer: String,
}

/// Connects, sends one line (only once the handshake succeeded), reads the answer line.
async fn call(
    port: u16,
    config: ClientConfig,
    name: ServerName<'static>,
    line: &str,
    pin: Option<&shoal_cluster::pki::CaDigest>,
) -> Result<Called, std::io::Error> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let certs = tls.get_ref().1.peer_certificates();
    let server = certs.map(|c| PeerIdentity::from_peer_certificates(Some(c)));
    let server_chain_ca = match (certs, pin) {
        (Some(c), Some(d)) => pinned_ca_from_chain(c, d),
        _ => None,
    };
    let mut tls = BufReader::new(tls);
    tls.write_all(format!("{line}\n").as_bytes()).await?;
    tls.flush().await?;
    let mut answer = String::new();
    let n = tls.read_line(&mut answer).await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed without answering",
        ));
    }
    Ok(Called {
        server,
        server_chain_ca,
        answer: answer.trim_end().to_string(),
    })
}

async fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn echo(line: &str, peer: &Result<PeerIdentity, PkiError>) -> String {
    match peer {
        Ok(p) => format!("{} {} says {line}", p.role(), p.node_id()),
        Err(e) => format!("anonymous ({e}) says {line}"),
    }
}

#[tokio::test]
async fn joined_worker_and_manager_see_each_others_role_and_id() {
    let ca = ClusterCa::new("cluster-a").unwrap();
    let manager = enroll(&ca, "manager1", Role::Manager, &manager_opts());
    let worker = enroll(&ca, "worker1", Role::Worker, &IssueOptions::default());

    let (l, port) = listener().await;
    let server = serve_one(l, server_config(&manager, manager.ca()).unwrap(), echo);
    let client = call(
        port,
        client_config(&worker, worker.ca()).unwrap(),
        manager_server_name(),
        "hello",
        None,
    );
    let (served, called) = tokio::join!(server, client);
    let served = served.unwrap();
    let called = called.unwrap();

    let seen_by_manager = served.peer.unwrap();
    assert_eq!(seen_by_manager.node_id(), "worker1");
    assert_eq!(seen_by_manager.role(), Role::Worker);
    assert_eq!(seen_by_manager.cluster_id(), "cluster-a");
    assert_eq!(served.received, "hello");
    // The manager authorizes calls by the role in the certificate.
    assert!(seen_by_manager.authorize(Role::Worker).is_ok());
    assert!(matches!(
        seen_by_manager.authorize(Role::Manager),
        Err(PkiError::NotAuthorized { .. })
    ));

    let seen_by_worker = called.server.unwrap().unwrap();
    assert_eq!(seen_by_worker.node_id(), "manager1");
    assert_eq!(seen_by_worker.role(), Role::Manager);
    assert!(seen_by_worker.authorize(Role::Manager).is_ok());
    assert_eq!(called.answer, "worker worker1 says hello");
}

#[tokio::test]
async fn manager_is_reached_by_role_node_id_or_ip_but_not_another_name() {
    let ca = ClusterCa::new("cluster-a").unwrap();
    let manager = enroll(&ca, "manager1", Role::Manager, &manager_opts());
    let worker = enroll(&ca, "worker1", Role::Worker, &IssueOptions::default());

    for (name, ok) in [
        (manager_server_name(), true),
        (ServerName::try_from("manager1").unwrap(), true),
        (ServerName::try_from("127.0.0.1").unwrap(), true),
        (ServerName::try_from("manager2").unwrap(), false),
        (ServerName::try_from("worker1").unwrap(), false),
    ] {
        let (l, port) = listener().await;
        let server = serve_one(l, server_config(&manager, manager.ca()).unwrap(), echo);
        let client = call(
            port,
            client_config(&worker, worker.ca()).unwrap(),
            name.clone(),
            "hi",
            None,
        );
        let (served, called) = tokio::join!(server, client);
        assert_eq!(called.is_ok(), ok, "{name:?}: {called:?}");
        assert_eq!(served.is_ok(), ok, "{name:?}: {served:?}");
    }
}

#[tokio::test]
async fn a_worker_is_not_accepted_as_a_manager() {
    // A worker's certificate does not carry `shoal-manager`: a node that dials "a
    // manager" and reaches a worker refuses it.
    let ca = ClusterCa::new("cluster-a").unwrap();
    let worker = enroll(&ca, "worker1", Role::Worker, &IssueOptions::default());
    let other = enroll(&ca, "worker2", Role::Worker, &IssueOptions::default());

    let (l, port) = listener().await;
    let server = serve_one(l, server_config(&worker, worker.ca()).unwrap(), echo);
    let client = call(
        port,
        client_config(&other, other.ca()).unwrap(),
        manager_server_name(),
        "hi",
        None,
    );
    let (served, called) = tokio::join!(server, client);
    let err = called.unwrap_err().to_string();
    assert!(err.contains("not valid for name"), "{err}");
    assert!(served.is_err());
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let ca = ClusterCa::new("cluster-a").unwrap();
    let manager = enroll(&ca, "manager1", Role::Manager, &manager_opts());
    let rogue_ca = ClusterCa::new("cluster-a").unwrap(); // same name, other key
    let rogue = enroll(
        &rogue_ca,
        "worker1",
        Role::Manager,
        &IssueOptions::default(),
    );

    // The rogue trusts the real CA, so it would accept the server: only the server's
    // check of the client certificate stops it.
    let (l, port) = listener().await;
    let server = serve_one(l, server_config(&manager, manager.ca()).unwrap(), echo);
    let client = call(
        port,
        client_config(&rogue, ca.certificate()).unwrap(),
        manager_server_name(),
        "let me in",
        None,
    );
    let (served, called) = tokio::join!(server, client);
    let err = served.unwrap_err().to_string();
    // Same subject name as the real CA: found by name, refused by signature.
    assert!(err.contains("BadSignature"), "{err}");
    assert!(called.is_err(), "{called:?}");

    // A CA of another name: no issuer at all.
    let other_ca = ClusterCa::new("cluster-b").unwrap();
    let other = enroll(
        &other_ca,
        "worker1",
        Role::Manager,
        &IssueOptions::default(),
    );
    let (l, port) = listener().await;
    let server = serve_one(l, server_config(&manager, manager.ca()).unwrap(), echo);
    let client = call(
        port,
        client_config(&other, ca.certificate()).unwrap(),
        manager_server_name(),
        "let me in",
        None,
    );
    let (served, called) = tokio::join!(server, client);
    let err = served.unwrap_err().to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(called.is_err(), "{called:?}");
}

#[tokio::test]
async fn server_from_another_ca_is_refused() {
    let ca = ClusterCa::new("cluster-a").unwrap();
    let worker = enroll(&ca, "worker1", Role::Worker, &IssueOptions::default());
    let rogue_ca = ClusterCa::new("cluster-a").unwrap();
    let rogue = enroll(&rogue_ca, "manager1", Role::Manager, &manager_opts());

    let (l, port) = listener().await;
    let server = serve_one(l, join_server_config(&rogue, rogue.ca()).unwrap(), echo);
    let client = call(
        port,
        client_config(&worker, worker.ca()).unwrap(),
        manager_server_name(),
        "secret",
        None,
    );
    let (served, called) = tokio::join!(server, client);
    let err = called.unwrap_err();
    assert!(!is_ca_pin_mismatch(&err));
    let err = err.to_string();
    assert!(err.contains("BadSignature"), "{err}");
    assert!(served.is_err());
}

#[tokio::test]
async fn client_without_certificate_is_refused_by_server_config_but_not_by_join_config() {
    let ca = ClusterCa::new("cluster-a").unwrap();
    let manager = enroll(&ca, "manager1", Role::Manager, &manager_opts());

    let (l, port) = listener().await;
    let server = serve_one(l, server_config(&manager, manager.ca()).unwrap(), echo);
    let client = call(
        port,
        bootstrap_client_config(&ca.digest()).unwrap(),
        manager_server_name(),
        "anonymous",
        None,
    );
    let (served, called) = tokio::join!(server, client);
    let err = served.unwrap_err().to_string();
    assert!(err.contains("peer sent no certificates"), "{err}");
    assert!(called.is_err(), "{called:?}");

    // The join listener lets it in, without an identity: the API layer allows it only
    // the join call.
    let (l, port) = listener().await;
    let server = serve_one(l, join_server_config(&manager, manager.ca()).unwrap(), echo);
    let client = call(
        port,
        bootstrap_client_config(&ca.digest()).unwrap(),
        manager_server_name(),
        "anonymous",
        None,
    );
    let (served, called) = tokio::join!(server, client);
    assert!(matches!(
        served.unwrap().peer,
        Err(PkiError::NoPeerCertificate)
    ));
    assert!(called.unwrap().answer.starts_with("anonymous"));

    // ...but a client certificate it does get must still be from the cluster CA.
    let rogue_ca = ClusterCa::new("cluster-a").unwrap();
    let rogue = enroll(&rogue_ca, "worker9", Role::Worker, &IssueOptions::default());
    let (l, port) = listener().await;
    let server = serve_one(l, join_server_config(&manager, manager.ca()).unwrap(), echo);
    let client = call(
        port,
        client_config(&rogue, ca.certificate()).unwrap(),
        manager_server_name(),
        "hi",
        None,
    );
    let (served, called) = tokio::join!(server, client);
    assert!(served.is_err());
    assert!(called.is_err());
}

/// The join request a joining node sends over the bootstrap connection.
#[derive(Serialize, Deserialize)]
struct JoinRequest {
    token: String,
    node_id: String,
    csr: shoal_cluster::pki::NodeCsr,
}

#[derive(Serialize, Deserialize)]
enum JoinResponse {
    Joined {
        role: Role,
        certificate: NodeCertificate,
    },
    Refused(String),
}

/// A manager's join handler: check the token, sign the CSR for the role it grants.
fn handle_join(ca: &ClusterCa, tokens: &JoinTokens, line: &str) -> String {
    let request: JoinRequest = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return serde_json::to_string(&JoinResponse::Refused(e.to_string())).unwrap(),
    };
    let response = match tokens.check(&request.token, None) {
        Ok(role) => {
            let opts = IssueOptions::default();
            match ca.issue(&request.csr, &request.node_id, role, &opts) {
                Ok(certificate) => JoinResponse::Joined { role, certificate },
                Err(e) => JoinResponse::Refused(e.to_string()),
            }
        }
        Err(e) => JoinResponse::Refused(e.to_string()),
    };
    serde_json::to_string(&response).unwrap()
}

/// A joining node: pin the CA from the token, send token + CSR, build the identity.
async fn join(
    manager_ca: &ClusterCa,
    manager: &NodeIdentity,
    tokens: &JoinTokens,
    token: &str,
    node_id: &str,
) -> Result<NodeIdentity, String> {
    let parsed = JoinToken::parse(token).map_err(|e| e.to_string())?;
    let (key, csr) = NodeIdentity::generate_key_and_csr(node_id).unwrap();
    let request = serde_json::to_string(&JoinRequest {
        token: token.to_string(),
        node_id: node_id.to_string(),
        csr,
    })
    .unwrap();

    let (l, port) = listener().await;
    let server = serve_one(
        l,
        join_server_config(manager, manager.ca()).unwrap(),
        |line, _| handle_join(manager_ca, tokens, line),
    );
    let client = call(
        port,
        bootstrap_client_config(parsed.ca_digest()).unwrap(),
        manager_server_name(),
        &request,
        Some(parsed.ca_digest()),
    );
    let (served, called) = tokio::join!(server, client);
    let called = called.map_err(|e| format!("handshake: {e}"))?;
    served.unwrap();
    let ca = called
        .server_chain_ca
        .expect("the pinned CA is in the server's chain");
    assert_eq!(ca.digest(), *parsed.ca_digest());
    match serde_json::from_str(&called.answer).unwrap() {
        JoinResponse::Joined { role, certificate } => {
            assert_eq!(certificate.role(), role);
            NodeIdentity::new(key, certificate, ca).map_err(|e| e.to_string())
        }
        JoinResponse::Refused(why) => Err(why),
    }
}

#[tokio::test]
async fn join_with_tokens_rotation_and_roles_then_mutual_tls() {
    let ca = ClusterCa::new("cluster-a").unwrap();
    let manager = enroll(&ca, "manager1", Role::Manager, &manager_opts());
    let mut tokens = JoinTokens::generate(ca.digest());

    // The worker token makes a worker, whose certificate then works for mutual TLS.
    let worker_token = tokens.worker.expose_secret();
    let w = join(&ca, &manager, &tokens, &worker_token, "worker1")
        .await
        .unwrap();
    assert_eq!(w.role(), Role::Worker);
    assert_eq!(w.node_id(), "worker1");
    assert_eq!(w.ca(), ca.certificate());

    let (l, port) = listener().await;
    let server = serve_one(l, server_config(&manager, manager.ca()).unwrap(), echo);
    let client = call(
        port,
        client_config(&w, w.ca()).unwrap(),
        manager_server_name(),
        "heartbeat",
        None,
    );
    let (served, called) = tokio::join!(server, client);
    assert_eq!(served.unwrap().peer.unwrap().node_id(), "worker1");
    assert_eq!(called.unwrap().answer, "worker worker1 says heartbeat");

    // The manager token makes a manager.
    let m = join(
        &ca,
        &manager,
        &tokens,
        &tokens.manager.expose_secret(),
        "manager2",
    )
    .await
    .unwrap();
    assert_eq!(m.role(), Role::Manager);

    // Rotation: the old worker token is refused, the new one works; the worker that
    // joined before keeps working.
    let new_worker_token = tokens.rotate(Role::Worker).expose_secret();
    let refused = join(&ca, &manager, &tokens, &worker_token, "worker2")
        .await
        .unwrap_err();
    assert_eq!(refused, TokenError::Invalid.to_string());
    let w2 = join(&ca, &manager, &tokens, &new_worker_token, "worker2")
        .await
        .unwrap();
    assert_eq!(w2.role(), Role::Worker);
    assert!(w.not_after() > SystemTime::now());

    // Malformed tokens fail before any connection.
    let err = join(&ca, &manager, &tokens, "SWMTKN-1-abc", "worker3")
        .await
        .unwrap_err();
    assert!(err.contains("malformed join token"), "{err}");
}

#[tokio::test]
async fn bootstrap_refuses_a_manager_whose_ca_differs_from_the_token() {
    let ca = ClusterCa::new("cluster-a").unwrap();
    let manager = enroll(&ca, "manager1", Role::Manager, &manager_opts());
    let other_ca = ClusterCa::new("cluster-b").unwrap();
    // A token for cluster B, presented to cluster A's manager (or: A's manager is an
    // impostor for B). The handshake fails and the token is never sent.
    let token_for_b = JoinTokens::generate(other_ca.digest()).worker;

    let request = token_for_b.expose_secret();
    let (l, port) = listener().await;
    let server = serve_one(l, join_server_config(&manager, manager.ca()).unwrap(), echo);
    let client = call(
        port,
        bootstrap_client_config(token_for_b.ca_digest()).unwrap(),
        manager_server_name(),
        &request,
        Some(token_for_b.ca_digest()),
    );
    let (served, called) = tokio::join!(server, client);
    let err = called.unwrap_err();
    assert!(is_ca_pin_mismatch(&err), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains("does not match the join token's CA digest"),
        "{err}"
    );
    // The server never read a line: the handshake failed on its side too.
    assert!(served.is_err(), "{served:?}");
}

#[tokio::test]
async fn expired_certificates_are_refused_in_the_handshake() {
    let ca = ClusterCa::new("cluster-a").unwrap();
    let manager = enroll(&ca, "manager1", Role::Manager, &manager_opts());
    let expired_window = IssueOptions {
        validity: Duration::from_secs(3600),
        backdate: Duration::ZERO,
        now: Some(SystemTime::now() - Duration::from_secs(2 * 3600)),
        ..IssueOptions::default()
    };
    let expired_worker = enroll(&ca, "worker1", Role::Worker, &expired_window);
    assert!(expired_worker.is_expired(SystemTime::now()));
    assert!(expired_worker.needs_renewal(SystemTime::now()));

    // An expired client certificate: the manager refuses it.
    let (l, port) = listener().await;
    let server = serve_one(l, server_config(&manager, manager.ca()).unwrap(), echo);
    let client = call(
        port,
        client_config(&expired_worker, expired_worker.ca()).unwrap(),
        manager_server_name(),
        "hi",
        None,
    );
    let (served, called) = tokio::join!(server, client);
    let err = served.unwrap_err().to_string();
    assert!(err.contains("expired"), "{err}");
    assert!(called.is_err());

    // An expired server certificate: the node refuses the manager.
    let expired_manager = enroll(
        &ca,
        "manager2",
        Role::Manager,
        &IssueOptions {
            ip_addresses: vec!["127.0.0.1".parse().unwrap()],
            ..expired_window.clone()
        },
    );
    let worker = enroll(&ca, "worker2", Role::Worker, &IssueOptions::default());
    let (l, port) = listener().await;
    let server = serve_one(
        l,
        server_config(&expired_manager, expired_manager.ca()).unwrap(),
        echo,
    );
    let client = call(
        port,
        client_config(&worker, worker.ca()).unwrap(),
        manager_server_name(),
        "hi",
        None,
    );
    let (served, called) = tokio::join!(server, client);
    let err = called.unwrap_err().to_string();
    assert!(err.contains("expired"), "{err}");
    assert!(served.is_err());
}

#[tokio::test]
async fn renewed_certificate_replaces_one_that_is_due() {
    // A certificate valid for 3 minutes is due for renewal after 2; renewal is a new key
    // and CSR for the same node ID, sent over the node's existing mutual-TLS connection.
    let ca = ClusterCa::new("cluster-a").unwrap();
    let manager = enroll(&ca, "manager1", Role::Manager, &manager_opts());
    let short = IssueOptions {
        validity: Duration::from_secs(180),
        backdate: Duration::ZERO,
        ..IssueOptions::default()
    };
    let worker = enroll(&ca, "worker1", Role::Worker, &short);
    let start = worker.not_before();
    assert_eq!(worker.not_after(), start + Duration::from_secs(180));
    assert_eq!(worker.renew_after(), start + Duration::from_secs(120));
    assert!(!worker.needs_renewal(start + Duration::from_secs(119)));
    assert!(worker.needs_renewal(start + Duration::from_secs(120)));

    let (key, csr) = NodeIdentity::generate_key_and_csr(worker.node_id()).unwrap();
    let request = csr.pem().replace('\n', "|");
    let (l, port) = listener().await;
    let server = serve_one(
        l,
        server_config(&manager, manager.ca()).unwrap(),
        |line, peer| {
            // The node ID and role come from the certificate the node presented.
            let peer = peer.as_ref().unwrap();
            let csr = shoal_cluster::pki::NodeCsr::from_pem(&line.replace('|', "\n")).unwrap();
            let cert = ca
                .issue(&csr, peer.node_id(), peer.role(), &IssueOptions::default())
                .unwrap();
            cert.pem().replace('\n', "|")
        },
    );
    let client = call(
        port,
        client_config(&worker, worker.ca()).unwrap(),
        manager_server_name(),
        &request,
        None,
    );
    let (served, called) = tokio::join!(server, client);
    served.unwrap();
    let cert = NodeCertificate::from_pem(&called.unwrap().answer.replace('|', "\n")).unwrap();
    let renewed = NodeIdentity::new(key, cert, worker.ca().clone()).unwrap();
    assert_eq!(renewed.node_id(), "worker1");
    assert_eq!(renewed.role(), Role::Worker);
    assert!(!renewed.needs_renewal(SystemTime::now()));
    assert!(renewed.not_after() > worker.not_after());
}

#[tokio::test]
async fn a_read_on_a_refused_connection_gets_nothing() {
    // The server side of a refused client never hands data to the application.
    let ca = ClusterCa::new("cluster-a").unwrap();
    let manager = enroll(&ca, "manager1", Role::Manager, &manager_opts());
    let (l, port) = listener().await;
    let config = Arc::new(server_config(&manager, manager.ca()).unwrap());
    let server = async move {
        let (tcp, _) = l.accept().await.unwrap();
        match TlsAcceptor::from(config).accept(tcp).await {
            Ok(mut tls) => {
                let mut buf = Vec::new();
                let _ = tls.read_to_end(&mut buf).await;
                Some(buf)
            }
            Err(_) => None,
        }
    };
    let client = call(
        port,
        bootstrap_client_config(&ca.digest()).unwrap(),
        manager_server_name(),
        "SWMTKN-1-secret",
        None,
    );
    let (got, called) = tokio::join!(server, client);
    assert_eq!(got, None);
    assert!(called.is_err());
}

/// One handshake (and one line) between `client` and `server`, each with the trust it
/// is given; the client dials `shoal-manager`.
async fn handshake(
    server: &NodeIdentity,
    server_trust: &CaTrust,
    client: &NodeIdentity,
    client_trust: &CaTrust,
) -> Result<String, String> {
    let (l, port) = listener().await;
    let served = serve_one(l, server_config(server, server_trust).unwrap(), echo);
    let called = call(
        port,
        client_config(client, client_trust).unwrap(),
        manager_server_name(),
        "hello",
        None,
    );
    match tokio::join!(served, called) {
        (Ok(_), Ok(c)) => Ok(c.answer),
        (s, c) => Err(format!("server: {:?}; client: {:?}", s.err(), c.err())),
    }
}

#[tokio::test]
async fn during_a_rotation_every_pair_of_old_and_new_certificates_connects_and_after_it_the_old_root_counts_for_nothing(
) {
    let old = ClusterCa::new("cluster-a").unwrap();
    let (new, cross) = old.successor().unwrap();
    let next = NextRoot::new(old.certificate(), new.certificate().clone(), cross.to_vec()).unwrap();
    let before = CaTrust::new(old.certificate().clone());
    let during = CaTrust::rotating(old.certificate().clone(), next.clone()).unwrap();
    let after = CaTrust::new(new.certificate().clone());

    let enroll_in = |ca: &ClusterCa, id: &str, role, opts: &IssueOptions, trust: &CaTrust| {
        let (key, csr) = NodeIdentity::generate_key_and_csr(id).unwrap();
        let cert = ca.issue(&csr, id, role, opts).unwrap();
        NodeIdentity::with_trust(key, cert, trust.clone()).unwrap()
    };
    // Managers and workers with certificates of either root, holding the rotation's
    // trust (the ones of the new root cannot hold the old trust alone).
    let m_old = enroll_in(&old, "m-old", Role::Manager, &manager_opts(), &during);
    let m_new = enroll_in(&new, "m-new", Role::Manager, &manager_opts(), &during);
    let w_old = enroll_in(
        &old,
        "w-old",
        Role::Worker,
        &IssueOptions::default(),
        &during,
    );
    let w_new = enroll_in(
        &new,
        "w-new",
        Role::Worker,
        &IssueOptions::default(),
        &during,
    );
    assert_eq!(m_new.issuer(), new.certificate());
    assert_eq!(w_old.issuer(), old.certificate());

    // Whoever has heard of the rotation or not (trusting the old root only, or both),
    // every certificate of either root gets through, both ways.
    for (server, client) in [
        (&m_old, &w_new),
        (&m_new, &w_old),
        (&m_new, &w_new),
        (&m_old, &w_old),
    ] {
        for (st, ct) in [
            (&before, &before),
            (&before, &during),
            (&during, &before),
            (&during, &during),
        ] {
            let answer = handshake(server, st, client, ct).await.unwrap_or_else(|e| {
                panic!(
                    "{} ({:?}) and {} ({:?}): {e}",
                    server.node_id(),
                    st.digests(),
                    client.node_id(),
                    ct.digests()
                )
            });
            assert!(answer.contains(client.node_id()), "{answer}");
        }
    }

    // Afterwards (only the new root trusted), new certificates connect with peers that
    // trust the new root alone or still both, and an old one is refused either way.
    for (st, ct) in [(&after, &after), (&after, &during), (&during, &after)] {
        handshake(&m_new, st, &w_new, ct).await.unwrap();
    }
    assert!(handshake(&m_new, &after, &w_old, &during).await.is_err());
    assert!(handshake(&m_old, &during, &w_new, &after).await.is_err());

    // A joining node pinning the old root (tokens change only when the rotation ends)
    // reaches a manager that holds a certificate of the new root.
    let (l, port) = listener().await;
    let pin = old.digest();
    let served = serve_one(l, join_server_config(&m_new, &during).unwrap(), echo);
    let called = call(
        port,
        bootstrap_client_config(&pin).unwrap(),
        manager_server_name(),
        "join",
        Some(&pin),
    );
    let (served, called) = tokio::join!(served, called);
    served.unwrap();
    assert_eq!(
        called.unwrap().server_chain_ca.as_ref(),
        Some(old.certificate())
    );

    // The identity keeps both roots through its saved form.
    let json = serde_json::to_string(&w_new).unwrap();
    let back: NodeIdentity = serde_json::from_str(&json).unwrap();
    assert_eq!(back.trust(), &during);
    assert_eq!(back.issuer(), new.certificate());
}
