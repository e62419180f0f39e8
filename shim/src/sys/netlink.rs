//! Round trips to the kernel over netlink (sock_diag look-ups, ctnetlink requests), shared by
//! `sys::diag` and `sys::conntrack`.
//!
//! A round trip is one `sendto` of one or more requests and one receive of their answers — the
//! kernel answers a sock_diag or ctnetlink request inside the `sendto` call, so the answers are
//! queued when it returns and are read without waiting (`recvmsg`, or `recvmmsg` for several):
//! with the two identity checks below, four syscalls, however many requests go in one datagram.
//!
//! Netlink sockets are never shared by two users at once (issue 8, item 7): a round trip takes
//! the process's idle socket of that protocol from a one-slot lock-free pool (or opens one), and
//! puts it back when done. Two threads, or a signal handler and the code it interrupted, always
//! use different sockets, so no lock is needed; a fork child never uses its parent's (the slot
//! carries the owner's pid, `sys::pid`, one load), and a socket is opened in the calling thread's
//! network namespace, close-on-exec, non-blocking and placed high. Whatever the program does to
//! fd numbers (dup2 over one, close_range), the shim
//! - checks that the number still holds its socket (device, inode: `fstat`) when it takes it
//!   (right before sending) and right before reading the answers, and never sends on, reads from
//!   or closes a number that changed — a program's socket never gets a request nor loses a
//!   datagram to the shim;
//! - never blocks on it (MSG_DONTWAIT: nothing there is an error, not a wait);
//! - accepts answers only from the kernel's netlink address, each with its request's sequence
//!   number (checked by the caller);
//! - uses raw syscalls (no cancellation point, no hook) for sendto, recvmsg/recvmmsg and close.
//!
//! What remains is the few hundred nanoseconds between a check and the syscall after it.
//! (sock_diag look-ups used to peek at the answer and then drop it with a second read, with the
//! identity check in between; the check right before one consuming read gives the same
//! guarantee with one syscall less.)

use crate::real;
use libc::c_int;
use std::sync::atomic::{
    AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

/// The most answers one round trip reads, and the room for each (a ctnetlink entry is ~200-300
/// bytes, an error acknowledgement echoes its request, a sock_diag answer is ~90 bytes).
pub const MAX_ANSWERS: usize = 3;
const ROOM: usize = 1024;

/// Why a round trip failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// socket(AF_NETLINK, ...) refused (a sandbox, a seccomp filter): the errno.
    Open(c_int),
    /// The exchange itself failed (the errno; EBADF: the number no longer holds our socket;
    /// EPROTO: an answer that is not the kernel's, or too few answers).
    Io(c_int),
}

impl Error {
    pub fn errno(self) -> c_int {
        match self {
            Error::Open(e) | Error::Io(e) => e,
        }
    }
}

/// The `N` answers of one round trip (1..=MAX_ANSWERS), each in its own aligned room (on the
/// stack: a placement may run on a signal handler's small stack, so only the rooms needed).
pub struct Answers<const N: usize> {
    buf: [[u64; ROOM / 8]; N],
    len: [usize; N],
    n: usize,
}

impl<const N: usize> Answers<N> {
    pub const fn new() -> Answers<N> {
        Answers { buf: [[0; ROOM / 8]; N], len: [0; N], n: 0 }
    }
    /// How many answers were read.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.n
    }
    /// Answer `i` (a netlink message), 8-aligned.
    pub fn get(&self, i: usize) -> &[u8] {
        let b = &self.buf[i];
        // SAFETY: `len[i]` ≤ ROOM bytes of this room were written by the kernel (or are zeros).
        unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<u8>(), self.len[i].min(ROOM)) }
    }
    /// The room of answer `i`, as u64 words (8-aligned reads of fixed structs).
    pub fn words(&self, i: usize) -> &[u64; ROOM / 8] {
        &self.buf[i]
    }
}

impl<const N: usize> Default for Answers<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Sequence numbers for requests (a distinct number per request costs nothing).
static SEQ: AtomicU32 = AtomicU32::new(1);

/// `n` consecutive sequence numbers; the first is returned.
pub fn seqs(n: u32) -> u32 {
    SEQ.fetch_add(n, Relaxed)
}

/// A slot being filled (its identity words are being written): left alone by takers.
const FILLING: u64 = u64::MAX;

/// One protocol's idle socket: the slot holds `pid << 32 | (fd + 1)` (0 = empty), with the
/// socket's identity beside it.
pub struct Pool {
    protocol: c_int,
    slot: AtomicU64,
    dev: AtomicU64,
    ino: AtomicU64,
}

pub static SOCK_DIAG: Pool = Pool::new(libc::NETLINK_SOCK_DIAG);
pub static NETFILTER: Pool = Pool::new(libc::NETLINK_NETFILTER);

/// The identity (device, inode) of what `fd` refers to.
pub fn identity(fd: c_int) -> Option<(u64, u64)> {
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

/// A socket taken for one round trip; given back on drop if the round trip went well (closed
/// otherwise, if the number is still ours).
pub(crate) struct Taken<'p> {
    pool: &'p Pool,
    pub(crate) fd: c_int,
    pub(crate) id: (u64, u64),
    pub(crate) ok: bool,
}

impl Pool {
    pub const fn new(protocol: c_int) -> Pool {
        Pool { protocol, slot: AtomicU64::new(0), dev: AtomicU64::new(0), ino: AtomicU64::new(0) }
    }

    /// The idle socket (checked to be ours just now), or a new one.
    pub(crate) fn take(&self) -> Result<Taken<'_>, Error> {
        let v = self.slot.load(Acquire);
        if v != 0 && v != FILLING {
            // The identity words before the slot is emptied: once it is 0, a thread putting its
            // socket back may overwrite them, and this socket would then fail its check below
            // and be neither used nor closed (a leaked descriptor).
            let id = (self.dev.load(Relaxed), self.ino.load(Relaxed));
            if self.slot.compare_exchange(v, 0, Acquire, Relaxed).is_ok() {
                let (owner, fd) = ((v >> 32) as i32, (v as u32 as c_int) - 1);
                if identity(fd) == Some(id) {
                    if owner == crate::sys::pid::get() {
                        return Ok(Taken { pool: self, fd, id, ok: false });
                    }
                    close_raw(fd); // the parent's, inherited through fork: this copy goes
                }
                // else: the program closed or reused the number: not ours any more
            }
        }
        self.open()
    }

    fn open(&self) -> Result<Taken<'_>, Error> {
        // SAFETY: a plain socket() call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                self.protocol,
            )
        };
        if fd < 0 {
            return Err(Error::Open(crate::errno::get()));
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
            Some(id) => Ok(Taken { pool: self, fd, id, ok: false }),
            None => Err(Error::Io(libc::EBADF)), // already taken from us: nothing of ours to close
        }
    }

    /// Close the idle socket (tests that change network namespace: it belongs to the old one).
    #[cfg(test)]
    pub fn discard_idle(&self) {
        if let Ok(t) = self.take() {
            drop(Taken { ok: false, ..t });
        }
    }

    /// One round trip: send `req` (one or more netlink messages) to the kernel and read `N`
    /// answers into `out`.
    pub fn exchange<const N: usize>(&self, req: &[u8], out: &mut Answers<N>) -> Result<(), Error> {
        let mut nl = self.take()?;
        let r = nl.exchange(req, out);
        nl.ok = r.is_ok();
        r
    }
}

impl Taken<'_> {
    /// The fd, if the number still refers to our socket.
    fn ours(&self) -> Result<c_int, Error> {
        if identity(self.fd) == Some(self.id) {
            Ok(self.fd)
        } else {
            Err(Error::Io(libc::EBADF))
        }
    }

    pub(crate) fn exchange<const N: usize>(&self, req: &[u8], out: &mut Answers<N>) -> Result<(), Error> {
        self.send(req)?;
        self.read(out)
    }

    /// Send `req` to the kernel on the socket checked to be ours when it was taken.
    fn send(&self, req: &[u8]) -> Result<(), Error> {
        // SAFETY: sockaddr_nl is plain data; all-zero is valid (nl_pid 0 = the kernel).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as u16;
        // Checked to be our socket when taken from the pool (or just opened): no syscall since.
        let fd = self.fd;
        // SAFETY: req and kernel are valid for their sizes; fd was checked to be our socket.
        // A raw syscall: not a cancellation point (glibc's sendto is), never through a hook.
        let n = unsafe {
            libc::syscall(
                libc::SYS_sendto,
                fd,
                req.as_ptr().cast::<libc::c_void>(),
                req.len(),
                libc::MSG_DONTWAIT,
                (&kernel as *const libc::sockaddr_nl).cast::<libc::sockaddr>(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(Error::Io(crate::errno::get()));
        }
        Ok(())
    }

    /// Read the answers: they were queued before sendto returned, so without waiting, after
    /// checking (again) that the number still holds our socket.
    fn read<const N: usize>(&self, out: &mut Answers<N>) -> Result<(), Error> {
        let fd = self.ours()?;
        receive(fd, out)
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let p = self.pool;
        // Claim the empty slot first, so that its identity words are ours to write.
        if self.ok && p.slot.compare_exchange(0, FILLING, Relaxed, Relaxed).is_ok() {
            p.dev.store(self.id.0, Relaxed);
            p.ino.store(self.id.1, Relaxed);
            let me = crate::sys::pid::get() as u32 as u64;
            p.slot.store(me << 32 | (self.fd as u32 as u64 + 1), Release);
            return;
        }
        if let Ok(fd) = self.ours() {
            close_raw(fd);
        }
    }
}

/// Read `N` queued datagrams from `fd` (one recvmsg, or one recvmmsg for several), without
/// waiting; each must come from the kernel's netlink address.
fn receive<const N: usize>(fd: c_int, out: &mut Answers<N>) -> Result<(), Error> {
    const { assert!(N >= 1 && N <= MAX_ANSWERS) };
    let expect = N;
    // SAFETY: sockaddr_nl, iovec and mmsghdr are plain data; the pointers set below point at
    // live buffers (`out`, `from`, `iov`) for the whole call.
    let mut from: [libc::sockaddr_nl; MAX_ANSWERS] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut iov: [libc::iovec; MAX_ANSWERS] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut mm: [libc::mmsghdr; MAX_ANSWERS] = unsafe { std::mem::zeroed() };
    for i in 0..expect {
        iov[i] = libc::iovec { iov_base: out.buf[i].as_mut_ptr().cast(), iov_len: ROOM };
        let h = &mut mm[i].msg_hdr;
        h.msg_name = (&mut from[i] as *mut libc::sockaddr_nl).cast();
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        h.msg_iov = &mut iov[i];
        h.msg_iovlen = 1;
    }
    let n = loop {
        // SAFETY: raw syscalls (not cancellation points, never hooked) on our socket with the
        // headers set up above.
        let n = unsafe {
            if expect == 1 {
                let r = libc::syscall(
                    libc::SYS_recvmsg,
                    fd,
                    &mut mm[0].msg_hdr as *mut libc::msghdr,
                    libc::MSG_DONTWAIT,
                );
                if r >= 0 {
                    mm[0].msg_len = r as u32;
                    1
                } else {
                    r
                }
            } else {
                libc::syscall(
                    libc::SYS_recvmmsg,
                    fd,
                    mm.as_mut_ptr(),
                    expect as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut::<libc::timespec>(),
                )
            }
        };
        if n < 0 && crate::errno::get() == libc::EINTR {
            continue;
        }
        break n;
    };
    if n < 0 {
        return Err(Error::Io(crate::errno::get()));
    }
    let n = n as usize;
    for i in 0..n {
        if from[i].nl_family != libc::AF_NETLINK as u16 || from[i].nl_pid != 0 {
            return Err(Error::Io(libc::EPROTO));
        }
        out.len[i] = mm[i].msg_len as usize;
    }
    out.n = n;
    if n < expect {
        return Err(Error::Io(libc::EPROTO));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    /// A sock_diag request for a TCP 4-tuple nobody holds: the kernel answers NLMSG_ERROR.
    fn diag_request(seq: u32) -> Vec<u8> {
        use portrange_lib::diag_wire::{ReqV2, Request, SockId, INET_DIAG_NOCOOKIE, SOCK_DIAG_BY_FAMILY};
        let req = Request {
            nlh: libc::nlmsghdr {
                nlmsg_len: std::mem::size_of::<Request>() as u32,
                nlmsg_type: SOCK_DIAG_BY_FAMILY,
                nlmsg_flags: libc::NLM_F_REQUEST as u16,
                nlmsg_seq: seq,
                nlmsg_pid: 0,
            },
            req: ReqV2 {
                family: libc::AF_INET as u8,
                protocol: libc::IPPROTO_TCP as u8,
                ext: 0,
                pad: 0,
                states: !0,
                id: SockId {
                    sport: 1u16.to_be(),
                    dport: 1u16.to_be(),
                    src: [u32::from_ne_bytes([127, 0, 0, 3]), 0, 0, 0],
                    dst: [u32::from_ne_bytes([127, 0, 0, 4]), 0, 0, 0],
                    ifindex: 0,
                    cookie: [INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE],
                },
            },
        };
        // SAFETY: Request is plain data of this size.
        unsafe {
            std::slice::from_raw_parts((&req as *const Request).cast::<u8>(), std::mem::size_of::<Request>())
        }
        .to_vec()
    }

    fn seq_of(a: &[u8]) -> u32 {
        u32::from_ne_bytes(a[8..12].try_into().unwrap())
    }

    #[test]
    fn several_requests_one_round_trip() {
        let pool = Pool::new(libc::NETLINK_SOCK_DIAG);
        let s = seqs(3);
        let mut req = diag_request(s);
        req.extend(diag_request(s + 1));
        req.extend(diag_request(s + 2));
        let mut a = Answers::<3>::new();
        pool.exchange(&req, &mut a).unwrap();
        assert_eq!(a.len(), 3);
        for i in 0..3 {
            assert_eq!(seq_of(a.get(i)), s + i as u32, "answers in order");
        }
        // The socket went back to the pool: the next round trip uses it.
        let t = pool.take().unwrap();
        assert_eq!(Some(t.id), identity(t.fd));
        drop(Taken { ok: false, ..t });
    }

    #[test]
    fn too_few_answers_is_an_error_and_the_socket_is_not_kept() {
        let pool = Pool::new(libc::NETLINK_SOCK_DIAG);
        let mut a = Answers::<2>::new();
        let s = seqs(1);
        assert_eq!(pool.exchange(&diag_request(s), &mut a), Err(Error::Io(libc::EPROTO)));
        assert_eq!(pool.slot.load(Relaxed), 0, "not put back");
    }

    #[test]
    fn threads_in_parallel() {
        static POOL: Pool = Pool::new(libc::NETLINK_SOCK_DIAG);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| {
                    let mut a = Answers::<1>::new();
                    for _ in 0..500 {
                        let s = seqs(1);
                        POOL.exchange(&diag_request(s), &mut a).unwrap();
                        assert_eq!(seq_of(a.get(0)), s);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_number_that_changed_is_neither_sent_on_nor_read_from() {
        let pool = Pool::new(libc::NETLINK_SOCK_DIAG);
        let mut a = Answers::<1>::new();
        pool.exchange(&diag_request(seqs(1)), &mut a).unwrap();
        let v = pool.slot.load(Relaxed);
        let fd = (v as u32 as c_int) - 1;
        // The program dup2()s its own UDP socket, with a datagram queued, over the idle one.
        let prog = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(b"xx", prog.local_addr().unwrap()).unwrap();
        // SAFETY: fd is the pooled socket's number; the test plays the program.
        assert_eq!(unsafe { libc::dup2(prog.as_raw_fd(), fd) }, fd);
        pool.exchange(&diag_request(seqs(1)), &mut a).unwrap(); // on a new socket
        let t = pool.take().unwrap();
        assert_ne!(t.fd, fd, "the changed number is never used again");
        drop(t);
        // The program's datagram is still there, and nothing was sent from its socket.
        let mut got = [0u8; 4];
        prog.set_nonblocking(true).unwrap();
        assert_eq!(prog.recv(&mut got).unwrap(), 2);
        assert!(prog.recv(&mut got).is_err(), "nothing else arrived");
        // The number is the program's: still open (not closed by the shim).
        assert!(identity(fd).is_some());
        // SAFETY: our duplicate of the test's socket.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn the_check_before_reading_protects_a_replaced_number() {
        // Taken and sent on, then the number changes before the answers are read: EBADF, the
        // program's datagram stays, and the number is not closed on drop. (Had it changed
        // before the send — the window between the check when taken and the sendto — a UDP
        // socket refuses a netlink address: EINVAL, nothing sent.)
        let pool = Pool::new(libc::NETLINK_SOCK_DIAG);
        let t = pool.take().unwrap();
        let prog = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(b"yy", prog.local_addr().unwrap()).unwrap();
        t.send(&diag_request(seqs(1))).unwrap();
        // SAFETY: t.fd is our socket's number; the test plays the program replacing it.
        assert_eq!(unsafe { libc::dup2(prog.as_raw_fd(), t.fd) }, t.fd);
        let mut a = Answers::<1>::new();
        assert_eq!(t.read(&mut a), Err(Error::Io(libc::EBADF)));
        let fd = t.fd;
        drop(t);
        let mut got = [0u8; 4];
        assert_eq!(prog.recv(&mut got).unwrap(), 2, "the datagram is still there");
        assert!(identity(fd).is_some(), "not closed");
        // SAFETY: our duplicate of the test's socket.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn a_parents_socket_is_never_used_by_a_fork_child() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::new(libc::NETLINK_SOCK_DIAG)));
        crate::sys::pid::init();
        let mut a = Answers::<1>::new();
        pool.exchange(&diag_request(seqs(1)), &mut a).unwrap();
        let parents = (pool.slot.load(Relaxed) as u32 as c_int) - 1;
        let parents_id = identity(parents).unwrap();
        // SAFETY: the child only makes syscalls and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // A new socket (it may get the same number: the parent's copy was closed first).
            let code = match pool.take() {
                Ok(t) if t.id == parents_id => 1,
                Ok(t) if identity(t.fd) == Some(t.id) => 0,
                Ok(_) => 2,
                Err(_) => 3,
            };
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(libc::WEXITSTATUS(status), 0);
        // The parent still has its socket.
        let t = pool.take().unwrap();
        assert_eq!(t.fd, parents);
    }
}
