//! `sockaddr` ⇄ `SocketAddr`, and the few socket queries the shim makes.

use crate::real;
use libc::{c_int, c_void, sockaddr, sockaddr_in, sockaddr_in6, sockaddr_storage, socklen_t};
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// `struct sockaddr_in6` without `sin6_scope_id` (RFC 2133): the shortest AF_INET6 address the
/// kernel accepts (scope id 0).
pub const SIN6_LEN_RFC2133: usize = 24;

/// `process_vm_readv` was refused (a seccomp filter: container runtimes allow it only with
/// CAP_SYS_PTRACE): addresses are then read directly, as before.
static NO_VM_READV: AtomicBool = AtomicBool::new(false);

/// The readability probe was refused or answered oddly (a seccomp filter): `process_vm_readv`.
static NO_PROBE: AtomicBool = AtomicBool::new(false);

/// Whether the kernel can read 8 bytes at `at`: `rt_sigprocmask` with an invalid `how` copies
/// the new mask from user memory first — EFAULT where that memory is not readable, the kernel's
/// own check — and then refuses the `how` with EINVAL, changing nothing. `None`: the probe is not
/// usable in this process (another answer, e.g. a seccomp filter's).
fn probe8(at: *const u8) -> Option<bool> {
    // SAFETY: the kernel only reads `at` (fault-checked), with an invalid `how` it changes no
    // signal mask, and no old mask is written (NULL).
    let r = unsafe {
        libc::syscall(libc::SYS_rt_sigprocmask, -1 as c_int, at, std::ptr::null_mut::<c_void>(), 8usize)
    };
    match (r, crate::errno::get()) {
        (-1, libc::EINVAL) => Some(true),
        (-1, libc::EFAULT) => Some(false),
        _ => None,
    }
}

/// Whether every page of `[addr, addr + len)` (len >= 8) is readable: [`probe8`] at the start
/// and at the start of each further page the range touches (a page is readable as a whole) —
/// one system call for an address within one page.
fn probed(addr: *const u8, len: usize) -> Option<bool> {
    const PAGE: usize = 4096;
    let start = addr as usize;
    let last = start.checked_add(len - 1)? / PAGE;
    if !probe8(addr)? {
        return Some(false);
    }
    for p in start / PAGE + 1..=last {
        if !probe8((p * PAGE) as *const u8)? {
            return Some(false);
        }
    }
    Some(true)
}

/// Copy `buf.len()` bytes from `addr` the way the kernel would read them: `false` when the
/// memory is not readable (the kernel answers EFAULT, where reading it here would crash the
/// program). A probe with the kernel's own checks ([`probed`]) then a direct read; for fewer
/// than 8 bytes, or where the probe is refused, `process_vm_readv` on this very process, which
/// reads through the page tables with the same checks. (Between the probe and the read another
/// thread of the program could unmap the memory it is passing to this very call: that program
/// would crash where the kernel would have answered EFAULT.)
///
/// # Safety
/// `addr` may be any value; where both checks are refused, it must be readable for
/// `buf.len()` bytes (the shim's behaviour before this check existed).
unsafe fn copy_in(addr: *const u8, buf: &mut [u8]) -> bool {
    if addr.is_null() {
        return false;
    }
    if buf.len() >= 8 && !NO_PROBE.load(Relaxed) {
        let e0 = crate::errno::get();
        let ok = probed(addr, buf.len());
        crate::errno::set(e0);
        match ok {
            Some(true) => {
                // SAFETY: every page of the range was just found readable by the kernel.
                unsafe { std::ptr::copy_nonoverlapping(addr, buf.as_mut_ptr(), buf.len()) };
                return true;
            }
            Some(false) => return false,
            None => NO_PROBE.store(true, Relaxed),
        }
    }
    if !NO_VM_READV.load(Relaxed) {
        let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let remote = libc::iovec { iov_base: addr as *mut c_void, iov_len: buf.len() };
        let e0 = crate::errno::get();
        // The cached pid (no getpid syscall): in a vfork child it is the parent's, whose address
        // space the child shares, so the bytes read are the same (see `sys::pid`).
        let pid = crate::sys::pid::get();
        // SAFETY: the local iovec is our buffer; the remote one is only read, by the kernel.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        let e = crate::errno::get();
        crate::errno::set(e0);
        if n == buf.len() as isize {
            return true;
        }
        if n >= 0 || e == libc::EFAULT {
            return false;
        }
        // EPERM / ENOSYS: never again in this process.
        NO_VM_READV.store(true, Relaxed);
    }
    // SAFETY: the caller's contract for this case.
    unsafe { std::ptr::copy_nonoverlapping(addr, buf.as_mut_ptr(), buf.len()) };
    true
}

/// The address fields (`msg_name`, `msg_namelen`) of the program's `msghdr`, read the way the
/// kernel reads the whole header: `None` when it is NULL or not readable (the kernel answers
/// EFAULT; reading it directly would crash the program).
///
/// # Safety
/// None where the probe or `process_vm_readv` works; elsewhere `msg` must be null or a readable
/// `msghdr`.
pub unsafe fn msg_name(msg: *const libc::msghdr) -> Option<(*const sockaddr, socklen_t)> {
    if msg.is_null() {
        return None;
    }
    let mut buf = [0u8; size_of::<libc::msghdr>()];
    // SAFETY: the caller's contract (copy_in checks readability where it can).
    if !unsafe { copy_in(msg.cast(), &mut buf) } {
        return None;
    }
    // SAFETY: buf holds a byte copy of a msghdr (plain data: pointers and integers).
    let m: libc::msghdr = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    Some((m.msg_name.cast_const().cast(), m.msg_namelen))
}

/// Read an AF_INET / AF_INET6 address as the kernel would take it for connect/sendto/bind;
/// `None` when the kernel would refuse it or it is not an Internet address: NULL, unreadable
/// memory (EFAULT), shorter than `sockaddr_in` / the 24-byte RFC 2133 `sockaddr_in6` (EINVAL),
/// another family. The program's call then goes to the kernel untouched and gets its errno.
/// A `sockaddr_in6` of 24-27 bytes has no scope id (0), as in the kernel.
///
/// # Safety
/// None where the probe or `process_vm_readv` works (`addr` and `len` may be anything: the memory is read
/// with the kernel's checks); elsewhere `addr` must be null or readable for `len` bytes.
pub unsafe fn parse(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    // SAFETY: the caller's contract.
    unsafe { parse_with(addr, len, true) }
}

/// [`parse`] of a buffer the shim itself filled (getsockname, getpeername): read directly, no
/// checked read needed.
///
/// # Safety
/// `addr` points to `len` readable bytes.
unsafe fn parse_own(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    // SAFETY: the caller's contract.
    unsafe { parse_with(addr, len, false) }
}

/// # Safety
/// As [`parse`] when `checked`, as [`parse_own`] otherwise.
unsafe fn parse_with(addr: *const sockaddr, len: socklen_t, checked: bool) -> Option<SocketAddr> {
    let len = len as usize;
    if addr.is_null() || len < size_of::<libc::sa_family_t>() {
        return None;
    }
    let mut buf = [0u8; size_of::<sockaddr_in6>()];
    let n = len.min(buf.len());
    if checked {
        // SAFETY: any pointer is acceptable to copy_in.
        if !unsafe { copy_in(addr.cast(), &mut buf[..n]) } {
            return None;
        }
    } else {
        // SAFETY: the caller's contract: `n` <= `len` readable bytes.
        unsafe { std::ptr::copy_nonoverlapping(addr.cast::<u8>(), buf.as_mut_ptr(), n) };
    }
    if n < buf.len() {
        // The kernel reads sin6_scope_id only from a full sockaddr_in6: no partial scope id.
        buf[SIN6_LEN_RFC2133.min(n)..].fill(0);
    }
    // SAFETY: buf is a sockaddr_in6-sized, zero-padded copy; read_unaligned needs no alignment.
    let family = c_int::from(unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const libc::sa_family_t) });
    match family {
        libc::AF_INET if len >= size_of::<sockaddr_in>() => {
            // SAFETY: as above.
            let a = unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= SIN6_LEN_RFC2133 => {
            // SAFETY: as above; bytes past `len` are zero (scope id 0 for 24-27 bytes).
            let a = unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const sockaddr_in6) };
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

/// The family of a sockaddr, if `len` covers it and the memory is readable.
///
/// # Safety
/// As [`parse`].
pub unsafe fn family_of(addr: *const sockaddr, len: socklen_t) -> Option<c_int> {
    if addr.is_null() || (len as usize) < size_of::<libc::sa_family_t>() {
        return None;
    }
    // Up to 16 bytes, as many as the kernel would read: 8 or more take the cheap probe.
    let mut buf = [0u8; 16];
    let n = (len as usize).min(buf.len());
    // SAFETY: any pointer is acceptable to copy_in.
    unsafe { copy_in(addr.cast(), &mut buf[..n]) }
        .then(|| c_int::from(libc::sa_family_t::from_ne_bytes([buf[0], buf[1]])))
}

/// Would the kernel refuse `dst` (as parsed: `V4` came as AF_INET, `V6` as AF_INET6) on a socket
/// of `family`/`proto` for a connect or send? Then the call goes to the kernel untouched, which
/// answers with its own errno, and the shim neither binds nor logs. Measured and read from
/// `tcp_v4_connect`, `tcp_v6_connect`, `__ip6_datagram_connect`, `udp_sendmsg`, `udpv6_sendmsg`:
/// - an AF_INET6 address on an AF_INET socket: EAFNOSUPPORT;
/// - an AF_INET address on an AF_INET6 TCP socket: EINVAL (short) or EAFNOSUPPORT; on an
///   AF_INET6 UDP socket it is taken as IPv4, unless IPV6_V6ONLY (EAFNOSUPPORT / ENETUNREACH);
/// - a v4-mapped address on an IPV6_V6ONLY socket: ENETUNREACH.
///
/// `v6only` is asked only when it matters (an IPv4 destination on an AF_INET6 socket).
pub fn kernel_refuses(family: c_int, udp: bool, dst: SocketAddr, v6only: impl FnOnce() -> bool) -> bool {
    match (family, dst) {
        (libc::AF_INET, SocketAddr::V6(_)) => true,
        (libc::AF_INET6, SocketAddr::V4(_)) => !udp || v6only(),
        (libc::AF_INET6, SocketAddr::V6(a)) if a.ip().to_ipv4_mapped().is_some() => v6only(),
        _ => false,
    }
}

/// IPV6_V6ONLY of `fd`.
pub fn v6only(fd: c_int) -> bool {
    get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) == Some(1)
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
        parse_own(&st as *const _ as *const sockaddr, len).map(|a| (fam, a))
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
        parse_own(&st as *const _ as *const sockaddr, len)
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

    /// The probe answers as the kernel's own copy would: readable memory read, unmapped,
    /// PROT_NONE and page-straddling ranges refused, errno kept.
    #[test]
    fn copy_in_checks_like_the_kernel() {
        // SAFETY: test code: pages this test maps, protects and unmaps; copy_in takes any pointer.
        unsafe {
            let page = 4096;
            let m = libc::mmap(
                std::ptr::null_mut(),
                3 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            ) as *mut u8;
            assert_ne!(m as *mut c_void, libc::MAP_FAILED);
            for i in 0..3 * page {
                *m.add(i) = (i % 251) as u8;
            }
            assert_eq!(libc::mprotect(m.add(page).cast(), page, libc::PROT_NONE), 0);
            assert_eq!(libc::munmap(m.add(2 * page).cast(), page), 0);
            crate::errno::set(1234);
            let mut buf = [0u8; 28];
            // The last 28 bytes of the readable page.
            assert!(copy_in(m.add(page - 28), &mut buf));
            assert_eq!(buf[0], ((page - 28) % 251) as u8);
            assert_eq!(buf[27], ((page - 1) % 251) as u8);
            // Straddling into the PROT_NONE page, inside it, and in the unmapped one.
            assert!(!copy_in(m.add(page - 20), &mut buf));
            assert!(!copy_in(m.add(page + 8), &mut buf));
            assert!(!copy_in(m.add(2 * page + 8), &mut buf));
            assert!(!copy_in(std::ptr::null(), &mut buf));
            // Short reads go through process_vm_readv.
            let mut two = [0u8; 2];
            assert!(copy_in(m.add(page - 2), &mut two));
            assert!(!copy_in(m.add(page), &mut two));
            // A range over several pages: each page is probed.
            let mut big = [0u8; 5000];
            assert!(!copy_in(m, &mut big));
            assert_eq!(crate::errno::get(), 1234, "errno kept");
            assert!(!NO_PROBE.load(Relaxed), "the probe works here");
            libc::munmap(m.cast(), 2 * page);
        }
    }

    #[test]
    fn round_trip() {
        for (a, fam) in [
            ("192.0.2.1:80", libc::AF_INET),
            ("[2001:db8::1]:443", libc::AF_INET6),
            ("[fe80::1%3]:443", libc::AF_INET6),
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let raw = to_raw(a, fam);
            // SAFETY: test code: plain calls on sockets and buffers this test owns.
            assert_eq!(unsafe { parse(raw.ptr(), raw.len) }, Some(a));
        }
        // IPv4 on an AF_INET6 socket is v4-mapped.
        let raw = to_raw("192.0.2.1:80".parse().unwrap(), libc::AF_INET6);
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        let back = unsafe { parse(raw.ptr(), raw.len) }.unwrap();
        assert_eq!(back, "[::ffff:192.0.2.1]:80".parse().unwrap());
        assert_eq!(canonical(back), "192.0.2.1:80".parse().unwrap());
        // Too short or another family.
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        assert_eq!(unsafe { parse(raw.ptr(), 4) }, None);
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        assert_eq!(unsafe { parse(std::ptr::null(), 16) }, None);
    }

    #[test]
    fn lengths_the_kernel_accepts() {
        let a: SocketAddr = "[2001:db8::1%7]:443".parse().unwrap();
        let raw = to_raw(a, libc::AF_INET6);
        // RFC 2133 sockaddr_in6 (24 bytes, no scope id) up to the full 28.
        for len in 24..=27 {
            assert_eq!(
                // SAFETY: test code: plain calls on sockets and buffers this test owns.
                unsafe { parse(raw.ptr(), len) },
                Some("[2001:db8::1]:443".parse().unwrap()),
                "len {len}"
            );
        }
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        assert_eq!(unsafe { parse(raw.ptr(), 28) }, Some(a));
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        assert_eq!(unsafe { parse(raw.ptr(), 128) }, Some(a));
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        assert_eq!(unsafe { parse(raw.ptr(), 23) }, None);
        let v4 = to_raw("192.0.2.1:80".parse().unwrap(), libc::AF_INET);
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        assert_eq!(unsafe { parse(v4.ptr(), 15) }, None);
        // SAFETY: test code: plain calls on sockets and buffers this test owns.
        assert!(unsafe { parse(v4.ptr(), 16) }.is_some());
    }

    #[test]
    fn unreadable_memory_is_left_to_the_kernel() {
        // SAFETY: an inaccessible page of our own, unmapped at the end.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            crate::errno::set(1234);
            assert_eq!(parse(p as *const sockaddr, 16), None);
            assert_eq!(family_of(p as *const sockaddr, 16), None);
            assert_eq!(parse(std::ptr::dangling::<sockaddr>(), 28), None);
            assert!(msg_name(p as *const libc::msghdr).is_none());
            assert!(msg_name(std::ptr::null()).is_none());
            let sa = to_raw("192.0.2.1:80".parse().unwrap(), libc::AF_INET);
            let mut m: libc::msghdr = std::mem::zeroed();
            m.msg_name = sa.ptr() as *mut c_void;
            m.msg_namelen = 16;
            assert_eq!(msg_name(&m), Some((sa.ptr(), 16)));
            assert_eq!(crate::errno::get(), 1234, "errno untouched");
            libc::munmap(p, 4096);
        }
    }

    #[test]
    fn what_the_kernel_refuses() {
        let v4: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:80".parse().unwrap();
        let never = || -> bool { panic!("IPV6_V6ONLY asked where it does not matter") };
        assert!(kernel_refuses(libc::AF_INET, false, v6, never));
        assert!(!kernel_refuses(libc::AF_INET, true, v4, never));
        assert!(kernel_refuses(libc::AF_INET6, false, v4, || false));
        assert!(!kernel_refuses(libc::AF_INET6, true, v4, || false));
        assert!(kernel_refuses(libc::AF_INET6, true, v4, || true));
        assert!(kernel_refuses(libc::AF_INET6, false, mapped, || true));
        assert!(!kernel_refuses(libc::AF_INET6, false, mapped, || false));
        assert!(!kernel_refuses(libc::AF_INET6, false, v6, never));
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
