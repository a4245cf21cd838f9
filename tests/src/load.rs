//! Load generators for the lab tests that prove "no failed request": the HTTP ones
//! live in `xtask::load` (shared with `cargo xtask chaos`); here, the same from a shell
//! loop inside a task's container, and [`Loads`], every load of one phase stopped
//! together.
use std::{net::SocketAddrV4, path::PathBuf, time::Duration};

pub use xtask::load::{HttpLoad, LoadReport};

use crate::{swarm::Task, LabGuard};

/// A `wget` loop inside a task's container (busybox there): each request resolves
/// `url`'s host through the container's resolver (the embedded DNS) and connects anew.
/// Counts go to files in the container, read back by [`ShellLoad::stop`].
pub struct ShellLoad<'a> {
    lab: &'a LabGuard,
    task: Task,
    name: String,
    tag: String,
}

impl<'a> ShellLoad<'a> {
    pub fn start(lab: &'a LabGuard, task: &Task, name: &str, url: &str) -> Self {
        let tag = format!(
            "/tmp/load-{}",
            name.replace(|c: char| !c.is_alphanumeric(), "-")
        );
        let script = xtask::load::wget_loop_script(&tag, url, false, Duration::from_millis(20));
        let out = lab.exec(
            &task.node,
            &["docker", "exec", "-d", &task.container, "sh", "-c", &script],
        );
        assert!(
            out.status.success(),
            "{name}: starting the wget loop in {}: {}",
            task.container,
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            lab,
            task: task.clone(),
            name: name.to_owned(),
            tag,
        }
    }

    /// Stops the loop (after its request in flight) and reads its counts.
    pub fn stop(self) -> LoadReport {
        let tag = &self.tag;
        self.lab
            .docker_exec(
                &self.task.node,
                &self.task.container,
                &["touch", &format!("{tag}.stop")],
            )
            .expect("stop the wget loop");
        let counts = crate::wait_for(
            &format!("{}: the wget loop ends", self.name),
            Duration::from_secs(30),
            || {
                let c = self.lab.docker_exec(
                    &self.task.node,
                    &self.task.container,
                    &["cat", &format!("{tag}.counts")],
                )?;
                if c.ends_with("done") {
                    Ok(c)
                } else {
                    Err(c)
                }
            },
        );
        let (ok, failed, _) = xtask::load::wget_loop_counts(&counts);
        let failures = self
            .lab
            .docker_exec(
                &self.task.node,
                &self.task.container,
                &["sh", "-c", &format!("cat {tag}.failures 2>/dev/null; true")],
            )
            .unwrap_or_default()
            .lines()
            .map(|l| format!("at {l}"))
            .collect();
        LoadReport {
            name: self.name,
            sent: ok + failed,
            failed,
            failures,
            connections: None,
            failed_at: Vec::new(),
        }
    }
}

/// Every load of one phase, stopped together.
#[derive(Default)]
pub struct Loads<'a> {
    http: Vec<(String, HttpLoad)>,
    shell: Vec<ShellLoad<'a>>,
}

impl<'a> Loads<'a> {
    pub fn http(&mut self, name: &str, netns: PathBuf, targets: Vec<SocketAddrV4>) {
        self.http
            .push((name.to_owned(), HttpLoad::start(name, netns, targets)));
    }

    pub fn http_keepalive(&mut self, name: &str, netns: PathBuf, targets: Vec<SocketAddrV4>) {
        self.http.push((
            name.to_owned(),
            HttpLoad::start_keepalive(name, netns, targets),
        ));
    }

    pub fn shell(&mut self, lab: &'a LabGuard, task: &Task, name: &str, url: &str) {
        self.shell.push(ShellLoad::start(lab, task, name, url));
    }

    /// Stops every load; prints each one's counts, and panics naming the failures if
    /// any request of `phase` failed (or a load sent nothing).
    pub fn stop_expecting_no_failure(self, phase: &str) -> LoadReport {
        let mut reports: Vec<LoadReport> = self.http.into_iter().map(|(_, l)| l.stop()).collect();
        reports.extend(self.shell.into_iter().map(ShellLoad::stop));
        let mut total = LoadReport {
            name: phase.to_owned(),
            ..Default::default()
        };
        for r in &reports {
            println!("{phase}: {}", r.line());
        }
        for r in &reports {
            assert!(r.sent > 0, "{phase}: {} sent nothing", r.name);
            assert!(
                r.failed == 0,
                "{phase}: {} failed; first failures: {:#?}",
                r.line(),
                r.failures
            );
        }
        for r in reports {
            total.add(r);
        }
        total
    }
}
