//! `portrange status`: from one socket dump, per slice and destination, the 4-tuples held and
//! the headroom left. Pure (the dump and the reserved ports are handed in), unit-tested.
//!
//! A slice port can serve one flow to each destination (IP and port) at a time. For one
//! destination a port is unavailable when a socket from it to that destination exists (in any
//! state but CLOSE: ESTABLISHED and the SYN states; the closing states FIN_WAIT1, FIN_WAIT2,
//! CLOSE_WAIT, CLOSING, LAST_ACK; TIME_WAIT), when it is listed in ip_local_reserved_ports, or
//! when a socket owns it for every destination: a TCP listener, or a UDP socket bound to it
//! unconnected. Headroom = slice size − unavailable ports.

use crate::config::Slice;
use crate::diag::{state, Proto, Sock};
use crate::sysctl::Reserved;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// The sockets of one slice towards one destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destination {
    pub proto: Option<Proto>,
    pub remote: Option<SocketAddr>,
    /// ESTABLISHED, SYN_SENT, SYN_RECV (UDP: connected sockets).
    pub established: u32,
    /// FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, CLOSING, LAST_ACK.
    pub closing: u32,
    pub time_wait: u32,
    /// Ports left for a new flow to this destination.
    pub headroom: u32,
}

impl Destination {
    pub fn held(&self) -> u32 {
        self.established + self.closing + self.time_wait
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceStatus {
    pub slice: Slice,
    pub ports: u32,
    /// Ports in ip_local_reserved_ports.
    pub reserved: u32,
    /// Ports owned for every destination (listeners, unconnected UDP sockets).
    pub owned: u32,
    /// Headroom for a destination nothing is connected to yet.
    pub headroom: u32,
    /// Fullest first (least headroom), then by protocol and address.
    pub destinations: Vec<Destination>,
}

/// Which column a TCP state counts in; `None`: not a held 4-tuple (LISTEN, CLOSE).
fn column(s: u8) -> Option<usize> {
    match s {
        state::ESTABLISHED | state::SYN_SENT | state::SYN_RECV => Some(0),
        state::FIN_WAIT1 | state::FIN_WAIT2 | state::CLOSE_WAIT | state::CLOSING | state::LAST_ACK => Some(1),
        state::TIME_WAIT => Some(2),
        _ => None,
    }
}

pub fn status(slices: &[Slice], reserved: &Reserved, socks: &[Sock]) -> Vec<SliceStatus> {
    slices
        .iter()
        .map(|sl| {
            let mine: Vec<&Sock> = socks
                .iter()
                .filter(|s| {
                    (s.local.ip() == sl.ip || s.local.ip().is_unspecified())
                        && sl.contains_port(s.local.port())
                })
                .collect();
            let mut unavailable: BTreeSet<u16> = (sl.lo..=sl.hi).filter(|p| reserved.contains(*p)).collect();
            let reserved_n = unavailable.len() as u32;
            let mut owned: BTreeSet<u16> = BTreeSet::new();
            for s in &mine {
                let owns = match s.proto {
                    Proto::Tcp => s.state == state::LISTEN,
                    Proto::Udp => s.remote.port() == 0,
                };
                if owns {
                    owned.insert(s.local.port());
                }
            }
            unavailable.extend(&owned);
            let mut by: BTreeMap<(Proto, SocketAddr), (Destination, BTreeSet<u16>)> = BTreeMap::new();
            for s in mine.iter().filter(|s| s.local.ip() == sl.ip && s.remote.port() != 0) {
                let col = match s.proto {
                    Proto::Tcp => column(s.state),
                    // A connected UDP socket holds its 4-tuple whatever the state field says.
                    Proto::Udp => Some(0),
                };
                let Some(col) = col else { continue };
                let (d, ports) = by.entry((s.proto, s.remote)).or_default();
                d.proto = Some(s.proto);
                d.remote = Some(s.remote);
                match col {
                    0 => d.established += 1,
                    1 => d.closing += 1,
                    _ => d.time_wait += 1,
                }
                ports.insert(s.local.port());
            }
            let size = sl.size();
            let free = |extra: &BTreeSet<u16>| size - unavailable.union(extra).count() as u32;
            let mut destinations: Vec<Destination> = by
                .into_values()
                .map(|(mut d, ports)| {
                    d.headroom = free(&ports);
                    d
                })
                .collect();
            destinations.sort_by_key(|d| (d.headroom, d.proto, d.remote));
            SliceStatus {
                slice: *sl,
                ports: size,
                reserved: reserved_n,
                owned: owned.len() as u32,
                headroom: free(&BTreeSet::new()),
                destinations,
            }
        })
        .collect()
}

/// A fixed-width bar: `#` established, `+` closing, `~` TIME_WAIT, `x` reserved/owned,
/// `.` free; each cell is ports/width of the slice (rounded so that a non-zero count shows).
pub fn bar(d: &Destination, s: &SliceStatus, width: usize) -> String {
    let total = s.ports.max(1) as usize;
    let unusable = (s.ports - d.headroom).saturating_sub(d.held()) as usize;
    let parts = [
        ('#', d.established as usize),
        ('+', d.closing as usize),
        ('~', d.time_wait as usize),
        ('x', unusable),
    ];
    let mut out = String::with_capacity(width);
    let mut used = 0;
    for (c, n) in parts {
        let mut cells = n * width / total;
        if n > 0 && cells == 0 {
            cells = 1;
        }
        let cells = cells.min(width - used);
        out.extend(std::iter::repeat_n(c, cells));
        used += cells;
    }
    out.extend(std::iter::repeat_n('.', width - used));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(proto: Proto, st: u8, local: &str, remote: &str) -> Sock {
        Sock { proto, state: st, local: local.parse().unwrap(), remote: remote.parse().unwrap(), inode: 1 }
    }

    #[test]
    fn counts_per_destination_and_headroom() {
        let sl = crate::config::parse_slice("10.0.0.1:1000-1009").unwrap();
        let socks = vec![
            sock(Proto::Tcp, state::ESTABLISHED, "10.0.0.1:1000", "1.1.1.1:443"),
            sock(Proto::Tcp, state::ESTABLISHED, "10.0.0.1:1001", "1.1.1.1:443"),
            sock(Proto::Tcp, state::TIME_WAIT, "10.0.0.1:1002", "1.1.1.1:443"),
            sock(Proto::Tcp, state::FIN_WAIT2, "10.0.0.1:1000", "2.2.2.2:80"),
            // Not ours: another IP, a port outside the slice.
            sock(Proto::Tcp, state::ESTABLISHED, "10.0.0.2:1000", "1.1.1.1:443"),
            sock(Proto::Tcp, state::ESTABLISHED, "10.0.0.1:999", "1.1.1.1:443"),
            // A listener on a slice port (wildcard): owned for every destination.
            sock(Proto::Tcp, state::LISTEN, "0.0.0.0:1009", "0.0.0.0:0"),
            // An unconnected UDP socket owns 1008; a connected one holds a tuple.
            sock(Proto::Udp, state::CLOSE, "10.0.0.1:1008", "0.0.0.0:0"),
            sock(Proto::Udp, state::ESTABLISHED, "10.0.0.1:1000", "9.9.9.9:53"),
        ];
        let r = Reserved::parse("1007").unwrap();
        let st = status(&[sl], &r, &socks);
        let s = &st[0];
        assert_eq!((s.ports, s.reserved, s.owned, s.headroom), (10, 1, 2, 7));
        let d: Vec<(String, u32, u32, u32, u32)> = s
            .destinations
            .iter()
            .map(|d| (d.remote.unwrap().to_string(), d.established, d.closing, d.time_wait, d.headroom))
            .collect();
        assert_eq!(
            d,
            vec![
                ("1.1.1.1:443".into(), 2, 0, 1, 4),
                ("2.2.2.2:80".into(), 0, 1, 0, 6),
                ("9.9.9.9:53".into(), 1, 0, 0, 6)
            ]
        );
        assert_eq!(bar(&s.destinations[0], s, 10), "##~xxx....");
    }
}
