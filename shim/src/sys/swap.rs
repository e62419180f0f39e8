//! Moving a fresh socket into the program's fd, so that the program sees, through its fd, the
//! same socket it built — only placed.
//!
//! Measured (kernel-facts): dup2 clears FD_CLOEXEC (dup3 with O_CLOEXEC keeps it); O_NONBLOCK
//! belongs to the open file and is lost; socket options are lost; an epoll registration of the old
//! fd silently disappears. So a fresh socket gets the program's O_NONBLOCK and options *before*
//! it connects, and after dup3 the program's epoll registration is made again.

use crate::fdtable;
use crate::real;
use crate::sys::{addr, options};
use libc::c_int;

/// Why a swap cannot be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapError {
    /// The program set an option that cannot be carried over.
    Option(c_int, c_int),
    /// A syscall failed with this errno.
    Sys(c_int),
}

/// A new socket like the program's `old` one (same family, type, protocol, O_NONBLOCK, and the
/// options the program set), close-on-exec, not yet bound.
pub fn fresh_like(old: c_int, family: c_int, ino: u64) -> Result<c_int, SwapError> {
    let (mask, unknown) = fdtable::opts(old, ino);
    if let Some((level, name)) = unknown {
        return Err(SwapError::Option(level, name));
    }
    let ty = addr::get_int(old, libc::SOL_SOCKET, libc::SO_TYPE).ok_or(SwapError::Sys(libc::EBADF))?;
    let proto = addr::get_int(old, libc::SOL_SOCKET, libc::SO_PROTOCOL).ok_or(SwapError::Sys(libc::EBADF))?;
    // SAFETY: plain syscalls on descriptors we own or the program's (read-only fcntl).
    unsafe {
        let new = libc::socket(family, ty | libc::SOCK_CLOEXEC, proto);
        if new < 0 {
            return Err(SwapError::Sys(crate::errno::get()));
        }
        let fl = real::fcntl(old, libc::F_GETFL, 0);
        if fl >= 0 && fl & libc::O_NONBLOCK != 0 {
            real::fcntl(new, libc::F_SETFL, libc::O_NONBLOCK as libc::c_ulong);
        }
        let extra = fdtable::extra_opts(old, ino);
        if let Err((level, name)) =
            options::replay(old, new, mask).and_then(|()| options::replay_bytes(old, new, &extra))
        {
            real::close(new);
            return Err(SwapError::Option(level, name));
        }
        Ok(new)
    }
}

/// Put `new` in place of the program's `fd` (keeping FD_CLOEXEC and its epoll registration),
/// then close `new`'s own number. The fd table entry moves to the new socket.
///
/// `expect` is the inode of the program's socket being placed: `fd` is checked to still hold it
/// immediately before the `dup3`. Another thread of the program may have closed `fd` meanwhile
/// and reused the number for another file; that file must not be replaced, so the swap is given
/// up (`Err(EBADF)`: the program closed the socket) and `new` is left to the caller.
pub fn install(new: c_int, fd: c_int, expect: u64) -> Result<(), c_int> {
    // SAFETY: fcntl on the program's fd (read-only: F_GETFD).
    let fdflags = unsafe { real::fcntl(fd, libc::F_GETFD, 0) };
    if fdflags < 0 {
        return Err(crate::errno::get());
    }
    // Is the recorded epoll registration real? MOD with the same values changes nothing and
    // fails with ENOENT if the fd is not (or no longer) in that set.
    let ep = fdtable::epoll_of(fd).filter(|&(epfd, events, data)| {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: ev is a valid epoll_event; MOD with the recorded values is a no-op.
        unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut ev) == 0 }
    });
    let cloexec = if fdflags & libc::FD_CLOEXEC != 0 { libc::O_CLOEXEC } else { 0 };
    // The last look before overwriting the number: it must still be the socket being placed.
    // (What remains is the few hundred nanoseconds between this fstat and the dup3.)
    if fdtable::ino(fd) != Some(expect) {
        return Err(libc::EBADF);
    }
    // SAFETY: dup3 of our fresh socket over the program's fd, which holds the socket we place.
    if unsafe { real::dup3(new, fd, cloexec) } < 0 {
        return Err(crate::errno::get());
    }
    // SAFETY: `new` is our fresh socket's own number, now duplicated into `fd`.
    unsafe { real::close(new) };
    if let Some((epfd, events, data)) = ep {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: ev is a valid epoll_event.
        unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }
    if let Some(ino) = fdtable::ino(fd) {
        fdtable::rekey(fd, ino);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::addr::{get_int, set_u32};

    #[test]
    fn swap_keeps_what_the_program_sees() {
        // SAFETY: sockets and epoll fds created and closed by this test.
        unsafe {
            let fd =
                libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
            let ino = fdtable::ino(fd).unwrap();
            set_u32(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1).unwrap();
            fdtable::record_opt(fd, ino, options::bit(libc::IPPROTO_TCP, libc::TCP_NODELAY), 0, 0, false);
            let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            let mut ev = libc::epoll_event { events: (libc::EPOLLOUT | libc::EPOLLET) as u32, u64: 4242 };
            assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev), 0);
            fdtable::epoll_record(fd, ep, Some((ev.events, 4242)));

            let new = fresh_like(fd, libc::AF_INET, ino).unwrap();
            assert_ne!(real::fcntl(new, libc::F_GETFL, 0) & libc::O_NONBLOCK, 0);
            assert_eq!(get_int(new, libc::IPPROTO_TCP, libc::TCP_NODELAY), Some(1));
            let new_ino = fdtable::ino(new).unwrap();
            assert_eq!(install(new, fd, ino + 1), Err(libc::EBADF), "another socket: given up");
            install(new, fd, ino).unwrap();

            assert_eq!(fdtable::ino(fd), Some(new_ino), "the fd now holds the fresh socket");
            assert_eq!(libc::fcntl(new, libc::F_GETFD), -1, "the fresh number is closed");
            assert_ne!(libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC, 0);
            assert_ne!(libc::fcntl(fd, libc::F_GETFL) & libc::O_NONBLOCK, 0);
            assert_eq!(get_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY), Some(1));
            assert_eq!(
                fdtable::opts(fd, new_ino).0,
                1 << options::bit(libc::IPPROTO_TCP, libc::TCP_NODELAY).unwrap()
            );
            // Still registered: MOD succeeds, and an unconnected TCP socket reports EPOLLOUT|EPOLLHUP.
            assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, &mut ev), 0);
            let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
            assert_eq!(libc::epoll_wait(ep, out.as_mut_ptr(), 4, 100), 1);
            let data = out[0].u64;
            assert_eq!(data, 4242);
            libc::close(fd);
            libc::close(ep);
        }
    }

    #[test]
    fn an_unknown_option_refuses_the_swap() {
        // SAFETY: a socket created and closed by this test.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            let ino = fdtable::ino(fd).unwrap();
            fdtable::record_opt(fd, ino, None, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, false);
            assert_eq!(
                fresh_like(fd, libc::AF_INET, ino),
                Err(SwapError::Option(libc::SOL_SOCKET, libc::SO_ATTACH_FILTER))
            );
            libc::close(fd);
        }
    }
}
