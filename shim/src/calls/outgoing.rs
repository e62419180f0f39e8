//! Outgoing flows: connect(), and the sends that start a flow (TCP Fast Open; the first send of
//! an unconnected UDP socket). One look at the socket, `scope::decide`, then a strategy.
//!
//! Nothing here makes the program's own call: [`connect`] and [`send`] answer a [`Next`] and the
//! hook makes the call from its own frame (a cancellation point: no destructor or `catch_unwind`
//! may be alive across it), then hands the outcome to [`after`].

use super::bind::materialize;
use super::Sock;
use crate::fdtable;
use crate::scope::{self, Call, Decision, Leave, Proto};
use crate::socket::{self, fact, Port, State};
use crate::stats::{self, C};
use crate::strategy::kernel::{KStep, Kernel};
use crate::strategy::{cookie::Cookie, exclusive, retry, Cursor, Placed, Step, Target};
use crate::sys::addr;
use crate::{mode, Active, Mode, Tcp};
use libc::{c_int, sockaddr, socklen_t};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// What the hook does next. Plain data on the hook's stack (a `Box` would allocate and have a
/// destructor alive across the program's call), hence the large variant.
#[derive(Clone, Copy)]
#[allow(clippy::large_enum_variant)]
pub enum Next {
    /// Make the program's call untouched (errno as at entry).
    Pass,
    /// Return `ret`; errno `errno`, or as at entry when `ret >= 0` or `errno == 0`.
    Return { ret: isize, errno: c_int },
    /// Make the program's call, then hand its outcome to [`after`].
    Call(Plan),
}

/// A placement waiting for the outcome of the program's call (plain data).
#[derive(Clone, Copy)]
pub struct Plan {
    fd: c_int,
    dst: SocketAddr,
    how: Strat,
}

#[derive(Clone, Copy)]
enum Strat {
    Kernel(Kernel),
    /// `fallback`: the kernel strategy found every slice full; the explicit-bind search goes on
    /// with the same socket.
    Retry {
        p: retry::Place<'static>,
        fallback: bool,
    },
    Cookie(Cookie<'static>),
    /// The first send of an unconnected UDP socket, on a port it owns: the send's own outcome
    /// (EMSGSIZE...) is the program's business and does not undo the placement.
    Owned {
        slice: crate::config::Slice,
        local: SocketAddr,
    },
    /// connect(AF_UNSPEC) on a socket the shim knows.
    Disconnect,
}

fn warn_once(flag: &AtomicBool, msg: impl FnOnce() -> String) {
    if !flag.swap(true, Relaxed) {
        log::warn!("{}", msg());
    }
}

fn fail(e: c_int) -> Next {
    Next::Return { ret: -1, errno: e }
}

/// connect(): placed when in scope. `nested`: this thread was already inside the shim (a signal
/// handler interrupted it): a flow that needs placing is refused rather than left unplaced.
///
/// # Safety
/// `sa` is null or points to `len` readable bytes.
pub unsafe fn connect(fd: c_int, sa: *const sockaddr, len: socklen_t, nested: bool) -> Next {
    // SAFETY: the program's own sockaddr and length, valid as connect() requires.
    match unsafe { addr::parse(sa, len) } {
        Some(dst) => outgoing(fd, dst, Call::Connect, nested),
        None if !nested
            // SAFETY: the program's own sockaddr and length, valid as connect() requires.
            && unsafe { addr::family_of(sa, len) } == Some(libc::AF_UNSPEC)
            && matches!(mode(), Some(Mode::Active(_)))
            && fdtable::occupied(fd) =>
        {
            Next::Call(Plan { fd, dst: SocketAddr::new(IpAddr::from([0u8; 4]), 0), how: Strat::Disconnect })
        }
        None => Next::Pass,
    }
}

/// A send (sendto/sendmsg/sendmmsg) that names a destination (`named`: a non-null address) or
/// not: with MSG_FASTOPEN a TCP send is a connect; the first unconnected send of a UDP socket
/// places it. `dst` reads the address (with the kernel's checks, see `addr::parse`) only when it
/// matters: not for the sends of a socket already settled.
pub fn send(fd: c_int, dst: impl FnOnce() -> Dest, fastopen: bool, nested: bool) -> Next {
    let active = match mode() {
        Some(Mode::Active(_)) => true,
        Some(Mode::Deny) => false,
        _ => return Next::Pass,
    };
    if !fastopen {
        // Before the destination is read at all: a settled socket's sends pay nothing more (a
        // settled socket has no deferred bind either).
        let settled =
            fdtable::occupied(fd) && fdtable::ino(fd).is_some_and(|ino| socket::of(fd, ino).sends_settled());
        if settled {
            return Next::Pass;
        }
    }
    match dst() {
        // The kernel answers EFAULT; nothing to place or bind for a call that fails.
        Dest::Unreadable => return Next::Pass,
        Dest::Named(Some(dst)) => {
            let call = if fastopen { Call::Connect } else { Call::FirstSend };
            return outgoing(fd, dst, call, nested);
        }
        Dest::Named(None) | Dest::Unnamed => {}
    }
    if active && !nested {
        let _ = super::bind::materialize_if_deferred(fd);
    }
    Next::Pass
}

/// The destination a send names, as far as the shim could read it.
pub enum Dest {
    /// No address (`msg_name` NULL): the socket's peer, if any.
    Unnamed,
    /// The `msghdr` itself is unreadable (the kernel answers EFAULT).
    Unreadable,
    /// An address; `None` when it is not an Internet address the kernel would take.
    Named(Option<SocketAddr>),
}

/// A placement would start while the thread is already inside the shim (a signal handler):
/// refused, never left unplaced.
fn refuse_nested(exhausted: c_int) -> Next {
    stats::bump(C::reentered_refused);
    fail(exhausted)
}

fn outgoing(fd: c_int, dst: SocketAddr, call: Call, nested: bool) -> Next {
    let active = match mode() {
        Some(Mode::Active(a)) => a,
        Some(Mode::Deny) => {
            return match Sock::of(fd) {
                Some(s) if call == Call::Connect || s.local.port() == 0 => {
                    stats::bump(C::denied);
                    fail(libc::EPERM)
                }
                _ => Next::Pass,
            }
        }
        _ => return Next::Pass,
    };
    // One look at the socket: its identity and recorded state first (a socket born here needs
    // no protocol look-up; one untouched since no getsockname), then its address.
    let ino = fdtable::ino(fd);
    let mut state = ino.map_or_else(State::default, |ino| socket::of(fd, ino));
    if call == Call::FirstSend {
        // A first send's placement (an owned port, bound before the send) cannot be decided
        // again if the socket turns out bound: it is looked at.
        state = state.touched();
    }
    let assumed = state.untouched_tcp().is_some() || state.untouched_udp().is_some();
    let (Some(ino), Some(sock)) = (ino, ino.and_then(|_| Sock::known(fd, state))) else {
        stats::bump(C::passed_through);
        if call == Call::FirstSend {
            // Not ours (raw, ICMP, SCTP...): later sends need not ask again.
            if let Some(ino) = ino {
                socket::go(fd, ino, State::settle);
            }
        }
        return Next::Pass;
    };
    if addr::kernel_refuses(sock.family, sock.proto == Proto::Udp, dst, || addr::v6only(fd)) {
        // The kernel answers with its own errno (EAFNOSUPPORT, EINVAL, ENETUNREACH).
        return Next::Pass;
    }
    let exhausted = if sock.proto == Proto::Udp { libc::EAGAIN } else { libc::EADDRNOTAVAIL };
    let flow = |v6, pinned| Flow {
        active,
        fd,
        ino,
        family: sock.family,
        local: sock.local,
        v6,
        pinned,
        dst,
        assumed,
    };
    // A connect the shim leaves alone gives the socket an address: no longer known unbound.
    let left = || {
        if assumed {
            socket::go(fd, ino, State::touched);
        }
    };
    if state.placed() {
        // A UDP socket may connect again, to another peer, without disconnecting first. On a
        // shared port that new 4-tuple was never checked: it is placed afresh, on a fresh socket.
        // (An owned port is nobody else's; a TCP socket connects once.)
        if call == Call::Connect && sock.proto == Proto::Tcp && !state.has(fact::SHIM_REUSEADDR) {
            crate::strategy::exclusive::share_on_connect(fd, ino);
        }
        // After a disconnect (connect AF_UNSPEC), the next connect or send is placed afresh.
        let recheck = state.disconnected()
            || (call == Call::Connect
                && sock.proto == Proto::Udp
                && state.shared_port()
                && addr::peer(fd).is_none_or(|p| addr::canonical(p) != addr::canonical(dst)));
        if !recheck {
            return Next::Pass;
        }
        if nested {
            return refuse_nested(exhausted);
        }
        let v6 = crate::config::canonical(dst.ip()).is_ipv6();
        return place_udp(flow(v6, None), call);
    }
    if call == Call::FirstSend && sock.proto == Proto::Tcp {
        // sendto() with an address on a TCP socket: the address is ignored (no Fast Open flag).
        socket::go(fd, ino, State::settle);
        return Next::Pass;
    }
    if sock.proto == Proto::Tcp
        && sock.local.port() != 0
        && addr::get_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1)
    {
        // connect() on a listener: the kernel says EISCONN and the listener keeps working.
        return Next::Pass;
    }
    // A UDP socket created here and never bound by the program, yet holding a port on the
    // wildcard address: the kernel took it for a call that failed (send() or write() without an
    // address, a connect with a bad length). Not the program's choice: the flow is placed.
    // Likewise one holding a port of a slice: the shim of another process sharing the socket (a
    // fork child) placed it there, and this process's records cannot tell for which peer — left
    // on its shared port, a connect elsewhere would take that 4-tuple unchecked.
    let kernel_port = state.never_bound_by_program()
        && sock.proto == Proto::Udp
        && sock.local.port() != 0
        && (sock.local.ip().is_unspecified() || {
            let at = addr::canonical(sock.local);
            active.cfg.slices.iter().any(|s| s.ip == at.ip() && s.contains_port(at.port()))
        });
    let not_programs = state.has(fact::NOT_PROGRAMS) || kernel_port;
    let deferred = state.deferred();
    match scope::decide(&active.cfg, sock.local, not_programs, dst, call) {
        // A TCP connect to port 0 of a real address still sends a SYN (answered by a reset): the
        // flow is placed like any other. (`decide` calls port 0 unusable; asked again with a
        // stand-in port, for the scope and family checks.)
        Decision::Leave(Leave::BadDestination) if sock.proto == Proto::Tcp && !dst.ip().is_unspecified() => {
            match scope::decide(&active.cfg, sock.local, not_programs, SocketAddr::new(dst.ip(), 1), call) {
                Decision::Place { .. } if nested => refuse_nested(exhausted),
                Decision::Place { v6, pinned } => place_tcp(flow(v6, pinned)),
                Decision::Leave(why) => {
                    leave(why, active, sock.local, dst, nested);
                    left();
                    if deferred {
                        let _ = materialize(fd, ino, sock.family);
                    }
                    Next::Pass
                }
            }
        }
        // A UDP connect to port 0 or to 0.0.0.0 would bind the socket outside the slice (its later
        // sends would leave from there): it gets a port of its own first, as a first send would.
        Decision::Leave(Leave::BadDestination) if sock.proto == Proto::Udp && sock.local.port() == 0 => {
            match scope::decide(&active.cfg, sock.local, not_programs, dst, Call::FirstSend) {
                Decision::Place { .. } if nested => refuse_nested(exhausted),
                Decision::Place { v6, pinned } => place_udp(flow(v6, pinned), Call::FirstSend),
                Decision::Leave(why) => {
                    leave(why, active, sock.local, dst, nested);
                    if deferred {
                        let _ = materialize(fd, ino, sock.family);
                    }
                    Next::Pass
                }
            }
        }
        Decision::Leave(why) => {
            leave(why, active, sock.local, dst, nested);
            left();
            if deferred {
                let _ = materialize(fd, ino, sock.family);
            }
            if call == Call::FirstSend {
                // After the deferred bind is carried out: a socket placed by it stays placed.
                socket::go(fd, ino, State::settle);
            }
            Next::Pass
        }
        Decision::Place { .. } if nested => refuse_nested(exhausted),
        Decision::Place { v6, pinned } => match sock.proto {
            Proto::Tcp => place_tcp(flow(v6, pinned)),
            Proto::Udp => place_udp(flow(v6, pinned), call),
        },
    }
}

fn leave(why: Leave, active: &Active, local: SocketAddr, dst: SocketAddr, nested: bool) {
    match why {
        Leave::Skipped => stats::bump(C::skipped_dest),
        Leave::BadDestination => stats::bump(C::passed_through),
        Leave::NoSliceFamily => {
            stats::bump(C::no_slice_family);
            if !nested {
                log::info!("no slice of the family of {dst}: flow left alone");
            }
        }
        Leave::BoundByProgram => {
            stats::bump(C::bound_by_program);
            static ONCE: AtomicBool = AtomicBool::new(false);
            // A port of a slice (the program's bind(SLICE_IP, port), or a socket bound before an
            // exec by the shim of the program that started this one): in the slice, nothing to say.
            let ip = crate::config::canonical(local.ip());
            let in_slice = active.cfg.slices.iter().any(|s| s.ip == ip && s.contains_port(local.port()));
            if !nested && !in_slice {
                warn_once(&ONCE, || {
                    format!(
                        "the program bound a socket to {local} itself; its flows (to {dst} and others) \
                         are left alone (warned once per process)"
                    )
                });
            }
        }
    }
}

/// One flow to place: the program's socket, where it goes, and where it may leave from.
#[derive(Clone, Copy)]
struct Flow {
    active: &'static Active,
    fd: c_int,
    ino: u64,
    family: c_int,
    local: SocketAddr,
    /// The destination's family (v4-mapped counts as IPv4): which slices apply.
    v6: bool,
    /// The slice IP the program bound the socket to, if any.
    pinned: Option<IpAddr>,
    dst: SocketAddr,
    /// `local` comes from the socket's birth record, not a look (see `Target::assumed`).
    assumed: bool,
}

impl Flow {
    fn cursor(&self) -> Cursor {
        Cursor::new(self.v6, self.pinned, self.active.rotate.fetch_add(1, Relaxed))
    }
}

fn retry(active: &'static Active) -> retry::Retry<'static> {
    retry::Retry { reserved: &active.reserved, precheck: active.precheck, tw_reusable: active.tw_reusable }
}

fn place_tcp(f: Flow) -> Next {
    // The program's own socket can take the placement unless it already holds a port (a
    // deferred wildcard bind carried out for getsockname, or an earlier attempt of ours).
    let own_usable = f.local.port() == 0;
    socket::go(f.fd, f.ino, |s| s.shim_set(fact::SHIM_OPTS));
    let mut target = match Target::new(f.fd, f.ino, f.family, own_usable) {
        Ok(t) => t,
        Err(p) => return conclude(f.fd, f.dst, Kind::Tcp(f.active.tcp), p),
    };
    target.assumed = f.assumed;
    let how = match f.active.tcp {
        Tcp::Kernel => {
            // The IP the socket is already bound to with port 0: the program's pin, or our bind.
            let bound = f.pinned.or_else(|| {
                let ip = crate::config::canonical(f.local.ip());
                (!ip.is_unspecified()).then_some(ip)
            });
            Strat::Kernel(Kernel::new(target, f.cursor(), bound, f.dst))
        }
        _ => Strat::Retry { p: retry(f.active).start(target, f.cursor(), f.dst), fallback: false },
    };
    prepare(Plan { fd: f.fd, dst: f.dst, how })
}

/// UDP: a connect gets a port nobody else holds, shared once connected, or, on a crowded
/// slice, a port shared with other peers' sockets after the cookie check (`strategy::cookie`);
/// a first unconnected send gets a port of its own (it may talk to anyone from it).
fn place_udp(f: Flow, call: Call) -> Next {
    let own_usable = f.local.port() == 0;
    let was = socket::of(f.fd, f.ino);
    socket::go(f.fd, f.ino, |s| s.shim_set(fact::SHIM_REUSEADDR));
    let mut target = match Target::new(f.fd, f.ino, f.family, own_usable) {
        Ok(t) => t,
        Err(p) => return conclude(f.fd, f.dst, Kind::Udp, p),
    };
    // Born here, and neither the shim nor the program ever set SO_REUSEADDR or SO_REUSEPORT:
    // both are off, as the kernel made the socket (no syscall to check).
    let clear =
        was.has(fact::CREATED_HERE) && !was.has(fact::SHIM_REUSEADDR) && !exclusive::program_reuse_seen();
    match call {
        Call::Connect => {
            target.assumed = f.assumed;
            let c = Cookie::new(target, f.cursor(), f.dst, &f.active.reserved, f.active.precheck, clear);
            prepare(Plan { fd: f.fd, dst: f.dst, how: Strat::Cookie(c) })
        }
        Call::FirstSend => {
            let rotate = f.active.rotate.fetch_add(1, Relaxed);
            let candidates = scope::candidates(&f.active.cfg, f.v6, f.pinned, rotate);
            let clear = clear && target.is_own();
            let reserved = &f.active.reserved;
            let p = match exclusive::bind_free_known(target.cur, f.family, candidates, reserved, clear) {
                Ok((slice, local)) => match target.install() {
                    Ok(()) => {
                        target.settle();
                        let how = Strat::Owned { slice, local };
                        return Next::Call(Plan { fd: f.fd, dst: f.dst, how });
                    }
                    Err(p) => p,
                },
                Err(libc::EADDRINUSE) => Placed::Exhausted,
                Err(libc::EADDRNOTAVAIL) => Placed::NotLocal(crate::config::canonical(f.dst.ip())),
                Err(e) => Placed::Setup(e),
            };
            target.done(p);
            conclude(f.fd, f.dst, Kind::Udp, p)
        }
    }
}

fn prepare(mut plan: Plan) -> Next {
    let cfg = &active().cfg;
    let step = match &mut plan.how {
        Strat::Kernel(k) => {
            let ks = k.prepare(cfg);
            kernel_step(&mut plan, ks)
        }
        Strat::Retry { p, .. } => p.prepare(cfg),
        Strat::Cookie(c) => c.prepare(cfg),
        Strat::Owned { .. } | Strat::Disconnect => Step::Attempt,
    };
    resume(plan, step)
}

/// A kernel-strategy step; when the kernel found every slice full, the same socket goes on to
/// the explicit-bind search (it may still find a young TIME_WAIT, a port an explicit bind holds).
fn kernel_step(plan: &mut Plan, ks: KStep) -> Step {
    match ks {
        KStep::Step(s) => s,
        KStep::Fallback => {
            let Strat::Kernel(k) = plan.how else { unreachable!("a kernel step") };
            let mut p = retry(active()).start(k.target, k.first, plan.dst);
            let s = p.prepare(&active().cfg);
            plan.how = Strat::Retry { p, fallback: true };
            s
        }
    }
}

fn active() -> &'static Active {
    match mode() {
        Some(Mode::Active(a)) => a,
        _ => unreachable!("a placement runs only when the shim is active"),
    }
}

fn resume(plan: Plan, step: Step) -> Next {
    match step {
        Step::Attempt => Next::Call(plan),
        Step::Done(Placed::NotFresh) => found_bound(plan),
        Step::Done(p) => conclude_known(plan.fd, plan.dst, plan.how.kind(), p, plan.how.ino()),
    }
}

/// A socket taken as unbound from its birth record was bound behind the hooks' back (a bind
/// through syscall(), or by another process after fork): the strategy's bind got EINVAL before
/// any attempt. The option the strategy set before that bind gets the program's value back
/// (the kernel strategy: IP_BIND_ADDRESS_NO_PORT only — it binds before setting anything else,
/// so a SO_REUSEADDR set behind the hooks' back stays; the explicit-bind searches:
/// SO_REUSEADDR), and the connect is decided again from a look at the socket, as for a socket
/// from before the shim loaded.
fn found_bound(plan: Plan) -> Next {
    let (fd, ino) = (plan.fd, plan.how.ino().unwrap_or(0));
    let s = socket::of(fd, ino);
    let (m, level, name) = match plan.how {
        Strat::Kernel(_) => (socket::Managed::NoPort, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT),
        _ => (socket::Managed::ReuseAddr, libc::SOL_SOCKET, libc::SO_REUSEADDR),
    };
    if let Some(own) = s.program_value(m) {
        let _ = addr::set_u32(fd, level, name, u32::from(own));
    }
    socket::go(fd, ino, State::found_bound);
    log::debug!("fd {fd} to {}: bound behind the shim's back; looked at again", plan.dst);
    outgoing(fd, plan.dst, Call::Connect, false)
}

/// The program's call returned `ret` (errno `errno` when it failed) in a placement.
pub fn after(mut plan: Plan, ret: isize, errno: c_int) -> Next {
    let cfg = &active().cfg;
    let step = match &mut plan.how {
        Strat::Kernel(k) => match conntrack_checked(k.after(cfg, ret, errno), plan.fd, plan.dst) {
            KStep::Step(Step::Done(Placed::Outside { slice, local })) => {
                stats::bump(C::outside_slice);
                log::warn!(
                    "tcp fd {} to {}: the kernel chose {local}, outside slice {slice} (has \
                     net.ipv4.ip_local_port_range changed?); connection aborted, placing it again \
                     with the retry strategy",
                    plan.fd,
                    plan.dst
                );
                let fd = plan.fd;
                let ino = fdtable::ino(fd).unwrap_or(0);
                let cursor = Cursor::new(
                    crate::config::canonical(plan.dst.ip()).is_ipv6(),
                    None,
                    active().rotate.fetch_add(1, Relaxed),
                );
                let family = k.target.family;
                return match Target::new(fd, ino, family, false) {
                    Ok(t) => prepare(Plan {
                        fd,
                        dst: plan.dst,
                        how: Strat::Retry { p: retry(active()).start(t, cursor, plan.dst), fallback: false },
                    }),
                    Err(p) => conclude(fd, plan.dst, Kind::Tcp(Tcp::Retry), p),
                };
            }
            ks => kernel_step(&mut plan, ks),
        },
        Strat::Retry { p, .. } => p.after(cfg, ret, errno),
        Strat::Cookie(c) => c.after(cfg, ret, errno),
        Strat::Owned { slice, local } => Step::Done(Placed::Ok {
            ret,
            errno: if ret < 0 { errno } else { 0 },
            slice: *slice,
            local: *local,
        }),
        Strat::Disconnect => {
            if ret == 0 {
                disconnected(plan.fd);
            }
            return Next::Return { ret, errno };
        }
    };
    resume(plan, step)
}

/// What a placement was, for its bookkeeping.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp(Tcp),
    /// The kernel strategy's explicit-bind fallback.
    KernelFallback,
    /// A UDP connect: the port is shared with other peers' sockets (from the connect on).
    UdpShared,
    Udp,
}

impl Strat {
    fn kind(&self) -> Kind {
        match self {
            Strat::Kernel(_) => Kind::Tcp(Tcp::Kernel),
            Strat::Retry { fallback: true, .. } => Kind::KernelFallback,
            Strat::Retry { .. } | Strat::Disconnect => Kind::Tcp(Tcp::Retry),
            Strat::Cookie(_) => Kind::UdpShared,
            Strat::Owned { .. } => Kind::Udp,
        }
    }
}

impl Strat {
    /// The identity of the socket in the program's fd, when the strategy knows it.
    fn ino(&self) -> Option<u64> {
        match self {
            Strat::Kernel(k) => Some(k.target.ino()),
            Strat::Retry { p, .. } => Some(p.target.ino()),
            Strat::Cookie(c) => Some(c.target.ino()),
            Strat::Owned { .. } | Strat::Disconnect => None,
        }
    }
}

/// Turn a placement's outcome into the call's return value and errno, with bookkeeping.
fn conclude(fd: c_int, dst: SocketAddr, kind: Kind, r: Placed) -> Next {
    conclude_known(fd, dst, kind, r, None)
}

/// As [`conclude`], with the identity of the socket in `fd` if known (no look-up then).
fn conclude_known(fd: c_int, dst: SocketAddr, kind: Kind, r: Placed, ino: Option<u64>) -> Next {
    let (counter, exhausted) = match kind {
        Kind::Tcp(Tcp::Kernel) | Kind::KernelFallback => (C::placed_tcp_kernel, libc::EADDRNOTAVAIL),
        Kind::Tcp(_) => (C::placed_tcp_retry, libc::EADDRNOTAVAIL),
        Kind::UdpShared | Kind::Udp => (C::placed_udp, libc::EAGAIN),
    };
    // The fd may hold a fresh socket now: record against whatever it holds.
    let ino = ino.or_else(|| fdtable::ino(fd)).unwrap_or(0);
    match r {
        Placed::Ok { ret, errno: e, slice, local } => {
            // The entry may come from the socket this one replaced (a swap keeps it): its port is
            // shared only if this placement shares it, and it is no longer disconnected.
            let port = if kind == Kind::UdpShared { Port::Shared } else { Port::Owned };
            socket::go(fd, ino, |s| s.placed_at(port));
            stats::bump(counter);
            if kind == Kind::KernelFallback {
                stats::bump(C::kernel_fallbacks);
            }
            log::debug!("fd {fd} to {dst}: placed at {local} (slice {slice}, {counter:?})");
            Next::Return { ret, errno: e }
        }
        Placed::Failed { ret, errno: e } => {
            socket::go(fd, ino, State::attempt_failed);
            log::debug!("fd {fd} to {dst}: {}", std::io::Error::from_raw_os_error(e));
            Next::Return { ret, errno: e }
        }
        Placed::Exhausted => {
            socket::go(fd, ino, State::attempt_failed);
            let proto = if matches!(kind, Kind::Udp | Kind::UdpShared) { "udp" } else { "tcp" };
            crate::strategy::refusal::refused(proto, dst, exhausted);
            fail(exhausted)
        }
        Placed::NotLocal(ip) => {
            static ONCE: AtomicBool = AtomicBool::new(false);
            warn_once(&ONCE, || {
                format!("slice IP {ip} is not assigned to this host: its slices cannot be used")
            });
            fail(libc::EADDRNOTAVAIL)
        }
        Placed::Outside { slice, local } => {
            stats::bump(C::outside_slice);
            log::error!(
                "fd {fd} to {dst}: the kernel chose {local}, outside slice {slice}; connection aborted \
                 (EADDRNOTAVAIL)"
            );
            fail(libc::EADDRNOTAVAIL)
        }
        // `resume` looks again instead; here only if a strategy reported it elsewhere.
        Placed::NotFresh => fail(libc::EADDRNOTAVAIL),
        Placed::Setup(e) => {
            log::error!(
                "fd {fd} to {dst}: cannot prepare the socket: {} (EADDRNOTAVAIL)",
                std::io::Error::from_raw_os_error(e)
            );
            fail(libc::EADDRNOTAVAIL)
        }
        Placed::Swap(crate::sys::swap::SwapError::Option(level, name)) => {
            log::error!(
                "fd {fd} to {dst}: a fresh socket is needed to place this flow, and the program set \
                 {} on its socket, which cannot be carried over (EADDRNOTAVAIL)",
                crate::sys::options::describe(level, name)
            );
            fail(libc::EADDRNOTAVAIL)
        }
        Placed::Swap(crate::sys::swap::SwapError::Sys(e)) => {
            log::error!(
                "fd {fd} to {dst}: cannot create a fresh socket: {} (EADDRNOTAVAIL)",
                std::io::Error::from_raw_os_error(e)
            );
            fail(libc::EADDRNOTAVAIL)
        }
    }
}

/// connect(AF_UNSPEC) succeeded. A UDP socket the shim placed keeps its (shared) slice port
/// after a disconnect; left so, its next connect would skip the check and could duplicate a
/// 4-tuple. It is marked instead: the program keeps its socket (datagrams already queued stay
/// readable), and its next connect or send is placed afresh, on a fresh socket.
fn disconnected(fd: c_int) {
    let Some(ino) = fdtable::ino(fd) else { return };
    // Only a shared port needs placing again: an owned one (the program's bind(SLICE_IP, 0), a
    // first send's port) is the socket's own, and the kernel keeps an explicit bind's port.
    let s = socket::of(fd, ino);
    if s.shared_port() {
        socket::go(fd, ino, State::disconnect_shared);
    } else if s.placed() && addr::get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) == Some(libc::IPPROTO_TCP)
    {
        // A disconnected TCP socket: the kernel released a port it chose (kernel strategy; its
        // getsockname still shows it), so the next connect is placed again — left alone it would
        // take an automatic port from outside the slice.
        socket::go(fd, ino, State::disconnect_owned);
    }
}

/// The kernel chose the port inside connect(), too late to reserve it in conntrack (seed 004):
/// with PORTRANGE_CONNTRACK on, its flow is verified instead, and one that conntrack rewrote is
/// aborted and handled as a port outside the slice (placed again with the retry strategy).
fn conntrack_checked(ks: KStep, fd: c_int, dst: SocketAddr) -> KStep {
    match ks {
        KStep::Step(Step::Done(Placed::Ok { slice, local, .. })) => {
            match crate::sys::conntrack::verify_placed(libc::IPPROTO_TCP, local, dst) {
                Ok(()) => ks,
                Err(crate::sys::conntrack::Rewritten(real)) => {
                    crate::strategy::kernel::abort(fd);
                    KStep::Step(Step::Done(Placed::Outside { slice, local: real }))
                }
            }
        }
        ks => ks,
    }
}
