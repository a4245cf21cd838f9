//! The CLI's side of the local API: one blocking call per request.

use std::{
    io::{self, BufRead, BufReader, ErrorKind, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use super::{ApiError, Reply, Request, Response, MAX_LINE};

/// Why a call did not get an answer from the agent, or got a refusal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the shoal agent at {}: is `shoal agent` running?", path.display())]
    Unreachable { path: PathBuf },
    #[error("permission denied on the shoal agent's socket {} (it is owner-only: run as root)", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("talking to the shoal agent at {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("the shoal agent at {} answered something unreadable: {detail}", path.display())]
    Protocol { path: PathBuf, detail: String },
    /// The agent refused the request; its message as is.
    #[error("{0}")]
    Api(#[from] ApiError),
}

/// A client of one agent's API socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Client { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `request`, waits for the answer.
    pub fn call(&self, request: &Request) -> Result<Reply, ClientError> {
        let path = &self.path;
        let mut stream = UnixStream::connect(path).map_err(|error| match error.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                ClientError::Unreachable { path: path.clone() }
            }
            ErrorKind::PermissionDenied => ClientError::PermissionDenied { path: path.clone() },
            _ => ClientError::Io {
                path: path.clone(),
                error,
            },
        })?;
        let io = |error| ClientError::Io {
            path: path.clone(),
            error,
        };
        let mut line = serde_json::to_vec(request).map_err(|e| io(io::Error::other(e)))?;
        line.push(b'\n');
        stream.write_all(&line).map_err(io)?;
        let mut answer = Vec::new();
        BufReader::new(stream)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut answer)
            .map_err(io)?;
        if answer.is_empty() {
            return Err(ClientError::Protocol {
                path: path.clone(),
                detail: "the connection closed without an answer".into(),
            });
        }
        match serde_json::from_slice::<Response>(&answer) {
            Ok(Response::Ok(reply)) => Ok(reply),
            Ok(Response::Error(e)) => Err(ClientError::Api(e)),
            Err(e) => Err(ClientError::Protocol {
                path: path.clone(),
                detail: e.to_string(),
            }),
        }
    }
}
