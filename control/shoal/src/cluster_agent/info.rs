//! `shoal info`: the node's view of the swarm, as `docker info` shows its Swarm part,
//! read from the cluster's state (a worker reads it from the managers too), and how the
//! node's dataplane runs.
use super::*;
use std::time::SystemTime;

use shoal_orchestrator::events::EngineLink;

use crate::api::InfoView;

/// How long the cluster's state may take to read before info answers without it.
const STATE_TIMEOUT: Duration = Duration::from_secs(3);

/// (`inactive|locked|active`, manager or not) as [`info`] says them, from the role
/// alone.
pub(super) fn local_role(role: Option<&Role>) -> (&'static str, bool) {
    match role {
        None => ("inactive", false),
        // Docker's state for a node whose swarm part failed.
        Some(Role::Restarting(_)) => ("error", false),
        Some(r) if r.node_client().is_none() => ("locked", false),
        Some(r) => ("active", r.acting_manager().is_some()),
    }
}

pub(super) async fn info(
    role: Option<&Role>,
    dataplane: Option<String>,
    engine: Option<EngineLink>,
) -> InfoView {
    let mut view = InfoView {
        swarm: "inactive".into(),
        dataplane,
        engine: engine.map(|l| engine_text(&l, SystemTime::now())),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let Some(role) = role else {
        return view;
    };
    if let Role::Restarting(r) = role {
        view.swarm = "error".into();
        view.error = Some(r.message());
        return view;
    }
    let Some(client) = role.node_client() else {
        view.swarm = "locked".into();
        view.error = Some(SWARM_LOCKED.into());
        return view;
    };
    view.swarm = "active".into();
    view.is_manager = role.acting_manager().is_some();
    let me = client.node_id().to_owned();
    view.node_id = Some(me.clone());
    let state = match tokio::time::timeout(STATE_TIMEOUT, client.node_state(0)).await {
        Ok(Ok(Some(view))) => view.state,
        Ok(Ok(None)) => {
            view.error = Some("the managers sent no state".into());
            return view;
        }
        Ok(Err(e)) => {
            view.error = Some(format!("reading the cluster's state: {e}"));
            return view;
        }
        Err(_) => {
            view.error = Some(format!(
                "reading the cluster's state: no answer within {}s",
                STATE_TIMEOUT.as_secs()
            ));
            return view;
        }
    };
    if let Some(spec) = &state.cluster {
        view.cluster_id = Some(spec.id.clone());
        view.data_path_port = Some(spec.data_path_port);
        view.default_addr_pools = spec.default_addr_pools.clone();
        view.subnet_size = Some(spec.subnet_prefix_len);
    }
    let managers: Vec<&store::Node> = state
        .nodes
        .values()
        .filter(|n| n.role == store::Role::Manager)
        .collect();
    if view.is_manager {
        view.swarm_version = Some(state.swarm_version);
        view.managers = Some(managers.len());
        view.nodes = Some(state.nodes.len());
    }
    view.node_addr = state.nodes.get(&me).map(|n| host_part(&n.advertise_addr));
    view.manager_addrs = managers.iter().map(|n| n.advertise_addr.clone()).collect();
    view
}

/// The agent's link to dockerd in a line: `reachable`, or for how long and why not.
fn engine_text(link: &EngineLink, now: SystemTime) -> String {
    match link {
        EngineLink::Starting => "connecting".into(),
        EngineLink::Up => "reachable".into(),
        EngineLink::Down { since, error } => {
            let secs = now.duration_since(*since).unwrap_or_default().as_secs();
            format!("unreachable for {secs}s (tasks wait for it): {error}")
        }
    }
}

/// `IP` of `IP:PORT` (or the text as it is).
fn host_part(addr: &str) -> String {
    addr.parse::<SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| addr.to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn engine_text_says_for_how_long_dockerd_is_unreachable() {
        let now = SystemTime::now();
        assert_eq!(engine_text(&EngineLink::Up, now), "reachable");
        let down = EngineLink::Down {
            since: now - Duration::from_secs(12),
            error: "connection refused".into(),
        };
        assert_eq!(
            engine_text(&down, now),
            "unreachable for 12s (tasks wait for it): connection refused"
        );
    }
}
