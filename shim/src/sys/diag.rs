//! NETLINK_SOCK_DIAG exact lookups: "which socket holds this 4-tuple?"
//!
//! One request (SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST only, no dump) with an `inet_diag_req_v2`
//! naming the 4-tuple; the answer is one `inet_diag_msg` or an NLMSG_ERROR (-ENOENT: nothing).
//! The id layout differs by protocol (kernel-facts, measured): for TCP `src` = local and `dst` =
//! remote; **for UDP `src` = remote and `dst` = local**. IPv4 flows — also those of v4-mapped
//! AF_INET6 sockets — are asked as AF_INET.
//!
//! The netlink socket is one of the shim's own descriptors: close-on-exec, placed high, checked
//! before each use, one per process (re-opened after fork: a shared one would interleave the
//! parent's and the child's replies) and per network namespace (re-opened when the socket being
//! placed lives in another one). Threads take turns on it (a request and its reply under one
//! lock): a thread that read another thread's reply would leave that thread waiting forever.

use crate::real;
use crate::sys::ownfd::OwnFd;
use libc::c_int;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::Relaxed};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_NOCOOKIE: u32 = !0;
const SO_NETNS_COOKIE: c_int = 71;
pub const TCP_TIME_WAIT: u8 = 6;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: u16, // network order
    dport: u16,
    src: [u32; 4], // network order
    dst: [u32; 4],
    ifindex: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    nlh: libc::nlmsghdr,
    req: ReqV2,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

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

static NL: OwnFd = OwnFd::new();
/// The process and network namespace NL was opened for.
static NL_PID: AtomicI32 = AtomicI32::new(0);
static NL_NETNS: AtomicU64 = AtomicU64::new(0);
static SEQ: AtomicU32 = AtomicU32::new(1);
/// The lock: the pid of the process whose thread holds it, or 0. Keyed by pid, so a fork while
/// another thread held it leaves the child's copy free (that thread does not exist there).
static LOCK: AtomicI32 = AtomicI32::new(0);

struct Turn;

impl Turn {
    fn take() -> Turn {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let mut spins = 0u32;
        loop {
            let cur = LOCK.load(Relaxed);
            if (cur == 0 || cur != pid)
                && LOCK.compare_exchange(cur, pid, std::sync::atomic::Ordering::Acquire, Relaxed).is_ok()
            {
                return Turn;
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        LOCK.store(0, std::sync::atomic::Ordering::Release);
    }
}

/// The network namespace cookie of a socket (Linux 5.14+; 0 if unknown).
fn netns_of(fd: c_int) -> u64 {
    let mut v: u64 = 0;
    let mut len = 8 as libc::socklen_t;
    // SAFETY: v is 8 writable bytes.
    let r = unsafe {
        real::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, (&mut v as *mut u64).cast(), &mut len)
    };
    if r == 0 {
        v
    } else {
        0
    }
}

/// The netlink socket for lookups about `subject` (a socket of the program): this process's,
/// in `subject`'s network namespace.
fn netlink(subject: c_int) -> Result<c_int, DiagError> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let want_ns = netns_of(subject);
    if let Some(fd) = NL.get() {
        if NL_PID.load(Relaxed) == pid && (want_ns == 0 || NL_NETNS.load(Relaxed) == want_ns) {
            return Ok(fd);
        }
        // Another namespace, or the parent's socket inherited through fork: this process's copy
        // is closed (the parent's own descriptor is not affected) and a new one opened.
        NL.close();
    }
    // SAFETY: a plain socket() call.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG)
    };
    if fd < 0 {
        return Err(DiagError(crate::errno::get()));
    }
    // A reply that never comes (it cannot, but) must not hang the program's connect.
    let tv = libc::timeval { tv_sec: 1, tv_usec: 0 };
    // SAFETY: tv is a valid timeval.
    unsafe {
        real::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if !NL.adopt(fd) {
        return Err(DiagError(libc::EBADF));
    }
    let fd = NL.get().ok_or(DiagError(libc::EBADF))?;
    NL_PID.store(pid, Relaxed);
    NL_NETNS.store(if want_ns != 0 { want_ns } else { netns_of(fd) }, Relaxed);
    Ok(fd)
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

/// Look up the socket that holds (`src`, `dst`) in the kernel's id layout for `protocol`.
fn lookup(
    subject: c_int,
    protocol: u8,
    src: SocketAddr,
    dst: SocketAddr,
    ifindex: u32,
) -> Result<Option<Found>, DiagError> {
    let _turn = Turn::take();
    let nl = netlink(subject)?;
    let family = if crate::config::canonical(dst.ip()).is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let seq = SEQ.fetch_add(1, Relaxed);
    let req = Request {
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
    };
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: req and kernel are valid for their sizes.
    let n = unsafe {
        real::sendto(
            nl,
            (&req as *const Request).cast(),
            std::mem::size_of::<Request>(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(DiagError(crate::errno::get()));
    }
    let mut buf = [0u64; 128]; // 1 KiB, aligned
    loop {
        // SAFETY: buf is writable for its size.
        let n = unsafe { libc::recv(nl, buf.as_mut_ptr().cast(), std::mem::size_of_val(&buf), 0) };
        if n < 0 {
            let e = crate::errno::get();
            if e == libc::EINTR {
                continue;
            }
            return Err(DiagError(e));
        }
        let n = n as usize;
        if n < std::mem::size_of::<libc::nlmsghdr>() {
            return Err(DiagError(libc::EPROTO));
        }
        // SAFETY: n >= header size; buf is 8-aligned.
        let hdr: libc::nlmsghdr = unsafe { std::ptr::read(buf.as_ptr().cast()) };
        if hdr.nlmsg_seq != seq {
            continue; // a stale answer to an earlier, interrupted request
        }
        let body = std::mem::size_of::<libc::nlmsghdr>();
        if hdr.nlmsg_type == libc::NLMSG_ERROR as u16 {
            // SAFETY: an nlmsgerr starts with an i32 error right after the header.
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
        return Ok(Some(Found {
            cookie: u64::from(msg.id.cookie[0]) | (u64::from(msg.id.cookie[1]) << 32),
            state: msg.state,
            inode: msg.inode,
        }));
    }
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
    fn threads_take_turns() {
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

    #[test]
    fn one_netlink_socket_reused() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = netlink(s.as_raw_fd()).unwrap();
        let b = netlink(s.as_raw_fd()).unwrap();
        assert_eq!(a, b);
        assert!(a >= 3);
    }
}
