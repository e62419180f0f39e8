//! Descriptor bookkeeping that needs the shim: epoll_ctl. (dup*, fcntl(F_DUPFD*), socket() and
//! accept() are atomics in the hooks themselves; close needs no hook: entries are validated by
//! the socket's identity when read.)

use crate::fdtable;
use crate::{mode, real, Mode};
use libc::c_int;

/// Remember the program's epoll registration of `fd`, so that a swap can make it again.
pub unsafe fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int {
    // SAFETY: the program's own arguments (valid as the libc call requires); `ev` was checked non-null.
    let r = unsafe { real::epoll_ctl(epfd, op, fd, ev) };
    if r == 0 && matches!(mode(), Some(Mode::Active(_))) {
        match op {
            libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD if !ev.is_null() => {
                // SAFETY: the program's own arguments (valid as the libc call requires); `ev` was checked non-null.
                let e = unsafe { std::ptr::read_unaligned(ev) };
                fdtable::epoll_record(fd, epfd, Some((e.events, e.u64)));
            }
            libc::EPOLL_CTL_DEL => fdtable::epoll_record(fd, epfd, None),
            _ => {}
        }
    }
    r
}

/// socket() made an AF_INET/AF_INET6 TCP socket: record it as created here, unbound (see
/// `socket::fact::UNTOUCHED`). No vfork guard (whose getpid would cost a syscall per socket): a
/// vfork child's socket takes a number free in the parent too (the child's table is a copy), so
/// its record is stale for the parent, and its identity differs from any socket the parent
/// makes there later.
pub fn tcp_created(fd: c_int, v6: bool) {
    if matches!(mode(), Some(Mode::Active(_))) {
        if let Some(ino) = fdtable::ino(fd) {
            crate::socket::go(fd, ino, |s| s.born_tcp(v6));
        }
    }
}

/// socket() made an AF_INET/AF_INET6 (`v6`) datagram socket: mark it as created here, unbound
/// (see `socket::fact::CREATED_HERE`, `State::untouched_udp`). No vfork guard needed: an entry is
/// keyed by the socket's identity, so one a vfork child writes for its own socket never matches
/// a socket of the parent's (as for TCP).
pub fn udp_created(fd: c_int, protocol: c_int, v6: bool) {
    if matches!(protocol, 0 | libc::IPPROTO_UDP) && matches!(mode(), Some(Mode::Active(_))) {
        if let Some(ino) = fdtable::ino(fd) {
            crate::socket::go(fd, ino, |s| s.born_udp(v6));
        }
    }
}
