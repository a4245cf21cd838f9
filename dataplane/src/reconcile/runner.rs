//! Runs one reconciler on a thread of its own: reconcilers block on netlink and bpf
//! syscalls, and one slow reconcile must not hold the others, the resolver or the
//! agent's cluster work. The thread runs a single-threaded async runtime that waits for
//! the declared state or the present networks to change, or for the reconciler's
//! timer; it then hands the newest values (never a queue of old ones) to the
//! reconciler and writes the status it returns.
use std::{sync::Arc, thread, time::Duration};

use serde::Serialize;
use tokio::sync::oneshot;
use tracing::warn;

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

/// A reconciler as the runner drives it.
pub trait Reconcile: 'static {
    type Status: Serialize;

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

/// Starts the reconciler that `make` builds on the new thread (so what it owns, such as
/// netlink sockets, stays on it), and returns once it is built, or with `make`'s error.
pub async fn spawn<R, F>(
    name: &'static str,
    make: F,
    mut declared: Declared,
    present: Option<Present>,
    mut status: StatusFile,
) -> Result<Running, String>
where
    R: Reconcile,
    F: FnOnce() -> Result<R, String> + Send + 'static,
{
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
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
                if let Some(s) = r.reconcile(d.as_deref(), &p, cue) {
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use tokio::sync::watch;

    use super::*;

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
                move || Ok(Gated { seen: seen_tx, go }),
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
            move || Ok(Recorder(seen_tx)),
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
}
