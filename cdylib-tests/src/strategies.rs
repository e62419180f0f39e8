//! The TCP strategies to cover, and reading the shim's stats.

/// The TCP strategies (`PORTRANGE_STRATEGY` values) that placement tests run under, once each.
/// `PORTRANGE_TEST_STRATEGIES` (comma-separated, e.g. `kernel,retry`) overrides the list, to try
/// a strategy before it is listed here.
pub fn tcp_strategies() -> Vec<&'static str> {
    const KNOWN: [&str; 3] = ["auto", "kernel", "retry"];
    if let Some(v) = std::env::var("PORTRANGE_TEST_STRATEGIES").ok().filter(|v| !v.trim().is_empty()) {
        return v
            .split(',')
            .map(|w| {
                let w = w.trim();
                KNOWN.into_iter().find(|k| *k == w).unwrap_or_else(|| {
                    panic!("PORTRANGE_TEST_STRATEGIES: unknown strategy {w:?} (expected one of {KNOWN:?})")
                })
            })
            .collect();
    }
    vec!["kernel", "retry"]
}

/// The number after `"key":` in a flat JSON object line (a `PORTRANGE_STATS` line), if any.
pub fn json_number(line: &str, key: &str) -> Option<i64> {
    let pat = format!("\"{key}\":");
    let rest = line[line.find(&pat)? + pat.len()..].trim_start();
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '-')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

// ---------------------------------------------------------------------------------------------
