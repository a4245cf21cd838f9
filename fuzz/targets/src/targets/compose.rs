//! `shoal stack deploy`'s compose files: the input is up to three files separated by
//! NUL bytes, each interpolated and parsed (`compose::parse`, with a fixed set of
//! variables), merged in order, and every service converted to a service spec
//! (`compose::convert`), as the command does before it sends anything.

use std::path::Path;

use shoal::cli::stack::compose::{self, NAMESPACE_LABEL};

/// Where relative `env_file` and secret `file` paths point: a directory that does not
/// exist, so reading one fails as for a missing file.
const DIR: &str = "/nonexistent/shoal-fuzz-compose";

/// One input, as libFuzzer hands it to the target: panics on a finding.
pub fn run(input: &[u8]) {
    // A file may name other files (`env_file`, a secret's `file`): reading one is what
    // the user asked for. Devices and pseudo-files (an endless /dev/zero) are not what
    // is tested here.
    if [&b"dev/"[..], b"proc/", b"sys/", b"/.."]
        .iter()
        .any(|p| input.windows(p.len()).any(|w| w == *p))
    {
        return;
    }
    let mut values = Vec::new();
    for (i, file) in input.split(|b| *b == 0).take(3).enumerate() {
        let Ok(text) = std::str::from_utf8(file) else {
            return;
        };
        match compose::parse(text, &format!("file{i}.yml"), &crate::compose_variable) {
            Ok(v) => values.push(v),
            Err(e) => {
                assert!(!e.is_empty());
                return;
            }
        }
    }
    let merged = match compose::merge(values) {
        Ok(m) => m,
        Err(e) => {
            assert!(!e.is_empty());
            return;
        }
    };
    let stack = match compose::convert("app", &merged, Path::new(DIR)) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.is_empty());
            return;
        }
    };
    // Every service of the files, named and labelled into the stack.
    assert_eq!(stack.services.len(), merged.compose.services.0.len());
    for c in &stack.services {
        assert!(c.spec.name.starts_with("app_"), "service {:?}", c.spec.name);
        assert_eq!(
            c.spec.labels.get(NAMESPACE_LABEL).map(String::as_str),
            Some("app")
        );
    }
}
