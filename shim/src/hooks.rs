//! The exported libc symbols.
//!
//! Each hook is thin. Shim logic runs in [`inside`]: the per-thread re-entry flag set (the shim's
//! own calls that reach a hook go straight to the real function), cancellation disabled (the
//! shim's own syscalls are never cancellation points), panics caught (the host program never
//! unwinds through the shim: the call fails with a clear errno and is counted). That logic never
//! makes the program's own call when the call is a cancellation point (connect, close, send*,
//! fcntl): it answers what to do, and the hook makes the call from its own frame, which holds
//! only plain data — no destructor, no `catch_unwind`, no lock. So `pthread_cancel` of a thread
//! blocked in such a call unwinds through the hook (`extern "C-unwind"`) exactly as through libc,
//! and a placement that needs several attempts is a loop in the hook's frame.
//!
//! Why not redhook: redhook 2.0.0 (2020, unmaintained) has no re-entry guard and, after a panic
//! in a hook, calls the real function a second time — for connect() that would egress from
//! outside the slice.

use crate::calls::{bind, fds, options, outgoing, outgoing::Next};
use crate::{errno, guard, mode, real, stats, Mode};
use libc::{c_int, c_uint, c_ulong, c_void, sockaddr, socklen_t, ssize_t};
use std::panic::{catch_unwind, AssertUnwindSafe};

extern "C" {
    fn pthread_setcancelstate(state: c_int, old: *mut c_int) -> c_int;
}
const PTHREAD_CANCEL_DISABLE: c_int = 1;

/// Run shim logic `f` (its argument: this thread was already inside the shim — a signal handler
/// that interrupted it, or the shim's own call). `None` if it panicked (counted).
#[inline(never)]
fn inside<T>(f: impl FnOnce(bool) -> T) -> Option<T> {
    let entered = guard::enter();
    let nested = entered.is_none();
    let mut old: c_int = 0;
    // SAFETY: plain libc call writing the previous state into `old`.
    unsafe { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &mut old) };
    let r = catch_unwind(AssertUnwindSafe(|| f(nested)));
    // SAFETY: as above; restoring the program's state does not act on a pending request.
    unsafe { pthread_setcancelstate(old, &mut old) };
    drop(entered);
    if r.is_err() {
        stats::bump(stats::C::internal_errors);
    }
    r.ok()
}

/// Is the shim configured at all (active, or denying)? A couple of atomic loads.
#[inline(always)]
fn engaged() -> bool {
    matches!(mode(), Some(Mode::Active(_) | Mode::Deny))
}

/// Drive an outgoing call: `first` says what to do; each `Next::Call` makes the program's call
/// (`call`, on the program's fd, from this frame) and asks `outgoing::after` for the next step.
/// `on_panic`: the errno when shim logic failed.
#[inline(always)]
unsafe fn drive(first: Option<Next>, on_panic: c_int, e0: c_int, call: impl Fn() -> isize) -> isize {
    let mut next = first;
    loop {
        match next {
            None => {
                errno::set(on_panic);
                return -1;
            }
            Some(Next::Pass) => {
                errno::set(e0);
                return call();
            }
            Some(Next::Return { ret, errno: e }) => {
                errno::set(if ret >= 0 || e == 0 { e0 } else { e });
                return ret;
            }
            Some(Next::Call(plan)) => {
                errno::set(e0);
                let r = call();
                let e = if r < 0 { errno::get() } else { 0 };
                next = inside(|_| outgoing::after(plan, r, e));
            }
        }
    }
}

/// Outgoing TCP/UDP: placed in a slice when in scope.
#[no_mangle]
pub unsafe extern "C-unwind" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if !engaged() {
        // SAFETY: the program's own arguments, passed on unchanged to the real function.
        return unsafe { real::connect(fd, addr, len) };
    }
    let e0 = errno::get();
    // SAFETY: addr/len come from the program, as connect() requires.
    let first = inside(|nested| unsafe { outgoing::connect(fd, addr, len, nested) });
    // SAFETY: the program's own arguments, passed on unchanged to the real function.
    (unsafe { drive(first, libc::EADDRNOTAVAIL, e0, || real::connect(fd, addr, len) as isize) }) as c_int
}

/// TCP Fast Open (MSG_FASTOPEN) starts a flow; an unconnected UDP send starts one too.
#[no_mangle]
pub unsafe extern "C-unwind" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: usize,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> ssize_t {
    if !engaged() || addr.is_null() {
        // SAFETY: the program's own arguments, passed on unchanged to the real function.
        return unsafe { real::sendto(fd, buf, n, flags, addr, len) };
    }
    let e0 = errno::get();
    let first = inside(|nested| {
        // SAFETY: parse reads the program's address with the kernel's checks.
        let dst = || outgoing::Dest::Named(unsafe { crate::sys::addr::parse(addr, len) });
        outgoing::send(fd, dst, flags & libc::MSG_FASTOPEN != 0, nested)
    });
    // SAFETY: the program's own arguments, passed on unchanged to the real function.
    unsafe { drive(first, libc::EAGAIN, e0, || real::sendto(fd, buf, n, flags, addr, len)) }
}

/// The destination a `msghdr` names, read with the kernel's checks (an unreadable header is
/// EFAULT for the kernel, not a crash here).
///
/// # Safety
/// As [`crate::sys::addr::msg_name`].
unsafe fn named_dst(fd: c_int, msg: *const libc::msghdr) -> outgoing::Dest {
    // A socket the shim has a record of (every Internet UDP socket born in this process) gets the
    // kernel's checks: an unreadable msghdr is the kernel's EFAULT, not a fault. A descriptor with
    // no record (AF_UNIX, accepted, inherited) is a pass-through path, where a checked read (a
    // process_vm_readv) on every sendmsg would cost more than the send: its msghdr is read
    // directly, as before the check existed, and an unreadable one faults here.
    let name = if crate::fdtable::occupied(fd) {
        // SAFETY: the caller's contract.
        unsafe { crate::sys::addr::msg_name(msg) }
    } else {
        // SAFETY: msg is null or the program's msghdr (see above for an unreadable one).
        unsafe { msg.as_ref() }.map(|m| (m.msg_name.cast_const().cast::<sockaddr>(), m.msg_namelen))
    };
    match name {
        None => outgoing::Dest::Unreadable,
        Some((name, _)) if name.is_null() => outgoing::Dest::Unnamed,
        // SAFETY: parse reads the address with the kernel's checks.
        Some((name, len)) => outgoing::Dest::Named(unsafe { crate::sys::addr::parse(name, len) }),
    }
}

#[no_mangle]
pub unsafe extern "C-unwind" fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t {
    if !engaged() {
        // SAFETY: the program's own arguments, passed on unchanged to the real function.
        return unsafe { real::sendmsg(fd, msg, flags) };
    }
    let e0 = errno::get();
    let first = inside(|nested| {
        // SAFETY: named_dst reads the program's msghdr (checked for a socket the shim knows,
        // see there) and its address (checked), only for a socket not settled yet.
        let dst = || unsafe { named_dst(fd, msg) };
        outgoing::send(fd, dst, flags & libc::MSG_FASTOPEN != 0, nested)
    });
    // SAFETY: the program's own arguments, passed on unchanged to the real function.
    unsafe { drive(first, libc::EAGAIN, e0, || real::sendmsg(fd, msg, flags)) }
}

#[no_mangle]
pub unsafe extern "C-unwind" fn sendmmsg(
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    n: c_uint,
    flags: c_int,
) -> c_int {
    if !engaged() {
        // SAFETY: the program's own arguments, passed on unchanged to the real function.
        return unsafe { real::sendmmsg(fd, msgs, n, flags) };
    }
    let e0 = errno::get();
    let first = inside(|nested| {
        // SAFETY: as in sendmsg; an mmsghdr starts with its msghdr. With n == 0 the kernel reads
        // nothing.
        let dst = || if n == 0 { outgoing::Dest::Unnamed } else { unsafe { named_dst(fd, msgs.cast()) } };
        outgoing::send(fd, dst, false, nested)
    });
    // SAFETY: the program's own arguments, passed on unchanged to the real function.
    (unsafe { drive(first, libc::EAGAIN, e0, || real::sendmmsg(fd, msgs, n, flags) as isize) }) as c_int
}

/// A socket's life starts here: a number that held another socket has its stale entry dropped
/// (one atomic load when it held none). Entries are validated by identity when read, so close(),
/// close_range() and closefrom() need no hook at all.
#[no_mangle]
pub unsafe extern "C-unwind" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // SAFETY: the program's own arguments, passed on unchanged to the real function.
    let fd = born(unsafe { real::socket(domain, ty, protocol) });
    if fd >= 0 && matches!(domain, libc::AF_INET | libc::AF_INET6) && engaged() {
        // An Internet socket: recorded as created here, with its protocol (see
        // `socket::fact::CREATED_HERE`) and as unbound, so that its connect needs neither
        // SO_PROTOCOL nor getsockname. One fstat (its identity), for these sockets only.
        let kind = ty & 0xf;
        if kind == libc::SOCK_DGRAM
            || (kind == libc::SOCK_STREAM && matches!(protocol, 0 | libc::IPPROTO_TCP))
        {
            let e0 = errno::get();
            inside(|nested| match (nested, kind) {
                (true, _) => {}
                (false, libc::SOCK_DGRAM) => fds::udp_created(fd, protocol, domain == libc::AF_INET6),
                (false, _) => fds::tcp_created(fd, domain == libc::AF_INET6),
            });
            errno::set(e0);
        }
    }
    fd
}

/// accept is a cancellation point: the call is made from this frame, which holds plain data.
#[no_mangle]
pub unsafe extern "C-unwind" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: the program's own arguments, passed on unchanged to the real function.
    let s = unsafe { real::accept(fd, addr, len) };
    born(s)
}

#[no_mangle]
pub unsafe extern "C-unwind" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: the program's own arguments, passed on unchanged to the real function.
    let s = unsafe { real::accept4(fd, addr, len, flags) };
    born(s)
}

#[inline(always)]
fn born(fd: c_int) -> c_int {
    if fd >= 0 && crate::fdtable::occupied(fd) {
        crate::fdtable::clear(fd);
    }
    fd
}

/// After a dup of `old` into `new`: the new number describes the same socket (atomics only).
/// Calls on one number are not seen in the other's entry, so neither is known unbound any more.
#[inline(always)]
fn duped(old: c_int, new: c_int) {
    use crate::socket::State;
    if new >= 0 && old != new {
        crate::fdtable::duped(
            old,
            new,
            |w| State::from_word(w).touched().word(),
            |w| State::from_word(w).worth_a_copy(),
        );
    }
}

/// The socket in `fd` may get an address now: its birth record no longer says unbound (atomics).
#[inline(always)]
fn touched(fd: c_int) {
    crate::socket::go_unchecked(fd, crate::socket::State::touched);
}

#[no_mangle]
pub unsafe extern "C-unwind" fn dup(fd: c_int) -> c_int {
    // SAFETY: the program's own arguments, passed on unchanged to the real function.
    let r = unsafe { real::dup(fd) };
    duped(fd, r);
    r
}

#[no_mangle]
pub unsafe extern "C-unwind" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: the program's own arguments, passed on unchanged to the real function.
    let r = unsafe { real::dup2(old, new) };
    duped(old, r);
    r
}

#[no_mangle]
pub unsafe extern "C-unwind" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: the program's own arguments, passed on unchanged to the real function.
    let r = unsafe { real::dup3(old, new, flags) };
    duped(old, r);
    r
}

/// Options a swap reads back from the program's socket need no bookkeeping: only the three the
/// shim changes, and options a swap cannot carry over, are recorded (inside the shim).
#[no_mangle]
pub unsafe extern "C-unwind" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    if level == libc::SOL_SOCKET && name == libc::SO_REUSEPORT {
        // Replayable, so passed straight through below; but from now on a UDP placement reads
        // it back instead of knowing it off (`strategy::exclusive::program_set_reuse`).
        crate::strategy::exclusive::program_set_reuse();
    }
    if !engaged() || crate::sys::options::replayable(level, name) {
        // SAFETY: the program's own arguments, passed on unchanged to the real function.
        return unsafe { real::setsockopt(fd, level, name, val, len) };
    }
    // SAFETY: the program's own arguments (valid as setsockopt requires).
    match inside(|nested| unsafe {
        if nested {
            real::setsockopt(fd, level, name, val, len)
        } else {
            options::setsockopt(fd, level, name, val, len)
        }
    }) {
        Some(r) => r,
        None => {
            errno::set(libc::EINVAL);
            -1
        }
    }
}

/// The program's own values of the options the shim changed; anything else passes straight on.
#[no_mangle]
pub unsafe extern "C-unwind" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    // Also for an fd without an entry: a dup made before the shim changed the socket (the
    // original fd's entry answers). Only the three managed options, which programs rarely read,
    // and only once the shim has changed one of them on some socket of this process.
    if !crate::sys::options::managed(level, name) || !crate::socket::shim_changed_any() || !engaged() {
        // SAFETY: the program's own arguments, passed on unchanged to the real function.
        return unsafe { real::getsockopt(fd, level, name, val, len) };
    }
    // SAFETY: the program's own arguments (valid as getsockopt requires).
    match inside(|nested| unsafe {
        if nested {
            real::getsockopt(fd, level, name, val, len)
        } else {
            options::getsockopt(fd, level, name, val, len)
        }
    }) {
        Some(r) => r,
        None => {
            errno::set(libc::EINVAL);
            -1
        }
    }
}

/// fcntl is variadic; its third argument is always passed in an integer register on the ABIs
/// glibc supports here, so a fixed `unsigned long` carries ints and pointers alike. The call is
/// made from this frame (F_SETLKW is a cancellation point); F_DUPFD* is bookkept after.
#[no_mangle]
pub unsafe extern "C-unwind" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: the program's own arguments, passed on unchanged to the real function.
    let r = unsafe { real::fcntl(fd, cmd, arg) };
    fcntl_done(fd, cmd, r)
}

/// nginx and node import `fcntl64@GLIBC_2.28`.
#[no_mangle]
pub unsafe extern "C-unwind" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: the program's own arguments, passed on unchanged to the real function.
    let r = unsafe { real::fcntl64(fd, cmd, arg) };
    fcntl_done(fd, cmd, r)
}

#[inline(always)]
fn fcntl_done(fd: c_int, cmd: c_int, r: c_int) -> c_int {
    if matches!(cmd, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC) {
        duped(fd, r);
    }
    r
}

/// Hooks whose call is not a cancellation point: the whole body runs inside the shim.
macro_rules! hook {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $body:expr, on_panic = $errno:expr; )*) => {$(
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $name($($arg: $ty),*) -> $ret {
            if !engaged() {
                // SAFETY: the program's own arguments, passed on unchanged to the real function.
                return unsafe { real::$name($($arg),*) };
            }
            // SAFETY: the program's arguments, passed on as the real function takes them.
            match inside(|nested| if nested { unsafe { real::$name($($arg),*) } } else { unsafe { $body } }) {
                Some(r) => r,
                None => {
                    errno::set($errno);
                    -1 as $ret
                }
            }
        }
    )*};
}

hook! {
    /// bind(SLICE_IP, 0) gets a slice port; bind(wildcard, 0) waits for connect/listen. The
    /// socket's address is no longer known from its birth (whatever the bind comes to).
    fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int
        = { touched(fd); bind::bind(fd, addr, len) }, on_panic = libc::EADDRINUSE;
    /// Carry out a deferred bind first. (A listener has a port: not known unbound any more.)
    fn listen(fd: c_int, backlog: c_int) -> c_int
        = { touched(fd); bind::listen(fd, backlog) }, on_panic = libc::EINVAL;
    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int
        = bind::getsockname(fd, addr, len), on_panic = libc::EBADF;
    /// Records the program's registration (a swapped socket is registered again).
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int
        = fds::epoll_ctl(epfd, op, fd, ev), on_panic = libc::EINVAL;
}
