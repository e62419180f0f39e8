//! `portrange check`: validate a configuration and explain what the shim will do on this host.

use crate::evaluate::{evaluate, Evaluation};
use crate::flags::shim_flags;
use portrange::config::{self, Config};
use portrange::conntrack as ct;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;

pub const HELP: &str = "\
usage: portrange check [--json | --nft] [--slice IP:LO-HI ...] [--skip CIDR ...] [--strategy S] [--log L] [--stats PATH]

Validate a configuration and explain what the shim will do on this host: the slices, whether each
slice IP is assigned here, the TCP strategy and why, the kernel settings that matter, what stays
out of reach, and an nftables guard. The configuration is the PORTRANGE* environment, with the
flags laid over it (--slice sets PORTRANGE, --skip PORTRANGE_SKIP, and so on); a bad value is the
same error whichever way it comes.

  --json    one JSON object on stdout: valid, usable, errors, problems, warnings, kernel, slices,
            skip, strategy, conntrack, nft, on_error
  --nft     only the nftables guard ruleset, ready for `nft -f -` (exit 1 when invalid)

exit status: 0 valid and usable here; 1 invalid, or not usable here (e.g. a slice IP that is not
assigned to this host); 2 bad arguments.";

/// Exit status 0: valid and usable here; 1: invalid or unusable; 2: bad arguments.
pub fn run(args: &[OsString]) -> ExitCode {
    let json = args.iter().any(|a| a == "--json");
    let nft = args.iter().any(|a| a == "--nft");
    let r = shim_flags(args, &["--json", "--nft"]).and_then(|(flags, i)| match args.get(i) {
        Some(a) => Err(format!("unexpected argument {:?} (see portrange check --help)", a.to_string_lossy())),
        None => Ok(flags),
    });
    match r {
        Ok(flags) => {
            let ev = evaluate(&flags);
            if nft {
                return print_nft(&ev);
            }
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

/// The nftables guard ruleset (see `portrange::nft`).
pub fn guard_rules(cfg: &Config) -> String {
    portrange::nft::guard_ruleset(&cfg.slices)
}

/// What `check` finds out about conntrack here (seed 004).
struct ConntrackReport {
    active: bool,
    netlink: ct::Netlink,
    plan: ct::Plan,
    warning: Option<String>,
    /// `None`: the ruleset could not be read (`nft -j list ruleset` failed: not root, no nft).
    nat: Option<Vec<ct::NatRule>>,
}

fn conntrack_report(cfg: &Config) -> ConntrackReport {
    let active = ct::active_here();
    let netlink = ct::probe();
    let (plan, warning) = ct::plan(cfg.conntrack, active, netlink);
    let nat = std::process::Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let ips: Vec<IpAddr> = cfg.slices.iter().map(|s| s.ip).collect();
            ct::nat_rules(&String::from_utf8_lossy(&o.stdout), &ips)
        });
    ConntrackReport { active, netlink, plan, warning, nat }
}

fn netlink_name(n: ct::Netlink) -> String {
    match n {
        ct::Netlink::Usable => "usable".into(),
        ct::Netlink::NoPermission => "no CAP_NET_ADMIN".into(),
        ct::Netlink::Unavailable(e) => format!("unavailable ({})", std::io::Error::from_raw_os_error(e)),
    }
}

fn nat_rule_text(r: &ct::NatRule) -> String {
    match r.into {
        Some(ip) => format!("{} in {} maps into slice IP {ip}", r.kind, r.place),
        None => format!("{} in {} (maps to the outgoing interface's address)", r.kind, r.place),
    }
}

fn conntrack_json(c: &Config) -> String {
    let r = conntrack_report(c);
    let nat = match &r.nat {
        None => "null".to_string(),
        Some(v) => json_list_raw(v.iter().map(|n| {
            format!(
                "{{\"kind\":{},\"chain\":{},\"into\":{}}}",
                json_str(n.kind),
                json_str(&n.place),
                n.into.map(|ip| json_str(&ip.to_string())).unwrap_or_else(|| "null".into())
            )
        })),
    };
    format!(
        ",\"conntrack\":{{\"requested\":{},\"active\":{},\"ctnetlink\":{},\"plan\":{},\"nat_rules\":{nat},\"warning\":{}}},\"nft\":{}",
        json_str(&c.conntrack.to_string()),
        r.active,
        json_str(&netlink_name(r.netlink)),
        json_str(r.plan.describe()),
        r.warning.as_deref().map(json_str).unwrap_or_else(|| "null".into()),
        json_str(&guard_rules(c))
    )
}

fn json_list_raw(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(","))
}

fn conntrack_text(o: &mut String, c: &Config) {
    let r = conntrack_report(c);
    let _ = writeln!(
        o,
        "\nconntrack / NAT (a forwarded flow SNATed into a slice can move a local flow out of it)"
    );
    let _ =
        writeln!(o, "  conntrack in this namespace    {}", if r.active { "active" } else { "not active" });
    let _ = writeln!(o, "  ctnetlink                      {}", netlink_name(r.netlink));
    match &r.nat {
        None => {
            let _ =
                writeln!(o, "  NAT rules                      not readable (`nft -j list ruleset` failed)");
        }
        Some(v) if v.is_empty() => {
            let _ = writeln!(o, "  NAT rules                      none maps into a slice IP");
        }
        Some(v) => {
            for n in v {
                let _ = writeln!(o, "  NAT rule                       {}", nat_rule_text(n));
            }
        }
    }
    let plan = match (r.plan.reserve, r.plan.verify) {
        (true, true) => "reserve+verify: each 4-tuple reserved in conntrack before connect, checked after",
        (true, false) => "reserve: each 4-tuple reserved in conntrack before connect",
        (false, true) => "verify: conntrack looked up before and after connect",
        (false, false) => "neither",
    };
    let _ = writeln!(o, "  the shim will use              {plan} (PORTRANGE_CONNTRACK={})", c.conntrack);
    if let Some(w) = &r.warning {
        let _ = writeln!(o, "  conntrack warning: {w}");
    }
}

/// `portrange check --nft`: only the guard ruleset, ready for `nft -f -`.
fn print_nft(ev: &Evaluation) -> ExitCode {
    match ev.config() {
        Some(c) if ev.valid() => {
            print!("{}", guard_rules(c));
            ExitCode::SUCCESS
        }
        _ => {
            for e in ev.errors.iter().chain(&ev.problems) {
                eprintln!("portrange check: {e}");
            }
            if ev.config().is_none() && ev.errors.is_empty() {
                eprintln!("portrange check: PORTRANGE is unset or empty: no slices to guard");
            }
            ExitCode::from(1)
        }
    }
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
        o.push_str(&conntrack_json(c));
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
        conntrack_text(&mut o, c);
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
            "  A guard that rejects such packets (output) and drops what NAT rewrote (postrouting)\n  \
             instead of letting them break silently (`portrange check --nft | nft -f -`):\n"
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
