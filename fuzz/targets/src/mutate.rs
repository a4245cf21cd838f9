//! The short run's inputs: each target's seeds, then inputs made from them by the
//! mutations libFuzzer starts from (bit flips, interesting bytes, small arithmetic on
//! length-like fields, byte and token inserts, deletes, truncation, copies within an
//! input, splices of two seeds) and, now and then, random bytes. Without coverage
//! feedback, so no corpus grows: every mutated input is one to four mutations of a
//! seed. Deterministic: the same seeds and stream seed give the same inputs, so a
//! finding reproduces on every run.

/// SplitMix64: small, fast, and the same on every platform and version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; `n` must not be 0.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        (self.next_u64() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// A stream seed per name (FNV-1a), so each target gets inputs of its own.
pub fn stream_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Byte values at the edges of signed and unsigned ranges, and flags.
const INTERESTING: &[u8] = &[0, 1, 0x0f, 0x10, 0x20, 0x40, 0x7f, 0x80, 0xfe, 0xff];

/// Pieces that change the structure of the text formats (YAML, JSON, compose's
/// interpolation) or a field's meaning, inserted whole.
const TOKENS: &[&[u8]] = &[
    b"\0",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b": ",
    b",",
    b"\"",
    b"'",
    b"\n",
    b"\n  ",
    b"- ",
    b"#",
    b"${",
    b"$$",
    b"${A:-",
    b"${A:?",
    b"&a ",
    b"*a",
    b"<<: *a",
    b"!!binary ",
    b"null",
    b"true",
    b"0",
    b"-1",
    b"1e999",
    b"4294967296",
    b"18446744073709551616",
    b"0x",
    b"::",
    b"/",
    b"..",
    b"\\u0000",
    b"\xc3",
    b"\xff\xff\xff\xff",
];

/// Makes the mutated inputs of one target from its seeds.
pub struct Mutator<'a> {
    seeds: &'a [Vec<u8>],
    max_len: usize,
    rng: Rng,
}

impl<'a> Mutator<'a> {
    /// Inputs from `seeds` (which may be empty: then random bytes only), none longer
    /// than `max_len`, from the stream `seed`.
    pub fn new(seeds: &'a [Vec<u8>], max_len: usize, seed: u64) -> Mutator<'a> {
        Mutator {
            seeds,
            max_len,
            rng: Rng::new(seed),
        }
    }

    /// The next input.
    pub fn input(&mut self) -> Vec<u8> {
        if self.seeds.is_empty() || self.rng.below(32) == 0 {
            let len = self.rng.below(self.max_len.min(512) + 1);
            return (0..len).map(|_| self.rng.byte()).collect();
        }
        let mut data = self.seeds[self.rng.below(self.seeds.len())].clone();
        for _ in 0..1 + self.rng.below(4) {
            self.mutate(&mut data);
        }
        data.truncate(self.max_len);
        data
    }

    /// Applies one mutation to `data`; says which (0 to 9, as numbered below).
    pub fn mutate(&mut self, data: &mut Vec<u8>) -> usize {
        let rng = &mut self.rng;
        // On an empty input only the inserts and splices make something.
        let what = if data.is_empty() {
            [3, 4, 7][rng.below(3)]
        } else {
            rng.below(10)
        };
        let len = data.len();
        match what {
            // A bit flipped.
            0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            // A byte set to an edge value or any value.
            1 => {
                let i = rng.below(len);
                data[i] = if rng.below(2) == 0 {
                    INTERESTING[rng.below(INTERESTING.len())]
                } else {
                    rng.byte()
                };
            }
            // A 1-, 2- or 4-byte field moved by up to 35 either way, in either byte
            // order: lengths, counts, offsets.
            2 => {
                let width = [1, 2, 4][rng.below(3)].min(len);
                let at = rng.below(len - width + 1);
                let field = &mut data[at..at + width];
                let big_endian = rng.below(2) == 0;
                let mut v = field.iter().fold(0u64, |v, b| v << 8 | u64::from(*b));
                if !big_endian {
                    v = field.iter().rev().fold(0u64, |v, b| v << 8 | u64::from(*b));
                }
                let delta = 1 + rng.below(35) as u64;
                v = if rng.below(2) == 0 {
                    v.wrapping_add(delta)
                } else {
                    v.wrapping_sub(delta)
                };
                for (k, b) in field.iter_mut().enumerate() {
                    let shift = if big_endian { width - 1 - k } else { k };
                    *b = (v >> (8 * shift)) as u8;
                }
            }
            // Random bytes inserted.
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                data.splice(at..at, bytes);
            }
            // A token inserted.
            4 => {
                let at = rng.below(len + 1);
                let token = TOKENS[rng.below(TOKENS.len())];
                data.splice(at..at, token.iter().copied());
            }
            // A run of up to 16 bytes deleted.
            5 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                data.drain(at..at + n);
            }
            // Truncated.
            6 => data.truncate(rng.below(len)),
            // Spliced: this input's start, another seed's end.
            7 => {
                let other = &self.seeds[rng.below(self.seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            // A chunk of the input copied elsewhere in it (repeated structure).
            8 => {
                let from = rng.below(len);
                let n = 1 + rng.below((len - from).min(64));
                let chunk = data[from..from + n].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, chunk);
            }
            // A run of up to 8 bytes overwritten with random ones.
            _ => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(8));
                for b in &mut data[at..at + n] {
                    *b = rng.byte();
                }
            }
        }
        what
    }
}
