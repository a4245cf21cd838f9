//! The agent's side of the local API: the socket and the request loop.

use std::{
    fs,
    io::{self, ErrorKind},
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use futures::{future::BoxFuture, stream::BoxStream, StreamExt as _};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, info, warn};

use super::{ApiError, Reply, Request, Response, MAX_LINE};

/// What answers the requests: the agent's cluster role, or a fake in tests.
pub trait Backend: Send + Sync + 'static {
    fn handle(&self, request: Request) -> BoxFuture<'_, Result<Reply, ApiError>>;

    /// A request whose answer is a stream ([`Request::streams`]): its replies as they
    /// come, for as long as the caller holds the stream (dropping it ends the work).
    fn stream(&self, request: Request) -> BoxFuture<'_, Result<ReplyStream, ApiError>> {
        let name = request.name();
        Box::pin(async move { Err(ApiError::new(format!("{name} cannot follow here"))) })
    }
}

/// The replies of a streaming request ([`Backend::stream`]).
pub type ReplyStream = BoxStream<'static, Result<Reply, ApiError>>;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another agent is already serving {}", path.display())]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("{what} {}: {error}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
}

/// The bound API socket; removes its path when dropped.
pub struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file, to remove only our own on drop.
    file: (u64, u64),
}

impl ApiSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn listener(&self) -> &UnixListener {
        &self.listener
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        // Only our own socket: a later agent may have replaced it already.
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.file);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Binds the API socket at `path` with owner-only permissions (0600).
///
/// The socket is bound under a temporary name in the same directory, made 0600, then
/// renamed over `path`, so nobody can ever connect to it with looser permissions, and a
/// stale socket (left by an agent that died) is replaced in one step. A socket someone
/// still answers on is refused, as is a path that is not a socket. Needs a tokio
/// runtime.
pub fn bind(path: &Path) -> Result<ApiSocket, BindError> {
    bind_with(path, 0o600, None)
}

/// [`bind`] with the socket made `mode` and, when `group` is given, owned by that group
/// (the Engine API's socket is 0660 root:docker, as dockerd's).
pub fn bind_with(path: &Path, mode: u32, group: Option<u32>) -> Result<ApiSocket, BindError> {
    let io = |what, error| BindError::Io {
        what,
        path: path.to_owned(),
        error,
    };
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
            })
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse {
                    path: path.to_owned(),
                });
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io("checking", e)),
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| io("creating the directory of", e))?;
    let file_name = path.file_name().ok_or_else(|| {
        io(
            "binding",
            io::Error::new(ErrorKind::InvalidInput, "no file name"),
        )
    })?;
    let mut temp_name = file_name.to_owned();
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = dir.join(temp_name);
    let _ = fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp).map_err(|e| io("binding", e))?;
    let finish = || -> io::Result<(u64, u64)> {
        fs::set_permissions(&temp, fs::Permissions::from_mode(mode))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&temp, None, Some(gid))?;
        }
        let meta = fs::symlink_metadata(&temp)?;
        fs::rename(&temp, path)?;
        Ok((meta.dev(), meta.ino()))
    };
    let file = finish().map_err(|e| {
        let _ = fs::remove_file(&temp);
        io("binding", e)
    })?;
    Ok(ApiSocket {
        listener,
        path: path.to_owned(),
        file,
    })
}

/// Serves requests on `socket` until the future is dropped (which removes the socket);
/// each connection on a task of its own.
pub async fn serve(socket: ApiSocket, backend: Arc<dyn Backend>) {
    info!(socket = %socket.path.display(), "API listening");
    loop {
        match socket.listener.accept().await {
            Ok((stream, _)) => {
                let backend = backend.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, backend).await {
                        debug!(error = %e, "API connection ended");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting an API connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection: a request line, its response line, until the client hangs up. A
/// streaming request ([`Request::streams`]) is answered with a response line per reply
/// instead, until the stream ends (the connection then closes) or the client hangs up.
async fn connection(stream: UnixStream, backend: Arc<dyn Backend>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let response = if line.len() > MAX_LINE {
            Response::Error(ApiError::new("request too long"))
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(request) if request.streams() => {
                    let name = request.name();
                    return match backend.stream(request).await {
                        Ok(replies) => {
                            info!(request = name, "API stream started");
                            let r = stream_replies(replies, &mut lines, &mut write).await;
                            info!(request = name, "API stream ended");
                            r
                        }
                        Err(e) => {
                            info!(request = name, error = %e, "API request refused");
                            write_response(&mut write, &Response::Error(e)).await
                        }
                    };
                }
                Ok(request) => {
                    let name = request.name();
                    let result = backend.handle(request).await;
                    match &result {
                        Ok(_) => info!(request = name, "API request done"),
                        Err(e) => info!(request = name, error = %e, "API request refused"),
                    }
                    result.into()
                }
                Err(e) => Response::Error(ApiError::new(format!(
                    "malformed request (is the CLI the same version as the agent?): {e}"
                ))),
            }
        };
        write_response(&mut write, &response).await?;
        if line.len() > MAX_LINE {
            return Ok(());
        }
    }
}

async fn write_response(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> io::Result<()> {
    let mut out = serde_json::to_vec(response).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

/// Writes a stream's replies until it ends, or until the client hangs up (seen at once
/// on its side of the socket, even while the stream has nothing to say).
async fn stream_replies(
    mut replies: super::server::ReplyStream,
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> io::Result<()> {
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            reply = replies.next() => match reply {
                Some(reply) => write_response(write, &reply.into()).await?,
                None => return Ok(()),
            },
            // The client says nothing more on a streaming connection: any read that
            // ends (EOF or error) means it has gone.
            gone = read.read(&mut scratch) => {
                if matches!(gone, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
        }
    }
}
