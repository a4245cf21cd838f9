//! Idle long-lived connections to the `idle` service (never scaled, never updated, its
//! tasks only on managers, which are never drained): opened at the start of the soak,
//! one request answered on each, then left idle until the end, when each must answer a
//! second request from the same task.
//!
//! - Through the routing mesh: from the lab client to every node's published port
//!   ([`IDLE_PORT`]), [`PER_NODE`] connections per node, held by this process (sockets
//!   opened in the client's namespace).
//! - From inside a container (the `web` task on [`LOAD_HOST`]): one connection to the
//!   service's name and one to its VIP, each held by a busybox `nc` whose input waits for
//!   a file before sending the second request.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};

use crate::chaos::cluster::{wait, Cluster, LOAD_HOST};

/// The service the idle connections go to.
pub const IDLE: &str = "idle";
/// Its keep-alive server's port (the image's 8080), published on every node.
pub const IDLE_PORT: u16 = 8083;
/// Idle connections through each node's published port.
pub const PER_NODE: usize = 2;

/// One held connection, and the task (`host=` of its first answer) behind it.
enum Held {
    Mesh {
        node: String,
        stream: TcpStream,
        reader: BufReader<TcpStream>,
        first: String,
    },
    Container {
        way: &'static str,
        tag: String,
    },
}

/// Every idle connection of the soak.
pub struct IdleSet {
    held: Vec<Held>,
    container: String,
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n";

/// The `host=...` word of an answer.
fn host_of(body: &str) -> Option<String> {
    body.split_whitespace()
        .find(|w| w.starts_with("host="))
        .map(str::to_owned)
}

/// One request on a kept connection: the answering task's `host=`.
fn ask(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>) -> Result<String> {
    stream.write_all(REQUEST).context("write")?;
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).context("read")? == 0 {
            bail!("closed by the other side");
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length.context("no Content-Length")?];
    reader.read_exact(&mut body).context("body")?;
    let body = String::from_utf8_lossy(&body);
    host_of(&body).ok_or_else(|| anyhow!("answer without host=: {body:?}"))
}

/// The script that holds one connection from the container: a request, then nothing
/// until `{tag}.go` exists, then a second request; both answers in `{tag}.out`.
fn hold_script(tag: &str, target: &str) -> String {
    let req = "printf 'GET / HTTP/1.1\\r\\nHost: soak\\r\\n\\r\\n'";
    format!(
        "rm -f {tag}.*; ({req}; while [ ! -e {tag}.go ]; do sleep 1; done; {req}; sleep 3) \
         | nc {target} 8080 > {tag}.out 2>&1; echo ended >> {tag}.out"
    )
}

impl IdleSet {
    /// Opens every idle connection and checks its first answer.
    pub fn open(cluster: &Cluster, vip: &str) -> Result<IdleSet> {
        let client = format!("/run/netns/{}", cluster.state.client.netns);
        let targets: Vec<(String, SocketAddrV4)> = cluster
            .state
            .hosts
            .iter()
            .flat_map(|h| {
                (0..PER_NODE).map(|_| (h.name.clone(), SocketAddrV4::new(h.address, IDLE_PORT)))
            })
            .collect();
        let streams = in_netns(
            Path::new(&client),
            targets.iter().map(|(_, a)| *a).collect(),
        )?;
        let mut held = Vec::new();
        for ((node, _), mut stream) in targets.into_iter().zip(streams) {
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut reader = BufReader::new(stream.try_clone()?);
            let first = ask(&mut stream, &mut reader)
                .with_context(|| format!("the first request of an idle connection via {node}"))?;
            held.push(Held::Mesh {
                node,
                stream,
                reader,
                first,
            });
        }
        let container = cluster.load_container()?;
        for (way, target) in [("by_name", IDLE), ("by_vip", vip)] {
            let tag = format!("/tmp/soak-idle-{way}");
            let script = hold_script(&tag, target);
            cluster.exec(
                LOAD_HOST,
                &["docker", "exec", "-d", &container, "sh", "-c", &script],
            )?;
            held.push(Held::Container { way, tag });
        }
        let set = IdleSet { held, container };
        // The container's first answers arrived.
        for h in &set.held {
            if let Held::Container { way, tag } = h {
                wait(
                    &format!("the first answer on the idle connection {way}"),
                    Duration::from_secs(30),
                    || {
                        let out = set.read(cluster, &format!("{tag}.out"))?;
                        match out.lines().filter_map(host_of).count() {
                            0 => bail!("{out:?}"),
                            _ => Ok(()),
                        }
                    },
                )?;
            }
        }
        Ok(set)
    }

    /// How many connections are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    fn read(&self, cluster: &Cluster, file: &str) -> Result<String> {
        cluster.exec(LOAD_HOST, &["docker", "exec", &self.container, "cat", file])
    }

    /// A second request on every connection: one line per connection that did not
    /// answer from the task that answered first (empty when all did).
    pub fn check(self, cluster: &Cluster) -> Vec<String> {
        let mut bad = Vec::new();
        let mut tags = Vec::new();
        for h in self.held.iter() {
            match h {
                Held::Mesh {
                    node,
                    stream,
                    reader,
                    first,
                } => {
                    let (mut s, mut r) = match (stream.try_clone(), reader.get_ref().try_clone()) {
                        (Ok(s), Ok(r)) => (s, BufReader::new(r)),
                        _ => {
                            bad.push(format!("via {node}: cannot use the socket"));
                            continue;
                        }
                    };
                    match ask(&mut s, &mut r) {
                        Ok(second) if second == *first => {}
                        Ok(second) => bad.push(format!(
                            "via {node}: answered by {second}, first by {first}"
                        )),
                        Err(e) => {
                            bad.push(format!("via {node} (first answered by {first}): {e:#}"))
                        }
                    }
                }
                Held::Container { way, tag } => {
                    if let Err(e) = cluster.exec(
                        LOAD_HOST,
                        &[
                            "docker",
                            "exec",
                            &self.container,
                            "touch",
                            &format!("{tag}.go"),
                        ],
                    ) {
                        bad.push(format!("{way}: {e:#}"));
                    } else {
                        tags.push((*way, tag.clone()));
                    }
                }
            }
        }
        for (way, tag) in tags {
            let seen = wait(
                &format!("the idle connection {way} ends"),
                Duration::from_secs(30),
                || {
                    let out = self.read(cluster, &format!("{tag}.out"))?;
                    if out.contains("ended") {
                        Ok(out)
                    } else {
                        bail!("{out:?}")
                    }
                },
            );
            match seen {
                Err(e) => bad.push(format!("{way}: {e:#}")),
                Ok(out) => {
                    let hosts: Vec<String> = out.lines().filter_map(host_of).collect();
                    match &hosts[..] {
                        [a, b] if a == b => {}
                        _ => bad.push(format!(
                            "{way}: two answers from one task expected, the connection saw {out:?}"
                        )),
                    }
                }
            }
        }
        bad
    }
}

/// Opens TCP connections from the namespace at `netns` (a thread that enters it; the
/// sockets stay in it).
fn in_netns(netns: &Path, to: Vec<SocketAddrV4>) -> Result<Vec<TcpStream>> {
    let netns = netns.to_owned();
    std::thread::spawn(move || -> Result<Vec<TcpStream>> {
        let ns = std::fs::File::open(&netns).with_context(|| format!("{}", netns.display()))?;
        // SAFETY: setns on this thread only; it ends right after.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        to.iter()
            .map(|a| {
                TcpStream::connect_timeout(&SocketAddr::V4(*a), Duration::from_secs(3))
                    .with_context(|| format!("connect {a}"))
            })
            .collect()
    })
    .join()
    .map_err(|_| anyhow!("the connecting thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answering_task_is_read_from_the_body() {
        assert_eq!(host_of("host=abc keepalive\n").as_deref(), Some("host=abc"));
        assert_eq!(host_of("nothing"), None);
        let s = hold_script("/tmp/t", "10.0.0.2");
        assert!(s.contains("nc 10.0.0.2 8080 > /tmp/t.out"), "{s}");
        assert!(s.contains("[ ! -e /tmp/t.go ]"), "{s}");
    }
}
