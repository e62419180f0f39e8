//! The forwarder's side of sharing a slice (seed 004): reserve a 4-tuple with a socket that
//! never sends, so that local sockets — the shim's placements under either strategy, or any
//! other program — never take it, while a packet forwarder uses it for a flow of its own.
//!
//! TCP: `TCP_FASTOPEN_CONNECT` + `TCP_FASTOPEN_NO_COOKIE` + SO_REUSEADDR + bind + connect returns
//! 0 with no packet sent; the socket sits in SYN-SENT and occupies the 4-tuple (another
//! SO_REUSEADDR socket bound to the port gets EADDRNOTAVAIL connecting to that destination, and
//! the kernel's own port choice skips the port). Closing it sends nothing. UDP: a connected
//! socket that never sends is, for the shim's cookie check, the holder of that 4-tuple.
//!
//! ```no_run
//! use portrange::reserve::{Proto, Reservation};
//! let slice = portrange::config::parse_slice("198.51.100.10:61000-61009").unwrap();
//! let r = Reservation::in_slice(Proto::Tcp, &slice, "203.0.113.1:443".parse().unwrap()).unwrap();
//! println!("forward the flow from {}", r.local());
//! drop(r); // the 4-tuple is free again
//! ```

use crate::config::Slice;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const TCP_FASTOPEN_CONNECT: libc::c_int = 30;
const TCP_FASTOPEN_NO_COOKIE: libc::c_int = 34;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A reserved 4-tuple; dropping it frees the tuple (nothing is sent).
#[derive(Debug)]
pub struct Reservation {
    fd: OwnedFd,
    proto: Proto,
    local: SocketAddr,
    remote: SocketAddr,
}

impl Reservation {
    /// Reserve exactly `local` → `remote`. Errors: EADDRNOTAVAIL (the 4-tuple is in use),
    /// EADDRINUSE (the port is held without SO_REUSEADDR: a listener, an owned port).
    pub fn new(proto: Proto, local: SocketAddr, remote: SocketAddr) -> io::Result<Reservation> {
        if local.is_ipv4() != remote.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "local and remote of different families",
            ));
        }
        let family = if local.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        let kind = match proto {
            Proto::Tcp => libc::SOCK_STREAM,
            Proto::Udp => libc::SOCK_DGRAM,
        };
        // SAFETY: a plain socket() call; the result is owned at once.
        let raw = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        set(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
        if proto == Proto::Tcp {
            set(&fd, libc::IPPROTO_TCP, TCP_FASTOPEN_CONNECT)?;
            set(&fd, libc::IPPROTO_TCP, TCP_FASTOPEN_NO_COOKIE)?;
        }
        let (sa, len) = raw_addr(local);
        // SAFETY: sa is a valid sockaddr of `len` bytes.
        if unsafe { libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_storage).cast(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (sa, len) = raw_addr(remote);
        // SAFETY: as above. With TCP_FASTOPEN_CONNECT the connect returns at once, sending nothing.
        if unsafe { libc::connect(fd.as_raw_fd(), (&sa as *const libc::sockaddr_storage).cast(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Reservation { fd, proto, local, remote })
    }

    /// Reserve the first free 4-tuple from `slice` to `remote` (ports in order).
    pub fn in_slice(proto: Proto, slice: &Slice, remote: SocketAddr) -> io::Result<Reservation> {
        for port in slice.lo..=slice.hi {
            match Reservation::new(proto, SocketAddr::new(slice.ip, port), remote) {
                Ok(r) => return Ok(r),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE)) => {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::from_raw_os_error(libc::EADDRNOTAVAIL))
    }

    pub fn proto(&self) -> Proto {
        self.proto
    }
    pub fn local(&self) -> SocketAddr {
        self.local
    }
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }
}

impl AsRawFd for Reservation {
    fn as_raw_fd(&self) -> libc::c_int {
        self.fd.as_raw_fd()
    }
}

fn set(fd: &OwnedFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: one is a valid int of the size given.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (&one as *const libc::c_int).cast(), 4) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn raw_addr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a.ip() {
        IpAddr::V4(ip) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(ip) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: ip.octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    /// A plain SO_REUSEADDR bind + connect from `local` to `remote` (what the retry strategy does).
    fn connect_from(local: SocketAddr, remote: SocketAddr) -> io::Result<OwnedFd> {
        // SAFETY: socket() and ownership as in Reservation::new.
        let fd = unsafe {
            OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0))
        };
        set(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
        let (sa, len) = raw_addr(local);
        if unsafe { libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_storage).cast(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (sa, len) = raw_addr(remote);
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        if unsafe { libc::connect(fd.as_raw_fd(), (&sa as *const libc::sockaddr_storage).cast(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }

    // Ports 59970-59979 belong to these unit tests.
    #[test]
    fn a_reserved_tuple_is_refused_to_others_and_free_after_drop() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = l.local_addr().unwrap();
        let local: SocketAddr = "127.0.0.2:59970".parse().unwrap();
        let r = Reservation::new(Proto::Tcp, local, dst).unwrap();
        assert_eq!((r.local(), r.remote(), r.proto()), (local, dst, Proto::Tcp));
        // Nothing was sent: the listener has nothing to accept.
        l.set_nonblocking(true).unwrap();
        assert!(l.accept().is_err());
        let e = connect_from(local, dst).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL));
        // The same port towards another destination is not reserved.
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        drop(connect_from(local, other.local_addr().unwrap()).unwrap());
        drop(r);
        let fd = connect_from(local, dst).unwrap();
        drop(fd);
    }

    #[test]
    fn in_slice_takes_the_first_free_port_and_reports_exhaustion() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = l.local_addr().unwrap();
        let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo: 59972, hi: 59973 };
        let _held = TcpStream::connect(dst); // an unrelated flow
        let a = Reservation::in_slice(Proto::Tcp, &slice, dst).unwrap();
        let b = Reservation::in_slice(Proto::Tcp, &slice, dst).unwrap();
        assert_eq!((a.local().port(), b.local().port()), (59972, 59973));
        let e = Reservation::in_slice(Proto::Tcp, &slice, dst).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL));
    }

    #[test]
    fn udp_reservation_is_a_connected_socket_that_sends_nothing() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let local: SocketAddr = "127.0.0.2:59975".parse().unwrap();
        let r = Reservation::new(Proto::Udp, local, server.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 8];
        assert!(server.recv_from(&mut buf).is_err(), "nothing was sent");
        assert_eq!(r.proto(), Proto::Udp);
        let v6 = Reservation::new(Proto::Tcp, "[::1]:0".parse().unwrap(), "127.0.0.1:1".parse().unwrap());
        assert_eq!(v6.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
