//! The body of each hook, once the guard is taken: gather the facts about the socket, ask
//! `scope::decide`, hand off to a strategy, and leave errno as the program expects.
//!
//! Every function here returns what the hook returns and sets errno itself: on success errno is
//! restored to its value at entry (the shim's own syscalls must not leak into it).

use crate::fdtable::{self, flag};
use crate::scope::{self, Call, Decision, Leave, Proto};
use crate::stats::{self, C};
use crate::strategy::{cookie, exclusive, kernel, retry::Retry, Placed, Target};
use crate::sys::sysctl::IP_LOCAL_PORT_RANGE;
use crate::sys::{addr, options};
use crate::{errno, mode, real, Active, Mode, Tcp};
use libc::{c_int, c_void, sockaddr, socklen_t};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// The facts about a socket that decisions need.
struct Sock {
    family: c_int,
    proto: Proto,
    local: SocketAddr,
}

impl Sock {
    /// `None` unless `fd` is an AF_INET/AF_INET6 TCP or UDP socket.
    fn of(fd: c_int) -> Option<Sock> {
        let proto = scope::proto(addr::get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?)?;
        let (family, local) = addr::local(fd)?;
        matches!(family, libc::AF_INET | libc::AF_INET6).then_some(Sock { family, proto, local })
    }
}

fn warn_once(flag: &AtomicBool, msg: impl FnOnce() -> String) {
    if !flag.swap(true, Relaxed) {
        log::warn!("{}", msg());
    }
}

/// Return `ret` with `e` (0 = restore `e0`).
fn finish(ret: isize, e: c_int, e0: c_int) -> isize {
    errno::set(if ret >= 0 || e == 0 { e0 } else { e });
    ret
}

fn fail(e: c_int) -> isize {
    errno::set(e);
    -1
}

/// An outgoing flow: connect(), or a send that starts one (TCP Fast Open; first UDP send).
/// `attempt` performs the program's call on `fd`; `pass` does it untouched.
unsafe fn outgoing(fd: c_int, dst: SocketAddr, call: Call, mut attempt: impl FnMut(c_int) -> isize) -> isize {
    let e0 = errno::get();
    let pass = |attempt: &mut dyn FnMut(c_int) -> isize| {
        errno::set(e0);
        attempt(fd)
    };
    let active = match mode() {
        Some(Mode::Active(a)) => a,
        Some(Mode::Deny) => {
            return match Sock::of(fd) {
                Some(s) if call == Call::Connect || s.local.port() == 0 => {
                    stats::bump(C::denied);
                    fail(libc::EPERM)
                }
                _ => pass(&mut attempt),
            }
        }
        _ => return pass(&mut attempt),
    };
    let Some(sock) = Sock::of(fd) else {
        stats::bump(C::passed_through);
        if call == Call::FirstSend {
            // Not ours (raw, ICMP, SCTP...): later sends need not ask again.
            if let Some(ino) = fdtable::ino(fd) {
                fdtable::update(fd, ino, flag::SETTLED, 0);
            }
        }
        return pass(&mut attempt);
    };
    let Some(ino) = fdtable::ino(fd) else { return pass(&mut attempt) };
    let flags = fdtable::flags(fd, ino);
    if flags & flag::PLACED != 0 {
        // A UDP socket may connect again, to another peer, without disconnecting first. On a
        // shared port that new 4-tuple was never checked: it is placed afresh, on a fresh socket.
        // (An owned port is nobody else's; a TCP socket connects once.)
        let recheck = call == Call::Connect
            && sock.proto == Proto::Udp
            && flags & flag::SHARED_PORT != 0
            && addr::peer(fd).is_none_or(|p| addr::canonical(p) != addr::canonical(dst));
        if !recheck {
            return pass(&mut attempt);
        }
        let v6 = crate::config::canonical(dst.ip()).is_ipv6();
        let flow = Flow { active, fd, ino, sock: &sock, v6, pinned: None, dst, e0 };
        return place_udp(flow, call, attempt);
    }
    if call == Call::FirstSend && sock.proto == Proto::Tcp {
        // sendto() with an address on a TCP socket: the address is ignored (no Fast Open flag).
        fdtable::update(fd, ino, flag::SETTLED, 0);
        return pass(&mut attempt);
    }
    let not_programs = flags & (flag::SHIM_BOUND | flag::WILDCARD_PORT) != 0;
    match scope::decide(&active.cfg, sock.local, not_programs, dst, call) {
        // A UDP connect to port 0 or to 0.0.0.0 would bind the socket outside the slice (its later
        // sends would leave from there): it gets a port of its own first, as a first send would.
        Decision::Leave(Leave::BadDestination) if sock.proto == Proto::Udp && sock.local.port() == 0 => {
            match scope::decide(&active.cfg, sock.local, not_programs, dst, Call::FirstSend) {
                Decision::Place { v6, pinned } => place_udp(
                    Flow { active, fd, ino, sock: &sock, v6, pinned, dst, e0 },
                    Call::FirstSend,
                    attempt,
                ),
                Decision::Leave(why) => {
                    leave(why, &sock, dst);
                    if flags & flag::DEFERRED_BIND != 0 {
                        let _ = materialize(fd, ino, sock.family);
                    }
                    pass(&mut attempt)
                }
            }
        }
        Decision::Leave(why) => {
            leave(why, &sock, dst);
            if call == Call::FirstSend {
                fdtable::update(fd, ino, flag::SETTLED, 0);
            }
            if flags & flag::DEFERRED_BIND != 0 {
                let _ = materialize(fd, ino, sock.family);
            }
            pass(&mut attempt)
        }
        Decision::Place { v6, pinned } => {
            let flow = Flow { active, fd, ino, sock: &sock, v6, pinned, dst, e0 };
            match sock.proto {
                Proto::Tcp => place_tcp(flow, attempt),
                Proto::Udp => place_udp(flow, call, attempt),
            }
        }
    }
}

fn leave(why: Leave, sock: &Sock, dst: SocketAddr) {
    match why {
        Leave::Skipped => stats::bump(C::skipped_dest),
        Leave::BadDestination => stats::bump(C::passed_through),
        Leave::NoSliceFamily => {
            stats::bump(C::no_slice_family);
            log::info!("no slice of the family of {dst}: flow left alone");
        }
        Leave::BoundByProgram => {
            stats::bump(C::bound_by_program);
            static ONCE: AtomicBool = AtomicBool::new(false);
            warn_once(&ONCE, || {
                format!(
                    "the program bound a socket to {} itself; its flows (to {dst} and others) are \
                     left alone (warned once per process)",
                    sock.local
                )
            });
        }
    }
}

/// One flow to place: the program's socket, where it goes, and where it may leave from.
#[derive(Clone, Copy)]
struct Flow<'a> {
    active: &'a Active,
    fd: c_int,
    ino: u64,
    sock: &'a Sock,
    /// The destination's family (v4-mapped counts as IPv4): which slices apply.
    v6: bool,
    /// The slice IP the program bound the socket to, if any.
    pinned: Option<std::net::IpAddr>,
    dst: SocketAddr,
    /// errno at the hook's entry (restored on success).
    e0: c_int,
}

fn place_tcp(flow: Flow, mut attempt: impl FnMut(c_int) -> isize) -> isize {
    let Flow { active, fd, ino, sock, v6, pinned, dst, e0 } = flow;
    let cfg = &active.cfg;
    let rotate = active.rotate.fetch_add(1, Relaxed);
    let candidates = || scope::candidates(cfg, v6, pinned, rotate);
    // The program's own socket can take the placement unless it already holds a port (a
    // deferred wildcard bind carried out for getsockname, or an earlier attempt of ours).
    let own_usable = sock.local.port() == 0;
    let retry =
        Retry { reserved: &active.reserved, precheck: active.precheck, tw_reusable: active.tw_reusable };
    fdtable::update(fd, ino, flag::SHIM_REUSEADDR | flag::SHIM_NO_PORT | flag::SHIM_RANGE, 0);
    let target = |own: bool| Target::new(fd, ino, sock.family, own);
    let (r, how) = match active.tcp {
        Tcp::Kernel => {
            // The IP the socket is already bound to with port 0: the program's pin, or our bind.
            let bound = pinned.or_else(|| {
                let ip = crate::config::canonical(sock.local.ip());
                (!ip.is_unspecified()).then_some(ip)
            });
            let r = match target(own_usable) {
                Ok(t) => kernel::place(t, candidates, bound, &retry, dst, &mut attempt),
                Err(p) => p,
            };
            match r {
                Placed::Outside { slice, local } => {
                    stats::bump(C::outside_slice);
                    log::warn!(
                        "tcp fd {fd} to {dst}: the kernel chose {local}, outside slice {slice} (has \
                         net.ipv4.ip_local_port_range changed?); connection aborted, placing it again \
                         with the retry strategy"
                    );
                    let r = match target(true) {
                        Ok(t) => retry.place(t, candidates, dst, &mut attempt),
                        Err(p) => p,
                    };
                    (r, C::placed_tcp_retry)
                }
                r => (r, C::placed_tcp_kernel),
            }
        }
        _ => {
            let r = match target(own_usable) {
                Ok(t) => retry.place(t, candidates, dst, &mut attempt),
                Err(p) => p,
            };
            (r, C::placed_tcp_retry)
        }
    };
    finish_placement(r, how, fd, dst, e0, libc::EADDRNOTAVAIL)
}

/// UDP: a connect is placed with the cookie check (the port is shared across peers, never a
/// 4-tuple); a first unconnected send gets a port of its own (it may talk to anyone from it).
fn place_udp(flow: Flow, call: Call, mut attempt: impl FnMut(c_int) -> isize) -> isize {
    let Flow { active, fd, ino, sock, v6, pinned, dst, e0 } = flow;
    let rotate = active.rotate.fetch_add(1, Relaxed);
    let candidates = scope::candidates(&active.cfg, v6, pinned, rotate);
    let own_usable = sock.local.port() == 0;
    fdtable::update(fd, ino, flag::SHIM_REUSEADDR, 0);
    let mut target = match Target::new(fd, ino, sock.family, own_usable) {
        Ok(t) => t,
        Err(p) => return finish_placement(p, C::placed_udp, fd, dst, e0, libc::EAGAIN),
    };
    let r = match call {
        Call::Connect if crate::sys::diag::available() => {
            let r = cookie::place(target, candidates, dst, &active.reserved, &mut attempt);
            if matches!(r, Placed::Ok { .. }) {
                if let Some(ino) = fdtable::ino(fd) {
                    fdtable::update(fd, ino, flag::SHARED_PORT, 0);
                }
            }
            r
        }
        // Without sock_diag (a hardened service) a connect gets a port of its own, as a first
        // send does: an exclusive bind is race-free without a look-up, but not shared.
        Call::Connect | Call::FirstSend => {
            match exclusive::bind_free(target.cur, sock.family, candidates, &active.reserved) {
                // The owned port is the placement; the send's own outcome (EMSGSIZE...) is the
                // program's business and does not undo it.
                Ok((slice, local)) => match target.commit() {
                    Ok(()) => {
                        let (ret, e) = crate::strategy::outcome(attempt(fd));
                        Placed::Ok { ret, errno: e, slice, local }
                    }
                    Err(p) => p,
                },
                Err(libc::EADDRINUSE) => Placed::Exhausted,
                Err(libc::EADDRNOTAVAIL) => Placed::NotLocal(crate::config::canonical(dst.ip())),
                Err(e) => Placed::Setup(e),
            }
        }
    };
    finish_placement(r, C::placed_udp, fd, dst, e0, libc::EAGAIN)
}

/// Turn a placement's outcome into the call's return value and errno, with bookkeeping.
fn finish_placement(r: Placed, how: C, fd: c_int, dst: SocketAddr, e0: c_int, exhausted: c_int) -> isize {
    // The fd may hold a fresh socket now: record against whatever it holds.
    let ino = fdtable::ino(fd).unwrap_or(0);
    let tried = flag::SHIM_BOUND;
    match r {
        Placed::Ok { ret, errno: e, slice, local } => {
            fdtable::update(fd, ino, flag::PLACED | tried, flag::DEFERRED_BIND);
            stats::bump(how);
            log::debug!("fd {fd} to {dst}: placed at {local} (slice {slice}, {how:?})");
            finish(ret, e, e0)
        }
        Placed::Failed { ret, errno: e } => {
            fdtable::update(fd, ino, tried, flag::DEFERRED_BIND);
            log::debug!("fd {fd} to {dst}: {}", std::io::Error::from_raw_os_error(e));
            finish(ret, e, e0)
        }
        Placed::Exhausted => {
            fdtable::update(fd, ino, tried, flag::DEFERRED_BIND);
            crate::strategy::refusal::refused(
                if how == C::placed_udp { "udp" } else { "tcp" },
                dst,
                exhausted,
            );
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

pub unsafe fn connect(fd: c_int, sa: *const sockaddr, len: socklen_t) -> c_int {
    let Some(dst) = addr::parse(sa, len) else {
        let r = real::connect(fd, sa, len);
        if r == 0 && fdtable::occupied(fd) && addr::family_of(sa, len) == Some(libc::AF_UNSPEC) {
            disconnected(fd);
        }
        return r;
    };
    outgoing(fd, dst, Call::Connect, |t| real::connect(t, sa, len) as isize) as c_int
}

/// connect(AF_UNSPEC) succeeded. A UDP socket the shim placed keeps its (shared) slice port
/// after a disconnect; left bound, its next connect would skip the check and could duplicate a
/// 4-tuple. It gets a fresh unbound socket instead, and its next connect or send is placed afresh.
fn disconnected(fd: c_int) {
    let e0 = errno::get();
    if let (Some(Mode::Active(_)), Some(ino)) = (mode(), fdtable::ino(fd)) {
        let flags = fdtable::flags(fd, ino);
        if flags & flag::PLACED != 0
            && addr::get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) == Some(libc::IPPROTO_UDP)
        {
            let family = addr::local(fd).map(|(f, _)| f).unwrap_or(libc::AF_INET);
            match crate::sys::swap::fresh_like(fd, family, ino) {
                Ok(new) => {
                    if crate::sys::swap::install(new, fd, ino).is_ok() {
                        let ino = fdtable::ino(fd).unwrap_or(0);
                        fdtable::update(
                            fd,
                            ino,
                            0,
                            flag::PLACED | flag::SETTLED | flag::SHIM_BOUND | flag::SHARED_PORT,
                        );
                        stats::bump(C::swaps);
                    } else {
                        // SAFETY: our fresh socket.
                        unsafe { real::close(new) };
                    }
                }
                Err(e) => log::warn!("fd {fd}: disconnected UDP socket keeps its slice port ({e:?})"),
            }
        }
    }
    errno::set(e0);
}

/// The sends: with MSG_FASTOPEN a TCP send is a connect; the first unconnected send of a UDP
/// socket places it. Later sends cost one fstat and an atomic load.
unsafe fn send(
    fd: c_int,
    dst: Option<SocketAddr>,
    fastopen: bool,
    mut send: impl FnMut(c_int) -> isize,
) -> isize {
    match (mode(), dst) {
        (Some(Mode::Active(_) | Mode::Deny), Some(dst)) => {
            if fastopen {
                return outgoing(fd, dst, Call::Connect, send);
            }
            let e0 = errno::get();
            let settled = fdtable::occupied(fd)
                && fdtable::ino(fd)
                    .is_some_and(|ino| fdtable::flags(fd, ino) & (flag::PLACED | flag::SETTLED) != 0);
            errno::set(e0);
            if settled {
                send(fd)
            } else {
                outgoing(fd, dst, Call::FirstSend, send)
            }
        }
        (Some(Mode::Active(_)), None) => {
            let _ = materialize_if_deferred(fd);
            send(fd)
        }
        _ => send(fd),
    }
}

pub unsafe fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: usize,
    flags: c_int,
    sa: *const sockaddr,
    len: socklen_t,
) -> isize {
    let dst = addr::parse(sa, len);
    send(fd, dst, flags & libc::MSG_FASTOPEN != 0, |t| real::sendto(t, buf, n, flags, sa, len))
}

pub unsafe fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> isize {
    let dst = if msg.is_null() {
        None
    } else {
        addr::parse((*msg).msg_name as *const sockaddr, (*msg).msg_namelen)
    };
    send(fd, dst, flags & libc::MSG_FASTOPEN != 0, |t| real::sendmsg(t, msg, flags))
}

pub unsafe fn sendmmsg(fd: c_int, msgs: *mut libc::mmsghdr, n: libc::c_uint, flags: c_int) -> c_int {
    let dst = if msgs.is_null() || n == 0 {
        None
    } else {
        let m = &(*msgs).msg_hdr;
        addr::parse(m.msg_name as *const sockaddr, m.msg_namelen)
    };
    send(fd, dst, false, |t| real::sendmmsg(t, msgs, n, flags) as isize) as c_int
}

unsafe fn read_int(val: *const c_void, len: socklen_t) -> u32 {
    match len {
        0 => 0,
        1..=3 => u32::from(*(val as *const u8)),
        _ => std::ptr::read_unaligned(val as *const u32),
    }
}

/// Record what the program set: its own value of an option the shim manages (reported back by
/// getsockopt), or which option to carry over if the socket is ever swapped.
pub unsafe fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int {
    let r = real::setsockopt(fd, level, name, val, len);
    if r != 0 || !matches!(mode(), Some(Mode::Active(_))) {
        return r;
    }
    let e0 = errno::get();
    if let Some(ino) = fdtable::ino(fd) {
        if options::managed(level, name) {
            let v = if val.is_null() { 0 } else { read_int(val, len) };
            let bit = |set: bool, b: u64| if set { (b, 0) } else { (0, b) };
            let (set, clear) = match (level, name) {
                (libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT) => bit(v != 0, flag::PROG_NO_PORT),
                (libc::SOL_SOCKET, libc::SO_REUSEADDR) => bit(v != 0, flag::PROG_REUSEADDR),
                _ => {
                    fdtable::set_prog_range(fd, ino, v);
                    (0, 0)
                }
            };
            fdtable::update(fd, ino, set, clear);
        } else {
            fdtable::record_opt(fd, ino, options::bit(level, name), level, name);
        }
    }
    errno::set(e0);
    r
}

pub unsafe fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    let r = real::getsockopt(fd, level, name, val, len);
    if r != 0 || val.is_null() || len.is_null() || !options::managed(level, name) || !fdtable::occupied(fd) {
        return r;
    }
    let e0 = errno::get();
    if let Some(ino) = fdtable::ino(fd) {
        let f = fdtable::flags(fd, ino);
        let own = match (level, name) {
            (libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT) if f & flag::SHIM_NO_PORT != 0 => {
                Some(u32::from(f & flag::PROG_NO_PORT != 0))
            }
            (libc::IPPROTO_IP, IP_LOCAL_PORT_RANGE) if f & flag::SHIM_RANGE != 0 => {
                Some(fdtable::prog_range(fd, ino))
            }
            (libc::SOL_SOCKET, libc::SO_REUSEADDR) if f & flag::SHIM_REUSEADDR != 0 => {
                Some(u32::from(f & flag::PROG_REUSEADDR != 0))
            }
            _ => None,
        };
        if let Some(v) = own {
            let n = (*len as usize).min(4);
            std::ptr::copy_nonoverlapping(v.to_ne_bytes().as_ptr(), val as *mut u8, n);
        }
    }
    errno::set(e0);
    r
}

pub unsafe fn close(fd: c_int) -> c_int {
    if fdtable::occupied(fd) && !crate::in_shared_child() {
        fdtable::clear(fd);
    }
    real::close(fd)
}

/// After a dup of `old` into `new` (r >= 0).
fn duped(old: c_int, new: c_int) {
    if new >= 0
        && old != new
        && (fdtable::occupied(old) || fdtable::occupied(new))
        && !crate::in_shared_child()
    {
        fdtable::copy(old, new);
    }
}

pub unsafe fn dup(fd: c_int) -> c_int {
    let r = real::dup(fd);
    duped(fd, r);
    r
}

pub unsafe fn dup2(old: c_int, new: c_int) -> c_int {
    let r = real::dup2(old, new);
    duped(old, r);
    r
}

pub unsafe fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    let r = real::dup3(old, new, flags);
    duped(old, r);
    r
}

pub fn fcntl_done(fd: c_int, cmd: c_int, r: c_int) -> c_int {
    if matches!(cmd, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC) {
        duped(fd, r);
    }
    r
}

pub unsafe fn close_range(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int {
    if flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 && !crate::in_shared_child() {
        fdtable::clear_range(first.min(c_int::MAX as u32) as c_int, last.min(c_int::MAX as u32) as c_int);
    }
    real::close_range(first, last, flags)
}

pub unsafe fn closefrom(low: c_int) {
    if !crate::in_shared_child() {
        fdtable::clear_range(low, c_int::MAX);
    }
    real::closefrom(low)
}

/// Carry out a deferred bind: the program needs its port now (getsockname, listen), or the flow
/// is left alone. A deferred bind(wildcard, 0) gets the kernel's port and must behave exactly
/// as without the shim; a deferred bind(SLICE_IP, 0) (the socket holds the IP, no port) gets a
/// port of that IP's slices of its own, as the kernel would have given one at bind time.
/// `Err(errno)` when the slices have no free port.
fn materialize(fd: c_int, ino: u64, family: c_int) -> Result<(), c_int> {
    let ip = addr::local(fd).map(|(_, a)| crate::config::canonical(a.ip()));
    match (ip, mode()) {
        (Some(ip), Some(Mode::Active(active))) if !ip.is_unspecified() => {
            let slices = active.cfg.slices.iter().filter(|s| s.ip == ip);
            let r = bind_slice_port(fd, family, slices, &active.reserved);
            fdtable::update(fd, ino, if r.is_ok() { flag::PLACED } else { 0 }, flag::DEFERRED_BIND);
            r
        }
        _ => {
            let any = if family == libc::AF_INET6 {
                SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0)
            } else {
                SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0)
            };
            let _ = addr::bind(fd, any, family);
            fdtable::update(fd, ino, flag::WILDCARD_PORT, flag::DEFERRED_BIND);
            Ok(())
        }
    }
}

/// A port of one of `slices` owned by `fd` (SO_REUSEADDR=0 while binding; the program's own
/// value is put back: a port it binds this way is its own to share).
fn bind_slice_port<'a>(
    fd: c_int,
    family: c_int,
    slices: impl Iterator<Item = &'a crate::config::Slice>,
    reserved: &crate::sys::sysctl::Reserved,
) -> Result<(), c_int> {
    let prog_reuse = addr::get_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap_or(0) != 0;
    let r = crate::strategy::exclusive::bind_free(fd, family, slices, reserved);
    let _ = addr::set_u32(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, u32::from(prog_reuse));
    match r {
        Ok((slice, at)) => {
            stats::bump(C::placed_bind);
            log::debug!("fd {fd}: given {at} (slice {slice})");
            Ok(())
        }
        Err(e) => {
            log::info!("fd {fd}: no free port in its slices ({})", std::io::Error::from_raw_os_error(e));
            Err(e)
        }
    }
}

/// A deferred bind that must happen before the program's call on `fd`.
fn materialize_if_deferred(fd: c_int) -> Result<(), c_int> {
    if !fdtable::occupied(fd) {
        return Ok(());
    }
    let e0 = errno::get();
    let mut r = Ok(());
    if let Some(ino) = fdtable::ino(fd) {
        if fdtable::flags(fd, ino) & flag::DEFERRED_BIND != 0 {
            if let Some((family, _)) = addr::local(fd) {
                r = materialize(fd, ino, family);
            }
        }
    }
    errno::set(e0);
    r
}

pub unsafe fn bind(fd: c_int, sa: *const sockaddr, len: socklen_t) -> c_int {
    let (Some(Mode::Active(active)), Some(req)) = (mode(), addr::parse(sa, len)) else {
        return real::bind(fd, sa, len);
    };
    if fdtable::occupied(fd) {
        // A socket whose bind the shim deferred is bound, as far as the program knows.
        let e0 = errno::get();
        if fdtable::ino(fd).is_some_and(|ino| fdtable::flags(fd, ino) & flag::DEFERRED_BIND != 0) {
            return fail(libc::EINVAL) as c_int;
        }
        errno::set(e0);
    }
    if req.port() != 0 {
        return real::bind(fd, sa, len);
    }
    let e0 = errno::get();
    let (Some(sock), Some(ino)) = (Sock::of(fd), fdtable::ino(fd)) else {
        errno::set(e0);
        return real::bind(fd, sa, len);
    };
    let flags = fdtable::flags(fd, ino);
    let ip = crate::config::canonical(req.ip());
    if req.ip().is_unspecified() {
        // bind(0.0.0.0 / ::, 0): the kernel would pick a port now; the shim waits, so that a
        // connect or first send can still be placed, and a listen gets the port it expects.
        if flags & (flag::DEFERRED_BIND | flag::PLACED) != 0 || sock.local.port() != 0 {
            return fail(libc::EINVAL) as c_int; // already bound, as the kernel says
        }
        if !sock.local.ip().is_unspecified() {
            errno::set(e0);
            return real::bind(fd, sa, len);
        }
        fdtable::update(fd, ino, flag::DEFERRED_BIND, 0);
        log::trace!("bind fd {fd} to {req}: deferred until connect/send/listen/getsockname");
        errno::set(e0);
        return 0;
    }
    if !active.cfg.slices.iter().any(|s| s.ip == ip) {
        errno::set(e0);
        return real::bind(fd, sa, len);
    }
    // bind(SLICE_IP, 0). With IP_BIND_ADDRESS_NO_PORT (nginx proxy_bind, HAProxy source) the
    // port is placed at connect, shared across destinations: only the IP is bound now.
    if addr::get_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT) == Some(1) {
        errno::set(e0);
        return real::bind(fd, sa, len);
    }
    if sock.proto == Proto::Tcp {
        // Without NO_PORT the kernel would give the socket a port of its own now, whose
        // TIME_WAIT would later keep it from every placement for 60 s (wget --bind-address,
        // ssh -b). The shim binds only the IP (NO_PORT, on the program's behalf) and places
        // the port at connect, shared across destinations; getsockname/listen first get a
        // port of their own then (`materialize`).
        if let Err(e) = addr::set_u32(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1) {
            return fail(e) as c_int;
        }
        let r = real::bind(fd, sa, len);
        if r != 0 {
            let e = errno::get();
            let _ = addr::set_u32(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 0);
            return fail(e) as c_int;
        }
        fdtable::update(fd, ino, flag::SHIM_NO_PORT | flag::DEFERRED_BIND, flag::PROG_NO_PORT);
        log::trace!("bind fd {fd} to {req}: port deferred until connect/listen/getsockname");
        errno::set(e0);
        return 0;
    }
    // A UDP socket gets a port of that IP's slices at once, as the kernel would give one (an
    // unconnected socket talks to anyone from it: it owns it).
    let slices = active.cfg.slices.iter().filter(|s| s.ip == ip);
    match bind_slice_port(fd, sock.family, slices, &active.reserved) {
        Ok(()) => {
            fdtable::update(fd, ino, flag::PLACED, 0);
            errno::set(e0);
            0
        }
        Err(e) => fail(e) as c_int,
    }
}

pub unsafe fn listen(fd: c_int, backlog: c_int) -> c_int {
    if let Err(e) = materialize_if_deferred(fd) {
        // The kernel would pick a port outside the slice: refuse, as for a full port range.
        return fail(e) as c_int;
    }
    real::listen(fd, backlog)
}

pub unsafe fn getsockname(fd: c_int, sa: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let _ = materialize_if_deferred(fd);
    real::getsockname(fd, sa, len)
}

/// Remember the program's epoll registration of `fd`, so that a swap can make it again.
pub unsafe fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int {
    let r = real::epoll_ctl(epfd, op, fd, ev);
    if r == 0 && matches!(mode(), Some(Mode::Active(_))) {
        match op {
            libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD if !ev.is_null() => {
                let e = std::ptr::read_unaligned(ev);
                fdtable::epoll_record(fd, epfd, Some((e.events, e.u64)));
            }
            libc::EPOLL_CTL_DEL => fdtable::epoll_record(fd, epfd, None),
            _ => {}
        }
    }
    r
}
