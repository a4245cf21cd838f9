//! The flag groups `service create` and `service update` share (health check, restart
//! policy, update and rollback policy), parsed into the changes both apply: create to
//! the defaults, update to the service's spec. Values are checked here, so a bad one is
//! refused with one line before the agent is asked.

use clap::Args;
use shoal_cluster::store::{FailureAction, RestartCondition, UpdateOrder};

use super::{parse_duration, RestartArg};
use crate::api::{HealthChanges, RestartChanges, UpdateConfigChanges, MAX_FAILURE_RATIO_PPM};

/// `--health-*` and `--no-healthcheck`.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct HealthArgs {
    /// Command to run to check health
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between running the check (e.g. 2s, 500ms, 1m30s)
    #[arg(long, value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// Consecutive failures needed to report unhealthy
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub health_retries: Option<String>,
    /// Start period for the container to initialize before counting retries
    #[arg(long, value_name = "DURATION")]
    pub health_start_period: Option<String>,
    /// Maximum time to allow one check to run
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Disable any container-specified health check
    #[arg(long)]
    pub no_healthcheck: bool,
}

/// `--restart-*`.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct RestartArgs {
    /// Restart when the task ends: any, on-failure or none (default any)
    #[arg(long, value_enum)]
    pub restart_condition: Option<RestartArg>,
    /// Delay between restart attempts (default 5s)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub restart_delay: Option<String>,
    /// Maximum number of restarts before giving up (default 0: no limit)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub restart_max_attempts: Option<String>,
    /// Window used to evaluate the restart policy (default 0: unbounded)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub restart_window: Option<String>,
}

/// `--update-*`.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct UpdatePolicyArgs {
    /// Maximum number of tasks updated simultaneously (0 to update all at once; default 1)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub update_parallelism: Option<String>,
    /// Delay between updates (default 0s)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub update_delay: Option<String>,
    /// Update order: stop-first or start-first (default stop-first)
    #[arg(long, value_name = "ORDER")]
    pub update_order: Option<String>,
    /// Action on update failure: pause, continue or rollback (default pause)
    #[arg(long, value_name = "ACTION")]
    pub update_failure_action: Option<String>,
    /// Duration after each task update to monitor for failure (default 5s)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub update_monitor: Option<String>,
    /// Failure rate to tolerate during an update, 0 to 1 (default 0)
    #[arg(long, value_name = "RATIO", allow_hyphen_values = true)]
    pub update_max_failure_ratio: Option<String>,
}

/// `--rollback-*`.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct RollbackPolicyArgs {
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once;
    /// default 1)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub rollback_parallelism: Option<String>,
    /// Delay between task rollbacks (default 0s)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub rollback_delay: Option<String>,
    /// Rollback order: stop-first or start-first (default stop-first)
    #[arg(long, value_name = "ORDER")]
    pub rollback_order: Option<String>,
    /// Action on rollback failure: pause or continue (default pause)
    #[arg(long, value_name = "ACTION")]
    pub rollback_failure_action: Option<String>,
    /// Duration after each task rollback to monitor for failure (default 5s)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub rollback_monitor: Option<String>,
    /// Failure rate to tolerate during a rollback, 0 to 1 (default 0)
    #[arg(long, value_name = "RATIO", allow_hyphen_values = true)]
    pub rollback_max_failure_ratio: Option<String>,
}

/// A count flag's value: a non-negative integer.
pub(super) fn parse_count(flag: &str, text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| format!("invalid {flag} value {text:?}: must be a non-negative integer"))
}

/// A duration flag's value, in milliseconds.
pub(super) fn parse_duration_flag(flag: &str, text: &str) -> Result<u64, String> {
    parse_duration(text).map_err(|e| format!("{flag}: {e}"))
}

/// `--*-max-failure-ratio`: a fraction from 0 to 1, kept in millionths.
fn parse_ratio(flag: &str, text: &str) -> Result<u32, String> {
    let bad = || format!("invalid {flag} value {text:?}: must be a number from 0 to 1");
    let ratio: f64 = text.trim().parse().map_err(|_| bad())?;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(bad());
    }
    Ok(((ratio * f64::from(MAX_FAILURE_RATIO_PPM)).round() as u32).min(MAX_FAILURE_RATIO_PPM))
}

fn parse_order(flag: &str, text: &str) -> Result<UpdateOrder, String> {
    match text {
        "stop-first" => Ok(UpdateOrder::StopFirst),
        "start-first" => Ok(UpdateOrder::StartFirst),
        _ => Err(format!(
            "invalid {flag} value {text:?}: stop-first or start-first"
        )),
    }
}

fn parse_failure_action(
    flag: &str,
    text: &str,
    rollback_allowed: bool,
) -> Result<FailureAction, String> {
    match text {
        "pause" => Ok(FailureAction::Pause),
        "continue" => Ok(FailureAction::Continue),
        "rollback" if rollback_allowed => Ok(FailureAction::Rollback),
        _ if rollback_allowed => Err(format!(
            "invalid {flag} value {text:?}: pause, continue or rollback"
        )),
        _ => Err(format!("invalid {flag} value {text:?}: pause or continue")),
    }
}

/// Each value parsed if given.
fn each<T>(
    flag: &str,
    text: Option<&String>,
    parse: impl Fn(&str, &str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    text.map(|t| parse(flag, t)).transpose()
}

impl HealthArgs {
    pub fn changes(&self) -> Result<HealthChanges, String> {
        Ok(HealthChanges {
            cmd: self.health_cmd.clone(),
            interval_ms: each(
                "--health-interval",
                self.health_interval.as_ref(),
                parse_duration_flag,
            )?,
            timeout_ms: each(
                "--health-timeout",
                self.health_timeout.as_ref(),
                parse_duration_flag,
            )?,
            retries: each(
                "--health-retries",
                self.health_retries.as_ref(),
                parse_count,
            )?,
            start_period_ms: each(
                "--health-start-period",
                self.health_start_period.as_ref(),
                parse_duration_flag,
            )?,
            disable: self.no_healthcheck,
        })
    }
}

impl From<RestartArg> for RestartCondition {
    fn from(a: RestartArg) -> Self {
        match a {
            RestartArg::Any => RestartCondition::Any,
            RestartArg::OnFailure => RestartCondition::OnFailure,
            RestartArg::None => RestartCondition::None,
        }
    }
}

impl RestartArgs {
    pub fn changes(&self) -> Result<RestartChanges, String> {
        Ok(RestartChanges {
            condition: self.restart_condition.map(Into::into),
            delay_ms: each(
                "--restart-delay",
                self.restart_delay.as_ref(),
                parse_duration_flag,
            )?,
            max_attempts: each(
                "--restart-max-attempts",
                self.restart_max_attempts.as_ref(),
                parse_count,
            )?,
            window_ms: each(
                "--restart-window",
                self.restart_window.as_ref(),
                parse_duration_flag,
            )?,
        })
    }
}

/// One policy's flags, by name.
struct PolicyFlags<'a> {
    /// `update` or `rollback`.
    what: &'static str,
    parallelism: Option<&'a String>,
    delay: Option<&'a String>,
    order: Option<&'a String>,
    failure_action: Option<&'a String>,
    monitor: Option<&'a String>,
    max_failure_ratio: Option<&'a String>,
}

impl PolicyFlags<'_> {
    fn changes(&self) -> Result<UpdateConfigChanges, String> {
        let w = self.what;
        let rollback_allowed = w == "update";
        Ok(UpdateConfigChanges {
            parallelism: each(&format!("--{w}-parallelism"), self.parallelism, parse_count)?,
            delay_ms: each(&format!("--{w}-delay"), self.delay, parse_duration_flag)?,
            order: each(&format!("--{w}-order"), self.order, parse_order)?,
            failure_action: each(
                &format!("--{w}-failure-action"),
                self.failure_action,
                |flag, text| parse_failure_action(flag, text, rollback_allowed),
            )?,
            monitor_ms: each(&format!("--{w}-monitor"), self.monitor, parse_duration_flag)?,
            max_failure_ratio_ppm: each(
                &format!("--{w}-max-failure-ratio"),
                self.max_failure_ratio,
                parse_ratio,
            )?,
        })
    }
}

impl UpdatePolicyArgs {
    pub fn changes(&self) -> Result<UpdateConfigChanges, String> {
        PolicyFlags {
            what: "update",
            parallelism: self.update_parallelism.as_ref(),
            delay: self.update_delay.as_ref(),
            order: self.update_order.as_ref(),
            failure_action: self.update_failure_action.as_ref(),
            monitor: self.update_monitor.as_ref(),
            max_failure_ratio: self.update_max_failure_ratio.as_ref(),
        }
        .changes()
    }
}

impl RollbackPolicyArgs {
    pub fn changes(&self) -> Result<UpdateConfigChanges, String> {
        PolicyFlags {
            what: "rollback",
            parallelism: self.rollback_parallelism.as_ref(),
            delay: self.rollback_delay.as_ref(),
            order: self.rollback_order.as_ref(),
            failure_action: self.rollback_failure_action.as_ref(),
            monitor: self.rollback_monitor.as_ref(),
            max_failure_ratio: self.rollback_max_failure_ratio.as_ref(),
        }
        .changes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_values_are_checked() {
        let ok = UpdatePolicyArgs {
            update_parallelism: Some("0".into()),
            update_delay: Some("1m30s".into()),
            update_order: Some("start-first".into()),
            update_failure_action: Some("rollback".into()),
            update_monitor: Some("10s".into()),
            update_max_failure_ratio: Some("0.25".into()),
        };
        assert_eq!(
            ok.changes(),
            Ok(UpdateConfigChanges {
                parallelism: Some(0),
                delay_ms: Some(90_000),
                order: Some(UpdateOrder::StartFirst),
                failure_action: Some(FailureAction::Rollback),
                monitor_ms: Some(10_000),
                max_failure_ratio_ppm: Some(250_000),
            })
        );
        assert_eq!(
            UpdatePolicyArgs::default().changes(),
            Ok(Default::default())
        );

        let bad = |args: UpdatePolicyArgs| args.changes().unwrap_err();
        assert_eq!(
            bad(UpdatePolicyArgs {
                update_parallelism: Some("-1".into()),
                ..Default::default()
            }),
            "invalid --update-parallelism value \"-1\": must be a non-negative integer"
        );
        assert_eq!(
            bad(UpdatePolicyArgs {
                update_max_failure_ratio: Some("1.5".into()),
                ..Default::default()
            }),
            "invalid --update-max-failure-ratio value \"1.5\": must be a number from 0 to 1"
        );
        assert!(bad(UpdatePolicyArgs {
            update_max_failure_ratio: Some("-0.1".into()),
            ..Default::default()
        })
        .contains("from 0 to 1"));
        assert!(bad(UpdatePolicyArgs {
            update_max_failure_ratio: Some("NaN".into()),
            ..Default::default()
        })
        .contains("from 0 to 1"));
        assert_eq!(
            bad(UpdatePolicyArgs {
                update_order: Some("random".into()),
                ..Default::default()
            }),
            "invalid --update-order value \"random\": stop-first or start-first"
        );
        assert_eq!(
            bad(UpdatePolicyArgs {
                update_delay: Some("-1s".into()),
                ..Default::default()
            }),
            "--update-delay: invalid duration \"-1s\": use e.g. 500ms, 2s, 1m30s"
        );
        assert!(bad(UpdatePolicyArgs {
            update_failure_action: Some("retry".into()),
            ..Default::default()
        })
        .contains("pause, continue or rollback"));
    }

    #[test]
    fn a_rollback_cannot_fail_into_a_rollback() {
        let args = RollbackPolicyArgs {
            rollback_failure_action: Some("rollback".into()),
            ..Default::default()
        };
        assert_eq!(
            args.changes().unwrap_err(),
            "invalid --rollback-failure-action value \"rollback\": pause or continue"
        );
        let args = RollbackPolicyArgs {
            rollback_failure_action: Some("continue".into()),
            rollback_max_failure_ratio: Some("1".into()),
            ..Default::default()
        };
        let changes = args.changes().unwrap();
        assert_eq!(changes.failure_action, Some(FailureAction::Continue));
        assert_eq!(changes.max_failure_ratio_ppm, Some(MAX_FAILURE_RATIO_PPM));
    }

    #[test]
    fn restart_and_health_values_are_checked() {
        let restart = RestartArgs {
            restart_condition: Some(RestartArg::OnFailure),
            restart_delay: Some("2s".into()),
            restart_max_attempts: Some("3".into()),
            restart_window: Some("1m".into()),
        };
        assert_eq!(
            restart.changes(),
            Ok(RestartChanges {
                condition: Some(RestartCondition::OnFailure),
                delay_ms: Some(2000),
                max_attempts: Some(3),
                window_ms: Some(60_000),
            })
        );
        assert!(RestartArgs {
            restart_max_attempts: Some("-2".into()),
            ..Default::default()
        }
        .changes()
        .unwrap_err()
        .contains("--restart-max-attempts"));
        assert!(HealthArgs {
            health_retries: Some("x".into()),
            ..Default::default()
        }
        .changes()
        .unwrap_err()
        .contains("--health-retries"));
    }
}
