//! One dockerd event watch for the whole agent, shared: the executor (task states) and
//! the declared-state pipeline (which containers run, in which namespace) both follow
//! it, so dockerd is asked for one event stream, not one per part.
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tokio::sync::{broadcast, watch};
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

/// Whether the agent reaches its dockerd, as the event watch last found (for `shoal
/// info`: an agent started without dockerd, or that lost it, says so and goes on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineLink {
    /// Not tried yet.
    Starting,
    /// Subscribed to its events.
    Up,
    /// Unreachable since `since` (the first failure in a row), with the last error.
    Down { since: SystemTime, error: String },
}

impl EngineLink {
    /// The link after `update`.
    fn after(&self, update: &WatchUpdate) -> Option<Self> {
        match update {
            WatchUpdate::Subscribed => Some(Self::Up),
            WatchUpdate::Event(_) => None,
            WatchUpdate::Lost(e) => Some(Self::Down {
                since: match self {
                    Self::Down { since, .. } => *since,
                    _ => SystemTime::now(),
                },
                error: e.to_string(),
            }),
        }
    }
}

/// The agent's dockerd event watch. Dropping every handle stops it.
#[derive(Clone, Debug)]
pub struct DockerEvents {
    tx: broadcast::Sender<Watched>,
    link: Option<watch::Receiver<EngineLink>>,
}

impl DockerEvents {
    /// Starts watching `docker` on the current runtime.
    pub fn start(docker: &DockerClient) -> Self {
        let (tx, _) = broadcast::channel(BACKLOG);
        let weak = tx.downgrade();
        let mut stream = docker.watch_reconnecting(RETRY);
        let (link_tx, link) = watch::channel(EngineLink::Starting);
        tokio::spawn(async move {
            while let Some(update) = stream.next().await {
                let Some(tx) = weak.upgrade() else { return };
                let next = link_tx.borrow().after(&update);
                if let Some(next) = next {
                    link_tx.send_replace(next);
                }
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
        Self {
            tx,
            link: Some(link),
        }
    }

    /// A handle that never yields (tests and nodes without dockerd).
    pub fn none() -> Self {
        Self {
            tx: broadcast::channel(1).0,
            link: None,
        }
    }

    /// Whether dockerd is reached now; None for [`none`](Self::none).
    pub fn link(&self) -> Option<EngineLink> {
        self.link.as_ref().map(|l| l.borrow().clone())
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::docker::DockerError;

    fn lost() -> WatchUpdate {
        WatchUpdate::Lost(DockerError::EventsEnded {
            socket: PathBuf::from("/run/docker.sock"),
        })
    }

    #[test]
    fn engine_link_keeps_the_first_failure_of_a_run() {
        let down = EngineLink::Starting.after(&lost()).expect("down");
        let EngineLink::Down { since, ref error } = down else {
            panic!("{down:?}")
        };
        assert!(error.contains("/run/docker.sock"), "{error}");
        // A second failure in a row keeps when it started.
        let again = down.after(&lost()).expect("still down");
        assert!(matches!(again, EngineLink::Down { since: s, .. } if s == since));
        // Events change nothing; a subscription is up again.
        assert_eq!(again.after(&WatchUpdate::Subscribed), Some(EngineLink::Up));
        assert_eq!(
            EngineLink::Up.after(&WatchUpdate::Subscribed),
            Some(EngineLink::Up)
        );
    }
}
