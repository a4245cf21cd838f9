//! Variable interpolation in a compose file's text (`${VAR:-default}` and the rest of
//! docker's forms) and the `.env` file beside it.

use std::collections::BTreeMap;

/// Expands `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`, `${VAR?err}`,
/// `$VAR` and `$$` (a literal `$`) in `text`, line by line so a later parse error still
/// points at the right line. `file` names the file in errors.
pub fn interpolate(
    text: &str,
    file: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let col = line.len() - rest.len() + i + 1;
            let at = || format!("{file}:{}:{col}", n + 1);
            if let Some(r) = after.strip_prefix('$') {
                out.push('$');
                rest = r;
            } else if let Some(r) = after.strip_prefix('{') {
                let end = r
                    .find('}')
                    .ok_or_else(|| format!("{}: invalid interpolation: no closing }}", at()))?;
                out.push_str(&expand(&r[..end], lookup).map_err(|e| format!("{}: {e}", at()))?);
                rest = &r[end + 1..];
            } else {
                let len = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                if len == 0 {
                    return Err(format!(
                        "{}: invalid interpolation: a lone $ (write $$ for a literal $)",
                        at()
                    ));
                }
                out.push_str(&lookup(&after[..len]).unwrap_or_default());
                rest = &after[len..];
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

fn expand(expr: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let name_len = expr
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(expr.len());
    let (name, op) = expr.split_at(name_len);
    if name.is_empty() {
        return Err(format!("invalid interpolation ${{{expr}}}"));
    }
    let value = lookup(name);
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    Ok(match op {
        "" => value.unwrap_or_default(),
        _ if op.starts_with(":-") => {
            if set_nonempty {
                value.unwrap_or_default()
            } else {
                op[2..].to_string()
            }
        }
        _ if op.starts_with('-') => value.unwrap_or_else(|| op[1..].to_string()),
        _ if op.starts_with(":?") || op.starts_with('?') => {
            let unset = if op.starts_with(':') {
                !set_nonempty
            } else {
                value.is_none()
            };
            if unset {
                let msg = op.trim_start_matches(':')[1..].trim();
                return Err(if msg.is_empty() {
                    format!("required variable {name} is missing a value")
                } else {
                    format!("required variable {name} is missing a value: {msg}")
                });
            }
            value.unwrap_or_default()
        }
        _ => return Err(format!("invalid interpolation ${{{expr}}}")),
    })
}

/// `KEY=VALUE` lines of a `.env` file (blank lines and `#` comments skipped, quotes
/// around a value removed).
pub fn parse_env_file(text: &str, file: &str) -> Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("{file}:{}:1: expected KEY=VALUE", n + 1))?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
            .unwrap_or(v);
        vars.insert(k.trim().to_string(), v.to_string());
    }
    Ok(vars)
}
