//! `portrange stats FILE [--prometheus]`: summarise the `PORTRANGE_STATS` lines per program.

use portrange::stats::{prometheus, summarise, Summary};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::process::ExitCode;

pub const HELP: &str = "\
usage: portrange stats FILE [--prometheus]

Summarise the file PORTRANGE_STATS points at (one JSON line of counters per process that exited
normally; `-` reads stdin): per program, the processes, the flows placed, conflicts, slices
found full (exhausted), socket swaps, refused connects (denied) and internal errors, then any
other counter that is not zero.

  --prometheus   the Prometheus text exposition format instead, for node_exporter's textfile
                 collector (portrange_<counter>_total{program=\"...\"}; write it to a temporary
                 file and rename it into the collector's directory)

Lines that do not parse (a process killed mid-write) are counted on stderr and skipped.

exit status: 0 success; 1 the file cannot be read; 2 bad arguments.";

pub fn run(args: &[OsString]) -> ExitCode {
    let mut prom = false;
    let mut file = None;
    for a in args {
        match a.to_str() {
            Some("--prometheus") => prom = true,
            Some(s) if s.starts_with("--") => {
                eprintln!("portrange stats: unexpected argument {s:?} (see portrange stats --help)");
                return ExitCode::from(2);
            }
            _ if file.is_none() => file = Some(a.clone()),
            _ => {
                eprintln!("portrange stats: one FILE only (see portrange stats --help)");
                return ExitCode::from(2);
            }
        }
    }
    let Some(file) = file else {
        eprintln!("portrange stats: no FILE given (see portrange stats --help)");
        return ExitCode::from(2);
    };
    let text = if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
    } else {
        std::fs::read(&file).map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("portrange stats: {}: {e}", file.to_string_lossy());
            return ExitCode::from(1);
        }
    };
    let s = summarise(&text);
    if !s.malformed.is_empty() {
        eprintln!(
            "portrange stats: {} line(s) skipped, not a stats record: line {}",
            s.malformed.len(),
            s.malformed.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    print!("{}", if prom { prometheus(&s) } else { table(&s) });
    ExitCode::SUCCESS
}

const COLUMNS: [&str; 5] = ["conflicts", "exhausted", "swaps", "denied", "internal_errors"];

/// One row per program, then the other counters that are not zero.
pub fn table(s: &Summary) -> String {
    let mut o = String::new();
    let w = s.programs.iter().map(|p| p.program.len()).max().unwrap_or(0).max(7);
    let _ = writeln!(
        o,
        "{:<w$} {:>9} {:>8} {:>9} {:>9} {:>6} {:>7} {:>6}  strategies",
        "program", "processes", "placed", "conflicts", "exhausted", "swaps", "denied", "errors"
    );
    for p in &s.programs {
        let v: Vec<u64> = COLUMNS.iter().map(|c| p.get(c)).collect();
        let strategies: Vec<String> = p.strategies.iter().map(|(k, n)| format!("{k}:{n}")).collect();
        let _ = writeln!(
            o,
            "{:<w$} {:>9} {:>8} {:>9} {:>9} {:>6} {:>7} {:>6}  {}",
            p.program,
            p.processes,
            p.placed(),
            v[0],
            v[1],
            v[2],
            v[3],
            v[4],
            strategies.join(" ")
        );
    }
    for p in &s.programs {
        let other: Vec<String> = p
            .counters
            .iter()
            .filter(|(k, v)| **v > 0 && !COLUMNS.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !other.is_empty() {
            let _ = writeln!(o, "{}: {}", p.program, other.join(" "));
        }
    }
    o
}
