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
}

impl Wait {
    pub fn new(blocking: bool) -> Wait {
        Wait { start: blocking.then(now_ms), step: 1, waited: false }
    }

    /// Sleep one step and say `true`, if the bound allows; `false` when it is time to give up.
    pub fn again(&mut self) -> bool {
        let Some(start) = self.start else { return false };
        let spent = now_ms().saturating_sub(start);
        if spent >= BOUND_MS {
            return false;
        }
        let ms = self.step.min(BOUND_MS - spent);
        sleep_ms(ms);
        self.step = (self.step * 2).min(STEP_MAX_MS);
        self.waited = true;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_for_non_blocking_and_bounded_for_blocking() {
        let mut w = Wait::new(false);
        assert!(!w.again());
        let t0 = std::time::Instant::now();
        let mut w = Wait::new(true);
        let mut steps = 0;
        while w.again() {
            steps += 1;
        }
        let spent = t0.elapsed().as_millis() as u64;
        // The last step is cut to the bound; a loaded machine oversleeps (fewer steps, later end).
        assert!((BOUND_MS - 2..BOUND_MS + 500).contains(&spent), "{spent} ms");
        // 1+2+4+8+16 = 31 ms, then 16 ms steps: about 16 steps.
        assert!((1..=18).contains(&steps), "{steps} steps");
    }

    #[test]
    fn blocking_follows_o_nonblock() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd;
        assert!(blocking(s.as_raw_fd()));
        s.set_nonblocking(true).unwrap();
        assert!(!blocking(s.as_raw_fd()));
    }
}
