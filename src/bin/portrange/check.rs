//! `portrange check`: validate a configuration and explain what the shim will do on this host.

use crate::evaluate::{evaluate, Evaluation};
use crate::flags::shim_flags;
use portrange::config::{self, Config};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;

pub const HELP: &str = "\
usage: portrange check [--json] [--slice IP:LO-HI ...] [--skip CIDR ...] [--strategy S] [--log L] [--stats PATH]

Validate a configuration and explain what the shim will do on this host: the slices, whether each
slice IP is assigned here, the TCP strategy and why, the kernel settings that matter, what stays
out of reach, and an nftables guard. The configuration is the PORTRANGE* environment, with the
flags laid over it (--slice sets PORTRANGE, --skip PORTRANGE_SKIP, and so on); a bad value is the
same error whichever way it comes.

  --json    one JSON object on stdout: valid, usable, errors, problems, warnings, kernel, slices,
            skip, strategy, on_error

exit status: 0 valid and usable here; 1 invalid, or not usable here (e.g. a slice IP that is not
assigned to this host); 2 bad arguments.";

/// Exit status 0: valid and usable here; 1: invalid or unusable; 2: bad arguments.
pub fn run(args: &[OsString]) -> ExitCode {
    let json = args.iter().any(|a| a == "--json");
    let r = shim_flags(args, &["--json"]).and_then(|(flags, i)| match args.get(i) {
        Some(a) => Err(format!("unexpected argument {:?} (see portrange check --help)", a.to_string_lossy())),
        None => Ok(flags),
    });
    match r {
        Ok(flags) => {
            let ev = evaluate(&flags);
            if json {
                println!("{}", report_json(&ev));
            } else {
                print!("{}", report_text(&ev));
            }
            ExitCode::from(ev.exit_code())
        }
        Err(e) => {
            eprintln!("portrange check: {e}");
            ExitCode::from(2)
        }
    }
}

/// JSON string escaping for the few strings we print.
pub fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The nftables rule set that turns a silent break into a visible one: new flows from a slice
/// IP whose source port lies outside its slices are rejected.
pub fn guard_rules(cfg: &Config) -> String {
    let mut ips: Vec<IpAddr> = cfg.slices.iter().map(|s| s.ip).collect();
    ips.dedup();
    let mut out = String::from(
        "table inet portrange_guard {\n  chain output {\n    type filter hook output priority 0; policy accept;\n",
    );
    for ip in ips {
        let ranges: Vec<String> = cfg
            .slices
            .iter()
            .filter(|s| s.ip == ip)
            .map(|s| if s.lo == s.hi { s.lo.to_string() } else { format!("{}-{}", s.lo, s.hi) })
            .collect();
        let fam = if ip.is_ipv4() { "ip" } else { "ip6" };
        for proto in ["tcp", "udp"] {
            out.push_str(&format!(
                "    {fam} saddr {ip} ct state new {proto} sport != {{ {} }} counter reject\n",
                ranges.join(", ")
            ));
        }
    }
    out.push_str("  }\n}\n");
    out
}

fn json_list(v: &[String]) -> String {
    format!("[{}]", v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(","))
}

/// The judgement as one JSON object (one line).
pub fn report_json(ev: &Evaluation) -> String {
    let facts = &ev.facts;
    let mut o = String::from("{");
    let _ = write!(o, "\"valid\":{},\"usable\":{}", ev.valid(), ev.usable());
    let _ = write!(
        o,
        ",\"errors\":{},\"problems\":{},\"warnings\":{}",
        json_list(&ev.errors),
        json_list(&ev.problems),
        json_list(&ev.warnings)
    );
    let _ = write!(
        o,
        ",\"kernel\":{{\"ip_local_port_range_option\":{},\"ip_local_port_range\":{},\"tcp_tw_reuse\":{},\"sock_diag\":{}}}",
        facts.local_port_range_option,
        facts.sysctl_range.map(|(a, b)| format!("[{a},{b}]")).unwrap_or_else(|| "null".into()),
        facts.tw_reuse.map(|v| v.to_string()).unwrap_or_else(|| "null".into()),
        portrange::sockdiag::probe().is_ok()
    );
    if let Some(c) = ev.config() {
        let slices: Vec<String> = ev
            .slices
            .iter()
            .map(|f| {
                let s = &f.slice;
                format!(
                    "{{\"slice\":{},\"ip\":{},\"lo\":{},\"hi\":{},\"ports\":{},\"inside_sysctl_range\":{},\"reserved_ports\":{},\"ip_assigned\":{}}}",
                    json_str(&s.to_string()),
                    json_str(&s.ip.to_string()),
                    s.lo,
                    s.hi,
                    s.size(),
                    f.inside_sysctl_range,
                    f.reserved,
                    f.unassigned.is_none()
                )
            })
            .collect();
        let _ = write!(o, ",\"slices\":[{}]", slices.join(","));
        let _ = write!(
            o,
            ",\"skip\":[{}],\"default_skip\":{}",
            c.skip.iter().map(|p| json_str(&p.to_string())).collect::<Vec<_>>().join(","),
            c.default_skip
        );
        if let Some((t, why)) = &ev.strategy {
            let _ = write!(
                o,
                ",\"strategy\":{{\"requested\":{},\"tcp\":{},\"why\":{}}}",
                json_str(&c.strategy.to_string()),
                json_str(t.name()),
                json_str(why)
            );
        }
    }
    let _ = write!(
        o,
        ",\"on_error\":{}",
        json_str(if ev.parsed.on_error == config::OnError::Deny { "deny" } else { "passthrough" })
    );
    o.push('}');
    o
}

/// The judgement for a person.
pub fn report_text(ev: &Evaluation) -> String {
    let facts = &ev.facts;
    let mut o = String::new();
    let _ = writeln!(o, "portrange check");
    for e in &ev.errors {
        let _ = writeln!(o, "  error:   {e}");
    }
    for p in &ev.problems {
        let _ = writeln!(o, "  error:   {p}");
    }
    for w in &ev.warnings {
        let _ = writeln!(o, "  warning: {w}");
    }
    if let Some(c) = ev.config() {
        let _ = writeln!(o, "\nslices");
        for f in &ev.slices {
            let s = &f.slice;
            let _ = writeln!(
                o,
                "  {:<34} {:>5} ports{}{}{}",
                s.to_string(),
                s.size(),
                if f.inside_sysctl_range { "" } else { ", outside ip_local_port_range" },
                if f.reserved > 0 { format!(", {} reserved (skipped)", f.reserved) } else { String::new() },
                if f.unassigned.is_none() { "" } else { ", IP NOT ASSIGNED to this host" },
            );
        }
        let _ = writeln!(o, "\nskip (destinations left alone)");
        if c.skip.is_empty() {
            let _ = writeln!(o, "  none");
        }
        for p in &c.skip {
            let _ = writeln!(o, "  {p}{}", if c.default_skip { "   (default)" } else { "" });
        }
        let _ = writeln!(o, "\nthis host");
        let _ = writeln!(
            o,
            "  IP_LOCAL_PORT_RANGE option     {}",
            if facts.local_port_range_option { "yes" } else { "no (Linux < 6.3)" }
        );
        if let Some((lo, hi)) = facts.sysctl_range {
            let _ = writeln!(o, "  net.ipv4.ip_local_port_range  {lo}-{hi}");
        }
        if let Some(t) = facts.tw_reuse {
            let _ = writeln!(o, "  net.ipv4.tcp_tw_reuse          {t}");
        }
        // Hardened services may not open AF_NETLINK sockets: run `check` the way the service runs.
        let sock_diag = portrange::sockdiag::probe();
        match sock_diag {
            Ok(()) => {
                let _ = writeln!(o, "  sock_diag (AF_NETLINK)         usable");
            }
            Err(e) => {
                let _ = writeln!(
                    o,
                    "  sock_diag (AF_NETLINK)         UNAVAILABLE ({}): {}",
                    std::io::Error::from_raw_os_error(e),
                    portrange::sockdiag::COST
                );
            }
        }
        let _ = writeln!(o, "\nwhat the shim will do");
        if let Some((t, why)) = &ev.strategy {
            let _ = writeln!(
                o,
                "  TCP connect: placed with the {} strategy ({why}); full → EADDRNOTAVAIL",
                t.name()
            );
        }
        let udp = if sock_diag.is_ok() {
            "cookie-checked port (shared across peers, never a 4-tuple)"
        } else {
            "a slice port of its own (no sock_diag: not shared across peers)"
        };
        let _ = writeln!(o, "  UDP connect: {udp}; full → EAGAIN");
        let _ = writeln!(o, "  UDP first unconnected send: a slice port of its own; full → EAGAIN");
        let v4: u32 = c.slices.iter().filter(|s| s.ip.is_ipv4()).map(|s| s.size()).sum();
        let v6: u32 = c.slices.iter().filter(|s| s.ip.is_ipv6()).map(|s| s.size()).sum();
        let _ = writeln!(o, "  capacity: {v4} IPv4 and {v6} IPv6 concurrent flows per destination");
        let _ = writeln!(o, "\nout of reach (can still egress from outside the slice)");
        let _ = writeln!(
            o,
            "  glibc-internal connects (the resolver inside getaddrinfo), syscall(SYS_connect), io_uring,"
        );
        let _ = writeln!(
            o,
            "  static, Go and musl programs, setuid programs, and NAT/conntrack rewriting after bind."
        );
        let _ = writeln!(
            o,
            "  A guard that rejects such packets instead of letting them break silently (nft -f FILE):\n"
        );
        for l in guard_rules(c).lines() {
            let _ = writeln!(o, "    {l}");
        }
    }
    let verdict = if !ev.valid() {
        "INVALID configuration"
    } else if !ev.usable() {
        "NOT USABLE on this host: the configuration is valid, but see the errors above"
    } else {
        "OK: configuration valid and usable on this host"
    };
    let _ = writeln!(o, "\n{verdict}");
    o
}
