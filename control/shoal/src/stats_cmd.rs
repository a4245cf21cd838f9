//! `shoal dataplane stats`: prints the underlay XDP program's counters, read from the
//! stats map an agent pinned (it stays pinned after the agent stops; the data path's
//! guard counts there too, `vxlan_*`), whether the guard is on and how many VTEPs it
//! accepts VXLAN from, then the ingress
//! routing mesh's counters and its flow table's fill when the mesh's maps are pinned
//! (`<pin_dir>/mesh`), then the service VIPs' counters and map fill (`<pin_dir>/vip`),
//! then the WireGuard device's (encrypted networks), from the agent's
//! `<data_dir>/wireguard.json`: its drops and, per peer, its session, handshakes,
//! packets, bytes and drops.
use std::{
    io::{self, Write},
    path::Path,
};

use anyhow::{bail, Context, Result};
use serde::{ser::SerializeMap, Serialize, Serializer};
use shoal_common::underlay::STATS_MAP;
use shoal_dataplane::{
    guard::GuardMaps,
    lb::mesh::{MeshMaps, MeshStats},
    underlay::{UnderlayStats, MESH_PIN_DIR},
};

/// One printed counter.
type Row = (&'static str, u64);

/// Prints the counters pinned under `pin_dir` and the WireGuard device's status in
/// `data_dir`, as a table or as a JSON object.
pub fn run(pin_dir: &Path, data_dir: &Path, json: bool) -> Result<()> {
    let stats = read(pin_dir)?;
    let mut rows = rows(&stats);
    rows.extend(guard_rows(pin_dir)?);
    rows.extend(mesh_rows(&pin_dir.join(MESH_PIN_DIR))?);
    let vip_dir = pin_dir.join(shoal_dataplane::lb::vip::PIN_SUBDIR);
    rows.extend(
        shoal_dataplane::lb::vip::stats_rows(&vip_dir)
            .with_context(|| format!("reading the VIP maps pinned in {}", vip_dir.display()))?,
    );
    let wireguard = wireguard_status(data_dir);
    if let Some(wg) = &wireguard {
        rows.extend(wireguard_rows(wg));
    }
    let mut out = io::stdout().lock();
    if json {
        write_json(&mut out, &rows, wireguard.as_ref())?;
    } else {
        write_table(&mut out, &rows)?;
        if let Some(wg) = &wireguard {
            write_peers(&mut out, wg)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The WireGuard device's status as its reconciler last wrote it; None when the agent
/// wrote none (no cluster, or an older agent).
fn wireguard_status(data_dir: &Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(data_dir.join("wireguard.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The device's counters: whether it runs, its peers, what it dropped.
fn wireguard_rows(wg: &serde_json::Value) -> Vec<Row> {
    let n = |k: &str| wg[k].as_u64().unwrap_or(0);
    vec![
        ("wireguard_running", u64::from(wg["running"] == true)),
        (
            "wireguard_peers",
            wg["peers"].as_array().map_or(0, |p| p.len() as u64),
        ),
        ("wireguard_dropped_foreign", n("foreign")),
        ("wireguard_dropped_garbage", n("garbage")),
        ("wireguard_dropped_replayed", n("replayed")),
        ("wireguard_dropped_spoofed", n("spoofed")),
        ("wireguard_dropped_no_peer", n("no_peer")),
        ("wireguard_under_load", n("under_load")),
        ("wireguard_io_errors", n("io_errors")),
    ]
}

/// One line per WireGuard peer.
fn write_peers(out: &mut impl Write, wg: &serde_json::Value) -> io::Result<()> {
    for p in wg["peers"].as_array().into_iter().flatten() {
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        let session = match p["last_handshake_secs"].as_f64() {
            Some(s) => format!("handshake {s:.0}s ago"),
            None => "no session".into(),
        };
        writeln!(
            out,
            "wireguard peer {}  {session}  handshakes {}  tx {} packets {} bytes  rx {} packets {} bytes  dropped {}",
            p["addr"].as_str().unwrap_or("?"),
            n("handshakes"),
            n("tx_packets"),
            n("tx_bytes"),
            n("rx_packets"),
            n("rx_bytes"),
            n("dropped"),
        )?;
    }
    Ok(())
}

fn read(pin_dir: &Path) -> Result<UnderlayStats> {
    let pinned = pin_dir.join(STATS_MAP);
    match pinned.try_exists() {
        Ok(true) => {}
        Ok(false) => bail!("no agent has pinned stats in {}", pin_dir.display()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => bail!(
            "permission denied looking for {} (pinned eBPF maps are for root)",
            pinned.display()
        ),
        Err(e) => bail!("looking for {}: {e}", pinned.display()),
    }
    UnderlayStats::read_pinned(pin_dir)
        .with_context(|| format!("reading the stats map pinned at {}", pinned.display()))
}

fn rows(stats: &UnderlayStats) -> Vec<Row> {
    stats.iter().map(|(c, v)| (c.name(), v)).collect()
}

/// `guard_enforced` (1 while VXLAN on the data-path port is checked) and `guard_vteps`
/// (the cluster VTEPs it is accepted from). Nothing when no guard maps are pinned (an
/// older agent's pins).
fn guard_rows(pin_dir: &Path) -> Result<Vec<Row>> {
    if !pin_dir.join(shoal_common::underlay::VTEPS_MAP).exists() {
        return Ok(Vec::new());
    }
    let maps = GuardMaps::open_pinned(pin_dir)
        .with_context(|| format!("opening the guard maps pinned in {}", pin_dir.display()))?;
    let plan = maps.read_plan()?;
    Ok(vec![
        ("guard_enforced", u64::from(plan.port.is_some())),
        ("guard_vteps", maps.vtep_count() as u64),
    ])
}

/// The mesh's counters, then its flow tables under pressure: the live table's entries,
/// capacity and live flows evicted, the opening and closing tables' entries and
/// capacity, the reply tables' entries. Nothing when no mesh maps are pinned.
fn mesh_rows(dir: &Path) -> Result<Vec<Row>> {
    if !dir.join(shoal_common::mesh::STATS_MAP).exists() {
        return Ok(Vec::new());
    }
    let stats = MeshStats::read_pinned(dir)
        .with_context(|| format!("reading the mesh counters pinned in {}", dir.display()))?;
    let maps = MeshMaps::open_pinned(dir)
        .with_context(|| format!("opening the mesh maps pinned in {}", dir.display()))?;
    let t = maps.flow_tables(&stats)?;
    let mut rows: Vec<Row> = stats.iter().map(|(c, v)| (c.name(), v)).collect();
    rows.push(("mesh_flows", t.live));
    rows.push(("mesh_flow_capacity", t.live_capacity));
    rows.push(("mesh_flows_evicted", t.live_evicted));
    rows.push(("mesh_opening_flows", t.opening));
    rows.push(("mesh_opening_capacity", t.opening_capacity));
    rows.push(("mesh_closing_flows", t.closing));
    rows.push(("mesh_closing_capacity", t.closing_capacity));
    let (reply_opening, reply_closing) = maps.reply_opening_closing_count();
    rows.push(("mesh_reply_flows", maps.reply_count() as u64));
    rows.push(("mesh_reply_opening_flows", reply_opening as u64));
    rows.push(("mesh_reply_closing_flows", reply_closing as u64));
    Ok(rows)
}

/// One `name  value` line per counter, names left-aligned, values right-aligned.
fn write_table(out: &mut impl Write, rows: &[Row]) -> io::Result<()> {
    let name_width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let value_width = rows
        .iter()
        .map(|(_, v)| v.to_string().len())
        .max()
        .unwrap_or(0);
    for (name, value) in rows {
        writeln!(out, "{name:<name_width$}  {value:>value_width$}")?;
    }
    Ok(())
}

/// `{"packets":N,"bytes":N,...}` in counter order (then `wireguard_peer_sessions`, the
/// device's peers, when it runs), and a newline.
fn write_json(
    out: &mut impl Write,
    rows: &[Row],
    wireguard: Option<&serde_json::Value>,
) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &StatsJson(rows, wireguard))?;
    writeln!(out)
}

struct StatsJson<'a>(&'a [Row], Option<&'a serde_json::Value>);

impl Serialize for StatsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        if let Some(wg) = self.1 {
            map.serialize_entry("wireguard_peer_sessions", &wg["peers"])?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use shoal_common::underlay::Counter;

    use super::*;

    #[test]
    fn table_has_every_counter_in_order() {
        let mut out = Vec::new();
        write_table(&mut out, &rows(&UnderlayStats::default())).unwrap();
        let text = String::from_utf8(out).unwrap();
        let names: Vec<_> = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .collect();
        assert_eq!(names.len(), Counter::ALL.len());
        for (cols, counter) in names.iter().zip(Counter::ALL) {
            assert_eq!(cols.as_slice(), [counter.name(), "0"]);
        }
    }

    #[test]
    fn json_is_one_object_in_counter_order() {
        let mut out = Vec::new();
        write_json(&mut out, &rows(&UnderlayStats::default()), None).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(r#"{"packets":0,"bytes":0,"#), "{text}");
        assert!(text.ends_with("}\n"), "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value.as_object().unwrap().len(), Counter::ALL.len());
    }

    #[test]
    fn missing_pin_is_one_clear_line() {
        let dir = Path::new("/nonexistent/shoal-pins");
        let err = read(dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no agent has pinned stats in /nonexistent/shoal-pins"
        );
    }
}
