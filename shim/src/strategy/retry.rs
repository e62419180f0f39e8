//! The retry strategy: the slice's ports in random order, SO_REUSEADDR, bind(slice_ip, port),
//! connect; EADDRNOTAVAIL (the 4-tuple is taken) → the next port, on a fresh socket (a socket
//! whose connect failed cannot be bound again). Works on any kernel, for slices outside the
//! sysctl range, and over TIME_WAIT 4-tuples (an explicit bind reuses them at once when TCP
//! timestamps are on), where the kernel's own choice waits 1 s (tcp_tw_reuse=1) or 60 s.
//!
//! Every candidate's 4-tuple is looked up with sock_diag first ([`holder`]): a tuple held by
//! an orphaned FIN_WAIT2 is never attempted (an explicit bind would take it over and reset the
//! peer), nor a TIME_WAIT when timestamps are off. With the pre-check on (the default), held
//! and closing tuples are skipped too, so the program's own socket usually wins the first real
//! attempt and a swap (fresh socket into the program's fd) is needed only after a lost race;
//! `PORTRANGE_PRECHECK=off` attempts them (the connect fails, a fresh socket takes the next
//! port) — a tuning and test knob that is safe, not a way to skip the look-up.
//!
//! A blocking connect that found every slice full only because of closing tuples searches
//! again, for a bounded time ([`wait`]); a non-blocking one gets EADDRNOTAVAIL at once.

use super::{order::Permutation, seen::Seen, wait, Bind, Cursor, Placed, Step, Target};
use crate::config::{Config, Slice};
use crate::stats::{self, C};
use crate::sys::conntrack;
use crate::sys::holder::{self, Holder};
use crate::sys::sysctl::Reserved;
use libc::c_int;
use std::net::{IpAddr, SocketAddr};

thread_local! {
    /// How many 4-tuples in closing states the last exhausted search of this thread saw (for
    /// the exhaustion warning). Const-initialised, no destructor.
    pub static LAST_CLOSING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

#[derive(Clone, Copy)]
pub struct Retry<'r> {
    pub reserved: &'r Reserved,
    /// Skip candidates whose 4-tuple is held (the look-up happens either way).
    pub precheck: bool,
    /// TIME_WAIT tuples can be reused by an explicit bind (net.ipv4.tcp_timestamps on).
    pub tw_reusable: bool,
}

/// A retry-strategy placement in progress (plain data, resumable; see `strategy`).
#[derive(Clone, Copy)]
pub struct Place<'r> {
    pub target: Target,
    how: Retry<'r>,
    /// The slices of this pass (a pass is started again after a wait for closing tuples).
    first: Cursor,
    slices: Cursor,
    dst: SocketAddr,
    /// The slice being searched and the order of its ports.
    slice: Option<(Slice, Permutation)>,
    /// The candidate of the attempt in flight.
    local: SocketAddr,
    /// This pass: a slice IP not on this host, held tuples in closing states, full slices.
    not_local: Option<IpAddr>,
    closing: u32,
    full: u64,
    wait: wait::Wait,
    /// The conntrack reservation of the attempt in flight.
    ct: conntrack::Reservation,
    /// With the pre-check: the ports of this slice recently found held (skipped without a
    /// look-up while `remember`); a pass that skipped some (`skipped`) and found nothing free
    /// is done again for real before the search gives up or waits.
    seen: Option<Seen>,
    remember: bool,
    skipped: bool,
}

impl<'r> Retry<'r> {
    /// Place the program's `fd` (`target`) towards `dst` in the first of `slices` with a free
    /// 4-tuple; the program's call (connect, or a TCP Fast Open send) is each attempt. A blocking
    /// socket waits a bounded time for closing tuples before giving up.
    pub fn start(self, target: Target, slices: Cursor, dst: SocketAddr) -> Place<'r> {
        Place {
            target,
            how: self,
            first: slices,
            slices,
            dst,
            slice: None,
            local: SocketAddr::new(dst.ip(), 0),
            not_local: None,
            closing: 0,
            full: 0,
            wait: wait::Wait::on(target.fd),
            ct: conntrack::Reservation::NONE,
            seen: None,
            remember: true,
            skipped: false,
        }
    }
}

impl Place<'_> {
    /// Find the next candidate (slices in turn, each slice's ports in random order), bind it
    /// on the socket to attempt on, and move that socket into the program's fd.
    pub fn prepare(&mut self, cfg: &Config) -> Step {
        loop {
            let (slice, mut perm) = match self.slice {
                Some(s) => s,
                None => match self.slices.next(cfg) {
                    Some(s) => {
                        self.seen = self.how.precheck.then(|| Seen::open(&s, self.dst));
                        if !self.remember {
                            self.seen.inspect(Seen::forget);
                        }
                        (s, Permutation::new(s.size()))
                    }
                    None => {
                        // A pass over every slice found nothing free.
                        if self.skipped {
                            // It skipped ports remembered as held: every port is looked up
                            // for real before the slices are declared full.
                            self.skipped = false;
                            self.remember = false;
                            self.slices = self.first;
                            self.not_local = None;
                            self.closing = 0;
                            self.full = 0;
                            continue;
                        }
                        if self.closing == 0 || !self.wait.again() {
                            let _ = LAST_CLOSING.try_with(|c| c.set(self.closing));
                            stats::add(C::exhausted, self.full);
                            return self.target.done(Placed::none_free(self.not_local));
                        }
                        self.slices = self.first;
                        self.not_local = None;
                        self.closing = 0;
                        self.full = 0;
                        continue;
                    }
                },
            };
            let Some(i) = perm.next() else {
                self.full += 1;
                self.slice = None;
                continue;
            };
            self.slice = Some((slice, perm));
            let port = slice.lo + i as u16;
            if self.how.reserved.contains(port) {
                continue;
            }
            if self.remember && self.seen.is_some_and(|m| m.held(i)) {
                self.skipped = true;
                continue;
            }
            let local = SocketAddr::new(slice.ip, port);
            stats::bump(C::lookups);
            // A failed look-up (no netlink?) leaves the decision to the kernel's connect.
            let looked = holder::tcp_state(self.target.fd, local, self.dst);
            let state = looked.unwrap_or(None);
            let h = holder::classify(state, self.how.tw_reusable);
            // Seen free just now: no socket (or only a TIME_WAIT one this connect takes over).
            let seen_free = looked.is_ok() && h == Holder::Free;
            if h == Holder::Closing {
                self.closing += 1;
            }
            // Without the pre-check, held tuples are attempted (the connect fails safely), except
            // an orphaned FIN_WAIT2 (taken over: the peer is reset) and a TIME_WAIT that cannot
            // be reused.
            let tw_held = h == Holder::Held && state == Some(holder::TCP_TIME_WAIT);
            let attempt_it =
                if self.how.precheck { h == Holder::Free } else { !holder::unsafe_to_try(state) && !tw_held };
            if !attempt_it {
                stats::bump(C::conflicts);
                self.seen.inspect(|m| m.mark(i));
                continue;
            }
            match self.target.bind_shared(local) {
                Bind::Bound => {}
                Bind::Taken => continue,
                Bind::NotLocal => {
                    self.not_local = Some(slice.ip);
                    self.slice = None;
                    continue;
                }
                Bind::Stop(p) => return self.target.done(p),
            }
            // A 4-tuple that a forwarded flow holds in conntrack would be NATed out of the slice.
            let reserve = if seen_free { conntrack::reserve_free } else { conntrack::reserve };
            match reserve(libc::IPPROTO_TCP, local, self.dst) {
                Ok(r) => self.ct = r,
                Err(conntrack::Held) => {
                    self.seen.inspect(|m| m.mark(i));
                    if let Err(p) = self.target.fresh() {
                        return self.target.done(p);
                    }
                    continue;
                }
            }
            if let Err(p) = self.target.install() {
                self.ct.release();
                return self.target.done(p);
            }
            self.local = local;
            stats::bump(C::attempts);
            return Step::Attempt;
        }
    }

    /// The attempt returned `ret`/`errno`.
    pub fn after(&mut self, cfg: &Config, ret: isize, errno: c_int) -> Step {
        let Some((slice, _)) = self.slice else { return self.target.done(Placed::Setup(libc::EINVAL)) };
        if self.ct.settle(self.target.fd, ret, errno).is_err() {
            // Conntrack rewrote it after all: aborted; another port, on a fresh socket.
            if let Err(p) = self.target.fresh() {
                return self.target.done(p);
            }
            return self.prepare(cfg);
        }
        if ret < 0 && errno == libc::EADDRNOTAVAIL {
            // Lost the 4-tuple (a race, a holder the pre-check skipped or did not see, a
            // TIME_WAIT of a peer without timestamps): the socket cannot be bound again.
            stats::bump(C::conflicts);
            if let Err(p) = self.target.fresh() {
                return self.target.done(p);
            }
            return self.prepare(cfg);
        }
        if self.wait.waited {
            stats::bump(C::closing_waits);
        }
        self.target.conclude(ret, errno, slice, self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdtable;
    use crate::sys::addr;
    use std::net::TcpListener;

    fn connect_fn(dst: SocketAddr, family: c_int) -> impl FnMut(c_int) -> isize {
        move |fd| {
            let raw = addr::to_raw(dst, family);
            // SAFETY: test code: plain calls on sockets and buffers this test owns.
            unsafe { crate::real::connect(fd, raw.ptr(), raw.len) as isize }
        }
    }

    fn place(fd: c_int, slice: Slice, dst: SocketAddr, precheck: bool, reserved: &Reserved) -> Placed {
        let ino = fdtable::ino(fd).unwrap();
        let t = Target::new(fd, ino, libc::AF_INET, true).unwrap();
        let cfg = crate::strategy::test_cfg(&[slice]);
        let how = Retry { reserved, precheck, tw_reusable: true };
        let p = std::cell::RefCell::new(how.start(t, Cursor::new(false, None, 0), dst));
        crate::strategy::drive(
            || p.borrow_mut().prepare(&cfg),
            |r, e| p.borrow_mut().after(&cfg, r, e),
            fd,
            connect_fn(dst, libc::AF_INET),
        )
    }

    // Ports 59930-59949 belong to these unit tests.
    #[test]
    fn fills_a_slice_per_destination_with_and_without_precheck() {
        for (precheck, lo) in [(true, 59930), (false, 59935)] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let dst = l.local_addr().unwrap();
            let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo, hi: lo + 3 };
            let reserved = Reserved::parse(&(lo + 2).to_string()).unwrap();
            let mut held = Vec::new();
            let mut ports = Vec::new();
            for _ in 0..3 {
                // SAFETY: test code: plain calls on sockets and buffers this test owns.
                let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                match place(fd, slice, dst, precheck, &reserved) {
                    Placed::Ok { ret: 0, local, .. } => {
                        assert_eq!(addr::local(fd).map(|(_, a)| a), Some(local));
                        ports.push(local.port());
                    }
                    other => panic!("{other:?}"),
                }
                held.push(fd);
            }
            ports.sort();
            assert_eq!(ports, [lo, lo + 1, lo + 3], "reserved port skipped");
            // SAFETY: test code: plain calls on sockets and buffers this test owns.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            assert_eq!(place(fd, slice, dst, precheck, &reserved), Placed::Exhausted);
            held.push(fd);
            for fd in held {
                // SAFETY: test code: plain calls on sockets and buffers this test owns.
                unsafe { libc::close(fd) };
            }
        }
    }

    #[test]
    fn a_lost_race_swaps_a_fresh_socket_in() {
        // Without the pre-check, the program's own socket binds a held port, loses the 4-tuple,
        // and the winner is a fresh socket moved into the same fd number.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = l.local_addr().unwrap();
        let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo: 59940, hi: 59941 };
        let none = Reserved::none();
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        let first = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        let Placed::Ok { local: taken, .. } = place(first, slice, dst, false, &none) else { panic!() };
        let mut swapped = false;
        for _ in 0..20 {
            // SAFETY: test code: plain calls on sockets and buffers this test owns.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let before = fdtable::ino(fd).unwrap();
            let p = place(fd, slice, dst, false, &none);
            let Placed::Ok { local, .. } = p else { panic!("{p:?}") };
            assert_ne!(local, taken);
            swapped |= fdtable::ino(fd).unwrap() != before;
            // Close with RST, so that the port is free again for the next round.
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: test code: plain calls on sockets and buffers this test owns.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    8,
                );
                libc::close(fd);
            }
            if swapped {
                break;
            }
        }
        assert!(swapped, "in 20 tries the random order never tried the held port first");
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        unsafe { libc::close(first) };
    }

    #[test]
    fn ports_remembered_as_held_are_looked_up_again_before_the_slice_is_declared_full() {
        // Ports 59944-59947.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = l.local_addr().unwrap();
        let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo: 59944, hi: 59947 };
        let none = Reserved::none();
        let mut held = Vec::new();
        for _ in 0..4 {
            // SAFETY: a plain socket() call; the test closes it.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let p = place(fd, slice, dst, true, &none);
            assert!(matches!(p, Placed::Ok { ret: 0, .. }), "{p:?}");
            held.push(fd);
        }
        // Full: every port looked up and found held (and remembered so).
        // SAFETY: a plain socket() call; closed right after.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert_eq!(place(fd, slice, dst, true, &none), Placed::Exhausted);
        // SAFETY: the test's own socket.
        unsafe { libc::close(fd) };
        // One is freed (closed with RST): still remembered as held, but free.
        let (_, freed) = addr::local(held[0]).unwrap();
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: the test's own socket; linger is a valid struct of 8 bytes.
        unsafe {
            libc::setsockopt(
                held[0],
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                8,
            );
            libc::close(held[0]);
        }
        // The pass that skipped the remembered ports found nothing, so it looked them up again.
        // SAFETY: a plain socket() call; the test closes it.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        match place(fd, slice, dst, true, &none) {
            Placed::Ok { ret: 0, local, .. } => assert_eq!(local, freed),
            other => panic!("the freed port was not found: {other:?}"),
        }
        held[0] = fd;
        for fd in held {
            // SAFETY: the test's own sockets.
            unsafe { libc::close(fd) };
        }
    }
}
