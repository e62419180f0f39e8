//! The kernel strategy: IP_LOCAL_PORT_RANGE + IP_BIND_ADDRESS_NO_PORT + bind(slice_ip, 0).
//!
//! The kernel picks a free 4-tuple at connect time, sharing the slice's ports across distinct
//! destinations. IP_LOCAL_PORT_RANGE is set at level IPPROTO_IP on AF_INET6 sockets too (at
//! IPPROTO_IPV6 the same number is IPV6_RECVHOPLIMIT). The kernel silently clamps the range to
//! the sysctl range, so the port it chose is checked after every attempt.
//!
//! The kernel's choice is narrower than an explicit bind's: it reuses a TIME_WAIT 4-tuple only
//! once it is a second old (tcp_tw_reuse=1; never with 0 or 2 on real addresses), and skips
//! every port whose bind bucket an explicit bind made (a retry-placed socket, in this process or
//! another). So when the kernel reports the slices full, the same socket (a failed NO_PORT
//! connect leaves it re-bindable) is placed by the retry search: the kernel strategy never fails
//! where an explicit bind would succeed. Its sockets carry SO_REUSEADDR=1, so their TIME_WAITs
//! do not lock a port against later explicit binds for 60 s.

use super::{outcome, retry::Retry, Placed, Target};
use crate::config::Slice;
use crate::sys::addr;
use crate::sys::sysctl::{range_value, IP_LOCAL_PORT_RANGE};
use libc::c_int;
use std::net::{IpAddr, SocketAddr};

/// Place the program's socket (`target`) in the first of the `slices()` that has room, then run
/// `attempt` (connect, or a TCP Fast Open send) on it. `bound`: the IP the socket is already
/// bound to with port 0 (by the program with IP_BIND_ADDRESS_NO_PORT, or by an earlier attempt).
/// `fallback` searches when the kernel finds every slice full for `dst`.
pub fn place<'a, I: Iterator<Item = &'a Slice>>(
    mut target: Target,
    slices: impl Fn() -> I,
    mut bound: Option<IpAddr>,
    fallback: &Retry,
    dst: SocketAddr,
    mut attempt: impl FnMut(c_int) -> isize,
) -> Placed {
    if !target.is_own() {
        bound = None;
    }
    for (opt, level, v) in
        [(libc::IP_BIND_ADDRESS_NO_PORT, libc::IPPROTO_IP, 1), (libc::SO_REUSEADDR, libc::SOL_SOCKET, 1)]
    {
        if let Err(e) = addr::set_u32(target.cur, level, opt, v) {
            return Placed::Setup(e);
        }
    }
    let mut not_local = None;
    let mut full = false;
    for slice in slices() {
        if let Err(e) =
            addr::set_u32(target.cur, libc::IPPROTO_IP, IP_LOCAL_PORT_RANGE, range_value(slice.lo, slice.hi))
        {
            return Placed::Setup(e);
        }
        if bound != Some(slice.ip) {
            match addr::bind(target.cur, SocketAddr::new(slice.ip, 0), target.family) {
                Ok(()) => bound = Some(slice.ip),
                Err(libc::EADDRNOTAVAIL) => {
                    not_local = Some(slice.ip);
                    continue;
                }
                Err(e) => return Placed::Setup(e),
            }
        }
        crate::stats::bump(crate::stats::C::attempts);
        let (ret, errno) = outcome(attempt(target.cur));
        if ret >= 0 || errno == libc::EINPROGRESS {
            let local = addr::local(target.cur).map(|(_, a)| addr::canonical(a));
            return match local {
                Some(local) if local.ip() == slice.ip && slice.contains_port(local.port()) => {
                    match target.commit() {
                        Ok(()) => Placed::Ok { ret, errno, slice: *slice, local },
                        Err(p) => p,
                    }
                }
                other => {
                    abort(target.cur);
                    Placed::Outside { slice: *slice, local: other.unwrap_or(SocketAddr::new(slice.ip, 0)) }
                }
            };
        }
        if errno != libc::EADDRNOTAVAIL {
            return target.conclude(ret, errno, *slice, SocketAddr::new(slice.ip, 0));
        }
        // The kernel found no port in this slice for this destination.
        full = true;
    }
    if !full {
        return Placed::none_free(not_local);
    }
    // An explicit bind may still find one: a young TIME_WAIT, a port an explicit bind holds.
    let r = fallback.place(target, slices, dst, attempt);
    if matches!(r, Placed::Ok { .. }) {
        crate::stats::bump(crate::stats::C::kernel_fallbacks);
    }
    r
}

/// Drop a connection started from the wrong port: connect(AF_UNSPEC) disconnects a TCP socket
/// (RST if a SYN went out) and releases its automatically chosen port.
pub fn abort(fd: c_int) {
    let sa = libc::sockaddr { sa_family: libc::AF_UNSPEC as libc::sa_family_t, sa_data: [0; 14] };
    // SAFETY: a valid AF_UNSPEC sockaddr.
    unsafe {
        crate::real::connect(fd, &sa, std::mem::size_of::<libc::sockaddr>() as libc::socklen_t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn connect(fd: c_int, dst: SocketAddr, family: c_int) -> isize {
        let raw = addr::to_raw(dst, family);
        unsafe { crate::real::connect(fd, raw.ptr(), raw.len) as isize }
    }

    fn fb() -> Retry<'static> {
        static NONE: std::sync::OnceLock<crate::sys::sysctl::Reserved> = std::sync::OnceLock::new();
        Retry {
            reserved: NONE.get_or_init(crate::sys::sysctl::Reserved::none),
            precheck: true,
            tw_reusable: true,
        }
    }

    fn own(fd: c_int, family: c_int) -> Target {
        Target::new(fd, crate::fdtable::ino(fd).unwrap(), family, true).unwrap()
    }

    fn tcp(family: c_int) -> std::os::fd::OwnedFd {
        use std::os::fd::FromRawFd;
        unsafe { std::os::fd::OwnedFd::from_raw_fd(libc::socket(family, libc::SOCK_STREAM, 0)) }
    }

    // Ports 59900-59903 are this unit test's own (cdylib-tests allocate from 33000 upward).
    #[test]
    fn shares_ports_across_destinations_and_exhausts() {
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l3 = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
        let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo: 59900, hi: 59901 };
        let mut keep = Vec::new();
        for dst in [l1.local_addr().unwrap(), l3.local_addr().unwrap()] {
            let mut ports = Vec::new();
            for _ in 0..2 {
                let s = tcp(libc::AF_INET);
                let fd = s.as_raw_fd();
                match place(
                    own(fd, libc::AF_INET),
                    || std::iter::once(&slice),
                    None,
                    &fb(),
                    dst,
                    |fd| connect(fd, dst, libc::AF_INET),
                ) {
                    Placed::Ok { ret: 0, local, .. } => ports.push(local.port()),
                    other => panic!("{other:?}"),
                }
                keep.push(s);
            }
            ports.sort();
            assert_eq!(ports, [59900, 59901]);
            let s = tcp(libc::AF_INET);
            let fd = s.as_raw_fd();
            assert_eq!(
                place(
                    own(fd, libc::AF_INET),
                    || std::iter::once(&slice),
                    None,
                    &fb(),
                    dst,
                    |fd| connect(fd, dst, libc::AF_INET)
                ),
                Placed::Exhausted
            );
        }
    }

    #[test]
    fn falls_over_to_the_next_slice_on_the_same_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = l.local_addr().unwrap();
        let a = Slice { ip: "127.0.0.2".parse().unwrap(), lo: 59902, hi: 59902 };
        let b = Slice { ip: "127.0.0.4".parse().unwrap(), lo: 59903, hi: 59903 };
        let mut got = Vec::new();
        let mut keep = Vec::new();
        for _ in 0..2 {
            // v4 slices on an AF_INET6 socket: bound as ::ffff:a.b.c.d, range set at IPPROTO_IP.
            let s = tcp(libc::AF_INET6);
            let fd = s.as_raw_fd();
            match place(
                own(fd, libc::AF_INET6),
                || [&a, &b].into_iter(),
                None,
                &fb(),
                dst,
                |fd| connect(fd, dst, libc::AF_INET6),
            ) {
                Placed::Ok { local, .. } => got.push(local),
                other => panic!("{other:?}"),
            }
            keep.push(s);
        }
        got.sort();
        assert_eq!(got, ["127.0.0.2:59902".parse().unwrap(), "127.0.0.4:59903".parse().unwrap()]);
        let s = tcp(libc::AF_INET6);
        let fd = s.as_raw_fd();
        assert_eq!(
            place(
                own(fd, libc::AF_INET6),
                || [&a, &b].into_iter(),
                None,
                &fb(),
                dst,
                |fd| connect(fd, dst, libc::AF_INET6)
            ),
            Placed::Exhausted
        );
    }

    #[test]
    fn a_slice_outside_the_sysctl_range_is_caught() {
        let (_, hi) = crate::choice::KernelFacts::read().sysctl_range.unwrap();
        if hi > 65000 {
            return;
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = l.local_addr().unwrap();
        let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo: 65000, hi: 65009 };
        let s = tcp(libc::AF_INET);
        let fd = s.as_raw_fd();
        match place(
            own(fd, libc::AF_INET),
            || std::iter::once(&slice),
            None,
            &fb(),
            dst,
            |fd| connect(fd, dst, libc::AF_INET),
        ) {
            Placed::Outside { local, .. } => assert!(!slice.contains_port(local.port())),
            other => panic!("{other:?}"),
        }
        // The aborted socket is no longer connected.
        let mut b = [0u8; 1];
        assert_eq!(unsafe { libc::send(fd, b.as_mut_ptr().cast(), 1, libc::MSG_NOSIGNAL) }, -1);
    }

    #[test]
    fn a_slice_ip_that_is_not_local() {
        let s = tcp(libc::AF_INET);
        let fd = s.as_raw_fd();
        let slice = Slice { ip: "192.0.2.77".parse().unwrap(), lo: 59904, hi: 59904 };
        let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let r = place(
            own(fd, libc::AF_INET),
            || std::iter::once(&slice),
            None,
            &fb(),
            dst,
            |_| panic!("must not connect"),
        );
        assert_eq!(r, Placed::NotLocal(slice.ip));
    }
}
