//! ctnetlink for placement (seed 004): a 4-tuple that a forwarded, SNATed flow holds in
//! conntrack is free for a socket, and a socket connected over it is silently NATed to another
//! source port — outside the slice. Two checks, each called at one point of a strategy:
//!
//! - [`reserve`] before the connect: a CT_GET of the would-be reply tuple — this 4-tuple's own
//!   stale entry (same original tuple, not NATed: an earlier flow of ours) lets the connect go
//!   ahead, anyone else's means "held"; when nobody answers, IPCTNL_MSG_CT_NEW (create|excl) of
//!   the flow's original and reply tuples with a short timeout (race-free: EEXIST = held; the
//!   connect's first packet then finds this entry and keeps its addresses). In `verify`-only
//!   mode, look-ups only (racy; verification closes the race).
//! - [`Reservation::settle`] after the connect: the reservation is deleted where the connect did
//!   not happen; with verification (unless this attempt created the entry), the flow's own entry
//!   is looked up and a flow whose source was rewritten is aborted (RST on close), so the
//!   strategy places it again on another port.
//!
//! The plan (reserve, verify, both, neither) is decided once per process ([`init`]); while it is
//! off, both calls are one atomic load. The netlink socket is handled as in `sys::diag`.

use crate::real;
use crate::stats::{self, C};
use libc::c_int;
use portrange_lib::conntrack::{self as ct, Answer, Entry, Plan, Tuple};
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicU8,
    Ordering::{Acquire, Relaxed, Release},
};

/// How long an entry made for a connect lives unless packets refresh it: TCP's SYN does at once
/// (SYN_SENT timeout); a UDP socket may connect some time before its first datagram.
const TIMEOUT_TCP_S: u32 = 10;
const TIMEOUT_UDP_S: u32 = 30;

const RESERVE: u8 = 1;
const VERIFY: u8 = 2;
static PLAN: AtomicU8 = AtomicU8::new(0);

/// Set the process's plan (the constructor, once).
pub fn init(plan: Plan) {
    PLAN.store((u8::from(plan.reserve) * RESERVE) | (u8::from(plan.verify) * VERIFY), Relaxed);
}

/// Probe ctnetlink on a throw-away socket (the constructor).
pub fn probe() -> ct::Netlink {
    ct::probe()
}

/// The 4-tuple is held in conntrack by another flow: try another port.
#[derive(Debug, PartialEq, Eq)]
pub struct Held;

/// Conntrack rewrote the flow's source to this address; the connection was aborted.
#[derive(Debug, PartialEq, Eq)]
pub struct Rewritten(pub SocketAddr);

/// What [`reserve`] did for one attempt; [`Reservation::settle`] finishes it. Plain data (no
/// destructor): it lives across the program's connect, which a thread cancellation may unwind.
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct Reservation {
    tuple: Tuple,
    plan: u8,
    /// This attempt created the entry (to delete if the connect does not happen).
    made: bool,
}

/// Claim `local` → `dst` (IPPROTO_TCP/UDP `proto`) in conntrack (of the calling thread's network
/// namespace) before connecting a socket over it.
pub fn reserve(proto: c_int, local: SocketAddr, dst: SocketAddr) -> Result<Reservation, Held> {
    let plan = PLAN.load(Relaxed);
    let tuple = Tuple::new(proto as u8, local, dst);
    let mut r = Reservation { tuple, plan, made: false };
    if plan == 0 {
        return Ok(r);
    }
    let held = |by: &str| {
        stats::bump(C::conntrack_held);
        log::debug!("{local} → {dst}: 4-tuple held in conntrack{by}; another port");
        Err(Held)
    };
    // Who answers to our reply tuple? A busy client mostly finds its own stale entry of this
    // 4-tuple (an earlier flow, not NATed): then the connect goes ahead on it (and is verified).
    match ask(&mut ct::get_request(0, &tuple.inverse(), true)) {
        Ok(Answer::Entry(e)) if is_own(&e, &tuple) => return Ok(r),
        Ok(Answer::Entry(e)) => return held(&format!(" by {} → {}", e.orig.src, e.orig.dst)),
        Ok(Answer::Status(libc::ENOENT)) => {}
        other => trouble("look-up", other),
    }
    if plan & RESERVE != 0 {
        // Nobody: reserve both tuples. EEXIST now is a flow that came in between, or an entry of
        // this very 4-tuple that was NATed (a rewritten flow of ours, not yet expired).
        let timeout = if proto == libc::IPPROTO_TCP { TIMEOUT_TCP_S } else { TIMEOUT_UDP_S };
        match ask(&mut ct::new_request(0, &tuple, timeout)) {
            Ok(Answer::Status(0)) => {
                stats::bump(C::conntrack_reserved);
                r.made = true;
            }
            Ok(Answer::Status(libc::EEXIST)) => return held(""),
            other => trouble("create", other),
        }
    } else if let Ok(Answer::Entry(e)) = ask(&mut ct::get_request(0, &tuple, false)) {
        // Verify only: an entry of this very 4-tuple that was NATed would take the flow with it.
        if !is_own(&e, &tuple) {
            return held(" (NATed)");
        }
    }
    Ok(r)
}

impl Reservation {
    /// Nothing reserved (the state before a first attempt).
    pub const NONE: Reservation = Reservation {
        tuple: Tuple {
            proto: 0,
            src: SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)),
            dst: SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)),
        },
        plan: 0,
        made: false,
    };

    /// The attempt will not happen: give the entry back.
    pub fn release(self) {
        if self.made {
            let _ = ask(&mut ct::delete_request(0, &self.tuple));
        }
    }

    /// The attempt on `fd` returned `ret` with `errno`. A connect that did not happen gives its
    /// entry back; a verified one that conntrack rewrote is aborted (`Err`: the caller leaves
    /// `fd` for a fresh socket and tries another port).
    pub fn settle(self, fd: c_int, ret: isize, errno: c_int) -> Result<(), Rewritten> {
        if self.plan == 0 {
            return Ok(());
        }
        // EINPROGRESS, EINTR, EALREADY: the connect goes on (its SYN left); keep the entry.
        if ret < 0 && !matches!(errno, libc::EINPROGRESS | libc::EINTR | libc::EALREADY) {
            if self.made {
                let _ = ask(&mut ct::delete_request(0, &self.tuple));
            }
            return Ok(());
        }
        // An entry this attempt created (create|excl) has fixed, unrewritten tuples, and the
        // connect's first packet found it: there is nothing to verify.
        if self.plan & VERIFY == 0 || self.made {
            return Ok(());
        }
        let entry = match ask(&mut ct::get_request(0, &self.tuple, false)) {
            Ok(Answer::Entry(e)) => e,
            // Not tracked (a UDP connect sends nothing; an untracked flow cannot be rewritten).
            Ok(Answer::Status(libc::ENOENT)) => return Ok(()),
            other => {
                trouble("verification", other);
                return Ok(());
            }
        };
        let Some(real) = entry.rewritten_source() else { return Ok(()) };
        // Abort: a zero linger makes the close (or the swap that replaces it) send a RST.
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: fd is the strategy's socket; linger is a valid struct of that size.
        unsafe {
            real::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        stats::bump(C::conntrack_rewrites);
        log::warn!(
            "{} → {}: conntrack rewrote the source to {real} (a forwarded flow holds this 4-tuple); \
             connection aborted, placing it on another port",
            self.tuple.src,
            self.tuple.dst
        );
        Err(Rewritten(real))
    }
}

/// A flow placed without a reservation (the kernel strategy chose its port inside connect):
/// when conntrack protection is on, look its entry up; one that conntrack rewrote is counted and
/// reported (the caller aborts it).
pub fn verify_placed(proto: c_int, local: SocketAddr, dst: SocketAddr) -> Result<(), Rewritten> {
    if PLAN.load(Relaxed) == 0 {
        return Ok(());
    }
    let tuple = Tuple::new(proto as u8, local, dst);
    match ask(&mut ct::get_request(0, &tuple, false)) {
        Ok(Answer::Entry(e)) => match e.rewritten_source() {
            None => Ok(()),
            Some(real) => {
                stats::bump(C::conntrack_rewrites);
                log::warn!(
                    "{local} → {dst}: conntrack rewrote the source to {real} (a forwarded flow holds \
                     this 4-tuple); connection aborted, placing it on another port"
                );
                Err(Rewritten(real))
            }
        },
        Ok(Answer::Status(libc::ENOENT)) => Ok(()),
        other => {
            trouble("verification", other);
            Ok(())
        }
    }
}

/// The entry is this 4-tuple's own, unrewritten (a stale one left by an earlier flow of ours).
fn is_own(e: &Entry, t: &Tuple) -> bool {
    e.orig == *t && e.rewritten_source().is_none()
}

/// An unexpected answer: logged once; the placement goes on (verification, where enabled,
/// and the nftables guard still apply).
fn trouble(what: &str, a: Result<Answer, c_int>) {
    static ONCE: AtomicBool = AtomicBool::new(false);
    if !ONCE.swap(true, Relaxed) {
        let why = match a {
            Ok(Answer::Status(e)) | Err(e) => std::io::Error::from_raw_os_error(e).to_string(),
            Ok(other) => format!("{other:?}"),
        };
        log::warn!("conntrack {what} failed: {why} (logged once)");
    }
}

// ---------------------------------------------------------------------------------------------
// The netlink socket: as in `sys::diag`, never shared by two users at once
// ---------------------------------------------------------------------------------------------
//
// A request takes the process's idle NETLINK_NETFILTER socket from a one-slot lock-free pool (or
// opens one in the calling thread's network namespace) and puts it back when done: two threads,
// or a signal handler and the code it interrupted, never use one socket at the same time, and a
// fork child never uses its parent's (the slot carries the owner's pid). The number is checked
// to still hold our socket (device, inode) when taken, before reading the reply and before
// closing. ctnetlink answers inside the `sendto` call, so the reply is read without waiting
// (MSG_DONTWAIT) and accepted only from the kernel's netlink address. Raw syscalls: no
// cancellation point, no hook. Per request: fstat, getpid, sendto, fstat, recvmsg.

static SEQ: AtomicU32 = AtomicU32::new(1);
/// The idle socket: `pid << 32 | (fd + 1)` (0 = empty; FILLING while its identity is written).
static SLOT: AtomicU64 = AtomicU64::new(0);
static SLOT_DEV: AtomicU64 = AtomicU64::new(0);
static SLOT_INO: AtomicU64 = AtomicU64::new(0);
const FILLING: u64 = u64::MAX;

fn identity(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: fstat into a zeroed struct; any fd number is acceptable to fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

fn close_raw(fd: c_int) {
    // SAFETY: closes a descriptor the caller checked to be our own socket.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

fn pid() -> i32 {
    crate::sys::pid::get()
}

/// A NETLINK_NETFILTER socket for one request, given back to the slot on drop if the request
/// went well (closed otherwise, if the number is still ours).
struct Netlink {
    fd: c_int,
    id: (u64, u64),
    ok: bool,
    /// This process (fork children never use their parent's socket).
    pid: i32,
}

impl Netlink {
    /// The idle socket (checked to be ours just now), or a new one.
    fn get() -> Result<Netlink, c_int> {
        let me = pid();
        let v = SLOT.load(Relaxed);
        if v != 0 && v != FILLING && SLOT.compare_exchange(v, 0, Acquire, Relaxed).is_ok() {
            let (owner, fd) = ((v >> 32) as i32, (v as u32 as c_int) - 1);
            let id = (SLOT_DEV.load(Relaxed), SLOT_INO.load(Relaxed));
            if identity(fd) == Some(id) {
                if owner == me {
                    return Ok(Netlink { fd, id, ok: false, pid: me });
                }
                close_raw(fd); // the parent's, inherited through fork: this copy goes
            }
        }
        // SAFETY: a plain socket() call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(crate::errno::get());
        }
        identity(fd).map(|id| Netlink { fd, id, ok: false, pid: me }).ok_or(libc::EBADF)
    }

    fn ours(&self) -> Result<c_int, c_int> {
        if identity(self.fd) == Some(self.id) {
            Ok(self.fd)
        } else {
            Err(libc::EBADF)
        }
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        if self.ok && SLOT.compare_exchange(0, FILLING, Relaxed, Relaxed).is_ok() {
            SLOT_DEV.store(self.id.0, Relaxed);
            SLOT_INO.store(self.id.1, Relaxed);
            SLOT.store((self.pid as u32 as u64) << 32 | (self.fd as u32 as u64 + 1), Release);
            return;
        }
        if let Ok(fd) = self.ours() {
            close_raw(fd);
        }
    }
}

/// Send one request and read its answer (the entry, or the status).
fn ask(msg: &mut ct::Msg) -> Result<Answer, c_int> {
    let mut nl = Netlink::get()?;
    let r = ask_on(&nl, msg);
    nl.ok = r.is_ok();
    r
}

fn ask_on(nl: &Netlink, msg: &mut ct::Msg) -> Result<Answer, c_int> {
    let seq = SEQ.fetch_add(1, Relaxed);
    msg.set_seq(seq);
    let b = msg.bytes();
    // SAFETY: sockaddr_nl is plain data; all-zero is valid (nl_pid 0 = the kernel).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    let fd = nl.fd; // checked to be ours when taken, just now
                    // SAFETY: b and kernel are valid for their sizes; fd was checked to be our socket.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            b.as_ptr().cast::<libc::c_void>(),
            b.len(),
            libc::MSG_DONTWAIT,
            (&kernel as *const libc::sockaddr_nl).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(crate::errno::get());
    }
    // The answer: 1 KiB, aligned.
    let mut buf = [0u64; 128];
    // SAFETY: sockaddr_nl is plain data.
    let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: std::mem::size_of_val(&buf) };
    // SAFETY: msghdr is plain data; the fields set below point at live buffers.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_name = (&mut from as *mut libc::sockaddr_nl).cast();
    mh.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    // The reply was queued before sendto returned: read it without waiting, after checking
    // (again) that the number still holds our socket.
    let fd = nl.ours()?;
    let n = loop {
        // SAFETY: mh points at valid buffers for its whole use.
        let n =
            unsafe { libc::syscall(libc::SYS_recvmsg, fd, &mut mh as *mut libc::msghdr, libc::MSG_DONTWAIT) };
        if n < 0 && crate::errno::get() == libc::EINTR {
            continue;
        }
        break n;
    };
    if n < 0 {
        return Err(crate::errno::get());
    }
    if from.nl_family != libc::AF_NETLINK as u16 || from.nl_pid != 0 {
        return Err(libc::EPROTO);
    }
    // SAFETY: n bytes of buf were written.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
    match ct::parse_answer(bytes) {
        Some((s, a)) if s == seq => Ok(a),
        _ => Err(libc::EPROTO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    /// The plan is process-wide: the tests that set it take turns.
    static PLAN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn usable() -> bool {
        if ct::probe() == ct::Netlink::Usable {
            return true;
        }
        eprintln!("SKIP: ctnetlink not usable here (no CAP_NET_ADMIN)");
        false
    }

    /// Run `f` on a thread in a private network namespace (lo up), so the entries these tests
    /// make never touch the host's conntrack table.
    fn private_netns(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            // SAFETY: affects only this thread.
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "unshare: {}",
                std::io::Error::last_os_error()
            );
            let ok = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status();
            assert!(ok.is_ok_and(|s| s.success()), "ip link set lo up");
            f();
            // The idle socket belongs to this namespace: not for the next test.
            if let Ok(nl) = Netlink::get() {
                drop(Netlink { ok: false, ..nl });
            }
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    #[test]
    fn off_is_a_no_op() {
        let _g = PLAN_LOCK.lock().unwrap();
        init(Plan::OFF);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let local: SocketAddr = "127.0.0.2:59990".parse().unwrap();
        let r = reserve(libc::IPPROTO_TCP, local, l.local_addr().unwrap()).unwrap();
        assert!(!r.made);
        assert_eq!(r.settle(l.as_raw_fd(), -1, libc::EADDRNOTAVAIL), Ok(()));
    }

    #[test]
    fn reserve_excludes_a_second_claim_and_settle_gives_it_back() {
        if !usable() {
            return;
        }
        let _g = PLAN_LOCK.lock().unwrap();
        private_netns(reserve_and_give_back);
    }

    fn reserve_and_give_back() {
        init(Plan { reserve: true, verify: true });
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = l.as_raw_fd();
        let dst = l.local_addr().unwrap();
        let local: SocketAddr = "127.0.0.2:59991".parse().unwrap();
        let r = reserve(libc::IPPROTO_TCP, local, dst).unwrap();
        assert!(r.made);
        // An own unrewritten entry is this 4-tuple's own: a second claim of it goes ahead...
        let again = reserve(libc::IPPROTO_TCP, local, dst).unwrap();
        assert!(!again.made);
        // ...while a different original tuple with the same reply tuple is held.
        let tuple = Tuple::new(libc::IPPROTO_TCP as u8, local, dst);
        let other = Tuple::new(libc::IPPROTO_TCP as u8, "127.0.0.3:1234".parse().unwrap(), dst);
        let mut m = ct::new_nat_request(0, &other, &tuple.inverse(), 5);
        assert_eq!(ask(&mut m), Ok(Answer::Status(libc::EEXIST)));
        // The connect did not happen: the entry goes.
        assert_eq!(r.settle(fd, -1, libc::ENETUNREACH), Ok(()));
        assert_eq!(ask(&mut ct::get_request(0, &tuple, false)), Ok(Answer::Status(libc::ENOENT)));
    }

    #[test]
    fn a_nated_entry_on_the_reply_tuple_is_held_and_a_rewritten_flow_is_aborted() {
        if !usable() {
            return;
        }
        let _g = PLAN_LOCK.lock().unwrap();
        private_netns(held_and_rewritten);
    }

    fn held_and_rewritten() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = l.local_addr().unwrap();
        let local: SocketAddr = "127.0.0.2:59992".parse().unwrap();
        let ours = Tuple::new(libc::IPPROTO_TCP as u8, local, dst);
        // A "forwarded" flow: original 127.0.0.9:4000 → dst, NATed so that replies go to `local`.
        let fwd = Tuple::new(libc::IPPROTO_TCP as u8, "127.0.0.9:4000".parse().unwrap(), dst);
        let mut m = ct::new_nat_request(0, &fwd, &ours.inverse(), 5);
        assert_eq!(ask(&mut m), Ok(Answer::Status(0)));
        for plan in [Plan { reserve: true, verify: true }, Plan { reserve: false, verify: true }] {
            init(plan);
            assert_eq!(reserve(libc::IPPROTO_TCP, local, dst).unwrap_err(), Held, "{plan:?}");
        }
        // Verification of a flow whose own entry says it left from elsewhere: aborted.
        let c = TcpStream::connect(dst).unwrap();
        let _accepted = l.accept().unwrap();
        let mine = Tuple::new(libc::IPPROTO_TCP as u8, c.local_addr().unwrap(), dst);
        let r = Reservation { tuple: mine, plan: VERIFY, made: false };
        // Not tracked (no conntrack hook in this namespace): nothing to abort.
        assert_eq!(r.settle(c.as_raw_fd(), 0, 0), Ok(()));
        let elsewhere = Tuple::new(libc::IPPROTO_TCP as u8, dst, "127.0.0.2:45004".parse().unwrap());
        let mut m = ct::new_nat_request(0, &mine, &elsewhere, 5);
        assert_eq!(ask(&mut m), Ok(Answer::Status(0)));
        assert_eq!(r.settle(c.as_raw_fd(), 0, 0), Err(Rewritten("127.0.0.2:45004".parse().unwrap())));
        for t in [fwd, mine] {
            let _ = ask(&mut ct::delete_request(0, &t));
        }
        init(Plan::OFF);
    }
}
