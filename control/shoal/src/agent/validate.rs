//! `shoal agent --validate`: checks the configuration and the host the agent would run
//! on, prints one line per check (`ok: ...`, `problem: ...`, `skipped: ...`), and fails
//! when any problem was found. Nothing is changed on the host: the eBPF programs are
//! loaded with private maps and unloaded, ports are bound and let go.
use std::{path::Path, time::Duration};

use anyhow::{bail, Result};
use shoal_dataplane::{
    cleanup,
    probe::{self, Finding},
};
use shoal_orchestrator::docker::DockerClient;

use crate::{
    config::{AgentConfig, Settings},
    status,
};

/// How long dockerd may take to answer.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(5);

/// The checks' lines so far and the number of problems among them.
#[derive(Default)]
struct Checks {
    lines: Vec<String>,
    problems: usize,
}

impl Checks {
    fn add(&mut self, finding: Finding) {
        match finding {
            Ok(found) => self.lines.push(format!("ok: {found}")),
            Err(problem) => {
                self.problems += 1;
                self.lines.push(format!("problem: {problem}"));
            }
        }
    }

    fn skip(&mut self, why: String) {
        self.lines.push(format!("skipped: {why}"));
    }
}

/// Runs every check, prints the lines, and fails if any found a problem.
pub fn run(file: Option<&Path>, flags: Settings) -> Result<()> {
    let checks = check(file, flags);
    for line in &checks.lines {
        println!("{line}");
    }
    match checks.problems {
        0 => Ok(()),
        1 => bail!("1 problem found"),
        n => bail!("{n} problems found"),
    }
}

fn check(file: Option<&Path>, flags: Settings) -> Checks {
    let mut checks = Checks::default();
    let config = AgentConfig::load(file, flags);
    match &config {
        Ok(c) => checks.add(Ok(describe(c, file))),
        Err(e) => checks.add(Err(e.to_string())),
    }
    checks.add(probe::root());
    checks.add(probe::btf());
    checks.add(probe::cgroup2());
    if probe::running_as_root() {
        checks.add(probe::programs_load());
    } else {
        checks.skip("loading the eBPF programs needs root".into());
    }
    let Ok(config) = config else {
        checks.skip("the checks that need the configuration (bpffs for pin_dir, the underlay interface, dockerd, ports)".into());
        return checks;
    };
    checks.add(probe::bpffs(&config.pin_dir));
    checks.add(probe::underlay_interface(&config.underlay_interface));
    checks.add(docker_reachable(&config.docker_socket));
    match status::running_agent(&config.data_dir, &config.api_socket) {
        // Its own sockets hold the ports.
        Some(why) => checks.skip(format!("the ports: an agent runs here ({why})")),
        None => {
            checks.add(probe::tcp_port_free(
                config.cluster_listen,
                "cluster_listen, managers",
            ));
            checks.add(probe::udp_port_free(config.gossip_listen, "gossip_listen"));
            if let Some(metrics) = config.metrics_addr {
                checks.add(probe::tcp_port_free(metrics, "metrics_addr, Prometheus"));
            }
            // The default page address may be taken (the agent then only warns).
            if let Some(web) = config.web.filter(|w| w.explicit) {
                checks.add(probe::tcp_port_free(web.addr, "web_addr, cluster page"));
            }
            // The overlay outlives the agent: its VXLAN devices' sockets hold the port.
            let networks = cleanup::pinned_networks(&config.netns_dir).unwrap_or_default();
            if networks.is_empty() {
                let vxlan = std::net::SocketAddr::from(([0, 0, 0, 0], config.data_path_port));
                checks.add(probe::udp_port_free(vxlan, "data_path_port, VXLAN"));
            } else {
                checks.skip(format!(
                    "data_path_port {}/udp: the agent's own overlay networks in {} hold it",
                    config.data_path_port,
                    config.netns_dir.display()
                ));
            }
        }
    }
    checks
}

/// The configuration in one line.
fn describe(config: &AgentConfig, file: Option<&Path>) -> String {
    let source = match file {
        Some(path) => format!("config file {}", path.display()),
        None if Path::new(crate::config::DEFAULT_CONFIG_FILE).exists() => {
            format!("config file {}", crate::config::DEFAULT_CONFIG_FILE)
        }
        None => "no config file, flags and defaults".to_owned(),
    };
    let advertise = config
        .advertise_addr
        .map_or_else(|| "the underlay's".to_owned(), |a| a.to_string());
    format!(
        "configuration ({source}): underlay_interface={} ({}) advertise_addr={advertise} pin_dir={} data_dir={} netns_dir={} docker_socket={} api_socket={} cluster_listen={} gossip_listen={} data_path_port={} metrics_addr={} web_addr={}",
        config.underlay_interface,
        config.underlay_source,
        config.pin_dir.display(),
        config.data_dir.display(),
        config.netns_dir.display(),
        config.docker_socket.display(),
        config.api_socket.display(),
        config.cluster_listen,
        config.gossip_listen,
        config.data_path_port,
        config
            .metrics_addr
            .map_or_else(|| "off".to_owned(), |a| a.to_string()),
        config
            .web
            .map_or_else(|| "off".to_owned(), |w| w.addr.to_string()),
    )
}

/// dockerd answers on its socket.
fn docker_reachable(socket: &Path) -> Finding {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime to ask dockerd: {e}"))?;
    runtime.block_on(async {
        let ask = async {
            let docker = DockerClient::connect_with_timeout(socket, DOCKER_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            docker.engine_version().await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(DOCKER_TIMEOUT, ask).await {
            Ok(Ok(version)) => Ok(format!("dockerd {version} answers at {}", socket.display())),
            Ok(Err(e)) => Err(format!("dockerd is not reachable: {e}")),
            Err(_) => Err(format!(
                "dockerd at {} did not answer within {}s",
                socket.display(),
                DOCKER_TIMEOUT.as_secs()
            )),
        }
    })
}
