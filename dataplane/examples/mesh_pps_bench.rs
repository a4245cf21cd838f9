//! The routing mesh's small-packet benchmark (see `shoal_dataplane::lb::mesh_bench`):
//! prints `BENCH lb udp64_<variant> <packets per second> pps` for the mesh, iptables
//! DNAT and an XDP bounce. Needs root; makes and removes two namespaces of its own.
use std::process::ExitCode;

fn main() -> ExitCode {
    let prefix = format!("mpb{}", std::process::id() % 100_000);
    match shoal_dataplane::lb::mesh_bench::run(&prefix) {
        Ok(results) => {
            for (name, pps) in results {
                println!("BENCH lb udp64_{name} {pps:.0} pps");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mesh_pps_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
