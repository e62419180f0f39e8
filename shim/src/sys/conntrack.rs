//! ctnetlink for placement (seed 004): a 4-tuple that a forwarded, SNATed flow holds in
//! conntrack is free for a socket, and a socket connected over it is silently NATed to another
//! source port — outside the slice. Two checks, each called at one point of a strategy:
//!
//! - [`reserve`] before the connect, one ctnetlink round trip (several requests in one datagram,
//!   `sys::netlink`): IPCTNL_MSG_CT_NEW (create|excl) of the flow's original and reply tuples
//!   with a short timeout — race-free: success means both tuples were free, and the connect's
//!   first packet finds this entry and keeps its addresses; EEXIST means a flow holds one of them.
//!   Which flow: a busy client mostly meets its own stale entry of this 4-tuple (an earlier flow,
//!   closed; conntrack keeps it 10 s after RST, 120 s after FIN).
//!   - When the caller's sock_diag look-up found no socket holding the 4-tuple
//!     ([`reserve_free`]), no live local flow can own an entry with it, so the request deletes
//!     the entry of the original tuple first (what the connect's SYN would do to a closed
//!     entry, only before the SYN instead of inside it) and then creates its own: a stale entry
//!     is replaced by a reservation in the same round trip, and EEXIST can then only be another
//!     flow holding the reply tuple (a forwarded, SNATed one): held.
//!   - Otherwise the same datagram asks who holds the reply tuple (CT_GET): this 4-tuple's own
//!     unrewritten entry lets the connect go ahead on it (verified after), anyone else's is held.
//!
//!   In `verify`-only mode, look-ups only (racy; verification closes the race).
//! - [`Reservation::settle`] after the connect: the reservation is deleted where the connect did
//!   not happen (except after EADDRNOTAVAIL: the socket that holds the 4-tuple may be using the
//!   entry); a flow that went ahead on an entry it did not create is verified (when enabled):
//!   its own entry is looked up and a flow whose source was rewritten is aborted (RST on close),
//!   so the strategy places it again on another port. A reservation this attempt created has
//!   fixed, unrewritten tuples: nothing to verify.
//!
//! The plan (reserve, verify, both, neither) is decided once per process ([`init`]); while it is
//! off, both calls are one atomic load. The round trips are `sys::netlink`'s (the process's idle
//! NETLINK_NETFILTER socket; fstat, sendto, fstat, recvmsg/recvmmsg).

use crate::real;
use crate::stats::{self, C};
use crate::sys::netlink::{self, Answers};
use libc::c_int;
use portrange_lib::conntrack::{self as ct, Answer, Entry, Plan, Tuple};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};

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
    reserve_in(proto, local, dst, false)
}

/// [`reserve`] for a 4-tuple that the caller's sock_diag look-up, just now, found held by no
/// socket (or only by a TIME_WAIT one that this connect takes over): a stale entry of it is
/// replaced by the reservation in the same round trip.
pub fn reserve_free(proto: c_int, local: SocketAddr, dst: SocketAddr) -> Result<Reservation, Held> {
    reserve_in(proto, local, dst, true)
}

fn reserve_in(
    proto: c_int,
    local: SocketAddr,
    dst: SocketAddr,
    no_socket: bool,
) -> Result<Reservation, Held> {
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
    if plan & RESERVE == 0 {
        // Verify only: who answers to our reply tuple? A busy client mostly finds its own stale
        // entry of this 4-tuple: one look-up. Otherwise: is an entry of this very 4-tuple NATed
        // (it would take the flow with it)?
        match ask(&mut ct::get_request(0, &tuple.inverse(), true)) {
            Ok(Answer::Entry(e)) if is_own(&e, &tuple) => return Ok(r),
            Ok(Answer::Entry(e)) => return held(&format!(" by {} → {}", e.orig.src, e.orig.dst)),
            Ok(Answer::Status(libc::ENOENT)) => {}
            other => trouble("look-up", other),
        }
        if let Ok(Answer::Entry(e)) = ask(&mut ct::get_request(0, &tuple, false)) {
            if !is_own(&e, &tuple) {
                return held(" (NATed)");
            }
        }
        return Ok(r);
    }
    let timeout = if proto == libc::IPPROTO_TCP { TIMEOUT_TCP_S } else { TIMEOUT_UDP_S };
    let new = &mut ct::new_request(0, &tuple, timeout);
    let made = |r: &mut Reservation| {
        stats::bump(C::conntrack_reserved);
        r.made = true;
    };
    if no_socket {
        // No live local flow has this 4-tuple: the entry of the original tuple, if any, is a
        // closed flow's (ours, or a rewritten one of ours). Delete it and create ours; EEXIST
        // then means another flow holds our reply tuple.
        return match ask_all([&mut ct::delete_request(0, &tuple), new]) {
            Ok([_, Answer::Status(0)]) => {
                made(&mut r);
                Ok(r)
            }
            Ok([_, Answer::Status(libc::EEXIST)]) => held(""),
            Ok([_, other]) => {
                trouble("create", Ok(other));
                Ok(r)
            }
            Err(e) => {
                trouble("create", Err(e));
                Ok(r)
            }
        };
    }
    // Create, and (for EEXIST) who answers to our reply tuple, in one round trip.
    match ask_all([new, &mut ct::get_request(0, &tuple.inverse(), true)]) {
        Ok([Answer::Status(0), _]) => made(&mut r),
        // This 4-tuple's own unrewritten entry (an earlier flow of ours): the connect goes
        // ahead on it (and is verified).
        Ok([Answer::Status(libc::EEXIST), Answer::Entry(e)]) if is_own(&e, &tuple) => {}
        Ok([Answer::Status(libc::EEXIST), Answer::Entry(e)]) => {
            return held(&format!(" by {} → {}", e.orig.src, e.orig.dst))
        }
        // Nobody holds the reply tuple, so the original one exists: an entry of this very
        // 4-tuple that was NATed (a rewritten flow of ours, not yet expired).
        Ok([Answer::Status(libc::EEXIST), _]) => return held(" (NATed)"),
        Ok([other, _]) => trouble("create", Ok(other)),
        Err(e) => trouble("create", Err(e)),
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
            // EADDRNOTAVAIL: a socket holds this 4-tuple, and its flow may be using our entry
            // (an unrewritten one, expiring on its own): left alone.
            if self.made && errno != libc::EADDRNOTAVAIL {
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

/// Send one request and read its answer (the entry, or the status).
fn ask(msg: &mut ct::Msg) -> Result<Answer, c_int> {
    ask_all([msg]).map(|[a]| a)
}

/// Send `N` requests in one datagram (one round trip) and read their answers, in order.
fn ask_all<const N: usize>(msgs: [&mut ct::Msg; N]) -> Result<[Answer; N], c_int> {
    const ROOM: usize = 256 * netlink::MAX_ANSWERS; // a Msg is at most 256 bytes
    let first = netlink::seqs(N as u32);
    let mut req = [0u8; ROOM];
    let mut len = 0;
    for (i, m) in msgs.into_iter().enumerate() {
        m.set_seq(first.wrapping_add(i as u32));
        let b = m.bytes();
        req[len..len + b.len()].copy_from_slice(b); // each a multiple of 4 bytes long
        len += b.len();
    }
    let mut a = Answers::<N>::new();
    netlink::NETFILTER.exchange(&req[..len], &mut a).map_err(netlink::Error::errno)?;
    let mut out = [Answer::Other; N];
    for (i, slot) in out.iter_mut().enumerate() {
        match ct::parse_answer(a.get(i)) {
            Some((s, answer)) if s == first.wrapping_add(i as u32) => *slot = answer,
            _ => return Err(libc::EPROTO),
        }
    }
    Ok(out)
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
            netlink::NETFILTER.discard_idle();
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

    const TCP: c_int = libc::IPPROTO_TCP;

    #[test]
    fn a_closed_flows_entry_makes_way_for_a_reservation_when_no_socket_holds_the_tuple() {
        if !usable() {
            return;
        }
        let _g = PLAN_LOCK.lock().unwrap();
        private_netns(stale_entry_replaced);
    }

    fn stale_entry_replaced() {
        init(Plan { reserve: true, verify: true });
        let dst: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.2:59993".parse().unwrap();
        let t = Tuple::new(TCP as u8, local, dst);
        // A closed flow's entry of this 4-tuple (an earlier flow, unrewritten).
        assert_eq!(ask(&mut ct::new_request(0, &t, 100)), Ok(Answer::Status(0)));
        // Without a sock_diag look-up the entry may be a live flow's: the connect goes ahead on
        // it, to be verified after.
        assert!(!reserve(TCP, local, dst).unwrap().made);
        // Seen free by sock_diag: the stale entry makes way for this attempt's own reservation,
        // in one round trip — nothing to verify after the connect.
        let r = reserve_free(TCP, local, dst).unwrap();
        assert!(r.made, "replaced by a reservation of this attempt");
        assert!(
            matches!(ask(&mut ct::get_request(0, &t, false)), Ok(Answer::Entry(e)) if e.reply == t.inverse())
        );
        r.release();
        // A forwarded flow holding the reply tuple of a free 4-tuple: held, its entry untouched.
        let local2: SocketAddr = "127.0.0.2:59994".parse().unwrap();
        let ours = Tuple::new(TCP as u8, local2, dst);
        let fwd = Tuple::new(TCP as u8, "127.0.0.9:4000".parse().unwrap(), dst);
        assert_eq!(ask(&mut ct::new_nat_request(0, &fwd, &ours.inverse(), 100)), Ok(Answer::Status(0)));
        assert_eq!(reserve_free(TCP, local2, dst).unwrap_err(), Held);
        match ask(&mut ct::get_request(0, &fwd, false)) {
            Ok(Answer::Entry(e)) => assert_eq!(e.reply, ours.inverse(), "the forwarder's entry"),
            other => panic!("the forwarder's entry is gone: {other:?}"),
        }
        let _ = ask(&mut ct::delete_request(0, &fwd));
        init(Plan::OFF);
    }

    #[test]
    fn a_reservation_is_kept_when_another_socket_holds_the_tuple() {
        if !usable() {
            return;
        }
        let _g = PLAN_LOCK.lock().unwrap();
        private_netns(kept_after_eaddrnotavail);
    }

    fn kept_after_eaddrnotavail() {
        init(Plan { reserve: true, verify: true });
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = l.local_addr().unwrap();
        let local: SocketAddr = "127.0.0.2:59995".parse().unwrap();
        let t = Tuple::new(TCP as u8, local, dst);
        let r = reserve_free(TCP, local, dst).unwrap();
        assert!(r.made);
        // The connect found the 4-tuple taken: the socket holding it may be using our entry
        // (our reservation replaced its closed predecessor's under it); it stays.
        assert_eq!(r.settle(l.as_raw_fd(), -1, libc::EADDRNOTAVAIL), Ok(()));
        assert!(matches!(ask(&mut ct::get_request(0, &t, false)), Ok(Answer::Entry(_))), "kept");
        // Any other failure: nobody connected over it, it goes.
        let r = reserve_free(TCP, local, dst).unwrap();
        assert_eq!(r.settle(l.as_raw_fd(), -1, libc::ENETUNREACH), Ok(()));
        assert_eq!(ask(&mut ct::get_request(0, &t, false)), Ok(Answer::Status(libc::ENOENT)));
        init(Plan::OFF);
    }
}
