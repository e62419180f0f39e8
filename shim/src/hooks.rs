//! The exported libc symbols. Each is thin: take the re-entry guard (inside the shim, go
//! straight to the real function), catch panics (the host program never unwinds through the
//! shim: the call fails with a clear errno and is counted), and hand off to `flow`.
//!
//! Why not redhook: redhook 2.0.0 (2020, unmaintained) has no re-entry guard and, after a panic
//! in a hook, calls the real function a second time — for connect() that would egress from
//! outside the slice. This macro is the part of it we need, with those two fixed.

use crate::{flow, guard, real, stats};
use libc::{c_int, c_uint, c_ulong, c_void, sockaddr, socklen_t, ssize_t};
use std::panic::{catch_unwind, AssertUnwindSafe};

macro_rules! hook {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $body:expr, on_panic = $errno:expr; )*) => {$(
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            let Some(_inside) = guard::enter() else {
                return real::$name($($arg),*);
            };
            match catch_unwind(AssertUnwindSafe(|| $body)) {
                Ok(r) => r,
                Err(_) => {
                    stats::bump(stats::C::internal_errors);
                    crate::errno::set($errno);
                    -1 as $ret
                }
            }
        }
    )*};
}

hook! {
    /// Outgoing TCP/UDP: placed in a slice when in scope.
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int
        = flow::connect(fd, addr, len), on_panic = libc::EADDRNOTAVAIL;
    /// bind(SLICE_IP, 0) gets a slice port; bind(wildcard, 0) waits for connect/listen.
    fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int
        = flow::bind(fd, addr, len), on_panic = libc::EADDRINUSE;
    /// Carry out a deferred bind first.
    fn listen(fd: c_int, backlog: c_int) -> c_int = flow::listen(fd, backlog), on_panic = libc::EINVAL;
    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int
        = flow::getsockname(fd, addr, len), on_panic = libc::EBADF;
    /// TCP Fast Open (MSG_FASTOPEN) starts a flow; an unconnected UDP send starts one too.
    fn sendto(fd: c_int, buf: *const c_void, n: usize, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t
        = flow::sendto(fd, buf, n, flags, addr, len), on_panic = libc::EAGAIN;
    fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t
        = flow::sendmsg(fd, msg, flags), on_panic = libc::EAGAIN;
    fn sendmmsg(fd: c_int, msgs: *mut libc::mmsghdr, n: c_uint, flags: c_int) -> c_int
        = flow::sendmmsg(fd, msgs, n, flags), on_panic = libc::EAGAIN;
    /// Records the program's own values of the options the shim changes.
    fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int
        = flow::setsockopt(fd, level, name, val, len), on_panic = libc::EINVAL;
    /// Reports the program's own values of the options the shim changed.
    fn getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int
        = flow::getsockopt(fd, level, name, val, len), on_panic = libc::EINVAL;
    /// Records the program's registration (a swapped socket is registered again).
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int
        = flow::epoll_ctl(epfd, op, fd, ev), on_panic = libc::EINVAL;
    /// Per-fd bookkeeping: lock-free, allocation-free, no logging.
    fn close(fd: c_int) -> c_int = flow::close(fd), on_panic = libc::EBADF;
    fn dup(fd: c_int) -> c_int = flow::dup(fd), on_panic = libc::EBADF;
    fn dup2(old: c_int, new: c_int) -> c_int = flow::dup2(old, new), on_panic = libc::EBADF;
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int = flow::dup3(old, new, flags), on_panic = libc::EBADF;
    /// fcntl is variadic; its third argument is always passed in an integer register on the
    /// ABIs glibc supports here, so a fixed `unsigned long` carries ints and pointers alike.
    fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int
        = flow::fcntl_done(fd, cmd, real::fcntl(fd, cmd, arg)), on_panic = libc::EBADF;
    /// nginx and node import `fcntl64@GLIBC_2.28`.
    fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int
        = flow::fcntl_done(fd, cmd, real::fcntl64(fd, cmd, arg)), on_panic = libc::EBADF;
    fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int
        = flow::close_range(first, last, flags), on_panic = libc::EINVAL;
}

/// glibc's `void closefrom(int)`.
#[no_mangle]
pub unsafe extern "C" fn closefrom(low: c_int) {
    let Some(_inside) = guard::enter() else {
        return real::closefrom(low);
    };
    if catch_unwind(AssertUnwindSafe(|| flow::closefrom(low))).is_err() {
        stats::bump(stats::C::internal_errors);
    }
}
