//! The Prometheus text exposition format (version 0.0.4), written by hand: a family is
//! its `# HELP` and `# TYPE` lines, then its samples, each `name{labels} value`. What
//! the format asks and this writer keeps to:
//! - every family's name appears once, its samples together right after its header;
//! - names match `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*`
//!   (checked: a bad name is a bug in the caller, so it panics in tests and debug);
//! - HELP text escapes `\` and newlines, label values `\`, `"` and newlines;
//! - a histogram's buckets are cumulative, end with `le="+Inf"` equal to `_count`, and
//!   come with `_sum`.
use std::{collections::BTreeSet, fmt::Write};

use shoal_dns::stats::HistogramSnapshot;

/// The content type Prometheus expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A family's metric type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One scrape's text, built family by family.
#[derive(Default)]
pub struct Exposition {
    text: String,
    names: BTreeSet<String>,
}

/// A family being written: its samples go right after its header.
pub struct Family<'a> {
    out: &'a mut Exposition,
    name: String,
    kind: Kind,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts family `name` (counters must end in `_total`, as the conventions say).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> Family<'_> {
        debug_assert!(valid_name(name, true), "bad metric name {name:?}");
        debug_assert!(
            (kind == Kind::Counter) == name.ends_with("_total"),
            "{name}: counters and only counters end in _total"
        );
        let fresh = self.names.insert(name.to_owned());
        debug_assert!(fresh, "family {name} written twice");
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.name());
        Family {
            out: self,
            name: name.to_owned(),
            kind,
        }
    }

    /// How many families were written.
    #[cfg(test)]
    pub fn families(&self) -> usize {
        self.names.len()
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

impl Family<'_> {
    /// A counter's or gauge's sample.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        debug_assert!(
            self.kind != Kind::Histogram,
            "{}: use histogram()",
            self.name
        );
        let name = self.name.clone();
        self.line(&name, labels, None, value);
        self
    }

    /// A counter's or gauge's sample from an integer (exact up to 2^53, as every
    /// Prometheus value is a float64).
    pub fn int(&mut self, labels: &[(&str, &str)], value: u64) -> &mut Self {
        self.sample(labels, value as f64)
    }

    /// A histogram's series for `labels`: its buckets, `_sum` and `_count`.
    pub fn histogram(&mut self, labels: &[(&str, &str)], h: &HistogramSnapshot) -> &mut Self {
        debug_assert!(
            self.kind == Kind::Histogram,
            "{}: not a histogram",
            self.name
        );
        let bucket = format!("{}_bucket", self.name);
        for (bound, count) in &h.buckets {
            let le = format_value(*bound);
            self.line(&bucket, labels, Some(&le), *count as f64);
        }
        self.line(&bucket, labels, Some("+Inf"), h.count as f64);
        let sum = format!("{}_sum", self.name);
        self.line(&sum, labels, None, h.sum_seconds);
        let count = format!("{}_count", self.name);
        self.line(&count, labels, None, h.count as f64);
        self
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>, value: f64) {
        debug_assert!(
            labels
                .iter()
                .all(|(k, _)| valid_name(k, false) && *k != "le"),
            "{name}: bad label name in {labels:?}"
        );
        let text = &mut self.out.text;
        text.push_str(name);
        if !labels.is_empty() || le.is_some() {
            text.push('{');
            let mut first = true;
            for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
                if !first {
                    text.push(',');
                }
                first = false;
                let _ = write!(text, "{k}=\"{}\"", escape_label(v));
            }
            text.push('}');
        }
        let _ = writeln!(text, " {}", format_value(value));
    }
}

/// A value as the format writes it: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.abs() >= 1e15 {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A metric name (colons allowed) or a label name (no colons, no leading `__`).
fn valid_name(s: &str, metric: bool) -> bool {
    let mut chars = s.chars();
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (metric && c == ':');
    let ok_rest = |c: char| c.is_ascii_alphanumeric() || c == '_' || (metric && c == ':');
    chars.next().is_some_and(ok_first) && chars.all(ok_rest) && (metric || !s.starts_with("__"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_and_a_gauge_are_written_with_their_headers() {
        let mut e = Exposition::new();
        e.family("shoal_x_total", Kind::Counter, "Things seen.")
            .int(&[("reason", "a")], 3)
            .int(&[("reason", "b")], 0);
        e.family("shoal_fill_ratio", Kind::Gauge, "How full.")
            .sample(&[], 0.25);
        assert_eq!(e.families(), 2);
        assert_eq!(
            e.into_text(),
            "# HELP shoal_x_total Things seen.\n\
             # TYPE shoal_x_total counter\n\
             shoal_x_total{reason=\"a\"} 3\n\
             shoal_x_total{reason=\"b\"} 0\n\
             # HELP shoal_fill_ratio How full.\n\
             # TYPE shoal_fill_ratio gauge\n\
             shoal_fill_ratio 0.25\n"
        );
    }

    #[test]
    fn help_and_label_values_are_escaped() {
        let mut e = Exposition::new();
        e.family("shoal_a", Kind::Gauge, "back\\slash\nnew line")
            .int(&[("service", "we\"b\\1\nx")], 1);
        assert_eq!(
            e.into_text(),
            "# HELP shoal_a back\\\\slash\\nnew line\n\
             # TYPE shoal_a gauge\n\
             shoal_a{service=\"we\\\"b\\\\1\\nx\"} 1\n"
        );
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_inf_sum_and_count() {
        let h = HistogramSnapshot {
            buckets: vec![(0.001, 2), (0.01, 5)],
            count: 6,
            sum_seconds: 0.5,
        };
        let mut e = Exposition::new();
        e.family("shoal_d_seconds", Kind::Histogram, "Durations.")
            .histogram(&[("r", "x")], &h);
        assert_eq!(
            e.into_text(),
            "# HELP shoal_d_seconds Durations.\n\
             # TYPE shoal_d_seconds histogram\n\
             shoal_d_seconds_bucket{r=\"x\",le=\"0.001\"} 2\n\
             shoal_d_seconds_bucket{r=\"x\",le=\"0.01\"} 5\n\
             shoal_d_seconds_bucket{r=\"x\",le=\"+Inf\"} 6\n\
             shoal_d_seconds_sum{r=\"x\"} 0.5\n\
             shoal_d_seconds_count{r=\"x\"} 6\n"
        );
    }

    #[test]
    fn values_are_formatted_as_the_format_wants() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(12345678.0), "12345678");
        assert_eq!(format_value(0.0001), "0.0001");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(1.5e300), "1.5e300");
        assert_eq!(format_value(-2.0), "-2");
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("shoal_mesh_packets_total", true));
        assert!(valid_name("a:b", true));
        assert!(!valid_name("a:b", false));
        assert!(!valid_name("1abc", true));
        assert!(!valid_name("", true));
        assert!(!valid_name("__x", false));
        assert!(!valid_name("a-b", true));
    }

    #[test]
    #[should_panic(expected = "counters and only counters end in _total")]
    fn a_counter_without_total_is_refused() {
        Exposition::new().family("shoal_x", Kind::Counter, "x");
    }

    #[test]
    #[should_panic(expected = "written twice")]
    fn a_family_is_written_once() {
        let mut e = Exposition::new();
        e.family("shoal_x", Kind::Gauge, "x");
        e.family("shoal_x", Kind::Gauge, "x");
    }
}
