//! NETLINK_SOCK_DIAG exact lookups: "which socket holds this 4-tuple?"
//!
//! One request (SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST only, no dump) with an `inet_diag_req_v2`
//! naming the 4-tuple; the answer is one `inet_diag_msg` or an NLMSG_ERROR (-ENOENT: nothing).
//! The id layout differs by protocol (kernel-facts, measured): for TCP `src` = local and `dst` =
//! remote; **for UDP `src` = remote and `dst` = local**. IPv4 flows — also those of v4-mapped
//! AF_INET6 sockets — are asked as AF_INET.
//!
//! Netlink sockets are never shared by two users at once (issue 8, item 7): a look-up takes an
//! idle one from a small lock-free pool (or opens one), and puts it back when done. Two threads,
//! or a signal handler and the code it interrupted, always use different sockets, so no lock
//! is needed; a fork child never uses its parent's (they carry the parent's pid), and a socket
//! is created in the calling thread's network namespace, close-on-exec and placed high. Whatever the program does to fd
//! numbers (dup2 over one, close_range), the shim
//! - checks the number still holds its socket (device, inode) when it takes it (right before
//!   sending), before dropping a read reply and before closing, and never uses (or closes) a
//!   number that changed;
//! - never blocks on it: the kernel answers a sock_diag request inside the `sendto` call, so the
//!   reply is read with MSG_DONTWAIT (nothing there = an error, not a wait);
//! - reads the reply with MSG_PEEK and accepts it only from the kernel's netlink address (a
//!   program's socket never yields one), then drops it from the queue of its own socket;
//! - uses raw syscalls (no cancellation point, no hook) for sendto, recvmsg and close.
//!
//! What remains is the few hundred nanoseconds between a check and the syscall after it.
//!
//! Without AF_NETLINK (a hardened service, a seccomp filter) `available()` turns false for the
//! process and a one-time warning says what that costs (`portrange::sockdiag::COST`).

use crate::real;
use libc::c_int;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{
    AtomicI32, AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

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
/// Sequence numbers (a fresh socket has only our request, but a distinct number costs nothing).
static SEQ: AtomicU32 = AtomicU32::new(1);

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

/// The identity (device, inode) of what `fd` refers to.
fn identity(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: fstat into a zeroed struct; any fd number is acceptable to fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

/// A raw `close`: not a cancellation point (glibc's `close` is), never through a hook.
fn close_raw(fd: c_int) {
    // SAFETY: closes a descriptor the caller checked to be our own socket.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// Idle netlink sockets, ready for the next look-up: each slot holds `pid << 32 | (fd + 1)`
/// (0 = empty), with the socket's identity beside it. A look-up takes one out with a
/// compare-exchange (so no two threads, and no signal handler and the code it interrupted, ever use one
/// socket at the same time), checks it, and puts it back when done. No lock; a fork child sees
/// its parent's pid on inherited entries and never uses them.
/// One slot: a process keeps at most one idle netlink socket (as many descriptors as before
/// the pool, whatever its threads did); a look-up that finds it taken opens one of its own.
const POOL: usize = 1;
/// A slot being filled (its identity words are being written): left alone by takers.
const FILLING: u64 = u64::MAX;
static SLOTS: [AtomicU64; POOL] = [const { AtomicU64::new(0) }; POOL];
static DEVS: [AtomicU64; POOL] = [const { AtomicU64::new(0) }; POOL];
static INOS: [AtomicU64; POOL] = [const { AtomicU64::new(0) }; POOL];

fn pid() -> i32 {
    crate::sys::pid::get()
}

/// A NETLINK_SOCK_DIAG socket for one look-up, taken from the pool (or opened), and given back
/// on drop if the look-up went well (closed otherwise, if the number is still ours).
struct Netlink {
    fd: c_int,
    id: (u64, u64),
    ok: bool,
}

impl Netlink {
    fn get() -> Result<Netlink, DiagError> {
        let me = pid();
        for i in 0..POOL {
            let v = SLOTS[i].load(Acquire);
            if v == 0 || v == FILLING {
                continue;
            }
            // The identity words before the slot is emptied: once it is 0, a thread putting its
            // socket back may overwrite them, and this socket would then fail its check below
            // and be neither used nor closed (a leaked descriptor).
            let id = (DEVS[i].load(Relaxed), INOS[i].load(Relaxed));
            if SLOTS[i].compare_exchange(v, 0, Acquire, Relaxed).is_err() {
                continue;
            }
            let (owner, fd) = ((v >> 32) as i32, (v as u32 as c_int) - 1);
            if identity(fd) != Some(id) {
                continue; // the program closed or reused the number: it is not ours any more
            }
            if owner != me {
                close_raw(fd); // the parent's socket, inherited through fork: this copy goes
                continue;
            }
            return Ok(Netlink { fd, id, ok: false });
        }
        Netlink::open()
    }

    fn open() -> Result<Netlink, DiagError> {
        if !available() {
            return Err(DiagError(UNAVAILABLE.load(Relaxed)));
        }
        // SAFETY: a plain socket() call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            let e = crate::errno::get();
            if portrange_lib::sockdiag::lasting(e) {
                mark_unavailable(e);
            }
            return Err(DiagError(e));
        }
        // Placed high, out of the way of the numbers the program's own descriptors get (a pool
        // miss is rare, so the extra dup is too).
        let floor = crate::sys::ownfd::high_floor() as libc::c_ulong;
        // SAFETY: F_DUPFD_CLOEXEC of our own new socket.
        let high = unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
        let fd = if high >= 0 {
            close_raw(fd);
            high
        } else {
            fd
        };
        match identity(fd) {
            Some(id) => Ok(Netlink { fd, id, ok: false }),
            None => Err(DiagError(libc::EBADF)), // already taken from us: nothing of ours to close
        }
    }

    /// The fd, if the number still refers to our socket.
    fn ours(&self) -> Result<c_int, DiagError> {
        if identity(self.fd) == Some(self.id) {
            Ok(self.fd)
        } else {
            Err(DiagError(libc::EBADF))
        }
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        if self.ok {
            let v = (pid() as u32 as u64) << 32 | (self.fd as u32 as u64 + 1);
            for i in 0..POOL {
                // Claim the empty slot first, so that its identity words are ours to write.
                if SLOTS[i].compare_exchange(0, FILLING, Relaxed, Relaxed).is_ok() {
                    DEVS[i].store(self.id.0, Relaxed);
                    INOS[i].store(self.id.1, Relaxed);
                    SLOTS[i].store(v, Release);
                    return;
                }
            }
        }
        if let Ok(fd) = self.ours() {
            close_raw(fd);
        }
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

/// Look up the socket that holds (`src`, `dst`) in the kernel's id layout for `protocol`.
fn lookup(
    subject: c_int,
    protocol: u8,
    src: SocketAddr,
    dst: SocketAddr,
    ifindex: u32,
) -> Result<Option<Found>, DiagError> {
    let _ = subject; // the look-up runs in the calling thread's network namespace
    let mut nl = Netlink::get()?;
    let r = ask(&nl, protocol, src, dst, ifindex);
    nl.ok = r.is_ok();
    r
}

/// Send the request on `nl` and read its answer.
fn ask(
    nl: &Netlink,
    protocol: u8,
    src: SocketAddr,
    dst: SocketAddr,
    ifindex: u32,
) -> Result<Option<Found>, DiagError> {
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
    // SAFETY: sockaddr_nl is plain data; all-zero is valid (nl_pid 0 = the kernel).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // Checked to be our socket when taken from the pool (or just opened): no syscall since.
    let fd = nl.fd;
    // SAFETY: req and kernel are valid for their sizes; fd was checked to be our socket.
    // A raw syscall: not a cancellation point (glibc's sendto is), never through a hook.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            (&req as *const Request).cast::<libc::c_void>(),
            std::mem::size_of::<Request>(),
            libc::MSG_DONTWAIT,
            (&kernel as *const libc::sockaddr_nl).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(DiagError(crate::errno::get()));
    }
    let mut buf = [0u64; 128]; // 1 KiB, aligned
    let n = peek(fd, &mut buf)?;
    {
        // The socket serves the next look-up too: drop this reply from its queue (checked to be
        // ours just before; MSG_TRUNC with no buffer reads nothing into memory).
        let fd = nl.ours()?;
        // SAFETY: a raw recvfrom with no buffer and no address on our own socket.
        unsafe {
            libc::syscall(
                libc::SYS_recvfrom,
                fd,
                std::ptr::null_mut::<libc::c_void>(),
                0usize,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut::<libc::sockaddr>(),
                std::ptr::null_mut::<libc::socklen_t>(),
            )
        };
    }
    parse_reply(&buf, n, seq)
}

/// Peek at the datagram queued on `fd`, without waiting and without consuming it; accepted only
/// if it came from the kernel's netlink address (a program's socket never yields one).
fn peek(fd: c_int, buf: &mut [u64; 128]) -> Result<usize, DiagError> {
    // SAFETY: sockaddr_nl is plain data.
    let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: std::mem::size_of_val(buf) };
    // SAFETY: msghdr is plain data; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_nl).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let n = loop {
        // The reply is queued before sendto returns: never wait for it.
        // SAFETY: msg points at valid buffers for its whole use.
        // A raw syscall: not a cancellation point (glibc's recvmsg is).
        let n = unsafe {
            libc::syscall(
                libc::SYS_recvmsg,
                fd,
                &mut msg as *mut libc::msghdr,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 && crate::errno::get() == libc::EINTR {
            continue;
        }
        break n;
    };
    if n < 0 {
        return Err(DiagError(crate::errno::get()));
    }
    if from.nl_family != libc::AF_NETLINK as u16 || from.nl_pid != 0 {
        return Err(DiagError(libc::EPROTO));
    }
    Ok(n as usize)
}

/// The answer in the first `n` bytes of `buf` to request `seq`.
fn parse_reply(buf: &[u64; 128], n: usize, seq: u32) -> Result<Option<Found>, DiagError> {
    if n < std::mem::size_of::<libc::nlmsghdr>() {
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

    #[test]
    fn no_descriptor_outlives_a_lookup() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = s.local_addr().unwrap();
        let f = udp(s.as_raw_fd(), local, "127.0.0.1:9".parse().unwrap(), 0).unwrap().unwrap();
        assert_eq!(Some(f.cookie), cookie(s.as_raw_fd()));
        let nl = Netlink::open().unwrap();
        let (fd, id) = (nl.fd, nl.id);
        drop(nl);
        assert_ne!(identity(fd), Some(id), "closed after use");
    }

    #[test]
    fn a_program_socket_never_answers_and_loses_nothing() {
        // Had the number become a program's UDP socket: its datagram is refused, not consumed,
        // and an empty one does not block.
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u64; 128];
        assert_eq!(peek(a.as_raw_fd(), &mut buf), Err(DiagError(libc::EAGAIN)));
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.send_to(b"xx", a.local_addr().unwrap()).unwrap();
        assert_eq!(peek(a.as_raw_fd(), &mut buf), Err(DiagError(libc::EPROTO)));
        let mut got = [0u8; 4];
        assert_eq!(a.recv(&mut got).unwrap(), 2, "the datagram is still there");
    }

    #[test]
    fn idle_sockets_are_reused_and_never_used_once_their_number_changes() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (fd, local) = (s.as_raw_fd(), s.local_addr().unwrap());
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(udp(fd, local, peer, 0).unwrap().is_some());
        // Two taken at once (two threads, or a signal handler): two sockets.
        let a = Netlink::get().unwrap();
        let b = Netlink::get().unwrap();
        assert_ne!(a.fd, b.fd);
        let (a_fd, a_id) = (a.fd, a.id);
        let mut a = a;
        a.ok = true;
        drop(a); // back in the pool
        drop(b); // not ok: closed
                 // The program dup2()s its own socket over the idle one's number: never used again.
                 // SAFETY: a_fd is the pooled socket's number; the test plays the program.
        unsafe { libc::dup2(fd, a_fd) };
        for _ in 0..POOL {
            let n = Netlink::get().unwrap();
            assert_ne!(n.id, a_id);
            assert_ne!(identity(n.fd), identity(fd));
        }
        // SAFETY: our duplicate of the test's socket.
        unsafe { libc::close(a_fd) };
        assert!(udp(fd, local, peer, 0).unwrap().is_some());
    }
}
