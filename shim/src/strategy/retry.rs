//! The retry strategy: the slice's ports in random order, SO_REUSEADDR, bind(slice_ip, port),
//! connect; EADDRNOTAVAIL (the 4-tuple is taken) → the next port, on a fresh socket (a socket
//! whose connect failed cannot be bound again). Works on any kernel, for slices outside the
//! sysctl range, and over TIME_WAIT 4-tuples (an explicit bind reuses them at once when TCP
//! timestamps are on), where the kernel strategy waits 60 s.
//!
//! A sock_diag pre-check skips ports whose 4-tuple is already held (ESTABLISHED, SYN_SENT...)
//! before anything is bound, so the program's own socket usually wins the first real attempt
//! and a swap (fresh socket into the program's fd) is needed only after a lost race.

use super::{order::Permutation, outcome, Bind, Placed, Target};
use crate::config::Slice;
use crate::stats::{self, C};
use crate::sys::diag;
use crate::sys::sysctl::Reserved;
use libc::c_int;
use std::net::SocketAddr;

pub struct Retry<'r> {
    pub reserved: &'r Reserved,
    /// Look the 4-tuple up with sock_diag before binding a candidate port.
    pub precheck: bool,
}

impl Retry<'_> {
    /// Place the program's `fd` towards `dst` in the first of `slices` with a free 4-tuple and
    /// run `attempt` (connect, or a TCP Fast Open send) on whichever socket holds the port.
    pub fn place<'a>(
        &self,
        mut target: Target,
        slices: impl Iterator<Item = &'a Slice>,
        dst: SocketAddr,
        mut attempt: impl FnMut(c_int) -> isize,
    ) -> Placed {
        let mut not_local = None;
        'slices: for slice in slices {
            for i in Permutation::new(slice.size()) {
                let port = slice.lo + i as u16;
                if self.reserved.contains(port) {
                    continue;
                }
                let local = SocketAddr::new(slice.ip, port);
                if self.precheck {
                    stats::bump(C::lookups);
                    if let Ok(Some(f)) = diag::tcp(target.fd, local, dst) {
                        // A TIME_WAIT holder does not block an explicit bind + connect.
                        if f.state != diag::TCP_TIME_WAIT {
                            stats::bump(C::conflicts);
                            continue;
                        }
                    }
                }
                match target.bind_shared(local) {
                    Bind::Bound => {}
                    Bind::Taken => continue,
                    Bind::NotLocal => {
                        not_local = Some(slice.ip);
                        continue 'slices;
                    }
                    Bind::Stop(p) => return p,
                }
                stats::bump(C::attempts);
                let (ret, e) = outcome(attempt(target.cur));
                if e == libc::EADDRNOTAVAIL {
                    // Lost the 4-tuple (a race, or a holder the pre-check did not see).
                    stats::bump(C::conflicts);
                    if let Err(p) = target.fresh() {
                        return p;
                    }
                    continue;
                }
                return target.conclude(ret, e, *slice, local);
            }
            stats::bump(C::exhausted);
        }
        Placed::none_free(not_local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdtable;
    use crate::sys::addr;
    use std::net::TcpListener;

    fn connect_fn(dst: SocketAddr, family: c_int) -> impl FnMut(c_int) -> isize {
        move |fd| {
            let raw = addr::to_raw(dst, family);
            unsafe { crate::real::connect(fd, raw.ptr(), raw.len) as isize }
        }
    }

    fn place(fd: c_int, slice: Slice, dst: SocketAddr, precheck: bool, reserved: &Reserved) -> Placed {
        let ino = fdtable::ino(fd).unwrap();
        let t = Target::new(fd, ino, libc::AF_INET, true).unwrap();
        Retry { reserved, precheck }.place(t, [slice].iter(), dst, connect_fn(dst, libc::AF_INET))
    }

    // Ports 59930-59949 belong to these unit tests.
    #[test]
    fn fills_a_slice_per_destination_with_and_without_precheck() {
        for (precheck, lo) in [(true, 59930), (false, 59935)] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let dst = l.local_addr().unwrap();
            let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo, hi: lo + 3 };
            let reserved = Reserved::parse(&(lo + 2).to_string()).unwrap();
            let mut held = Vec::new();
            let mut ports = Vec::new();
            for _ in 0..3 {
                let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                match place(fd, slice, dst, precheck, &reserved) {
                    Placed::Ok { ret: 0, local, .. } => {
                        assert_eq!(addr::local(fd).map(|(_, a)| a), Some(local));
                        ports.push(local.port());
                    }
                    other => panic!("{other:?}"),
                }
                held.push(fd);
            }
            ports.sort();
            assert_eq!(ports, [lo, lo + 1, lo + 3], "reserved port skipped");
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            assert_eq!(place(fd, slice, dst, precheck, &reserved), Placed::Exhausted);
            held.push(fd);
            for fd in held {
                unsafe { libc::close(fd) };
            }
        }
    }

    #[test]
    fn a_lost_race_swaps_a_fresh_socket_in() {
        // Without the pre-check, the program's own socket binds a held port, loses the 4-tuple,
        // and the winner is a fresh socket moved into the same fd number.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = l.local_addr().unwrap();
        let slice = Slice { ip: "127.0.0.2".parse().unwrap(), lo: 59940, hi: 59941 };
        let none = Reserved::none();
        let first = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        let Placed::Ok { local: taken, .. } = place(first, slice, dst, false, &none) else { panic!() };
        let mut swapped = false;
        for _ in 0..20 {
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let before = fdtable::ino(fd).unwrap();
            let p = place(fd, slice, dst, false, &none);
            let Placed::Ok { local, .. } = p else { panic!("{p:?}") };
            assert_ne!(local, taken);
            swapped |= fdtable::ino(fd).unwrap() != before;
            // Close with RST, so that the port is free again for the next round.
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    8,
                );
                libc::close(fd);
            }
            if swapped {
                break;
            }
        }
        assert!(swapped, "in 20 tries the random order never tried the held port first");
        unsafe { libc::close(first) };
    }
}
