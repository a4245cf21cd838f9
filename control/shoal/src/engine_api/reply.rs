//! Answers in Docker's form: JSON bodies, and errors as `{"message": ...}`.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{header, Response, StatusCode};
use serde_json::Value;

/// A response body: shoal's own (whole) or the engine's (streamed).
pub type Body = BoxBody<Bytes, hyper::Error>;
pub type Answer = Response<Body>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn json(status: StatusCode, value: &Value) -> Answer {
    let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    body.push(b'\n');
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    json(status, &serde_json::json!({ "message": message.into() }))
}

/// A status with no body (Docker's answer to a delete).
pub fn empty(status: StatusCode) -> Answer {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// The agent answered a request with a reply of another kind: a defect, said as such.
pub fn unexpected(reply: &crate::api::Reply) -> Answer {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("unexpected answer from the agent: {reply:?}"),
    )
}
