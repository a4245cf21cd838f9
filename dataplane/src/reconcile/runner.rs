//! Runs one reconciler on a thread of its own: reconcilers block on netlink and bpf
//! syscalls, and one slow reconcile must not hold the others, the resolver or the
//! agent's cluster work. The thread runs a single-threaded async runtime that waits for
//! the declared state or the present networks to change, or for the reconciler's
//! timer; it then hands the newest values (never a queue of old ones) to the
//! reconciler and writes the status it returns.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;
use shoal_dns::stats::{Histogram, HistogramSnapshot};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::{status::StatusFile, Declared, DeclaredNode, Present, PresentNetwork};

/// Why a reconcile runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cue {
    /// The thread just started.
    Start,
    /// The declared state changed.
    Declared,
    /// The set of networks present on the node changed.
    Present,
    /// The reconciler's own timer (resync, retries).
    Timer,
}

/// What a reconciler's status says went wrong, for the runner's counters.
pub trait Report: Serialize {
    /// Parts of the declared state the reconcile could not apply (0: all of it).
    fn failures(&self) -> usize;
    /// Whether the declared state was refused (the last good one stays applied).
    fn refused(&self) -> bool;
}

/// Upper bounds (seconds) of the reconcile-duration buckets: a map write takes
/// microseconds, a namespace with its bridge and veths tens of milliseconds, a node's
/// whole overlay after a restart seconds.
pub const DURATION_BOUNDS_SECONDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// What the runner counts of one reconciler, read in memory by the agent's metrics.
#[derive(Debug)]
pub struct ReconcileStats {
    /// Every reconcile's duration (its count is the number of reconciles).
    duration: Histogram,
    /// Reconciles whose status named failures.
    failed: AtomicU64,
    /// Reconciles whose status said the declared state was refused.
    refused: AtomicU64,
    /// Times the reconciler panicked and was built again.
    restarts: AtomicU64,
}

/// A copy of [`ReconcileStats`].
#[derive(Clone, Debug, PartialEq)]
pub struct ReconcileStatsSnapshot {
    pub duration: HistogramSnapshot,
    pub failed: u64,
    pub refused: u64,
    pub restarts: u64,
}

impl Default for ReconcileStats {
    fn default() -> Self {
        ReconcileStats {
            duration: Histogram::new(&DURATION_BOUNDS_SECONDS),
            failed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
        }
    }
}

impl ReconcileStats {
    fn record<S: Report>(&self, took: Duration, status: Option<&S>) {
        self.duration.observe(took);
        if let Some(s) = status {
            if s.failures() > 0 {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
            if s.refused() {
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn snapshot(&self) -> ReconcileStatsSnapshot {
        ReconcileStatsSnapshot {
            duration: self.duration.snapshot(),
            failed: self.failed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
        }
    }
}

/// A reconciler as the runner drives it.
pub trait Reconcile: 'static {
    type Status: Report;

    /// Makes the dataplane match `declared` (None: nothing declared yet). Returns the
    /// status to write, or None when there is nothing new to report.
    fn reconcile(
        &mut self,
        declared: Option<&DeclaredNode>,
        present: &[PresentNetwork],
        cue: Cue,
    ) -> Option<Self::Status>;

    /// How often [`Cue::Timer`] comes.
    fn period(&self) -> Duration;
}

/// A running reconciler's thread.
pub struct Running {
    name: &'static str,
    stats: Arc<ReconcileStats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Running {
    /// Stops the thread after its current reconcile. What it applied stays in the
    /// kernel: an agent restart must not cut traffic that works.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                warn!(reconciler = self.name, "the reconciler's thread panicked");
            }
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// What the runner counts of this reconciler.
    pub fn stats(&self) -> Arc<ReconcileStats> {
        self.stats.clone()
    }

    /// False once the thread has ended (it only ends when told to, or by a panic).
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

/// First wait before a reconciler that panicked is built again; doubled on each failed
/// rebuild up to [`RESTART_BACKOFF_MAX`].
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The message a panic carried, for the log.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Starts the reconciler that `make` builds on the new thread (so what it owns, such as
/// netlink sockets, stays on it), and returns once it is built, or with `make`'s error.
///
/// Supervised: a reconcile that panics is logged and counted
/// ([`ReconcileStatsSnapshot::restarts`]), the reconciler dropped and built again by
/// `make` after a backoff (1 s, doubling to 30 s while rebuilding fails), and it starts
/// over from the declared state ([`Cue::Start`]). What it had applied stays in the
/// kernel meanwhile.
pub async fn spawn<R, F>(
    name: &'static str,
    make: F,
    mut declared: Declared,
    present: Option<Present>,
    mut status: StatusFile,
) -> Result<Running, String>
where
    R: Reconcile,
    F: FnMut() -> Result<R, String> + Send + 'static,
{
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let stats = Arc::new(ReconcileStats::default());
    let counted = stats.clone();
    let thread = thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("starting the {name} runtime: {e}")));
                    return;
                }
            };
            // Reconciles run outside `block_on` (some kernels run a runtime of their
            // own for netlink), but inside the runtime's context, so what they spawn
            // (the resolver's loops) runs whenever the thread waits.
            let _context = rt.enter();
            let mut make = make;
            let mut r = match make() {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let mut present = present;
            let mut cue = Cue::Start;
            loop {
                // A declared change that came with another wake-up (the present networks
                // changing at the same moment, the timer) is a declared change all the
                // same: taken below, it would not wake this loop again, so the cue says
                // so (a reconciler may take the declared state on that cue only).
                if cue != Cue::Start && declared.has_changed().unwrap_or(false) {
                    cue = Cue::Declared;
                }
                let d: Option<Arc<DeclaredNode>> = declared.borrow_and_update().clone();
                let p: Arc<Vec<PresentNetwork>> = match &mut present {
                    Some(p) => p.borrow_and_update().clone(),
                    None => Arc::default(),
                };
                let began = Instant::now();
                let reconciled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    r.reconcile(d.as_deref(), &p, cue)
                }));
                let reported = match reconciled {
                    Ok(reported) => reported,
                    Err(payload) => {
                        counted.restarts.fetch_add(1, Ordering::Relaxed);
                        error!(
                            reconciler = name,
                            panic = %panic_text(payload.as_ref()),
                            "a reconcile panicked: building the reconciler again"
                        );
                        match rebuild(name, &rt, &mut make, &mut stop_rx) {
                            Some(fresh) => {
                                // The old one's drop may panic as well: it is gone either way.
                                let old = std::mem::replace(&mut r, fresh);
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                                    move || drop(old),
                                ));
                                cue = Cue::Start;
                                continue;
                            }
                            None => return,
                        }
                    }
                };
                counted.record(began.elapsed(), reported.as_ref());
                if let Some(s) = reported {
                    status.write(&s);
                }
                let period = r.period();
                let next = rt.block_on(async {
                    let present_changed = async {
                        let ok = match &mut present {
                            Some(p) => p.changed().await.is_ok(),
                            None => false,
                        };
                        if !ok {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        _ = &mut stop_rx => None,
                        changed = declared.changed() => match changed {
                            Ok(()) => Some(Cue::Declared),
                            // The pipeline is gone: the agent is stopping.
                            Err(_) => None,
                        },
                        () = present_changed => Some(Cue::Present),
                        () = tokio::time::sleep(period) => Some(Cue::Timer),
                    }
                });
                match next {
                    Some(c) => cue = c,
                    None => return,
                }
            }
        })
        .map_err(|e| format!("starting the {name} thread: {e}"))?;
    match ready_rx.await {
        Ok(Ok(())) => Ok(Running {
            name,
            stats,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(format!("the {name} thread died while starting"))
        }
    }
}

/// Builds a reconciler again with `make`, waiting a backoff before each attempt
/// (doubling while it fails); `None` if the runner is told to stop meanwhile.
fn rebuild<R, F>(
    name: &'static str,
    rt: &tokio::runtime::Runtime,
    make: &mut F,
    stop_rx: &mut oneshot::Receiver<()>,
) -> Option<R>
where
    F: FnMut() -> Result<R, String>,
{
    let mut wait = RESTART_BACKOFF;
    loop {
        let stopped = rt.block_on(async {
            tokio::select! {
                _ = &mut *stop_rx => true,
                () = tokio::time::sleep(wait) => false,
            }
        });
        if stopped {
            return None;
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut *make)) {
            Ok(Ok(r)) => {
                info!(reconciler = name, "reconciler built again after a panic");
                return Some(r);
            }
            Ok(Err(e)) => {
                error!(reconciler = name, error = %e, retry_in = ?wait, "building the reconciler again failed")
            }
            Err(p) => {
                error!(reconciler = name, panic = %panic_text(p.as_ref()), retry_in = ?wait, "building the reconciler again panicked")
            }
        }
        wait = (wait * 2).min(RESTART_BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use tokio::sync::watch;

    use super::*;

    impl Report for serde_json::Value {
        fn failures(&self) -> usize {
            self["failed"].as_u64().unwrap_or(0) as usize
        }
        fn refused(&self) -> bool {
            !self["refused"].is_null()
        }
    }

    struct Recorder(mpsc::Sender<(Cue, Option<usize>)>);

    impl Reconcile for Recorder {
        type Status = serde_json::Value;
        fn reconcile(
            &mut self,
            declared: Option<&DeclaredNode>,
            _present: &[PresentNetwork],
            cue: Cue,
        ) -> Option<serde_json::Value> {
            let endpoints = declared.map(|d| d.overlay.local_endpoints.len());
            // Kernels run runtimes of their own for netlink: that must work here.
            let own = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            own.block_on(async {});
            // And what a reconciler spawns runs on the thread's runtime.
            drop(tokio::spawn(async {}));
            let _ = self.0.send((cue, endpoints));
            Some(serde_json::json!({"endpoints": endpoints}))
        }
        fn period(&self) -> Duration {
            Duration::from_secs(3600)
        }
    }

    /// Records like [`Recorder`], and holds its first reconcile until told to go.
    struct Gated {
        seen: mpsc::Sender<(Cue, Option<usize>)>,
        go: mpsc::Receiver<()>,
    }

    impl Reconcile for Gated {
        type Status = serde_json::Value;
        fn reconcile(
            &mut self,
            declared: Option<&DeclaredNode>,
            _present: &[PresentNetwork],
            cue: Cue,
        ) -> Option<serde_json::Value> {
            let endpoints = declared.map(|d| d.overlay.local_endpoints.len());
            let _ = self.seen.send((cue, endpoints));
            if cue == Cue::Start {
                let _ = self.go.recv();
            }
            None
        }
        fn period(&self) -> Duration {
            Duration::from_secs(3600)
        }
    }

    fn one_endpoint() -> DeclaredNode {
        let mut node = DeclaredNode::default();
        node.overlay
            .local_endpoints
            .push(crate::overlay::state::LocalEndpoint {
                network: "web".into(),
                container: "a".into(),
                ip: "10.0.9.2".parse().unwrap(),
                mac: None,
            });
        node
    }

    #[tokio::test]
    async fn a_declared_change_that_comes_with_a_present_change_is_cued_as_declared() {
        let dir = std::env::temp_dir().join(format!("shoal-runner-both-{}", std::process::id()));
        // Both wake-ups ready at once: the loop picks either. Several runs, so that a
        // cue taken from the wrong one would show.
        for _ in 0..8 {
            let (tx, rx) = watch::channel(None);
            let (present_tx, present_rx) = watch::channel(Arc::new(Vec::new()));
            let (seen_tx, seen) = mpsc::channel();
            let (go_tx, go) = mpsc::channel();
            let running = spawn(
                "test",
                {
                    let mut parts = Some((seen_tx, go));
                    move || {
                        let (seen, go) = parts.take().ok_or("built once only")?;
                        Ok(Gated { seen, go })
                    }
                },
                rx,
                Some(present_rx),
                StatusFile::new(&dir, "test"),
            )
            .await
            .unwrap();
            // The first reconcile has taken both values and waits: change both.
            let seen = tokio::task::spawn_blocking(move || {
                let start = seen.recv_timeout(Duration::from_secs(10)).unwrap();
                (seen, start)
            });
            let (seen, start) = seen.await.unwrap();
            assert_eq!(start, (Cue::Start, None));
            present_tx.send(Arc::new(Vec::new())).unwrap();
            tx.send(Some(Arc::new(one_endpoint()))).unwrap();
            go_tx.send(()).unwrap();
            let got =
                tokio::task::spawn_blocking(move || seen.recv_timeout(Duration::from_secs(10)))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!(got, (Cue::Declared, Some(1)));
            running.stop();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_change_reaches_the_reconciler_at_once_and_its_status_is_written() {
        let dir = std::env::temp_dir().join(format!("shoal-runner-{}", std::process::id()));
        let (tx, rx) = watch::channel(None);
        let (seen_tx, seen) = mpsc::channel();
        let running = spawn(
            "test",
            move || Ok(Recorder(seen_tx.clone())),
            rx,
            None,
            StatusFile::new(&dir, "test"),
        )
        .await
        .unwrap();
        assert_eq!(seen.recv().unwrap(), (Cue::Start, None));
        let mut node = DeclaredNode::default();
        node.overlay
            .local_endpoints
            .push(crate::overlay::state::LocalEndpoint {
                network: "web".into(),
                container: "a".into(),
                ip: "10.0.9.2".parse().unwrap(),
                mac: None,
            });
        let sent = std::time::Instant::now();
        tx.send(Some(Arc::new(node))).unwrap();
        let got = tokio::task::spawn_blocking(move || seen.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, (Cue::Declared, Some(1)));
        assert!(sent.elapsed() < Duration::from_secs(5));
        running.stop();
        let status: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("test.json")).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(status["endpoints"], 1);
        assert_eq!(status["generation"], 2);
    }

    /// Panics on its first reconcile; its builds are counted.
    struct Fragile {
        seen: mpsc::Sender<(usize, Cue)>,
        build: usize,
    }

    impl Reconcile for Fragile {
        type Status = serde_json::Value;
        fn reconcile(
            &mut self,
            _declared: Option<&DeclaredNode>,
            _present: &[PresentNetwork],
            cue: Cue,
        ) -> Option<serde_json::Value> {
            assert!(self.build > 1, "the first build's first reconcile fails");
            let _ = self.seen.send((self.build, cue));
            None
        }
        fn period(&self) -> Duration {
            Duration::from_secs(3600)
        }
    }

    #[tokio::test]
    async fn a_reconciler_that_panics_is_built_again_and_starts_over() {
        let dir = std::env::temp_dir().join(format!("shoal-runner-panic-{}", std::process::id()));
        let (_tx, rx) = watch::channel(None);
        let (seen_tx, seen) = mpsc::channel();
        let mut builds = 0;
        let running = spawn(
            "fragile",
            move || {
                builds += 1;
                Ok(Fragile {
                    seen: seen_tx.clone(),
                    build: builds,
                })
            },
            rx,
            None,
            StatusFile::new(&dir, "fragile"),
        )
        .await
        .unwrap();
        let got = tokio::task::spawn_blocking(move || seen.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("the reconciler was not built again");
        assert_eq!(got, (2, Cue::Start));
        assert_eq!(running.stats().snapshot().restarts, 1);
        assert!(running.is_alive());
        running.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
