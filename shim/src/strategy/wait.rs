//! The bounded wait of a blocking connect that found its slices full only because of 4-tuples
//! in closing states (FIN_WAIT1, CLOSING, LAST_ACK, FIN_WAIT2): right after a client closes,
//! its tuples stay there about a round trip (~1.3 ms on a veth) before becoming TIME_WAIT,
//! which an explicit bind reuses. The search is run again after 1, 2, 4, 8, 16, 16... ms, for
//! at most [`BOUND_MS`] in all; a non-blocking connect never waits (it gets EADDRNOTAVAIL at
//! once, as from the kernel).
//!
//! The wait runs in the strategy's `prepare` step, inside the hook's shim section (cancellation
//! disabled, see `hooks`), never around the program's own call. The sleep is moreover a raw
//! `clock_nanosleep` system call, not glibc's cancellable wrapper, so it is no cancellation
//! point even if called elsewhere; a pending cancellation is acted on at the program's connect,
//! which follows. A signal ends one step early (EINTR): the handler runs, and the wait goes on
//! to its bound.

/// The longest a blocking connect waits for closing tuples, in all.
pub const BOUND_MS: u64 = 200;
const STEP_MAX_MS: u64 = 16;

/// Milliseconds on CLOCK_MONOTONIC.
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec (clock_gettime is a vDSO call, not a cancellation point).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

fn sleep_ms(ms: u64) {
    let ts = libc::timespec { tv_sec: (ms / 1000) as libc::time_t, tv_nsec: ((ms % 1000) * 1_000_000) as _ };
    // SAFETY: the raw system call with a valid timespec and no remainder pointer.
    unsafe {
        libc::syscall(
            libc::SYS_clock_nanosleep,
            libc::CLOCK_MONOTONIC,
            0,
            &ts as *const libc::timespec,
            std::ptr::null_mut::<libc::timespec>(),
        )
    };
}

/// Whether the program's socket `fd` is blocking (a connect on it would block).
pub fn blocking(fd: libc::c_int) -> bool {
    // SAFETY: F_GETFL on any fd is harmless.
    let fl = unsafe { crate::real::fcntl(fd, libc::F_GETFL, 0) };
    fl >= 0 && fl & libc::O_NONBLOCK == 0
}

/// The wait of one connect (plain data: it lives in the hook's frame across attempts).
#[derive(Clone, Copy, Debug)]
pub struct Wait {
    /// None: never wait (non-blocking).
    start: Option<u64>,
    step: u64,
    pub waited: bool,
    /// The program's fd, whose O_NONBLOCK is asked only when a wait is due (-1: asked).
    fd: libc::c_int,
}

impl Wait {
    #[cfg(test)]
    pub fn new(blocking: bool) -> Wait {
        Wait { start: blocking.then(now_ms), step: 1, waited: false, fd: -1 }
    }

    /// The wait of a connect on the program's `fd`, from now: whether the socket is blocking is
    /// asked (an fcntl) only if the search ever finds its slices full, not on every connect.
    pub fn on(fd: libc::c_int) -> Wait {
        Wait { start: Some(now_ms()), step: 1, waited: false, fd }
    }

    /// Sleep one step and say `true`, if the bound allows; `false` when it is time to give up.
    pub fn again(&mut self) -> bool {
        if self.fd >= 0 {
            if !blocking(self.fd) {
                self.start = None;
            }
            self.fd = -1;
        }
        match self.next_step(now_ms()) {
            Some(ms) => {
                sleep_ms(ms);
                true
            }
            None => false,
        }
    }

    /// The next step's length at `now` (CLOCK_MONOTONIC ms), or `None` when it is time to give
    /// up. The schedule without the clock and the sleep, so it is tested exactly.
    fn next_step(&mut self, now: u64) -> Option<u64> {
        let start = self.start?;
        let spent = now.saturating_sub(start);
        if spent >= BOUND_MS {
            return None;
        }
        let ms = self.step.min(BOUND_MS - spent);
        self.step = (self.step * 2).min(STEP_MAX_MS);
        self.waited = true;
        Some(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The steps `Wait` takes when each sleep of `ms` lasts `f(ms)` on a fake clock: (steps,
    /// time spent in all).
    fn schedule(f: impl Fn(u64) -> u64) -> (Vec<u64>, u64) {
        let mut w = Wait { start: Some(1000), step: 1, waited: false, fd: -1 };
        let (mut now, mut steps) = (1000, Vec::new());
        while let Some(ms) = w.next_step(now) {
            steps.push(ms);
            now += f(ms);
        }
        assert_eq!(w.waited, !steps.is_empty());
        (steps, now - 1000)
    }

    #[test]
    fn never_for_non_blocking_and_bounded_for_blocking() {
        let mut w = Wait::new(false);
        assert!(!w.again());
        assert_eq!(w.next_step(u64::MAX), None);
        assert!(!w.waited);

        // Exact sleeps: 1, 2, 4, 8, 16 ms, then 16 ms steps, the last cut to the bound.
        let (steps, spent) = schedule(|ms| ms);
        let mut want = vec![1, 2, 4, 8];
        want.extend(std::iter::repeat_n(16, 11));
        want.push(BOUND_MS - 31 - 160);
        assert_eq!(steps, want);
        assert_eq!(spent, BOUND_MS);

        // A loaded machine oversleeps: fewer steps, and none started after the bound.
        let (steps, spent) = schedule(|ms| ms + 40);
        assert_eq!(steps, [1, 2, 4, 8, 16]);
        assert_eq!(spent, 31 + 5 * 40);
        // A step started just before the bound is cut to what is left.
        let (steps, _) = schedule(|ms| if ms == 1 { BOUND_MS - 1 } else { ms });
        assert_eq!(steps, [1, 1]);

        // On the real clock: the wait lasts at least the bound, and really sleeps (a sleep never
        // ends early, so no more steps than the exact schedule's, plus one for the clock's
        // whole-ms rounding).
        let t0 = std::time::Instant::now();
        let mut w = Wait::new(true);
        let mut n = 0;
        while w.again() {
            n += 1;
        }
        let spent = t0.elapsed().as_millis() as u64;
        assert!(spent >= BOUND_MS - 1, "{spent} ms");
        assert!((1..=want.len() + 1).contains(&n), "{n} steps");
    }

    #[test]
    fn blocking_follows_o_nonblock() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd;
        assert!(blocking(s.as_raw_fd()));
        s.set_nonblocking(true).unwrap();
        assert!(!blocking(s.as_raw_fd()));
    }

    #[test]
    fn a_wait_on_an_fd_asks_o_nonblock_only_when_due() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd;
        s.set_nonblocking(true).unwrap();
        let mut w = Wait::on(s.as_raw_fd());
        assert!(w.start.is_some(), "not asked yet");
        assert!(!w.again(), "non-blocking: never waits");
        assert!(w.start.is_none() && !w.waited);
        s.set_nonblocking(false).unwrap();
        let mut w = Wait::on(s.as_raw_fd());
        assert!(w.again(), "blocking: waits");
        assert!(w.waited);
    }
}
