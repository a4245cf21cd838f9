//! Fixed-width lowercase base-36 numbers, as Docker writes the parts of a join token
//! (Go's `big.Int.Text(36)`, left-padded with `0`).
//!
//! The bytes are read as one big-endian unsigned number.

use std::fmt;

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Why a base-36 string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Base36Error {
    /// Not exactly the expected number of characters.
    Length { expected: usize, found: usize },
    /// A character outside `[0-9a-z]` at this (0-based) position.
    Character { position: usize },
    /// The number does not fit in the expected number of bytes.
    OutOfRange,
}

impl fmt::Display for Base36Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length { expected, found } => {
                write!(f, "expected {expected} characters, found {found}")
            }
            Self::Character { position } => {
                write!(f, "character {} is not one of [0-9a-z]", position + 1)
            }
            Self::OutOfRange => write!(f, "the number is too large"),
        }
    }
}

/// `bytes` as a base-36 number, left-padded with `0` to `width` characters (wider if the
/// number needs more).
pub(crate) fn encode_padded(bytes: &[u8], width: usize) -> String {
    let mut number = bytes.to_vec();
    let mut digits = Vec::new();
    while number.iter().any(|&b| b != 0) {
        // number /= 36, collecting the remainder.
        let mut remainder: u32 = 0;
        for byte in number.iter_mut() {
            let acc = (remainder << 8) | u32::from(*byte);
            *byte = (acc / 36) as u8;
            remainder = acc % 36;
        }
        digits.push(ALPHABET[remainder as usize]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).expect("alphabet is ASCII")
}

/// Decodes exactly `width` characters of `[0-9a-z]` into an `N`-byte big-endian number.
pub(crate) fn decode_fixed<const N: usize>(
    text: &str,
    width: usize,
) -> Result<[u8; N], Base36Error> {
    let found = text.chars().count();
    if found != width {
        return Err(Base36Error::Length {
            expected: width,
            found,
        });
    }
    let mut number = [0u8; N];
    for (position, c) in text.chars().enumerate() {
        let digit = match c {
            '0'..='9' => c as u8 - b'0',
            'a'..='z' => c as u8 - b'a' + 10,
            _ => return Err(Base36Error::Character { position }),
        };
        // number = number * 36 + digit
        let mut carry = u32::from(digit);
        for byte in number.iter_mut().rev() {
            let acc = u32::from(*byte) * 36 + carry;
            *byte = acc as u8;
            carry = acc >> 8;
        }
        if carry != 0 {
            return Err(Base36Error::OutOfRange);
        }
    }
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_go_big_int_text_36() {
        assert_eq!(encode_padded(&[], 3), "000");
        assert_eq!(encode_padded(&[0, 0], 1), "0");
        assert_eq!(encode_padded(&[35], 1), "z");
        assert_eq!(encode_padded(&[36], 1), "10");
        assert_eq!(encode_padded(&[0x01, 0x00], 4), "0074"); // 256 = 7*36 + 4
        assert_eq!(encode_padded(&[0xff; 16], 25), "f5lxx1zz5pnorynqglhzmsp33");
    }

    #[test]
    fn round_trips_at_the_edges() {
        for bytes in [[0u8; 32], [0xff; 32], {
            let mut b = [0u8; 32];
            b[31] = 1;
            b
        }] {
            let text = encode_padded(&bytes, 50);
            assert_eq!(text.len(), 50);
            assert_eq!(decode_fixed::<32>(&text, 50).unwrap(), bytes);
        }
    }

    #[test]
    fn refuses_bad_input() {
        assert_eq!(
            decode_fixed::<16>("abc", 25),
            Err(Base36Error::Length {
                expected: 25,
                found: 3
            })
        );
        assert_eq!(
            decode_fixed::<16>("000000000000000000000000A", 25),
            Err(Base36Error::Character { position: 24 })
        );
        assert_eq!(
            decode_fixed::<16>("00000000000000000000000é0", 25),
            Err(Base36Error::Character { position: 23 })
        );
        // 36^25 - 1 > 2^128 - 1
        assert_eq!(
            decode_fixed::<16>("zzzzzzzzzzzzzzzzzzzzzzzzz", 25),
            Err(Base36Error::OutOfRange)
        );
        assert_eq!(
            decode_fixed::<16>("f5lxx1zz5pnorynqglhzmsp33", 25),
            Ok([0xff; 16])
        );
        assert_eq!(
            decode_fixed::<16>("f5lxx1zz5pnorynqglhzmsp34", 25),
            Err(Base36Error::OutOfRange)
        );
    }
}
