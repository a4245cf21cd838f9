//! Load generators for the lab tests that prove "no failed request": HTTP GETs on a new
//! connection each, paced, counted, from inside a chosen network namespace (the lab
//! client's or a task container's), and the same from a shell loop inside a container
//! (busybox `wget` there, bounded by `timeout`: its own `-T` crashes; it resolves the service's name through the embedded DNS each time).
//!
//! A request fails when the connection is refused or times out, the request cannot be
//! written, the answer does not come within [`ANSWER_BOUND`], or it is not a `200` with
//! the lab web image's `host=` line. Nothing is retried: a retry would hide exactly the
//! failures these tests look for.
//!
//! The keep-alive generator ([`HttpLoad::start_keepalive`]) keeps one HTTP/1.1
//! connection per target and sends every request on it. When the server closed that
//! connection between two requests (end of stream or reset before a single byte of the
//! answer, as a stopped task's connection ends), it opens a new one and sends the request
//! there, as every HTTP client does for an idle connection the server closed; that is
//! counted as a reconnect, not a failure. A timeout, a cut answer, or a failure on the
//! new connection is a failure.
use std::{
    io::{Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{swarm::Task, LabGuard};

/// How long a connection may take to be accepted.
const CONNECT_BOUND: Duration = Duration::from_secs(3);
/// How long a whole answer may take (the web image answers from a CGI script).
const ANSWER_BOUND: Duration = Duration::from_secs(10);
/// Pause between two requests of one generator: steady load without starving a
/// 2-core machine of the CPU the agents need.
const PACE: Duration = Duration::from_millis(20);
/// Failures kept (with what was seen) for the report.
const KEPT: usize = 8;

/// What a load generator counted.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub name: String,
    pub sent: u64,
    pub failed: u64,
    /// Keep-alive generators: connections opened (the first per target included).
    pub connections: Option<u64>,
    /// The first failures: when (seconds since the start), target and what happened.
    pub failures: Vec<String>,
}

impl LoadReport {
    /// One line for the test's output.
    pub fn line(&self) -> String {
        let connections = match self.connections {
            Some(c) => format!(" (keep-alive, {c} connections opened)"),
            None => String::new(),
        };
        format!(
            "{}: requests sent {}, failed {}{connections}",
            self.name, self.sent, self.failed
        )
    }

    fn add(&mut self, other: LoadReport) {
        self.sent += other.sent;
        self.failed += other.failed;
        if let Some(c) = other.connections {
            *self.connections.get_or_insert(0) += c;
        }
        for f in other.failures {
            if self.failures.len() < KEPT {
                self.failures.push(f);
            }
        }
    }
}

/// A thread sending HTTP GETs, round-robin over `targets`, from a network namespace.
pub struct HttpLoad {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<LoadReport>,
}

impl HttpLoad {
    /// Starts sending from the namespace at `netns` (e.g. `/proc/PID/ns/net`, or
    /// `/run/netns/NAME`).
    pub fn start(name: &str, netns: PathBuf, targets: Vec<SocketAddrV4>) -> Self {
        Self::spawn(name, netns, targets, false)
    }

    /// [`HttpLoad::start`] with one kept-alive connection per target.
    pub fn start_keepalive(name: &str, netns: PathBuf, targets: Vec<SocketAddrV4>) -> Self {
        Self::spawn(name, netns, targets, true)
    }

    fn spawn(name: &str, netns: PathBuf, targets: Vec<SocketAddrV4>, keepalive: bool) -> Self {
        assert!(!targets.is_empty(), "{name}: no target");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = name.to_owned();
        let thread = thread::spawn(move || {
            let ns = std::fs::File::open(&netns)
                .unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
            // SAFETY: setns on this thread only; it makes every socket it opens in `ns`.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let began = Instant::now();
            let syns = SynWatch::start(&netns, flag.clone());
            let mut report = LoadReport {
                name,
                connections: keepalive.then_some(0),
                ..Default::default()
            };
            let mut kept: Vec<Option<KeptConnection>> = targets.iter().map(|_| None).collect();
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                let slot = i % targets.len();
                let target = targets[slot];
                i += 1;
                report.sent += 1;
                let sent_at = Instant::now();
                let result = if keepalive {
                    get_kept(target, &mut kept[slot], &mut report.connections)
                } else {
                    get(target)
                };
                if let Err(e) = result {
                    report.failed += 1;
                    if report.failures.len() < KEPT {
                        report.failures.push(format!(
                            "{:.1} s {target}: {e}; unanswered SYNs in the namespace then: {:?}",
                            began.elapsed().as_secs_f64(),
                            syns.seen_since(sent_at),
                        ));
                    }
                }
                thread::sleep(PACE);
            }
            report
        });
        Self { stop, thread }
    }

    /// Stops sending; what was counted.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("load thread")
    }
}

/// The TCP connections waiting for a SYN-ACK in a namespace, sampled every 50 ms: where
/// a connection that timed out really went (a VIP's connect() is translated at the
/// socket, so the test's own socket only knows the VIP).
struct SynWatch {
    seen: Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
}

impl SynWatch {
    fn start(netns: &std::path::Path, stop: Arc<AtomicBool>) -> Self {
        let seen: Arc<std::sync::Mutex<Vec<(Instant, String)>>> = Arc::default();
        let out = seen.clone();
        let netns = netns.to_owned();
        thread::spawn(move || {
            let Ok(ns) = std::fs::File::open(&netns) else {
                return;
            };
            // SAFETY: setns on this thread only.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0
            {
                return;
            }
            while !stop.load(Ordering::Relaxed) {
                let table =
                    std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default();
                let now = Instant::now();
                let mut seen = out.lock().unwrap();
                for line in table.lines().skip(1) {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if f.get(3) == Some(&"02") {
                        let entry = format!("{} -> {}", hex_addr(f[1]), hex_addr(f[2]));
                        seen.push((now, entry));
                    }
                }
                seen.retain(|(at, _)| now.duration_since(*at) < Duration::from_secs(60));
                drop(seen);
                thread::sleep(Duration::from_millis(50));
            }
        });
        Self { seen }
    }

    /// The distinct unanswered connections sampled since `since`.
    fn seen_since(&self, since: Instant) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (at, e) in self.seen.lock().unwrap().iter() {
            if *at >= since && !out.contains(e) {
                out.push(e.clone());
            }
        }
        out
    }
}

/// `0A14000A:0050` (as /proc/net/tcp prints it) as `10.0.20.10:80`.
fn hex_addr(field: &str) -> String {
    let (ip, port) = field.split_once(':').unwrap_or((field, "0"));
    let ip = u32::from_str_radix(ip, 16).unwrap_or(0);
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    format!("{}:{port}", std::net::Ipv4Addr::from(ip.to_le_bytes()))
}

/// One GET on a new connection; Ok when the web image answered.
fn get(target: SocketAddrV4) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(target), CONNECT_BOUND)
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(ANSWER_BOUND)).ok();
    s.set_write_timeout(Some(ANSWER_BOUND)).ok();
    s.write_all(b"GET / HTTP/1.0\r\nHost: load\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("read after {} bytes: {e}", answer.len()))?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("");
    if status.contains(" 200") && text.contains("host=") {
        Ok(())
    } else {
        Err(format!(
            "answer: {:?}",
            text.chars().take(120).collect::<String>()
        ))
    }
}

/// A kept-alive HTTP/1.1 connection.
struct KeptConnection {
    reader: std::io::BufReader<TcpStream>,
    writer: TcpStream,
}

impl KeptConnection {
    fn open(target: SocketAddrV4) -> Result<Self, String> {
        let s = TcpStream::connect_timeout(&SocketAddr::V4(target), CONNECT_BOUND)
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(ANSWER_BOUND)).ok();
        s.set_write_timeout(Some(ANSWER_BOUND)).ok();
        let writer = s.try_clone().map_err(|e| format!("clone: {e}"))?;
        Ok(Self {
            reader: std::io::BufReader::new(s),
            writer,
        })
    }

    /// One request. On failure: whether the server closed the connection before a
    /// byte of the answer (worth one new connection), and what happened.
    fn request(&mut self) -> Result<(), (bool, String)> {
        use std::io::BufRead;
        // Closed or reset by the server, as opposed to a timeout (which a retry would
        // only hide).
        let closed = |e: &std::io::Error| {
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        };
        self.writer
            .write_all(b"GET / HTTP/1.1\r\nHost: load\r\n\r\n")
            .map_err(|e| (closed(&e), format!("write: {e}")))?;
        let mut head = String::new();
        let mut length: Option<usize> = None;
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).map_err(|e| {
                (
                    head.is_empty() && closed(&e),
                    format!("read after {} bytes: {e}", head.len()),
                )
            })?;
            if n == 0 {
                return Err((
                    head.is_empty(),
                    format!("closed after {} bytes", head.len()),
                ));
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().ok();
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let Some(length) = length else {
            return Err((false, format!("no Content-Length: {head:?}")));
        };
        let mut body = vec![0; length];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| (false, format!("body: {e}")))?;
        let body = String::from_utf8_lossy(&body);
        if head.starts_with("HTTP/1.1 200") && body.contains("host=") {
            Ok(())
        } else {
            Err((false, format!("answer: {head:?} {body:?}")))
        }
    }
}

/// One GET on `kept` (opened if there is none); a connection the server closed before
/// answering a byte is replaced once (see the module's comment).
fn get_kept(
    target: SocketAddrV4,
    kept: &mut Option<KeptConnection>,
    opened: &mut Option<u64>,
) -> Result<(), String> {
    if let Some(c) = kept.as_mut() {
        match c.request() {
            Ok(()) => return Ok(()),
            Err((true, _)) => {}
            Err((false, e)) => {
                *kept = None;
                return Err(format!("on a kept connection: {e}"));
            }
        }
    }
    *kept = None;
    let mut c = KeptConnection::open(target)?;
    *opened.get_or_insert(0) += 1;
    c.request()
        .map_err(|(_, e)| format!("on a new connection: {e}"))?;
    *kept = Some(c);
    Ok(())
}

/// A `wget` loop inside a task's container (busybox there): each request resolves
/// `url`'s host through the container's resolver (the embedded DNS) and connects anew.
/// Counts go to files in the container, read back by [`ShellLoad::stop`].
pub struct ShellLoad<'a> {
    lab: &'a LabGuard,
    task: Task,
    name: String,
    tag: String,
}

impl<'a> ShellLoad<'a> {
    pub fn start(lab: &'a LabGuard, task: &Task, name: &str, url: &str) -> Self {
        let tag = format!(
            "/tmp/load-{}",
            name.replace(|c: char| !c.is_alphanumeric(), "-")
        );
        let script = format!(
            "rm -f {tag}.*; s=0; f=0; \
             while [ ! -e {tag}.stop ]; do \
               if timeout 10 wget -q -O {tag}.body '{url}' && grep -q host= {tag}.body; \
               then s=$((s+1)); \
               else f=$((f+1)); [ $f -le {KEPT} ] && date +%T >> {tag}.failures; fi; \
               echo \"$s $f\" > {tag}.counts; usleep 20000; \
             done; echo done >> {tag}.counts"
        );
        let out = lab.exec(
            &task.node,
            &["docker", "exec", "-d", &task.container, "sh", "-c", &script],
        );
        assert!(
            out.status.success(),
            "{name}: starting the wget loop in {}: {}",
            task.container,
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            lab,
            task: task.clone(),
            name: name.to_owned(),
            tag,
        }
    }

    /// Stops the loop (after its request in flight) and reads its counts.
    pub fn stop(self) -> LoadReport {
        let tag = &self.tag;
        self.lab
            .docker_exec(
                &self.task.node,
                &self.task.container,
                &["touch", &format!("{tag}.stop")],
            )
            .expect("stop the wget loop");
        let counts = crate::wait_for(
            &format!("{}: the wget loop ends", self.name),
            Duration::from_secs(30),
            || {
                let c = self.lab.docker_exec(
                    &self.task.node,
                    &self.task.container,
                    &["cat", &format!("{tag}.counts")],
                )?;
                if c.ends_with("done") {
                    Ok(c)
                } else {
                    Err(c)
                }
            },
        );
        let mut numbers = counts
            .split_whitespace()
            .filter_map(|w| w.parse::<u64>().ok());
        let (ok, failed) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        let failures = self
            .lab
            .docker_exec(
                &self.task.node,
                &self.task.container,
                &["sh", "-c", &format!("cat {tag}.failures 2>/dev/null; true")],
            )
            .unwrap_or_default()
            .lines()
            .map(|l| format!("at {l}"))
            .collect();
        LoadReport {
            name: self.name,
            sent: ok + failed,
            failed,
            failures,
            connections: None,
        }
    }
}

/// Every load of one phase, stopped together.
#[derive(Default)]
pub struct Loads<'a> {
    http: Vec<(String, HttpLoad)>,
    shell: Vec<ShellLoad<'a>>,
}

impl<'a> Loads<'a> {
    pub fn http(&mut self, name: &str, netns: PathBuf, targets: Vec<SocketAddrV4>) {
        self.http
            .push((name.to_owned(), HttpLoad::start(name, netns, targets)));
    }

    pub fn http_keepalive(&mut self, name: &str, netns: PathBuf, targets: Vec<SocketAddrV4>) {
        self.http.push((
            name.to_owned(),
            HttpLoad::start_keepalive(name, netns, targets),
        ));
    }

    pub fn shell(&mut self, lab: &'a LabGuard, task: &Task, name: &str, url: &str) {
        self.shell.push(ShellLoad::start(lab, task, name, url));
    }

    /// Stops every load; prints each one's counts, and panics naming the failures if
    /// any request of `phase` failed (or a load sent nothing).
    pub fn stop_expecting_no_failure(self, phase: &str) -> LoadReport {
        let mut reports: Vec<LoadReport> = self.http.into_iter().map(|(_, l)| l.stop()).collect();
        reports.extend(self.shell.into_iter().map(ShellLoad::stop));
        let mut total = LoadReport {
            name: phase.to_owned(),
            ..Default::default()
        };
        for r in &reports {
            println!("{phase}: {}", r.line());
        }
        for r in &reports {
            assert!(r.sent > 0, "{phase}: {} sent nothing", r.name);
            assert!(
                r.failed == 0,
                "{phase}: {} failed; first failures: {:#?}",
                r.line(),
                r.failures
            );
        }
        for r in reports {
            total.add(r);
        }
        total
    }
}
