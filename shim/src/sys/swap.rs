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
        // Signal-driven I/O belongs to the open file too: owner and signal first, then O_ASYNC.
        // struct f_owner_ex { int type; pid_t pid; } (the libc crate lacks it).
        const F_SETOWN_EX: c_int = 15;
        const F_GETOWN_EX: c_int = 16;
        const F_SETSIG: c_int = 10;
        const F_GETSIG: c_int = 11;
        let mut owner = [0 as c_int; 2];
        if real::fcntl(old, F_GETOWN_EX, owner.as_mut_ptr() as libc::c_ulong) == 0 && owner[1] != 0 {
            real::fcntl(new, F_SETOWN_EX, owner.as_ptr() as libc::c_ulong);
        }
        let sig = real::fcntl(old, F_GETSIG, 0);
        if sig > 0 {
            real::fcntl(new, F_SETSIG, sig as libc::c_ulong);
        }
        let fl = real::fcntl(old, libc::F_GETFL, 0);
        if fl >= 0 && fl & (libc::O_NONBLOCK | libc::O_ASYNC) != 0 {
            real::fcntl(new, libc::F_SETFL, (fl & (libc::O_NONBLOCK | libc::O_ASYNC)) as libc::c_ulong);
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

/// The registration of `fd` in epoll set `epfd` from `/proc/self/fdinfo/EPFD`: `None` if that
/// cannot be read, `Some(None)` if `fd` is not in the set, else its current (events, data).
fn epoll_entry(epfd: c_int, fd: c_int) -> Option<Option<(u32, u64)>> {
    let mut path = [0u8; 48];
    let mut w = &mut path[..];
    use std::io::Write;
    write!(w, "/proc/self/fdinfo/{epfd}\0").ok()?;
    // SAFETY: a NUL-terminated path; our own descriptor, closed below.
    let f = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if f < 0 {
        return None;
    }
    // Lines: "tfd: N events: HEX data: HEX  pos:..."; scanned chunk by chunk, no allocation.
    let mut buf = [0u8; 4096];
    let mut have = 0;
    let mut found = None;
    loop {
        // SAFETY: reading into the free part of buf.
        let n = unsafe { libc::read(f, buf[have..].as_mut_ptr().cast(), buf.len() - have) };
        if n <= 0 {
            break;
        }
        have += n as usize;
        let mut start = 0;
        while let Some(end) = buf[start..have].iter().position(|&b| b == b'\n') {
            if found.is_none() {
                found = parse_tfd_line(&buf[start..start + end], fd);
            }
            start += end + 1;
        }
        buf.copy_within(start..have, 0);
        have -= start;
        if have == buf.len() {
            have = 0; // a line longer than the buffer: not a tfd line
        }
    }
    // SAFETY: our descriptor.
    unsafe { real::close(f) };
    Some(found)
}

fn parse_tfd_line(line: &[u8], fd: c_int) -> Option<(u32, u64)> {
    let line = std::str::from_utf8(line).ok()?;
    let mut w = line.split_whitespace();
    if w.next()? != "tfd:" || w.next()?.parse::<c_int>().ok()? != fd || w.next()? != "events:" {
        return None;
    }
    let events = u32::from_str_radix(w.next()?, 16).ok()?;
    if w.next()? != "data:" {
        return None;
    }
    let data = u64::from_str_radix(w.next()?, 16).ok()?;
    Some((events, data))
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
    // Is the recorded epoll registration real, and what is its state now? The set's fdinfo
    // says (a fired EPOLLONESHOT registration shows no event bits: it stays disarmed, except for
    // EPOLLERR/EPOLLHUP, which every ADD implies). Without /proc, MOD with the recorded values (a
    // no-op, ENOENT if the fd is not in that set; it re-arms a fired EPOLLONESHOT).
    let ep = fdtable::epoll_of(fd).and_then(|(epfd, events, data)| match epoll_entry(epfd, fd) {
        Some(Some((events, data))) => Some((epfd, events, data)),
        Some(None) => None,
        None => {
            let mut ev = libc::epoll_event { events, u64: data };
            // SAFETY: ev is a valid epoll_event; MOD with the recorded values is a no-op.
            (unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut ev) } == 0)
                .then_some((epfd, events, data))
        }
    });
    let cloexec = if fdflags & libc::FD_CLOEXEC != 0 { libc::O_CLOEXEC } else { 0 };
    // The last look before overwriting the number: it must still be the socket being placed.
    // (What remains is the few hundred nanoseconds between this fstat and the dup3.)
    if fdtable::ino(fd) != Some(expect) {
        return Err(libc::EBADF);
    }
    if let Some((epfd, _, _)) = ep {
        // The old socket leaves the set now: a dup of it the program still holds would otherwise
        // keep it there, reporting its stale state under the fd's number.
        // SAFETY: DEL takes no event.
        unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
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
    fn epoll_state_from_fdinfo() {
        assert_eq!(
            parse_tfd_line(b"tfd:        7 events:       19 data:               2a  pos:0 ino:9 sdev:8", 7),
            Some((0x19, 0x2a))
        );
        assert_eq!(parse_tfd_line(b"tfd:        7 events: 19 data: 2a", 8), None);
        assert_eq!(parse_tfd_line(b"pos:\t0", 7), None);
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        unsafe {
            let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert_eq!(epoll_entry(ep, s), Some(None));
            let mut ev = libc::epoll_event { events: (libc::EPOLLOUT | libc::EPOLLONESHOT) as u32, u64: 99 };
            assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s, &mut ev), 0);
            // The kernel adds EPOLLERR | EPOLLHUP to every registration.
            let implied = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
            let (events, data) = epoll_entry(ep, s).unwrap().unwrap();
            assert_eq!((events & !implied, data), ((libc::EPOLLOUT | libc::EPOLLONESHOT) as u32, 99));
            // Fired once (an unconnected socket is writable/hung up): disarmed, no event bits left.
            let mut out = [libc::epoll_event { events: 0, u64: 0 }; 2];
            assert_eq!(libc::epoll_wait(ep, out.as_mut_ptr(), 2, 100), 1);
            let (events, _) = epoll_entry(ep, s).unwrap().unwrap();
            assert_eq!(events & (libc::EPOLLOUT as u32), 0, "disarmed: {events:#x}");
            libc::close(s);
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
