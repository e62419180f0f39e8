//! An exclusive port in a slice: bind(slice_ip, port) with SO_REUSEADDR=0, ports in random
//! order, reserved ports skipped. For `bind(SLICE_IP, 0)` by the program (the socket gets a port
//! at once, as the kernel would give it), for unconnected UDP sockets, which talk to anyone
//! from their port and therefore must own it, and as the first step of a UDP connect
//! (`cookie`: a port nobody else holds needs no look-up).
//!
//! An explicit bind is exact (no clamping to the sysctl range), unlike autobind with
//! IP_LOCAL_PORT_RANGE.

use super::order::Permutation;
use super::Target;
use crate::config::Slice;
use crate::sys::{addr, sysctl::Reserved};
use libc::c_int;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// The program set SO_REUSEADDR or SO_REUSEPORT on some socket of this process (through the
/// setsockopt hook). Until it has, a UDP socket born here has both off, as the kernel creates
/// it, whatever fd it is reached through (a dup included): a placement needs no syscall to make
/// sure (a program that sets them with a raw syscall is not seen; see README).
static PROGRAM_SET_REUSE: AtomicBool = AtomicBool::new(false);

/// setsockopt(SOL_SOCKET, SO_REUSEADDR | SO_REUSEPORT) by the program (one atomic store, once).
pub fn program_set_reuse() {
    if !PROGRAM_SET_REUSE.load(Relaxed) {
        PROGRAM_SET_REUSE.store(true, Relaxed);
    }
}

/// Whether the program ever set SO_REUSEADDR or SO_REUSEPORT in this process.
pub fn program_reuse_seen() -> bool {
    PROGRAM_SET_REUSE.load(Relaxed)
}

impl Target {
    /// bind(`local`) on the current socket, which the caller made exclusive (SO_REUSEADDR and
    /// SO_REUSEPORT off): `Ok` means no other socket holds the port. Until the placement
    /// concludes, the program's own socket then holds a slice port: a failure from there on
    /// gives the program a clean socket back.
    pub fn bind_owned(&mut self, local: SocketAddr) -> Result<(), c_int> {
        addr::bind(self.cur, local, self.family)?;
        self.burnt |= self.is_own();
        self.assumed = false;
        Ok(())
    }
}

/// Bind `fd` to a port of one of `slices` that no other socket holds. `Err(EADDRINUSE)` when
/// every port is taken (what bind(ip, 0) says when the range is full); other errnos as bind.
pub fn bind_free<'a>(
    fd: c_int,
    family: c_int,
    slices: impl Iterator<Item = &'a Slice>,
    reserved: &Reserved,
) -> Result<(Slice, SocketAddr), c_int> {
    bind_free_known(fd, family, slices, reserved, false)
}

/// As [`bind_free`]; `clear`: `fd` is known to have SO_REUSEADDR and SO_REUSEPORT off (a socket
/// born here that neither the program nor the shim set them on), so nothing is set or read.
pub fn bind_free_known<'a>(
    fd: c_int,
    family: c_int,
    slices: impl Iterator<Item = &'a Slice>,
    reserved: &Reserved,
    clear: bool,
) -> Result<(Slice, SocketAddr), c_int> {
    if clear {
        return bind_loop(fd, family, slices, reserved);
    }
    addr::set_u32(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0)?;
    // SO_REUSEPORT (dig sets it) would let another such socket of this user bind the same port:
    // off while binding, so the port is really owned; the program's value is put back after.
    let reuseport = addr::get_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT) == Some(1);
    if reuseport {
        addr::set_u32(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 0)?;
    }
    let r = bind_loop(fd, family, slices, reserved);
    if reuseport {
        let _ = addr::set_u32(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1);
    }
    r
}

/// A TCP socket that got a port of its own at bind time (getsockname or listen came before
/// connect) is connecting: SO_REUSEADDR=1 from now on (the program still reads its own value),
/// so that its TIME_WAIT does not lock the port for 60 s against every later placement (an
/// explicit SO_REUSEADDR bind fails over a TIME_WAIT whose socket had it off). A listener is
/// left alone.
pub fn share_on_connect(fd: c_int, ino: u64) {
    if addr::get_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(0)
        && addr::set_u32(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).is_ok()
    {
        crate::socket::go(fd, ino, |s| s.shim_set(crate::socket::fact::SHIM_REUSEADDR));
    }
}

fn bind_loop<'a>(
    fd: c_int,
    family: c_int,
    slices: impl Iterator<Item = &'a Slice>,
    reserved: &Reserved,
) -> Result<(Slice, SocketAddr), c_int> {
    for slice in slices {
        for i in Permutation::new(slice.size()) {
            let port = slice.lo + i as u16;
            if reserved.contains(port) {
                continue;
            }
            crate::stats::bump(crate::stats::C::attempts);
            let at = SocketAddr::new(slice.ip, port);
            match addr::bind(fd, at, family) {
                Ok(()) => return Ok((*slice, at)),
                Err(libc::EADDRINUSE) => crate::stats::bump(crate::stats::C::conflicts),
                Err(e) => return Err(e),
            }
        }
        crate::stats::bump(crate::stats::C::exhausted);
    }
    Err(libc::EADDRINUSE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn sock(ty: c_int) -> OwnedFd {
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_INET6, ty, 0)) }
    }

    // Ports 59910-59919 belong to this unit test.
    #[test]
    fn so_reuseport_does_not_share_an_owned_port() {
        let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo: 59915, hi: 59915 };
        let none = Reserved::none();
        let a = sock(libc::SOCK_DGRAM);
        let b = sock(libc::SOCK_DGRAM);
        for s in [&a, &b] {
            addr::set_u32(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).unwrap();
        }
        bind_free(a.as_raw_fd(), libc::AF_INET6, [slice].iter(), &none).unwrap();
        assert_eq!(bind_free(b.as_raw_fd(), libc::AF_INET6, [slice].iter(), &none), Err(libc::EADDRINUSE));
        // The program's own value is back.
        assert_eq!(addr::get_int(a.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT), Some(1));
    }

    #[test]
    fn owns_every_port_once_then_refuses() {
        let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo: 59910, hi: 59914 };
        let reserved = Reserved::parse("59912").unwrap();
        let mut held = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..4 {
            let s = sock(libc::SOCK_DGRAM);
            let (_, at) = bind_free(s.as_raw_fd(), libc::AF_INET6, [slice].iter(), &reserved).unwrap();
            ports.push(at.port());
            held.push(s);
        }
        ports.sort();
        assert_eq!(ports, [59910, 59911, 59913, 59914], "reserved 59912 skipped");
        let s = sock(libc::SOCK_DGRAM);
        assert_eq!(
            bind_free(s.as_raw_fd(), libc::AF_INET6, [slice].iter(), &reserved),
            Err(libc::EADDRINUSE)
        );
        // A TCP socket on the same ports is a different port space.
        let t = sock(libc::SOCK_STREAM);
        let (_, at) = bind_free(t.as_raw_fd(), libc::AF_INET6, [slice].iter(), &reserved).unwrap();
        assert!(slice.contains_port(at.port()));
        let (fam, local) = addr::local(t.as_raw_fd()).unwrap();
        assert_eq!((fam, addr::canonical(local)), (libc::AF_INET6, at));
    }
}
