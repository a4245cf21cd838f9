//! Port 2377 from the outside, for tests that ask the managers what a node (or a
//! stranger) should not get: a blocking TLS client that speaks the managers' frames
//! (a 4-byte big-endian length, then JSON) with the identity a node keeps in its data
//! directory, or with none. Requests and answers are plain JSON, as on the wire.
use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    sync::Arc,
    time::Duration,
};

use rustls::{ClientConfig, ClientConnection, StreamOwned};
use shoal_cluster::pki::{
    bootstrap_client_config, client_config, manager_server_name, CaDigest, NodeIdentity,
};
use socket2::{Domain, Socket, Type};

/// A TLS connection to a manager's port 2377.
pub type Conn = StreamOwned<ClientConnection, TcpStream>;

/// Where an agent keeps its cluster files, in the lab.
pub fn cluster_dir(host: &crate::lab::HostState) -> std::path::PathBuf {
    host.run_dir.join("agent").join("cluster")
}

/// The identity (key, certificate, CA) kept in `cluster_dir` (a manager's key sealed
/// with its data key, opened as the agent opens it).
pub fn identity_in(cluster_dir: &Path) -> NodeIdentity {
    shoal_cluster::manager::kept_identity(cluster_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", cluster_dir.display()))
}

/// A client presenting `identity`'s certificate.
pub fn node_config(identity: &NodeIdentity) -> Arc<ClientConfig> {
    Arc::new(client_config(identity, identity.ca()).expect("client config"))
}

/// A client without a certificate (a joining node's), trusting the CA of `digest`.
pub fn stranger_config(digest: &CaDigest) -> Arc<ClientConfig> {
    Arc::new(bootstrap_client_config(digest).expect("bootstrap config"))
}

/// A TCP connection to `addr` from `source` (any address of this namespace when None).
pub fn tcp_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.connect_timeout(&addr.into(), timeout)?;
    Ok(socket.into())
}

/// Connects and completes the TLS handshake within `timeout`.
pub fn connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    timeout: Duration,
) -> std::io::Result<Conn> {
    connect_from(None, addr, config, timeout)
}

/// [`connect`] from `source`.
pub fn connect_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    timeout: Duration,
) -> std::io::Result<Conn> {
    let tcp = tcp_from(source, addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let conn = ClientConnection::new(config.clone(), manager_server_name())
        .map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Sends `request` and reads the answer: `Ok(value)` for the wire's `{"Ok": value}`,
/// `Err(error)` for `{"Err": error}` (e.g. `{"error": "unauthorized", "detail": ...}`).
pub fn call(
    conn: &mut Conn,
    request: &serde_json::Value,
) -> std::io::Result<Result<serde_json::Value, serde_json::Value>> {
    let body = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    conn.write_all(&(body.len() as u32).to_be_bytes())?;
    conn.write_all(&body)?;
    conn.flush()?;
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)?;
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut reply)?;
    let mut reply: serde_json::Value =
        serde_json::from_slice(&reply).map_err(std::io::Error::other)?;
    if let Some(ok) = reply.get_mut("Ok") {
        return Ok(Ok(ok.take()));
    }
    match reply.get_mut("Err") {
        Some(err) => Ok(Err(err.take())),
        None => Err(std::io::Error::other(format!("not an answer: {reply}"))),
    }
}

/// Connects with `config` and makes one call.
pub fn call_once(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    request: &serde_json::Value,
) -> std::io::Result<Result<serde_json::Value, serde_json::Value>> {
    let mut conn = connect(addr, config, Duration::from_secs(20))?;
    call(&mut conn, request)
}

/// The refusal's detail, when `answer` is the managers saying "not authorized".
pub fn refusal(answer: &Result<serde_json::Value, serde_json::Value>) -> Option<String> {
    match answer {
        Err(e) if e["error"] == "unauthorized" => e["detail"].as_str().map(str::to_owned),
        _ => None,
    }
}
