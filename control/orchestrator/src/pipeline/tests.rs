//! The pipeline with a fake dockerd: containers are looked up once (running or not),
//! again only when an event names them, and every change is published at once.
use std::{collections::HashMap, sync::Mutex};

use shoal_dataplane::overlay::state::{LocalEndpoint, Network};

use super::*;
use crate::docker::{ContainerAction, ContainerEvent};

#[derive(Default)]
struct FakeDocker {
    running: Mutex<HashMap<String, Resolved>>,
    lookups: Mutex<usize>,
}

impl Resolve for &FakeDocker {
    async fn resolve(&self, name: &str) -> Result<Option<Resolved>, String> {
        *self.lookups.lock().unwrap() += 1;
        let found = self.running.lock().unwrap().get(name).cloned();
        Ok(found)
    }
}

impl FakeDocker {
    fn run(&self, name: &str, id: &str, netns: u64) {
        self.running.lock().unwrap().insert(
            name.into(),
            Resolved {
                id: id.into(),
                netns: ContainerNetns {
                    path: format!("/proc/{netns}/ns/net").into(),
                    id: netns,
                },
            },
        );
    }
}

fn intent(containers: &[&str]) -> DeclaredNode {
    let mut d = DeclaredNode::default();
    d.overlay.networks.push(Network {
        id: "web".into(),
        vni: 4097,
        subnet: "10.0.9.0/24".parse().unwrap(),
        gateway: "10.0.9.1".parse().unwrap(),
        mtu: None,
        encrypted: false,
    });
    for (i, c) in containers.iter().enumerate() {
        d.overlay.local_endpoints.push(LocalEndpoint {
            network: "web".into(),
            container: (*c).into(),
            ip: format!("10.0.9.{}", i + 2).parse().unwrap(),
            mac: None,
        });
    }
    d
}

fn event(name: &str, id: &str, action: ContainerAction) -> Watched {
    Watched::Event(ContainerEvent {
        id: id.into(),
        name: name.into(),
        action,
    })
}

#[tokio::test]
async fn containers_are_resolved_once_and_again_when_an_event_names_them() {
    let docker = FakeDocker::default();
    docker.run("a", "id-a", 10);
    let (tx, mut rx) = watch::channel(None);
    let mut p = Pipeline::new(&docker, tx, None);

    let d = intent(&["a", "b"]);
    p.pass(Some(&d)).await;
    let out = rx.borrow_and_update().clone().unwrap();
    assert_eq!(
        out.containers.keys().collect::<Vec<_>>(),
        ["a"],
        "b does not run"
    );
    assert_eq!(out.overlay, d.overlay);
    assert_eq!(*docker.lookups.lock().unwrap(), 2);

    // Nothing new: neither is asked again (b's start will be an event); nothing
    // published.
    p.pass(Some(&d)).await;
    assert_eq!(*docker.lookups.lock().unwrap(), 2);
    assert!(!rx.has_changed().unwrap());

    // b starts: its event makes a pass due, it alone is asked, and it is published.
    docker.run("b", "id-b", 11);
    assert!(p.forget(Some(&d), &[event("b", "id-b", ContainerAction::Start)]));
    p.pass(Some(&d)).await;
    assert_eq!(*docker.lookups.lock().unwrap(), 3);
    assert_eq!(rx.borrow_and_update().as_ref().unwrap().containers.len(), 2);

    // A container declared later is asked at once; one not running, again only after
    // the event watch resubscribed (events may have been missed meanwhile).
    let more = intent(&["a", "b", "c"]);
    p.pass(Some(&more)).await;
    assert_eq!(*docker.lookups.lock().unwrap(), 4);
    p.pass(Some(&more)).await;
    assert_eq!(*docker.lookups.lock().unwrap(), 4);
    docker.run("c", "id-c", 13);
    assert!(p.forget(Some(&more), &[Watched::Subscribed]));
    p.pass(Some(&more)).await;
    assert_eq!(rx.borrow_and_update().as_ref().unwrap().containers.len(), 3);

    // a restarts in a new namespace; the event names it by ID only.
    docker.run("a", "id-a", 12);
    assert!(p.forget(Some(&d), &[event("", "id-a", ContainerAction::Die)]));
    p.pass(Some(&d)).await;
    let out = rx.borrow_and_update().clone().unwrap();
    assert_eq!(out.containers["a"].id, 12);

    // An event about a container nobody declared changes nothing.
    assert!(!p.forget(Some(&d), &[event("other", "id-x", ContainerAction::Start)]));

    // A container no longer declared leaves the published state.
    p.pass(Some(&intent(&["b"]))).await;
    let out = rx.borrow_and_update().clone().unwrap();
    assert_eq!(out.containers.keys().collect::<Vec<_>>(), ["b"]);
}

#[tokio::test]
async fn a_task_container_with_no_network_is_resolved_too() {
    let docker = FakeDocker::default();
    docker.run("a", "id-a", 10);
    docker.run("lone", "id-lone", 20);
    let (tx, mut rx) = watch::channel(None);
    let mut p = Pipeline::new(&docker, tx, None);
    let mut d = intent(&["a"]);
    d.task_containers = ["a".to_string(), "lone".to_string()].into();
    p.pass(Some(&d)).await;
    let out = rx.borrow_and_update().clone().unwrap();
    assert_eq!(out.containers.keys().collect::<Vec<_>>(), ["a", "lone"]);
    assert_eq!(out.containers["lone"].id, 20);
    // An event naming it makes a pass due: its namespace may have changed.
    assert!(p.forget(Some(&d), &[event("lone", "id-lone", ContainerAction::Die)]));
}

#[tokio::test]
async fn an_intent_change_reaches_the_output_in_one_pass_and_is_dumped() {
    let docker = FakeDocker::default();
    docker.run("a", "id-a", 10);
    let dir = std::env::temp_dir().join(format!("shoal-pipeline-{}", std::process::id()));
    let (intent_tx, intent_rx) = watch::channel(None);
    let (out_tx, mut out) = watch::channel(None);
    let events = crate::events::DockerEvents::none();
    let p = Pipeline::new(&docker, out_tx, Some(dir.clone()));
    let run = p.run(intent_rx, events.subscribe());
    let check = async {
        intent_tx.send(Some(Arc::new(intent(&["a"])))).unwrap();
        out.changed().await.unwrap();
        let got = out.borrow_and_update().clone().unwrap();
        assert_eq!(got.containers.len(), 1);
        let mut moved = intent(&["a"]);
        moved.overlay.local_endpoints[0].ip = "10.0.9.99".parse().unwrap();
        intent_tx.send(Some(Arc::new(moved))).unwrap();
        out.changed().await.unwrap();
        let got = out.borrow_and_update().clone().unwrap();
        assert_eq!(got.overlay.local_endpoints[0].ip.to_string(), "10.0.9.99");
        drop(intent_tx);
    };
    let ((), ()) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(run, check) })
            .await
            .expect("the pipeline ends when its source is gone");
    let dumped: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("overlay.json")).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(dumped["local_endpoints"][0]["ip"], "10.0.9.99");
}

/// An intent with one service whose backends run on 192.168.77.11, .12 and .13.
fn balanced() -> DeclaredNode {
    use shoal_dataplane::lb::state::{Backend, BackendState, LbState, Service};
    let mut d = intent(&[]);
    d.lb = Some(LbState {
        ingress_network: None,
        services: vec![Service {
            id: "s1".into(),
            name: "web".into(),
            endpoint_mode: Default::default(),
            balance: Default::default(),
            vips: Vec::new(),
            ports: Vec::new(),
            backends: (11..=13)
                .map(|n| Backend {
                    task: format!("t{n}"),
                    node: Ipv4Addr::new(192, 168, 77, n),
                    addresses: [("web".to_string(), Ipv4Addr::new(10, 0, 9, n))].into(),
                    state: BackendState::Healthy,
                })
                .collect(),
        }],
    });
    d
}

#[tokio::test]
async fn backends_on_a_node_this_one_cannot_reach_drain_at_once_and_come_back() {
    use shoal_dataplane::lb::state::BackendState::{Draining, Healthy, Unhealthy};
    let docker = FakeDocker::default();
    let (intent_tx, intent_rx) = watch::channel(None);
    let (out_tx, mut out) = watch::channel(None);
    let (reach_tx, reach_rx) = watch::channel(Arc::new(shoal_gossip::Unreachable::new()));
    let events = crate::events::DockerEvents::none();
    let dir = std::env::temp_dir().join(format!("shoal-pipeline-reach-{}", std::process::id()));
    let run = Pipeline::new(&docker, out_tx, Some(dir.clone()))
        .with_reachability(Some(reach_rx))
        .run(intent_rx, events.subscribe());
    // The dump for people says what the reconcilers follow, verdicts included.
    let dumped = || -> Vec<String> {
        let lb: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("lb.json")).unwrap()).unwrap();
        lb["services"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["state"].as_str().unwrap_or_default().to_lowercase())
            .collect()
    };
    let states = |d: &DeclaredNode| -> Vec<_> {
        d.lb.as_ref().unwrap().services[0]
            .backends
            .iter()
            .map(|b| b.state)
            .collect()
    };
    let check = async {
        intent_tx.send(Some(Arc::new(balanced()))).unwrap();
        out.changed().await.unwrap();
        assert_eq!(
            states(&out.borrow_and_update().clone().unwrap()),
            [Healthy; 3]
        );
        // The node at .12 stops answering this node's probes: no new intent is needed.
        let cut = |lost| -> Arc<shoal_gossip::Unreachable> {
            let u = shoal_gossip::Unanswered {
                addr: "192.168.77.12".parse().unwrap(),
                lost,
            };
            Arc::new([("n2".to_string(), u)].into())
        };
        reach_tx.send(cut(false)).unwrap();
        out.changed().await.unwrap();
        let got = out.borrow_and_update().clone().unwrap();
        assert_eq!(states(&got), [Healthy, Draining, Healthy]);
        assert_eq!(dumped(), ["healthy", "draining", "healthy"]);
        // A new intent keeps it drained while it stays unreachable.
        let mut more = balanced();
        more.overlay.networks[0].mtu = Some(1400);
        intent_tx.send(Some(Arc::new(more))).unwrap();
        out.changed().await.unwrap();
        assert_eq!(
            states(&out.borrow_and_update().clone().unwrap()),
            [Healthy, Draining, Healthy]
        );
        // Silent for long: its flows from here are given up too.
        reach_tx.send(cut(true)).unwrap();
        out.changed().await.unwrap();
        assert_eq!(
            states(&out.borrow_and_update().clone().unwrap()),
            [Healthy, Unhealthy, Healthy]
        );
        // It answers again.
        reach_tx.send(Arc::new(Default::default())).unwrap();
        out.changed().await.unwrap();
        assert_eq!(
            states(&out.borrow_and_update().clone().unwrap()),
            [Healthy; 3]
        );
        assert_eq!(dumped(), ["healthy"; 3]);
        drop(intent_tx);
    };
    let ((), ()) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(run, check) })
            .await
            .expect("the pipeline follows its reachability and ends with its source");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A VIP kernel that tells the test every table it is asked to hold.
struct FakeVipKernel(std::sync::mpsc::Sender<shoal_dataplane::lb::vip_table::VipTable>);

impl shoal_dataplane::reconcile::vip::VipKernel for FakeVipKernel {
    fn apply(&mut self, table: &shoal_dataplane::lb::vip_table::VipTable) -> Result<usize, String> {
        let _ = self.0.send(table.clone());
        Ok(1)
    }
    fn sync_addresses(
        &mut self,
        _netns: &std::path::Path,
        _addrs: &BTreeSet<std::net::Ipv4Addr>,
    ) -> std::io::Result<shoal_dataplane::lb::vip_addr::AddrChanges> {
        Ok(Default::default())
    }
    fn netns_cookie(&mut self, netns: &std::path::Path) -> std::io::Result<u64> {
        Ok(netns.as_os_str().len() as u64)
    }
    fn own_cookie(&mut self) -> std::io::Result<u64> {
        Ok(1)
    }
    fn node_addresses(&mut self) -> Vec<std::net::Ipv4Addr> {
        Vec::new()
    }
}

/// The whole path in one process, no root: intent -> pipeline (fake dockerd) -> the VIP
/// reconciler on its thread (fake kernel). A backend change reaches the kernel without
/// any file or poll in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_change_reaches_the_kernel_through_the_pipeline() {
    use shoal_dataplane::{
        lb::state::{Backend, BackendState, Balance, EndpointMode, LbState, Service, Vip},
        reconcile::{runner, status::StatusFile, vip::VipReconciler},
    };
    let docker = Box::leak(Box::new(FakeDocker::default()));
    docker.run("a", "id-a", 10);
    let dir = std::env::temp_dir().join(format!("shoal-pipeline-vip-{}", std::process::id()));
    let (intent_tx, intent_rx) = watch::channel(None);
    let (out_tx, out_rx) = watch::channel(None);
    let events = crate::events::DockerEvents::none();
    let (tables_tx, tables) = std::sync::mpsc::channel();
    let running = runner::spawn(
        "vip-test",
        move || Ok(VipReconciler::new(FakeVipKernel(tables_tx.clone()))),
        out_rx,
        None,
        StatusFile::new(&dir, "vip"),
    )
    .await
    .unwrap();
    let docker: &'static FakeDocker = docker;
    let pipeline =
        tokio::spawn(Pipeline::new(docker, out_tx, None).run(intent_rx, events.subscribe()));
    let with_backend = |addr: &str| {
        let mut d = intent(&["a"]);
        d.lb = Some(LbState {
            ingress_network: None,
            services: vec![Service {
                id: "s1".into(),
                name: "web".into(),
                endpoint_mode: EndpointMode::Vip,
                balance: Balance::default(),
                vips: vec![Vip {
                    network: "web".into(),
                    address: "10.0.9.100".parse().unwrap(),
                }],
                ports: Vec::new(),
                backends: vec![Backend {
                    task: "t1".into(),
                    node: "192.168.77.12".parse().unwrap(),
                    addresses: [("web".to_string(), addr.parse().unwrap())].into(),
                    state: BackendState::Healthy,
                }],
            }],
        });
        Arc::new(d)
    };
    let wait_for = |want: &str| {
        let want: std::net::Ipv4Addr = want.parse().unwrap();
        loop {
            let t = tables
                .recv_timeout(Duration::from_secs(10))
                .expect("a table within 10 s");
            if t.healthy("10.0.9.100".parse().unwrap()) == [want] {
                return;
            }
        }
    };
    intent_tx.send(Some(with_backend("10.0.9.21"))).unwrap();
    tokio::task::block_in_place(|| wait_for("10.0.9.21"));
    let sent = std::time::Instant::now();
    intent_tx.send(Some(with_backend("10.0.9.22"))).unwrap();
    tokio::task::block_in_place(|| wait_for("10.0.9.22"));
    let took = sent.elapsed();
    drop(intent_tx);
    pipeline.await.unwrap();
    running.stop();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// The VIPs (connect() rewritten at the socket) take the same verdicts as the mesh: a
/// backend on a node this one cannot reach gets no new connection through the VIP here,
/// and gets them again once the node answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vip_sends_no_new_connection_to_a_node_this_one_cannot_reach() {
    use shoal_dataplane::{
        lb::state::{Backend, BackendState, Balance, EndpointMode, LbState, Service, Vip},
        reconcile::{runner, status::StatusFile, vip::VipReconciler},
    };
    let docker = Box::leak(Box::new(FakeDocker::default()));
    docker.run("a", "id-a", 10);
    let dir = std::env::temp_dir().join(format!("shoal-pipeline-reach-{}", std::process::id()));
    let (intent_tx, intent_rx) = watch::channel(None);
    let (out_tx, out_rx) = watch::channel(None);
    let (reach_tx, reach_rx) = watch::channel(Arc::new(shoal_gossip::Unreachable::new()));
    let events = crate::events::DockerEvents::none();
    let (tables_tx, tables) = std::sync::mpsc::channel();
    let running = runner::spawn(
        "vip-reach-test",
        move || Ok(VipReconciler::new(FakeVipKernel(tables_tx.clone()))),
        out_rx,
        None,
        StatusFile::new(&dir, "vip"),
    )
    .await
    .unwrap();
    let docker: &'static FakeDocker = docker;
    let pipeline = tokio::spawn(
        Pipeline::new(docker, out_tx, None)
            .with_reachability(Some(reach_rx))
            .run(intent_rx, events.subscribe()),
    );
    let mut d = intent(&["a"]);
    d.lb = Some(LbState {
        ingress_network: None,
        services: vec![Service {
            id: "s1".into(),
            name: "web".into(),
            endpoint_mode: EndpointMode::Vip,
            balance: Balance::default(),
            vips: vec![Vip {
                network: "web".into(),
                address: "10.0.9.100".parse().unwrap(),
            }],
            ports: Vec::new(),
            backends: [(12, "10.0.9.21"), (13, "10.0.9.22")]
                .into_iter()
                .map(|(n, addr)| Backend {
                    task: format!("t{n}"),
                    node: Ipv4Addr::new(192, 168, 77, n),
                    addresses: [("web".to_string(), addr.parse().unwrap())].into(),
                    state: BackendState::Healthy,
                })
                .collect(),
        }],
    });
    let wait_for = |want: &[&str]| {
        let want: Vec<Ipv4Addr> = want.iter().map(|a| a.parse().unwrap()).collect();
        loop {
            let t = tables
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no table with {want:?} healthy within 10 s"));
            if t.healthy("10.0.9.100".parse().unwrap()) == want {
                return;
            }
        }
    };
    intent_tx.send(Some(Arc::new(d))).unwrap();
    tokio::task::block_in_place(|| wait_for(&["10.0.9.21", "10.0.9.22"]));
    for lost in [false, true] {
        let u = shoal_gossip::Unanswered {
            addr: "192.168.77.12".parse().unwrap(),
            lost,
        };
        reach_tx
            .send(Arc::new([("n12".to_string(), u)].into()))
            .unwrap();
        tokio::task::block_in_place(|| wait_for(&["10.0.9.22"]));
    }
    reach_tx.send(Arc::default()).unwrap();
    tokio::task::block_in_place(|| wait_for(&["10.0.9.21", "10.0.9.22"]));
    drop(intent_tx);
    pipeline.await.unwrap();
    running.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
