//! setsockopt/getsockopt: the program's own values of the three options the shim changes
//! (SO_REUSEADDR, IP_BIND_ADDRESS_NO_PORT, IP_LOCAL_PORT_RANGE), and which options to carry over
//! if a socket is ever swapped.

use crate::fdtable;
use crate::socket::{self, fact, Managed};
use crate::sys::options;
use crate::sys::sysctl::IP_LOCAL_PORT_RANGE;
use crate::{errno, mode, real, Mode};
use libc::{c_int, c_void, socklen_t};

unsafe fn read_int(val: *const c_void, len: socklen_t) -> u32 {
    match len {
        0 => 0,
        // SAFETY: the program's own option buffer, valid for `len` bytes as setsockopt/getsockopt require.
        1..=3 => unsafe { u32::from(*(val as *const u8)) },
        // SAFETY: the program's own option buffer, valid for `len` bytes as setsockopt/getsockopt require.
        _ => unsafe { std::ptr::read_unaligned(val as *const u32) },
    }
}

/// Record what the program set: its own value of an option the shim manages (reported back by
/// getsockopt), or which option to carry over if the socket is ever swapped.
pub unsafe fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int {
    // SAFETY: the program's own option buffer, valid for `len` bytes as setsockopt/getsockopt require.
    let r = unsafe { real::setsockopt(fd, level, name, val, len) };
    if r != 0 || !matches!(mode(), Some(Mode::Active(_))) {
        return r;
    }
    if level == libc::SOL_SOCKET && name == libc::SO_REUSEADDR {
        // From now on a UDP placement reads it back instead of knowing it off (SO_REUSEPORT is
        // noted in the hook, which passes it straight through).
        crate::strategy::exclusive::program_set_reuse();
    }
    let e0 = errno::get();
    if let Some(ino) = fdtable::ino(fd) {
        if options::managed(level, name) {
            // SAFETY: the program's own option buffer, valid for `len` bytes as setsockopt/getsockopt require.
            let v = if val.is_null() { 0 } else { unsafe { read_int(val, len) } };
            match (level, name) {
                (libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT) => {
                    socket::go(fd, ino, |s| s.program_set(Managed::NoPort, v != 0))
                }
                (libc::SOL_SOCKET, libc::SO_REUSEADDR) => {
                    socket::go(fd, ino, |s| s.program_set(Managed::ReuseAddr, v != 0))
                }
                _ => fdtable::set_prog_range(fd, ino, v),
            }
        } else {
            fdtable::record_opt(
                fd,
                ino,
                options::bit(level, name),
                level,
                name,
                options::copyable(level, name),
            );
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
    // SAFETY: the program's own option buffer, valid for `len` bytes as setsockopt/getsockopt require.
    let r = unsafe { real::getsockopt(fd, level, name, val, len) };
    // Not only occupied fds: a dup made before the shim placed the socket has no entry of its own.
    if r != 0
        || val.is_null()
        || len.is_null()
        || !options::managed(level, name)
        || !matches!(mode(), Some(Mode::Active(_)))
    {
        return r;
    }
    let e0 = errno::get();
    if let Some(ino) = fdtable::ino(fd) {
        let mut s = socket::of(fd, ino);
        let mut fd = fd;
        if !s.has(fact::SHIM_OPTS) {
            // A dup made before the shim changed the socket: the original fd's entry knows.
            let changed = |w| socket::State::from_word(w).has(fact::SHIM_OPTS);
            if let Some(other) = fdtable::sibling(fd, ino, changed) {
                fd = other;
                s = socket::of(fd, ino);
            }
        }
        let own = match (level, name) {
            (libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT) => {
                s.program_value(Managed::NoPort).map(u32::from)
            }
            (libc::IPPROTO_IP, IP_LOCAL_PORT_RANGE) if s.has(fact::SHIM_RANGE) => {
                Some(fdtable::prog_range(fd, ino))
            }
            (libc::SOL_SOCKET, libc::SO_REUSEADDR) => s.program_value(Managed::ReuseAddr).map(u32::from),
            _ => None,
        };
        if let Some(v) = own {
            // SAFETY: the program's own option buffer, valid for `len` bytes as setsockopt/getsockopt require.
            let n = unsafe { (*len as usize).min(4) };
            // SAFETY: the program's own option buffer, valid for `len` bytes as setsockopt/getsockopt require.
            unsafe { std::ptr::copy_nonoverlapping(v.to_ne_bytes().as_ptr(), val as *mut u8, n) };
        }
    }
    errno::set(e0);
    r
}
