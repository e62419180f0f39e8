//! `PORTRANGE*` environment variables → a plain [`Config`] value.
//!
//! Pure: no I/O beyond the environment getter handed in, so every rule of the SPEC's
//! configuration table is unit-tested here. Shared by the shim and the `portrange` binary.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One slice: a source IP and an inclusive port range on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    pub ip: IpAddr,
    pub lo: u16,
    pub hi: u16,
}

impl Slice {
    pub fn size(&self) -> u32 {
        u32::from(self.hi) - u32::from(self.lo) + 1
    }
    pub fn contains_port(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for Slice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:")?,
            IpAddr::V6(ip) => write!(f, "[{ip}]:")?,
        }
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// A destination prefix (CIDR). IPv4-mapped IPv6 destinations are matched as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub const fn v4(a: [u8; 4], len: u8) -> Prefix {
        Prefix { addr: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])), len }
    }
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len)) };
                u32::from(p) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = if self.len == 0 { 0 } else { u128::MAX << (128 - u32::from(self.len)) };
                u128::from(p) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`; everything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// The default skip list: loopback and link-local, v4 and v6.
pub const DEFAULT_SKIP: [Prefix; 4] = [
    Prefix::v4([127, 0, 0, 0], 8),
    Prefix { addr: IpAddr::V6(Ipv6Addr::LOCALHOST), len: 128 },
    Prefix::v4([169, 254, 0, 0], 16),
    Prefix { addr: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), len: 10 },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrategyChoice {
    Auto,
    Kernel,
    Retry,
}

impl fmt::Display for StrategyChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StrategyChoice::Auto => "auto",
            StrategyChoice::Kernel => "kernel",
            StrategyChoice::Retry => "retry",
        })
    }
}

/// `PORTRANGE_CONNTRACK`: how placed flows are protected from conntrack/NAT rewriting (seed 004).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConntrackChoice {
    /// reserve + verify when conntrack is active here and ctnetlink is usable, else off.
    Auto,
    /// Reserve each 4-tuple in conntrack (IPCTNL_MSG_CT_NEW, create|excl) before the connect.
    Reserve,
    /// Look the would-be reply tuple up before the connect and the flow's own entry after it.
    Verify,
    Off,
}

impl fmt::Display for ConntrackChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConntrackChoice::Auto => "auto",
            ConntrackChoice::Reserve => "reserve",
            ConntrackChoice::Verify => "verify",
            ConntrackChoice::Off => "off",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    Deny,
    Passthrough,
}

/// A valid configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub slices: Vec<Slice>,
    pub skip: Vec<Prefix>,
    /// True when PORTRANGE_SKIP was unset and the default list applies.
    pub default_skip: bool,
    pub strategy: StrategyChoice,
    pub conntrack: ConntrackChoice,
}

impl Config {
    pub fn has_v4(&self) -> bool {
        self.slices.iter().any(|s| s.ip.is_ipv4())
    }
    pub fn has_v6(&self) -> bool {
        self.slices.iter().any(|s| s.ip.is_ipv6())
    }
    pub fn is_skipped(&self, dst: IpAddr) -> bool {
        self.skip.iter().any(|p| p.contains(dst))
    }
}

/// One problem with one variable: names the variable, the bad value and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub why: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}: {}", self.var, self.value, self.why)
    }
}

/// What the environment says, after parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// `None`: PORTRANGE unset or empty — the shim does nothing at all.
    /// `Some(Err(errors))`: PORTRANGE, PORTRANGE_SKIP or PORTRANGE_STRATEGY is invalid.
    pub config: Option<Result<Config, Vec<ConfigError>>>,
    /// Problems that only warn (PORTRANGE_LOG, PORTRANGE_STATS, PORTRANGE_ON_ERROR).
    pub warnings: Vec<ConfigError>,
    pub on_error: OnError,
    /// A validated env_logger filter.
    pub log: String,
    pub stats: Option<String>,
    /// PORTRANGE_PRECHECK: the retry strategy's sock_diag look-up before binding a port.
    pub precheck: bool,
}

pub const DEFAULT_LOG: &str = "warn";

/// Parse every `PORTRANGE*` variable through `get` (never `RUST_LOG`).
pub fn parse(get: impl Fn(&str) -> Option<String>) -> Parsed {
    let mut warnings = Vec::new();

    let on_error = match get("PORTRANGE_ON_ERROR") {
        None => OnError::Deny,
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "deny" => OnError::Deny,
            "passthrough" => OnError::Passthrough,
            _ => {
                warnings.push(ConfigError {
                    var: "PORTRANGE_ON_ERROR",
                    value: v,
                    why: "expected `deny` or `passthrough`; using `deny`".into(),
                });
                OnError::Deny
            }
        },
    };

    let log = match get("PORTRANGE_LOG") {
        None => DEFAULT_LOG.to_string(),
        Some(v) => match parse_log_filter(&v) {
            Ok(f) => f,
            Err(why) => {
                warnings.push(ConfigError {
                    var: "PORTRANGE_LOG",
                    value: v,
                    why: format!("{why}; using `{DEFAULT_LOG}`"),
                });
                DEFAULT_LOG.to_string()
            }
        },
    };

    let stats = match get("PORTRANGE_STATS") {
        None => None,
        Some(v) if v.trim().is_empty() => {
            warnings.push(ConfigError {
                var: "PORTRANGE_STATS",
                value: v,
                why: "empty path; no statistics will be written".into(),
            });
            None
        }
        Some(v) => Some(v.trim().to_string()),
    };

    let precheck = match get("PORTRANGE_PRECHECK") {
        None => true,
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "1" | "on" | "yes" | "true" => true,
            "0" | "off" | "no" | "false" => false,
            _ => {
                warnings.push(ConfigError {
                    var: "PORTRANGE_PRECHECK",
                    value: v,
                    why: "expected `on` or `off`; using `on`".into(),
                });
                true
            }
        },
    };

    let config = match get("PORTRANGE") {
        None => None,
        Some(v) if v.trim().is_empty() => None,
        Some(v) => Some(parse_active(
            &v,
            get("PORTRANGE_SKIP"),
            get("PORTRANGE_STRATEGY"),
            get("PORTRANGE_CONNTRACK"),
        )),
    };

    Parsed { config, warnings, on_error, log, stats, precheck }
}

fn parse_active(
    portrange: &str,
    skip: Option<String>,
    strategy: Option<String>,
    conntrack: Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let slices = parse_slices(portrange).unwrap_or_else(|why| {
        errors.push(ConfigError { var: "PORTRANGE", value: portrange.to_string(), why });
        Vec::new()
    });
    let (skip, default_skip) = match skip {
        None => (default_skip_for(&slices), true),
        Some(v) => match parse_skip(&v) {
            Ok(list) => (list, false),
            Err(why) => {
                errors.push(ConfigError { var: "PORTRANGE_SKIP", value: v, why });
                (Vec::new(), false)
            }
        },
    };
    let strategy = match strategy {
        None => StrategyChoice::Auto,
        Some(v) => match parse_strategy(&v) {
            Ok(s) => s,
            Err(why) => {
                errors.push(ConfigError { var: "PORTRANGE_STRATEGY", value: v, why });
                StrategyChoice::Auto
            }
        },
    };
    let conntrack = match conntrack {
        None => ConntrackChoice::Auto,
        Some(v) => parse_conntrack(&v).unwrap_or_else(|why| {
            errors.push(ConfigError { var: "PORTRANGE_CONNTRACK", value: v, why });
            ConntrackChoice::Auto
        }),
    };
    if errors.is_empty() {
        Ok(Config { slices, skip, default_skip, strategy, conntrack })
    } else {
        Err(errors)
    }
}

/// The default skip list minus every range that contains a slice IP.
pub fn default_skip_for(slices: &[Slice]) -> Vec<Prefix> {
    DEFAULT_SKIP.iter().copied().filter(|p| !slices.iter().any(|s| p.contains(s.ip))).collect()
}

pub fn parse_strategy(v: &str) -> Result<StrategyChoice, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => Ok(StrategyChoice::Auto),
        "kernel" => Ok(StrategyChoice::Kernel),
        "retry" => Ok(StrategyChoice::Retry),
        _ => Err("expected `auto`, `kernel` or `retry`".into()),
    }
}

pub fn parse_conntrack(v: &str) -> Result<ConntrackChoice, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => Ok(ConntrackChoice::Auto),
        "reserve" => Ok(ConntrackChoice::Reserve),
        "verify" => Ok(ConntrackChoice::Verify),
        "off" => Ok(ConntrackChoice::Off),
        _ => Err("expected `auto`, `reserve`, `verify` or `off`".into()),
    }
}

/// `IPv4:LO-HI`, `[IPv6]:LO-HI`, `IP:P`, comma-separated.
pub fn parse_slices(v: &str) -> Result<Vec<Slice>, String> {
    let mut out: Vec<Slice> = Vec::new();
    for item in v.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err("empty slice in the list (stray comma?)".into());
        }
        let s = parse_slice(item)?;
        if let Some(o) = out.iter().find(|o| o.ip == s.ip && o.lo <= s.hi && s.lo <= o.hi) {
            return Err(format!("slices `{o}` and `{s}` overlap on the same IP"));
        }
        out.push(s);
    }
    Ok(out)
}

pub fn parse_slice(item: &str) -> Result<Slice, String> {
    let (ip, ports) = if let Some(rest) = item.strip_prefix('[') {
        let (ip, after) =
            rest.split_once(']').ok_or_else(|| format!("`{item}`: missing `]` after the IPv6 address"))?;
        let ports =
            after.strip_prefix(':').ok_or_else(|| format!("`{item}`: expected `:PORTS` after `]`"))?;
        let ip: Ipv6Addr =
            ip.trim().parse().map_err(|_| format!("`{item}`: `{ip}` is not an IPv6 address"))?;
        if let Some(v4) = ip.to_ipv4_mapped() {
            return Err(format!("`{item}`: write the IPv4-mapped address as plain IPv4 ({v4})"));
        }
        (IpAddr::V6(ip), ports)
    } else {
        let (ip, ports) = item.rsplit_once(':').ok_or_else(|| format!("`{item}`: expected IP:LO-HI"))?;
        if ip.contains(':') {
            return Err(format!("`{item}`: IPv6 addresses must be written in brackets, e.g. [{ip}]:{ports}"));
        }
        let ip: Ipv4Addr =
            ip.trim().parse().map_err(|_| format!("`{item}`: `{ip}` is not an IPv4 address"))?;
        (IpAddr::V4(ip), ports)
    };
    check_unicast(ip).map_err(|why| format!("`{item}`: {why}"))?;
    let (lo, hi) = parse_port_range(ports).map_err(|why| format!("`{item}`: {why}"))?;
    Ok(Slice { ip, lo, hi })
}

fn check_unicast(ip: IpAddr) -> Result<(), String> {
    if ip.is_unspecified() {
        return Err(format!("{ip} is the unspecified address; a slice needs a specific IP"));
    }
    if ip.is_multicast() {
        return Err(format!("{ip} is a multicast address"));
    }
    if let IpAddr::V4(v4) = ip {
        if v4.is_broadcast() {
            return Err(format!("{ip} is the broadcast address"));
        }
    }
    Ok(())
}

/// `LO-HI` or `P`, 1..=65535, LO <= HI.
pub fn parse_port_range(v: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| -> Result<u16, String> {
        let p = p.trim();
        match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
            Ok(n) => Err(format!("port {n} is out of range 1-65535")),
            Err(_) => Err(format!("`{p}` is not a port number")),
        }
    };
    let (lo, hi) = match v.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(v)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("port range {lo}-{hi} is reversed (LO must be <= HI)"));
    }
    Ok((lo, hi))
}

/// Comma-separated CIDR prefixes; an empty value is an empty list.
pub fn parse_skip(v: &str) -> Result<Vec<Prefix>, String> {
    let mut out = Vec::new();
    if v.trim().is_empty() {
        return Ok(out);
    }
    for item in v.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err("empty prefix in the list (stray comma?)".into());
        }
        out.push(parse_prefix(item)?);
    }
    Ok(out)
}

pub fn parse_prefix(item: &str) -> Result<Prefix, String> {
    let (addr, len) = match item.split_once('/') {
        Some((a, l)) => (a.trim(), Some(l.trim())),
        None => (item, None),
    };
    let addr_s = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(addr);
    let addr: IpAddr = addr_s.parse().map_err(|_| format!("`{item}`: `{addr_s}` is not an IP address"))?;
    let addr = canonical(addr);
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("`{item}`: prefix length must be 0-{max}")),
        },
    };
    // Keep only the network bits, so that `10.1.2.3/8` means 10.0.0.0/8.
    let addr = match addr {
        IpAddr::V4(a) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    };
    Ok(Prefix { addr, len })
}

/// An env_logger filter: comma-separated `LEVEL`, `MODULE` or `MODULE=LEVEL`.
pub fn parse_log_filter(v: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let v = v.trim();
    if v.is_empty() {
        return Err("empty filter".into());
    }
    if v.contains('/') {
        return Err("regular-expression filters (`/re`) are not supported".into());
    }
    for d in v.split(',') {
        let d = d.trim();
        let (module, level) = match d.split_once('=') {
            Some((m, l)) => (m.trim(), Some(l.trim())),
            None if LEVELS.contains(&d.to_ascii_lowercase().as_str()) => ("", Some(d)),
            None => (d, None),
        };
        if let Some(l) = level {
            if !LEVELS.contains(&l.to_ascii_lowercase().as_str()) {
                return Err(format!("`{l}` is not a level (off, error, warn, info, debug, trace)"));
            }
        }
        // The shim's own modules are all under `portrange`; any other name would match nothing
        // and is almost certainly a mistyped level.
        let module_ok = module.is_empty()
            || (module.split("::").next() == Some("portrange")
                && module.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        if (d.contains('=') && module.is_empty()) || !module_ok || (module.is_empty() && level.is_none()) {
            return Err(format!(
                "`{d}` is not a filter directive (a level: off, error, warn, info, debug, trace; \
                 or portrange[::module]=LEVEL)"
            ));
        }
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    fn ok(pairs: &[(&str, &str)]) -> Config {
        parse(env(pairs)).config.expect("active").expect("valid")
    }

    fn err(pairs: &[(&str, &str)]) -> Vec<ConfigError> {
        parse(env(pairs)).config.expect("active").expect_err("invalid")
    }

    #[test]
    fn unset_or_empty_is_inactive() {
        assert_eq!(parse(env(&[])).config, None);
        assert_eq!(parse(env(&[("PORTRANGE", "  ")])).config, None);
        // Other variables do not matter while the shim is inactive.
        assert_eq!(parse(env(&[("PORTRANGE_SKIP", "bogus")])).config, None);
    }

    #[test]
    fn slices_parse() {
        let c = ok(&[("PORTRANGE", " 198.51.100.10:60000-60511 , [2001:db8::1]:1000-1999, 10.0.0.1:53")]);
        assert_eq!(
            c.slices,
            vec![
                Slice { ip: "198.51.100.10".parse().unwrap(), lo: 60000, hi: 60511 },
                Slice { ip: "2001:db8::1".parse().unwrap(), lo: 1000, hi: 1999 },
                Slice { ip: "10.0.0.1".parse().unwrap(), lo: 53, hi: 53 },
            ]
        );
        assert_eq!(c.strategy, StrategyChoice::Auto);
        assert!(c.has_v4() && c.has_v6());
        assert_eq!(c.slices[0].size(), 512);
        assert_eq!(c.slices[0].to_string(), "198.51.100.10:60000-60511");
        assert_eq!(c.slices[1].to_string(), "[2001:db8::1]:1000-1999");
    }

    #[test]
    fn bad_slices_are_rejected_with_reason() {
        let cases: &[(&str, &str)] = &[
            ("1.2.3.4", "expected IP:LO-HI"),
            ("1.2.3.4:", "not a port"),
            ("1.2.3.4:0-10", "out of range"),
            ("1.2.3.4:10-70000", "out of range"),
            ("1.2.3.4:20-10", "reversed"),
            ("1.2.3:10-20", "not an IPv4"),
            ("::1:10-20", "brackets"),
            ("[::1:10-20", "missing `]`"),
            ("[::1]10-20", "expected `:PORTS`"),
            ("[zz]:10-20", "not an IPv6"),
            ("0.0.0.0:10-20", "unspecified"),
            ("[::]:10-20", "unspecified"),
            ("224.0.0.1:10-20", "multicast"),
            ("[ff02::1]:10-20", "multicast"),
            ("255.255.255.255:10-20", "broadcast"),
            ("[::ffff:1.2.3.4]:10-20", "plain IPv4"),
            ("1.2.3.4:10-20,", "empty slice"),
            ("1.2.3.4:10-20,1.2.3.4:20-30", "overlap"),
            ("1.2.3.4:a-b", "not a port"),
        ];
        for (value, why) in cases {
            let e = err(&[("PORTRANGE", value)]);
            assert_eq!(e.len(), 1, "{value}");
            assert_eq!(e[0].var, "PORTRANGE");
            assert!(e[0].why.contains(why), "{value}: {} lacks {why}", e[0].why);
            assert!(e[0].to_string().starts_with("PORTRANGE=\""), "{}", e[0]);
        }
        // Same ports on different IPs do not overlap.
        ok(&[("PORTRANGE", "1.2.3.4:10-20,1.2.3.5:10-20")]);
    }

    #[test]
    fn default_skip_and_its_exception() {
        let c = ok(&[("PORTRANGE", "198.51.100.10:1000-2000")]);
        assert!(c.default_skip);
        assert!(c.is_skipped("127.0.0.1".parse().unwrap()));
        assert!(c.is_skipped("::ffff:127.0.0.1".parse().unwrap()));
        assert!(c.is_skipped("::1".parse().unwrap()));
        assert!(c.is_skipped("169.254.1.1".parse().unwrap()));
        assert!(c.is_skipped("fe80::1".parse().unwrap()));
        assert!(c.is_skipped("febf::1".parse().unwrap()));
        assert!(!c.is_skipped("fec0::1".parse().unwrap()));
        assert!(!c.is_skipped("192.0.2.1".parse().unwrap()));

        // A slice on loopback keeps loopback in scope, and only that range.
        let c = ok(&[("PORTRANGE", "127.0.0.2:40000-40009")]);
        assert!(!c.is_skipped("127.0.0.1".parse().unwrap()));
        assert!(c.is_skipped("::1".parse().unwrap()));
        assert!(c.is_skipped("169.254.0.9".parse().unwrap()));
        let c = ok(&[("PORTRANGE", "[::1]:40000-40009")]);
        assert!(!c.is_skipped("::1".parse().unwrap()));
        assert!(c.is_skipped("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn explicit_skip_is_exactly_that_list() {
        let c = ok(&[("PORTRANGE", "198.51.100.10:1000-2000"), ("PORTRANGE_SKIP", "")]);
        assert!(c.skip.is_empty() && !c.default_skip);
        assert!(!c.is_skipped("127.0.0.1".parse().unwrap()));
        let c = ok(&[
            ("PORTRANGE", "198.51.100.10:1000-2000"),
            ("PORTRANGE_SKIP", "10.1.2.3/8, 192.0.2.7, [2001:db8::]/32, 2001:db9::/32"),
        ]);
        assert!(c.is_skipped("10.200.0.1".parse().unwrap()));
        assert!(c.is_skipped("192.0.2.7".parse().unwrap()));
        assert!(!c.is_skipped("192.0.2.8".parse().unwrap()));
        assert!(c.is_skipped("2001:db8:1::1".parse().unwrap()));
        assert!(c.is_skipped("2001:db9::1".parse().unwrap()));
        assert!(!c.is_skipped("127.0.0.1".parse().unwrap()));
        assert_eq!(c.skip[0].to_string(), "10.0.0.0/8");
        let c = ok(&[("PORTRANGE", "198.51.100.10:1000-2000"), ("PORTRANGE_SKIP", "0.0.0.0/0")]);
        assert!(c.is_skipped("8.8.8.8".parse().unwrap()));
        assert!(!c.is_skipped("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn bad_skip_and_strategy() {
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x", "10.0.0.0/8,,"] {
            let e = err(&[("PORTRANGE", "1.2.3.4:1-2"), ("PORTRANGE_SKIP", bad)]);
            assert_eq!(e[0].var, "PORTRANGE_SKIP", "{bad}");
        }
        let e = err(&[("PORTRANGE", "1.2.3.4:1-2"), ("PORTRANGE_STRATEGY", "fast")]);
        assert_eq!(e[0].var, "PORTRANGE_STRATEGY");
        // All bad variables are reported together.
        let e = err(&[("PORTRANGE", "x"), ("PORTRANGE_SKIP", "y"), ("PORTRANGE_STRATEGY", "z")]);
        assert_eq!(
            e.iter().map(|e| e.var).collect::<Vec<_>>(),
            ["PORTRANGE", "PORTRANGE_SKIP", "PORTRANGE_STRATEGY"]
        );
        for (v, s) in [
            ("kernel", StrategyChoice::Kernel),
            (" Retry ", StrategyChoice::Retry),
            ("AUTO", StrategyChoice::Auto),
        ] {
            assert_eq!(ok(&[("PORTRANGE", "1.2.3.4:1-2"), ("PORTRANGE_STRATEGY", v)]).strategy, s);
        }
    }

    #[test]
    fn conntrack_choice() {
        assert_eq!(ok(&[("PORTRANGE", "1.2.3.4:1-2")]).conntrack, ConntrackChoice::Auto);
        for (v, c) in [
            ("auto", ConntrackChoice::Auto),
            (" Reserve ", ConntrackChoice::Reserve),
            ("VERIFY", ConntrackChoice::Verify),
            ("off", ConntrackChoice::Off),
            ("", ConntrackChoice::Auto),
        ] {
            assert_eq!(ok(&[("PORTRANGE", "1.2.3.4:1-2"), ("PORTRANGE_CONNTRACK", v)]).conntrack, c, "{v:?}");
            assert_eq!(parse_conntrack(&c.to_string()), Ok(c));
        }
        // A typo is an error like a bad strategy (PORTRANGE_ON_ERROR applies), never silently auto.
        let e = err(&[("PORTRANGE", "1.2.3.4:1-2"), ("PORTRANGE_CONNTRACK", "reserv")]);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].var, "PORTRANGE_CONNTRACK");
        assert!(e[0].why.contains("`reserve`"), "{}", e[0]);
        // Inactive shim: not read.
        assert_eq!(parse(env(&[("PORTRANGE_CONNTRACK", "bogus")])).config, None);
    }

    #[test]
    fn warn_only_variables() {
        let p = parse(env(&[
            ("PORTRANGE", "1.2.3.4:1-2"),
            ("PORTRANGE_LOG", "loud"),
            ("PORTRANGE_ON_ERROR", "explode"),
            ("PORTRANGE_STATS", " "),
        ]));
        assert!(p.config.unwrap().is_ok());
        assert_eq!(p.on_error, OnError::Deny);
        assert_eq!(p.log, DEFAULT_LOG);
        assert_eq!(p.stats, None);
        let vars: Vec<_> = p.warnings.iter().map(|w| w.var).collect();
        assert_eq!(vars, ["PORTRANGE_ON_ERROR", "PORTRANGE_LOG", "PORTRANGE_STATS"]);

        let p = parse(env(&[
            ("PORTRANGE_ON_ERROR", "passthrough"),
            ("PORTRANGE_LOG", "debug"),
            ("PORTRANGE_STATS", "/tmp/s"),
        ]));
        assert_eq!(p.on_error, OnError::Passthrough);
        assert_eq!(p.log, "debug");
        assert_eq!(p.stats.as_deref(), Some("/tmp/s"));
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn log_filters() {
        for good in ["trace", "WARN", "portrange=debug", "warn,portrange::hooks=trace", "off", "portrange"] {
            assert!(parse_log_filter(good).is_ok(), "{good}");
        }
        for bad in ["", "loud", "portrange=loud", "=debug", "a b", "debug/foo", "other=debug"] {
            assert!(parse_log_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rust_log_is_never_read() {
        let p = parse(|k| {
            assert_ne!(k, "RUST_LOG");
            None
        });
        assert_eq!(p.log, DEFAULT_LOG);
    }
}
