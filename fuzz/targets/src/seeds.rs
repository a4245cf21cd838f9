//! Every target's seed inputs, made by the libraries' own encoders or from the
//! configuration the targets answer from, so they follow the formats as they are now.
//! `write_seeds` writes them as libFuzzer's starting corpus; the short run starts from
//! them too.

use hickory_proto::rr::RecordType;
use shoal_dns::handler::build_query;

/// A seed input: its name (the corpus file is `seed-NAME`) and its bytes.
pub type Seed = (&'static str, Vec<u8>);

/// `manager_port`: a caller byte, then what the caller sent after its TLS handshake.
pub fn manager_port() -> anyhow::Result<Vec<Seed>> {
    Ok(shoal_cluster::manager::fuzzing::seed_inputs()?)
}

/// `gossip_datagram`: a sender byte, then the datagram or body.
pub fn gossip_datagram() -> anyhow::Result<Vec<Seed>> {
    Ok(shoal_gossip::fuzzing::seed_inputs())
}

/// `dns_query` inputs: the first byte says how the query came (bit 0: TCP, bits 1-2:
/// which source), the rest is the query.
pub fn dns_query() -> anyhow::Result<Vec<Seed>> {
    let query = |how: u8, id: u16, name: &str, qtype: RecordType, edns: Option<u16>| {
        let mut out = vec![how];
        out.extend(build_query(id, name, qtype, edns));
        out
    };
    Ok(vec![
        ("web-a", query(0, 1, "web.", RecordType::A, None)),
        ("web-a-tcp", query(1, 2, "web.", RecordType::A, Some(1232))),
        (
            "tasks-web",
            query(0, 3, "tasks.web.", RecordType::A, Some(4096)),
        ),
        ("db-aaaa", query(2, 4, "db.", RecordType::AAAA, None)),
        ("alias-any", query(0, 5, "www.", RecordType::ANY, None)),
        (
            "ptr",
            query(0, 6, "11.1.0.10.in-addr.arpa.", RecordType::PTR, None),
        ),
        ("stranger", query(4, 7, "web.", RecordType::A, None)),
        ("ipv6-source", query(6, 8, "app_web.", RecordType::A, None)),
        (
            "forwarded",
            query(0, 9, "example.org.", RecordType::MX, None),
        ),
        ("axfr", query(1, 10, "web.", RecordType::AXFR, None)),
    ])
}

/// `compose`: each of [`crate::COMPOSE_SEEDS`], and two files merged.
pub fn compose() -> anyhow::Result<Vec<Seed>> {
    Ok(crate::COMPOSE_SEEDS
        .iter()
        .map(|(name, text)| (*name, text.as_bytes().to_vec()))
        .chain([(
            "two-files",
            [
                crate::COMPOSE_SEEDS[0].1,
                "services:\n  web:\n    image: nginx:2\n    ports: [\"9090:90\"]\n",
            ]
            .join("\0")
            .into_bytes(),
        )])
        .collect())
}

/// `declared_state`: [`crate::declared_seeds`].
pub fn declared_state() -> anyhow::Result<Vec<Seed>> {
    Ok(crate::declared_seeds())
}

/// `ebpf_frames`: [`crate::frame_seeds`].
pub fn ebpf_frames() -> anyhow::Result<Vec<Seed>> {
    Ok(crate::frame_seeds())
}
