//! The short run of a target, on the stable toolchain and without sanitizers: every
//! seed, then a fixed number of [`Mutator`] inputs made from them, each through the
//! target's `run` with its panic caught. The first input that panics (or takes longer
//! than [`SLOW`]) ends the run as a [`Finding`] that names the target and holds the
//! input, printed in hex so it can be written to a file and replayed with libFuzzer.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::mutate::{stream_seed, Mutator};

/// One input taking this long is a finding too (libFuzzer's `-timeout` in `cargo
/// xtask fuzz` is 30 s, for an optimized build; this one is a debug build).
pub const SLOW: Duration = Duration::from_secs(10);

/// What a run that found nothing did.
#[derive(Debug)]
pub struct Summary {
    pub target: &'static str,
    pub seeds: usize,
    pub mutated: usize,
    pub elapsed: Duration,
    /// The longest any one input took.
    pub slowest: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inputs = self.seeds + self.mutated;
        write!(
            f,
            "fuzz short run {}: {} seeds and {} mutated inputs in {:.1} s ({:.0} inputs/s, slowest {:.1} ms): no panic",
            self.target,
            self.seeds,
            self.mutated,
            self.elapsed.as_secs_f64(),
            inputs as f64 / self.elapsed.as_secs_f64().max(1e-3),
            self.slowest.as_secs_f64() * 1e3,
        )
    }
}

/// An input the target failed on.
#[derive(Debug)]
pub struct Finding {
    pub target: &'static str,
    /// Which input: seeds first, then the mutated ones.
    pub index: usize,
    pub input: Vec<u8>,
    /// The panic's message, or how long the input took.
    pub what: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fuzz target {}: input {} ({} bytes): {}\ninput (hex): {}",
            self.target,
            self.index,
            self.input.len(),
            self.what,
            hex(&self.input)
        )
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `run` on every seed, then on `mutated` inputs made from them (none longer than
/// `max_len`, from the stream named by `target`).
pub fn short_run(
    target: &'static str,
    run: fn(&[u8]),
    seeds: &[Vec<u8>],
    mutated: usize,
    max_len: usize,
) -> Result<Summary, Finding> {
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut mutator = Mutator::new(seeds, max_len, stream_seed(target));
    let inputs = seeds
        .iter()
        .cloned()
        .chain((0..mutated).map(|_| mutator.input()));
    for (index, input) in inputs.enumerate() {
        let t = Instant::now();
        let result = panic::catch_unwind(AssertUnwindSafe(|| run(&input)));
        let took = t.elapsed();
        slowest = slowest.max(took);
        let what = match result {
            Err(payload) => format!("panicked: {}", panic_message(payload.as_ref())),
            Ok(()) if took > SLOW => format!("took {:.1} s", took.as_secs_f64()),
            Ok(()) => continue,
        };
        return Err(Finding {
            target,
            index,
            input,
            what,
        });
    }
    Ok(Summary {
        target,
        seeds: seeds.len(),
        mutated,
        elapsed: started.elapsed(),
        slowest,
    })
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".into()
    }
}
