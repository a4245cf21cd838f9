//! Placement constraints (`--constraint node.labels.zone==a`), as Swarm parses them.

use shoal_cluster::store::{Node, Role, Service};

/// One placement constraint: `node.<key> ==|!= value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    key: ConstraintKey,
    equal: bool,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ConstraintKey {
    Role,
    Hostname,
    Id,
    Label(String),
}

impl Constraint {
    /// Parses `node.role==manager`, `node.hostname!=h1`, `node.id==ID`,
    /// `node.labels.zone==a`.
    pub fn parse(text: &str) -> Result<Constraint, String> {
        let (lhs, equal, rhs) = if let Some((l, r)) = text.split_once("==") {
            (l, true, r)
        } else if let Some((l, r)) = text.split_once("!=") {
            (l, false, r)
        } else {
            return Err(format!(
                "invalid constraint {text:?}: expected KEY==VALUE or KEY!=VALUE"
            ));
        };
        let (lhs, value) = (lhs.trim(), rhs.trim());
        if value.is_empty() {
            return Err(format!("invalid constraint {text:?}: empty value"));
        }
        let key = match lhs {
            "node.role" => {
                if value != "manager" && value != "worker" {
                    return Err(format!(
                        "invalid constraint {text:?}: node.role is manager or worker"
                    ));
                }
                ConstraintKey::Role
            }
            "node.hostname" => ConstraintKey::Hostname,
            "node.id" => ConstraintKey::Id,
            other => match other.strip_prefix("node.labels.") {
                Some(label) if !label.is_empty() => ConstraintKey::Label(label.to_string()),
                _ => {
                    return Err(format!(
                        "invalid constraint {text:?}: the key must be node.role, node.hostname, node.id or node.labels.<name>"
                    ))
                }
            },
        };
        Ok(Constraint {
            key,
            equal,
            value: value.to_string(),
        })
    }

    pub fn matches(&self, node: &Node) -> bool {
        let actual = match &self.key {
            ConstraintKey::Role => Some(match node.role {
                Role::Manager => "manager",
                Role::Worker => "worker",
            }),
            ConstraintKey::Hostname => Some(node.hostname.as_str()),
            ConstraintKey::Id => Some(node.id.as_str()),
            ConstraintKey::Label(l) => node.labels.get(l).map(String::as_str),
        };
        (actual == Some(self.value.as_str())) == self.equal
    }
}

pub(super) fn constraints_of(service: &Service) -> Vec<Constraint> {
    service
        .spec
        .constraints
        .iter()
        .filter_map(|c| Constraint::parse(c).ok())
        .collect()
}

pub(super) fn meets(node: &Node, constraints: &[Constraint]) -> bool {
    constraints.iter().all(|c| c.matches(node))
}
