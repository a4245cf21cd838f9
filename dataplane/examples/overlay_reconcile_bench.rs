//! Reconcile cost of the overlay: time to apply a declared state with 1, 100, 1,000 and
//! 10,000 remote endpoints (from nothing), and to apply a one-endpoint change to the
//! 10,000 state. Runs in throwaway namespaces; needs root. Prints `BENCH overlay ...`
//! lines; `cargo xtask bench overlay` runs it and collects them.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use shoal_dataplane::overlay::{
    kernel::NetlinkKernel,
    netns,
    plan::{ContainerNetns, NodeParams},
    reconciler::Reconciler,
    state::{LocalEndpoint, Network, OverlayState, RemoteEndpoint},
};

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ip {} failed", args.join(" "));
}

fn state(remotes: usize, vtep_of_first: Ipv4Addr) -> OverlayState {
    let subnet: ipnet::Ipv4Net = "10.77.0.0/16".parse().expect("subnet");
    let base = u32::from(subnet.network());
    OverlayState {
        networks: vec![Network {
            id: "bench".into(),
            vni: 5000,
            subnet,
            gateway: Ipv4Addr::from(base + 1),
            mtu: None,
            encrypted: false,
        }],
        local_endpoints: vec![LocalEndpoint {
            network: "bench".into(),
            container: "c1".into(),
            ip: Ipv4Addr::from(base + 2),
            mac: None,
        }],
        remote_endpoints: (0..remotes)
            .map(|i| RemoteEndpoint {
                network: "bench".into(),
                ip: Ipv4Addr::from(base + 10 + i as u32),
                mac: None,
                vtep: if i == 0 {
                    vtep_of_first
                } else {
                    Ipv4Addr::new(192, 168, 250, 2 + (i % 200) as u8)
                },
            })
            .collect(),
    }
}

fn main() {
    let tag = format!("shbench{}", std::process::id() % 100_000);
    let host = format!("{tag}-host");
    let container = format!("{tag}-c1");
    let _guard = Namespaces(vec![host.clone(), container.clone()]);
    ip(&["netns", "add", &host]);
    ip(&["netns", "add", &container]);
    // This kernel has no dummy driver: a veth pair stands in for the underlay NIC.
    ip(&[
        "-n", &host, "link", "add", "ul0", "type", "veth", "peer", "name", "ul1",
    ]);
    ip(&["-n", &host, "link", "set", "ul1", "up"]);
    ip(&["-n", &host, "addr", "add", "192.168.250.1/24", "dev", "ul0"]);
    ip(&["-n", &host, "link", "set", "ul0", "up"]);
    let netns_dir = std::env::temp_dir().join(format!("{tag}-netns"));
    let host_path = PathBuf::from(format!("/run/netns/{host}"));
    let container_path = PathBuf::from(format!("/run/netns/{container}"));
    let c1 = ContainerNetns {
        id: netns::identity(&container_path).expect("container netns identity"),
        path: container_path,
    };
    let node = NodeParams {
        vtep: "192.168.250.1".parse().expect("vtep"),
        underlay_interface: "ul0".into(),
        underlay_mtu: 1500,
        port: 4789,
    };
    let kernel = NetlinkKernel::new(Some(host_path), netns_dir.clone()).expect("netlink");
    let mut r = Reconciler::new(kernel, node).expect("reconciler");
    let netns_of = |_: &str| Some(c1.clone());
    let first_vtep: Ipv4Addr = "192.168.250.2".parse().expect("vtep");

    for n in [1usize, 100, 1_000, 10_000] {
        r.apply(&OverlayState::default(), netns_of).expect("clear");
        let s = state(n, first_vtep);
        let t = Instant::now();
        let report = r.apply(&s, netns_of).expect("apply");
        let took = t.elapsed();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        println!("BENCH overlay apply_{n}_remotes {:.2} ms", ms(took));
    }
    // With the table applied, move one endpoint back and forth between two VTEPs; the
    // median of 21 rounds, for the whole apply and for its kernel part.
    for n in [10_000usize, 100] {
        r.apply(&state(n, "192.168.250.2".parse().expect("vtep")), netns_of)
            .expect("apply");
        let mut total = Vec::new();
        let mut kernel = Vec::new();
        for round in 0..21 {
            let vtep = if round % 2 == 0 {
                "192.168.250.3"
            } else {
                "192.168.250.2"
            };
            let s = state(n, vtep.parse().expect("vtep"));
            let t = Instant::now();
            let report = r.apply(&s, netns_of).expect("apply change");
            total.push(t.elapsed());
            kernel.push(report.kernel_elapsed);
            assert_eq!(report.applied, 2, "one endpoint's delete + add");
        }
        total.sort();
        kernel.sort();
        println!(
            "BENCH overlay change_1_of_{n} {:.3} ms",
            ms(total[total.len() / 2])
        );
        println!(
            "BENCH overlay change_1_of_{n}_kernel {:.3} ms",
            ms(kernel[kernel.len() / 2])
        );
    }

    r.apply(&OverlayState::default(), netns_of).expect("clear");
    let _ = std::fs::remove_dir_all(&netns_dir);
    assert!(!Path::new(&netns_dir).exists());
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
