//! UDP connect: an exclusive port first, the cookie check when the slice is crowded. The kernel
//! never detects a duplicate UDP 4-tuple, and the later of two sockets connected to the same peer
//! from the same port silently receives all the replies (kernel-facts). So a 4-tuple is taken
//! only where no other socket can hold it:
//!
//! **Exclusive first** (no look-up). bind(slice_ip, port) with SO_REUSEADDR=0 and SO_REUSEPORT
//! off fails (EADDRINUSE) while any socket holds the port — connected or not, shared or not, on
//! the slice IP or the wildcard, of any process — and once it succeeds no other socket can bind
//! the port: nobody else holds, or can take, this 4-tuple. Connect, then SO_REUSEADDR=1: only
//! from then on may other sockets bind the port, towards other peers, and every placement that
//! does so checks the 4-tuple under the lock below (another exclusive bind cannot succeed at
//! all). Up to [`EXCLUSIVE_TRIES`] random ports (one, right after a connect that had to fall
//! back); without sock_diag every port, as the only way (a slice then serves this process at
//! most its size in concurrent flows).
//!
//! **The cookie check** (every port tried exclusively was held), per candidate port (random
//! order, reserved ports skipped):
//!
//! 1. SO_REUSEADDR=1, bind(slice_ip, port) — shares the port with other connected sockets;
//! 2. read SO_COOKIE, then SO_REUSEADDR=0 — the lock: from now on no other SO_REUSEADDR bind of
//!    this port succeeds, so nothing can slip in between the check and the connect;
//! 3. sock_diag lookup of (local, remote): the socket that would receive the peer's datagrams;
//! 4. connect only if that socket is ours; then SO_REUSEADDR=1 again, so the port keeps serving
//!    other destinations. Otherwise the port is taken for that peer: next port, fresh socket.
//!
//! Either way a 4-tuple a forwarded flow holds in conntrack is skipped (`sys::conntrack`), and
//! the placed socket ends connected with SO_REUSEADDR=1 (a shared port: a later connect to
//! another peer, or after AF_UNSPEC, is placed afresh).

use super::{order::Permutation, Bind, Cursor, Placed, Step, Target};
use crate::config::{Config, Slice};
use crate::stats::{self, C};
use crate::sys::sysctl::Reserved;
use crate::sys::{addr, conntrack, diag};
use libc::c_int;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Exclusive binds tried before the cookie check takes over (on a slice with a fraction `f` of
/// its ports held by anyone, all three fail with probability f³: 0.7 at 90%).
pub const EXCLUSIVE_TRIES: u32 = 3;

/// The last connect of this process had to fall back to the cookie check: the next one tries a
/// single exclusive port first (a crowded slice mostly stays crowded; one failed bind is cheap).
static CROWDED: AtomicBool = AtomicBool::new(false);

/// The interface a socket is bound to (SO_BINDTOIFINDEX; 0 = none): a device-bound conflict is
/// only visible to a lookup with that index.
fn ifindex(fd: c_int) -> u32 {
    addr::get_int(fd, libc::SOL_SOCKET, 62 /* SO_BINDTOIFINDEX */).unwrap_or(0) as u32
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Exclusive binds, with this many more ports to try.
    Exclusive(u32),
    /// Shared binds with the cookie check.
    Checked,
}

/// A UDP connect being placed (plain data; see `strategy`).
#[derive(Clone, Copy)]
pub struct Cookie<'r> {
    pub target: Target,
    /// The slices from the start (the cookie check goes over them again).
    first: Cursor,
    slices: Cursor,
    dst: SocketAddr,
    reserved: &'r Reserved,
    /// The program set SO_REUSEPORT: off while binding, back after the connect.
    reuseport: bool,
    /// The program's own socket is known to have SO_REUSEADDR and SO_REUSEPORT off (born here,
    /// neither the program nor the shim ever set them): no syscall to make sure.
    own_clear: bool,
    /// The current socket is ready for an exclusive bind (SO_REUSEADDR, SO_REUSEPORT off).
    ready: bool,
    phase: Phase,
    /// sock_diag works: the cookie check may follow the exclusive binds.
    checkable: bool,
    /// An exclusive bind found a port held (so the cookie check may still find it shareable).
    held: bool,
    slice: Option<(Slice, Permutation)>,
    local: SocketAddr,
    not_local: Option<IpAddr>,
    /// The conntrack reservation of the attempt in flight.
    ct: conntrack::Reservation,
    /// Look each 4-tuple up before binding the program's own socket (PORTRANGE_PRECHECK).
    precheck: bool,
    /// The interface the program's socket is bound to, once read (a fresh socket gets the same
    /// one: SO_BINDTODEVICE is carried over).
    ifindex: Option<u32>,
}

impl<'r> Cookie<'r> {
    /// Connect the program's UDP socket (`target`) to `dst` from a free 4-tuple of `slices`.
    /// `own_clear`: the program's socket is known to have SO_REUSEADDR and SO_REUSEPORT off.
    pub fn new(
        target: Target,
        slices: Cursor,
        dst: SocketAddr,
        reserved: &'r Reserved,
        precheck: bool,
        own_clear: bool,
    ) -> Cookie<'r> {
        // SO_REUSEPORT would defeat both an exclusive bind and the lock (another SO_REUSEPORT
        // socket of this user could bind the port): off while binding, the program's value back
        // after the connect.
        let reuseport =
            !own_clear && addr::get_int(target.fd, libc::SOL_SOCKET, libc::SO_REUSEPORT) == Some(1);
        let checkable = diag::available();
        let tries = match (checkable, CROWDED.load(Relaxed)) {
            (false, _) => u32::MAX,
            (true, false) => EXCLUSIVE_TRIES,
            (true, true) => 1,
        };
        Cookie {
            target,
            first: slices,
            slices,
            dst,
            reserved,
            reuseport,
            own_clear,
            ready: false,
            phase: Phase::Exclusive(tries),
            checkable,
            held: false,
            slice: None,
            local: SocketAddr::new(dst.ip(), 0),
            not_local: None,
            ct: conntrack::Reservation::NONE,
            precheck,
            ifindex: None,
        }
    }

    /// A fresh socket on the side (the current one is bound, or cannot be bound).
    fn fresh(&mut self) -> Result<(), Placed> {
        self.ready = false;
        self.target.fresh()
    }

    /// The exclusive binds are over (all held, or as many as allowed): the cookie check goes
    /// over the slices again, sharing ports.
    fn go_checked(&mut self) {
        stats::bump(C::udp_checked);
        if !CROWDED.load(Relaxed) {
            CROWDED.store(true, Relaxed);
        }
        self.phase = Phase::Checked;
        self.slices = self.first;
        self.slice = None;
    }

    /// Bind and check candidate ports until one is free for `dst`.
    pub fn prepare(&mut self, cfg: &Config) -> Step {
        loop {
            if self.phase == Phase::Exclusive(0) {
                self.go_checked();
            }
            let (slice, mut perm) = match self.slice {
                Some(s) => s,
                None => match self.slices.next(cfg) {
                    Some(s) => (s, Permutation::new(s.size())),
                    None if self.phase != Phase::Checked && self.checkable && self.held => {
                        self.go_checked();
                        continue;
                    }
                    None => return self.target.done(Placed::none_free(self.not_local)),
                },
            };
            let Some(i) = perm.next() else {
                if self.phase == Phase::Checked || !self.checkable || !self.held {
                    stats::bump(C::exhausted);
                }
                self.slice = None;
                continue;
            };
            self.slice = Some((slice, perm));
            let port = slice.lo + i as u16;
            if self.reserved.contains(port) {
                continue;
            }
            let local = SocketAddr::new(slice.ip, port);
            let bound = match self.phase {
                Phase::Exclusive(left) => self.bind_exclusive(local, left),
                Phase::Checked => self.bind_checked(local),
            };
            match bound {
                Bind::Bound => {}
                Bind::Taken => continue,
                Bind::NotLocal => {
                    self.not_local = Some(slice.ip);
                    self.slice = None;
                    continue;
                }
                Bind::Stop(p) => {
                    if p == Placed::NotFresh && self.reuseport {
                        // Decided again from a look: the program's own value back first.
                        let _ = addr::set_u32(self.target.fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1);
                    }
                    return self.target.done(p);
                }
            }
            // A 4-tuple that a forwarded flow holds in conntrack would be NATed out of the slice.
            match conntrack::reserve(libc::IPPROTO_UDP, local, self.dst) {
                Ok(r) => self.ct = r,
                Err(conntrack::Held) => {
                    if let Err(p) = self.fresh() {
                        return self.target.done(p);
                    }
                    continue;
                }
            }
            if let Err(p) = self.target.install() {
                self.ct.release();
                return self.target.done(p);
            }
            if self.phase != Phase::Checked && CROWDED.load(Relaxed) {
                CROWDED.store(false, Relaxed);
            }
            self.local = local;
            return Step::Attempt;
        }
    }

    /// An exclusive bind of `local` on the current socket (`left` tries, this one included).
    fn bind_exclusive(&mut self, local: SocketAddr, left: u32) -> Bind {
        let t = &mut self.target;
        if !self.ready {
            // A fresh socket has SO_REUSEADDR off (never carried over); the program's own one
            // unless it, or the shim, ever set it.
            if t.is_own() && !self.own_clear {
                if let Err(e) = addr::set_u32(t.cur, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0) {
                    return Bind::Stop(Placed::Setup(e));
                }
            }
            if self.reuseport {
                if let Err(e) = addr::set_u32(t.cur, libc::SOL_SOCKET, libc::SO_REUSEPORT, 0) {
                    return Bind::Stop(Placed::Setup(e));
                }
            }
            self.ready = true;
        }
        stats::bump(C::attempts);
        match t.bind_owned(local) {
            Ok(()) => Bind::Bound,
            Err(libc::EADDRINUSE) => {
                stats::bump(C::conflicts);
                self.held = true;
                self.phase = Phase::Exclusive(left.saturating_sub(1));
                Bind::Taken
            }
            Err(libc::EADDRNOTAVAIL) => Bind::NotLocal,
            // Taken as unbound from its birth, the program's socket was bound behind the hooks'
            // back: the connect is decided again from a look (never swapped out for that).
            Err(e) if t.found_bound(e) => Bind::Stop(Placed::NotFresh),
            // The program's socket holds a port already.
            Err(libc::EINVAL) if t.is_own() => match self.fresh() {
                Ok(()) => Bind::Taken,
                Err(p) => Bind::Stop(p),
            },
            Err(e) => Bind::Stop(Placed::Setup(e)),
        }
    }

    /// A shared bind of `local` on the current socket, locked and checked with sock_diag.
    fn bind_checked(&mut self, local: SocketAddr) -> Bind {
        let dev = *self.ifindex.get_or_insert_with(|| ifindex(self.target.fd));
        let t = &mut self.target;
        if self.reuseport {
            if let Err(e) = addr::set_u32(t.cur, libc::SOL_SOCKET, libc::SO_REUSEPORT, 0) {
                return Bind::Stop(Placed::Setup(e));
            }
        }
        if self.precheck && t.is_own() {
            // As the TCP pre-check: a port some socket already holds for this peer would burn
            // the program's own socket (bound, then refused), and every later attempt would
            // need a fresh one, swapped in. Looked up before anything is bound, it is skipped.
            stats::bump(C::lookups);
            if let Ok(Some(_)) = diag::udp(t.cur, local, self.dst, dev) {
                stats::bump(C::conflicts);
                return Bind::Taken;
            }
        }
        match t.bind_shared(local) {
            Bind::Bound => {}
            other => return other,
        }
        let s = t.cur;
        stats::bump(C::attempts);
        let ours = diag::cookie(s);
        if let Err(e) = addr::set_u32(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0) {
            return Bind::Stop(Placed::Setup(e));
        }
        stats::bump(C::lookups);
        let found = diag::udp(s, local, self.dst, dev);
        let free = match (ours, found) {
            (Some(c), Ok(Some(f))) if f.cookie == c => true,
            // The socket this placement replaces (the program's, still in its fd, e.g. after
            // connect(AF_UNSPEC)) goes away with the swap: it is no other flow's holder.
            (Some(_), Ok(Some(f))) => !t.is_own() && diag::cookie(t.fd) == Some(f.cookie),
            (_, Err(diag::DiagError(e))) => return Bind::Stop(Placed::Setup(e)),
            // Our own bound socket must be found; anything else is not a safe answer.
            _ => false,
        };
        if !free {
            stats::bump(C::conflicts);
            return match self.fresh() {
                Ok(()) => Bind::Taken,
                Err(p) => Bind::Stop(p),
            };
        }
        Bind::Bound
    }

    /// The connect returned `ret`/`errno`: share the port, restore SO_REUSEPORT.
    pub fn after(&mut self, cfg: &Config, ret: isize, errno: c_int) -> Step {
        let Some((slice, _)) = self.slice else { return self.target.done(Placed::Setup(libc::EINVAL)) };
        let fd = self.target.fd;
        if self.ct.settle(fd, ret, errno).is_err() {
            // Conntrack rewrote it: aborted; another port, on a fresh socket.
            if let Err(p) = self.fresh() {
                return self.target.done(p);
            }
            return self.prepare(cfg);
        }
        // Connected (or not): from now on other sockets may bind this port, and each checks
        // the 4-tuple first (module doc).
        let _ = addr::set_u32(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        if self.reuseport {
            let _ = addr::set_u32(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1);
        }
        self.target.conclude(ret, errno, slice, self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdtable;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    fn udp(family: c_int) -> c_int {
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        unsafe { libc::socket(family, libc::SOCK_DGRAM, 0) }
    }

    fn connect_to(dst: SocketAddr, family: c_int) -> impl FnMut(c_int) -> isize {
        move |fd| {
            let raw = addr::to_raw(dst, family);
            // SAFETY: test code: plain calls on sockets and buffers this test owns.
            unsafe { crate::real::connect(fd, raw.ptr(), raw.len) as isize }
        }
    }

    fn place_one(fd: c_int, family: c_int, slice: Slice, dst: SocketAddr) -> Placed {
        let t = Target::new(fd, fdtable::ino(fd).unwrap(), family, true).unwrap();
        let cfg = crate::strategy::test_cfg(&[slice]);
        let none = Reserved::none();
        let c = std::cell::RefCell::new(Cookie::new(t, Cursor::new(false, None, 0), dst, &none, true, false));
        crate::strategy::drive(
            || c.borrow_mut().prepare(&cfg),
            |r, e| c.borrow_mut().after(&cfg, r, e),
            fd,
            connect_to(dst, family),
        )
    }

    // Ports 59950-59969 belong to these unit tests.
    #[test]
    fn shares_ports_across_peers_never_a_4_tuple() {
        let servers: Vec<UdpSocket> = (0..2).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo: 59950, hi: 59952 };
        let mut held = Vec::new();
        for s in &servers {
            let dst = s.local_addr().unwrap();
            let mut ports = Vec::new();
            for _ in 0..3 {
                let fd = udp(libc::AF_INET6); // v4 flows on AF_INET6 sockets: asked as AF_INET
                match place_one(fd, libc::AF_INET6, slice, dst) {
                    Placed::Ok { local, .. } => ports.push(local.port()),
                    other => panic!("{other:?}"),
                }
                // Placed sockets keep SO_REUSEADDR=1, so the port serves other peers.
                assert_eq!(addr::get_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR), Some(1));
                held.push(fd);
            }
            ports.sort();
            assert_eq!(ports, [59950, 59951, 59952]);
            let fd = udp(libc::AF_INET);
            assert_eq!(place_one(fd, libc::AF_INET, slice, dst), Placed::Exhausted);
            held.push(fd);
        }
        for fd in held {
            // SAFETY: test code: plain calls on sockets and buffers this test owns.
            unsafe { libc::close(fd) };
        }
    }

    #[test]
    fn so_reuseport_does_not_defeat_the_check() {
        // An owner with SO_REUSEPORT, and connecting sockets with SO_REUSEPORT: never its port.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dst = server.local_addr().unwrap();
        let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo: 59966, hi: 59966 };
        let owner = udp(libc::AF_INET);
        addr::set_u32(owner, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).unwrap();
        crate::strategy::exclusive::bind_free(owner, libc::AF_INET, [slice].iter(), &Reserved::none())
            .unwrap();
        let c = udp(libc::AF_INET);
        addr::set_u32(c, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).unwrap();
        assert_eq!(place_one(c, libc::AF_INET, slice, dst), Placed::Exhausted);
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        unsafe {
            libc::close(owner);
            libc::close(c);
        }
    }

    #[test]
    fn an_owned_port_is_never_shared() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let owner = UdpSocket::bind("127.0.0.2:59960").unwrap(); // SO_REUSEADDR=0: owns it
        let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo: 59960, hi: 59961 };
        let fd = udp(libc::AF_INET);
        match place_one(fd, libc::AF_INET, slice, server.local_addr().unwrap()) {
            Placed::Ok { local, .. } => assert_eq!(local.port(), 59961),
            other => panic!("{other:?}"),
        }
        let fd2 = udp(libc::AF_INET);
        assert_eq!(place_one(fd2, libc::AF_INET, slice, server.local_addr().unwrap()), Placed::Exhausted);
        drop(owner);
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        unsafe {
            libc::close(fd);
            libc::close(fd2);
        }
        let _ = server.as_raw_fd();
    }
}
