//! `portrange check`: validate a configuration and explain what the shim will do on this host.

use crate::flags::shim_flags;
use crate::USAGE;
use portrange::choice::{choose_tcp, KernelFacts};
use portrange::config::{self, Config, Parsed, Slice};
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

/// Exit status 0: valid; 1: invalid; 2: bad arguments.
pub fn run(args: &[OsString]) -> ExitCode {
    let json = args.iter().any(|a| a == "--json");
    let r = shim_flags(args, &["--json"]).and_then(|(env, i)| match args.get(i) {
        Some(a) => Err(format!("unexpected argument {:?}\n{USAGE}", a.to_string_lossy())),
        None => Ok(env),
    });
    match r.and_then(|env| report(&parsed_from(&env), json)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("portrange: {e}");
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

/// Whether `ip` is assigned to this host (network namespace): a bind to it works.
fn ip_is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

fn reserved_ports() -> Vec<(u16, u16)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap_or_default();
    s.trim()
        .split(',')
        .filter_map(|i| {
            let i = i.trim();
            match i.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => i.parse().ok().map(|p| (p, p)),
            }
        })
        .collect()
}

fn reserved_in(s: &Slice, reserved: &[(u16, u16)]) -> u32 {
    (s.lo..=s.hi).filter(|p| reserved.iter().any(|(a, b)| a <= p && p <= b)).count() as u32
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

/// Print the explanation (text or JSON); whether the configuration is valid.
pub fn report(parsed: &Parsed, json: bool) -> Result<bool, String> {
    let facts = KernelFacts::read();
    let reserved = reserved_ports();
    let mut errors: Vec<String> = Vec::new();
    let warnings: Vec<String> = parsed.warnings.iter().map(|w| w.to_string()).collect();
    let cfg = match &parsed.config {
        None => {
            errors.push("PORTRANGE is unset or empty: the shim does nothing at all".into());
            None
        }
        Some(Err(es)) => {
            errors.extend(es.iter().map(|e| e.to_string()));
            None
        }
        Some(Ok(c)) => Some(c),
    };
    let strategy = cfg.map(|c| choose_tcp(c, &facts));
    if let Some(Err(e)) = &strategy {
        errors.push(e.clone());
    }
    let outside: Vec<Slice> =
        cfg.map(|c| facts.outside(&c.slices).into_iter().copied().collect()).unwrap_or_default();
    let valid = errors.is_empty();

    if json {
        let mut o = String::from("{");
        o.push_str(&format!("\"valid\":{valid}"));
        let list = |v: &[String]| v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(",");
        o.push_str(&format!(",\"errors\":[{}],\"warnings\":[{}]", list(&errors), list(&warnings)));
        o.push_str(&format!(
            ",\"kernel\":{{\"ip_local_port_range_option\":{},\"ip_local_port_range\":{},\"tcp_tw_reuse\":{}}}",
            facts.local_port_range_option,
            facts.sysctl_range.map(|(a, b)| format!("[{a},{b}]")).unwrap_or_else(|| "null".into()),
            facts.tw_reuse.map(|v| v.to_string()).unwrap_or_else(|| "null".into())
        ));
        if let Some(c) = cfg {
            let slices: Vec<String> = c
                .slices
                .iter()
                .map(|s| {
                    format!(
                        "{{\"slice\":{},\"ip\":{},\"lo\":{},\"hi\":{},\"ports\":{},\"inside_sysctl_range\":{},\"reserved_ports\":{},\"ip_assigned\":{}}}",
                        json_str(&s.to_string()),
                        json_str(&s.ip.to_string()),
                        s.lo,
                        s.hi,
                        s.size(),
                        !outside.contains(s),
                        reserved_in(s, &reserved),
                        ip_is_local(s.ip)
                    )
                })
                .collect();
            o.push_str(&format!(",\"slices\":[{}]", slices.join(",")));
            o.push_str(&format!(
                ",\"skip\":[{}],\"default_skip\":{}",
                c.skip.iter().map(|p| json_str(&p.to_string())).collect::<Vec<_>>().join(","),
                c.default_skip
            ));
            if let Some(Ok((t, why))) = &strategy {
                o.push_str(&format!(
                    ",\"strategy\":{{\"requested\":{},\"tcp\":{},\"why\":{}}}",
                    json_str(&c.strategy.to_string()),
                    json_str(t.name()),
                    json_str(why)
                ));
            }
        }
        o.push_str(&format!(
            ",\"on_error\":{}",
            json_str(if parsed.on_error == config::OnError::Deny { "deny" } else { "passthrough" })
        ));
        o.push('}');
        println!("{o}");
        return Ok(valid);
    }

    println!("portrange check");
    for e in &errors {
        println!("  error:   {e}");
    }
    for w in &warnings {
        println!("  warning: {w}");
    }
    if let Some(c) = cfg {
        println!("\nslices");
        for s in &c.slices {
            let r = reserved_in(s, &reserved);
            println!(
                "  {:<34} {:>5} ports{}{}{}",
                s.to_string(),
                s.size(),
                if outside.contains(s) { ", outside ip_local_port_range" } else { "" },
                if r > 0 { format!(", {r} reserved (skipped)") } else { String::new() },
                if ip_is_local(s.ip) { "" } else { ", IP NOT ASSIGNED to this host: connects will fail" },
            );
        }
        println!("\nskip (destinations left alone)");
        if c.skip.is_empty() {
            println!("  none");
        }
        for p in &c.skip {
            println!("  {p}{}", if c.default_skip { "   (default)" } else { "" });
        }
        println!("\nthis host");
        println!(
            "  IP_LOCAL_PORT_RANGE option     {}",
            if facts.local_port_range_option { "yes" } else { "no (Linux < 6.3)" }
        );
        if let Some((lo, hi)) = facts.sysctl_range {
            println!("  net.ipv4.ip_local_port_range  {lo}-{hi}");
        }
        if let Some(t) = facts.tw_reuse {
            println!("  net.ipv4.tcp_tw_reuse          {t}");
        }
        println!("\nwhat the shim will do");
        if let Some(Ok((t, why))) = &strategy {
            println!("  TCP connect: placed with the {} strategy ({why}); full → EADDRNOTAVAIL", t.name());
        }
        println!("  UDP connect: cookie-checked port (shared across peers, never a 4-tuple); full → EAGAIN");
        println!("  UDP first unconnected send: a slice port of its own; full → EAGAIN");
        let v4: u32 = c.slices.iter().filter(|s| s.ip.is_ipv4()).map(|s| s.size()).sum();
        let v6: u32 = c.slices.iter().filter(|s| s.ip.is_ipv6()).map(|s| s.size()).sum();
        println!("  capacity: {v4} IPv4 and {v6} IPv6 concurrent flows per destination");
        println!("\nout of reach (can still egress from outside the slice)");
        println!(
            "  glibc-internal connects (the resolver inside getaddrinfo), syscall(SYS_connect), io_uring,"
        );
        println!("  static, Go and musl programs, setuid programs, and NAT/conntrack rewriting after bind.");
        println!(
            "  A guard that rejects such packets instead of letting them break silently (nft -f FILE):\n"
        );
        for l in guard_rules(c).lines() {
            println!("    {l}");
        }
    }
    println!("\n{}", if valid { "OK: configuration valid" } else { "INVALID configuration" });
    Ok(valid)
}

/// The environment as the shim would read it, with command-line overrides.
pub fn parsed_from(overrides: &[(&str, String)]) -> Parsed {
    config::parse(|k| {
        overrides
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    })
}
