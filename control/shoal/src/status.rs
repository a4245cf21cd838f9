//! `<data_dir>/agent.json`: what a running agent tells other tools about itself
//! (its pid, where the underlay program is attached and how, where its maps are pinned).
//! It exists only while the agent runs.
use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::Serialize;

/// Name of the status file in the data directory.
pub const STATUS_FILE: &str = "agent.json";

/// The contents of `agent.json`.
#[derive(Debug, Serialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub underlay_interface: String,
    /// "native" or "generic".
    pub xdp_mode: String,
    pub pin_dir: PathBuf,
}

impl AgentStatus {
    /// Writes `data_dir/agent.json` atomically: readers see the old file or the whole
    /// new one, never a partial one. Returns the path written.
    pub fn write(&self, data_dir: &Path) -> io::Result<PathBuf> {
        let path = data_dir.join(STATUS_FILE);
        let tmp = data_dir.join(format!(".{STATUS_FILE}.tmp-{}", std::process::id()));
        let written = self.write_new(&tmp).and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // Make the rename itself durable.
        fs::File::open(data_dir)?.sync_all()?;
        Ok(path)
    }

    fn write_new(&self, tmp: &Path) -> io::Result<()> {
        // Owner-only, like everything in the agent's data directory.
        let mut file = shoal_cluster::private_fs::create(tmp)?;
        serde_json::to_writer_pretty(&mut file, self)?;
        file.write_all(b"\n")?;
        file.sync_all()
    }
}

/// Why an agent looks alive for this data directory and API socket (its API socket
/// answers, or `agent.json` names a live `shoal agent` process), or None. The agent
/// writes `agent.json` last at start, so one still starting can be missed.
pub fn running_agent(data_dir: &Path, api_socket: &Path) -> Option<String> {
    if std::os::unix::net::UnixStream::connect(api_socket).is_ok() {
        return Some(format!("its API socket {} answers", api_socket.display()));
    }
    let text = fs::read_to_string(data_dir.join(STATUS_FILE)).ok()?;
    let pid = serde_json::from_str::<serde_json::Value>(&text).ok()?["pid"].as_u64()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_agent = pid != u64::from(std::process::id())
        && args.get(1).is_some_and(|a| *a == b"agent")
        && args.get(2).is_none_or(|a| *a != b"cleanup");
    is_agent.then(|| {
        format!(
            "{} names pid {pid}, a running `shoal agent`",
            data_dir.join(STATUS_FILE).display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_the_file_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("shoal-status-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(STATUS_FILE), "stale").unwrap();

        let status = AgentStatus {
            pid: 42,
            underlay_interface: "eth1".into(),
            xdp_mode: "native".into(),
            pin_dir: "/sys/fs/bpf/shoal".into(),
        };
        let path = status.write(&dir).unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let entries: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        fs::remove_dir_all(&dir).unwrap();

        assert_eq!(
            value,
            serde_json::json!({
                "pid": 42,
                "underlay_interface": "eth1",
                "xdp_mode": "native",
                "pin_dir": "/sys/fs/bpf/shoal",
            })
        );
        assert_eq!(entries, [STATUS_FILE]);
    }
}
