//! A service's `deploy` section (mode and replicas, labels, update_config, resources,
//! restart_policy, placement) as the parts of Docker's `ServiceSpec` it gives.

use std::collections::BTreeMap;

use docker_compose_types::Service;
use serde_json::{json, Map, Value};

use super::refusal;
use crate::cli::service::limit_flags::{parse_cpus, parse_memory};
use crate::cli::service::spec::parse_duration;

/// The parts of Docker's `ServiceSpec` a `deploy` section gives (JSON, for
/// [`crate::engine_api::service_spec::from_docker`]).
pub(super) struct Deploy {
    /// `Spec.Labels` (without the stack's namespace label).
    pub labels: BTreeMap<String, String>,
    /// `Spec.Mode`.
    pub mode: Value,
    /// `TaskTemplate.RestartPolicy`.
    pub restart_policy: Option<Value>,
    /// `TaskTemplate.Placement.Constraints`.
    pub constraints: Vec<String>,
    /// `TaskTemplate.Placement.Preferences`.
    pub preferences: Vec<Value>,
    /// `Spec.UpdateConfig`.
    pub update_config: Option<Value>,
    /// `TaskTemplate.Resources`.
    pub resources: Map<String, Value>,
}

/// Service `name`'s `deploy` section (all defaults when it has none).
pub(super) fn deploy(name: &str, s: &Service) -> Result<Deploy, String> {
    let refuse = |key: &str| Err(refusal(name, key));
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut mode = json!({"Replicated": {"Replicas": 1}});
    let mut restart_policy: Option<Value> = None;
    let mut constraints: Vec<String> = Vec::new();
    let mut preferences: Vec<Value> = Vec::new();
    let mut update_config: Option<Value> = None;
    let mut resources = Map::new();
    if let Some(d) = &s.deploy {
        for l in &d.labels {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            labels.insert(k.into(), v.into());
        }
        match d.mode.as_deref() {
            None | Some("replicated") => {
                mode = json!({"Replicated": {"Replicas": d.replicas.unwrap_or(1)}});
            }
            Some("global") => {
                if d.replicas.is_some() {
                    return Err(format!(
                        "service {name}: deploy.replicas cannot be set with mode global"
                    ));
                }
                mode = json!({"Global": {}});
            }
            Some(other) => {
                return Err(format!(
                    "service {name}: deploy.mode {other:?} is not replicated or global"
                ))
            }
        }
        if let Some(u) = &d.update_config {
            let mut c = Map::new();
            if let Some(p) = u.parallelism {
                let p = u64::try_from(p).map_err(|_| {
                    format!("service {name}: deploy.update_config.parallelism is negative")
                })?;
                c.insert("Parallelism".into(), json!(p));
            }
            for (key, field, v) in [
                ("Delay", "delay", &u.delay),
                ("Monitor", "monitor", &u.monitor),
            ] {
                if let Some(t) = v {
                    let ms = parse_duration(t).map_err(|e| {
                        format!("service {name}: deploy.update_config.{field}: {e}")
                    })?;
                    c.insert(key.into(), json!(ms * 1_000_000));
                }
            }
            if let Some(a) = &u.failure_action {
                c.insert("FailureAction".into(), json!(a));
            }
            if let Some(r) = u.max_failure_ratio {
                c.insert("MaxFailureRatio".into(), json!(r));
            }
            update_config = Some(Value::Object(c));
        }
        if let Some(r) = &d.resources {
            // Limits are set on each container; reservations count against the nodes'
            // capacity (the scheduler's).
            for (field, l) in [("limits", &r.limits), ("reservations", &r.reservations)] {
                let Some(l) = l else { continue };
                if l.devices.is_some() {
                    return refuse(&format!("deploy.resources.{field}.devices"));
                }
                let mut c = Map::new();
                if let Some(cpus) = &l.cpus {
                    let n = parse_cpus(cpus).map_err(|e| {
                        format!("service {name}: deploy.resources.{field}.cpus: {e}")
                    })?;
                    c.insert("NanoCPUs".into(), json!(n));
                }
                if let Some(m) = &l.memory {
                    let b = parse_memory(m).map_err(|e| {
                        format!("service {name}: deploy.resources.{field}.memory: {e}")
                    })?;
                    c.insert("MemoryBytes".into(), json!(b));
                }
                let key = if field == "limits" {
                    "Limits"
                } else {
                    "Reservations"
                };
                resources.insert(key.into(), Value::Object(c));
            }
        }
        if let Some(r) = &d.restart_policy {
            let ns = |key: &str, v: &Option<String>| -> Result<Option<u64>, String> {
                v.as_deref()
                    .map(|t| {
                        parse_duration(t).map(|ms| ms * 1_000_000).map_err(|e| {
                            format!("service {name}: deploy.restart_policy.{key}: {e}")
                        })
                    })
                    .transpose()
            };
            let mut policy = Map::new();
            if let Some(c) = &r.condition {
                policy.insert("Condition".into(), json!(c));
            }
            if let Some(d) = ns("delay", &r.delay)? {
                policy.insert("Delay".into(), json!(d));
            }
            if let Some(w) = ns("window", &r.window)? {
                policy.insert("Window".into(), json!(w));
            }
            if let Some(m) = r.max_attempts {
                let m = u64::try_from(m).map_err(|_| {
                    format!("service {name}: deploy.restart_policy.max_attempts is negative")
                })?;
                policy.insert("MaxAttempts".into(), json!(m));
            }
            restart_policy = Some(Value::Object(policy));
        }
        if let Some(p) = &d.placement {
            constraints.clone_from(&p.constraints);
            preferences = p
                .preferences
                .iter()
                .map(|p| json!({"Spread": {"SpreadDescriptor": p.spread}}))
                .collect();
        }
    }
    Ok(Deploy {
        labels,
        mode,
        restart_policy,
        constraints,
        preferences,
        update_config,
        resources,
    })
}
