//! `NetlinkEgress` against the real kernel, in throwaway namespaces pinned under a temp
//! directory `egk<pid>-<test>`: a "host" namespace (where the bridge, the NAT chain and
//! the forwarding sysctls go) and "container" namespaces. A guard removes them on drop,
//! panics included. `ip`/`nft` (through `nsenter`) only cross-check.
//!
//! Needs root (network namespaces). Without root the tests say so and pass, unless
//! SHOAL_REQUIRE_ROOT=1 (set by `cargo xtask test`), where they fail.
use std::{
    collections::BTreeSet,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use shoal_dataplane::{
    egress::{
        kernel::{AttachError, EgressKernel, NetlinkEgress},
        plan::Attachment,
        EgressParams,
    },
    overlay::netns,
};

fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("SHOAL_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{test}: needs root (network namespaces) and SHOAL_REQUIRE_ROOT=1");
    }
    eprintln!("{test}: skipped: needs root (network namespaces)");
    false
}

/// The throwaway namespaces of one test; all removed on drop.
struct Lab {
    dir: PathBuf,
    pins: Vec<PathBuf>,
}

impl Lab {
    fn new(test: &str) -> Lab {
        let dir = std::env::temp_dir().join(format!("egk{}-{test}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        Lab {
            dir,
            pins: Vec::new(),
        }
    }

    fn netns(&mut self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        netns::create_pinned(&path).unwrap();
        self.pins.push(path.clone());
        self.sh(&path, "ip link set lo up");
        path
    }

    /// Runs a shell command inside the namespace at `ns`; Ok(stdout) or Err(stderr).
    fn try_sh(&self, ns: &Path, cmd: &str) -> Result<String, String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["sh", "-c", cmd])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn sh(&self, ns: &Path, cmd: &str) -> String {
        self.try_sh(ns, cmd)
            .unwrap_or_else(|e| panic!("{cmd:?} in {}: {e}", ns.display()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in self.pins.iter().rev() {
            let _ = netns::remove_pinned(p);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn params() -> EgressParams {
    EgressParams::new("172.18.0.0/16".parse().unwrap(), 1500).unwrap()
}

fn attachment(container: &str, ns: &Path, last: u8) -> Attachment {
    Attachment {
        container: container.into(),
        netns_id: netns::identity(ns).unwrap(),
        ip: Ipv4Addr::new(172, 18, 0, last),
    }
}

#[test]
fn bridge_nat_veths_rules_and_adoption() {
    if !root_or_skip("bridge_nat_veths_rules_and_adoption") {
        return;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        panic!("nft is missing: install the nftables package (cargo xtask setup)");
    }
    let mut lab = Lab::new("all");
    let host = lab.netns("host");
    let c1 = lab.netns("c1");
    let c2 = lab.netns("c2");
    let p = params();
    let (a1, a2) = (attachment("c1", &c1, 2), attachment("c2", &c2, 3));

    // Everything of the kernel runs in the host namespace (netlink, /proc/sys, nft).
    let adopted = netns::in_netns_at(&host, || {
        let mut k = NetlinkEgress::new(journal()).unwrap();
        let changed = k.ensure_bridge(&p).unwrap();
        let keys: Vec<&str> = changed.iter().map(|c| c.key.as_str()).collect();
        assert!(keys.contains(&"net.ipv4.ip_forward"), "{changed:?}");
        // Again: nothing more to change.
        assert!(k.ensure_bridge(&p).unwrap().is_empty());
        k.ensure_nat(&p).unwrap();
        k.ensure_nat(&p).unwrap();
        k.attach(&p, "shgw1", &a1, &c1).unwrap();
        k.attach(&p, "shgw2", &a2, &c2).unwrap();
        // Complete already: left alone.
        k.attach(&p, "shgw1", &a1, &c1).unwrap();
        // A namespace that is not the recorded one: nothing is made.
        let other = Attachment {
            netns_id: a1.netns_id + 1_000_000,
            ..a1.clone()
        };
        assert_eq!(
            k.attach(&p, "shgw9", &other, &c1),
            Err(AttachError::ContainerGone)
        );
        k.sync_udp_reply_ports(&c1, a1.netns_id, &BTreeSet::from([53, 5353]))
            .unwrap();
        k.sync_udp_reply_ports(&c1, a1.netns_id, &BTreeSet::from([53]))
            .unwrap();
        let snap = k.snapshot().unwrap();
        drop(k);
        // A new kernel (a restarted agent) reads the same attachments back.
        let mut again = NetlinkEgress::new(journal()).unwrap();
        assert_eq!(again.snapshot().unwrap(), snap);
        snap
    })
    .unwrap();
    assert_eq!(adopted.len(), 2);
    assert_eq!(adopted["shgw1"], a1);
    assert_eq!(adopted["shgw2"], a2);

    let br = lab.sh(
        &host,
        "ip -o -4 addr show dev shoal_gwbridge; ip -o link show shoal_gwbridge",
    );
    assert!(
        br.contains("inet 172.18.0.1/16") && br.contains("02:42:ac:12:00:01"),
        "{br}"
    );
    let links = lab.sh(&host, "ip -o link show type veth");
    assert!(!links.contains("shgw9"), "{links}");
    let nat = lab.sh(&host, "nft list chain ip shoal egress");
    assert_eq!(nat.matches("masquerade").count(), 1, "{nat}");
    assert_eq!(
        lab.sh(
            &host,
            "cat /proc/sys/net/ipv4/conf/shoal_gwbridge/forwarding"
        )
        .trim(),
        "1"
    );
    let eg = lab.sh(
        &c1,
        "ip -o -4 addr show dev egress0; ip -o link show egress0; ip route",
    );
    for needle in [
        "inet 172.18.0.2/16",
        "02:42:ac:12:00:02",
        "mtu 1500",
        "default via 172.18.0.1 dev egress0",
    ] {
        assert!(eg.contains(needle), "{needle:?} missing in {eg}");
    }
    let rules = lab.sh(&c1, "ip rule");
    assert!(
        rules.contains("1002:\tfrom all ipproto udp sport 53 lookup 100"),
        "{rules}"
    );
    assert!(!rules.contains("5353"), "{rules}");
    // The gateway answers; the other task does not (isolated ports).
    lab.sh(&c1, "ping -c 1 -W 2 172.18.0.1");
    assert!(lab.try_sh(&c1, "ping -c 1 -W 1 172.18.0.3").is_err());

    // A half-made veth of ours (no record) is removed by the next snapshot; a detached
    // one is gone with its task's end.
    lab.sh(
        &host,
        "ip link add shgwdead type veth peer name x0 && ip link set shgwdead master shoal_gwbridge",
    );
    let left = netns::in_netns_at(&host, || {
        let mut k = NetlinkEgress::new(journal()).unwrap();
        k.detach("shgw2").unwrap();
        k.detach("shgw2").unwrap();
        k.snapshot().unwrap()
    })
    .unwrap();
    assert_eq!(left.keys().collect::<Vec<_>>(), ["shgw1"]);
    let links = lab.sh(&host, "ip -o link show");
    assert!(
        !links.contains("shgwdead") && !links.contains("shgw2"),
        "{links}"
    );
    assert!(
        lab.sh(&c2, "ip -o link show").lines().count() == 1,
        "c2 has lo only"
    );
}

/// A sysctl journal of the test's own (the kernel's /proc/sys of the calling thread's
/// namespace; the journal file in a directory of this process).
fn journal() -> shoal_dataplane::sysctl::SysctlJournal {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "shoal-egress-kernel-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    shoal_dataplane::sysctl::SysctlJournal::open(&dir).unwrap()
}
