//! The underlay object's pinned maps across agent versions: a counter map an older
//! agent pinned with fewer counters is replaced (its counters restart from zero) rather
//! than reused, where the newer programs would find no slot for the counters it added;
//! a map of the right size is reused.
//!
//! Needs root (bpffs). Without root the test says so and passes, unless
//! SHOAL_REQUIRE_ROOT=1.
use std::path::PathBuf;

use aya::maps::{MapData, PerCpuArray};
use shoal_common::underlay::{Counter, STATS_MAP};
use shoal_dataplane::{bpffs, underlay::UnderlayProgram};

fn pinned_size(dir: &std::path::Path) -> u32 {
    MapData::from_pin(dir.join(STATS_MAP))
        .expect("pinned stats map")
        .info()
        .expect("map info")
        .max_entries()
}

#[test]
fn an_older_agents_smaller_counter_map_is_replaced() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("SHOAL_REQUIRE_ROOT").as_deref() != Ok("1"),
            "pinning eBPF maps needs root and SHOAL_REQUIRE_ROOT=1 forbids skipping"
        );
        eprintln!("skipped: pinning eBPF maps needs root");
        return;
    }
    let dir = PathBuf::from(format!(
        "{}/shoal-test-pins-{}",
        bpffs::BPFFS_ROOT,
        std::process::id()
    ));
    bpffs::prepare_pin_dir(&dir).expect("pin dir");
    let old = PerCpuArray::<MapData, u64>::create(Counter::COUNT - 2, 0).expect("old map");
    old.pin(dir.join(STATS_MAP)).expect("pin the old map");
    assert_eq!(pinned_size(&dir), Counter::COUNT - 2);

    let loaded = UnderlayProgram::load_pinned_with(&dir, 1024).map(|p| {
        let stats = p.stats().map(|s| s.iter().count());
        (stats, pinned_size(&dir))
    });
    // Reused when it fits: loading again keeps the same map.
    let again = UnderlayProgram::load_pinned_with(&dir, 1024).map(|_| pinned_size(&dir));
    std::fs::remove_dir_all(&dir).expect("remove the test's pins");

    let (stats, size) = loaded.expect("load over an older agent's pins");
    assert_eq!(stats.expect("read every counter"), Counter::COUNT as usize);
    assert_eq!(size, Counter::COUNT, "the pinned map has every counter now");
    assert_eq!(again.expect("load again"), Counter::COUNT);
}
