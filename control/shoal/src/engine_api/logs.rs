//! `GET /services/{id}/logs` and `GET /tasks/{id}/logs`: the lines of a service's (or
//! one task's) containers from every node, in Docker's multiplexed stream (an 8-byte
//! header per line: stdout 1 or stderr 2, and the length), with Docker's context details
//! (node, service and task IDs) that the docker CLI reads to print its prefixes.
//! `follow=1` keeps the answer open, lines coming as the containers write them.

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::{body::Frame, header, Response, StatusCode};
use tracing::{info, warn};

use super::reply::{self, Answer};
use super::Call;
use crate::api::{server::Backend, Reply, Request};
use crate::service_logs::{multiplexed_frame, parse_tail, LogRecord};

/// A followed answer's body: the frames as the task sends them.
struct Frames(tokio::sync::mpsc::Receiver<Bytes>);

impl futures::Stream for Frames {
    type Item = Result<Frame<Bytes>, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// Whose logs: a service (by ID or name) or a task (by ID).
pub enum Whose<'a> {
    Service(&'a str),
    Task(&'a str),
}

/// Docker's reading of a boolean query parameter: set unless empty, `0`, `no`,
/// `false` or `none`.
fn flag(call: &Call, name: &str) -> bool {
    call.query.get(name).is_some_and(|v| {
        !matches!(
            v.to_ascii_lowercase().as_str(),
            "" | "0" | "no" | "false" | "none"
        )
    })
}

/// What the query asks for, checked.
struct Options {
    stdout: bool,
    stderr: bool,
    follow: bool,
    timestamps: bool,
    details: bool,
    tail: Option<String>,
    since: Option<i64>,
}

fn options(call: &Call) -> Result<Options, Answer> {
    let bad = |m: String| reply::error(StatusCode::BAD_REQUEST, m);
    let (stdout, stderr) = (flag(call, "stdout"), flag(call, "stderr"));
    if !stdout && !stderr {
        return Err(bad(
            "Bad parameters: you must choose at least one stream".into()
        ));
    }
    let tail = match call.query.get("tail").map(String::as_str) {
        None | Some("") => None,
        Some(t) => Some(parse_tail(t).map_err(bad)?),
    };
    // `since`: Unix seconds, with an optional fraction; 0 is "from the start".
    let since = match call.query.get("since").map(String::as_str) {
        None | Some("") => None,
        Some(t) => {
            let secs = t.split('.').next().unwrap_or_default();
            let s = secs
                .parse::<i64>()
                .map_err(|_| bad(format!("invalid since value {t:?}: Unix seconds")))?;
            (s > 0).then_some(s)
        }
    };
    if call
        .query
        .get("until")
        .is_some_and(|u| !u.is_empty() && u != "0")
    {
        return Err(reply::error(
            StatusCode::NOT_IMPLEMENTED,
            "shoal's service logs do not take `until` yet",
        ));
    }
    Ok(Options {
        stdout,
        stderr,
        follow: flag(call, "follow"),
        timestamps: flag(call, "timestamps"),
        details: flag(call, "details"),
        tail,
        since,
    })
}

/// The frames of `records` the query asked for.
fn frames(records: &[LogRecord], o: &Options) -> Bytes {
    let mut out = Vec::new();
    for r in records {
        if (r.stderr && !o.stderr) || (!r.stderr && !o.stdout) {
            continue;
        }
        let line = r.engine_line(o.timestamps, o.details);
        out.extend(multiplexed_frame(r.stderr, line.as_bytes()));
    }
    out.into()
}

fn logged(warnings: &[String]) {
    for w in warnings {
        warn!(warning = %w, "Engine API service logs");
    }
}

pub async fn answer(
    backend: &dyn Backend,
    whose: Whose<'_>,
    call: &Call,
) -> Result<Answer, Answer> {
    let o = options(call)?;
    let view = super::swarm::services(
        backend,
        match whose {
            Whose::Service(r) => vec![r.to_string()],
            Whose::Task(_) => vec![],
        },
    )
    .await?;
    let reference = match whose {
        Whose::Service(r) => {
            view.services.first().map(|s| s.id.clone()).ok_or_else(|| {
                reply::error(StatusCode::NOT_FOUND, format!("service {r} not found"))
            })?
        }
        Whose::Task(id) => view
            .tasks
            .iter()
            .find(|t| t.id == id)
            .map(|t| t.id.clone())
            .ok_or_else(|| reply::error(StatusCode::NOT_FOUND, format!("task {id} not found")))?,
    };
    let request = Request::ServiceLogs {
        service: reference,
        tail: o.tail.clone(),
        since: o.since,
        no_task_ids: false,
        no_trunc: false,
        raw: false,
        follow: o.follow,
    };
    let body = if o.follow {
        let mut replies = backend
            .stream(request)
            .await
            .map_err(super::swarm::refusal)?;
        // The response body must be Sync, the replies are not: a task carries them over
        // a channel, and ends when the client goes (the body, so the receiver, dropped).
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        tokio::spawn(async move {
            loop {
                let reply = tokio::select! {
                    r = replies.next() => r,
                    () = tx.closed() => return,
                };
                let bytes = match reply {
                    Some(Ok(Reply::ServiceLogs { records, warnings })) => {
                        logged(&warnings);
                        frames(&records, &o)
                    }
                    Some(Ok(other)) => {
                        warn!(?other, "Engine API service logs: unexpected reply");
                        continue;
                    }
                    Some(Err(e)) => {
                        info!(error = %e, "Engine API service logs: the stream ended");
                        return;
                    }
                    None => return,
                };
                if !bytes.is_empty() && tx.send(bytes).await.is_err() {
                    return;
                }
            }
        });
        StreamBody::new(Frames(rx))
            .map_err(|never| match never {})
            .boxed()
    } else {
        match super::swarm::call(backend, request).await? {
            Reply::ServiceLogs { records, warnings } => {
                logged(&warnings);
                reply::full(frames(&records, &o))
            }
            other => return Err(reply::unexpected(&other)),
        }
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/vnd.docker.multiplexed-stream"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(query: &str) -> Call {
        Call {
            method: hyper::Method::GET,
            rest: vec![],
            query: super::super::route::query(Some(query)),
            registry_auth: None,
            body: Bytes::new(),
        }
    }

    #[test]
    fn queries_are_read_as_docker_reads_them() {
        let o = options(&call(
            "stdout=1&stderr=false&follow=true&timestamps=1&details=1&tail=10&since=1796000000.5",
        ))
        .unwrap_or_else(|_| panic!("refused"));
        assert!(o.stdout && !o.stderr && o.follow && o.timestamps && o.details);
        assert_eq!(o.tail.as_deref(), Some("10"));
        assert_eq!(o.since, Some(1_796_000_000));
        let o = options(&call("stderr=1&tail=all&since=0")).unwrap_or_else(|_| panic!("refused"));
        assert!(!o.stdout && o.stderr && !o.follow);
        assert_eq!((o.tail.as_deref(), o.since), (Some("all"), None));
        for (q, status) in [
            ("", StatusCode::BAD_REQUEST),
            ("stdout=0&stderr=no", StatusCode::BAD_REQUEST),
            ("stdout=1&tail=many", StatusCode::BAD_REQUEST),
            ("stdout=1&since=yesterday", StatusCode::BAD_REQUEST),
            ("stdout=1&until=1796000000", StatusCode::NOT_IMPLEMENTED),
        ] {
            match options(&call(q)) {
                Ok(_) => panic!("{q:?} taken"),
                Err(a) => assert_eq!(a.status(), status, "{q:?}"),
            }
        }
    }

    #[test]
    fn only_the_asked_streams_are_framed() {
        let record = |stderr: bool, text: &str| LogRecord {
            time: "2026-12-06T19:00:00.5Z".into(),
            node_id: "n1".into(),
            service_id: "s1".into(),
            task_id: "t1".into(),
            stderr,
            text: text.into(),
            prefix: None,
        };
        let records = [record(false, "out"), record(true, "err")];
        let o = options(&call("stdout=1")).unwrap_or_else(|_| panic!("refused"));
        assert_eq!(
            &frames(&records, &o)[..],
            &[1, 0, 0, 0, 0, 0, 0, 4, b'o', b'u', b't', b'\n']
        );
        let o = options(&call("stdout=1&stderr=1&details=1")).unwrap_or_else(|_| panic!("refused"));
        let both = frames(&records, &o);
        let first = u32::from_be_bytes([both[4], both[5], both[6], both[7]]) as usize;
        let second = &both[8 + first..];
        assert_eq!(second[0], 2, "{both:?}");
        assert!(String::from_utf8_lossy(&both).contains(
            "com.docker.swarm.node.id=n1,com.docker.swarm.service.id=s1,com.docker.swarm.task.id=t1 err\n"
        ));
    }
}
