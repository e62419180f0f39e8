//! NETLINK_SOCK_DIAG exact lookups: "which socket holds this 4-tuple?"
//!
//! One request (SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST only, no dump) with an `inet_diag_req_v2`
//! naming the 4-tuple; the answer is one `inet_diag_msg` or an NLMSG_ERROR (-ENOENT: nothing).
//! The id layout differs by protocol (kernel-facts, measured): for TCP `src` = local and `dst` =
//! remote; **for UDP `src` = remote and `dst` = local**. IPv4 flows — also those of v4-mapped
//! AF_INET6 sockets — are asked as AF_INET.
//!
//! The round trip (the process's idle NETLINK_SOCK_DIAG socket, its identity checks, raw
//! syscalls, no waiting) is `sys::netlink`'s: a look-up costs fstat, sendto, fstat, recvmsg.
//!
//! Without AF_NETLINK (a hardened service, a seccomp filter) `available()` turns false for the
//! process and a one-time warning says what that costs (`portrange::sockdiag::COST`).

use crate::real;
use crate::sys::netlink::{self, Answers};
use libc::c_int;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};

use portrange_lib::diag_wire::{DiagMsg, ReqV2, Request, SockId, INET_DIAG_NOCOOKIE, SOCK_DIAG_BY_FAMILY};
pub const TCP_TIME_WAIT: u8 = 6;

/// The socket found for a 4-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub cookie: u64,
    pub state: u8,
    pub inode: u32,
}

/// A lookup failed for a reason other than "no such socket".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiagError(pub c_int);

/// 0 while sock_diag is usable; otherwise the errno that socket() gave (a sandbox).
static UNAVAILABLE: AtomicI32 = AtomicI32::new(0);

/// Whether look-ups can be made in this process (false once socket(AF_NETLINK) was refused).
pub fn available() -> bool {
    UNAVAILABLE.load(Relaxed) == 0
}

/// Record that sock_diag cannot be used (errno `e`), with a one-time warning.
pub fn mark_unavailable(e: c_int) {
    if UNAVAILABLE.swap(e, Relaxed) == 0 {
        log::warn!(
            "sock_diag is unavailable (socket(AF_NETLINK, NETLINK_SOCK_DIAG): {}): {}",
            std::io::Error::from_raw_os_error(e),
            portrange_lib::sockdiag::COST
        );
    }
}

/// Probe once at initialisation (a sandbox applied before exec is known from the start).
pub fn probe() {
    if let Err(e) = portrange_lib::sockdiag::probe() {
        mark_unavailable(e);
    }
}

fn words(ip: IpAddr) -> [u32; 4] {
    match crate::config::canonical(ip) {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
    }
}

/// Look up the socket that holds (`src`, `dst`) in the kernel's id layout for `protocol`: one
/// round trip on the process's idle NETLINK_SOCK_DIAG socket.
fn lookup(
    subject: c_int,
    protocol: u8,
    src: SocketAddr,
    dst: SocketAddr,
    ifindex: u32,
) -> Result<Option<Found>, DiagError> {
    let _ = subject; // the look-up runs in the calling thread's network namespace
    if !available() {
        return Err(DiagError(UNAVAILABLE.load(Relaxed)));
    }
    let seq = netlink::seqs(1);
    let req = request(seq, protocol, src, dst, ifindex);
    // SAFETY: Request is plain data (repr(C), no padding the kernel reads) of this size.
    let bytes = unsafe {
        std::slice::from_raw_parts((&req as *const Request).cast::<u8>(), std::mem::size_of::<Request>())
    };
    let mut a = Answers::<1>::new();
    match netlink::SOCK_DIAG.exchange(bytes, &mut a) {
        Ok(()) => parse_reply(a.words(0), a.get(0).len(), seq),
        Err(netlink::Error::Open(e)) => {
            if portrange_lib::sockdiag::lasting(e) {
                mark_unavailable(e);
            }
            Err(DiagError(e))
        }
        Err(netlink::Error::Io(e)) => Err(DiagError(e)),
    }
}

/// The SOCK_DIAG_BY_FAMILY request for one 4-tuple.
fn request(seq: u32, protocol: u8, src: SocketAddr, dst: SocketAddr, ifindex: u32) -> Request {
    let family = if crate::config::canonical(dst.ip()).is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    Request {
        nlh: libc::nlmsghdr {
            nlmsg_len: std::mem::size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: libc::NLM_F_REQUEST as u16,
            nlmsg_seq: seq,
            nlmsg_pid: 0,
        },
        req: ReqV2 {
            family: family as u8,
            protocol,
            ext: 0,
            pad: 0,
            states: !0,
            id: SockId {
                sport: src.port().to_be(),
                dport: dst.port().to_be(),
                src: words(src.ip()),
                dst: words(dst.ip()),
                ifindex,
                cookie: [INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE],
            },
        },
    }
}

/// The answer in the first `n` bytes of `buf` to request `seq`.
fn parse_reply(buf: &[u64], n: usize, seq: u32) -> Result<Option<Found>, DiagError> {
    if n < std::mem::size_of::<libc::nlmsghdr>() || n > std::mem::size_of_val(buf) {
        return Err(DiagError(libc::EPROTO));
    }
    // SAFETY: n >= header size; buf is 8-aligned.
    let hdr: libc::nlmsghdr = unsafe { std::ptr::read(buf.as_ptr().cast()) };
    if hdr.nlmsg_seq != seq {
        return Err(DiagError(libc::EPROTO));
    }
    let body = std::mem::size_of::<libc::nlmsghdr>();
    if hdr.nlmsg_type == libc::NLMSG_ERROR as u16 {
        if n < body + 4 {
            return Err(DiagError(libc::EPROTO));
        }
        // SAFETY: an nlmsgerr starts with an i32 error right after the header (length checked).
        let err: i32 = unsafe { std::ptr::read_unaligned((buf.as_ptr() as *const u8).add(body).cast()) };
        return match -err {
            0 | libc::ENOENT => Ok(None),
            e => Err(DiagError(e)),
        };
    }
    if hdr.nlmsg_type != SOCK_DIAG_BY_FAMILY || n < body + std::mem::size_of::<DiagMsg>() {
        return Err(DiagError(libc::EPROTO));
    }
    // SAFETY: checked length; read_unaligned for the body.
    let msg: DiagMsg = unsafe { std::ptr::read_unaligned((buf.as_ptr() as *const u8).add(body).cast()) };
    Ok(Some(Found {
        cookie: u64::from(msg.id.cookie[0]) | (u64::from(msg.id.cookie[1]) << 32),
        state: msg.state,
        inode: msg.inode,
    }))
}

/// The TCP socket holding `local` → `remote` (ESTABLISHED, SYN_SENT, TIME_WAIT, ...), if any.
/// `subject`: a socket of the program in the namespace to ask about.
pub fn tcp(subject: c_int, local: SocketAddr, remote: SocketAddr) -> Result<Option<Found>, DiagError> {
    lookup(subject, libc::IPPROTO_TCP as u8, local, remote, 0)
}

/// The UDP socket that would receive a datagram from `remote` to `local` (an exact connected
/// match beats an unconnected one on that port). `ifindex`: the device a socket is bound to.
pub fn udp(
    subject: c_int,
    local: SocketAddr,
    remote: SocketAddr,
    ifindex: u32,
) -> Result<Option<Found>, DiagError> {
    lookup(subject, libc::IPPROTO_UDP as u8, remote, local, ifindex)
}

/// SO_COOKIE of a socket (assigned on first ask).
pub fn cookie(fd: c_int) -> Option<u64> {
    let mut v: u64 = 0;
    let mut len = 8 as libc::socklen_t;
    // SAFETY: v is 8 writable bytes.
    let r = unsafe {
        real::getsockopt(fd, libc::SOL_SOCKET, libc::SO_COOKIE, (&mut v as *mut u64).cast(), &mut len)
    };
    (r == 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsRawFd;

    #[test]
    fn tcp_exact_lookup() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (local, remote) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        let found = tcp(c.as_raw_fd(), local, remote).unwrap().expect("established socket found");
        assert_eq!(found.cookie, cookie(c.as_raw_fd()).unwrap());
        assert_eq!(found.state, 1); // TCP_ESTABLISHED
                                    // A free 4-tuple.
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(tcp(c.as_raw_fd(), local, other).unwrap(), None);
    }

    #[test]
    fn tcp_v4_mapped_is_asked_as_ipv4() {
        let l = TcpListener::bind("[::]:0").unwrap(); // dual-stack
        let port = l.local_addr().unwrap().port();
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mapped = |a: SocketAddr| {
            SocketAddr::new(std::net::Ipv4Addr::from([127, 0, 0, 1]).to_ipv6_mapped().into(), a.port())
        };
        let (local, remote) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        assert!(tcp(c.as_raw_fd(), mapped(local), mapped(remote)).unwrap().is_some());
    }

    #[test]
    fn udp_id_is_swapped_and_connected_wins() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let unconnected = UdpSocket::bind("127.0.0.2:0").unwrap();
        let local = unconnected.local_addr().unwrap();
        let remote = server.local_addr().unwrap();
        let f = udp(server.as_raw_fd(), local, remote, 0).unwrap().expect("unconnected owner found");
        assert_eq!(f.cookie, cookie(unconnected.as_raw_fd()).unwrap());
        // Asked with the TCP layout (src = local), the kernel answers for the other end: the
        // server's socket, not ours.
        let f = lookup(server.as_raw_fd(), libc::IPPROTO_UDP as u8, local, remote, 0).unwrap().unwrap();
        assert_eq!(f.cookie, cookie(server.as_raw_fd()).unwrap());
        // A connected socket on the same port (SO_REUSEADDR on both) wins for its peer.
        let a = socket2_reuse(local);
        let b = socket2_reuse(local);
        assert!(a.is_some() && b.is_some());
    }

    /// Two SO_REUSEADDR UDP sockets on one port, the second connected: the lookup returns it.
    fn socket2_reuse(_at: SocketAddr) -> Option<()> {
        // SAFETY: test sockets created and closed here; valid sockaddrs from addr::to_raw.
        unsafe {
            let mk = || {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                crate::sys::addr::set_u32(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).unwrap();
                fd
            };
            let (x, y) = (mk(), mk());
            let at: SocketAddr = "127.0.0.2:59920".parse().unwrap();
            crate::sys::addr::bind(x, at, libc::AF_INET).ok()?;
            crate::sys::addr::bind(y, at, libc::AF_INET).ok()?;
            let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
            let raw = crate::sys::addr::to_raw(peer, libc::AF_INET);
            assert_eq!(real::connect(y, raw.ptr(), raw.len), 0);
            let f = udp(x, at, peer, 0).unwrap().unwrap();
            assert_eq!(f.cookie, cookie(y).unwrap());
            let other: SocketAddr = "127.0.0.1:10".parse().unwrap();
            let f = udp(x, at, other, 0).unwrap().unwrap();
            assert_eq!(f.cookie, cookie(x).unwrap(), "others reach the unconnected one");
            libc::close(x);
            libc::close(y);
        }
        Some(())
    }

    #[test]
    fn threads_look_up_in_parallel() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (local, remote) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        let fd = c.as_raw_fd();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        assert!(tcp(fd, local, remote).unwrap().is_some());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
