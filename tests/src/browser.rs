//! A headless Chromium (Debian's `chromium`) in the lab client's namespace, driven over
//! the DevTools protocol on a pipe (`--remote-debugging-pipe`: commands go to its fd 3,
//! answers come from its fd 4, each one JSON message ended by a NUL byte). A test reads
//! the live DOM of a page this way with no websocket client and no driver. The browser
//! runs in a process group of its own, ended by that group on drop.
use std::{
    fs::{self, File},
    io::{BufRead, BufReader, Write},
    os::{
        fd::{FromRawFd, RawFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc::{self, Receiver},
    time::Duration,
};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::{lab, LabGuard};

/// How long one DevTools call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Browser {
    child: Child,
    commands: File,
    messages: Receiver<Value>,
    next_id: u64,
    /// The page's session (flat mode: its calls carry this ID).
    session: String,
    profile: PathBuf,
    log: PathBuf,
}

/// A pipe whose ends close on exec: (read, write).
fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

impl Browser {
    /// Starts the browser in the lab client's namespace on `url` and attaches to its page.
    pub fn open(lab: &LabGuard, url: &str) -> Browser {
        let profile = std::env::temp_dir().join(format!("{}-chromium", lab.layout.prefix));
        let _ = fs::remove_dir_all(&profile);
        fs::create_dir_all(&profile).expect("browser profile dir");
        let log = profile.with_extension("log");
        let argv: Vec<String> = [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-pipe",
            "--window-size=1400,900",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={}", profile.display()), url.into()])
        .collect();
        let (cmd_read, cmd_write) = pipe();
        let (out_read, out_write) = pipe();
        let mut cmd = lab::client_command(&lab.state, &argv).expect("client command");
        cmd.stdin(Stdio::null())
            .stdout(File::create(&log).expect("browser log"))
            .stderr(File::create(&log).expect("browser log"))
            .process_group(0);
        // SAFETY: only async-signal-safe calls between fork and exec. The ends are
        // first copied above any low number (either may be 3 or 4 itself), then put at
        // 3 and 4, where dup2 also clears close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                let r = libc::fcntl(cmd_read, libc::F_DUPFD, 10);
                let w = libc::fcntl(out_write, libc::F_DUPFD, 10);
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("start chromium (Debian's `chromium`; cargo xtask setup installs it)");
        // SAFETY: the descriptors are ours alone from here on.
        let (commands, answers) = unsafe {
            libc::close(cmd_read);
            libc::close(out_write);
            (File::from_raw_fd(cmd_write), File::from_raw_fd(out_read))
        };
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(answers);
            loop {
                let mut buf = Vec::new();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            commands,
            messages,
            next_id: 0,
            session: String::new(),
            profile,
            log,
        };
        let targets = b
            .call("Target.getTargets", json!({}), false)
            .unwrap_or_else(|e| panic!("{e}; browser log: {}", b.log_tail()));
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .unwrap_or_else(|| panic!("no page among {targets}"))
            .to_owned();
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": page, "flatten": true}),
                false,
            )
            .expect("attach to the page");
        b.session = attached["sessionId"].as_str().expect("session").to_owned();
        b
    }

    /// One DevTools call: its result, or its error (events in between are skipped).
    fn call(&mut self, method: &str, params: Value, on_page: bool) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if on_page {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .map_err(|e| format!("{method}: writing to the browser: {e}"))?;
        loop {
            let m = self
                .messages
                .recv_timeout(CALL_TIMEOUT)
                .map_err(|e| format!("{method}: no answer from the browser: {e}"))?;
            if m["id"] != json!(id) {
                continue;
            }
            if let Some(err) = m.get("error") {
                return Err(format!("{method}: {err}"));
            }
            return Ok(m["result"].clone());
        }
    }

    /// Evaluates `expression` in the page; its value (JSON), or the exception it threw.
    pub fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
            true,
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!(
                "{expression}: {}",
                ex["exception"]["description"].as_str().unwrap_or("threw")
            ));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Saves a PNG of the page at `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<(), String> {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}), true)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().ok_or("no data")?)
            .map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser's own processes (renderers, GPU, zygote) share its group.
        let group = self.child.id() as i32;
        // SAFETY: signals to the process group this test started.
        unsafe { libc::kill(-group, libc::SIGTERM) };
        let pid = self.child.id();
        if !lab::procs::wait_gone(&[pid], Duration::from_secs(20)) {
            // SAFETY: as above.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.profile);
        let _ = fs::remove_file(&self.log);
    }
}
