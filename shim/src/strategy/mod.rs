//! The ways of placing a flow in a slice: `kernel` (IP_LOCAL_PORT_RANGE), `retry` (userspace
//! port search), `cookie` (UDP connect), `exclusive` (an owned port, for bind-now and unconnected
//! UDP), and the port `order` they share.
//!
//! A placement is a resumable state machine over plain data (`Copy`, no destructor): `prepare`
//! readies a socket and answers [`Step::Attempt`]; the hook itself then makes the program's call
//! (connect, send) on the program's fd — a cancellation point, so no Rust frame with a destructor
//! or a `catch_unwind` may be alive across it — and hands the outcome to `after`, which answers
//! the next step. The socket an attempt runs on is always the program's own fd: a fresh socket is
//! prepared on the side and moved into the fd *before* the attempt, so a cancelled or interrupted
//! attempt leaves the program exactly what the kernel left, and the shim holds nothing.

pub mod cookie;
pub mod exclusive;
pub mod kernel;
pub mod order;
pub mod refusal;
pub mod retry;
pub mod seen;
pub mod wait;

use crate::config::{Config, Slice};
use crate::sys::swap::{self, SwapError};
use libc::c_int;
use std::net::{IpAddr, SocketAddr};

/// How a placement ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// The attempt returned `ret` with `errno` (0, or EINPROGRESS on a non-blocking socket, or
    /// EINTR on a blocking one: the kernel goes on with the handshake) and the program's fd is
    /// bound inside `slice`, at `local`.
    Ok { ret: isize, errno: c_int, slice: Slice, local: SocketAddr },
    /// The attempt failed for a reason of its own (ECONNREFUSED, ENETUNREACH...): the program
    /// gets that, as without the shim (its fd holds the socket that failed).
    Failed { ret: isize, errno: c_int },
    /// Every slice is exhausted for this destination (EADDRNOTAVAIL).
    Exhausted,
    /// A slice IP is not assigned to this host (bind gave EADDRNOTAVAIL); that slice was skipped.
    /// Only reported when no other slice succeeded.
    NotLocal(IpAddr),
    /// The kernel chose `local`, outside `slice` (sysctl changed?). The connection was aborted.
    Outside { slice: Slice, local: SocketAddr },
    /// A setsockopt/bind the strategy needs failed with this errno.
    Setup(c_int),
    /// A fresh socket was needed and the program's socket cannot be copied.
    Swap(SwapError),
    /// The program's socket, taken as unbound from its birth record ([`Target::assumed`]), was
    /// bound after all (the placement's bind got EINVAL): nothing was attempted; the flow is
    /// to be decided again from a look at the socket.
    NotFresh,
}

impl Placed {
    /// Every candidate was tried: no slice IP on this host (`not_local`), or none free.
    pub fn none_free(not_local: Option<IpAddr>) -> Placed {
        match not_local {
            Some(ip) => Placed::NotLocal(ip),
            None => Placed::Exhausted,
        }
    }
}

/// What a strategy asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Make the program's call on its fd now, and report the outcome to `after`.
    Attempt,
    /// The placement is over.
    Done(Placed),
}

/// Did an attempt start the flow? 0, EINPROGRESS (non-blocking) and EINTR (a blocking connect
/// interrupted by a signal: the kernel goes on with the handshake) all leave a connection on its
/// way from the port the socket now holds.
pub fn started(ret: isize, errno: c_int) -> bool {
    ret >= 0 || errno == libc::EINPROGRESS || errno == libc::EINTR
}

/// The slices to try, in order (see `scope::candidates`), as a plain-data cursor.
#[derive(Clone, Copy, Debug)]
pub struct Cursor {
    v6: bool,
    pinned: Option<IpAddr>,
    rotate: usize,
    i: usize,
}

impl Cursor {
    pub fn new(v6: bool, pinned: Option<IpAddr>, rotate: usize) -> Cursor {
        Cursor { v6, pinned, rotate, i: 0 }
    }

    /// The next candidate slice of `cfg`.
    pub fn next(&mut self, cfg: &Config) -> Option<Slice> {
        let s = crate::scope::candidates(cfg, self.v6, self.pinned, self.rotate).nth(self.i).copied();
        self.i += 1;
        s
    }
}

/// The socket an attempt runs on: the program's own (while it can still be bound) or a fresh
/// one prepared on the side (`cur`), moved into the program's fd just before its attempt.
/// Plain data: it lives in the hook's frame across the attempt.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The program's fd.
    pub fd: c_int,
    /// The identity of the socket in the program's fd (for option replay).
    ino: u64,
    pub family: c_int,
    /// The socket being prepared (== fd while the program's own socket is usable).
    pub cur: c_int,
    /// An attempt failed on the program's fd, which now holds a socket bound to a slice port:
    /// unless a later attempt succeeds, the program's fd gets a clean unbound socket back (a
    /// burnt socket would keep a slice port, locked).
    burnt: bool,
    /// The program's socket is taken as unbound from its birth record (no getsockname): until
    /// a bind of the shim on it succeeds, EINVAL from that bind means it was bound behind the
    /// hooks' back ([`Placed::NotFresh`]), never a reason to swap it out.
    pub assumed: bool,
}

impl Target {
    pub fn new(fd: c_int, ino: u64, family: c_int, own_usable: bool) -> Result<Target, Placed> {
        let mut t = Target { fd, ino, family, cur: fd, burnt: false, assumed: false };
        if !own_usable {
            t.cur = swap::fresh_like(fd, family, ino).map_err(Placed::Swap)?;
        }
        Ok(t)
    }

    pub fn is_own(&self) -> bool {
        self.cur == self.fd
    }

    /// The identity of the socket in the program's fd (updated by each swap).
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// The bind of the program's socket taken as unbound failed with `errno`: was it bound
    /// behind the hooks' back?
    pub fn found_bound(&self, errno: c_int) -> bool {
        errno == libc::EINVAL && self.assumed && self.is_own()
    }

    /// Prepare a fresh socket on the side (the current one cannot be bound again; if it is the
    /// program's own, it is burnt).
    pub fn fresh(&mut self) -> Result<(), Placed> {
        self.burnt |= self.is_own();
        self.drop_side();
        self.cur = swap::fresh_like(self.fd, self.family, self.ino).map_err(Placed::Swap)?;
        Ok(())
    }

    /// Right before an attempt: the prepared socket becomes the program's.
    pub fn install(&mut self) -> Result<(), Placed> {
        if !self.is_own() {
            let cur = std::mem::replace(&mut self.cur, self.fd);
            if let Err(e) = swap::install(cur, self.fd, self.ino) {
                // SAFETY: cur is our fresh socket.
                unsafe { crate::real::close(cur) };
                return Err(Placed::Setup(e));
            }
            crate::stats::bump(crate::stats::C::swaps);
            // The fd's entry now describes the installed socket (options recorded for the next
            // fresh one are read under its identity).
            self.ino = crate::fdtable::ino(self.fd).unwrap_or(self.ino);
        }
        Ok(())
    }

    /// The placement ends without an outcome on the current socket: close the side socket, and
    /// give the program's fd a clean unbound socket if an attempt burnt its own.
    pub fn abandon(&mut self) {
        self.drop_side();
        if self.burnt {
            self.burnt = false;
            if let Ok(clean) = swap::fresh_like(self.fd, self.family, self.ino) {
                if swap::install(clean, self.fd, self.ino).is_err() {
                    // SAFETY: clean is our fresh socket.
                    unsafe { crate::real::close(clean) };
                } else {
                    self.ino = crate::fdtable::ino(self.fd).unwrap_or(self.ino);
                }
            }
        }
    }

    /// The attempt on the program's fd has an outcome for the program: nothing to undo.
    pub fn settle(&mut self) {
        self.drop_side();
        self.burnt = false;
    }

    fn drop_side(&mut self) {
        if !self.is_own() {
            // SAFETY: cur is our fresh socket.
            unsafe { crate::real::close(self.cur) };
            self.cur = self.fd;
        }
    }

    /// End the placement with `p` (abandoning what an attempt left unless it is an outcome).
    pub fn done(&mut self, p: Placed) -> Step {
        match p {
            Placed::Ok { .. } | Placed::Failed { .. } => self.settle(),
            _ => self.abandon(),
        }
        Step::Done(p)
    }
}

/// What a shared bind of a candidate port came to.
pub enum Bind {
    /// The current socket holds the port (with SO_REUSEADDR=1).
    Bound,
    /// Taken by a socket that does not share it: try the next port.
    Taken,
    /// The slice IP is not on this host: skip the slice.
    NotLocal,
    /// Give up with this outcome.
    Stop(Placed),
}

impl Target {
    /// SO_REUSEADDR=1 and bind(`local`) on the current socket. A program's socket that already
    /// holds a port is left for a fresh one (the port is then tried again later, if at all).
    pub fn bind_shared(&mut self, local: SocketAddr) -> Bind {
        if let Err(e) = crate::sys::addr::set_u32(self.cur, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1) {
            return Bind::Stop(Placed::Setup(e));
        }
        match crate::sys::addr::bind(self.cur, local, self.family) {
            Ok(()) => {
                // Until committed, the program's own socket now holds a slice port: a failure
                // from here on must give the program a clean socket back (never a held port).
                self.burnt |= self.is_own();
                self.assumed = false;
                Bind::Bound
            }
            Err(libc::EADDRINUSE) => {
                // A holder without SO_REUSEADDR: a listener, an owned or autobound port, or a UDP
                // socket in the middle of its own check.
                crate::stats::bump(crate::stats::C::conflicts);
                Bind::Taken
            }
            Err(libc::EADDRNOTAVAIL) => Bind::NotLocal,
            // Bound behind the hooks' back: looked at again, never swapped out.
            Err(e) if self.found_bound(e) => Bind::Stop(Placed::NotFresh),
            Err(libc::EINVAL) if self.is_own() => match self.fresh() {
                Ok(()) => Bind::Taken,
                Err(p) => Bind::Stop(p),
            },
            Err(e) => Bind::Stop(Placed::Setup(e)),
        }
    }

    /// The attempt on the program's fd returned `ret`/`errno`, an outcome for the program
    /// (started → placed at `local`).
    pub fn conclude(&mut self, ret: isize, errno: c_int, slice: Slice, local: SocketAddr) -> Step {
        if started(ret, errno) {
            self.done(Placed::Ok { ret, errno, slice, local })
        } else {
            self.done(Placed::Failed { ret, errno })
        }
    }
}

/// Drive a placement to its end inside the shim, making each attempt with `attempt` (unit tests;
/// the hooks make their attempts from their own frame instead).
#[cfg(test)]
pub fn drive(
    mut prepare: impl FnMut() -> Step,
    mut after: impl FnMut(isize, c_int) -> Step,
    fd: c_int,
    mut attempt: impl FnMut(c_int) -> isize,
) -> Placed {
    let mut step = prepare();
    loop {
        match step {
            Step::Done(p) => return p,
            Step::Attempt => {
                let r = attempt(fd);
                let e = if r >= 0 { 0 } else { crate::errno::get() };
                step = after(r, e);
            }
        }
    }
}

/// A configuration of just these slices (unit tests).
#[cfg(test)]
pub fn test_cfg(slices: &[Slice]) -> Config {
    Config {
        slices: slices.to_vec(),
        skip: Vec::new(),
        default_skip: false,
        strategy: crate::config::StrategyChoice::Auto,
        conntrack: crate::config::ConntrackChoice::Auto,
    }
}
