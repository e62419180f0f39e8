//! `portrange status [--json] [--watch S]`: per slice and destination, the 4-tuples held on
//! this host and the headroom left — from one sock_diag dump per refresh.

use crate::check::json_str;
use crate::evaluate::parsed_from;
use crate::flags::shim_flags;
use portrange::diag;
use portrange::status::{bar, status, SliceStatus};
use portrange::sysctl::Reserved;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const HELP: &str = "\
usage: portrange status [--json] [--watch SECONDS] [--slice IP:LO-HI ...]

A live view of the slices on this host (this network namespace): for each slice and each
destination (IP and port) its flows go to, how many of the slice's 4-tuples are held —
ESTABLISHED (and connecting), closing (FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, CLOSING, LAST_ACK),
TIME_WAIT — and the headroom: the ports still free for a new flow to that destination. Ports in
net.ipv4.ip_local_reserved_ports, and ports a listener or an unconnected UDP socket owns, count
for every destination. Destinations come fullest first, each with a bar:
  # established  + closing  ~ TIME_WAIT  x reserved or owned  . free

The slices are PORTRANGE's (the environment), or the --slice flags. Every process's sockets are
seen, whether or not it runs under the shim: a flow from a slice port is a flow of the slice.

  --json            one JSON object per refresh on stdout
  --watch SECONDS   refresh every SECONDS (decimals allowed) until interrupted

exit status: 0 success; 1 no valid slice configuration, or the socket dump failed; 2 bad arguments.";

pub fn run(args: &[OsString]) -> ExitCode {
    let mut json = false;
    let mut watch: Option<Duration> = None;
    let mut rest: Vec<OsString> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i].to_str() {
            Some("--json") => json = true,
            Some("--watch") => {
                let v = args.get(i + 1).and_then(|v| v.to_str()).and_then(|v| v.parse::<f64>().ok());
                match v {
                    Some(s) if s > 0.0 && s.is_finite() => watch = Some(Duration::from_secs_f64(s)),
                    _ => {
                        eprintln!("portrange status: --watch needs a number of seconds > 0");
                        return ExitCode::from(2);
                    }
                }
                i += 1;
            }
            _ => rest.push(args[i].clone()),
        }
        i += 1;
    }
    let flags = match shim_flags(&rest, &[]) {
        Ok((f, n)) if n == rest.len() => f,
        Ok((_, n)) => {
            eprintln!(
                "portrange status: unexpected argument {:?} (see portrange status --help)",
                rest[n].to_string_lossy()
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("portrange status: {e}");
            return ExitCode::from(2);
        }
    };
    let parsed = parsed_from(&flags.env());
    let slices = match parsed.config {
        None => {
            eprintln!("portrange status: no slices: set PORTRANGE or give --slice");
            return ExitCode::from(1);
        }
        Some(Err(es)) => {
            for e in es {
                eprintln!("portrange status: error: {e}");
            }
            return ExitCode::from(1);
        }
        Some(Ok(c)) => c.slices,
    };
    let tty = std::io::stdout().is_terminal();
    loop {
        let socks = match diag::dump() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("portrange status: sock_diag dump failed: {e}");
                return ExitCode::from(1);
            }
        };
        let st = status(&slices, &Reserved::read(), &socks);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let frame = if json { report_json(&st, now) + "\n" } else { report_text(&st, now) };
        let mut out = std::io::stdout().lock();
        let clear = if watch.is_some() && tty && !json { "\x1b[H\x1b[J" } else { "" };
        let sep = if watch.is_some() && !tty && !json { "\n" } else { "" };
        if write!(out, "{clear}{frame}{sep}").and_then(|_| out.flush()).is_err() {
            // The reader went away (a pipe closed): stop quietly.
            return ExitCode::SUCCESS;
        }
        drop(out);
        match watch {
            Some(d) => std::thread::sleep(d),
            None => return ExitCode::SUCCESS,
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, no time crate).
fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let sod = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", sod / 3600, sod / 60 % 60, sod % 60)
}

const BAR: usize = 32;

pub fn report_text(st: &[SliceStatus], now: u64) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "portrange status  {}", utc(now));
    let _ = writeln!(o, "bar: # established  + closing  ~ TIME_WAIT  x reserved/owned  . free");
    for s in st {
        let _ = writeln!(
            o,
            "\nslice {}  {} ports ({} reserved, {} owned by listeners/unconnected UDP); a new destination has {} free",
            s.slice, s.ports, s.reserved, s.owned, s.headroom
        );
        if s.destinations.is_empty() {
            let _ = writeln!(o, "  no flows");
            continue;
        }
        let _ = writeln!(
            o,
            "  {:<4} {:<40} {:<w$} {:>6} {:>7} {:>9} {:>8}",
            "",
            "destination",
            "",
            "estab",
            "closing",
            "time_wait",
            "headroom",
            w = BAR + 2
        );
        for d in &s.destinations {
            let _ = writeln!(
                o,
                "  {:<4} {:<40} [{}] {:>6} {:>7} {:>9} {:>8}",
                d.proto.map(|p| p.name()).unwrap_or("?"),
                d.remote.map(|r| r.to_string()).unwrap_or_default(),
                bar(d, s, BAR),
                d.established,
                d.closing,
                d.time_wait,
                d.headroom
            );
        }
    }
    o
}

pub fn report_json(st: &[SliceStatus], now: u64) -> String {
    let slices: Vec<String> = st
        .iter()
        .map(|s| {
            let dests: Vec<String> = s
                .destinations
                .iter()
                .map(|d| {
                    format!(
                        "{{\"proto\":{},\"destination\":{},\"established\":{},\"closing\":{},\"time_wait\":{},\"held\":{},\"headroom\":{}}}",
                        json_str(d.proto.map(|p| p.name()).unwrap_or("?")),
                        json_str(&d.remote.map(|r| r.to_string()).unwrap_or_default()),
                        d.established,
                        d.closing,
                        d.time_wait,
                        d.held(),
                        d.headroom
                    )
                })
                .collect();
            format!(
                "{{\"slice\":{},\"ip\":{},\"lo\":{},\"hi\":{},\"ports\":{},\"reserved\":{},\"owned\":{},\"headroom\":{},\"destinations\":[{}]}}",
                json_str(&s.slice.to_string()),
                json_str(&s.slice.ip.to_string()),
                s.slice.lo,
                s.slice.hi,
                s.ports,
                s.reserved,
                s.owned,
                s.headroom,
                dests.join(",")
            )
        })
        .collect();
    format!("{{\"time\":{now},\"slices\":[{}]}}", slices.join(","))
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(1_798_761_599), "2026-12-31 23:59:59 UTC");
    }
}
