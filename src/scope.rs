//! "Is this call ours?" — a pure function of values: the configuration, the socket's local
//! address, and the destination. No syscalls; unit-tested without sockets.

use crate::config::{canonical, Config, Slice};
use std::net::{IpAddr, SocketAddr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Map SO_PROTOCOL to the protocols in scope. SCTP, MPTCP, UDP-Lite, ICMP and raw are not.
pub fn proto(so_protocol: i32) -> Option<Proto> {
    match so_protocol {
        libc::IPPROTO_TCP => Some(Proto::Tcp),
        libc::IPPROTO_UDP => Some(Proto::Udp),
        _ => None,
    }
}

/// Why a flow is left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leave {
    /// The destination is in PORTRANGE_SKIP.
    Skipped,
    /// No slice of the destination's family.
    NoSliceFamily,
    /// The program bound the socket to a specific port or a specific non-slice IP.
    BoundByProgram,
    /// The destination is unusable (port 0, unspecified): the kernel decides, as without the shim.
    BadDestination,
}

/// What to do with a connect (or a first send).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Place the flow; `pinned` = the program already bound the socket to this slice IP.
    Place {
        v6: bool,
        pinned: Option<IpAddr>,
    },
    Leave(Leave),
}

/// The kind of call being decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// connect(), or a TCP Fast Open send: the destination is the flow's peer.
    Connect,
    /// First send on an unconnected UDP socket: the socket will talk to anyone from its port,
    /// so it is placed whenever a slice of its family exists, whatever this destination is.
    FirstSend,
}

/// Decide for a socket whose local address is `local` (`0.0.0.0:0`/`[::]:0` when unbound),
/// towards `dst`. `shim_bound`: the local address was not the program's choice (the shim bound
/// it in an earlier attempt, or the kernel picked the port of a deferred wildcard bind), so it
/// neither pins the flow nor counts as the program's own binding.
pub fn decide(cfg: &Config, local: SocketAddr, shim_bound: bool, dst: SocketAddr, call: Call) -> Decision {
    let dst_ip = canonical(dst.ip());
    let v6 = dst_ip.is_ipv6();
    let local_ip = canonical(local.ip());

    let pinned = if shim_bound || (local_ip.is_unspecified() && local.port() == 0) {
        None
    } else if local.port() != 0 {
        return Decision::Leave(Leave::BoundByProgram);
    } else if cfg.slices.iter().any(|s| s.ip == local_ip) {
        Some(local_ip)
    } else {
        return Decision::Leave(Leave::BoundByProgram);
    };

    if call == Call::Connect {
        if dst.port() == 0 || dst_ip.is_unspecified() {
            return Decision::Leave(Leave::BadDestination);
        }
        if cfg.is_skipped(dst_ip) {
            return Decision::Leave(Leave::Skipped);
        }
    }
    if let Some(ip) = pinned {
        // A socket bound to a slice IP of the other family cannot reach this destination anyway.
        if ip.is_ipv6() != v6 {
            return Decision::Leave(Leave::NoSliceFamily);
        }
    } else if !cfg.slices.iter().any(|s| s.ip.is_ipv6() == v6) {
        return Decision::Leave(Leave::NoSliceFamily);
    }
    Decision::Place { v6, pinned }
}

/// The slices to try, in order: those of the family (and of the pinned IP), starting from a
/// rotating position.
pub fn candidates<'a>(
    cfg: &'a Config,
    v6: bool,
    pinned: Option<IpAddr>,
    rotate: usize,
) -> impl Iterator<Item = &'a Slice> + 'a {
    let n = cfg.slices.len();
    (0..n)
        .map(move |i| &cfg.slices[(i + rotate) % n])
        .filter(move |s| s.ip.is_ipv6() == v6 && pinned.is_none_or(|p| p == s.ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn cfg(portrange: &str, skip: Option<&str>) -> Config {
        let skip = skip.map(str::to_string);
        parse(|k| match k {
            "PORTRANGE" => Some(portrange.to_string()),
            "PORTRANGE_SKIP" => skip.clone(),
            _ => None,
        })
        .config
        .unwrap()
        .unwrap()
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const UNBOUND4: &str = "0.0.0.0:0";
    const UNBOUND6: &str = "[::]:0";

    #[test]
    fn protocols_in_scope() {
        assert_eq!(proto(libc::IPPROTO_TCP), Some(Proto::Tcp));
        assert_eq!(proto(libc::IPPROTO_UDP), Some(Proto::Udp));
        for p in [
            libc::IPPROTO_SCTP,
            libc::IPPROTO_UDPLITE,
            libc::IPPROTO_MPTCP,
            libc::IPPROTO_ICMP,
            libc::IPPROTO_RAW,
        ] {
            assert_eq!(proto(p), None, "{p}");
        }
    }

    #[test]
    fn unbound_socket_to_remote_is_placed() {
        let c = cfg("198.51.100.10:60000-60009", None);
        let d = decide(&c, a(UNBOUND4), false, a("192.0.2.1:80"), Call::Connect);
        assert_eq!(d, Decision::Place { v6: false, pinned: None });
        // v4-mapped destination on an AF_INET6 socket uses the IPv4 slices.
        let d = decide(&c, a(UNBOUND6), false, a("[::ffff:192.0.2.1]:80"), Call::Connect);
        assert_eq!(d, Decision::Place { v6: false, pinned: None });
        // No IPv6 slice: an IPv6 destination is left alone.
        let d = decide(&c, a(UNBOUND6), false, a("[2001:db8::1]:80"), Call::Connect);
        assert_eq!(d, Decision::Leave(Leave::NoSliceFamily));
    }

    #[test]
    fn skip_list_default_and_explicit() {
        let c = cfg("198.51.100.10:60000-60009", None);
        for dst in ["127.0.0.1:80", "[::ffff:127.0.0.1]:80", "[::1]:80", "169.254.169.254:80"] {
            assert_eq!(
                decide(&c, a(UNBOUND6), false, a(dst), Call::Connect),
                Decision::Leave(Leave::Skipped),
                "{dst}"
            );
        }
        let c = cfg("127.0.0.2:60000-60009", None);
        assert!(matches!(
            decide(&c, a(UNBOUND4), false, a("127.0.0.1:80"), Call::Connect),
            Decision::Place { .. }
        ));
        let c = cfg("127.0.0.2:60000-60009", Some("127.0.0.3/32"));
        assert_eq!(
            decide(&c, a(UNBOUND4), false, a("127.0.0.3:80"), Call::Connect),
            Decision::Leave(Leave::Skipped)
        );
        assert!(matches!(
            decide(&c, a(UNBOUND4), false, a("127.0.0.1:80"), Call::Connect),
            Decision::Place { .. }
        ));
    }

    #[test]
    fn first_send_ignores_skip_but_needs_family() {
        let c = cfg("198.51.100.10:60000-60009", None);
        let d = decide(&c, a(UNBOUND4), false, a("127.0.0.1:53"), Call::FirstSend);
        assert_eq!(d, Decision::Place { v6: false, pinned: None });
        let d = decide(&c, a(UNBOUND6), false, a("[2001:db8::1]:53"), Call::FirstSend);
        assert_eq!(d, Decision::Leave(Leave::NoSliceFamily));
    }

    #[test]
    fn program_bound_sockets() {
        let c = cfg("198.51.100.10:60000-60009,198.51.100.11:60000-60009", None);
        let dst = a("192.0.2.1:80");
        // A specific port, anywhere: left alone.
        assert_eq!(
            decide(&c, a("0.0.0.0:5555"), false, dst, Call::Connect),
            Decision::Leave(Leave::BoundByProgram)
        );
        assert_eq!(
            decide(&c, a("198.51.100.10:60001"), false, dst, Call::Connect),
            Decision::Leave(Leave::BoundByProgram)
        );
        // A specific non-slice IP (curl --interface): left alone.
        assert_eq!(
            decide(&c, a("192.0.2.99:0"), false, dst, Call::Connect),
            Decision::Leave(Leave::BoundByProgram)
        );
        // A slice IP with port 0 (IP_BIND_ADDRESS_NO_PORT): placed on that IP only.
        let pin: IpAddr = "198.51.100.11".parse().unwrap();
        assert_eq!(
            decide(&c, a("198.51.100.11:0"), false, dst, Call::Connect),
            Decision::Place { v6: false, pinned: Some(pin) }
        );
        assert_eq!(
            decide(&c, a("[::ffff:198.51.100.11]:0"), false, dst, Call::Connect),
            Decision::Place { v6: false, pinned: Some(pin) }
        );
        // ... unless the shim bound it itself on an earlier attempt.
        assert_eq!(
            decide(&c, a("198.51.100.11:0"), true, dst, Call::Connect),
            Decision::Place { v6: false, pinned: None }
        );
        // A port the kernel picked for a deferred bind(0.0.0.0, 0) is not the program's choice.
        assert_eq!(
            decide(&c, a("0.0.0.0:45123"), true, dst, Call::Connect),
            Decision::Place { v6: false, pinned: None }
        );
    }

    #[test]
    fn bad_destinations_are_the_kernels_business() {
        let c = cfg("198.51.100.10:60000-60009", Some(""));
        assert_eq!(
            decide(&c, a(UNBOUND4), false, a("192.0.2.1:0"), Call::Connect),
            Decision::Leave(Leave::BadDestination)
        );
        assert_eq!(
            decide(&c, a(UNBOUND4), false, a("0.0.0.0:80"), Call::Connect),
            Decision::Leave(Leave::BadDestination)
        );
    }

    #[test]
    fn candidates_rotate_and_filter() {
        let c = cfg("10.0.0.1:1-2,[2001:db8::1]:1-2,10.0.0.2:1-2,10.0.0.3:1-2", None);
        let ips = |v6, pin, r| candidates(&c, v6, pin, r).map(|s| s.ip.to_string()).collect::<Vec<_>>();
        assert_eq!(ips(false, None, 0), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert_eq!(ips(false, None, 2), ["10.0.0.2", "10.0.0.3", "10.0.0.1"]);
        assert_eq!(ips(false, None, 7), ["10.0.0.3", "10.0.0.1", "10.0.0.2"]);
        assert_eq!(ips(true, None, 1), ["2001:db8::1"]);
        assert_eq!(ips(false, Some("10.0.0.2".parse().unwrap()), 3), ["10.0.0.2"]);
    }
}
