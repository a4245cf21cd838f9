//! Numbers from a range: [`NumberPool`] (VXLAN network identifiers, published ports).

use std::{collections::BTreeSet, ops::RangeInclusive};

use super::IpamError;

/// The numbers of one inclusive range that are in use, and the choice of a free one.
///
/// Two ways to choose, for two kinds of number:
/// - [`allocate_lowest`](Self::allocate_lowest): the lowest free number (published
///   ports: an operator reads them, and low ones are the ones they expect);
/// - [`allocate_after_highest`](Self::allocate_after_highest): one past the highest in
///   use, so a number just freed is not handed out again at once; at the end of the
///   range, the lowest free one (VNIs: nodes that have not yet torn down a removed
///   network's VXLAN device and forwarding entries must not see the next network on
///   the same VNI).
///
/// Memory follows the numbers in use, not the size of the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberPool {
    /// What the numbers are, for messages: `VNI`, `port`.
    what: &'static str,
    first: u32,
    last: u32,
    used: BTreeSet<u32>,
}

impl NumberPool {
    /// An empty pool of the numbers in `range` (which must not be empty).
    pub fn new(what: &'static str, range: RangeInclusive<u32>) -> Self {
        let (first, last) = range.into_inner();
        assert!(first <= last, "an empty {what} range: {first}-{last}");
        NumberPool {
            what,
            first,
            last,
            used: BTreeSet::new(),
        }
    }

    /// A pool with `used` in use: a record such as the cluster store's objects, where a
    /// number may appear twice or lie outside the range (a number chosen by the
    /// operator, or one of another range); those outside are left out.
    pub fn restore(
        what: &'static str,
        range: RangeInclusive<u32>,
        used: impl IntoIterator<Item = u32>,
    ) -> Self {
        let mut pool = Self::new(what, range);
        pool.used = used.into_iter().filter(|n| pool.contains(*n)).collect();
        pool
    }

    /// The range.
    pub fn range(&self) -> RangeInclusive<u32> {
        self.first..=self.last
    }

    /// Whether `n` is in the range.
    pub fn contains(&self, n: u32) -> bool {
        (self.first..=self.last).contains(&n)
    }

    /// Whether `n` is in use.
    pub fn is_used(&self, n: u32) -> bool {
        self.used.contains(&n)
    }

    /// The numbers in use, in order.
    pub fn used(&self) -> impl Iterator<Item = u32> + '_ {
        self.used.iter().copied()
    }

    /// The lowest free number.
    pub fn allocate_lowest(&mut self) -> Result<u32, IpamError> {
        let n = self
            .first_free_from(self.first)
            .ok_or_else(|| self.exhausted())?;
        self.used.insert(n);
        Ok(n)
    }

    /// One past the highest number in use, or the lowest free number when that is past
    /// the end of the range (or nothing is in use).
    pub fn allocate_after_highest(&mut self) -> Result<u32, IpamError> {
        let after = match self.used.last() {
            Some(&high) if high < self.last => high + 1,
            _ => self.first,
        };
        let n = self
            .first_free_from(after)
            .or_else(|| self.first_free_from(self.first))
            .ok_or_else(|| self.exhausted())?;
        self.used.insert(n);
        Ok(n)
    }

    /// Takes `n` specifically. Fails if it is outside the range or in use.
    pub fn allocate_specific(&mut self, n: u32) -> Result<(), IpamError> {
        if !self.contains(n) {
            return Err(IpamError::NumberOutOfRange {
                what: self.what,
                number: n,
                first: self.first,
                last: self.last,
            });
        }
        if !self.used.insert(n) {
            return Err(IpamError::NumberInUse {
                what: self.what,
                number: n,
            });
        }
        Ok(())
    }

    /// Frees `n`.
    pub fn release(&mut self, n: u32) -> Result<(), IpamError> {
        if self.used.remove(&n) {
            Ok(())
        } else {
            Err(IpamError::NumberNotAllocated {
                what: self.what,
                number: n,
            })
        }
    }

    /// The first free number at or after `from`, up to the end of the range. Walks the
    /// used numbers from `from` on while they are consecutive, so the cost follows the
    /// numbers in use.
    fn first_free_from(&self, from: u32) -> Option<u32> {
        let mut candidate = from;
        for &n in self.used.range(from..) {
            if n != candidate {
                break;
            }
            if candidate == self.last {
                return None;
            }
            candidate += 1;
        }
        (candidate <= self.last).then_some(candidate)
    }

    fn exhausted(&self) -> IpamError {
        IpamError::NumbersExhausted {
            what: self.what,
            first: self.first,
            last: self.last,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_fills_holes_first() {
        let mut ports = NumberPool::new("port", 30000..=30004);
        assert_eq!(ports.allocate_lowest(), Ok(30000));
        ports.allocate_specific(30002).unwrap();
        assert_eq!(ports.allocate_lowest(), Ok(30001));
        assert_eq!(ports.allocate_lowest(), Ok(30003));
        ports.release(30000).unwrap();
        assert_eq!(ports.allocate_lowest(), Ok(30000));
        assert_eq!(ports.allocate_lowest(), Ok(30004));
        let err = ports.allocate_lowest().unwrap_err();
        assert_eq!(err.to_string(), "no free port left in 30000-30004");
        assert_eq!(ports.used().count(), 5);
    }

    #[test]
    fn after_highest_does_not_reuse_at_once_and_wraps_at_the_end() {
        let mut vnis = NumberPool::new("VNI", 4097..=4101);
        assert_eq!(vnis.allocate_after_highest(), Ok(4097));
        assert_eq!(vnis.allocate_after_highest(), Ok(4098));
        assert_eq!(vnis.allocate_after_highest(), Ok(4099));
        // A freed number below the highest waits until the range wraps.
        vnis.release(4098).unwrap();
        assert_eq!(vnis.allocate_after_highest(), Ok(4100));
        // Freeing the highest brings the next choice back down to it, as before.
        vnis.release(4100).unwrap();
        assert_eq!(vnis.allocate_after_highest(), Ok(4100));
        assert_eq!(vnis.allocate_after_highest(), Ok(4101));
        // At the end of the range: the lowest free one.
        assert_eq!(vnis.allocate_after_highest(), Ok(4098));
        assert_eq!(
            vnis.allocate_after_highest().unwrap_err(),
            IpamError::NumbersExhausted {
                what: "VNI",
                first: 4097,
                last: 4101
            }
        );
    }

    #[test]
    fn restore_keeps_what_is_in_the_range() {
        // 4096 (ingress) lies outside the range of user networks; 4097 appears twice.
        let mut vnis = NumberPool::restore("VNI", 4097..=0xFF_FFFF, [4096, 4097, 4097, 4099]);
        assert_eq!(vnis.used().collect::<Vec<_>>(), [4097, 4099]);
        assert!(!vnis.is_used(4096));
        assert_eq!(vnis.allocate_after_highest(), Ok(4100));
        assert_eq!(vnis.allocate_lowest(), Ok(4098));

        let empty = NumberPool::restore("VNI", 4097..=0xFF_FFFF, []);
        assert_eq!(empty.clone().allocate_after_highest(), Ok(4097));
        assert_eq!(empty.range(), 4097..=0xFF_FFFF);
    }

    #[test]
    fn specific_and_release_checks() {
        let mut ports = NumberPool::new("port", 30000..=32767);
        assert_eq!(
            ports.allocate_specific(8080).unwrap_err().to_string(),
            "port 8080 is outside 30000-32767"
        );
        ports.allocate_specific(30000).unwrap();
        assert_eq!(
            ports.allocate_specific(30000).unwrap_err().to_string(),
            "port 30000 is already in use"
        );
        assert_eq!(
            ports.release(30001).unwrap_err().to_string(),
            "port 30001 is not allocated"
        );
    }

    #[test]
    fn the_ends_of_the_widest_range() {
        let mut all = NumberPool::new("number", 0..=u32::MAX);
        all.allocate_specific(u32::MAX).unwrap();
        assert_eq!(all.allocate_after_highest(), Ok(0));
        assert_eq!(all.allocate_after_highest(), Ok(1));
        let mut one = NumberPool::new("number", 7..=7);
        assert_eq!(one.allocate_after_highest(), Ok(7));
        assert!(one.allocate_after_highest().is_err());
        assert!(one.allocate_lowest().is_err());
    }

    #[test]
    fn a_long_run_in_use_is_walked_quickly() {
        let mut ports = NumberPool::restore("port", 0..=u32::MAX, 0..200_000);
        let start = std::time::Instant::now();
        assert_eq!(ports.allocate_lowest(), Ok(200_000));
        assert_eq!(ports.allocate_after_highest(), Ok(200_001));
        assert!(start.elapsed().as_secs() < 5);
    }
}
