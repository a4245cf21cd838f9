//! Which part of shoal answers an Engine API request: the path without its version,
//! split, and the query's `filters`.

use std::collections::{BTreeMap, BTreeSet};

/// Who answers a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/_ping`: the node's dockerd, with the swarm state added to its headers.
    Ping,
    /// `/info`: dockerd's, with the `Swarm` section shoal's.
    Info,
    /// The swarm's objects: shoal's store (`swarm`, `nodes`, `services`, `tasks`,
    /// `secrets`, `configs`); the segments after the object kind.
    Swarm { kind: SwarmKind, rest: Vec<String> },
    /// `/networks`: the swarm's overlay networks are shoal's, the others the engine's.
    Networks { rest: Vec<String> },
    /// Everything else is the node's own engine (containers, images, exec, volumes,
    /// events, build, local networks).
    Engine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwarmKind {
    Swarm,
    Nodes,
    Services,
    Tasks,
    Secrets,
    Configs,
}

impl SwarmKind {
    pub fn name(self) -> &'static str {
        match self {
            SwarmKind::Swarm => "swarm",
            SwarmKind::Nodes => "nodes",
            SwarmKind::Services => "services",
            SwarmKind::Tasks => "tasks",
            SwarmKind::Secrets => "secrets",
            SwarmKind::Configs => "configs",
        }
    }
}

/// `path` without a leading `/v1.NN` (Docker's clients send it; unversioned is the
/// newest).
pub fn unversioned(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else {
        return path;
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let version = &rest[..end];
    let is_version = version.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && (a.to_owned() + b).bytes().all(|c| c.is_ascii_digit())
    });
    if is_version {
        &rest[end..]
    } else {
        path
    }
}

pub fn route(path: &str) -> Route {
    let path = unversioned(path);
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let kind = match segments.next() {
        Some("_ping") => return Route::Ping,
        Some("info") => return Route::Info,
        Some("swarm") => SwarmKind::Swarm,
        Some("nodes") => SwarmKind::Nodes,
        Some("services") => SwarmKind::Services,
        Some("tasks") => SwarmKind::Tasks,
        Some("secrets") => SwarmKind::Secrets,
        Some("configs") => SwarmKind::Configs,
        Some("networks") => {
            return Route::Networks {
                rest: segments.map(decode_segment).collect(),
            }
        }
        _ => return Route::Engine,
    };
    let rest = segments.map(decode_segment).collect();
    Route::Swarm { kind, rest }
}

/// A path segment with its %-escapes decoded (a `+` stays a `+` in a path).
fn decode_segment(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The query's parameters (the last of each name).
pub fn query(q: Option<&str>) -> BTreeMap<String, String> {
    form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Docker's `filters` parameter: `{"name": {"web": true}}`, or the older
/// `{"name": ["web"]}`. Keys not in `allowed`, and values a key cannot take, are refused
/// as Docker refuses them ([`crate::filters::check`]).
pub fn filters(
    query: &BTreeMap<String, String>,
    allowed: &[&str],
) -> Result<crate::filters::Filters, String> {
    let Some(text) = query.get("filters").filter(|t| !t.is_empty()) else {
        return Ok(BTreeMap::new());
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid filter: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "invalid filter: not an object".to_string())?;
    let mut out = BTreeMap::new();
    for (key, values) in object {
        let set: BTreeSet<String> = match values {
            serde_json::Value::Object(m) => m
                .iter()
                .filter(|(_, on)| on.as_bool() == Some(true))
                .map(|(v, _)| v.clone())
                .collect(),
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => return Err(format!("invalid filter '{key}': not a set of values")),
        };
        out.insert(key.clone(), set);
    }
    crate::filters::check(&out, allowed)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_stripped_and_objects_routed() {
        assert_eq!(unversioned("/v1.47/services"), "/services");
        assert_eq!(unversioned("/services"), "/services");
        assert_eq!(unversioned("/volumes"), "/volumes");
        assert_eq!(unversioned("/v1.x/services"), "/v1.x/services");
        assert_eq!(route("/v1.41/_ping"), Route::Ping);
        assert_eq!(route("/info"), Route::Info);
        assert_eq!(route("/v1.47/containers/json"), Route::Engine);
        assert_eq!(route("/volumes"), Route::Engine);
        assert_eq!(
            route("/v1.41/networks/app/connect"),
            Route::Networks {
                rest: vec!["app".into(), "connect".into()]
            }
        );
        assert_eq!(
            route("/v1.47/services/web%201+x/update"),
            Route::Swarm {
                kind: SwarmKind::Services,
                rest: vec!["web 1+x".into(), "update".into()]
            }
        );
        assert_eq!(
            route("/nodes"),
            Route::Swarm {
                kind: SwarmKind::Nodes,
                rest: vec![]
            }
        );
    }

    #[test]
    fn filters_in_both_forms_and_unknown_keys_refused() {
        let q = query(Some(
            "filters=%7B%22service%22%3A%7B%22web%22%3Atrue%7D%2C%22desired-state%22%3A%5B%22running%22%5D%7D",
        ));
        let f = filters(&q, &["service", "desired-state"]).unwrap();
        assert_eq!(f["service"], BTreeSet::from(["web".to_string()]));
        assert_eq!(f["desired-state"], BTreeSet::from(["running".to_string()]));
        assert_eq!(
            filters(&q, &["service"]).unwrap_err(),
            "invalid filter 'desired-state'"
        );
        assert!(filters(&query(Some("filters=%7Bnope")), &[]).is_err());
        assert!(filters(&query(None), &[]).unwrap().is_empty());
    }
}
