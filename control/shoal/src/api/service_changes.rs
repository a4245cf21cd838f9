//! What `service update` asks to change in a service: every field left alone when it is
//! absent (None, empty or false), as Docker's update flags change only what they name.
//!
//! The parts `service create` shares (health check, restart policy, update and rollback
//! policy) apply here to a spec's fields, so that create and update read the same flags
//! the same way; the rest (networks, ports, rollback) needs the cluster's state and is
//! applied by the manager.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_cluster::store::{
    EndpointMode, FailureAction, FileReference, HealthCheck, PortConfig, RestartCondition,
    ServiceSpec, UpdateConfig, UpdateOrder,
};

/// `service update`'s changes (`service rollback`: `rollback` alone).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceChanges {
    /// `--image`: pinned to its digest by the manager unless asked not to.
    pub image: Option<String>,
    /// `--replicas` (replicated services only).
    pub replicas: Option<u64>,
    /// `--args`: the new command arguments, already split.
    pub args: Option<Vec<String>>,
    /// `--env-add K=V`: replaces the variable of the same name, else is appended.
    pub env_add: Vec<String>,
    /// `--env-rm K`.
    pub env_rm: Vec<String>,
    pub label_add: BTreeMap<String, String>,
    pub label_rm: Vec<String>,
    /// `--publish-add`: as `--publish` (published 0: chosen by the manager).
    pub publish_add: Vec<PortConfig>,
    /// `--publish-rm`: the protocol must match; with a published port, the pair must
    /// match; without one (published 0), `target` names a published or a target port.
    pub publish_rm: Vec<PortConfig>,
    /// `--network-add` / `--network-rm`: names or IDs, as given.
    pub network_add: Vec<String>,
    pub network_rm: Vec<String>,
    /// `--network-add name=NET,alias=A`: the aliases of each network added, by the
    /// reference given there.
    pub network_aliases: BTreeMap<String, Vec<String>>,
    /// `--entrypoint`, `--user`, `--workdir`, `--hostname`, `--dns-*`, `--host-*`,
    /// `--init`, `--stop-signal`, `--container-label-*`.
    pub container: super::ContainerChanges,
    pub constraint_add: Vec<String>,
    pub constraint_rm: Vec<String>,
    /// `--replicas-max-per-node` (0: no limit).
    pub max_replicas_per_node: Option<u64>,
    /// `--placement-pref-add` / `--placement-pref-rm`: spread descriptors
    /// (`node.labels.X`).
    pub placement_pref_add: Vec<String>,
    pub placement_pref_rm: Vec<String>,
    /// `--secret-add` / `--config-add`: as `--secret` / `--config` (`name` holds the
    /// reference given, resolved by the manager).
    pub secret_add: Vec<FileReference>,
    pub config_add: Vec<FileReference>,
    /// `--secret-rm` / `--config-rm`: names or IDs.
    pub secret_rm: Vec<String>,
    pub config_rm: Vec<String>,
    pub endpoint_mode: Option<EndpointMode>,
    pub health: HealthChanges,
    pub restart: RestartChanges,
    pub stop_grace_ms: Option<u64>,
    pub update_config: UpdateConfigChanges,
    pub rollback_config: UpdateConfigChanges,
    /// `--force`: replace every task even if the spec is the same.
    pub force: bool,
    /// `--rollback` / `service rollback`: back to the previous spec; nothing else may
    /// change with it.
    pub rollback: bool,
}

impl ServiceChanges {
    /// Only `rollback` is asked (what `--rollback` needs).
    pub fn is_rollback_alone(&self) -> bool {
        self.rollback
            && *self
                == ServiceChanges {
                    rollback: true,
                    ..Default::default()
                }
    }
}

/// `--health-cmd`, `--health-*` and `--no-healthcheck`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthChanges {
    /// `--health-cmd` (empty: no command of the service's own).
    pub cmd: Option<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub retries: Option<u64>,
    pub start_period_ms: Option<u64>,
    /// `--no-healthcheck`: disable any check, the image's included.
    pub disable: bool,
}

impl HealthChanges {
    fn has_settings(&self) -> bool {
        self.cmd.is_some()
            || self.interval_ms.is_some()
            || self.timeout_ms.is_some()
            || self.retries.is_some()
            || self.start_period_ms.is_some()
    }

    /// The health check `current` becomes (None: the image's own, if any).
    pub fn apply(&self, current: Option<HealthCheck>) -> Result<Option<HealthCheck>, String> {
        if self.disable {
            if self.has_settings() {
                return Err("--no-healthcheck conflicts with --health-* options".into());
            }
            return Ok(Some(HealthCheck {
                test: vec!["NONE".into()],
                interval_ms: 0,
                timeout_ms: 0,
                retries: 0,
                start_period_ms: 0,
            }));
        }
        if !self.has_settings() {
            return Ok(current);
        }
        let mut check = match current {
            Some(h) if h.test.first().map(String::as_str) != Some("NONE") => h,
            _ => HealthCheck {
                test: Vec::new(),
                interval_ms: 0,
                timeout_ms: 0,
                retries: 0,
                start_period_ms: 0,
            },
        };
        if let Some(cmd) = &self.cmd {
            check.test = if cmd.is_empty() {
                Vec::new()
            } else {
                vec!["CMD-SHELL".into(), cmd.clone()]
            };
        }
        check.interval_ms = self.interval_ms.unwrap_or(check.interval_ms);
        check.timeout_ms = self.timeout_ms.unwrap_or(check.timeout_ms);
        check.retries = self.retries.unwrap_or(check.retries);
        check.start_period_ms = self.start_period_ms.unwrap_or(check.start_period_ms);
        if !check.test.is_empty() {
            return Ok(Some(check));
        }
        // Settings without a command of the service's own would tune the image's check,
        // which the executor does not do.
        if check.interval_ms != 0
            || check.timeout_ms != 0
            || check.retries != 0
            || check.start_period_ms != 0
        {
            return Err("--health-interval/--health-retries/--health-start-period/--health-timeout need --health-cmd".into());
        }
        Ok(None)
    }
}

/// `--restart-condition`, `--restart-delay`, `--restart-max-attempts`, `--restart-window`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestartChanges {
    pub condition: Option<RestartCondition>,
    pub delay_ms: Option<u64>,
    pub max_attempts: Option<u64>,
    pub window_ms: Option<u64>,
}

impl RestartChanges {
    pub fn apply(&self, spec: &mut ServiceSpec) {
        spec.restart_condition = self.condition.unwrap_or(spec.restart_condition);
        spec.restart_delay_ms = self.delay_ms.unwrap_or(spec.restart_delay_ms);
        spec.restart_max_attempts = self.max_attempts.unwrap_or(spec.restart_max_attempts);
        spec.restart_window_ms = self.window_ms.unwrap_or(spec.restart_window_ms);
    }
}

/// `--update-*` (or `--rollback-*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateConfigChanges {
    pub parallelism: Option<u64>,
    pub delay_ms: Option<u64>,
    pub order: Option<UpdateOrder>,
    pub failure_action: Option<FailureAction>,
    pub monitor_ms: Option<u64>,
    pub max_failure_ratio_ppm: Option<u32>,
}

/// The largest `max_failure_ratio_ppm`: a ratio of 1.
pub const MAX_FAILURE_RATIO_PPM: u32 = 1_000_000;

impl UpdateConfigChanges {
    /// Sets what is given; `what` (`update` or `rollback`) names the flags in errors.
    pub fn apply(&self, config: &mut UpdateConfig, what: &str) -> Result<(), String> {
        if what == "rollback" && self.failure_action == Some(FailureAction::Rollback) {
            return Err("--rollback-failure-action must be pause or continue".into());
        }
        if self
            .max_failure_ratio_ppm
            .is_some_and(|r| r > MAX_FAILURE_RATIO_PPM)
        {
            return Err(format!(
                "--{what}-max-failure-ratio must be between 0 and 1"
            ));
        }
        config.parallelism = self.parallelism.unwrap_or(config.parallelism);
        config.delay_ms = self.delay_ms.unwrap_or(config.delay_ms);
        config.order = self.order.unwrap_or(config.order);
        config.failure_action = self.failure_action.unwrap_or(config.failure_action);
        config.monitor_ms = self.monitor_ms.unwrap_or(config.monitor_ms);
        config.max_failure_ratio_ppm = self
            .max_failure_ratio_ppm
            .unwrap_or(config.max_failure_ratio_ppm);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(test: &[&str], interval_ms: u64) -> HealthCheck {
        HealthCheck {
            test: test.iter().map(|s| s.to_string()).collect(),
            interval_ms,
            timeout_ms: 0,
            retries: 0,
            start_period_ms: 0,
        }
    }

    #[test]
    fn health_changes_keep_what_is_not_named() {
        let none = HealthChanges::default();
        assert_eq!(none.apply(None), Ok(None));
        let current = check(&["CMD-SHELL", "true"], 2000);
        assert_eq!(none.apply(Some(current.clone())), Ok(Some(current.clone())));

        let interval = HealthChanges {
            interval_ms: Some(500),
            ..Default::default()
        };
        assert_eq!(
            interval.apply(Some(current)),
            Ok(Some(check(&["CMD-SHELL", "true"], 500)))
        );
        // No command to tune: refused, as create refuses it.
        assert!(interval
            .apply(None)
            .unwrap_err()
            .contains("need --health-cmd"));
        assert!(interval
            .apply(Some(check(&["NONE"], 0)))
            .unwrap_err()
            .contains("need --health-cmd"));

        let cmd = HealthChanges {
            cmd: Some("curl -f localhost".into()),
            ..Default::default()
        };
        assert_eq!(
            cmd.apply(Some(check(&["NONE"], 0))),
            Ok(Some(check(&["CMD-SHELL", "curl -f localhost"], 0)))
        );
        // An empty command returns to the image's check.
        let empty = HealthChanges {
            cmd: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(empty.apply(Some(check(&["CMD-SHELL", "x"], 0))), Ok(None));
    }

    #[test]
    fn no_healthcheck_stands_alone() {
        let off = HealthChanges {
            disable: true,
            ..Default::default()
        };
        assert_eq!(off.apply(None), Ok(Some(check(&["NONE"], 0))));
        let both = HealthChanges {
            disable: true,
            retries: Some(3),
            ..Default::default()
        };
        assert_eq!(
            both.apply(None).unwrap_err(),
            "--no-healthcheck conflicts with --health-* options"
        );
    }

    #[test]
    fn update_config_changes_set_only_what_is_given() {
        let mut config = UpdateConfig::default();
        UpdateConfigChanges {
            parallelism: Some(0),
            order: Some(UpdateOrder::StartFirst),
            ..Default::default()
        }
        .apply(&mut config, "update")
        .unwrap();
        assert_eq!(
            config,
            UpdateConfig {
                parallelism: 0,
                order: UpdateOrder::StartFirst,
                ..UpdateConfig::default()
            }
        );
        let rollback_on_rollback = UpdateConfigChanges {
            failure_action: Some(FailureAction::Rollback),
            ..Default::default()
        };
        assert!(rollback_on_rollback.apply(&mut config, "update").is_ok());
        assert!(rollback_on_rollback.apply(&mut config, "rollback").is_err());
        let too_much = UpdateConfigChanges {
            max_failure_ratio_ppm: Some(1_000_001),
            ..Default::default()
        };
        assert_eq!(
            too_much.apply(&mut config, "update").unwrap_err(),
            "--update-max-failure-ratio must be between 0 and 1"
        );
    }

    #[test]
    fn rollback_alone_is_recognised() {
        let mut c = ServiceChanges {
            rollback: true,
            ..Default::default()
        };
        assert!(c.is_rollback_alone());
        c.force = true;
        assert!(!c.is_rollback_alone());
        assert!(!ServiceChanges::default().is_rollback_alone());
    }
}
