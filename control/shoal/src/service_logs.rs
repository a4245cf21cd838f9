//! `service logs`: the parsing of its `--tail` and `--since` values and the prefix put
//! before each line (Docker's `NAME.SLOT.TASKID@NODE    | line`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a manager waits for another node's lines (its node port) before naming the
/// node and its tasks in a warning.
pub const NODE_LOGS_DEADLINE: Duration = Duration::from_secs(5);

/// While following, a node sends a batch (empty if it has no line) at least this often,
/// so that both ends notice the other has gone.
pub const FOLLOW_HEARTBEAT: Duration = Duration::from_secs(2);

/// While following, a node that sent nothing for this long is taken as gone.
pub const FOLLOW_IDLE: Duration = Duration::from_secs(10);

/// What a manager asks a node for (over the node port): the lines of this service's
/// task containers, read from the node's dockerd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeLogsRequest {
    pub service_id: String,
    /// Only these tasks' containers; `None`: every task of the service on the node,
    /// including (when following) those that start later.
    pub tasks: Option<BTreeSet<String>>,
    pub tail: Option<String>,
    /// Unix seconds.
    pub since: Option<i64>,
    /// Keep sending lines as the containers write them, in batches, until the manager
    /// goes away.
    #[serde(default)]
    pub follow: bool,
}

/// A node's answer (or, when following, one batch of it): its lines (with dockerd's
/// timestamps) and what went wrong.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeLogsReply {
    pub lines: Vec<LogLine>,
    pub warnings: Vec<String>,
}

/// One line of a task container, with the timestamp dockerd put before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 with nanoseconds as dockerd writes it; empty if it gave none.
    pub time: String,
    pub task_id: String,
    /// Written to the container's stderr (else its stdout).
    #[serde(default)]
    pub stderr: bool,
    pub text: String,
}

impl LogLine {
    /// From a line dockerd wrote with `timestamps`: `TIME TEXT`.
    pub fn split(task_id: &str, stderr: bool, line: &str) -> LogLine {
        let (time, text) = match line.split_once(' ') {
            Some((time, text)) if time.len() >= 20 && time.as_bytes()[4] == b'-' => (time, text),
            _ => ("", line),
        };
        LogLine {
            time: time.to_string(),
            task_id: task_id.to_string(),
            stderr,
            text: text.to_string(),
        }
    }
}

/// One line of `service logs` as the agent answers it: a node's line with whose it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// RFC 3339 with nanoseconds as dockerd writes it; empty if it gave none.
    pub time: String,
    pub node_id: String,
    pub service_id: String,
    pub task_id: String,
    #[serde(default)]
    pub stderr: bool,
    pub text: String,
    /// The CLI's prefix (`web.1.abcdef123456@node1`), `None` with `--raw`.
    pub prefix: Option<String>,
}

impl LogRecord {
    /// A key that sorts as time does: the second, then the fraction padded to 9 digits
    /// (dockerd drops trailing zeros, so the text alone does not sort).
    fn sort_key(&self) -> (String, String) {
        let t = self.time.trim_end_matches(['Z', 'z']);
        let (secs, frac) = t.split_once('.').unwrap_or((t, ""));
        (secs.to_string(), format!("{frac:0<9}"))
    }

    /// The line as the `shoal` CLI prints it: the prefix, then (`-t`) the timestamp.
    pub fn cli_line(&self, timestamps: bool) -> String {
        let text = if timestamps && !self.time.is_empty() {
            format!("{} {}", self.time, self.text)
        } else {
            self.text.clone()
        };
        format_line(self.prefix.as_deref(), &text)
    }

    /// The line as Docker's Engine API sends it (`/services/{id}/logs`): the timestamp
    /// with 9 fraction digits (`timestamps`), Docker's context details (`details`:
    /// the node's, service's and task's IDs, which the docker CLI reads to print its
    /// prefix), the text and a newline.
    pub fn engine_line(&self, timestamps: bool, details: bool) -> String {
        let mut out = String::new();
        if timestamps {
            out.push_str(&fixed_nanos(&self.time));
            out.push(' ');
        }
        if details {
            let escape =
                |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            out.push_str(&format!(
                "com.docker.swarm.node.id={},com.docker.swarm.service.id={},com.docker.swarm.task.id={} ",
                escape(&self.node_id),
                escape(&self.service_id),
                escape(&self.task_id)
            ));
        }
        out.push_str(&self.text);
        out.push('\n');
        out
    }
}

/// dockerd's RFC 3339 time with its fraction at 9 digits (Docker's `RFC3339NanoFixed`);
/// the Unix epoch when dockerd gave none.
fn fixed_nanos(time: &str) -> String {
    let Some(t) = time.strip_suffix('Z').filter(|t| t.len() >= 19) else {
        return "1970-01-01T00:00:00.000000000Z".into();
    };
    let (secs, frac) = t.split_once('.').unwrap_or((t, ""));
    format!("{secs}.{:0<9.9}Z", frac)
}

/// Docker's multiplexed stream frame (`application/vnd.docker.multiplexed-stream`):
/// the stream (1 stdout, 2 stderr), three zero bytes, the payload's length (big
/// endian), the payload.
pub fn multiplexed_frame(stderr: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.push(if stderr { 2 } else { 1 });
    frame.extend_from_slice(&[0, 0, 0]);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Every node's records in one sequence, ordered by time (stable: a node's own order
/// is kept among equal times).
pub fn merge(mut records: Vec<LogRecord>) -> Vec<LogRecord> {
    records.sort_by_cached_key(LogRecord::sort_key);
    records
}

/// `--tail`: `all` or a non-negative number of lines; returns the value dockerd takes.
pub fn parse_tail(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("all") {
        return Ok("all".into());
    }
    t.parse::<u64>()
        .map(|n| n.to_string())
        .map_err(|_| format!("invalid --tail value {text:?}: use a number of lines or \"all\""))
}

/// `--since`: an RFC 3339 time (`2026-12-06T19:00:00Z`, `2026-12-06T20:00:00+01:00`,
/// `2026-12-06`), a Unix timestamp (`1796000000`), or a duration back from `now`
/// (`10m`, `1h30m`, `90s`). Returns Unix seconds.
pub fn parse_since(text: &str, now: i64) -> Result<i64, String> {
    let bad = || {
        format!(
            "invalid --since value {text:?}: use an RFC 3339 time (2026-12-06T19:00:00Z), \
             a Unix timestamp, or a duration such as 10m"
        )
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs = t.split('.').next().unwrap_or_default();
        return secs.parse::<i64>().map_err(|_| bad());
    }
    if t.len() >= 10 && t.as_bytes()[4] == b'-' {
        return parse_rfc3339(t).ok_or_else(bad);
    }
    let ms = crate::cli::service::parse_duration(t).map_err(|_| bad())?;
    Ok(now - (ms / 1000) as i64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_rfc3339(t: &str) -> Option<i64> {
    let num = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (date, rest) = t.split_at(10);
    let mut parts = date.split('-');
    let (y, m, d) = (
        num(parts.next()?)?,
        num(parts.next()?)?,
        num(parts.next()?)?,
    );
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > days_in_month {
        return None;
    }
    let day = days_from_civil(y, m, d) * 86_400;
    if rest.is_empty() {
        return Some(day);
    }
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    if rest.len() < 8 || rest.as_bytes()[2] != b':' || rest.as_bytes()[5] != b':' {
        return None;
    }
    let (h, mi, s) = (num(&rest[0..2])?, num(&rest[3..5])?, num(&rest[6..8])?);
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut zone = &rest[8..];
    if let Some(frac) = zone.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        zone = &frac[digits..];
    }
    let offset = match zone {
        "Z" | "z" => 0,
        _ => {
            let sign = match zone.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let z = &zone[1..];
            if z.len() != 5 || z.as_bytes()[2] != b':' {
                return None;
            }
            let (oh, om) = (num(&z[0..2])?, num(&z[3..5])?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    Some(day + h * 3600 + mi * 60 + s - offset)
}

/// How each line is prefixed (`--no-task-ids`, `--no-trunc`, `--raw`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixStyle {
    pub no_task_ids: bool,
    pub no_trunc: bool,
    pub raw: bool,
}

/// The prefix of a task's lines: `web.1.abcdef123456@node1` (the task's display name,
/// its ID, the node's hostname), or `None` with `--raw`.
pub fn prefix(style: PrefixStyle, display_name: &str, task_id: &str, node: &str) -> Option<String> {
    if style.raw {
        return None;
    }
    if style.no_task_ids {
        return Some(format!("{display_name}@{node}"));
    }
    let id = if style.no_trunc {
        task_id
    } else {
        &task_id[..task_id.len().min(12)]
    };
    Some(format!("{display_name}.{id}@{node}"))
}

/// One output line: `PREFIX    | line`, or the bare line without a prefix.
pub fn format_line(prefix: Option<&str>, line: &str) -> String {
    match prefix {
        Some(p) => format!("{p}    | {line}"),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_is_all_or_a_count() {
        assert_eq!(parse_tail("all").unwrap(), "all");
        assert_eq!(parse_tail("ALL").unwrap(), "all");
        assert_eq!(parse_tail("20").unwrap(), "20");
        assert_eq!(parse_tail("0").unwrap(), "0");
        for bad in ["-1", "ten", "", "1.5"] {
            let e = parse_tail(bad).unwrap_err();
            assert!(e.contains("--tail"), "{e}");
        }
    }

    #[test]
    fn since_takes_rfc3339_unix_and_durations() {
        let now = 1_796_000_000;
        assert_eq!(parse_since("1970-01-01T00:00:00Z", now).unwrap(), 0);
        assert_eq!(
            parse_since("2000-03-01T00:00:00Z", now).unwrap(),
            951_868_800
        );
        assert_eq!(
            parse_since("2026-12-06T19:00:00Z", now).unwrap(),
            parse_since("2026-12-06T20:00:00+01:00", now).unwrap()
        );
        assert_eq!(
            parse_since("2026-12-06T19:00:00.123456789Z", now).unwrap(),
            parse_since("2026-12-06T19:00:00Z", now).unwrap()
        );
        assert_eq!(
            parse_since("2026-12-06", now).unwrap(),
            parse_since("2026-12-06T00:00:00Z", now).unwrap()
        );
        assert_eq!(parse_since("1796000000", now).unwrap(), 1_796_000_000);
        assert_eq!(parse_since("1796000000.5", now).unwrap(), 1_796_000_000);
        assert_eq!(parse_since("10m", now).unwrap(), now - 600);
        assert_eq!(parse_since("1h30m", now).unwrap(), now - 5400);
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-02-30",
            "2026-12-06T25:00:00Z",
            "2026-12-06T19:00:00",
            "2026-12-06T19:00:00+0100",
            "10x",
        ] {
            let e = parse_since(bad, now).unwrap_err();
            assert!(e.contains("--since"), "{bad}: {e}");
        }
    }

    fn record(time: &str, node: &str, text: &str) -> LogRecord {
        LogRecord {
            time: time.into(),
            node_id: format!("id-{node}"),
            service_id: "svc1".into(),
            task_id: format!("task-{node}"),
            stderr: false,
            text: text.into(),
            prefix: Some(format!("web.1@{node}")),
        }
    }

    #[test]
    fn lines_merge_by_time_across_nodes() {
        let records = vec![
            record("2026-12-06T19:00:00.5Z", "n1", "second"),
            record("2026-12-06T19:00:01Z", "n1", "fourth"),
            record("2026-12-06T19:00:00.123456789Z", "n2", "first"),
            record("2026-12-06T19:00:00.6Z", "n3", "third"),
        ];
        let merged = merge(records);
        let lines: Vec<String> = merged.iter().map(|r| r.cli_line(false)).collect();
        assert_eq!(
            lines,
            vec![
                "web.1@n2    | first",
                "web.1@n1    | second",
                "web.1@n3    | third",
                "web.1@n1    | fourth",
            ]
        );
        assert_eq!(
            merged[0].cli_line(true),
            "web.1@n2    | 2026-12-06T19:00:00.123456789Z first"
        );
        let bare = LogLine::split("t1", true, "no time here");
        assert_eq!((bare.time.as_str(), bare.stderr), ("", true));
        let stamped = LogLine::split("t1", false, "2026-12-06T19:00:00.5Z hello world");
        assert_eq!(stamped.time, "2026-12-06T19:00:00.5Z");
        assert_eq!(stamped.text, "hello world");
        let mut raw = record("", "n1", "no time here");
        raw.prefix = None;
        assert_eq!(raw.cli_line(true), "no time here");
    }

    #[test]
    fn engine_lines_are_what_the_docker_cli_parses() {
        let mut r = record("2026-12-06T19:00:00.5Z", "n1", "hello");
        r.node_id = "node 1".into();
        assert_eq!(r.engine_line(false, false), "hello\n");
        assert_eq!(
            r.engine_line(true, true),
            "2026-12-06T19:00:00.500000000Z com.docker.swarm.node.id=node+1,\
             com.docker.swarm.service.id=svc1,com.docker.swarm.task.id=task-n1 hello\n"
        );
        assert_eq!(
            fixed_nanos("2026-12-06T19:00:00Z"),
            "2026-12-06T19:00:00.000000000Z"
        );
        assert_eq!(
            fixed_nanos("2026-12-06T19:00:00.123456789Z"),
            "2026-12-06T19:00:00.123456789Z"
        );
        assert_eq!(fixed_nanos(""), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            multiplexed_frame(true, b"hi\n"),
            vec![2, 0, 0, 0, 0, 0, 0, 3, b'h', b'i', b'\n']
        );
        assert_eq!(multiplexed_frame(false, b"")[0], 1);
    }

    #[test]
    fn prefixes_follow_docker() {
        let id = "abcdef1234567890abcdef";
        let d = PrefixStyle::default();
        assert_eq!(
            prefix(d, "web.1", id, "node1").as_deref(),
            Some("web.1.abcdef123456@node1")
        );
        let full = PrefixStyle {
            no_trunc: true,
            ..d
        };
        assert_eq!(
            prefix(full, "web.1", id, "node1").as_deref(),
            Some("web.1.abcdef1234567890abcdef@node1")
        );
        let no_ids = PrefixStyle {
            no_task_ids: true,
            ..d
        };
        assert_eq!(
            prefix(no_ids, "web.1", id, "node1").as_deref(),
            Some("web.1@node1")
        );
        let raw = PrefixStyle { raw: true, ..d };
        assert_eq!(prefix(raw, "web.1", id, "node1"), None);
        assert_eq!(
            format_line(Some("web.1.abcdef123456@node1"), "hello"),
            "web.1.abcdef123456@node1    | hello"
        );
        assert_eq!(format_line(None, "hello"), "hello");
    }
}
