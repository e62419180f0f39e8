//! `sockaddr` ⇄ `SocketAddr`, and the few socket queries the shim makes.

use crate::real;
use libc::{c_int, c_void, sockaddr, sockaddr_in, sockaddr_in6, sockaddr_storage, socklen_t};
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Read an AF_INET / AF_INET6 address; `None` for other families or a short length.
///
/// # Safety
/// `addr` must be null or point to `len` readable bytes.
pub unsafe fn parse(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() || (len as usize) < size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: the caller passes a sockaddr valid for `len` bytes (checked >= this size above).
    match c_int::from(unsafe { (*addr).sa_family }) {
        libc::AF_INET if len as usize >= size_of::<sockaddr_in>() => {
            // SAFETY: the caller passes a sockaddr valid for `len` bytes (checked >= this size above).
            let a = unsafe { std::ptr::read_unaligned(addr as *const sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<sockaddr_in6>() => {
            // SAFETY: the caller passes a sockaddr valid for `len` bytes (checked >= this size above).
            let a = unsafe { std::ptr::read_unaligned(addr as *const sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The family of a sockaddr, if `len` covers it.
///
/// # Safety
/// As [`parse`].
pub unsafe fn family_of(addr: *const sockaddr, len: socklen_t) -> Option<c_int> {
    if addr.is_null() || (len as usize) < size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: the caller passes a sockaddr valid for `len` bytes (checked >= this size above).
    Some(c_int::from(unsafe { (*addr).sa_family }))
}

/// A sockaddr ready to hand to the kernel.
pub struct Raw {
    pub storage: sockaddr_storage,
    pub len: socklen_t,
}

impl Raw {
    pub fn ptr(&self) -> *const sockaddr {
        &self.storage as *const sockaddr_storage as *const sockaddr
    }
}

/// Encode `addr` for a socket of `family`: an IPv4 address on an AF_INET6 socket becomes
/// `::ffff:a.b.c.d`.
pub fn to_raw(addr: SocketAddr, family: c_int) -> Raw {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: sockaddr_storage = unsafe { zeroed() };
    let len = match (family, addr) {
        (libc::AF_INET, SocketAddr::V4(a)) => {
            let sin = sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut sockaddr_in, sin) };
            size_of::<sockaddr_in>()
        }
        (_, a) => {
            let (ip, flow, scope) = match a {
                SocketAddr::V4(a) => (a.ip().to_ipv6_mapped(), 0, 0),
                SocketAddr::V6(a) => (*a.ip(), a.flowinfo(), a.scope_id()),
            };
            let sin6 = sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: flow,
                sin6_addr: libc::in6_addr { s6_addr: ip.octets() },
                sin6_scope_id: scope,
            };
            // SAFETY: as above.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut sockaddr_in6, sin6) };
            size_of::<sockaddr_in6>()
        }
    };
    Raw { storage, len: len as socklen_t }
}

/// The socket's own family and local address (`0.0.0.0:0` / `[::]:0` when unbound).
pub fn local(fd: c_int) -> Option<(c_int, SocketAddr)> {
    // SAFETY: all-zero is a valid sockaddr_storage; getsockname writes at most `len` bytes.
    unsafe {
        let mut st: sockaddr_storage = zeroed();
        let mut len = size_of::<sockaddr_storage>() as socklen_t;
        if real::getsockname(fd, &mut st as *mut _ as *mut sockaddr, &mut len) != 0 {
            return None;
        }
        let fam = c_int::from(st.ss_family);
        parse(&st as *const _ as *const sockaddr, len).map(|a| (fam, a))
    }
}

/// The peer of a connected socket.
pub fn peer(fd: c_int) -> Option<SocketAddr> {
    // SAFETY: as in `local`.
    unsafe {
        let mut st: sockaddr_storage = zeroed();
        let mut len = size_of::<sockaddr_storage>() as socklen_t;
        if libc::getpeername(fd, &mut st as *mut _ as *mut sockaddr, &mut len) != 0 {
            return None;
        }
        parse(&st as *const _ as *const sockaddr, len)
    }
}

/// An integer socket option.
pub fn get_int(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = size_of::<c_int>() as socklen_t;
    // SAFETY: v is a c_int of `len` bytes.
    let r = unsafe { real::getsockopt(fd, level, name, &mut v as *mut c_int as *mut c_void, &mut len) };
    (r == 0).then_some(v)
}

/// Set an integer-sized socket option; `Err(errno)` on failure.
pub fn set_u32(fd: c_int, level: c_int, name: c_int, v: u32) -> Result<(), c_int> {
    // SAFETY: v is 4 readable bytes.
    let r = unsafe {
        real::setsockopt(fd, level, name, &v as *const u32 as *const c_void, size_of::<u32>() as socklen_t)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(crate::errno::get())
    }
}

/// `bind` through the real function; `Err(errno)` on failure.
pub fn bind(fd: c_int, addr: SocketAddr, family: c_int) -> Result<(), c_int> {
    let raw = to_raw(addr, family);
    // SAFETY: raw holds a valid sockaddr of raw.len bytes.
    if unsafe { real::bind(fd, raw.ptr(), raw.len) } == 0 {
        Ok(())
    } else {
        Err(crate::errno::get())
    }
}

/// The IP as seen for slice matching: v4-mapped addresses are IPv4.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(crate::config::canonical(a.ip()), a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for (a, fam) in [
            ("192.0.2.1:80", libc::AF_INET),
            ("[2001:db8::1]:443", libc::AF_INET6),
            ("[fe80::1%3]:443", libc::AF_INET6),
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let raw = to_raw(a, fam);
            assert_eq!(unsafe { parse(raw.ptr(), raw.len) }, Some(a));
        }
        // IPv4 on an AF_INET6 socket is v4-mapped.
        let raw = to_raw("192.0.2.1:80".parse().unwrap(), libc::AF_INET6);
        let back = unsafe { parse(raw.ptr(), raw.len) }.unwrap();
        assert_eq!(back, "[::ffff:192.0.2.1]:80".parse().unwrap());
        assert_eq!(canonical(back), "192.0.2.1:80".parse().unwrap());
        // Too short or another family.
        assert_eq!(unsafe { parse(raw.ptr(), 4) }, None);
        assert_eq!(unsafe { parse(std::ptr::null(), 16) }, None);
    }

    #[test]
    fn local_of_a_real_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd;
        let (fam, a) = local(l.as_raw_fd()).unwrap();
        assert_eq!(fam, libc::AF_INET);
        assert_eq!(a, l.local_addr().unwrap());
        assert_eq!(get_int(l.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL), Some(libc::IPPROTO_TCP));
    }
}
