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
        let mut answers = self.send(request)?;
        match answers.next_reply()? {
            Some(reply) => Ok(reply),
            None => Err(ClientError::Protocol {
                path: self.path.clone(),
                detail: "the connection closed without an answer".into(),
            }),
        }
    }

    /// Sends a streaming request ([`Request::streams`]) and hands each reply to
    /// `each` as it comes, until the agent ends the stream or `each` returns false.
    pub fn call_stream(
        &self,
        request: &Request,
        mut each: impl FnMut(Reply) -> bool,
    ) -> Result<(), ClientError> {
        let mut answers = self.send(request)?;
        while let Some(reply) = answers.next_reply()? {
            if !each(reply) {
                break;
            }
        }
        Ok(())
    }

    fn send(&self, request: &Request) -> Result<Answers, ClientError> {
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
        let mut line = serde_json::to_vec(request).map_err(|e| ClientError::Io {
            path: path.clone(),
            error: io::Error::other(e),
        })?;
        line.push(b'\n');
        stream.write_all(&line).map_err(|error| ClientError::Io {
            path: path.clone(),
            error,
        })?;
        Ok(Answers {
            path: path.clone(),
            read: BufReader::new(stream),
        })
    }
}

/// The response lines of one request.
struct Answers {
    path: PathBuf,
    read: BufReader<UnixStream>,
}

impl Answers {
    /// The next reply; `None` once the agent closed the connection.
    fn next_reply(&mut self) -> Result<Option<Reply>, ClientError> {
        let mut answer = Vec::new();
        (&mut self.read)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut answer)
            .map_err(|error| ClientError::Io {
                path: self.path.clone(),
                error,
            })?;
        if answer.is_empty() {
            return Ok(None);
        }
        match serde_json::from_slice::<Response>(&answer) {
            Ok(Response::Ok(reply)) => Ok(Some(reply)),
            Ok(Response::Error(e)) => Err(ClientError::Api(e)),
            Err(e) => Err(ClientError::Protocol {
                path: self.path.clone(),
                detail: e.to_string(),
            }),
        }
    }
}
