//! Writes every fuzz target's seed inputs (`shoal_fuzz_targets::seeds`) into
//! `<dir>/TARGET/`, one file per input: libFuzzer's starting corpus.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .ok_or("usage: write_seeds <corpus directory>")?,
    );
    for target in shoal_fuzz_targets::targets::TARGETS {
        let seeds = (target.seeds)()?;
        let target_dir = dir.join(target.name);
        std::fs::create_dir_all(&target_dir)?;
        for (name, input) in &seeds {
            std::fs::write(target_dir.join(format!("seed-{name}")), input)?;
        }
        println!("{} seed inputs in {}", seeds.len(), target_dir.display());
    }
    Ok(())
}
