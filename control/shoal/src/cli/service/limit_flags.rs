//! `--limit-cpu`, `--limit-memory`, `--limit-pids` read as Docker reads them.

use shoal_cluster::store::{Limits, NANO_CPUS_PER_CPU};

use super::mount_flags::parse_size;

/// A number of CPUs (`1.5`, `0.25`) as billionths, exactly (no float rounding).
pub(crate) fn parse_cpus(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid --limit-cpu {text:?}: a number of CPUs such as 0.5 or 2");
    let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    if (whole.is_empty() && fraction.is_empty())
        || fraction.len() > 9
        || !whole
            .chars()
            .chain(fraction.chars())
            .all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let fraction: u64 = format!("{fraction:0<9}").parse().map_err(|_| bad())?;
    whole
        .checked_mul(NANO_CPUS_PER_CPU)
        .and_then(|n| n.checked_add(fraction))
        .ok_or_else(bad)
}

/// `--limit-memory`: a size (`64m`, `1g`, bytes).
pub(crate) fn parse_memory(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| format!("invalid --limit-memory: {e}"))
}

/// The three flags as given (None: not given), into limits.
pub(super) fn limits(
    cpu: Option<&str>,
    memory: Option<&str>,
    pids: Option<u64>,
) -> Result<LimitChanges, String> {
    Ok(LimitChanges {
        nano_cpus: cpu.map(parse_cpus).transpose()?,
        memory_bytes: memory.map(parse_memory).transpose()?,
        pids,
    })
}

/// `--reserve-cpu`, `--reserve-memory` as given (None: not given), read as the limits
/// are.
pub(super) fn reservations(
    cpu: Option<&str>,
    memory: Option<&str>,
) -> Result<(Option<u64>, Option<u64>), String> {
    let cpu = cpu
        .map(parse_cpus)
        .transpose()
        .map_err(|e| e.replace("--limit-cpu", "--reserve-cpu"))?;
    let memory = memory
        .map(parse_memory)
        .transpose()
        .map_err(|e| e.replace("--limit-memory", "--reserve-memory"))?;
    Ok((cpu, memory))
}

/// Limits as given by flags: each None when its flag is absent, 0 to remove it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct LimitChanges {
    pub(super) nano_cpus: Option<u64>,
    pub(super) memory_bytes: Option<u64>,
    pub(super) pids: Option<u64>,
}

impl LimitChanges {
    pub(super) fn into_limits(self) -> Limits {
        Limits {
            nano_cpus: self.nano_cpus.unwrap_or(0),
            memory_bytes: self.memory_bytes.unwrap_or(0),
            pids: self.pids.unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_read_exactly() {
        assert_eq!(parse_cpus("0.5").unwrap(), 500_000_000);
        assert_eq!(parse_cpus("2").unwrap(), 2_000_000_000);
        assert_eq!(parse_cpus("1.25").unwrap(), 1_250_000_000);
        assert_eq!(parse_cpus(".1").unwrap(), 100_000_000);
        assert_eq!(parse_cpus("0.000000001").unwrap(), 1);
        for bad in ["", ".", "-1", "1e3", "0.0000000001", "two", "1.2.3"] {
            assert!(
                parse_cpus(bad).unwrap_err().contains("--limit-cpu"),
                "{bad}"
            );
        }
    }

    #[test]
    fn flags_become_limits_absent_ones_zero() {
        let l = limits(Some("0.5"), Some("64m"), Some(100))
            .unwrap()
            .into_limits();
        assert_eq!(
            (l.nano_cpus, l.memory_bytes, l.pids),
            (500_000_000, 64 << 20, 100)
        );
        assert!(limits(None, None, None).unwrap().into_limits().is_empty());
        assert!(limits(None, Some("lots"), None)
            .unwrap_err()
            .contains("--limit-memory"));
    }
}
