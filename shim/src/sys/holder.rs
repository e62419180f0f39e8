//! Who holds a TCP 4-tuple, and what an explicit SO_REUSEADDR bind + connect over it would do
//! (kernel-facts, third round: closing states, measured between two namespaces on a veth):
//!
//! | holder (sock_diag `idiag_state`) | explicit bind + connect | here |
//! |---|---|---|
//! | none | succeeds | [`Holder::Free`] |
//! | TIME_WAIT, `tcp_timestamps=1` | succeeds at once | [`Holder::Free`] |
//! | TIME_WAIT, `tcp_timestamps=0` | EADDRNOTAVAIL for 60 s | [`Holder::Held`] |
//! | FIN_WAIT1, CLOSING, LAST_ACK | EADDRNOTAVAIL, for about a round trip | [`Holder::Closing`] |
//! | FIN_WAIT2 (orphan: a timewait socket in that substate) | succeeds **and resets the peer** | [`Holder::Closing`], never tried |
//! | FIN_WAIT2 (a program's socket after shutdown(SHUT_WR)) | EADDRNOTAVAIL | [`Holder::Closing`] |
//! | anything else (ESTABLISHED, SYN_SENT, CLOSE_WAIT...) | EADDRNOTAVAIL | [`Holder::Held`] |
//!
//! A FIN_WAIT2 tuple becomes TIME_WAIT when the peer's FIN arrives (~0.1 ms after FIN_WAIT1
//! ends when the peer closes on EOF), or dies after `tcp_fin_timeout` (60 s) if the peer keeps
//! its end open: it is worth a short wait, never an attempt.

use super::diag::{self, DiagError};
use libc::c_int;
use std::net::SocketAddr;

pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = diag::TCP_TIME_WAIT;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_CLOSING: u8 = 11;

/// What holds a 4-tuple, from the point of view of a placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Nobody, or a TIME_WAIT an explicit bind reuses at once: try it.
    Free,
    /// A socket that is closing (FIN_WAIT1, CLOSING, LAST_ACK, FIN_WAIT2): not now, maybe in a
    /// round trip. Never tried (an orphaned FIN_WAIT2 would be taken over, resetting the peer).
    Closing,
    /// Held for longer (an open connection, or a TIME_WAIT that cannot be reused).
    Held,
}

/// Classify a holder's `idiag_state`. `tw_reusable`: TIME_WAIT can be reused by an explicit
/// bind (net.ipv4.tcp_timestamps is on; a peer without timestamps still refuses, safely).
pub fn classify(state: Option<u8>, tw_reusable: bool) -> Holder {
    match state {
        None => Holder::Free,
        Some(TCP_TIME_WAIT) if tw_reusable => Holder::Free,
        Some(TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSING | TCP_LAST_ACK) => Holder::Closing,
        Some(_) => Holder::Held,
    }
}

/// Whether an attempt on a tuple whose holder has `state` could harm someone else: only an
/// orphaned FIN_WAIT2 (the kernel lets the explicit bind take it over, and resets the peer).
/// Every other holder makes the connect fail with EADDRNOTAVAIL, which the search survives.
pub fn unsafe_to_try(state: Option<u8>) -> bool {
    state == Some(TCP_FIN_WAIT2)
}

/// Look up the TCP 4-tuple `local` → `remote`: the holder's state, `None` if free.
/// `subject`: a socket of the program, in the network namespace to ask about.
/// Without sock_diag (a sandbox without AF_NETLINK) the answer is an error at once.
pub fn tcp_state(subject: c_int, local: SocketAddr, remote: SocketAddr) -> Result<Option<u8>, DiagError> {
    if !diag::available() {
        return Err(DiagError(libc::EAFNOSUPPORT));
    }
    Ok(diag::tcp(subject, local, remote)?.map(|f| f.state))
}

/// `net.ipv4.tcp_timestamps` of this network namespace is on (1 or 2 — 2 is "on, without
/// random offsets"); unreadable counts as the kernel default, on.
pub fn timestamps_on() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_timestamps")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
        .is_none_or(|v| v != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn classification() {
        assert_eq!(classify(None, true), Holder::Free);
        assert_eq!(classify(Some(TCP_TIME_WAIT), true), Holder::Free);
        assert_eq!(classify(Some(TCP_TIME_WAIT), false), Holder::Held);
        for s in [TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSING, TCP_LAST_ACK] {
            assert_eq!(classify(Some(s), true), Holder::Closing, "{s}");
        }
        for s in [1, 2, 3, 7, 8, 10] {
            assert_eq!(classify(Some(s), true), Holder::Held, "{s}");
        }
        assert!(unsafe_to_try(Some(TCP_FIN_WAIT2)));
        assert!(!unsafe_to_try(Some(TCP_FIN_WAIT1)) && !unsafe_to_try(None));
    }

    /// A client that half-closes (shutdown(SHUT_WR)) while the peer keeps its end open holds
    /// the tuple in FIN_WAIT2: found, and classified as closing.
    #[test]
    fn a_half_closed_client_is_closing() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_peer, _) = l.accept().unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let (local, remote) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let s = tcp_state(c.as_raw_fd(), local, remote).unwrap();
            if s == Some(TCP_FIN_WAIT2) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "state {s:?}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(classify(tcp_state(c.as_raw_fd(), local, remote).unwrap(), true), Holder::Closing);
    }
}
