//! The agent's Docker side: the node's dockerd, over its unix socket.
//!
//! - [`DockerClient::connect`] opens a client on a socket path and negotiates the API
//!   version (the nodes run dockerd 20.10, API 1.41).
//! - [`DockerClient::container_netns`] finds a running container's network namespace as
//!   the agent sees it: `/proc/<pid>/ns/net` of the container's main process, that
//!   file's inode, and the namespace's never-reused ID where the kernel has one. The
//!   agent runs in the host's namespaces and shares its `/proc`, so the path works from
//!   there; the container's `SandboxKey` would not (it exists only in dockerd's mount
//!   namespace).
//! - [`DockerClient::watch`] streams container lifecycle events. A restarted container
//!   has a new process and a new network namespace, so the agent plumbs it again on
//!   every [`ContainerAction::Start`] (not only when the inode changed: the kernel
//!   reuses inode numbers of freed namespaces, and a restart often gets the old one) and
//!   detaches it on [`ContainerAction::Die`].
//!   [`DockerClient::watch_reconnecting`] does the same across dockerd going away and
//!   coming back.
//!
//! Every error is a [`DockerError`] naming the socket or the container.
use std::{
    collections::HashMap,
    fmt,
    fs::File,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bollard::{
    errors::Error as BollardError, models::EventMessage, query_parameters::EventsOptions, Docker,
    API_DEFAULT_VERSION,
};
use futures::{
    stream::{self, BoxStream},
    Stream, StreamExt,
};
use shoal_dataplane::overlay::netns;

/// How long one request may wait for dockerd's answer (the event stream is exempt: the
/// limit covers only its response headers).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong talking to dockerd. Each message is one line naming the socket or
/// the container.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The socket path cannot be handed to the client library (it is not UTF-8).
    #[error("docker socket path {} is not valid UTF-8", socket.display())]
    SocketPath { socket: PathBuf },
    /// The socket is missing, or dockerd there did not answer the version check.
    #[error("connecting to dockerd at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        source: BollardError,
    },
    /// A request to dockerd failed.
    #[error("dockerd at {}: {what}: {source}", socket.display())]
    Api {
        socket: PathBuf,
        what: String,
        source: BollardError,
    },
    /// dockerd answered without a field that every dockerd sends.
    #[error("dockerd at {}: {what}: the answer has no {field}", socket.display())]
    Incomplete {
        socket: PathBuf,
        what: String,
        field: &'static str,
    },
    /// A container reference that is neither a Docker name nor an ID (prefix).
    #[error("{reference:?} is not a container name or ID (use [a-zA-Z0-9][a-zA-Z0-9_.-]*)")]
    BadReference { reference: String },
    /// The container's network namespace file exists but cannot be read.
    #[error("container {container} (pid {pid}): reading {}: {source}", path.display())]
    Netns {
        container: String,
        pid: u32,
        path: PathBuf,
        source: io::Error,
    },
    /// The namespace [`ContainerNetns::open`] was asked for is gone: the container's
    /// process ended (or its PID now belongs to another namespace).
    #[error("container {container} (pid {pid}): its network namespace is gone")]
    NetnsGone { container: String, pid: u32 },
    /// The event stream broke (dockerd went away, or sent something unreadable).
    #[error("dockerd at {}: event stream failed: {source}", socket.display())]
    Events {
        socket: PathBuf,
        source: BollardError,
    },
    /// dockerd closed the event stream (it is shutting down).
    #[error("dockerd at {}: event stream ended (dockerd went away)", socket.display())]
    EventsEnded { socket: PathBuf },
}

/// A running container's network namespace, as seen from the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerNetns {
    /// Full container ID (64 hex digits).
    pub id: String,
    /// Container name, without Docker's leading `/`.
    pub name: String,
    /// PID of the container's main process, in the host's PID namespace.
    pub pid: u32,
    /// `/proc/<pid>/ns/net`.
    pub netns_path: PathBuf,
    /// Inode of `netns_path`. It identifies the namespace only while the namespace
    /// exists: the kernel hands a freed namespace's inode number to a later one, and a
    /// `docker restart` often gives the new namespace the old one's inode. Compare
    /// inodes only while holding the old namespace open ([`ContainerNetns::open`]), or
    /// compare [`netns_id`](Self::netns_id).
    pub netns_inode: u64,
    /// The namespace's identity ([`netns::identity_of`]): its `NS_GET_ID` ID, never
    /// reused while the machine runs, where the kernel has it; its inode otherwise.
    pub netns_id: u64,
}

impl ContainerNetns {
    /// Opens the namespace (for `setns` or netlink in it) and checks it is still the one
    /// described: same inode and, where the kernel has it, same ID. An open namespace
    /// stays alive, and keeps its inode, until the file is closed.
    pub fn open(&self) -> Result<File, DockerError> {
        let gone = || DockerError::NetnsGone {
            container: self.id.clone(),
            pid: self.pid,
        };
        let (file, inode, id) = match open_netns(&self.netns_path) {
            Ok(found) => found,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(gone()),
            Err(source) => {
                return Err(DockerError::Netns {
                    container: self.id.clone(),
                    pid: self.pid,
                    path: self.netns_path.clone(),
                    source,
                })
            }
        };
        if inode != self.netns_inode || id != self.netns_id {
            return Err(gone());
        }
        Ok(file)
    }
}

/// Opens a namespace file; returns it with its inode and identity.
fn open_netns(path: &Path) -> io::Result<(File, u64, u64)> {
    let file = File::open(path)?;
    let inode = file.metadata()?.ino();
    let id = netns::identity_of(&file)?;
    Ok((file, inode, id))
}

/// Container lifecycle events the agent acts on, in the order dockerd emits them: a
/// `docker stop` gives `Kill`, `Die`, `Stop`; a `docker restart` gives `Kill`, `Die`,
/// `Stop`, `Start`, `Restart`; a restart by restart policy gives `Die` then `Start`.
/// `Start` means a new process and network namespace (plumb); `Die` means the process
/// is gone (detach); `Destroy` means the container is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContainerAction {
    Start,
    Restart,
    Kill,
    Die,
    Stop,
    Destroy,
}

impl ContainerAction {
    /// Every action [`DockerClient::watch`] reports.
    pub const ALL: [Self; 6] = [
        Self::Start,
        Self::Restart,
        Self::Kill,
        Self::Die,
        Self::Stop,
        Self::Destroy,
    ];

    /// Docker's name of the action (`"start"`, `"die"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Restart => "restart",
            Self::Kill => "kill",
            Self::Die => "die",
            Self::Stop => "stop",
            Self::Destroy => "destroy",
        }
    }

    /// The action for Docker's action string, or None for one not watched. Docker
    /// appends details to some actions after a colon (`"exec_start: sh"`); they are
    /// ignored.
    pub fn from_docker(action: &str) -> Option<Self> {
        let name = action.split(':').next().unwrap_or_default().trim();
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl fmt::Display for ContainerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One container event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    /// Full container ID.
    pub id: String,
    /// Container name at the time of the event (without a leading `/`); empty if
    /// dockerd did not say.
    pub name: String,
    pub action: ContainerAction,
}

/// What [`DockerClient::watch_reconnecting`] yields.
#[derive(Debug)]
pub enum WatchUpdate {
    /// A subscription was (re)made. Events from now on are delivered, but events while
    /// there was none may be lost (a restarted dockerd keeps no history): re-read the
    /// state of every container of interest ([`DockerClient::container_netns`]).
    Subscribed,
    /// A container event.
    Event(ContainerEvent),
    /// The subscription broke or could not be made; the watcher tries again after its
    /// retry delay, and says `Subscribed` once it succeeds.
    Lost(DockerError),
}

/// A client of one dockerd. Cheap to clone (clones share the connection settings; each
/// request opens its own connection, so a restarted dockerd on the same socket is found
/// again without reconnecting).
#[derive(Clone)]
pub struct DockerClient {
    docker: Docker,
    socket: PathBuf,
}

impl fmt::Debug for DockerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerClient")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl DockerClient {
    /// Connects to the dockerd listening on unix socket `socket` (a path, optionally
    /// written `unix:///path`) and negotiates the API version. Each request may take up
    /// to [`DEFAULT_TIMEOUT`].
    pub async fn connect(socket: &Path) -> Result<Self, DockerError> {
        Self::connect_with_timeout(socket, DEFAULT_TIMEOUT).await
    }

    /// [`connect`](Self::connect) with a per-request timeout (whole seconds, at least 1).
    pub async fn connect_with_timeout(
        socket: &Path,
        timeout: Duration,
    ) -> Result<Self, DockerError> {
        let client = Self::unreached(socket, timeout)?;
        client
            .docker
            .clone()
            .negotiate_version()
            .await
            .map_err(|source| DockerError::Connect {
                socket: client.socket.clone(),
                source,
            })?;
        Ok(client)
    }

    /// A client of the dockerd that will listen on `socket`, made without reaching it
    /// (the agent starts while dockerd is down). Requests use this client's newest API
    /// version until [`negotiate`](Self::negotiate) succeeds; the event watch
    /// negotiates every time it subscribes, so a dockerd that comes later is found.
    pub fn unreached(socket: &Path, timeout: Duration) -> Result<Self, DockerError> {
        let path = socket.to_str().ok_or_else(|| DockerError::SocketPath {
            socket: socket.to_owned(),
        })?;
        let socket = PathBuf::from(path.strip_prefix("unix://").unwrap_or(path));
        let docker = Docker::connect_with_unix(
            &socket.to_string_lossy(),
            timeout.as_secs().max(1),
            API_DEFAULT_VERSION,
        )
        .map_err(|source| DockerError::Connect {
            socket: socket.clone(),
            source,
        })?;
        Ok(Self { docker, socket })
    }

    /// Asks dockerd for its API version and lowers this client's (and every clone's:
    /// they share it) to it when older. Also the proof that dockerd answers.
    pub async fn negotiate(&self) -> Result<(), DockerError> {
        self.docker
            .clone()
            .negotiate_version()
            .await
            .map(drop)
            .map_err(|e| self.api("negotiating the API version".into(), e))
    }

    /// The underlying bollard client (the task executor creates, starts and removes
    /// containers through it).
    pub fn engine(&self) -> &Docker {
        &self.docker
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The engine's version, e.g. `"20.10.24+dfsg1"`.
    pub async fn engine_version(&self) -> Result<String, DockerError> {
        const WHAT: &str = "reading the engine version";
        let version = self
            .docker
            .version()
            .await
            .map_err(|e| self.api(WHAT.into(), e))?;
        version.version.ok_or_else(|| DockerError::Incomplete {
            socket: self.socket.clone(),
            what: WHAT.into(),
            field: "Version",
        })
    }

    /// The engine's capacity: its CPUs in NanoCPUs and its memory in bytes (`/info`'s
    /// `NCPU` and `MemTotal`).
    pub async fn capacity(&self) -> Result<(i64, i64), DockerError> {
        const WHAT: &str = "reading the engine's CPUs and memory";
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| self.api(WHAT.into(), e))?;
        let incomplete = |field| DockerError::Incomplete {
            socket: self.socket.clone(),
            what: WHAT.into(),
            field,
        };
        let cpus = info.ncpu.ok_or_else(|| incomplete("NCPU"))?;
        let memory = info.mem_total.ok_or_else(|| incomplete("MemTotal"))?;
        Ok((cpus.saturating_mul(1_000_000_000), memory))
    }

    /// The network namespace of a running container, found by full ID, unique ID prefix
    /// or name (what `docker inspect` accepts). None if there is no such container or it
    /// is not running. An ID prefix that fits several containers is an
    /// [`DockerError::Api`] error.
    ///
    /// The answer is a snapshot: if the container stops right after, the namespace goes
    /// away; the watch stream's `Die` says so.
    pub async fn container_netns(
        &self,
        container: &str,
    ) -> Result<Option<ContainerNetns>, DockerError> {
        check_reference(container)?;
        // `/name` is how Docker writes names, but `/containers//name/json` is not a path
        // dockerd serves.
        let reference = container.strip_prefix('/').unwrap_or(container);
        let info = match self.docker.inspect_container(reference, None).await {
            Ok(info) => info,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(self.api(format!("inspecting container {container}"), e)),
        };
        let state = info.state.unwrap_or_default();
        let pid = match state.pid.map(u32::try_from) {
            Some(Ok(pid)) if pid > 0 && state.running == Some(true) => pid,
            _ => return Ok(None),
        };
        let id = info.id.ok_or_else(|| DockerError::Incomplete {
            socket: self.socket.clone(),
            what: format!("inspecting container {container}"),
            field: "Id",
        })?;
        let name = info
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned();
        let netns_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let (netns_inode, netns_id) = match open_netns(&netns_path) {
            Ok((_file, inode, id)) => (inode, id),
            // The process ended between the inspect and now: the container stopped.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(DockerError::Netns {
                    container: container.to_owned(),
                    pid,
                    path: netns_path,
                    source,
                })
            }
        };
        Ok(Some(ContainerNetns {
            id,
            name,
            pid,
            netns_path,
            netns_inode,
            netns_id,
        }))
    }

    /// Container events from the moment of this call on: every [`ContainerAction`],
    /// of every container of this dockerd.
    ///
    /// The subscription is made on the stream's first poll, but asks dockerd to replay
    /// from the time of this call, so events in between are not lost; a caller can call
    /// `watch`, read the state of its containers, then consume events.
    ///
    /// The stream ends when the subscription breaks, always with an error as its last
    /// item ([`DockerError::Events`] or [`DockerError::EventsEnded`], e.g. when dockerd
    /// stops). To carry on, call `watch` again once dockerd is back and re-read the
    /// containers' state, or use [`watch_reconnecting`](Self::watch_reconnecting),
    /// which does both.
    pub fn watch(
        &self,
    ) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + Unpin + 'static {
        self.watch_since(SystemTime::now())
    }

    /// [`watch`](Self::watch), replaying the events dockerd still holds (it keeps the
    /// last few hundred in memory) from `since` on.
    pub fn watch_since(
        &self,
        since: SystemTime,
    ) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + Unpin + 'static {
        self.event_stream(since)
    }

    /// Container events forever, across dockerd going away and coming back. Yields
    /// [`WatchUpdate::Subscribed`] first and after every reconnection (re-read the
    /// containers' state then), [`WatchUpdate::Event`]s, and
    /// [`WatchUpdate::Lost`] when the subscription breaks and on every failed attempt
    /// to make it again, which happen every `retry`. Never ends; drop it to stop.
    pub fn watch_reconnecting(
        &self,
        retry: Duration,
    ) -> impl Stream<Item = WatchUpdate> + Send + Unpin + 'static {
        enum Phase {
            Subscribe { since: SystemTime },
            Streaming(BoxStream<'static, Result<ContainerEvent, DockerError>>),
            Retry { since: SystemTime },
        }
        let client = self.clone();
        let start = Phase::Subscribe {
            since: SystemTime::now(),
        };
        stream::unfold(start, move |mut phase| {
            let client = client.clone();
            async move {
                loop {
                    phase = match phase {
                        Phase::Retry { since } => {
                            tokio::time::sleep(retry).await;
                            Phase::Subscribe { since }
                        }
                        Phase::Subscribe { since } => {
                            // Negotiating, not just pinging: a dockerd first met here
                            // (the agent started without it) or replaced by an older
                            // one gets requests in its own API version.
                            return Some(match client.negotiate().await {
                                Ok(()) => (
                                    WatchUpdate::Subscribed,
                                    Phase::Streaming(client.event_stream(since)),
                                ),
                                Err(e) => (WatchUpdate::Lost(e), Phase::Retry { since }),
                            });
                        }
                        Phase::Streaming(mut events) => {
                            return Some(match events.next().await {
                                Some(Ok(event)) => {
                                    (WatchUpdate::Event(event), Phase::Streaming(events))
                                }
                                Some(Err(e)) => (
                                    WatchUpdate::Lost(e),
                                    Phase::Retry {
                                        since: SystemTime::now(),
                                    },
                                ),
                                None => (
                                    WatchUpdate::Lost(DockerError::EventsEnded {
                                        socket: client.socket.clone(),
                                    }),
                                    Phase::Retry {
                                        since: SystemTime::now(),
                                    },
                                ),
                            });
                        }
                    }
                }
            }
        })
        .boxed()
    }

    fn event_stream(
        &self,
        since: SystemTime,
    ) -> BoxStream<'static, Result<ContainerEvent, DockerError>> {
        let filters: HashMap<String, Vec<String>> = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "event".to_owned(),
                ContainerAction::ALL
                    .iter()
                    .map(|a| a.as_str().to_owned())
                    .collect(),
            ),
        ]);
        let since = since.duration_since(UNIX_EPOCH).unwrap_or_default();
        let options = EventsOptions {
            since: Some(format!("{}.{:09}", since.as_secs(), since.subsec_nanos())),
            until: None,
            filters: Some(filters),
        };
        let events = Box::pin(self.docker.events(Some(options)));
        let socket = self.socket.clone();
        // Some(events) while the subscription lives; None once its last item, an error,
        // has been yielded.
        stream::unfold(Some(events), move |events| {
            let socket = socket.clone();
            async move {
                let mut events = events?;
                loop {
                    match events.next().await {
                        Some(Ok(message)) => {
                            if let Some(event) = container_event(message) {
                                return Some((Ok(event), Some(events)));
                            }
                        }
                        Some(Err(source)) => {
                            return Some((Err(DockerError::Events { socket, source }), None))
                        }
                        None => return Some((Err(DockerError::EventsEnded { socket }), None)),
                    }
                }
            }
        })
        .boxed()
    }

    fn api(&self, what: String, source: BollardError) -> DockerError {
        DockerError::Api {
            socket: self.socket.clone(),
            what,
            source,
        }
    }
}

/// A container reference goes into the request's URL path, so it must be what Docker
/// allows in a name or ID, nothing that could change the path.
fn check_reference(reference: &str) -> Result<(), DockerError> {
    let name = reference.strip_prefix('/').unwrap_or(reference);
    let ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(DockerError::BadReference {
            reference: reference.to_owned(),
        })
    }
}

/// The event for a message of dockerd, or None for an event that is not a watched
/// container action or lacks the container's ID.
fn container_event(message: EventMessage) -> Option<ContainerEvent> {
    let action = ContainerAction::from_docker(message.action.as_deref()?)?;
    let actor = message.actor?;
    let id = actor.id.filter(|id| !id.is_empty())?;
    let name = actor
        .attributes
        .and_then(|mut a| a.remove("name"))
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_owned();
    Some(ContainerEvent { id, name, action })
}

#[cfg(test)]
mod tests {
    use bollard::models::{EventActor, EventMessageTypeEnum};

    use super::*;

    fn message(action: &str, id: Option<&str>, name: Option<&str>) -> EventMessage {
        EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some(action.to_owned()),
            actor: Some(EventActor {
                id: id.map(str::to_owned),
                attributes: name.map(|n| HashMap::from([("name".to_owned(), n.to_owned())])),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn maps_watched_actions_and_skips_the_rest() {
        for action in ContainerAction::ALL {
            let ev = container_event(message(action.as_str(), Some("abc"), Some("web")));
            assert_eq!(
                ev,
                Some(ContainerEvent {
                    id: "abc".into(),
                    name: "web".into(),
                    action
                })
            );
        }
        assert_eq!(
            container_event(message("exec_start: sh -c x", Some("abc"), None)),
            None
        );
        assert_eq!(container_event(message("die", None, Some("web"))), None);
        assert_eq!(
            container_event(message("die", Some("abc"), None)).map(|e| e.name),
            Some(String::new())
        );
        assert_eq!(ContainerAction::from_docker("health_status: healthy"), None);
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error_naming_it() {
        let socket = Path::new("/nonexistent/shoal-test/docker.sock");
        let err = DockerClient::connect(socket).await.unwrap_err();
        assert!(matches!(err, DockerError::Connect { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/shoal-test/docker.sock"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn references_cannot_escape_the_url_path() {
        for ok in ["web1", "/web1", "a1b2c3", "my_app.web-1"] {
            assert!(check_reference(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "..",
            "../images/json",
            "a/b",
            "a?b",
            "a#b",
            "a b",
            "-x",
            "é",
        ] {
            assert!(
                matches!(check_reference(bad), Err(DockerError::BadReference { .. })),
                "{bad:?}"
            );
        }
    }
}
