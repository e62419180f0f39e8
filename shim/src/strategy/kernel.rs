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
//!
//! A kernel attempt that finds the slice full costs a scan of every port of it in the kernel
//! (measured under client-closed churn, 512-port slice: 58 µs CPU per connect against 36 µs for
//! the retry search alone), and under churn the next attempt would find it full again (young
//! TIME_WAITs; and the ports the fallback bound explicitly are hidden from the kernel's choice
//! until their TIME_WAITs end). So for [`HOLD_MS`] after the kernel reported the slices full for
//! a destination, this process's connects to it go straight to the explicit-bind search.

use super::{started, Cursor, Placed, Step, Target};
use crate::config::{Config, Slice};
use crate::sys::addr;
use crate::sys::sysctl::{range_value, IP_LOCAL_PORT_RANGE};
use libc::c_int;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// How long the kernel's own choice is skipped for a destination after it found it full.
pub const HOLD_MS: u64 = 1000;
const SLOTS: usize = 64;

/// Per destination (a slot by hash: the destination's key, and until when, CLOCK_MONOTONIC ms,
/// the kernel's choice is skipped for it). Two destinations sharing a slot cost at most an extra
/// kernel attempt or an early fallback, both correct.
struct Hold {
    key: AtomicU64,
    until: AtomicU64,
}

static HOLD: [Hold; SLOTS] = [const { Hold { key: AtomicU64::new(0), until: AtomicU64::new(0) } }; SLOTS];

fn held(dst: SocketAddr) -> bool {
    let k = super::refusal::key(dst);
    let h = &HOLD[k as usize % SLOTS];
    h.key.load(Relaxed) == k && super::wait::now_ms() < h.until.load(Relaxed)
}

fn hold(dst: SocketAddr) {
    let k = super::refusal::key(dst);
    let h = &HOLD[k as usize % SLOTS];
    h.until.store(super::wait::now_ms() + HOLD_MS, Relaxed);
    h.key.store(k, Relaxed);
}

/// A kernel-strategy placement in progress (plain data, resumable; see `strategy`).
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub target: Target,
    /// The slices, from the first (for the explicit-bind fallback) and the next to try.
    pub first: Cursor,
    slices: Cursor,
    /// The IP the socket is bound to with port 0 (by the program with IP_BIND_ADDRESS_NO_PORT,
    /// or by an earlier attempt).
    bound: Option<IpAddr>,
    not_local: Option<IpAddr>,
    /// The slice of the attempt in flight.
    slice: Option<Slice>,
    /// The kernel reported a slice full for this destination.
    full: bool,
    /// SO_REUSEADDR is set on the socket.
    reuse: bool,
    dst: SocketAddr,
}

/// How a kernel-strategy step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KStep {
    Step(Step),
    /// The kernel found every slice full: the same socket (a failed NO_PORT connect leaves it
    /// re-bindable) goes to the explicit-bind search, which may still find a tuple.
    Fallback,
}

impl Kernel {
    /// Place the program's socket (`target`) in the first of `slices` that has room; the
    /// program's call (connect, or a TCP Fast Open send) is each attempt.
    pub fn new(target: Target, slices: Cursor, bound: Option<IpAddr>, dst: SocketAddr) -> Kernel {
        let bound = if target.is_own() { bound } else { None };
        Kernel {
            target,
            first: slices,
            slices,
            bound,
            not_local: None,
            slice: None,
            full: false,
            reuse: false,
            dst,
        }
    }

    /// Ready the socket for the next slice.
    pub fn prepare(&mut self, cfg: &Config) -> KStep {
        let t = &mut self.target;
        if self.slice.is_none() && !self.full && held(self.dst) {
            // The kernel found a slice full less than HOLD_MS ago: straight to the fallback.
            return KStep::Fallback;
        }
        // IP_BIND_ADDRESS_NO_PORT before the bind (which then takes no port); the bind before the
        // other options: on a socket taken as unbound from its birth record, its EINVAL is the
        // check that nothing bound it behind the hooks' back, and only NO_PORT is to be undone.
        if self.slice.is_none() {
            if let Err(e) = addr::set_u32(t.cur, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1) {
                return KStep::Step(t.done(Placed::Setup(e)));
            }
        }
        while let Some(slice) = self.slices.next(cfg) {
            if self.bound != Some(slice.ip) {
                match addr::bind(t.cur, SocketAddr::new(slice.ip, 0), t.family) {
                    Ok(()) => {
                        self.bound = Some(slice.ip);
                        t.assumed = false;
                    }
                    Err(libc::EADDRNOTAVAIL) => {
                        self.not_local = Some(slice.ip);
                        continue;
                    }
                    Err(e) if t.found_bound(e) => return KStep::Step(t.done(Placed::NotFresh)),
                    Err(e) => return KStep::Step(t.done(Placed::Setup(e))),
                }
            }
            if !self.reuse {
                if let Err(e) = addr::set_u32(t.cur, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1) {
                    return KStep::Step(t.done(Placed::Setup(e)));
                }
                self.reuse = true;
            }
            let range = range_value(slice.lo, slice.hi);
            if let Err(e) = addr::set_u32(t.cur, libc::IPPROTO_IP, IP_LOCAL_PORT_RANGE, range) {
                return KStep::Step(t.done(Placed::Setup(e)));
            }
            if let Err(p) = t.install() {
                return KStep::Step(t.done(p));
            }
            self.slice = Some(slice);
            crate::stats::bump(crate::stats::C::attempts);
            return KStep::Step(Step::Attempt);
        }
        if self.full {
            hold(self.dst);
            return KStep::Fallback;
        }
        KStep::Step(t.done(Placed::none_free(self.not_local)))
    }

    /// The attempt returned `ret`/`errno`.
    pub fn after(&mut self, cfg: &Config, ret: isize, errno: c_int) -> KStep {
        let Some(slice) = self.slice else {
            return KStep::Step(self.target.done(Placed::Setup(libc::EINVAL)));
        };
        let t = &mut self.target;
        if started(ret, errno) {
            // The kernel chose the port: check it (the sysctl range clamps the slice silently).
            let local = addr::local(t.fd).map(|(_, a)| addr::canonical(a));
            return KStep::Step(match local {
                Some(local) if local.ip() == slice.ip && slice.contains_port(local.port()) => {
                    t.done(Placed::Ok { ret, errno, slice, local })
                }
                other => {
                    abort(t.fd);
                    t.done(Placed::Outside { slice, local: other.unwrap_or(SocketAddr::new(slice.ip, 0)) })
                }
            });
        }
        if errno != libc::EADDRNOTAVAIL {
            return KStep::Step(t.conclude(ret, errno, slice, SocketAddr::new(slice.ip, 0)));
        }
        // The kernel found no port in this slice for this destination.
        self.full = true;
        self.prepare(cfg)
    }
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
    use crate::strategy::retry::Retry;
    use std::os::fd::AsRawFd;

    fn connect(fd: c_int, dst: SocketAddr, family: c_int) -> isize {
        let raw = addr::to_raw(dst, family);
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        unsafe { crate::real::connect(fd, raw.ptr(), raw.len) as isize }
    }

    fn own(fd: c_int, family: c_int) -> Target {
        Target::new(fd, crate::fdtable::ino(fd).unwrap(), family, true).unwrap()
    }

    fn tcp(family: c_int) -> std::os::fd::OwnedFd {
        use std::os::fd::FromRawFd;
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(libc::socket(family, libc::SOCK_STREAM, 0)) }
    }

    /// Place with the kernel strategy (and its explicit-bind fallback), each attempt made by
    /// `attempt`.
    fn place(t: Target, slices: &[Slice], dst: SocketAddr, attempt: impl FnMut(c_int) -> isize) -> Placed {
        enum S {
            K(Kernel),
            R(crate::strategy::retry::Place<'static>),
        }
        static NONE: std::sync::OnceLock<crate::sys::sysctl::Reserved> = std::sync::OnceLock::new();
        let fb = Retry {
            reserved: NONE.get_or_init(crate::sys::sysctl::Reserved::none),
            precheck: true,
            tw_reusable: true,
        };
        let cfg = crate::strategy::test_cfg(slices);
        let v6 = slices[0].ip.is_ipv6();
        let s = std::cell::RefCell::new(S::K(Kernel::new(t, Cursor::new(v6, None, 0), None, dst)));
        let step = |k: KStep, s: &mut S| match k {
            KStep::Step(st) => st,
            KStep::Fallback => {
                let S::K(k) = s else { unreachable!() };
                let mut r = fb.start(k.target, k.first, dst);
                let st = r.prepare(&cfg);
                *s = S::R(r);
                st
            }
        };
        super::super::drive(
            || {
                let mut s = s.borrow_mut();
                let k = match &mut *s {
                    S::K(k) => k.prepare(&cfg),
                    S::R(r) => KStep::Step(r.prepare(&cfg)),
                };
                step(k, &mut s)
            },
            |r, e| {
                let mut s = s.borrow_mut();
                let k = match &mut *s {
                    S::K(k) => k.after(&cfg, r, e),
                    S::R(p) => KStep::Step(p.after(&cfg, r, e)),
                };
                step(k, &mut s)
            },
            t.fd,
            attempt,
        )
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
                match place(own(fd, libc::AF_INET), &[slice], dst, |fd| connect(fd, dst, libc::AF_INET)) {
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
                place(own(fd, libc::AF_INET), &[slice], dst, |fd| connect(fd, dst, libc::AF_INET)),
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
            match place(own(fd, libc::AF_INET6), &[a, b], dst, |fd| connect(fd, dst, libc::AF_INET6)) {
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
            place(own(fd, libc::AF_INET6), &[a, b], dst, |fd| connect(fd, dst, libc::AF_INET6)),
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
        match place(own(fd, libc::AF_INET), &[slice], dst, |fd| connect(fd, dst, libc::AF_INET)) {
            Placed::Outside { local, .. } => assert!(!slice.contains_port(local.port())),
            other => panic!("{other:?}"),
        }
        // The aborted socket is no longer connected.
        let mut b = [0u8; 1];
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        assert_eq!(unsafe { libc::send(fd, b.as_mut_ptr().cast(), 1, libc::MSG_NOSIGNAL) }, -1);
    }

    #[test]
    fn the_hold_is_per_destination() {
        let a: SocketAddr = "192.0.2.10:80".parse().unwrap();
        let b: SocketAddr = "192.0.2.10:81".parse().unwrap();
        assert!(!held(a) && !held(b));
        hold(a);
        assert!(held(a));
        assert!(!held(b), "another destination is not held");
    }

    #[test]
    fn a_slice_ip_that_is_not_local() {
        let s = tcp(libc::AF_INET);
        let fd = s.as_raw_fd();
        let slice = Slice { ip: "192.0.2.77".parse().unwrap(), lo: 59904, hi: 59904 };
        let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let r = place(own(fd, libc::AF_INET), &[slice], dst, |_| panic!("must not connect"));
        assert_eq!(r, Placed::NotLocal(slice.ip));
    }
}
