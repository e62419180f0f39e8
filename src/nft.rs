//! The nftables guard: a ruleset that turns a silent break (a flow leaving a slice IP from a
//! port outside its slices) into a visible one. Printed by `portrange check` (`--nft`: only the
//! ruleset, for `nft -f -`).
//!
//! - `output` (priority 0, before NAT): a new flow from a slice IP whose source port is outside
//!   that IP's slices is rejected (TCP with a reset) — the program gets an immediate error.
//! - `postrouting` (priority `srcnat + 1`, after source NAT): the same, for what NAT rewrote
//!   after the socket was bound (seed 004: conntrack moving a local flow off a 4-tuple that a
//!   forwarded flow holds). `reject` is not allowed there, so it counts and drops. Only flows
//!   whose *original* source is the slice IP are matched (locally made ones), so a forwarder's
//!   flows SNATed into a disjoint forwarding part of the same IP pass.

use crate::config::Slice;
use std::net::IpAddr;

/// Each slice IP once, in order of first appearance, with its port ranges sorted.
pub fn ranges_by_ip(slices: &[Slice]) -> Vec<(IpAddr, Vec<(u16, u16)>)> {
    let mut out: Vec<(IpAddr, Vec<(u16, u16)>)> = Vec::new();
    for s in slices {
        match out.iter_mut().find(|(ip, _)| *ip == s.ip) {
            Some((_, r)) => r.push((s.lo, s.hi)),
            None => out.push((s.ip, vec![(s.lo, s.hi)])),
        }
    }
    for (_, r) in &mut out {
        r.sort_unstable();
        r.dedup();
    }
    out
}

fn set(ranges: &[(u16, u16)]) -> String {
    let items: Vec<String> =
        ranges.iter().map(|&(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") }).collect();
    format!("{{ {} }}", items.join(", "))
}

/// The guard ruleset for `slices` (a complete `nft -f` input; re-loading it replaces the table).
pub fn guard_ruleset(slices: &[Slice]) -> String {
    let by_ip = ranges_by_ip(slices);
    let mut out = String::new();
    out.push_str("# portrange guard: nothing leaves a slice IP from a port outside its slices.\n");
    out.push_str("# Load with `nft -f FILE` (or `portrange check --nft | nft -f -`).\n");
    out.push_str("table inet portrange_guard\n");
    out.push_str("delete table inet portrange_guard\n");
    out.push_str("table inet portrange_guard {\n");
    out.push_str("  # Before NAT: the program's own bind or connect; rejected at once.\n");
    out.push_str("  chain output {\n    type filter hook output priority 0; policy accept;\n");
    for (ip, ranges) in &by_ip {
        let fam = if ip.is_ipv4() { "ip" } else { "ip6" };
        for (proto, how) in [("tcp", "reject with tcp reset"), ("udp", "reject")] {
            out.push_str(&format!(
                "    {fam} saddr {ip} ct state new {proto} sport != {} counter {how}\n",
                set(ranges)
            ));
        }
    }
    out.push_str("  }\n");
    out.push_str("  # After source NAT: a local flow that conntrack/NAT moved out of the slice; dropped\n");
    out.push_str("  # (reject is not allowed here) and counted.\n");
    out.push_str(
        "  chain postrouting {\n    type filter hook postrouting priority srcnat + 1; policy accept;\n",
    );
    for (ip, ranges) in &by_ip {
        let fam = if ip.is_ipv4() { "ip" } else { "ip6" };
        for proto in ["tcp", "udp"] {
            out.push_str(&format!(
                "    {fam} saddr {ip} ct state new ct original {fam} saddr {ip} {proto} sport != {} counter drop\n",
                set(ranges)
            ));
        }
    }
    out.push_str("  }\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slices(v: &str) -> Vec<Slice> {
        crate::config::parse_slices(v).unwrap()
    }

    #[test]
    fn one_rule_per_ip_and_protocol_even_when_slices_are_not_adjacent() {
        let r =
            guard_ruleset(&slices("198.51.100.10:61000-61009,[2001:db8::1]:5000,198.51.100.10:60000-60009"));
        let rules: Vec<&str> = r.lines().map(str::trim).filter(|l| l.contains("saddr")).collect();
        assert_eq!(rules.len(), 8, "{r}");
        assert_eq!(
            rules[0],
            "ip saddr 198.51.100.10 ct state new tcp sport != { 60000-60009, 61000-61009 } counter reject with \
             tcp reset"
        );
        assert_eq!(rules[3], "ip6 saddr 2001:db8::1 ct state new udp sport != { 5000 } counter reject");
        assert_eq!(
            rules[4],
            "ip saddr 198.51.100.10 ct state new ct original ip saddr 198.51.100.10 tcp sport != { 60000-60009, \
             61000-61009 } counter drop"
        );
        assert_eq!(r.matches("198.51.100.10 ct state new udp").count(), 1, "{r}");
    }

    #[test]
    fn chains_hooks_and_priorities() {
        let r = guard_ruleset(&slices("10.0.0.1:1000-1999"));
        assert!(r.contains("type filter hook output priority 0; policy accept;"), "{r}");
        assert!(r.contains("type filter hook postrouting priority srcnat + 1; policy accept;"), "{r}");
        // Reject before NAT, drop after it (reject is not allowed in postrouting).
        let post = &r[r.find("chain postrouting").unwrap()..];
        assert!(!post.contains("reject") && post.contains("counter drop"), "{r}");
        // Re-loadable: the table is created, deleted and defined again in one transaction.
        assert!(r.starts_with("# portrange guard") && r.contains("delete table inet portrange_guard\n"));
    }

    #[test]
    fn ranges_are_grouped_sorted_and_deduplicated() {
        let s = slices("10.0.0.1:30-39,10.0.0.2:1,10.0.0.1:10-19");
        let by = ranges_by_ip(&s);
        assert_eq!(by.len(), 2);
        assert_eq!(by[0].1, [(10, 19), (30, 39)]);
        assert_eq!(set(&by[1].1), "{ 1 }");
    }
}
