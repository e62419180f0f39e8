//! Warnings for flows refused because every slice is full for their destination: at `warn`
//! (the default level), at most one line per destination per [`INTERVAL_MS`], each saying how
//! many were refused since the last one — never a line per connect.
//!
//! Lock-free and allocation-free until a line is written: a fixed table of slots indexed by a
//! hash of the destination; two destinations sharing a slot each still log at most once per
//! interval while the other is quiet (a slot remembers one destination).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub const INTERVAL_MS: u64 = 10_000;
const SLOTS: usize = 256;

struct Slot {
    /// Hash of the destination (0 = empty).
    key: AtomicU64,
    /// When the last line for it was written (ms, CLOCK_MONOTONIC) + 1.
    last: AtomicU64,
    /// Refusals since that line.
    quiet: AtomicU64,
}

static TABLE: [Slot; SLOTS] =
    [const { Slot { key: AtomicU64::new(0), last: AtomicU64::new(0), quiet: AtomicU64::new(0) } }; SLOTS];

/// A hash of the destination (never 0), shared with the kernel strategy's hold.
pub fn key(dst: SocketAddr) -> u64 {
    // FNV-1a over the canonical address and port.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let ip = crate::config::canonical(dst.ip());
    let bytes: [u8; 16] = match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    for b in bytes.iter().chain(dst.port().to_be_bytes().iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h | 1
}

fn now_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Whether to write a line now for a refusal towards `dst` at `now` (ms): `Some(n)` with the
/// number of refusals not reported since the last line.
fn due(dst: SocketAddr, now: u64) -> Option<u64> {
    let k = key(dst);
    let slot = &TABLE[(k as usize) % SLOTS];
    if slot.key.swap(k, Relaxed) != k {
        slot.quiet.store(0, Relaxed);
        slot.last.store(now + 1, Relaxed);
        return Some(0);
    }
    let last = slot.last.load(Relaxed);
    if (last == 0 || now + 1 >= last + INTERVAL_MS)
        && slot.last.compare_exchange(last, now + 1, Relaxed, Relaxed).is_ok()
    {
        return Some(slot.quiet.swap(0, Relaxed));
    }
    slot.quiet.fetch_add(1, Relaxed);
    None
}

/// A flow of `proto` towards `dst` was refused with `errno` (EADDRNOTAVAIL, EAGAIN): every
/// slice is full for that destination.
pub fn refused(proto: &str, dst: SocketAddr, errno: libc::c_int) {
    // What the search that refused this flow saw (taken whether or not a line is due).
    let closing = super::retry::LAST_CLOSING.try_with(|c| c.replace(0)).unwrap_or(0);
    if let Some(quiet) = due(dst, now_ms()) {
        let since =
            if quiet > 0 { format!(" ({quiet} more refused since the last line)") } else { String::new() };
        let closing = match closing {
            0 => String::new(),
            n => format!(
                " ({n} of its 4-tuples were closing: a non-blocking connect does not wait, a blocking \
                 one waits up to {} ms)",
                super::wait::BOUND_MS
            ),
        };
        log::warn!(
            "{proto} to {dst}: every slice is full for this destination{closing}; the program got {}{since} \
             (at most one line per destination per {} s)",
            match errno {
                libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
                libc::EAGAIN => "EAGAIN",
                _ => "an error",
            },
            INTERVAL_MS / 1000
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_destination_per_interval() {
        let a: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let b: SocketAddr = "[::ffff:192.0.2.2]:80".parse().unwrap();
        let t = 1_000_000;
        assert_eq!(due(a, t), Some(0));
        assert_eq!(due(b, t), Some(0));
        for i in 1..100 {
            assert_eq!(due(a, t + i), None);
        }
        assert_eq!(due(b, t + 5), None);
        assert_eq!(due(a, t + INTERVAL_MS - 1), None);
        assert_eq!(due(a, t + INTERVAL_MS), Some(100));
        assert_eq!(due(a, t + INTERVAL_MS + 1), None);
        // v4-mapped and plain IPv4 are one destination.
        let b4: SocketAddr = "192.0.2.2:80".parse().unwrap();
        assert_eq!(due(b4, t + 6), None);
        assert_eq!(due(b, t + INTERVAL_MS + 10), Some(2));
    }
}
