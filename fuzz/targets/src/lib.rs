//! The fuzz targets' code: each target's body as a plain function
//! ([`targets`]`::NAME::run`), which the cargo-fuzz binaries (`fuzz/fuzz_targets/`)
//! and the short run of `cargo xtask test` (`tests/short_run.rs`) both call; the
//! small, realistic node configuration the targets answer from (one ingress and one
//! service network, a service with a VIP, a published port with a local and a remote
//! backend), in the formats the agent takes it; every target's seed inputs
//! ([`seeds`]); and the short run itself ([`short_run`], inputs from [`mutate`]).

pub mod mutate;
pub mod seeds;
pub mod short_run;
pub mod targets;

/// The node under test and its peer (underlay addresses).
pub const NODE: [u8; 4] = [192, 168, 77, 11];
pub const PEER: [u8; 4] = [192, 168, 77, 12];
/// A client on the underlay.
pub const CLIENT: [u8; 4] = [192, 168, 77, 100];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
/// The ingress network's VNI and the VXLAN port.
pub const INGRESS_VNI: u32 = 4096;
pub const VXLAN_PORT: u16 = 4789;
/// Published ports: 8080/tcp (local and remote backends), 5353/udp (remote only).
pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;
/// The service VIP on the `front` network.
pub const VIP: [u8; 4] = [10, 0, 1, 2];

/// The overlay state (`--declared-state`): the ingress network and `front`, a local
/// task on each, remote tasks on the peer.
pub const OVERLAY_JSON: &str = r#"{
  "networks": [
    {"id": "ingress", "vni": 4096, "subnet": "10.255.0.0/16", "gateway": "10.255.0.1"},
    {"id": "front", "vni": 4097, "subnet": "10.0.1.0/24", "gateway": "10.0.1.1", "mtu": 1450}
  ],
  "local_endpoints": [
    {"network": "ingress", "container": "web.1", "ip": "10.255.0.3"},
    {"network": "front", "container": "web.1", "ip": "10.0.1.11", "mac": "02:42:0a:00:01:0b"},
    {"network": "front", "container": "client", "ip": "10.0.1.50"}
  ],
  "remote_endpoints": [
    {"network": "ingress", "ip": "10.255.0.4", "vtep": "192.168.77.12"},
    {"network": "front", "ip": "10.0.1.12", "vtep": "192.168.77.12"}
  ]
}"#;

/// The DNS state (`--declared-dns`): `web` (VIP, two tasks), `db` (dnsrr, one with IPv6
/// too), the container `client` with an alias.
pub const DNS_JSON: &str = r#"{
  "services": [
    {"name": "web", "stack": "app", "endpoint_mode": "vip",
     "vips": [{"network": "front", "ip": "10.0.1.2"}],
     "tasks": [
       {"id": "w1", "slot": 1, "addresses": [{"network": "front", "ip": "10.0.1.11"}]},
       {"id": "w2", "slot": 2, "healthy": false, "addresses": [{"network": "front", "ip": "10.0.1.12"}]}
     ],
     "aliases": [{"network": "front", "alias": "www"}]},
    {"name": "db", "endpoint_mode": "dnsrr",
     "tasks": [
       {"id": "d1", "slot": 1, "addresses": [{"network": "front", "ip": "10.0.1.20"}, {"network": "front", "ip": "fd00::20"}]}
     ]}
  ],
  "containers": [
    {"name": "client", "addresses": [{"network": "front", "ip": "10.0.1.50"}],
     "aliases": [{"network": "front", "alias": "tester"}]}
  ]
}"#;

/// The LB state (`--declared-lb`): `web` with its VIP and 8080/tcp published over the
/// local and the remote task; `dns` with 5353/udp to the remote one only.
pub const LB_JSON: &str = r#"{
  "ingress_network": "ingress",
  "services": [
    {"id": "s1", "name": "web", "balance": "round_robin",
     "vips": [{"network": "front", "address": "10.0.1.2"}],
     "ports": [{"protocol": "tcp", "published": 8080, "target": 80}],
     "backends": [
       {"task": "w1", "node": "192.168.77.11", "addresses": {"ingress": "10.255.0.3", "front": "10.0.1.11"}},
       {"task": "w2", "node": "192.168.77.12", "addresses": {"ingress": "10.255.0.4", "front": "10.0.1.12"}}
     ]},
    {"id": "s2", "name": "dns",
     "ports": [{"protocol": "udp", "published": 5353, "target": 53}],
     "backends": [
       {"task": "d2", "node": "192.168.77.12", "addresses": {"ingress": "10.255.0.4"}}
     ]}
  ]
}"#;

/// Separates the documents of a `declared_state` input (JSON text has no NUL byte).
pub const DOCUMENT_SEPARATOR: u8 = 0;

/// A `declared_state` input: overlay, DNS and LB documents.
pub fn declared_input(overlay: &str, dns: &str, lb: &str) -> Vec<u8> {
    let mut out = overlay.as_bytes().to_vec();
    out.push(DOCUMENT_SEPARATOR);
    out.extend_from_slice(dns.as_bytes());
    out.push(DOCUMENT_SEPARATOR);
    out.extend_from_slice(lb.as_bytes());
    out
}

/// Seed inputs of `declared_state`.
pub fn declared_seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("all", declared_input(OVERLAY_JSON, DNS_JSON, LB_JSON)),
        ("overlay-only", OVERLAY_JSON.as_bytes().to_vec()),
        ("empty", declared_input("{}", "{}", "{}")),
        (
            "overlap",
            declared_input(
                r#"{"networks": [{"id": "a", "vni": 1, "subnet": "10.0.0.0/8", "gateway": "10.0.0.1"},
                                 {"id": "b", "vni": 2, "subnet": "10.1.0.0/16", "gateway": "10.1.0.1"}]}"#,
                "{}",
                "{}",
            ),
        ),
    ]
}

/// Compose files for the `compose` target's seeds (and the variables it interpolates).
pub const COMPOSE_SEEDS: &[(&str, &str)] = &[
    (
        "web",
        "services:\n  web:\n    image: nginx:${TAG:-1.25}\n    ports:\n      - \"8080:80\"\n      - target: 53\n        published: 5353\n        protocol: udp\n    networks: [front]\n    deploy:\n      replicas: 3\n      endpoint_mode: vip\n      update_config:\n        parallelism: 1\n        delay: 5s\n        order: start-first\n      restart_policy:\n        condition: on-failure\n        max_attempts: 3\n      placement:\n        constraints: [node.role == worker]\n      resources:\n        limits:\n          cpus: '0.5'\n          memory: 64M\nnetworks:\n  front:\n    driver: overlay\n",
    ),
    (
        "full",
        "version: \"3.8\"\nservices:\n  db:\n    image: busybox\n    command: [\"sh\", \"-c\", \"sleep 1d\"]\n    environment:\n      A: \"1\"\n      B: $HOME\n    labels: [\"x=y\"]\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 2s\n      retries: 3\n    secrets: [pw]\n    configs:\n      - source: conf\n        target: /etc/conf\n    volumes:\n      - data:/data\n      - type: tmpfs\n        target: /tmp\n    deploy:\n      mode: global\n      endpoint_mode: dnsrr\n    dns: [1.1.1.1]\n    extra_hosts: [\"h:10.0.0.1\"]\n    stop_grace_period: 3s\n    user: \"1000\"\n    working_dir: /\n    hostname: db\nvolumes:\n  data: {}\nsecrets:\n  pw:\n    external: true\nconfigs:\n  conf:\n    external: true\n",
    ),
    (
        "replicated-job",
        "services:\n  job:\n    image: busybox\n    deploy:\n      mode: replicated-job\n      replicas: 2\n    init: true\n    cap_add: [NET_ADMIN]\n    sysctls:\n      net.core.somaxconn: 1024\n    ulimits:\n      nofile:\n        soft: 1024\n        hard: 2048\n    logging:\n      driver: json-file\n      options:\n        max-size: 1m\n",
    ),
];

/// The variables a `compose` input is interpolated with (as from the environment).
pub fn compose_variable(name: &str) -> Option<String> {
    match name {
        "TAG" => Some("1.25".into()),
        "HOME" => Some("/root".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

/// An Ethernet + IPv4 + TCP frame from the client to `dst:dport`.
pub fn tcp_frame(dst: [u8; 4], sport: u16, dport: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(CLIENT, dst, 64)
        .tcp(sport, dport, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("a TCP frame");
    out
}

/// An Ethernet + IPv4 + UDP frame from `src` to `dst:dport`.
pub fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, payload)
        .expect("a UDP frame");
    out
}

/// `inner` in VXLAN (VNI `vni`) from `src` to this node.
pub fn vxlan_frame(src: [u8; 4], vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&vni.to_be_bytes()[1..]);
    payload.push(0);
    payload.extend_from_slice(inner);
    udp_frame(src, NODE, 49152, VXLAN_PORT, &payload)
}

/// Seed frames of `ebpf_frames`.
pub fn frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let reply = {
        // A backend's reply as the mesh's TC programs see it: from the task to the client.
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2(
            [0x02, 0x42, 10, 255, 0, 3],
            [0x02, 0x42, 10, 255, 0, 1],
        )
        .ipv4([10, 255, 0, 3], CLIENT, 64)
        .tcp(80, 40000, 1, 64240)
        .syn()
        .ack(1001)
        .write(&mut out, &[])
        .expect("a reply frame");
        out
    };
    vec![
        (
            "tcp-syn-published",
            tcp_frame(NODE, 40000, TCP_PORT, true, &[]),
        ),
        (
            "tcp-data-published",
            tcp_frame(NODE, 40000, TCP_PORT, false, b"GET / HTTP/1.0\r\n\r\n"),
        ),
        ("tcp-other-port", tcp_frame(NODE, 40001, 22, true, &[])),
        (
            "udp-published",
            udp_frame(CLIENT, NODE, 40002, UDP_PORT, b"query"),
        ),
        (
            "vxlan-from-peer",
            vxlan_frame(PEER, INGRESS_VNI, &tcp_frame(VIP, 40003, 80, true, &[])),
        ),
        (
            "vxlan-from-stranger",
            vxlan_frame(CLIENT, INGRESS_VNI, &tcp_frame(VIP, 40004, 80, true, &[])),
        ),
        ("reply", reply),
    ]
}
