//! `GET /containers/json` with Swarm's `is-task` filter, which a plain dockerd does not
//! know: the filter is taken out of the query, the node's dockerd lists the rest, and
//! the list keeps only shoal's task containers (`is-task=true`, the seeds' `docker ps
//! --filter is-task=true`) or only the others (`false`).

use std::path::Path;

use http_body_util::Empty;
use hyper::{body::Incoming, Request, StatusCode, Uri};
use serde_json::Value;
use shoal_orchestrator::executor::LABEL_SHOAL_TASK_ID;

use super::proxy;
use super::reply::{self, Answer};
use super::route::query;

/// Whether this request is a container list filtered by `is-task`; then the wanted
/// value and the query without it.
pub fn is_task_filter(path: &str, raw_query: Option<&str>) -> Option<(bool, String)> {
    if super::route::unversioned(path) != "/containers/json" {
        return None;
    }
    let mut params = query(raw_query);
    let mut filters: serde_json::Map<String, Value> =
        serde_json::from_str(params.get("filters")?).ok()?;
    let wanted = filters.remove("is-task")?;
    let values: Vec<String> = match wanted {
        Value::Object(m) => m
            .into_iter()
            .filter(|(_, on)| on.as_bool() == Some(true))
            .map(|(k, _)| k)
            .collect(),
        Value::Array(a) => a
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let want = match values.as_slice() {
        [v] if v == "true" || v == "1" => true,
        [v] if v == "false" || v == "0" => false,
        _ => return None,
    };
    params.insert("filters".into(), Value::Object(filters).to_string());
    let rest = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish();
    Some((want, rest))
}

pub async fn list(docker: &Path, request: Request<Incoming>, want: bool, rest: String) -> Answer {
    let (mut parts, _) = request.into_parts();
    let uri = format!("{}?{rest}", parts.uri.path());
    parts.uri = match uri.parse::<Uri>() {
        Ok(u) => u,
        Err(e) => return reply::error(StatusCode::BAD_REQUEST, format!("bad query: {e}")),
    };
    let listed = match proxy::engine_json(
        docker,
        Request::from_parts(parts, Empty::<bytes::Bytes>::new()),
    )
    .await
    {
        Ok(v) => v,
        Err(a) => return a,
    };
    let kept: Vec<Value> = listed
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|c| c["Labels"].get(LABEL_SHOAL_TASK_ID).is_some() == want)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    reply::json(StatusCode::OK, &Value::Array(kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_task_is_taken_out_and_the_rest_kept() {
        let q = "all=1&filters=%7B%22is-task%22%3A%7B%22true%22%3Atrue%7D%2C%22status%22%3A%7B%22running%22%3Atrue%7D%7D";
        let (want, rest) = is_task_filter("/v1.41/containers/json", Some(q)).unwrap();
        assert!(want);
        let params = query(Some(&rest));
        assert_eq!(params["all"], "1");
        assert_eq!(params["filters"], r#"{"status":{"running":true}}"#);
        assert!(is_task_filter("/v1.41/containers/json", Some("all=1")).is_none());
        assert!(is_task_filter("/v1.41/images/json", Some(q)).is_none());
    }
}
