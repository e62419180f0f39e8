//! The ways of placing a flow in a slice: `kernel` (IP_LOCAL_PORT_RANGE), `retry` (userspace
//! port search), `exclusive` (an owned port, for bind-now and unconnected UDP), and the port
//! `order` they share.

pub mod cookie;
pub mod exclusive;
pub mod kernel;
pub mod order;
pub mod refusal;
pub mod retry;
pub mod wait;

use crate::config::Slice;
use crate::sys::swap::{self, SwapError};
use libc::c_int;
use std::net::{IpAddr, SocketAddr};

/// How a placement ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Placed {
    /// The attempt returned `ret` with `errno` (0, or EINPROGRESS on a non-blocking socket) and
    /// the program's fd is bound inside `slice`, at `local`.
    Ok { ret: isize, errno: c_int, slice: Slice, local: SocketAddr },
    /// The attempt failed for a reason of its own (ECONNREFUSED, ENETUNREACH, EINTR...): the
    /// program gets that, as without the shim (its fd holds the socket that failed).
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
}

/// The socket an attempt runs on: the program's own (while it can still be bound) or a fresh
/// one, moved into the program's fd once its attempt has an outcome to report.
pub struct Target {
    /// The program's fd.
    pub fd: c_int,
    ino: u64,
    pub family: c_int,
    /// The socket in use (== fd while the program's own socket is usable).
    pub cur: c_int,
    /// The program's own socket was bound by an attempt that failed: unless a fresh socket is
    /// committed, the program's fd gets a clean unbound one back (a burnt socket would keep a
    /// slice port, locked).
    own_burnt: bool,
    committed: bool,
}

impl Target {
    pub fn new(fd: c_int, ino: u64, family: c_int, own_usable: bool) -> Result<Target, Placed> {
        let mut t = Target { fd, ino, family, cur: fd, own_burnt: false, committed: false };
        if !own_usable {
            t.fresh()?;
        }
        Ok(t)
    }

    pub fn is_own(&self) -> bool {
        self.cur == self.fd
    }

    /// Leave the current socket (burnt by a failed attempt) for a fresh one.
    pub fn fresh(&mut self) -> Result<(), Placed> {
        self.own_burnt |= self.is_own();
        self.drop_fresh();
        self.cur = swap::fresh_like(self.fd, self.family, self.ino).map_err(Placed::Swap)?;
        Ok(())
    }

    /// The attempt on `cur` has an outcome for the program: make `cur` the program's socket.
    pub fn commit(&mut self) -> Result<(), Placed> {
        self.committed = true;
        if !self.is_own() {
            let cur = std::mem::replace(&mut self.cur, self.fd);
            if let Err(e) = swap::install(cur, self.fd, self.ino) {
                // SAFETY: cur is our fresh socket.
                unsafe { crate::real::close(cur) };
                return Err(Placed::Setup(e));
            }
            crate::stats::bump(crate::stats::C::swaps);
        }
        Ok(())
    }

    fn drop_fresh(&mut self) {
        if !self.is_own() {
            // SAFETY: cur is our fresh socket.
            unsafe { crate::real::close(self.cur) };
            self.cur = self.fd;
        }
    }
}

impl Drop for Target {
    /// No outcome for the program: close the fresh socket, and give the program's fd a clean
    /// unbound socket if an attempt burnt its own.
    fn drop(&mut self) {
        self.drop_fresh();
        if self.own_burnt && !self.committed {
            if let Ok(clean) = swap::fresh_like(self.fd, self.family, self.ino) {
                if swap::install(clean, self.fd, self.ino).is_err() {
                    // SAFETY: clean is our fresh socket.
                    unsafe { crate::real::close(clean) };
                }
            }
        }
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
                self.own_burnt |= self.is_own();
                Bind::Bound
            }
            Err(libc::EADDRINUSE) => {
                // A holder without SO_REUSEADDR: a listener, an owned or autobound port, or a UDP
                // socket in the middle of its own check.
                crate::stats::bump(crate::stats::C::conflicts);
                Bind::Taken
            }
            Err(libc::EADDRNOTAVAIL) => Bind::NotLocal,
            Err(libc::EINVAL) if self.is_own() => match self.fresh() {
                Ok(()) => Bind::Taken,
                Err(p) => Bind::Stop(p),
            },
            Err(e) => Bind::Stop(Placed::Setup(e)),
        }
    }
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

impl Target {
    /// The attempt on the current socket returned `ret`/`errno`, an outcome for the program:
    /// commit the socket and report it (success or EINPROGRESS → placed at `local`).
    pub fn conclude(&mut self, ret: isize, errno: c_int, slice: Slice, local: SocketAddr) -> Placed {
        if let Err(p) = self.commit() {
            return p;
        }
        if ret >= 0 || errno == libc::EINPROGRESS {
            Placed::Ok { ret, errno, slice, local }
        } else {
            Placed::Failed { ret, errno }
        }
    }
}

/// `(ret, errno)` of an attempt: errno only when it failed.
pub fn outcome(ret: isize) -> (isize, c_int) {
    (ret, if ret >= 0 { 0 } else { crate::errno::get() })
}
