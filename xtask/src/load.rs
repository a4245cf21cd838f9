//! HTTP load generators for the labs that prove "no failed request" (lab tests and
//! `cargo xtask chaos`): GETs on a new connection each or on one kept-alive connection
//! per target, paced, counted, from inside a chosen network namespace (the lab client's
//! or a task container's); and the shell loop that does the same from inside a container
//! (busybox `wget` there, bounded by `timeout`: its own `-T` crashes; it resolves the
//! service's name through the embedded DNS each time).
//!
//! A request fails when the connection is refused or times out, the request cannot be
//! written, the answer does not come within [`ANSWER_BOUND`], or it is not a `200` with
//! the lab web image's `host=` line. Nothing is retried: a retry would hide exactly the
//! failures these loads look for.
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

/// How long a connection may take to be accepted.
pub const CONNECT_BOUND: Duration = Duration::from_secs(3);
/// How long a whole answer may take (the web image answers from a CGI script).
pub const ANSWER_BOUND: Duration = Duration::from_secs(10);
/// Pause between two requests of one generator: steady load without starving a
/// 2-core machine of the CPU the agents need.
pub const PACE: Duration = Duration::from_millis(20);
/// Failures kept (with what was seen) for the report.
pub const KEPT: usize = 8;

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
    /// When every failed request was sent (HTTP loads; the shell loop keeps none).
    pub failed_at: Vec<Instant>,
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

    /// Adds `other`'s counts (and its first failures, up to [`KEPT`]) to these.
    pub fn add(&mut self, other: LoadReport) {
        self.sent += other.sent;
        self.failed += other.failed;
        self.failed_at.extend(other.failed_at);
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
        Self::spawn(name, netns, targets, false, PACE)
    }

    /// [`HttpLoad::start`] with one kept-alive connection per target.
    pub fn start_keepalive(name: &str, netns: PathBuf, targets: Vec<SocketAddrV4>) -> Self {
        Self::spawn(name, netns, targets, true, PACE)
    }

    /// A load with `pace` between two requests, on new connections or kept-alive ones.
    pub fn spawn(
        name: &str,
        netns: PathBuf,
        targets: Vec<SocketAddrV4>,
        keepalive: bool,
        pace: Duration,
    ) -> Self {
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
                    report.failed_at.push(sent_at);
                    if report.failures.len() < KEPT {
                        report.failures.push(format!(
                            "{:.1} s (sent at {} UTC) {target}: {e}; unanswered SYNs in the namespace then: {:?}",
                            began.elapsed().as_secs_f64(),
                            utc_clock(std::time::SystemTime::now() - sent_at.elapsed()),
                            syns.seen_since(sent_at),
                        ));
                    }
                }
                thread::sleep(pace);
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

/// `at` as the agents' logs print it (HH:MM:SS.mmm, UTC), to find a failure there.
fn utc_clock(at: std::time::SystemTime) -> String {
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
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

/// The shell script of a `wget` loop inside a container: GETs of `url` until the file
/// `{tag}.stop` exists, each resolving `url`'s host anew; `{tag}.counts` holds
/// "answered failed" (then "done" once stopped), `{tag}.failures` the times of the first
/// [`KEPT`] failures (wall clock, `HH:MM:SS`), or with `every_failure` the time of each
/// failed request in seconds since the epoch, when it was sent and when it failed (to
/// tell which failures fell in a fault's window), each followed by what failed.
/// `pause` goes between two requests.
pub fn wget_loop_script(tag: &str, url: &str, every_failure: bool, pause: Duration) -> String {
    let pause_us = pause.as_micros();
    // What failed goes after the time: wget's own message (a name not resolved, a
    // connection refused or timed out) or what the body lacked.
    let what = format!("$(head -c 200 {tag}.err | tr '\\n' ' ')");
    // With `every_failure`, when the request was sent comes first (its DNS lookup may
    // have waited seconds before it failed), then when it failed.
    let record = if every_failure {
        format!("echo \"$t0 $(date +%s) {what}\" >> {tag}.failures")
    } else {
        format!("[ $f -le {KEPT} ] && echo \"$(date +%T) {what}\" >> {tag}.failures")
    };
    let sent = if every_failure {
        "t0=$(date +%s); "
    } else {
        ""
    };
    format!(
        "rm -f {tag}.*; s=0; f=0; \
         while [ ! -e {tag}.stop ]; do \
           {sent}if timeout 10 wget -q -O {tag}.body '{url}' 2>{tag}.err \
              || {{ echo \"exit $?\" >> {tag}.err; false; }}; \
           then grep -q host= {tag}.body || echo 'no host= in the body' > {tag}.err; fi; \
           if [ ! -s {tag}.err ]; \
           then s=$((s+1)); \
           else f=$((f+1)); {record}; fi; \
           echo \"$s $f\" > {tag}.counts; usleep {pause_us}; \
         done; echo done >> {tag}.counts"
    )
}

/// The (answered, failed) counts in a `{tag}.counts` file of [`wget_loop_script`], and
/// whether the loop has ended.
pub fn wget_loop_counts(text: &str) -> (u64, u64, bool) {
    let mut numbers = text
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    let (ok, failed) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (ok, failed, text.trim_end().ends_with("done"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{utc_clock, wget_loop_counts, wget_loop_script};

    #[test]
    fn a_failure_time_reads_as_the_logs_print_it() {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(1_796_694_438_123);
        assert_eq!(utc_clock(at), "01:47:18.123");
    }

    #[test]
    fn the_wget_loop_counts_are_read_back() {
        assert_eq!(wget_loop_counts("12 3"), (12, 3, false));
        assert_eq!(wget_loop_counts("12 3\ndone\n"), (12, 3, true));
        assert_eq!(wget_loop_counts(""), (0, 0, false));
        let every = wget_loop_script("/tmp/x", "http://back/", true, Duration::from_millis(100));
        assert!(
            every.contains("$t0 $(date +%s) $(head -c 200 /tmp/x.err"),
            "{every}"
        );
        assert!(every.contains("usleep 100000;"), "{every}");
        let first = wget_loop_script("/tmp/x", "http://back/", false, Duration::from_millis(20));
        assert!(first.contains("$(date +%T) $(head"), "{first}");
    }
}
