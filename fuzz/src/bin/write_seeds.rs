//! Writes the fuzz targets' seed inputs (made by the libraries' own encoders, so they
//! follow the formats as they are now) into `<dir>/manager_port/` and
//! `<dir>/gossip_datagram/`, one file per input.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .ok_or("usage: write_seeds <corpus directory>")?,
    );
    let manager: Vec<(&str, Vec<u8>)> = shoal_cluster::manager::fuzzing::seed_inputs()?;
    let gossip = shoal_gossip::fuzzing::seed_inputs();
    for (target, seeds) in [("manager_port", manager), ("gossip_datagram", gossip)] {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir)?;
        for (name, input) in &seeds {
            std::fs::write(target_dir.join(format!("seed-{name}")), input)?;
        }
        println!("{} seed inputs in {}", seeds.len(), target_dir.display());
    }
    Ok(())
}
