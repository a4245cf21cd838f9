//! The constant load of every scenario: from the lab's client, GETs to the published
//! ports of every node, on a new connection each (busybox httpd, port 8080) and on a
//! kept-alive one (the image's keep-alive server, port 8081); one generator per node and
//! way, [`crate::load::HttpLoad`]; and from the `web` task's container on
//! [`LOAD_HOST`], GETs of `http://back/` (the name resolved by the embedded DNS, the
//! VIP's connect rewritten by the node), [`crate::load::wget_loop_script`].
use std::{
    net::SocketAddrV4,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Result};

use super::cluster::{wait, Cluster, BACK, KEEPALIVE_PORT, LOAD_HOST, SETTLE, WEB_PORT};
use crate::load::{wget_loop_counts, wget_loop_script, HttpLoad};

/// Between two requests of one generator: 10 generators at 5 requests/s each, and the
/// container's loop at about 10 (each of its requests forks wget and grep, each of the
/// client's a CGI script), leave the shared 2-core machine to the agents.
const PACE: Duration = Duration::from_millis(200);
const CONTAINER_PACE: Duration = Duration::from_millis(100);

/// One way into the cluster: the node it goes through, and how.
#[derive(Debug, Clone)]
pub struct PathCounts {
    pub node: String,
    /// `new` (a connection per request), `keepalive`, or `by_name` (the container's).
    pub path: &'static str,
    pub sent: u64,
    pub failed: u64,
    /// When each failed request was sent.
    pub failed_at: Vec<FailedAt>,
    /// The first failures, with what was seen.
    pub failures: Vec<String>,
}

/// When a failed request was sent: an instant for the client's loads; for the
/// container's, the second (wall clock) it was sent in.
#[derive(Debug, Clone, Copy)]
pub enum FailedAt {
    Instant(Instant),
    UnixSecond(u64),
}

/// Every load of one scenario.
pub struct LoadSet {
    http: Vec<(String, &'static str, HttpLoad)>,
    container: String,
    tag: String,
}

impl LoadSet {
    pub fn start(cluster: &Cluster, scenario: &str) -> Result<LoadSet> {
        let client = PathBuf::from(format!("/run/netns/{}", cluster.state.client.netns));
        let mut http = Vec::new();
        for h in &cluster.state.hosts {
            for (path, keepalive, port) in [
                ("new", false, WEB_PORT),
                ("keepalive", true, KEEPALIVE_PORT),
            ] {
                let to = vec![SocketAddrV4::new(h.address, port)];
                let name = format!("{scenario} {} {path}", h.name);
                let load = HttpLoad::spawn(&name, client.clone(), to.clone(), keepalive, PACE);
                http.push((h.name.clone(), path, load));
            }
        }
        let tag = format!("/tmp/chaos-{scenario}");
        let script = wget_loop_script(&tag, &format!("http://{BACK}/"), true, CONTAINER_PACE);
        // A task replaced since the last scenario has a new container.
        let container = wait("the web task's container on the load host", SETTLE, || {
            cluster.load_container()
        })?;
        cluster.exec(
            LOAD_HOST,
            &["docker", "exec", "-d", &container, "sh", "-c", &script],
        )?;
        Ok(LoadSet {
            http,
            container,
            tag,
        })
    }

    /// Stops every load and returns what each counted; the container's load, if it
    /// could not be read back (its container gone), is an error beside the counts.
    pub fn stop(mut self, cluster: &Cluster) -> (Vec<PathCounts>, Result<()>) {
        let mut out: Vec<PathCounts> = std::mem::take(&mut self.http)
            .into_iter()
            .map(|(node, path, load)| {
                let r = load.stop();
                PathCounts {
                    node,
                    path,
                    sent: r.sent,
                    failed: r.failed,
                    failed_at: r.failed_at.into_iter().map(FailedAt::Instant).collect(),
                    failures: r.failures,
                }
            })
            .collect();
        let container = self.container_counts(cluster).map(|c| out.push(c));
        (out, container)
    }

    fn container_counts(&self, cluster: &Cluster) -> Result<PathCounts> {
        let tag = &self.tag;
        let docker_exec = |argv: &[&str]| {
            let mut a = vec!["docker", "exec", &self.container];
            a.extend_from_slice(argv);
            cluster.exec(LOAD_HOST, &a)
        };
        docker_exec(&["touch", &format!("{tag}.stop")])?;
        let (ok, failed) = wait(
            "the container's wget loop ends",
            Duration::from_secs(30),
            || {
                let (ok, failed, done) =
                    wget_loop_counts(&docker_exec(&["cat", &format!("{tag}.counts")])?);
                if done {
                    Ok((ok, failed))
                } else {
                    bail!("still running: {ok} answered, {failed} failed")
                }
            },
        )?;
        let stamps = docker_exec(&["sh", "-c", &format!("cat {tag}.failures 2>/dev/null; true")])?;
        let failed_at: Vec<FailedAt> = stamps
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .map(FailedAt::UnixSecond)
            .collect();
        Ok(PathCounts {
            node: LOAD_HOST.into(),
            path: "by_name",
            sent: ok + failed,
            failed,
            failures: stamps
                .lines()
                .take(crate::load::KEPT)
                .map(|l| format!("sent, failed at unix second {l}"))
                .collect(),
            failed_at,
        })
    }
}

/// A span of time in which a node was under a fault: its own paths' failures then are
/// the killed node's own, not counted against the target.
#[derive(Debug, Clone)]
pub struct Fault {
    pub node: String,
    pub from: Instant,
    pub to: Instant,
    from_unix: u64,
    to_unix: u64,
}

/// A request in flight when its node's fault began (sent this long before) is the
/// node's own; so is one sent this long after the node is back (its first requests).
const IN_FLIGHT: Duration = Duration::from_secs(1);

impl Fault {
    /// A fault of `node` from `from` until now.
    pub fn until_now(node: &str, from: Instant) -> Fault {
        let now = Instant::now();
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let ago = now.duration_since(from).as_secs();
        Fault {
            node: node.to_owned(),
            from,
            to: now,
            from_unix: unix_now.saturating_sub(ago),
            to_unix: unix_now,
        }
    }

    fn covers(&self, at: FailedAt) -> bool {
        match at {
            FailedAt::Instant(t) => t + IN_FLIGHT >= self.from && t <= self.to + IN_FLIGHT,
            // Whole seconds: one more on each side.
            FailedAt::UnixSecond(s) => s + 2 >= self.from_unix && s <= self.to_unix + 2,
        }
    }
}

impl PathCounts {
    /// Failures not excused by a fault of this path's own node.
    pub fn failed_through_up_nodes(&self, faults: &[Fault]) -> u64 {
        self.failed_at
            .iter()
            .filter(|at| !faults.iter().any(|f| f.node == self.node && f.covers(**at)))
            .count() as u64
    }

    /// The last failure (the client's loads), for a time to heal.
    pub fn last_failure(&self) -> Option<Instant> {
        self.failed_at
            .iter()
            .filter_map(|a| match a {
                FailedAt::Instant(t) => Some(*t),
                FailedAt::UnixSecond(_) => None,
            })
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(node: &str, failed_at: Vec<FailedAt>) -> PathCounts {
        PathCounts {
            node: node.into(),
            path: "new",
            sent: 100,
            failed: failed_at.len() as u64,
            failed_at,
            failures: Vec::new(),
        }
    }

    #[test]
    fn only_the_faulted_nodes_own_failures_are_excused() {
        let t0 = Instant::now();
        let fault = Fault {
            node: "h1".into(),
            from: t0 + Duration::from_secs(10),
            to: t0 + Duration::from_secs(20),
            from_unix: 1_000_010,
            to_unix: 1_000_020,
        };
        let faults = [fault];
        let at = |s: u64| FailedAt::Instant(t0 + Duration::from_secs(s));
        // In flight at the fault's start, during it, just after: h1's own.
        let own = counts("h1", vec![at(10), at(15), at(20)]);
        assert_eq!(own.failed_through_up_nodes(&faults), 0);
        // Long before or after the fault, h1's failures count too.
        let h1_other = counts("h1", vec![at(2), at(30)]);
        assert_eq!(h1_other.failed_through_up_nodes(&faults), 2);
        // Another node's failures always count.
        let h2 = counts("h2", vec![at(15)]);
        assert_eq!(h2.failed_through_up_nodes(&faults), 1);
        assert_eq!(h2.last_failure(), Some(t0 + Duration::from_secs(15)));
        // The container's failures, by the second.
        let by_name = counts(
            "h1",
            vec![
                FailedAt::UnixSecond(1_000_015),
                FailedAt::UnixSecond(1_000_040),
            ],
        );
        assert_eq!(by_name.failed_through_up_nodes(&faults), 1);
        assert_eq!(by_name.last_failure(), None);
    }
}
