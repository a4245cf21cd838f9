//! `shoal service logs`: its flags, the agent's request, and printing the lines (once
//! or as they come with `-f`).

use clap::Args;

use crate::api::{client::Client, Reply, Request};
use crate::cli::{call, CliError};

#[derive(Args, Debug, Clone, PartialEq)]
pub struct LogsArgs {
    /// Number of lines from the end of each task's log ("all" by default)
    #[arg(long, short = 'n', value_name = "N")]
    pub tail: Option<String>,
    /// Only lines since this time: RFC 3339 (2026-12-06T19:00:00Z), a Unix timestamp, or
    /// a duration back from now (10m, 1h30m)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Put each line's timestamp (RFC 3339, nanoseconds) after its prefix
    #[arg(long, short = 't')]
    pub timestamps: bool,
    /// Leave the task IDs out of the prefixes
    #[arg(long)]
    pub no_task_ids: bool,
    /// Print whole task IDs in the prefixes
    #[arg(long)]
    pub no_trunc: bool,
    /// Print the lines without any prefix
    #[arg(long)]
    pub raw: bool,
    /// Follow the output: lines from every node as they are written, until interrupted
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Show extra details (not available yet: refused)
    #[arg(long)]
    pub details: bool,
    /// A service's name or ID, or a task's ID
    #[arg(value_name = "SERVICE|TASK")]
    pub service: String,
}

/// `service logs -f`: each batch printed as it comes (warnings on stderr at once),
/// until the agent ends the stream or stdout is closed.
fn follow_logs(client: &Client, request: &Request, timestamps: bool) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut failed = None;
    client.call_stream(request, |reply| {
        let Reply::ServiceLogs { records, warnings } = reply else {
            failed = Some(CliError::Output("unexpected reply to service logs".into()));
            return false;
        };
        for w in warnings {
            eprintln!("WARNING: {w}");
        }
        let mut out = std::io::stdout().lock();
        let written = records
            .iter()
            .try_for_each(|r| writeln!(out, "{}", r.cli_line(timestamps)))
            .and_then(|()| out.flush());
        // A closed stdout (`| head`) ends the command quietly.
        written.is_ok()
    })?;
    failed.map_or(Ok(()), Err)
}

/// The agent's request for `service logs`, after checking its flags (a flag that is not
/// carried out yet is refused).
fn logs_request(a: &LogsArgs) -> Result<Request, CliError> {
    if a.details {
        return Err(CliError::Usage(
            "service logs: --details is not supported".into(),
        ));
    }
    let tail = a
        .tail
        .as_deref()
        .map(crate::service_logs::parse_tail)
        .transpose()
        .map_err(CliError::Usage)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let since = a
        .since
        .as_deref()
        .map(|t| crate::service_logs::parse_since(t, now))
        .transpose()
        .map_err(CliError::Usage)?;
    Ok(Request::ServiceLogs {
        service: a.service.clone(),
        tail,
        since,
        no_task_ids: a.no_task_ids,
        no_trunc: a.no_trunc,
        raw: a.raw,
        follow: a.follow,
    })
}

/// Runs `service logs`: once, or following the stream with `-f`.
pub(super) fn run(
    client: &Client,
    a: &LogsArgs,
    warnings: &mut Vec<String>,
) -> Result<String, CliError> {
    if a.follow {
        follow_logs(client, &logs_request(a)?, a.timestamps)?;
        return Ok(String::new());
    }
    match call(client, &logs_request(a)?)? {
        Reply::ServiceLogs {
            records,
            warnings: w,
        } => {
            warnings.extend(w);
            Ok(records
                .iter()
                .map(|r| format!("{}\n", r.cli_line(a.timestamps)))
                .collect())
        }
        _ => Err(CliError::Output("unexpected reply to service logs".into())),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Logs {
        #[command(flatten)]
        args: LogsArgs,
    }

    fn request(args: &[&str]) -> Result<Request, String> {
        let argv = std::iter::once(&"logs").chain(args);
        let parsed = Logs::try_parse_from(argv).map_err(|e| e.to_string())?;
        logs_request(&parsed.args).map_err(|e| e.to_string())
    }

    #[test]
    fn logs_flags_reach_the_request() {
        let Request::ServiceLogs {
            service,
            tail,
            since,
            no_task_ids,
            no_trunc,
            raw,
            follow,
        } = request(&[
            "--tail",
            "5",
            "--since",
            "2026-12-06T19:00:00Z",
            "-f",
            "--no-task-ids",
            "--no-trunc",
            "--raw",
            "web",
        ])
        .unwrap()
        else {
            panic!("not a logs request");
        };
        assert_eq!(service, "web");
        assert_eq!(tail.as_deref(), Some("5"));
        assert_eq!(since, Some(1_796_583_600));
        assert!(follow && no_task_ids && no_trunc && raw);
        let Request::ServiceLogs {
            tail,
            since,
            follow,
            ..
        } = request(&["-n", "all", "web"]).unwrap()
        else {
            panic!("not a logs request");
        };
        assert_eq!(tail.as_deref(), Some("all"));
        assert_eq!(since, None);
        assert!(!follow);
    }

    #[test]
    fn logs_refuses_bad_values_and_what_it_does_not_do() {
        for (args, needle) in [
            (&["--details", "web"][..], "--details"),
            (&["--tail", "many", "web"][..], "--tail"),
            (&["--since", "last week", "web"][..], "--since"),
        ] {
            let e = request(args).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}
