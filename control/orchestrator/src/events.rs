//! One dockerd event watch for the whole agent, shared: the executor (task states) and
//! the declared-state pipeline (which containers run, in which namespace) both follow
//! it, so dockerd is asked for one event stream, not one per part.
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::docker::{ContainerEvent, DockerClient, WatchUpdate};

/// How long the watch waits before subscribing again after losing dockerd.
const RETRY: Duration = Duration::from_secs(2);
/// Events a slow subscriber may fall behind by before it is told it lagged (it then
/// re-reads what it follows, as after a reconnection).
const BACKLOG: usize = 1024;

/// A [`WatchUpdate`] for many subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watched {
    /// (Re)subscribed, or this subscriber lagged: events may have been missed, re-read
    /// the state of every container of interest.
    Subscribed,
    Event(ContainerEvent),
    /// The subscription broke; the watch tries again.
    Lost(String),
}

/// The agent's dockerd event watch. Dropping every handle stops it.
#[derive(Clone, Debug)]
pub struct DockerEvents {
    tx: broadcast::Sender<Watched>,
}

impl DockerEvents {
    /// Starts watching `docker` on the current runtime.
    pub fn start(docker: &DockerClient) -> Self {
        let (tx, _) = broadcast::channel(BACKLOG);
        let weak = tx.downgrade();
        let mut stream = docker.watch_reconnecting(RETRY);
        tokio::spawn(async move {
            while let Some(update) = stream.next().await {
                let Some(tx) = weak.upgrade() else { return };
                let item = match update {
                    WatchUpdate::Subscribed => Watched::Subscribed,
                    WatchUpdate::Event(e) => Watched::Event(e),
                    WatchUpdate::Lost(e) => {
                        warn!(error = %e, "lost dockerd's events; retrying");
                        Watched::Lost(e.to_string())
                    }
                };
                // No subscriber yet is fine: whoever subscribes later reads the state first.
                let _ = tx.send(item);
            }
        });
        Self { tx }
    }

    /// A handle that never yields (tests and nodes without dockerd).
    pub fn none() -> Self {
        Self {
            tx: broadcast::channel(1).0,
        }
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
        }
    }
}

/// One subscriber's view of the events.
pub struct Subscription {
    rx: broadcast::Receiver<Watched>,
}

impl Subscription {
    /// The next update; never returns once the watch is gone.
    pub async fn next(&mut self) -> Watched {
        match self.rx.recv().await {
            Ok(w) => w,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                debug!(missed = n, "dockerd events came faster than they were read");
                Watched::Subscribed
            }
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }

    /// Whatever else is queued now, without waiting (a burst makes one pass).
    pub fn drain(&mut self) -> Vec<Watched> {
        let mut out = Vec::new();
        loop {
            match self.rx.try_recv() {
                Ok(w) => out.push(w),
                Err(broadcast::error::TryRecvError::Lagged(_)) => out.push(Watched::Subscribed),
                Err(_) => return out,
            }
        }
    }
}
