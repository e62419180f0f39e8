//! `PORTRANGE_STATS` lines → a per-program summary (`portrange stats`), as text or in the
//! Prometheus text exposition format (for node_exporter's textfile collector).
//!
//! Each process under the shim appends one flat JSON object at exit:
//! `{"pid":N,"program":"curl","strategy":"kernel","placed_tcp_kernel":N,...}`. Counters are
//! read generically (every integer field but `pid`), so a counter added to the shim shows up
//! here without a change.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One parsed line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub pid: Option<u64>,
    /// `unknown` for lines written before the field existed.
    pub program: String,
    pub strategy: String,
    pub counters: BTreeMap<String, u64>,
}

/// The counters that make up "flows placed".
pub const PLACED: [&str; 4] = ["placed_tcp_kernel", "placed_tcp_retry", "placed_udp", "placed_bind"];

/// What each known counter means (Prometheus HELP text).
pub fn help(counter: &str) -> &'static str {
    match counter {
        "placed_tcp_kernel" => "TCP flows placed in a slice by the kernel strategy",
        "placed_tcp_retry" => "TCP flows placed in a slice by the retry strategy",
        "placed_udp" => "UDP sockets placed in a slice",
        "placed_bind" => "bind(SLICE_IP, 0) calls given a slice port at once",
        "attempts" => "port attempts (each bind/connect of a candidate port)",
        "conflicts" => "port attempts that found the 4-tuple or port taken",
        "lookups" => "sock_diag look-ups",
        "exhausted" => "placements that found every slice full for the destination",
        "skipped_dest" => "flows left alone: destination in PORTRANGE_SKIP",
        "no_slice_family" => "flows left alone: no slice of the destination's family",
        "bound_by_program" => "flows left alone: the program bound a specific port or IP",
        "passed_through" => "calls outside the shim's scope",
        "denied" => "connects/sends refused because the configuration is invalid",
        "swaps" => "fresh sockets moved into the program's descriptor",
        "outside_slice" => "placements aborted because the kernel chose a port outside the slice",
        "internal_errors" => "internal errors caught at a hook boundary",
        _ => "a portrange shim counter",
    }
}

/// Parse one line: a flat JSON object of string and non-negative integer values.
pub fn parse_line(line: &str) -> Result<Record, String> {
    let fields = parse_flat(line.trim())?;
    let mut rec =
        Record { pid: None, program: "unknown".into(), strategy: String::new(), counters: BTreeMap::new() };
    for (k, v) in fields {
        match (k.as_str(), v) {
            ("pid", Value::Num(n)) => rec.pid = Some(n),
            ("program", Value::Str(s)) => rec.program = if s.is_empty() { "unknown".into() } else { s },
            ("strategy", Value::Str(s)) => rec.strategy = s,
            (_, Value::Num(n)) => {
                rec.counters.insert(k, n);
            }
            (_, Value::Str(_)) => {}
        }
    }
    if rec.pid.is_none() {
        return Err("no \"pid\"".into());
    }
    Ok(rec)
}

enum Value {
    Str(String),
    Num(u64),
}

fn parse_flat(s: &str) -> Result<Vec<(String, Value)>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let string = |i: &mut usize| -> Result<String, String> {
        if b.get(*i) != Some(&b'"') {
            return Err(format!("expected a string at {}", *i));
        }
        *i += 1;
        let mut out = Vec::new();
        loop {
            match b.get(*i) {
                None => return Err("unterminated string".into()),
                Some(b'"') => {
                    *i += 1;
                    return String::from_utf8(out).map_err(|e| e.to_string());
                }
                Some(b'\\') => {
                    let c = *b.get(*i + 1).ok_or("bad escape")?;
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'"' | b'\\' | b'/' => c,
                        _ => return Err("unsupported escape".into()),
                    });
                    *i += 2;
                }
                Some(&c) => {
                    out.push(c);
                    *i += 1;
                }
            }
        }
    };
    ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return Err("not a JSON object".into());
    }
    i += 1;
    let mut out = Vec::new();
    ws(&mut i);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            ws(&mut i);
            let k = string(&mut i)?;
            ws(&mut i);
            if b.get(i) != Some(&b':') {
                return Err(format!("expected ':' at {i}"));
            }
            i += 1;
            ws(&mut i);
            let v = if b.get(i) == Some(&b'"') {
                Value::Str(string(&mut i)?)
            } else {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                Value::Num(s[start..i].parse().map_err(|_| format!("expected a number at {start}"))?)
            };
            out.push((k, v));
            ws(&mut i);
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err(format!("expected ',' or '}}' at {i}")),
            }
        }
    }
    ws(&mut i);
    if i != b.len() {
        return Err("trailing characters".into());
    }
    Ok(out)
}

/// The sums for one program.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramSummary {
    pub program: String,
    /// Lines (one per process that exited normally).
    pub processes: u64,
    /// Processes per TCP strategy.
    pub strategies: BTreeMap<String, u64>,
    pub counters: BTreeMap<String, u64>,
}

impl ProgramSummary {
    pub fn get(&self, counter: &str) -> u64 {
        self.counters.get(counter).copied().unwrap_or(0)
    }
    pub fn placed(&self) -> u64 {
        PLACED.iter().map(|c| self.get(c)).sum()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// By program name.
    pub programs: Vec<ProgramSummary>,
    /// Lines that did not parse (e.g. cut short), with their line numbers.
    pub malformed: Vec<usize>,
}

pub fn summarise(text: &str) -> Summary {
    let mut by: BTreeMap<String, ProgramSummary> = BTreeMap::new();
    let mut malformed = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(r) = parse_line(line) else {
            malformed.push(n + 1);
            continue;
        };
        let p = by
            .entry(r.program.clone())
            .or_insert_with(|| ProgramSummary { program: r.program.clone(), ..Default::default() });
        p.processes += 1;
        if !r.strategy.is_empty() {
            *p.strategies.entry(r.strategy).or_insert(0) += 1;
        }
        for (k, v) in r.counters {
            *p.counters.entry(k).or_insert(0) += v;
        }
    }
    Summary { programs: by.into_values().collect(), malformed }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The summary in the Prometheus text exposition format (version 0.0.4): one counter family
/// per shim counter (`portrange_<counter>_total{program="..."}`), plus
/// `portrange_processes_total{program,strategy}` and `portrange_placed_total{program}`.
pub fn prometheus(s: &Summary) -> String {
    let mut o = String::new();
    let mut family = |name: &str, help: &str, rows: Vec<(String, u64)>| {
        let _ = writeln!(o, "# HELP portrange_{name}_total {help}");
        let _ = writeln!(o, "# TYPE portrange_{name}_total counter");
        for (labels, v) in rows {
            let _ = writeln!(o, "portrange_{name}_total{{{labels}}} {v}");
        }
    };
    family(
        "processes",
        "processes under the shim that exited normally, by TCP strategy",
        s.programs
            .iter()
            .flat_map(|p| {
                p.strategies.iter().map(move |(st, n)| {
                    (format!("program=\"{}\",strategy=\"{}\"", label(&p.program), label(st)), *n)
                })
            })
            .collect(),
    );
    family(
        "placed",
        "flows placed in a slice (TCP kernel + TCP retry + UDP + bind)",
        s.programs.iter().map(|p| (format!("program=\"{}\"", label(&p.program)), p.placed())).collect(),
    );
    let mut names: Vec<&String> = s.programs.iter().flat_map(|p| p.counters.keys()).collect();
    names.sort();
    names.dedup();
    for c in names {
        let ok = c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !ok {
            continue;
        }
        family(
            c,
            help(c),
            s.programs.iter().map(|p| (format!("program=\"{}\"", label(&p.program)), p.get(c))).collect(),
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &str = r#"{"pid":10,"program":"curl","strategy":"kernel","placed_tcp_kernel":2,"conflicts":0,"exhausted":1,"swaps":0}
{"pid":11,"program":"curl","strategy":"retry","placed_tcp_retry":3,"conflicts":4,"exhausted":0,"swaps":1}
{"pid":12,"strategy":"kernel","placed_udp":1}
{"pid":13,"program":"py\"x","strategy":"kernel","placed_bind":1,"new_counter":5}
{"pid":14,"program":"cut
"#;

    #[test]
    fn sums_per_program_and_counts_malformed_lines() {
        let s = summarise(LINES);
        assert_eq!(s.malformed, vec![5]);
        let names: Vec<&str> = s.programs.iter().map(|p| p.program.as_str()).collect();
        assert_eq!(names, ["curl", "py\"x", "unknown"]);
        let curl = &s.programs[0];
        assert_eq!(
            (curl.processes, curl.placed(), curl.get("conflicts"), curl.get("exhausted")),
            (2, 5, 4, 1)
        );
        assert_eq!(curl.strategies.get("retry"), Some(&1));
        assert_eq!(s.programs[1].get("new_counter"), 5);
        assert!(parse_line("{\"program\":\"x\"}").is_err());
        assert!(parse_line("{\"pid\":-1}").is_err());
        assert!(parse_line("{\"pid\":1} x").is_err());
    }

    #[test]
    fn prometheus_exposition() {
        let p = prometheus(&summarise(LINES));
        assert!(p.contains("# TYPE portrange_placed_total counter\n"), "{p}");
        assert!(p.contains("portrange_placed_total{program=\"curl\"} 5\n"), "{p}");
        assert!(p.contains("portrange_processes_total{program=\"curl\",strategy=\"kernel\"} 1\n"), "{p}");
        assert!(p.contains("portrange_conflicts_total{program=\"curl\"} 4\n"), "{p}");
        assert!(p.contains("portrange_new_counter_total{program=\"py\\\"x\"} 5\n"), "{p}");
        // Every sample line belongs to a family declared just before it.
        let mut family = String::new();
        for l in p.lines() {
            if let Some(r) = l.strip_prefix("# TYPE ") {
                family = r.split(' ').next().unwrap().to_string();
            } else if !l.starts_with('#') {
                assert!(l.starts_with(&format!("{family}{{")), "{l}");
            }
        }
    }
}
