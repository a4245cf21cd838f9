//! Addresses and names the cluster role needs: `--listen-addr`, the manager to join,
//! an interface's address, the host's name, the node's engine version.
use super::*;
use shoal_cluster::store::NodeResources;

/// `--listen-addr`: ADDR:PORT, or ADDR with the default listen port.
pub(super) fn listen_address(
    given: Option<&str>,
    default: SocketAddr,
) -> Result<SocketAddr, ApiError> {
    let Some(text) = given else {
        return Ok(default);
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default.port()));
    }
    if let Some((iface, port)) = text.rsplit_once(':') {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::new(interface_ip(iface)?.into(), port));
        }
    }
    Ok(SocketAddr::new(interface_ip(text)?.into(), default.port()))
}

/// `--data-path-addr`: an IPv4 address of this host or an interface name; None when not
/// given or when it is the advertise address (the data path follows the advertise
/// address then).
pub(super) fn data_path_address(
    given: Option<&str>,
    advertise: IpAddr,
) -> Result<Option<IpAddr>, ApiError> {
    let Some(text) = given else {
        return Ok(None);
    };
    let ip = match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => match shoal_dataplane::iface::interface_with(ip) {
            Ok(Some(_)) => ip,
            Ok(None) => {
                return Err(ApiError::new(format!(
                    "--data-path-addr {ip}: no interface of this host holds that address"
                )))
            }
            Err(e) => {
                return Err(ApiError::new(format!(
                    "--data-path-addr {ip}: reading this host's addresses: {e}"
                )))
            }
        },
        Ok(IpAddr::V6(_)) => {
            return Err(ApiError::new(format!(
                "--data-path-addr {text}: the overlay's data path is IPv4"
            )))
        }
        Err(_) => interface_ip(text)
            .map_err(|e| ApiError::new(format!("--data-path-addr: {}", e.message)))?,
    };
    Ok((IpAddr::V4(ip) != advertise).then_some(IpAddr::V4(ip)))
}

/// The manager to join: HOST[:PORT], port 2377 by default; a name is looked up.
pub(super) async fn remote_address(remote: &str) -> Result<SocketAddr, ApiError> {
    if let Ok(addr) = remote.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = remote.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_CLUSTER_PORT));
    }
    let with_port = match remote.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => remote.to_owned(),
        _ => format!("{remote}:{DEFAULT_CLUSTER_PORT}"),
    };
    let mut addrs = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| ApiError::new(format!("looking up manager {remote}: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| ApiError::new(format!("manager {remote} has no address")))
}

/// The first IPv4 address of interface `name`.
pub(super) fn interface_ip(name: &str) -> Result<Ipv4Addr, ApiError> {
    match shoal_dataplane::iface::ipv4_address(name) {
        Ok(Some(ip)) => Ok(ip),
        Ok(None) => Err(ApiError::new(format!(
            "{name:?} is neither an IP address nor an interface with an IPv4 address"
        ))),
        Err(e) => Err(ApiError::new(format!(
            "reading the addresses of interface {name:?}: {e}"
        ))),
    }
}

/// The hostname of the UTS namespace the agent runs in.
pub fn host_name() -> std::io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // when the name fits (names are at most 64 bytes on Linux).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// The version of the node's dockerd and its capacity (CPUs, memory); a clear error if
/// it does not answer.
pub(super) async fn engine_facts(socket: &Path) -> Result<(String, NodeResources), ApiError> {
    let unreachable = |e: shoal_orchestrator::docker::DockerError| {
        ApiError::new(format!(
            "cannot read the engine version and capacity for this node: {e} (is dockerd running?)"
        ))
    };
    let read = async {
        let docker = DockerClient::connect_with_timeout(socket, DOCKER_TIMEOUT)
            .await
            .map_err(unreachable)?;
        let version = docker.engine_version().await.map_err(unreachable)?;
        let (nano_cpus, memory_bytes) = docker.capacity().await.map_err(unreachable)?;
        Ok((
            version,
            NodeResources {
                nano_cpus,
                memory_bytes,
            },
        ))
    };
    match tokio::time::timeout(DOCKER_TIMEOUT, read).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::new(format!(
            "cannot read the engine version and capacity from dockerd at {}: no answer within {}s",
            socket.display(),
            DOCKER_TIMEOUT.as_secs()
        ))),
    }
}
