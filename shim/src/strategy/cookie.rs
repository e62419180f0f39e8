//! UDP connect with the cookie check. The kernel never detects a duplicate UDP 4-tuple, and the
//! later of two sockets connected to the same peer from the same port silently receives all the
//! replies (kernel-facts). So, per candidate port (random order, reserved ports skipped):
//!
//! 1. SO_REUSEADDR=1, bind(slice_ip, port) — shares the port with other connected sockets;
//! 2. read SO_COOKIE, then SO_REUSEADDR=0 — the lock: from now on no other SO_REUSEADDR bind of
//!    this port succeeds, so nothing can slip in between the check and the connect;
//! 3. sock_diag lookup of (local, remote): the socket that would receive the peer's datagrams;
//! 4. connect only if that socket is ours; then SO_REUSEADDR=1 again, so the port keeps serving
//!    other destinations. Otherwise the port is taken for that peer: next port, fresh socket.

use super::{order::Permutation, outcome, Bind, Placed, Target};
use crate::config::Slice;
use crate::stats::{self, C};
use crate::sys::sysctl::Reserved;
use crate::sys::{addr, diag};
use libc::c_int;
use std::net::SocketAddr;

/// The interface a socket is bound to (SO_BINDTOIFINDEX; 0 = none): a device-bound conflict is
/// only visible to a lookup with that index.
fn ifindex(fd: c_int) -> u32 {
    addr::get_int(fd, libc::SOL_SOCKET, 62 /* SO_BINDTOIFINDEX */).unwrap_or(0) as u32
}

/// Connect the program's UDP socket (`target`) to `dst` from a free 4-tuple of `slices`.
pub fn place<'a>(
    mut target: Target,
    slices: impl Iterator<Item = &'a Slice>,
    dst: SocketAddr,
    reserved: &Reserved,
    mut attempt: impl FnMut(c_int) -> isize,
) -> Placed {
    // SO_REUSEPORT would defeat the lock (another SO_REUSEPORT socket of this user could bind the
    // port while we check): off during the check, the program's value back after the connect.
    let reuseport = addr::get_int(target.fd, libc::SOL_SOCKET, libc::SO_REUSEPORT) == Some(1);
    let mut not_local = None;
    'slices: for slice in slices {
        for i in Permutation::new(slice.size()) {
            let port = slice.lo + i as u16;
            if reserved.contains(port) {
                continue;
            }
            let local = SocketAddr::new(slice.ip, port);
            if reuseport {
                if let Err(e) = addr::set_u32(target.cur, libc::SOL_SOCKET, libc::SO_REUSEPORT, 0) {
                    return Placed::Setup(e);
                }
            }
            match target.bind_shared(local) {
                Bind::Bound => {}
                Bind::Taken => continue,
                Bind::NotLocal => {
                    not_local = Some(slice.ip);
                    continue 'slices;
                }
                Bind::Stop(p) => return p,
            }
            let s = target.cur;
            stats::bump(C::attempts);
            let ours = diag::cookie(s);
            if let Err(e) = addr::set_u32(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0) {
                return Placed::Setup(e);
            }
            stats::bump(C::lookups);
            let found = diag::udp(s, local, dst, ifindex(s));
            let free = match (ours, found) {
                (Some(c), Ok(Some(f))) => f.cookie == c,
                (_, Err(diag::DiagError(e))) => return Placed::Setup(e),
                // Our own bound socket must be found; anything else is not a safe answer.
                _ => false,
            };
            if !free {
                stats::bump(C::conflicts);
                if let Err(p) = target.fresh() {
                    return p;
                }
                continue;
            }
            let (ret, e) = outcome(attempt(s));
            let _ = addr::set_u32(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
            if reuseport {
                let _ = addr::set_u32(s, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1);
            }
            return target.conclude(ret, e, *slice, local);
        }
        stats::bump(C::exhausted);
    }
    Placed::none_free(not_local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdtable;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    fn udp(family: c_int) -> c_int {
        unsafe { libc::socket(family, libc::SOCK_DGRAM, 0) }
    }

    fn connect_to(dst: SocketAddr, family: c_int) -> impl FnMut(c_int) -> isize {
        move |fd| {
            let raw = addr::to_raw(dst, family);
            unsafe { crate::real::connect(fd, raw.ptr(), raw.len) as isize }
        }
    }

    fn place_one(fd: c_int, family: c_int, slice: Slice, dst: SocketAddr) -> Placed {
        let t = Target::new(fd, fdtable::ino(fd).unwrap(), family, true).unwrap();
        place(t, [slice].iter(), dst, &Reserved::none(), connect_to(dst, family))
    }

    // Ports 59950-59969 belong to these unit tests.
    #[test]
    fn shares_ports_across_peers_never_a_4_tuple() {
        let servers: Vec<UdpSocket> = (0..2).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo: 59950, hi: 59952 };
        let mut held = Vec::new();
        for s in &servers {
            let dst = s.local_addr().unwrap();
            let mut ports = Vec::new();
            for _ in 0..3 {
                let fd = udp(libc::AF_INET6); // v4 flows on AF_INET6 sockets: asked as AF_INET
                match place_one(fd, libc::AF_INET6, slice, dst) {
                    Placed::Ok { local, .. } => ports.push(local.port()),
                    other => panic!("{other:?}"),
                }
                // Placed sockets keep SO_REUSEADDR=1, so the port serves other peers.
                assert_eq!(addr::get_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR), Some(1));
                held.push(fd);
            }
            ports.sort();
            assert_eq!(ports, [59950, 59951, 59952]);
            let fd = udp(libc::AF_INET);
            assert_eq!(place_one(fd, libc::AF_INET, slice, dst), Placed::Exhausted);
            held.push(fd);
        }
        for fd in held {
            unsafe { libc::close(fd) };
        }
    }

    #[test]
    fn so_reuseport_does_not_defeat_the_check() {
        // An owner with SO_REUSEPORT, and connecting sockets with SO_REUSEPORT: never its port.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dst = server.local_addr().unwrap();
        let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo: 59966, hi: 59966 };
        let owner = udp(libc::AF_INET);
        addr::set_u32(owner, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).unwrap();
        crate::strategy::exclusive::bind_free(owner, libc::AF_INET, [slice].iter(), &Reserved::none())
            .unwrap();
        let c = udp(libc::AF_INET);
        addr::set_u32(c, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).unwrap();
        assert_eq!(place_one(c, libc::AF_INET, slice, dst), Placed::Exhausted);
        unsafe {
            libc::close(owner);
            libc::close(c);
        }
    }

    #[test]
    fn an_owned_port_is_never_shared() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let owner = UdpSocket::bind("127.0.0.2:59960").unwrap(); // SO_REUSEADDR=0: owns it
        let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo: 59960, hi: 59961 };
        let fd = udp(libc::AF_INET);
        match place_one(fd, libc::AF_INET, slice, server.local_addr().unwrap()) {
            Placed::Ok { local, .. } => assert_eq!(local.port(), 59961),
            other => panic!("{other:?}"),
        }
        let fd2 = udp(libc::AF_INET);
        assert_eq!(place_one(fd2, libc::AF_INET, slice, server.local_addr().unwrap()), Placed::Exhausted);
        drop(owner);
        unsafe {
            libc::close(fd);
            libc::close(fd2);
        }
        let _ = server.as_raw_fd();
    }
}
