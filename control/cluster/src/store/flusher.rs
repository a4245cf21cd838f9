//! The Raft log's fsyncs on a thread of their own. Appending entries writes them and
//! returns; the flusher makes them durable and only then tells openraft (its
//! `LogFlushed` callback), so the agent's thread that also answers heartbeats, the API
//! and the gossip never waits on the disk. One thread per log, in order: an fsync
//! covers every write before it, so a flush reported done never leaves an earlier one
//! pending.

use std::fs::File;
use std::io;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use super::latency::LatencyHistogram;

/// What to do once a flush ended (its result).
pub(crate) type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

/// How a file is made durable (`sync_data`; a test puts a slow disk in its place).
pub(crate) type SyncFn = Arc<dyn Fn(&File) -> io::Result<()> + Send + Sync>;

/// Sends flushes to the log's flusher thread; the thread ends when every sender is
/// dropped (with the log).
pub(crate) struct Flusher {
    queue: mpsc::Sender<(File, Done)>,
}

impl Flusher {
    pub(crate) fn start(fsync: Arc<LatencyHistogram>) -> io::Result<Flusher> {
        Self::start_with(fsync, Arc::new(|f: &File| f.sync_data()))
    }

    pub(crate) fn start_with(fsync: Arc<LatencyHistogram>, sync: SyncFn) -> io::Result<Flusher> {
        let (queue, flushes) = mpsc::channel::<(File, Done)>();
        std::thread::Builder::new()
            .name("raft-log-fsync".into())
            .spawn(move || {
                for (file, done) in flushes {
                    let started = Instant::now();
                    let result = sync(&file);
                    fsync.observe(started.elapsed());
                    done(result);
                }
            })?;
        Ok(Flusher { queue })
    }

    /// Makes what was written to `file` durable, then calls `done`; returns at once.
    pub(crate) fn flush(&self, file: File, done: Done) {
        if let Err(mpsc::SendError((_, done))) = self.queue.send((file, done)) {
            done(Err(io::Error::other("the Raft log's flusher has stopped")));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    use super::*;

    /// A disk that holds every fsync until the test opens it.
    struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
    }

    #[test]
    fn a_flush_returns_at_once_and_reports_only_after_the_disk_answers() {
        let gate = Arc::new(Gate {
            open: Mutex::new(false),
            opened: Condvar::new(),
        });
        let g = gate.clone();
        let slow: SyncFn = Arc::new(move |_f: &File| {
            let mut open = g.open.lock().unwrap();
            while !*open {
                open = g.opened.wait(open).unwrap();
            }
            Ok(())
        });
        let latency = Arc::new(LatencyHistogram::default());
        let flusher = Flusher::start_with(latency.clone(), slow).unwrap();
        let path = std::env::temp_dir().join(format!("shoal-flusher-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        for i in 0..3 {
            let tx = tx.clone();
            flusher.flush(
                file.try_clone().unwrap(),
                Box::new(move |r| tx.send((i, r.is_ok())).unwrap()),
            );
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "flush blocked"
        );
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "reported done before the disk answered"
        );
        *gate.open.lock().unwrap() = true;
        gate.opened.notify_all();
        let order: Vec<_> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(order, vec![(0, true), (1, true), (2, true)]);
        assert_eq!(latency.snapshot().count, 3);
        drop(flusher);
        let _ = std::fs::remove_file(path);
    }
}
