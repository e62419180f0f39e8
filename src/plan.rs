//! `portrange plan`: split a port range on one IP into N slices for a fleet.

use std::net::IpAddr;

/// `PORTS`: comma-separated ports and ranges.
pub fn parse_ports(v: &str) -> Result<Vec<(u16, u16)>, String> {
    v.split(',').map(str::trim).filter(|i| !i.is_empty()).map(crate::config::parse_port_range).collect()
}

/// The available ports, split into `n` contiguous shares of (nearly) equal size; each share as
/// ranges (exclusions make holes).
pub fn split(lo: u16, hi: u16, exclude: &[(u16, u16)], n: usize) -> Result<Vec<Vec<(u16, u16)>>, String> {
    let ports: Vec<u16> = (lo..=hi).filter(|p| !exclude.iter().any(|(a, b)| a <= p && p <= b)).collect();
    if n == 0 {
        return Err("--servers must be at least 1".into());
    }
    if ports.len() < n {
        return Err(format!("{} usable ports cannot be split among {n} servers", ports.len()));
    }
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let share = &ports[k * ports.len() / n..(k + 1) * ports.len() / n];
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for &p in share {
            match ranges.last_mut() {
                Some((_, b)) if *b + 1 == p => *b = p,
                _ => ranges.push((p, p)),
            }
        }
        out.push(ranges);
    }
    Ok(out)
}

pub fn portrange_value(ip: IpAddr, ranges: &[(u16, u16)]) -> String {
    let host = match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    ranges
        .iter()
        .map(|&(a, b)| if a == b { format!("{host}:{a}") } else { format!("{host}:{a}-{b}") })
        .collect::<Vec<_>>()
        .join(",")
}

/// The smallest `net.ipv4.ip_local_port_range` that contains both `current` and every range in
/// `shares` (the kernel strategy needs each slice inside it); `None` when `current` already does.
pub fn widened_sysctl_range(current: (u16, u16), shares: &[(u16, u16)]) -> Option<(u16, u16)> {
    let lo = shares.iter().map(|r| r.0).min()?.min(current.0);
    let hi = shares.iter().map(|r| r.1).max()?.max(current.1);
    ((lo, hi) != current).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_evenly_and_around_exclusions() {
        let s = split(60000, 60511, &[], 4).unwrap();
        assert_eq!(
            s,
            vec![vec![(60000, 60127)], vec![(60128, 60255)], vec![(60256, 60383)], vec![(60384, 60511)]]
        );
        let s = split(1000, 1009, &[(1003, 1004)], 2).unwrap();
        assert_eq!(s, vec![vec![(1000, 1002), (1005, 1005)], vec![(1006, 1009)]]);
        assert!(split(1, 3, &[], 4).is_err());
        assert_eq!(
            portrange_value("10.0.0.1".parse().unwrap(), &[(1, 2), (5, 5)]),
            "10.0.0.1:1-2,10.0.0.1:5"
        );
        assert_eq!(portrange_value("::1".parse().unwrap(), &[(1, 2)]), "[::1]:1-2");
        assert_eq!(widened_sysctl_range((32768, 60999), &[(40000, 40009)]), None);
        assert_eq!(widened_sysctl_range((32768, 60999), &[(60000, 65535)]), Some((32768, 65535)));
        assert_eq!(widened_sysctl_range((32768, 60999), &[(1024, 2047), (3000, 3001)]), Some((1024, 60999)));
        assert_eq!(widened_sysctl_range((32768, 60999), &[]), None);
        // Every plan is a valid PORTRANGE.
        for ranges in split(1024, 65535, &[(8080, 8080)], 7).unwrap() {
            let v = portrange_value("198.51.100.10".parse().unwrap(), &ranges);
            assert!(crate::config::parse_slices(&v).is_ok(), "{v}");
        }
    }
}
