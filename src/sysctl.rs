//! What the kernel of this network namespace offers: the ephemeral port range, tcp_tw_reuse,
//! reserved ports, and whether IP_LOCAL_PORT_RANGE exists.

pub use crate::choice::IP_LOCAL_PORT_RANGE;

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `net.ipv4.tcp_tw_reuse` (0, 1, or 2 = loopback only).
pub fn tcp_tw_reuse() -> Option<u8> {
    read("/proc/sys/net/ipv4/tcp_tw_reuse")?.trim().parse().ok()
}

/// The (hi << 16) | lo value of IP_LOCAL_PORT_RANGE.
pub fn range_value(lo: u16, hi: u16) -> u32 {
    (u32::from(hi) << 16) | u32::from(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_value_and_tw_reuse() {
        assert_eq!(range_value(60000, 60009), (60009 << 16) | 60000);
        assert!(tcp_tw_reuse().is_some());
    }
}

/// `net.ipv4.ip_local_reserved_ports` as a bitmap: autobind skips these, an explicit bind does
/// not, so the shim skips them itself.
pub struct Reserved(Box<[u64; 1024]>);

impl Reserved {
    pub fn none() -> Reserved {
        Reserved(Box::new([0; 1024]))
    }

    pub fn read() -> Reserved {
        read("/proc/sys/net/ipv4/ip_local_reserved_ports")
            .and_then(|s| Reserved::parse(&s))
            .unwrap_or_else(Reserved::none)
    }

    /// `1000-1010,2000` (the sysctl's format; empty = none).
    pub fn parse(s: &str) -> Option<Reserved> {
        let mut r = Reserved::none();
        for item in s.trim().split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?),
                None => {
                    let p = item.parse::<u16>().ok()?;
                    (p, p)
                }
            };
            for p in lo..=hi {
                r.0[usize::from(p) / 64] |= 1 << (p % 64);
            }
        }
        Some(r)
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0[usize::from(port) / 64] & (1 << (port % 64)) != 0
    }

    pub fn count_in(&self, lo: u16, hi: u16) -> u32 {
        (lo..=hi).filter(|p| self.contains(*p)).count() as u32
    }
}

#[cfg(test)]
mod reserved_tests {
    use super::Reserved;

    #[test]
    fn parses_the_sysctl_format() {
        let r = Reserved::parse("1000-1002, 65535,7\n").unwrap();
        for p in [7, 1000, 1001, 1002, 65535] {
            assert!(r.contains(p), "{p}");
        }
        for p in [0, 6, 8, 999, 1003, 65534] {
            assert!(!r.contains(p), "{p}");
        }
        assert_eq!(r.count_in(990, 1010), 3);
        assert!(!Reserved::parse("").unwrap().contains(0));
        assert!(Reserved::parse("x").is_none());
        let _ = Reserved::read();
    }
}
