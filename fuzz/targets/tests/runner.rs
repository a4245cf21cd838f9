//! The short run's own machinery: the mutator's inputs (deterministic, varied, within
//! bounds, every mutation happening) and the runner's findings (a panicking input
//! reported with the target and its bytes). Run with the short run by `cargo xtask
//! test`.

use std::panic;

use shoal_fuzz_targets::mutate::Mutator;
use shoal_fuzz_targets::short_run::{hex, short_run};

fn seeds() -> Vec<Vec<u8>> {
    vec![
        b"services:\n  web:\n    image: a\n".to_vec(),
        vec![1, 2, 3, 4],
    ]
}

#[test]
fn the_same_stream_gives_the_same_inputs() {
    let seeds = seeds();
    let a: Vec<Vec<u8>> = {
        let mut m = Mutator::new(&seeds, 4096, 7);
        (0..500).map(|_| m.input()).collect()
    };
    let b: Vec<Vec<u8>> = {
        let mut m = Mutator::new(&seeds, 4096, 7);
        (0..500).map(|_| m.input()).collect()
    };
    assert_eq!(a, b);
    let mut other = Mutator::new(&seeds, 4096, 8);
    let c: Vec<Vec<u8>> = (0..500).map(|_| other.input()).collect();
    assert_ne!(a, c);
}

#[test]
fn inputs_differ_from_the_seeds_and_from_each_other_and_respect_max_len() {
    let seeds = seeds();
    let mut m = Mutator::new(&seeds, 16, 1);
    let inputs: Vec<Vec<u8>> = (0..2000).map(|_| m.input()).collect();
    assert!(inputs.iter().all(|i| i.len() <= 16));
    let distinct: std::collections::HashSet<&Vec<u8>> = inputs.iter().collect();
    assert!(distinct.len() > 1500, "{} distinct of 2000", distinct.len());
    let unchanged = inputs.iter().filter(|i| seeds.contains(i)).count();
    assert!(unchanged < 100, "{unchanged} of 2000 are a seed unchanged");
    // Shorter, longer and random inputs all come up.
    assert!(inputs.iter().any(|i| i.is_empty()));
    assert!(inputs.iter().any(|i| i.len() == 16));
}

#[test]
fn every_mutation_happens_and_changes_the_input() {
    let seed: Vec<u8> = (100..164).collect();
    let seeds = [seed.clone(), b"other".to_vec()];
    let mut m = Mutator::new(&seeds, 4096, 3);
    let mut seen = [0usize; 10];
    for _ in 0..2000 {
        let mut data = seed.clone();
        let what = m.mutate(&mut data);
        seen[what] += 1;
        match what {
            // A bit flip and a field moved by 1 to 35 always change a byte.
            0 | 2 => assert!(data != seed && data.len() == seed.len(), "{what}"),
            3 | 4 | 8 => assert!(data.len() > seed.len(), "{what}"),
            5 | 6 => assert!(data.len() < seed.len(), "{what}"),
            // An interesting byte, a splice or random bytes may happen to match.
            _ => {}
        }
    }
    assert!(seen.iter().all(|n| *n > 100), "{seen:?}");
    // An empty input only grows.
    for _ in 0..200 {
        let mut data = Vec::new();
        let what = m.mutate(&mut data);
        assert!([3, 4, 7].contains(&what), "{what}");
    }
}

#[test]
fn no_seeds_means_random_bytes() {
    let mut m = Mutator::new(&[], 100, 5);
    let inputs: Vec<Vec<u8>> = (0..200).map(|_| m.input()).collect();
    assert!(inputs.iter().all(|i| i.len() <= 100));
    assert!(inputs.iter().map(Vec::len).max() > Some(50));
}

/// Panics on any input holding the byte 0x42 after position 0.
fn picky(input: &[u8]) {
    quiet_picky();
    assert!(!input.iter().skip(1).any(|b| *b == 0x42), "a 0x42");
}

/// The panics `picky` is meant to raise print nothing; every other panic prints as
/// before.
fn quiet_picky() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&"a 0x42") {
                default(info);
            }
        }));
    });
}

#[test]
fn a_panic_is_a_finding_with_the_input() {
    let seeds = vec![vec![0u8; 8], vec![1, 2, 3]];
    let f = short_run("picky", picky, &seeds, 5000, 64).expect_err("a finding");
    assert_eq!(f.target, "picky");
    assert!(f.index >= seeds.len());
    assert!(f.input.iter().skip(1).any(|b| *b == 0x42));
    assert_eq!(f.what, "panicked: a 0x42");
    let shown = f.to_string();
    assert!(shown.starts_with("fuzz target picky: input "), "{shown}");
    assert!(
        shown.ends_with(&format!("input (hex): {}", hex(&f.input))),
        "{shown}"
    );
    // The same run finds the same input.
    let again = short_run("picky", picky, &seeds, 5000, 64).expect_err("a finding");
    assert_eq!((again.index, again.input), (f.index, f.input));
}

#[test]
fn a_panicking_seed_is_found_first() {
    let seeds = vec![vec![0u8; 8], vec![0, 0x42]];
    let f = short_run("picky", picky, &seeds, 10, 64).expect_err("a finding");
    assert_eq!((f.index, f.input), (1, vec![0, 0x42]));
}

#[test]
fn a_target_that_holds_passes_every_input() {
    fn fine(_: &[u8]) {}
    let s = short_run("fine", fine, &[vec![1, 2]], 300, 64).expect("no finding");
    assert_eq!((s.seeds, s.mutated), (1, 300));
}

#[test]
fn hex_is_two_digits_a_byte() {
    assert_eq!(hex(&[0, 0x0f, 0xa0, 0xff]), "000fa0ff");
}
