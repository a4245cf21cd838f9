//! A paced HTTP load through a published port, a new connection per request, from a
//! network namespace (the lab's client): what a rolling update must not break. Every
//! request that does not end in a `shoal/web` answer counts as failed, with what went
//! wrong kept for the report.
use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};

/// One request every this long at most: enough requests to meet every stop of an
/// update, little enough not to take the shared machine's cores from the update itself.
const INTERVAL: Duration = Duration::from_millis(10);
/// A request that takes longer than this counts as failed.
const TIMEOUT: Duration = Duration::from_secs(2);

/// What the load saw.
#[derive(Debug, Default, Clone)]
pub(super) struct LoadCounts {
    pub(super) requests: u64,
    pub(super) failed: u64,
    /// Answers by the body's version (`1`, or the `version=` suffix).
    pub(super) answered_by_version: BTreeMap<String, u64>,
    /// Each failed request: when it was sent, what went wrong, and how many requests
    /// were answered since the previous failure (none: the path stayed broken).
    pub(super) failures: Vec<(Instant, String, u64)>,
}

/// The load running on its own thread; [`MeshLoad::stop`] ends it and returns the counts.
pub(super) struct MeshLoad {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Result<LoadCounts>>,
}

impl MeshLoad {
    /// Starts requests to `to` from the network namespace at `netns`.
    pub(super) fn start(netns: &Path, to: SocketAddr) -> MeshLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let path = netns.to_owned();
        let flag = stop.clone();
        let thread = thread::spawn(move || run(&path, to, &flag));
        MeshLoad { stop, thread }
    }

    pub(super) fn stop(self) -> Result<LoadCounts> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow!("the load thread panicked"))?
    }
}

fn enter_netns(path: &Path) -> Result<()> {
    let fd = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns on an open namespace fd; it changes only this thread.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering {}", path.display()));
    }
    Ok(())
}

fn run(netns: &Path, to: SocketAddr, stop: &AtomicBool) -> Result<LoadCounts> {
    enter_netns(netns)?;
    let mut counts = LoadCounts::default();
    let mut next = Instant::now();
    let mut answered_since_failure = 0;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            thread::sleep(next - now);
        }
        // A request that failed slowly does not make the next ones come in a burst.
        next = next.max(now) + INTERVAL;
        counts.requests += 1;
        let sent = Instant::now();
        match request(to) {
            Ok(version) => {
                *counts.answered_by_version.entry(version).or_default() += 1;
                answered_since_failure += 1;
            }
            Err(e) => {
                counts.failed += 1;
                counts.failures.push((sent, e, answered_since_failure));
                answered_since_failure = 0;
            }
        }
    }
    Ok(counts)
}

/// Waits until a request from the namespace at `netns` to `to` gets an answer.
pub(super) fn wait_answer(netns: &Path, to: SocketAddr, limit: Duration) -> Result<()> {
    let path = netns.to_owned();
    thread::spawn(move || -> Result<()> {
        enter_netns(&path)?;
        let start = Instant::now();
        loop {
            match request(to) {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > limit => {
                    return Err(anyhow!("no answer from {to} within {limit:?}: {e}"))
                }
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        }
    })
    .join()
    .map_err(|_| anyhow!("the probe thread panicked"))?
}

/// One request on a new connection: the answering image's version, or what failed.
fn request(to: SocketAddr) -> Result<String, String> {
    let mut conn =
        TcpStream::connect_timeout(&to, TIMEOUT).map_err(|e| format!("connect: {}", e.kind()))?;
    conn.set_read_timeout(Some(TIMEOUT))
        .and_then(|_| conn.write_all(b"GET / HTTP/1.0\r\n\r\n"))
        .map_err(|e| format!("send: {}", e.kind()))?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)
        .map_err(|e| format!("read: {}", e.kind()))?;
    version_of(&reply)
}

/// The version a `shoal/web` reply names (`1` when it names none), or why it is not one.
fn version_of(reply: &str) -> Result<String, String> {
    let status = reply.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.") || status.split_whitespace().nth(1) != Some("200") {
        return Err(if reply.is_empty() {
            "empty reply".into()
        } else {
            format!("status {status:?}")
        });
    }
    // The CGI's own header lines end in a bare newline, whatever httpd's end in; the
    // body starts after the first blank line.
    let body = ["\r\n\r\n", "\n\n"]
        .iter()
        .filter_map(|sep| reply.split_once(sep).map(|(_, b)| b))
        .max_by_key(|b| b.len())
        .unwrap_or_default();
    if !body.contains("host=") {
        let start: String = reply.chars().take(60).collect();
        return Err(format!("not a shoal/web answer: {start:?}"));
    }
    Ok(body
        .split_whitespace()
        .find_map(|w| w.strip_prefix("version="))
        .unwrap_or("1")
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::version_of;

    #[test]
    fn replies_are_told_apart() {
        let ok = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhost=a client=b\n";
        assert_eq!(version_of(ok), Ok("1".into()));
        let v2 = "HTTP/1.0 200 OK\r\n\r\nhost=a client=b version=2\n";
        assert_eq!(version_of(v2), Ok("2".into()));
        let cgi = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\n\nhost=a client=b version=2\n";
        assert_eq!(version_of(cgi), Ok("2".into()));
        assert!(version_of("").is_err());
        assert!(version_of("HTTP/1.0 404 Not Found\r\n\r\nhost=a").is_err());
        assert!(version_of("HTTP/1.0 200 OK\r\n\r\nsomething else").is_err());
    }
}
