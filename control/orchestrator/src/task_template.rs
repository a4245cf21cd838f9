//! Docker's task templates (`service create --hostname '{{.Service.Name}}-{{.Task.Slot}}'`):
//! text with `{{.Field}}` actions, expanded per task by the node that starts it.
//!
//! Only field references are understood, the ones Swarm gives a task's hostname:
//! [`FIELDS`]. Anything else between `{{` and `}}` (an unknown field, a function, a
//! pipeline) is refused when the service is created or updated, so a typo fails there
//! and not later on every node.

/// The fields a template may name.
pub const FIELDS: [&str; 7] = [
    ".Service.Name",
    ".Service.ID",
    ".Task.Slot",
    ".Task.ID",
    ".Task.Name",
    ".Node.ID",
    ".Node.Hostname",
];

/// What a template is expanded with: one task on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskContext<'a> {
    pub service_name: &'a str,
    pub service_id: &'a str,
    /// 0 for a global service's task (Swarm's).
    pub task_slot: u64,
    pub task_id: &'a str,
    /// `<service>.<slot>.<task ID>` (Swarm's task name, the container's name).
    pub task_name: &'a str,
    pub node_id: &'a str,
    pub node_hostname: &'a str,
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<'t> {
    Text(&'t str),
    Field(&'static str),
}

/// `template` cut into text and fields, or why it is refused.
fn parse(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let bad = |why: String| format!("invalid template {template:?}: {why}");
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| bad("a {{ is not closed by }}".into()))?;
        let action = after[..close].trim();
        let field = FIELDS.iter().find(|f| **f == action).ok_or_else(|| {
            bad(format!(
                "unknown field {action:?} (known: {})",
                FIELDS.join(", ")
            ))
        })?;
        pieces.push(Piece::Field(field));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

/// Checks `template` (what `service create` and `update` do before storing it).
pub fn check(template: &str) -> Result<(), String> {
    parse(template).map(|_| ())
}

/// `template` with its fields replaced by the task's values.
pub fn expand(template: &str, cx: &TaskContext<'_>) -> Result<String, String> {
    let mut out = String::new();
    for piece in parse(template)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Field(".Service.Name") => out.push_str(cx.service_name),
            Piece::Field(".Service.ID") => out.push_str(cx.service_id),
            Piece::Field(".Task.Slot") => out.push_str(&cx.task_slot.to_string()),
            Piece::Field(".Task.ID") => out.push_str(cx.task_id),
            Piece::Field(".Task.Name") => out.push_str(cx.task_name),
            Piece::Field(".Node.ID") => out.push_str(cx.node_id),
            Piece::Field(".Node.Hostname") => out.push_str(cx.node_hostname),
            Piece::Field(other) => unreachable!("{other} is in FIELDS but not expanded"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> TaskContext<'static> {
        TaskContext {
            service_name: "web",
            service_id: "svc123",
            task_slot: 2,
            task_id: "task9",
            task_name: "web.2.task9",
            node_id: "node7",
            node_hostname: "h1",
        }
    }

    #[test]
    fn every_field_expands() {
        let all = FIELDS.map(|f| format!("{{{{{f}}}}}")).join("|");
        assert_eq!(
            expand(&all, &cx()).unwrap(),
            "web|svc123|2|task9|web.2.task9|node7|h1"
        );
        assert_eq!(
            expand("{{ .Service.Name }}-{{.Task.Slot}}.x", &cx()).unwrap(),
            "web-2.x"
        );
        assert_eq!(expand("plain", &cx()).unwrap(), "plain");
        assert_eq!(expand("", &cx()).unwrap(), "");
    }

    #[test]
    fn unknown_fields_and_broken_actions_are_refused() {
        let e = check("{{.Service.Nmae}}").unwrap_err();
        assert!(e.contains("unknown field \".Service.Nmae\""), "{e}");
        assert!(e.contains(".Node.Hostname"), "names the known fields: {e}");
        assert!(check("{{.Service.Labels}}").is_err());
        assert!(check("{{upper .Service.Name}}").is_err());
        assert!(check("{{}}").is_err());
        assert!(check("a-{{.Task.Slot").unwrap_err().contains("not closed"));
        // A lone closing brace pair is text, as in Go's templates.
        assert_eq!(expand("a}}b", &cx()).unwrap(), "a}}b");
    }
}
