//! Socket options a swap carries over from the program's socket to a fresh one.
//!
//! The setsockopt hook marks which of these the program set (a bit per row, in the fd table);
//! a swap reads each marked option's current value from the old socket and sets it on the new
//! one, before the new one connects (SO_RCVBUF shapes the SYN's window, SO_MARK the route).
//! Options outside this table (BPF filters, multicast memberships, TCP_MD5SIG, ...) cannot be
//! copied this way: a swap of such a socket fails the connect, naming the option.

use crate::real;
use libc::{c_int, socklen_t};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// get → set, same bytes.
    Plain,
    /// SO_RCVBUF/SO_SNDBUF: the kernel doubles what is set and reports the doubled value.
    Halved,
    /// SO_RCVBUFFORCE/SO_SNDBUFFORCE: read through this (non-force) option, halved.
    ForceOf(c_int),
}

const S: c_int = libc::SOL_SOCKET;
const T: c_int = libc::IPPROTO_TCP;
const I: c_int = libc::IPPROTO_IP;
const V6: c_int = libc::IPPROTO_IPV6;

const REPLAY: &[(c_int, c_int, Kind)] = &[
    (S, libc::SO_KEEPALIVE, Kind::Plain),
    (S, libc::SO_RCVBUF, Kind::Halved),
    (S, libc::SO_SNDBUF, Kind::Halved),
    (S, libc::SO_RCVBUFFORCE, Kind::ForceOf(libc::SO_RCVBUF)),
    (S, libc::SO_SNDBUFFORCE, Kind::ForceOf(libc::SO_SNDBUF)),
    (S, libc::SO_LINGER, Kind::Plain),
    (S, libc::SO_MARK, Kind::Plain),
    (S, libc::SO_PRIORITY, Kind::Plain),
    (S, libc::SO_RCVTIMEO, Kind::Plain),
    (S, libc::SO_SNDTIMEO, Kind::Plain),
    (S, libc::SO_BINDTODEVICE, Kind::Plain),
    (S, 62 /* SO_BINDTOIFINDEX */, Kind::Plain),
    (S, libc::SO_OOBINLINE, Kind::Plain),
    (S, libc::SO_BROADCAST, Kind::Plain),
    (S, libc::SO_REUSEPORT, Kind::Plain),
    (S, libc::SO_RCVLOWAT, Kind::Plain),
    (S, libc::SO_TIMESTAMP, Kind::Plain),
    (S, libc::SO_TIMESTAMPNS, Kind::Plain),
    (S, libc::SO_BUSY_POLL, Kind::Plain),
    (S, libc::SO_INCOMING_CPU, Kind::Plain),
    (S, libc::SO_DONTROUTE, Kind::Plain),
    (S, libc::SO_PASSCRED, Kind::Plain),
    (S, libc::SO_MAX_PACING_RATE, Kind::Plain),
    (S, libc::SO_ZEROCOPY, Kind::Plain),
    (T, libc::TCP_NODELAY, Kind::Plain),
    (T, libc::TCP_MAXSEG, Kind::Plain),
    (T, libc::TCP_CORK, Kind::Plain),
    (T, libc::TCP_KEEPIDLE, Kind::Plain),
    (T, libc::TCP_KEEPINTVL, Kind::Plain),
    (T, libc::TCP_KEEPCNT, Kind::Plain),
    (T, libc::TCP_SYNCNT, Kind::Plain),
    (T, libc::TCP_LINGER2, Kind::Plain),
    (T, libc::TCP_DEFER_ACCEPT, Kind::Plain),
    (T, libc::TCP_WINDOW_CLAMP, Kind::Plain),
    (T, libc::TCP_QUICKACK, Kind::Plain),
    (T, libc::TCP_CONGESTION, Kind::Plain),
    (T, libc::TCP_USER_TIMEOUT, Kind::Plain),
    (T, libc::TCP_NOTSENT_LOWAT, Kind::Plain),
    (T, libc::TCP_FASTOPEN_CONNECT, Kind::Plain),
    (T, 34 /* TCP_FASTOPEN_NO_COOKIE */, Kind::Plain),
    (T, libc::TCP_THIN_LINEAR_TIMEOUTS, Kind::Plain),
    (I, libc::IP_TOS, Kind::Plain),
    (I, libc::IP_TTL, Kind::Plain),
    (I, libc::IP_MTU_DISCOVER, Kind::Plain),
    (I, libc::IP_RECVERR, Kind::Plain),
    (I, libc::IP_FREEBIND, Kind::Plain),
    (I, libc::IP_TRANSPARENT, Kind::Plain),
    (I, libc::IP_PKTINFO, Kind::Plain),
    (I, libc::IP_RECVTOS, Kind::Plain),
    (I, libc::IP_RECVTTL, Kind::Plain),
    (I, libc::IP_MULTICAST_TTL, Kind::Plain),
    (I, libc::IP_MULTICAST_LOOP, Kind::Plain),
    (I, libc::IP_MULTICAST_IF, Kind::Plain),
    (V6, libc::IPV6_V6ONLY, Kind::Plain),
    (V6, libc::IPV6_TCLASS, Kind::Plain),
    (V6, libc::IPV6_UNICAST_HOPS, Kind::Plain),
    (V6, libc::IPV6_MULTICAST_HOPS, Kind::Plain),
    (V6, libc::IPV6_MULTICAST_LOOP, Kind::Plain),
    (V6, libc::IPV6_MULTICAST_IF, Kind::Plain),
    (V6, libc::IPV6_RECVERR, Kind::Plain),
    (V6, libc::IPV6_MTU_DISCOVER, Kind::Plain),
    (V6, libc::IPV6_RECVPKTINFO, Kind::Plain),
    (V6, libc::IPV6_DONTFRAG, Kind::Plain),
];

const _: () = assert!(REPLAY.len() <= 64, "one bit per option in a u64");

/// Options the shim manages itself (their program-visible value is kept separately).
pub fn managed(level: c_int, name: c_int) -> bool {
    matches!(
        (level, name),
        (S, libc::SO_REUSEADDR)
            | (I, libc::IP_BIND_ADDRESS_NO_PORT)
            | (I, crate::sys::sysctl::IP_LOCAL_PORT_RANGE)
    )
}

/// The bit of an option in the replay table.
pub fn bit(level: c_int, name: c_int) -> Option<u32> {
    REPLAY.iter().position(|&(l, n, _)| l == level && n == name).map(|i| i as u32)
}

/// A readable name for an option, for log lines.
pub fn describe(level: c_int, name: c_int) -> String {
    let lvl = match level {
        S => "SOL_SOCKET".to_string(),
        T => "IPPROTO_TCP".to_string(),
        I => "IPPROTO_IP".to_string(),
        V6 => "IPPROTO_IPV6".to_string(),
        l => format!("level {l}"),
    };
    format!("{lvl} option {name}")
}

/// Copy every option in `mask` from `old` to `new`. `Err((level, name))`: that one failed.
pub fn replay(old: c_int, new: c_int, mask: u64) -> Result<(), (c_int, c_int)> {
    for (i, &(level, name, kind)) in REPLAY.iter().enumerate() {
        if mask & (1 << i) == 0 {
            continue;
        }
        let mut buf = [0u8; 64];
        let mut len = buf.len() as socklen_t;
        let get_name = match kind {
            Kind::ForceOf(n) => n,
            _ => name,
        };
        // SAFETY: buf is writable for len bytes.
        if unsafe { real::getsockopt(old, level, get_name, buf.as_mut_ptr().cast(), &mut len) } != 0 {
            return Err((level, name));
        }
        if kind != Kind::Plain && len as usize >= 4 {
            let v = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) / 2;
            buf[..4].copy_from_slice(&v.to_ne_bytes());
        }
        // SAFETY: buf holds len bytes read from the kernel.
        if unsafe { real::setsockopt(new, level, name, buf.as_ptr().cast(), len) } != 0 {
            return Err((level, name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::addr::{get_int, set_u32};

    #[test]
    fn replays_values_not_defaults() {
        unsafe {
            let old = libc::socket(libc::AF_INET6, libc::SOCK_STREAM, 0);
            let new = libc::socket(libc::AF_INET6, libc::SOCK_STREAM, 0);
            set_u32(old, T, libc::TCP_NODELAY, 1).unwrap();
            set_u32(old, S, libc::SO_KEEPALIVE, 1).unwrap();
            set_u32(old, S, libc::SO_RCVBUF, 65536).unwrap();
            set_u32(old, V6, libc::IPV6_V6ONLY, 1).unwrap();
            set_u32(old, T, libc::TCP_KEEPIDLE, 77).unwrap();
            let cc = b"reno\0";
            libc::setsockopt(old, T, libc::TCP_CONGESTION, cc.as_ptr().cast(), cc.len() as u32);
            let mut mask = 0;
            for (l, n) in [
                (T, libc::TCP_NODELAY),
                (S, libc::SO_KEEPALIVE),
                (S, libc::SO_RCVBUF),
                (V6, libc::IPV6_V6ONLY),
                (T, libc::TCP_KEEPIDLE),
                (T, libc::TCP_CONGESTION),
            ] {
                mask |= 1 << bit(l, n).unwrap();
            }
            replay(old, new, mask).unwrap();
            for (l, n) in [
                (T, libc::TCP_NODELAY),
                (S, libc::SO_KEEPALIVE),
                (S, libc::SO_RCVBUF),
                (V6, libc::IPV6_V6ONLY),
                (T, libc::TCP_KEEPIDLE),
            ] {
                assert_eq!(get_int(new, l, n), get_int(old, l, n), "{}", describe(l, n));
            }
            let mut name = [0u8; 16];
            let mut len = 16;
            libc::getsockopt(new, T, libc::TCP_CONGESTION, name.as_mut_ptr().cast(), &mut len);
            assert!(name.starts_with(b"reno"));
            libc::close(old);
            libc::close(new);
        }
    }

    #[test]
    fn table_lookups() {
        assert!(bit(S, libc::SO_ATTACH_FILTER).is_none());
        assert!(bit(I, libc::IP_ADD_MEMBERSHIP).is_none());
        assert!(managed(S, libc::SO_REUSEADDR));
        assert!(bit(S, libc::SO_REUSEADDR).is_none());
        assert_eq!(describe(S, 26), "SOL_SOCKET option 26");
    }
}
