//! Writes the fuzz targets' seed inputs (made by the libraries' own encoders, or from
//! the configuration the targets answer from, so they follow the formats as they are
//! now) into `<dir>/TARGET/`, one file per input.

use std::path::PathBuf;

use hickory_proto::rr::RecordType;
use shoal_dns::handler::build_query;

/// `dns_query` inputs: the first byte says how the query came (bit 0: TCP, bits 1-2:
/// which source), the rest is the query.
fn dns_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let query = |how: u8, id: u16, name: &str, qtype: RecordType, edns: Option<u16>| {
        let mut out = vec![how];
        out.extend(build_query(id, name, qtype, edns));
        out
    };
    vec![
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
    ]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .ok_or("usage: write_seeds <corpus directory>")?,
    );
    let manager: Vec<(&str, Vec<u8>)> = shoal_cluster::manager::fuzzing::seed_inputs()?;
    let gossip = shoal_gossip::fuzzing::seed_inputs();
    let compose = shoal_fuzz::COMPOSE_SEEDS
        .iter()
        .map(|(name, text)| (*name, text.as_bytes().to_vec()))
        .chain([(
            "two-files",
            [
                shoal_fuzz::COMPOSE_SEEDS[0].1,
                "services:\n  web:\n    image: nginx:2\n    ports: [\"9090:90\"]\n",
            ]
            .join("\0")
            .into_bytes(),
        )])
        .collect();
    for (target, seeds) in [
        ("manager_port", manager),
        ("gossip_datagram", gossip),
        ("dns_query", dns_seeds()),
        ("compose", compose),
        ("declared_state", shoal_fuzz::declared_seeds()),
        ("ebpf_frames", shoal_fuzz::frame_seeds()),
    ] {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir)?;
        for (name, input) in &seeds {
            std::fs::write(target_dir.join(format!("seed-{name}")), input)?;
        }
        println!("{} seed inputs in {}", seeds.len(), target_dir.display());
    }
    Ok(())
}
