//! Socket options a swap carries over from the program's socket to a fresh one.
//!
//! No bookkeeping: a swap reads every option of this table back from the old socket (the kernel
//! has them) and sets on the new one those whose value differs from a fresh socket's, before the
//! new one connects (SO_RCVBUF shapes the SYN's window, SO_MARK the route). So the setsockopt
//! hook passes these straight through ([`replayable`]: two bit tests). Options outside this
//! table (BPF filters, multicast memberships, TCP_MD5SIG, ...) cannot be read back: the hook
//! records them, and a swap of such a socket fails the connect, naming the option.

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
const U: c_int = libc::IPPROTO_UDP;

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
    // Beyond the options above, every one the kernel reads back as the bytes setsockopt takes
    // (what QUIC stacks and busy-polling servers set), so that a swap carries them without
    // bookkeeping and the setsockopt hook passes them straight through.
    (S, libc::SO_RXQ_OVFL, Kind::Plain),
    (S, libc::SO_PEEK_OFF, Kind::Plain),
    (S, libc::SO_WIFI_STATUS, Kind::Plain),
    (S, libc::SO_SELECT_ERR_QUEUE, Kind::Plain),
    (S, 69 /* SO_PREFER_BUSY_POLL */, Kind::Plain),
    (S, 70 /* SO_BUSY_POLL_BUDGET */, Kind::Plain),
    (S, 74 /* SO_TXREHASH */, Kind::Plain),
    (S, 75 /* SO_RCVMARK */, Kind::Plain),
    (T, libc::TCP_THIN_DUPACK, Kind::Plain),
    (T, libc::TCP_SAVE_SYN, Kind::Plain),
    (T, 36 /* TCP_INQ */, Kind::Plain),
    (T, 37 /* TCP_TX_DELAY */, Kind::Plain),
    (I, libc::IP_RECVOPTS, Kind::Plain),
    (I, libc::IP_RETOPTS, Kind::Plain),
    (I, libc::IP_PASSSEC, Kind::Plain),
    (I, libc::IP_RECVORIGDSTADDR, Kind::Plain),
    (I, 21 /* IP_MINTTL */, Kind::Plain),
    (I, 22 /* IP_NODEFRAG */, Kind::Plain),
    (I, 23 /* IP_CHECKSUM */, Kind::Plain),
    (I, 25 /* IP_RECVFRAGSIZE */, Kind::Plain),
    (I, 26 /* IP_RECVERR_RFC4884 */, Kind::Plain),
    (I, 49 /* IP_MULTICAST_ALL */, Kind::Plain),
    (V6, libc::IPV6_RECVHOPLIMIT, Kind::Plain),
    (V6, libc::IPV6_RECVTCLASS, Kind::Plain),
    (V6, 29 /* IPV6_MULTICAST_ALL */, Kind::Plain),
    (V6, 31 /* IPV6_RECVERR_RFC4884 */, Kind::Plain),
    (V6, 70 /* IPV6_AUTOFLOWLABEL */, Kind::Plain),
    (V6, 73 /* IPV6_MINHOPCOUNT */, Kind::Plain),
    (V6, 74 /* IPV6_RECVORIGDSTADDR */, Kind::Plain),
    (V6, 75 /* IPV6_TRANSPARENT */, Kind::Plain),
    (V6, 78 /* IPV6_FREEBIND */, Kind::Plain),
    (U, 1 /* UDP_CORK */, Kind::Plain),
    (U, 101 /* UDP_NO_CHECK6_TX */, Kind::Plain),
    (U, 102 /* UDP_NO_CHECK6_RX */, Kind::Plain),
    (U, 103 /* UDP_SEGMENT */, Kind::Plain),
    (U, 104 /* UDP_GRO */, Kind::Plain),
];

/// The replayable option names of `level`, as bits of a u128 (every name in the table is < 128).
const fn mask(level: c_int) -> u128 {
    let mut m = 0u128;
    let mut i = 0;
    while i < REPLAY.len() {
        if REPLAY[i].0 == level {
            assert!(REPLAY[i].1 >= 0 && REPLAY[i].1 < 128);
            m |= 1 << REPLAY[i].1;
        }
        i += 1;
    }
    m
}
const MASK_S: u128 = mask(S);
const MASK_T: u128 = mask(T);
const MASK_I: u128 = mask(I);
const MASK_V6: u128 = mask(V6);
const MASK_U: u128 = mask(U);

/// Whether a swap carries this option over by reading it back (no bookkeeping needed).
#[inline(always)]
pub fn replayable(level: c_int, name: c_int) -> bool {
    let m = match level {
        S => MASK_S,
        T => MASK_T,
        I => MASK_I,
        V6 => MASK_V6,
        U => MASK_U,
        _ => return false,
    };
    (0..128).contains(&name) && m & (1u128 << name) != 0
}

/// Options the shim manages itself (their program-visible value is kept separately).
pub fn managed(level: c_int, name: c_int) -> bool {
    matches!(
        (level, name),
        (S, libc::SO_REUSEADDR)
            | (I, libc::IP_BIND_ADDRESS_NO_PORT)
            | (I, crate::sys::sysctl::IP_LOCAL_PORT_RANGE)
    )
}

/// Options outside the table whose value, read back with getsockopt, cannot be handed to
/// setsockopt (filters and programs, memberships, keys, repair state, upper-layer protocols).
const NOT_BYTES: &[(c_int, c_int)] = &[
    (S, libc::SO_ATTACH_FILTER),
    (S, libc::SO_DETACH_FILTER),
    (S, libc::SO_ATTACH_BPF),
    (S, libc::SO_ATTACH_REUSEPORT_CBPF),
    (S, libc::SO_ATTACH_REUSEPORT_EBPF),
    (S, 68 /* SO_DETACH_REUSEPORT_BPF */),
    (S, libc::SO_LOCK_FILTER),
    (I, libc::IP_ADD_MEMBERSHIP),
    (I, libc::IP_DROP_MEMBERSHIP),
    (I, libc::IP_ADD_SOURCE_MEMBERSHIP),
    (I, libc::IP_DROP_SOURCE_MEMBERSHIP),
    (I, libc::IP_BLOCK_SOURCE),
    (I, libc::IP_UNBLOCK_SOURCE),
    (I, libc::IP_MSFILTER),
    (I, libc::IP_IPSEC_POLICY),
    (I, libc::IP_XFRM_POLICY),
    (V6, libc::IPV6_ADD_MEMBERSHIP),
    (V6, libc::IPV6_DROP_MEMBERSHIP),
    (V6, libc::IPV6_IPSEC_POLICY),
    (V6, libc::IPV6_XFRM_POLICY),
    (T, libc::TCP_MD5SIG),
    (T, libc::TCP_MD5SIG_EXT),
    (T, libc::TCP_ULP),
    (T, libc::TCP_REPAIR),
    (T, libc::TCP_REPAIR_QUEUE),
    (T, libc::TCP_QUEUE_SEQ),
    (T, libc::TCP_REPAIR_OPTIONS),
    (T, libc::TCP_REPAIR_WINDOW),
    (T, 35 /* TCP_ZEROCOPY_RECEIVE */),
];

/// Can an option outside the table be carried over by copying the bytes getsockopt reads back
/// (UDP_GRO, SO_RXQ_OVFL, UDP_SEGMENT, IP_RECVORIGDSTADDR...)? The swap then tries, and fails
/// the connect naming the option if the kernel refuses either half.
pub fn copyable(level: c_int, name: c_int) -> bool {
    // MCAST_JOIN_GROUP .. MCAST_MSFILTER (42-48) at the IP and IPv6 levels: memberships.
    let mcast = (level == I || level == V6) && (42..=48).contains(&name);
    (level == S || level == I || level == V6 || level == T || level == libc::IPPROTO_UDP)
        && !mcast
        && !NOT_BYTES.contains(&(level, name))
}

/// Copy the options outside the table (see [`copyable`]) from `old` to `new`, as bytes.
pub fn replay_bytes(old: c_int, new: c_int, which: &[Option<(c_int, c_int)>]) -> Result<(), (c_int, c_int)> {
    for &(level, name) in which.iter().flatten() {
        let mut buf = [0u8; 256];
        let mut len = buf.len() as socklen_t;
        // SAFETY: buf is writable for len bytes; then it holds len bytes read from the kernel.
        let ok = unsafe {
            real::getsockopt(old, level, name, buf.as_mut_ptr().cast(), &mut len) == 0
                && real::setsockopt(new, level, name, buf.as_ptr().cast(), len) == 0
        };
        if !ok {
            return Err((level, name));
        }
    }
    Ok(())
}

/// The bit of an option in the replay table.
/// (Only the first 64 have one: the others pass the setsockopt hook straight through, as every
/// replayable option does, and are never recorded.)
pub fn bit(level: c_int, name: c_int) -> Option<u32> {
    REPLAY.iter().position(|&(l, n, _)| l == level && n == name).filter(|&i| i < 64).map(|i| i as u32)
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

/// Read an option into `buf`; its length, or `None` if the socket has no such option.
fn get(fd: c_int, level: c_int, name: c_int, buf: &mut [u8; 64]) -> Option<socklen_t> {
    let mut len = buf.len() as socklen_t;
    // SAFETY: buf is writable for len bytes.
    let r = unsafe { real::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut len) };
    (r == 0).then_some(len)
}

fn set(fd: c_int, level: c_int, name: c_int, buf: &[u8], len: socklen_t) -> bool {
    // SAFETY: buf holds len bytes.
    unsafe { real::setsockopt(fd, level, name, buf.as_ptr().cast(), len) == 0 }
}

/// Copy to `new` every option of the table whose value on `old` differs from `new`'s (a fresh
/// socket's). `Err((level, name))`: that one could not be set. (`_recorded`: unused, options are
/// read back.)
pub fn replay(old: c_int, new: c_int, _recorded: u64) -> Result<(), (c_int, c_int)> {
    for &(level, name, kind) in REPLAY {
        if matches!(kind, Kind::ForceOf(_)) {
            continue; // read back through the plain option (below)
        }
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        let Some(la) = get(old, level, name, &mut a) else { continue };
        let Some(lb) = get(new, level, name, &mut b) else { continue };
        if la == lb && a[..la as usize] == b[..lb as usize] {
            continue;
        }
        if kind == Kind::Halved && la >= 4 {
            // The kernel doubles what is set and reports the doubled value; above the sysctl
            // maximum only the FORCE variant (CAP_NET_ADMIN) sets it.
            let v = i32::from_ne_bytes([a[0], a[1], a[2], a[3]]) / 2;
            let bytes = v.to_ne_bytes();
            let force = if name == libc::SO_RCVBUF { libc::SO_RCVBUFFORCE } else { libc::SO_SNDBUFFORCE };
            let mut c = [0u8; 64];
            let ok = set(new, level, name, &bytes, 4)
                && (get(new, level, name, &mut c) == Some(la) && c[..4] == a[..4]
                    || set(new, level, force, &bytes, 4));
            if !ok {
                return Err((level, name));
            }
            continue;
        }
        if !set(new, level, name, &a, la) {
            return Err((level, name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::addr::{get_int, set_u32};

    /// What QUIC stacks and busy-polling servers set, read back and carried over by a swap
    /// (more than the four a socket could carry as recorded bytes before).
    #[test]
    fn replays_udp_and_receive_options() {
        // SAFETY: sockets created and closed by this test; options set with valid ints.
        unsafe {
            let old = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            let new = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            let set = [
                (U, 104, 1),    // UDP_GRO
                (U, 103, 1200), // UDP_SEGMENT
                (S, libc::SO_RXQ_OVFL, 1),
                (I, libc::IP_RECVORIGDSTADDR, 1),
                (I, 25, 1), // IP_RECVFRAGSIZE
                (I, 49, 0), // IP_MULTICAST_ALL (default 1)
                (S, 69, 1), // SO_PREFER_BUSY_POLL
            ];
            for (l, n, v) in set {
                set_u32(old, l, n, v).unwrap();
                assert!(replayable(l, n), "({l}, {n}) passes the hook straight through");
            }
            replay(old, new, 0).unwrap();
            for (l, n, v) in set {
                assert_eq!(get_int(new, l, n), Some(v as i32), "({l}, {n}) carried over");
            }
            libc::close(old);
            libc::close(new);
        }
    }

    #[test]
    fn replays_values_not_defaults() {
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
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
            for (l, n) in [
                (T, libc::TCP_NODELAY),
                (S, libc::SO_KEEPALIVE),
                (S, libc::SO_RCVBUF),
                (V6, libc::IPV6_V6ONLY),
                (T, libc::TCP_KEEPIDLE),
                (T, libc::TCP_CONGESTION),
            ] {
                assert!(bit(l, n).is_some() && replayable(l, n));
            }
            // Read back: the recorded mask is not needed.
            replay(old, new, 0).unwrap();
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
    fn options_outside_the_table_copied_as_bytes() {
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        unsafe {
            let old = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            let new = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            const UDP_GRO: c_int = 104;
            set_u32(old, libc::IPPROTO_UDP, UDP_GRO, 1).unwrap();
            set_u32(old, S, libc::SO_RXQ_OVFL, 1).unwrap();
            assert!(copyable(libc::IPPROTO_UDP, UDP_GRO) && copyable(S, libc::SO_RXQ_OVFL));
            assert!(!copyable(S, libc::SO_ATTACH_FILTER) && !copyable(I, libc::IP_ADD_MEMBERSHIP));
            assert!(!copyable(V6, 42) && !copyable(libc::SOL_PACKET, 1));
            replay_bytes(old, new, &[Some((libc::IPPROTO_UDP, UDP_GRO)), None, Some((S, libc::SO_RXQ_OVFL))])
                .unwrap();
            assert_eq!(get_int(new, libc::IPPROTO_UDP, UDP_GRO), Some(1));
            assert_eq!(get_int(new, S, libc::SO_RXQ_OVFL), Some(1));
            // An option the kernel does not read back fails, naming it.
            assert_eq!(
                replay_bytes(old, new, &[Some((I, libc::IP_ADD_MEMBERSHIP))]),
                Err((I, libc::IP_ADD_MEMBERSHIP))
            );
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
        assert!(!replayable(S, libc::SO_REUSEADDR) && !replayable(S, libc::SO_ATTACH_FILTER));
        assert!(replayable(V6, libc::IPV6_TCLASS) && replayable(T, libc::TCP_NODELAY));
        assert!(!replayable(S, -1) && !replayable(S, 500) && !replayable(99, 1));
        assert_eq!(describe(S, 26), "SOL_SOCKET option 26");
    }
}
