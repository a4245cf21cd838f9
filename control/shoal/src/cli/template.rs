//! Docker's `--format`: the small part of Go's `text/template` the CLI needs,
//! evaluated against the JSON object a command has for each item.
//!
//! Supported actions: `{{.}}`, `{{.Field}}`, `{{.A.B.C}}` (dotted paths through
//! objects), `{{json .Field}}` / `{{json .}}`, and the `{{- ` / ` -}}` trim markers.
//! Values print like Go's `fmt` (`map[k:v]`, `[a b]`, `<nil>`); `json` prints compact
//! JSON. Errors read like Go's (`template: :1:2: executing "" at <.Nope>: can't
//! evaluate field Nope`, `template: :1: unclosed action`).

use std::fmt::Write as _;

use serde_json::Value;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Action(Action),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Action {
    /// 1-based line and 0-based column of the action's first word (Go's numbering).
    line: usize,
    col: usize,
    /// The field path as written, for error messages (`.A.B`).
    text: String,
    json: bool,
    /// Empty for `.`.
    path: Vec<String>,
}

/// What a `--format` value asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// No format, or `table` alone: the command's usual output.
    Default,
    /// `table TEMPLATE`: a header row, then one row per item, columns aligned.
    Table(Template),
    /// `TEMPLATE` (or `json`, which is `{{json .}}`): one line per item.
    Lines(Template),
}

impl Format {
    /// Docker's reading of a `--format` value: `json`, `table[ TEMPLATE]` or a template,
    /// with `\t` and `\n` in it read as tab and newline.
    pub fn parse(text: Option<&str>) -> Result<Format, String> {
        match text {
            None | Some("") | Some("table") => Ok(Format::Default),
            Some("json") => Ok(Format::Lines(Template::parse("{{json .}}")?)),
            Some(t) => match t.strip_prefix("table") {
                Some(rest) => Ok(Format::Table(Template::parse(&unescape(
                    rest.trim_matches(' '),
                ))?)),
                None => Ok(Format::Lines(Template::parse(&unescape(t))?)),
            },
        }
    }
}

/// `\t` and `\n` (backslash, letter) as tab and newline, as the docker CLI reads them.
pub fn unescape(text: &str) -> String {
    text.replace("\\t", "\t").replace("\\n", "\n")
}

fn line_col(src: &str, at: usize) -> (usize, usize) {
    let before = &src[..at];
    let line = 1 + before.matches('\n').count();
    let col = before.rfind('\n').map_or(at, |nl| at - nl - 1);
    (line, col)
}

impl Template {
    /// Parses `src`; a malformed template is one line in Go's words.
    pub fn parse(src: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = 0usize;
        while let Some(found) = src[rest..].find("{{") {
            let open = rest + found;
            let mut text = &src[rest..open];
            let mut inner_start = open + 2;
            // `{{- ` trims the whitespace before the action.
            if src[inner_start..].starts_with("- ")
                || src[inner_start..].starts_with("-\t")
                || src[inner_start..].starts_with("-\n")
            {
                text = text.trim_end();
                inner_start += 1;
            }
            let (line, _) = line_col(src, open);
            let Some(close_rel) = src[inner_start..].find("}}") else {
                return Err(format!("template: :{line}: unclosed action"));
            };
            let mut inner_end = inner_start + close_rel;
            let mut after = inner_end + 2;
            let mut trim_after = false;
            if inner_end > inner_start
                && src[..inner_end].ends_with('-')
                && src[..inner_end - 1].ends_with(char::is_whitespace)
            {
                inner_end -= 1;
                trim_after = true;
            }
            if !text.is_empty() {
                parts.push(Part::Text(text.to_owned()));
            }
            let inner = &src[inner_start..inner_end];
            if inner.contains("{{") {
                return Err(format!("template: :{line}: unclosed action"));
            }
            let lead = inner.len() - inner.trim_start().len();
            let (aline, col) = line_col(src, inner_start + lead);
            parts.push(Part::Action(parse_action(inner.trim(), aline, col)?));
            if trim_after {
                after += src[after..].len() - src[after..].trim_start().len();
            }
            rest = after;
        }
        if rest < src.len() {
            parts.push(Part::Text(src[rest..].to_owned()));
        }
        Ok(Template { parts })
    }

    /// The template's output for `data`; a field `data` lacks is an error.
    pub fn render(&self, data: &Value) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Action(a) => {
                    let value = a.lookup(data)?;
                    if a.json {
                        out.push_str(&json(value));
                    } else {
                        go_print(&mut out, value);
                    }
                }
            }
        }
        Ok(out)
    }
}

fn parse_action(inner: &str, line: usize, col: usize) -> Result<Action, String> {
    let words: Vec<&str> = inner.split_whitespace().collect();
    let unsupported = || {
        format!(
            "template: :{line}:{col}: unsupported action {{{{{inner}}}}}: --format knows {{{{.Field}}}}, {{{{.A.B}}}} and {{{{json .Field}}}}"
        )
    };
    let (json, path_word) = match words.as_slice() {
        [] => return Err(format!("template: :{line}: missing value for command")),
        [p] if p.starts_with('.') => (false, *p),
        [p, ..] if p.starts_with('.') => {
            return Err(format!(
                "template: :{line}:{col}: can't give argument to non-function {p}"
            ))
        }
        ["json", p] if p.starts_with('.') => (true, *p),
        ["json", args @ ..] if args.len() != 1 => {
            return Err(format!(
                "template: :{line}:{col}: wrong number of args for json: want 1 got {}",
                args.len()
            ))
        }
        _ => return Err(unsupported()),
    };
    let path = if path_word == "." {
        vec![]
    } else {
        let fields: Vec<String> = path_word[1..].split('.').map(str::to_owned).collect();
        let ok = |f: &String| !f.is_empty() && f.chars().all(|c| c.is_alphanumeric() || c == '_');
        if !fields.iter().all(ok) {
            return Err(format!("template: :{line}: bad field {path_word:?}"));
        }
        fields
    };
    // Errors point at the field, as Go's do.
    let col = col + inner.find(path_word).unwrap_or(0);
    Ok(Action {
        line,
        col,
        text: path_word.to_owned(),
        json,
        path,
    })
}

impl Action {
    fn lookup<'a>(&self, data: &'a Value) -> Result<&'a Value, String> {
        let mut value = data;
        for field in &self.path {
            value = match value {
                Value::Object(map) => map.get(field),
                _ => None,
            }
            .ok_or_else(|| {
                let kind = match value {
                    Value::Object(_) => String::new(),
                    Value::Null => " in <nil>".to_owned(),
                    Value::Bool(_) => " in type bool".to_owned(),
                    Value::Number(_) => " in type number".to_owned(),
                    Value::String(_) => " in type string".to_owned(),
                    Value::Array(_) => " in type list".to_owned(),
                };
                format!(
                    "template: :{}:{}: executing \"\" at <{}>: can't evaluate field {field}{kind}",
                    self.line, self.col, self.text
                )
            })?;
        }
        Ok(value)
    }
}

/// Go's `json` template function: compact, with `<`, `>` and `&` escaped.
fn json(value: &Value) -> String {
    serde_json::to_string(value)
        .unwrap_or_default()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// A value as Go's `fmt.Print` shows the decoded JSON.
fn go_print(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("<nil>"),
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => out.push_str(s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                go_print(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push_str("map[");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                let _ = write!(out, "{k}:");
                go_print(out, &map[k]);
            }
            out.push(']');
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(src: &str, data: &Value) -> Result<String, String> {
        Template::parse(src)?.render(data)
    }

    fn node() -> Value {
        json!({
            "ID": "abc",
            "Self": true,
            "Version": { "Index": 3 },
            "Description": { "Hostname": "h1", "Engine": { "EngineVersion": "27.3.1" } },
            "Spec": { "Labels": { "a": "1", "b": "<x&y>" }, "Role": "manager" },
            "List": ["x", 2, null],
        })
    }

    #[test]
    fn fields_and_nested_paths() {
        let n = node();
        assert_eq!(render("{{.ID}}", &n).unwrap(), "abc");
        assert_eq!(render("{{ .ID }}\t{{.Self}}", &n).unwrap(), "abc\ttrue");
        assert_eq!(
            render("{{.Description.Engine.EngineVersion}}", &n).unwrap(),
            "27.3.1"
        );
        assert_eq!(render("v{{.Version.Index}}!", &n).unwrap(), "v3!");
        assert_eq!(render("no actions", &n).unwrap(), "no actions");
        assert_eq!(render("", &n).unwrap(), "");
    }

    #[test]
    fn values_print_like_go() {
        let n = node();
        assert_eq!(render("{{.Spec.Labels}}", &n).unwrap(), "map[a:1 b:<x&y>]");
        assert_eq!(render("{{.List}}", &n).unwrap(), "[x 2 <nil>]");
        assert_eq!(render("{{.}}", &json!("plain")).unwrap(), "plain");
    }

    #[test]
    fn json_function() {
        let n = node();
        assert_eq!(render("{{json .ID}}", &n).unwrap(), "\"abc\"");
        assert_eq!(
            render("{{json .Spec.Labels}}", &n).unwrap(),
            r#"{"a":"1","b":"\u003cx\u0026y\u003e"}"#
        );
        assert_eq!(
            render("{{json .}}", &json!({"B": 1, "A": [true]})).unwrap(),
            r#"{"A":[true],"B":1}"#
        );
    }

    #[test]
    fn trim_markers() {
        let n = node();
        assert_eq!(render("a  {{- .ID -}}  \n b", &n).unwrap(), "aabcb");
        assert_eq!(render("a {{.ID}} b", &n).unwrap(), "a abc b");
    }

    #[test]
    fn unknown_fields_are_one_error_line() {
        let n = node();
        assert_eq!(
            render("{{.Nope}}", &n).unwrap_err(),
            "template: :1:2: executing \"\" at <.Nope>: can't evaluate field Nope"
        );
        assert_eq!(
            render("x\n{{ .Description.Nope }}", &n).unwrap_err(),
            "template: :2:3: executing \"\" at <.Description.Nope>: can't evaluate field Nope"
        );
        assert_eq!(
            render("{{.ID.X}}", &n).unwrap_err(),
            "template: :1:2: executing \"\" at <.ID.X>: can't evaluate field X in type string"
        );
        assert_eq!(
            render("{{json .Nope}}", &n).unwrap_err(),
            "template: :1:7: executing \"\" at <.Nope>: can't evaluate field Nope"
        );
    }

    #[test]
    fn bad_syntax_is_one_error_line() {
        for (src, want) in [
            ("{{.ID", "template: :1: unclosed action"),
            ("a\n{{.ID}} {{", "template: :2: unclosed action"),
            ("{{.ID {{.X}}", "template: :1: unclosed action"),
            ("{{}}", "template: :1: missing value for command"),
            ("{{  }}", "template: :1: missing value for command"),
            ("{{.A..B}}", "template: :1: bad field \".A..B\""),
            (
                "{{json}}",
                "template: :1:2: wrong number of args for json: want 1 got 0",
            ),
            (
                "{{.ID .X}}",
                "template: :1:2: can't give argument to non-function .ID",
            ),
        ] {
            assert_eq!(Template::parse(src).unwrap_err(), want, "{src}");
        }
        assert!(Template::parse("{{if .Self}}*{{end}}")
            .unwrap_err()
            .starts_with("template: :1:2: unsupported action {{if .Self}}"));
        // A lone `}}` is text, as in Go.
        assert_eq!(render("a}}", &node()).unwrap(), "a}}");
    }

    #[test]
    fn format_values() {
        assert_eq!(Format::parse(None).unwrap(), Format::Default);
        assert_eq!(Format::parse(Some("table")).unwrap(), Format::Default);
        assert_eq!(
            Format::parse(Some("json")).unwrap(),
            Format::Lines(Template::parse("{{json .}}").unwrap())
        );
        assert_eq!(
            Format::parse(Some("table {{.ID}}\\t{{.Hostname}}")).unwrap(),
            Format::Table(Template::parse("{{.ID}}\t{{.Hostname}}").unwrap())
        );
        assert_eq!(
            Format::parse(Some("{{.ID}}\\n")).unwrap(),
            Format::Lines(Template::parse("{{.ID}}\n").unwrap())
        );
        assert!(Format::parse(Some("table {{.ID"))
            .unwrap_err()
            .contains("unclosed action"));
    }
}
