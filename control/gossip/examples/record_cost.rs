//! What signing costs: the time to sign one node record (on every change of a node's
//! endpoints) and to check one (on every receiver, for every new version), for records of
//! 1 to 1,000 endpoints, plus each record's size on the wire. One thread, medians of
//! repeated runs. Prints `BENCH record ...` lines.
//!
//! `cargo run --release -p shoal-gossip --example record_cost`
use std::{collections::BTreeMap, time::Instant};

use shoal_gossip::{
    craft::{self, About},
    sim::endpoint,
    LocalIdentity,
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let me = LocalIdentity::generate()?;
    let about = About {
        node_id: "x6p3k2m9q1w8e7r4t5y0u2i3o".into(),
        generation: me.generation(),
        addr: "192.168.77.11:7946".parse()?,
    };
    for n in [1usize, 10, 100, 1000] {
        let endpoints: BTreeMap<String, _> =
            (0..n).map(|k| (format!("e{k}"), endpoint(0, k))).collect();
        let vtep = endpoint(0, 0).vtep;
        let rounds = if n >= 1000 { 50 } else { 500 };
        let mut sign_us = Vec::with_capacity(rounds);
        let mut verify_us = Vec::with_capacity(rounds);
        let mut len = 0;
        for version in 1..=rounds as u64 {
            let t = Instant::now();
            let value = craft::signed_record(&me, "c1", &about, version, vtep, &endpoints)?;
            sign_us.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let ok = craft::is_signed_by(&me.public_key(), "c1", &about, version, &value);
            verify_us.push(t.elapsed().as_secs_f64() * 1e6);
            anyhow::ensure!(ok, "a record does not verify");
            len = value.len();
        }
        println!(
            "BENCH record endpoints={n} sign_us={:.1} verify_us={:.1} bytes={len}",
            median(sign_us),
            median(verify_us)
        );
    }
    Ok(())
}
