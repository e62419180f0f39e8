//! The cgroup BPF placement's configuration as the program reads it (`struct config` in
//! bpf/placement.c): which slices, which destinations are skipped, the random strides, and the
//! names of the program's counters. Pure: the loading lives in the `portrange` command.

use crate::config::{Prefix, Slice};
use std::net::IpAddr;

pub const MAX_SLICES: usize = 8;
pub const MAX_STRIDES: usize = 16;
pub const MAX_SKIP: usize = 8;
/// An explicit bind may take a TIME_WAIT 4-tuple (net.ipv4.tcp_timestamps is on).
pub const FLAG_TIME_WAIT_OK: u32 = 1;
/// How long a claim on a (destination, port) holds when its connect never reached the
/// established hash (it failed): then another connect may take the tuple.
pub const CLAIM_TTL_MS: u32 = 1000;

/// The program's counters, in the order of `enum counter` in bpf/placement.c.
pub const COUNTERS: [&str; 13] = [
    "placed_tcp",
    "placed_udp",
    "exhausted_tcp",
    "exhausted_udp",
    "probes",
    "held_skipped",
    "claim_busy",
    "bind_failed",
    "passed_skip",
    "passed_bound",
    "passed_ipv6",
    "refused_unplaceable",
    "refused_config",
];

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BpfSlice {
    /// Network order.
    pub ip: u32,
    pub lo: u16,
    pub hi: u16,
    pub n_strides: u32,
    pub strides: [u32; MAX_STRIDES],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BpfPrefix {
    /// Network order, masked.
    pub net: u32,
    /// Network order.
    pub mask: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BpfConfig {
    pub n_slices: u32,
    pub n_skip: u32,
    pub flags: u32,
    pub claim_ttl_ms: u32,
    /// net.ipv4.ip_local_port_range when attached: a port there that the program did not bind
    /// itself was chosen by the kernel (autobind), so the flow cannot be placed any more.
    pub ephemeral_lo: u16,
    pub ephemeral_hi: u16,
    pub slices: [BpfSlice; MAX_SLICES],
    pub skip: [BpfPrefix; MAX_SKIP],
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Up to MAX_STRIDES strides coprime to `n` (so a walk of `n` steps visits every port once),
/// spread over 1..n so that consecutive probes land far apart. `seed` varies the choice.
pub fn strides(n: u32, seed: u64) -> Vec<u32> {
    if n <= 2 {
        return vec![1];
    }
    let mut out = Vec::new();
    let mut x = seed | 1;
    let mut tries = 0;
    while out.len() < MAX_STRIDES && tries < 10_000 {
        tries += 1;
        // xorshift64: a cheap deterministic spread.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let s = 1 + (x % u64::from(n - 1)) as u32;
        if gcd(s, n) == 1 && !out.contains(&s) {
            out.push(s);
        }
    }
    if out.is_empty() {
        out.push(1);
    }
    out
}

/// The program's configuration for these slices and skip list. Only IPv4 slices are placed
/// by the program (IPv4 and v4-mapped destinations); IPv6 slices are an error here.
pub fn encode(
    slices: &[Slice],
    skip: &[Prefix],
    time_wait_ok: bool,
    ephemeral: (u16, u16),
    seed: u64,
) -> Result<BpfConfig, String> {
    let mut c = BpfConfig {
        claim_ttl_ms: CLAIM_TTL_MS,
        ephemeral_lo: ephemeral.0,
        ephemeral_hi: ephemeral.1,
        ..Default::default()
    };
    if slices.is_empty() {
        return Err("at least one --slice is needed".into());
    }
    if slices.len() > MAX_SLICES {
        return Err(format!("at most {MAX_SLICES} slices for the cgroup placement ({} given)", slices.len()));
    }
    for (i, s) in slices.iter().enumerate() {
        let IpAddr::V4(ip) = s.ip else {
            return Err(format!(
                "slice {}: the cgroup placement handles IPv4 slices only (IPv4 and v4-mapped flows)",
                s.ip
            ));
        };
        let st = strides(s.size(), seed.wrapping_add(i as u64));
        let mut strides = [0; MAX_STRIDES];
        strides[..st.len()].copy_from_slice(&st);
        c.slices[i] =
            BpfSlice { ip: u32::from(ip).to_be(), lo: s.lo, hi: s.hi, n_strides: st.len() as u32, strides };
    }
    c.n_slices = slices.len() as u32;
    let v4: Vec<_> = skip
        .iter()
        .filter_map(|p| match p.addr {
            IpAddr::V4(a) => Some((a, p.len)),
            IpAddr::V6(a) => a.to_ipv4_mapped().map(|a| (a, p.len.saturating_sub(96))),
        })
        .collect();
    if v4.len() > MAX_SKIP {
        return Err(format!(
            "at most {MAX_SKIP} IPv4 skip prefixes for the cgroup placement ({} given)",
            v4.len()
        ));
    }
    for (i, (a, len)) in v4.iter().enumerate() {
        let mask = if *len == 0 { 0 } else { u32::MAX << (32 - u32::from(*len).min(32)) };
        c.skip[i] = BpfPrefix { net: (u32::from(*a) & mask).to_be(), mask: mask.to_be() };
    }
    c.n_skip = v4.len() as u32;
    if time_wait_ok {
        c.flags |= FLAG_TIME_WAIT_OK;
    }
    Ok(c)
}

/// The configuration's bytes, as the BPF map stores them.
pub fn to_bytes(c: &BpfConfig) -> Vec<u8> {
    let mut v = Vec::with_capacity(std::mem::size_of::<BpfConfig>());
    for w in [c.n_slices, c.n_skip, c.flags, c.claim_ttl_ms] {
        v.extend_from_slice(&w.to_ne_bytes());
    }
    v.extend_from_slice(&c.ephemeral_lo.to_ne_bytes());
    v.extend_from_slice(&c.ephemeral_hi.to_ne_bytes());
    for s in &c.slices {
        v.extend_from_slice(&s.ip.to_ne_bytes());
        v.extend_from_slice(&s.lo.to_ne_bytes());
        v.extend_from_slice(&s.hi.to_ne_bytes());
        v.extend_from_slice(&s.n_strides.to_ne_bytes());
        for x in s.strides {
            v.extend_from_slice(&x.to_ne_bytes());
        }
    }
    for p in &c.skip {
        v.extend_from_slice(&p.net.to_ne_bytes());
        v.extend_from_slice(&p.mask.to_ne_bytes());
    }
    v
}

/// Bytes before the slices: five u32-sized words.
const HEADER: usize = 20;

/// The slices back from the map's bytes (for `portrange cgroup status`).
pub fn slices_from_bytes(b: &[u8]) -> Vec<(std::net::Ipv4Addr, u16, u16)> {
    let u32_at =
        |o: usize| b.get(o..o + 4).map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]])).unwrap_or(0);
    let u16_at = |o: usize| b.get(o..o + 2).map(|x| u16::from_ne_bytes([x[0], x[1]])).unwrap_or(0);
    let n = (u32_at(0) as usize).min(MAX_SLICES);
    let size = std::mem::size_of::<BpfSlice>();
    (0..n)
        .map(|i| {
            let o = HEADER + i * size;
            (std::net::Ipv4Addr::from(u32::from_be(u32_at(o))), u16_at(o + 4), u16_at(o + 6))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_skip, parse_slices};

    #[test]
    fn strides_visit_every_port_once() {
        for n in [1u32, 2, 3, 10, 12, 64, 500, 512, 65535] {
            for s in strides(n, 7) {
                assert!(s >= 1 && (s < n || n <= 2), "n={n} s={s}");
                let mut seen = vec![false; n as usize];
                let mut idx = 3 % n;
                for _ in 0..n {
                    assert!(!seen[idx as usize], "n={n} stride {s} revisits {idx}");
                    seen[idx as usize] = true;
                    idx = (idx + s) % n;
                }
            }
        }
    }

    #[test]
    fn strides_are_varied() {
        let s = strides(512, 1);
        assert_eq!(s.len(), MAX_STRIDES);
        assert!(s.iter().all(|x| x % 2 == 1));
    }

    #[test]
    fn layout_matches_the_program() {
        // struct slice: 4 + 2 + 2 + 4 + 16*4; struct config: 20 + 8 slices + 8 prefixes.
        assert_eq!(std::mem::size_of::<BpfSlice>(), 76);
        assert_eq!(std::mem::size_of::<BpfConfig>(), HEADER + 8 * 76 + 8 * 8);
        let c = encode(&parse_slices("198.51.100.10:60000-60009").unwrap(), &[], true, (32768, 60999), 1)
            .unwrap();
        assert_eq!(to_bytes(&c).len(), std::mem::size_of::<BpfConfig>());
    }

    #[test]
    fn encode_round_trip() {
        let sl = parse_slices("198.51.100.10:60000-60009, 198.51.100.11:61000").unwrap();
        let skip = parse_skip("127.0.0.0/8,10.0.0.0/8").unwrap();
        let c = encode(&sl, &skip, false, (32768, 60999), 9).unwrap();
        assert_eq!(c.n_slices, 2);
        assert_eq!(c.flags, 0);
        assert_eq!((c.ephemeral_lo, c.ephemeral_hi), (32768, 60999));
        assert_eq!(c.n_skip, 2);
        assert_eq!(c.skip[0].net, u32::from_be_bytes([127, 0, 0, 0]).to_be());
        assert_eq!(c.skip[0].mask.to_ne_bytes(), [255, 0, 0, 0]);
        assert_eq!(c.skip[1].mask.to_ne_bytes(), [255, 0, 0, 0]);
        assert_eq!(c.slices[0].ip.to_ne_bytes(), [198, 51, 100, 10]);
        assert_eq!(
            slices_from_bytes(&to_bytes(&c)),
            vec![
                ("198.51.100.10".parse().unwrap(), 60000, 60009),
                ("198.51.100.11".parse().unwrap(), 61000, 61000)
            ]
        );
    }

    #[test]
    fn encode_refuses_what_the_program_cannot_do() {
        assert!(encode(&parse_slices("[2001:db8::1]:1000-2000").unwrap(), &[], true, (1, 2), 0).is_err());
        assert!(encode(&[], &[], true, (1, 2), 0).is_err());
        let nine: Vec<_> = (0..9).map(|i| format!("198.51.100.{i}:1000")).collect();
        assert!(encode(&parse_slices(&nine.join(",")).unwrap(), &[], true, (1, 2), 0).is_err());
    }
}
