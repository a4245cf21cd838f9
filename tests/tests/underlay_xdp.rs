//! The shoal agent attaches the underlay XDP program in native mode on a lab host's
//! underlay interface, and its counters see real traffic from the client namespace.
use std::time::Duration;

use shoal_common::underlay::Counter;
use shoal_tests::{lab, privileged, wait_for, LabGuard};

fn stats(pin_dir: &std::path::Path) -> Result<serde_json::Value, String> {
    let shoal = xtask::util::shoal_binary().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(shoal)
        .args(["dataplane", "stats", "--json", "--pin-dir"])
        .arg(pin_dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn counter(v: &serde_json::Value, c: Counter) -> u64 {
    v[c.name()]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {} in {v}", c.name()))
}

#[test]
fn agent_attaches_native_xdp_and_counts_client_traffic() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('x', 1);
    let h1 = &guard.state.hosts[0];
    let status = lab::agent::start(&guard.state, h1, &shoal, &[]).expect("start shoal agent");
    let status: serde_json::Value = serde_json::from_str(&status).expect("agent.json");
    assert_eq!(status["xdp_mode"], "native", "agent status: {status}");
    assert_eq!(
        status["underlay_interface"], "eth0",
        "agent status: {status}"
    );

    let before = stats(&h1.pin_dir).expect("read stats");
    let target = h1.address.to_string();
    let out = guard.client(&["ping", "-c", "5", "-i", "0.2", "-W", "5", &target]);
    assert!(
        out.status.success(),
        "client ping {target}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A TCP SYN to a closed port is answered with RST: the SYN still crosses eth0.
    let _ = guard.client(&[
        "curl",
        "-s",
        "--max-time",
        "3",
        &format!("http://{target}:9/"),
    ]);

    let after = wait_for(
        "XDP counters show the client's traffic",
        Duration::from_secs(30),
        || {
            let now = stats(&h1.pin_dir)?;
            let icmp = counter(&now, Counter::Icmp) - counter(&before, Counter::Icmp);
            let tcp = counter(&now, Counter::Tcp) - counter(&before, Counter::Tcp);
            if icmp >= 5 && tcp >= 1 {
                Ok(now)
            } else {
                Err(format!("icmp +{icmp}, tcp +{tcp}: {now}"))
            }
        },
    );
    let ipv4 = counter(&after, Counter::Ipv4) - counter(&before, Counter::Ipv4);
    assert!(
        ipv4 >= 6,
        "ipv4 counter moved by {ipv4}, expected at least 6 (5 pings + 1 SYN)"
    );
    assert!(
        counter(&after, Counter::Packets) >= counter(&after, Counter::Ipv4),
        "packets counts every frame: {after}"
    );
    assert!(counter(&after, Counter::Bytes) > 0, "bytes: {after}");

    // SIGTERM: the agent detaches and removes its status file.
    let pid = status["pid"].as_u64().expect("pid in agent.json") as u32;
    lab::procs::signal(pid, libc::SIGTERM);
    assert!(
        lab::procs::wait_gone(&[pid], Duration::from_secs(30)),
        "agent {pid} did not stop on SIGTERM"
    );
    assert!(
        !lab::agent::status_file(h1).exists(),
        "agent left its status file"
    );
}
