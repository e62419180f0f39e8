//! Descriptor bookkeeping: close, dup*, fcntl(F_DUPFD*), close_range, closefrom, epoll_ctl.
//! Atomics only; the program's call itself is made by the hook.

use crate::fdtable;
use crate::{mode, real, Mode};
use libc::c_int;

/// Before the program's close(fd) (made by the hook: a cancellation point): forget the entry.
pub fn closing(fd: c_int) {
    if fdtable::occupied(fd) && !crate::in_shared_child() {
        fdtable::clear(fd);
    }
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
    // SAFETY: the program's own arguments (valid as the libc call requires); `ev` was checked non-null.
    let r = unsafe { real::dup(fd) };
    duped(fd, r);
    r
}

pub unsafe fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: the program's own arguments (valid as the libc call requires); `ev` was checked non-null.
    let r = unsafe { real::dup2(old, new) };
    duped(old, r);
    r
}

pub unsafe fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: the program's own arguments (valid as the libc call requires); `ev` was checked non-null.
    let r = unsafe { real::dup3(old, new, flags) };
    duped(old, r);
    r
}

/// After the program's fcntl (made by the hook: F_SETLKW is a cancellation point).
pub fn fcntl_done(fd: c_int, cmd: c_int, r: c_int) {
    if matches!(cmd, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC) {
        duped(fd, r);
    }
}

pub unsafe fn close_range(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int {
    if flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 && !crate::in_shared_child() {
        fdtable::clear_range(first.min(c_int::MAX as u32) as c_int, last.min(c_int::MAX as u32) as c_int);
    }
    // SAFETY: the program's own arguments (valid as the libc call requires); `ev` was checked non-null.
    unsafe { real::close_range(first, last, flags) }
}

/// Before the program's closefrom(low).
pub fn forget_from(low: c_int) {
    if !crate::in_shared_child() {
        fdtable::clear_range(low, c_int::MAX);
    }
}

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
