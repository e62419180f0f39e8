//! One judgement of a configuration on this host, shared by `check` (which explains it) and
//! `exec` (which refuses to start a program under a configuration `check` refuses).
//!
//! The configuration is the PORTRANGE* environment with the command-line flags laid over it;
//! both go through the shim's own parser, so a bad value is the same error whichever way it
//! came (the message names the flag when it came from one).

use crate::flags::ShimFlags;
use portrange::choice::{choose_tcp, KernelFacts};
use portrange::config::{self, Config, ConfigError, Parsed, Slice};
use portrange::sysctl::Reserved;
use portrange::Tcp;
use std::net::{IpAddr, SocketAddr};

/// What this host says about one slice.
#[derive(Clone, Debug)]
pub struct SliceFacts {
    pub slice: Slice,
    pub inside_sysctl_range: bool,
    /// Ports of the slice listed in net.ipv4.ip_local_reserved_ports (the shim skips them).
    pub reserved: u32,
    /// `None`: a bind to the slice IP works here; `Some(why)` otherwise.
    pub unassigned: Option<String>,
}

pub struct Evaluation {
    pub parsed: Parsed,
    pub facts: KernelFacts,
    /// The configuration is invalid (the shim would apply PORTRANGE_ON_ERROR).
    pub errors: Vec<String>,
    /// Valid, but it cannot work on this host (every connect would fail).
    pub problems: Vec<String>,
    /// Only warned about (the shim starts anyway).
    pub warnings: Vec<String>,
    pub strategy: Option<(Tcp, String)>,
    pub slices: Vec<SliceFacts>,
}

impl Evaluation {
    pub fn config(&self) -> Option<&Config> {
        match &self.parsed.config {
            Some(Ok(c)) => Some(c),
            _ => None,
        }
    }
    pub fn valid(&self) -> bool {
        self.errors.is_empty()
    }
    pub fn usable(&self) -> bool {
        self.errors.is_empty() && self.problems.is_empty()
    }
    /// Exit status of `check`: 0 usable here, 1 invalid or unusable.
    pub fn exit_code(&self) -> u8 {
        if self.usable() {
            0
        } else {
            1
        }
    }
}

/// The environment as the shim would read it, with the flags laid over it.
pub fn parsed_from(overrides: &[(&str, String)]) -> Parsed {
    config::parse(|k| {
        overrides
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    })
}

/// A parse error, naming the flag when the value came from one (and, for several `--slice`,
/// the one that is wrong).
fn describe(e: &ConfigError, flags: &ShimFlags) -> String {
    let Some(flag) = flags.flag_for(e.var) else { return e.to_string() };
    if e.var == "PORTRANGE" {
        for s in &flags.slices {
            if let Err(why) = config::parse_slices(s) {
                return format!("{flag} {s:?}: {why}");
            }
        }
    }
    format!("{flag} {:?}: {}", e.value, e.why)
}

/// Whether a bind to `ip` works here (the IP is assigned, or locally routable).
fn bind_check(ip: IpAddr) -> Option<String> {
    match std::net::UdpSocket::bind(SocketAddr::new(ip, 0)) {
        Ok(_) => None,
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            Some("a bind to it fails: EADDRNOTAVAIL".into())
        }
        Err(e) => Some(format!("a bind to it fails: {e}")),
    }
}

pub fn evaluate(flags: &ShimFlags) -> Evaluation {
    let parsed = parsed_from(&flags.env());
    let facts = KernelFacts::read();
    let reserved = Reserved::read();
    let mut errors = Vec::new();
    let mut problems = Vec::new();
    let warnings: Vec<String> = parsed.warnings.iter().map(|w| describe(w, flags)).collect();
    let mut strategy = None;
    let mut slices = Vec::new();
    match &parsed.config {
        None => errors.push("PORTRANGE is unset or empty: the shim does nothing at all".into()),
        Some(Err(es)) => errors.extend(es.iter().map(|e| describe(e, flags))),
        Some(Ok(c)) => {
            match choose_tcp(c, &facts) {
                Ok(s) => strategy = Some(s),
                Err(e) => errors.push(match flags.flag_for("PORTRANGE_STRATEGY") {
                    Some(f) => e.replacen("PORTRANGE_STRATEGY=", &format!("{f} "), 1),
                    None => e,
                }),
            }
            let outside = facts.outside(&c.slices);
            let mut seen: Vec<(IpAddr, Option<String>)> = Vec::new();
            for s in &c.slices {
                let unassigned = match seen.iter().find(|(ip, _)| *ip == s.ip) {
                    Some((_, u)) => u.clone(),
                    None => {
                        let u = bind_check(s.ip);
                        if let Some(why) = &u {
                            problems.push(format!(
                                "slice IP {} is not assigned to this host ({why}): every connect from \
                                 its slices would fail",
                                s.ip
                            ));
                        }
                        seen.push((s.ip, u.clone()));
                        u
                    }
                };
                slices.push(SliceFacts {
                    slice: *s,
                    inside_sysctl_range: !outside.contains(&s),
                    reserved: reserved.count_in(s.lo, s.hi),
                    unassigned,
                });
            }
        }
    }
    Evaluation { parsed, facts, errors, problems, warnings, strategy, slices }
}
