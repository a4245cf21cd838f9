//! `service update`'s flags parsed into the [`ServiceChanges`] sent to the managers,
//! checked as `service create` checks its own.

use super::file_flags::{parse_file_references, FileKind};
use super::{
    parse_publish, parse_replicas,
    policy::parse_duration_flag,
    spec::{check_constraints, check_env, parse_placement_prefs},
    ServiceUpdateArgs,
};
use crate::api::ServiceChanges;

/// Docker's refusal of `--rollback` with anything else.
const ROLLBACK_ALONE: &str = "other flags may not be combined with --rollback";

/// `--args "..."` split as a shell splits words: whitespace separates them, single
/// quotes keep everything, double quotes keep all but `\"` and `\\`, and a backslash
/// outside quotes keeps the next character.
pub(super) fn split_args(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("invalid --args {text:?}: unclosed quote")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(format!("invalid --args {text:?}: unclosed quote")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(format!("invalid --args {text:?}: unclosed quote")),
                    }
                }
            }
            '\\' => {
                let w = word.get_or_insert_with(String::new);
                match chars.next() {
                    Some(c) => w.push(c),
                    None => return Err(format!("invalid --args {text:?}: nothing after \\")),
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

impl ServiceUpdateArgs {
    /// The changes the flags ask for; `--rollback` only alone.
    pub fn changes(&self) -> Result<ServiceChanges, String> {
        let (network_add, network_aliases) = self.networks_added()?;
        let changes = ServiceChanges {
            image: self.image.clone(),
            replicas: self.replicas.as_deref().map(parse_replicas).transpose()?,
            args: self.args.as_deref().map(split_args).transpose()?,
            env_add: self.env_add.clone(),
            env_rm: self.env_rm.clone(),
            label_add: self.label_add.iter().cloned().collect(),
            label_rm: self.label_rm.clone(),
            publish_add: self
                .publish_add
                .iter()
                .map(|p| parse_publish(p))
                .collect::<Result<_, _>>()?,
            publish_rm: self
                .publish_rm
                .iter()
                .map(|p| parse_publish(p))
                .collect::<Result<_, _>>()?,
            network_add,
            network_rm: self.network_rm.clone(),
            network_aliases,
            container: self.container_changes()?,
            constraint_add: self.constraint_add.clone(),
            constraint_rm: self.constraint_rm.clone(),
            max_replicas_per_node: self.replicas_max_per_node,
            placement_pref_add: parse_placement_prefs(&self.placement_pref_add)?,
            placement_pref_rm: parse_placement_prefs(&self.placement_pref_rm)?,
            secret_add: parse_file_references(FileKind::Secret, &self.secret_add)?,
            secret_rm: self.secret_rm.clone(),
            config_add: parse_file_references(FileKind::Config, &self.config_add)?,
            config_rm: self.config_rm.clone(),
            endpoint_mode: self.endpoint_mode.map(Into::into),
            health: self.health.changes()?,
            restart: self.restart.changes()?,
            stop_grace_ms: self
                .stop_grace_period
                .as_deref()
                .map(|g| parse_duration_flag("--stop-grace-period", g))
                .transpose()?,
            update_config: self.update_policy.changes()?,
            rollback_config: self.rollback_policy.changes()?,
            force: self.force,
            rollback: self.rollback,
        };
        if self.rollback {
            if !changes.is_rollback_alone() || self.with_registry_auth || self.no_resolve_image {
                return Err(ROLLBACK_ALONE.into());
            }
            return Ok(changes);
        }
        check_env(&changes.env_add)?;
        check_constraints(&changes.constraint_add)?;
        // As create: a bad health setting is refused here when it is one whatever the
        // service has (the manager checks the rest against the service).
        if changes.health.disable {
            changes.health.apply(None)?;
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_split_like_a_shell() {
        assert_eq!(
            split_args(r#"sh -c 'echo "hi there"; sleep 1'"#).unwrap(),
            ["sh", "-c", r#"echo "hi there"; sleep 1"#]
        );
        assert_eq!(
            split_args(r#"  a "b \"c\" d"  e\ f '' "#).unwrap(),
            ["a", r#"b "c" d"#, "e f", ""]
        );
        assert_eq!(split_args("").unwrap(), Vec::<String>::new());
        assert!(split_args("'open").unwrap_err().contains("unclosed quote"));
        assert!(split_args("\"open").is_err());
    }
}
