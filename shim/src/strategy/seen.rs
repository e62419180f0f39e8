//! A short-lived memory, per destination, of the slice ports whose 4-tuple a look-up found
//! held: the retry strategy skips them without a look-up for a while (in a 90% full slice a
//! connect looked up ~9.6 candidates to find one free).
//!
//! Skipping a port that became free meanwhile is harmless (another candidate is taken), and a
//! search never ends on the memory's word: a pass that skipped remembered ports and found
//! nothing free checks the whole slice again for real ([`super::retry`]) before it declares the
//! slice full or waits for closing tuples. So the memory needs no exactness: it is a small
//! direct-mapped table of bitmaps (one per destination and slice, the first [`BITS`] ports of a
//! slice), atomics only — no lock, nothing a fork or a signal can leave half-held; a race
//! between two threads costs at most a skipped free port or a look-up too many. An entry is
//! forgotten [`TTL`] after it was started, so that ports freed since are tried again.

use crate::config::Slice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Destinations remembered at once.
const WAYS: usize = 8;
/// Ports remembered per slice (the first BITS of a larger one).
pub const BITS: usize = 1024;
const WORDS: usize = BITS / 64;
/// How long an entry is used after it was started.
pub const TTL: Duration = Duration::from_millis(250);

struct Way {
    /// Which destination and slice (0: none).
    key: AtomicU64,
    /// When the entry was started (ms of the monotonic clock).
    born: AtomicU64,
    bits: [AtomicU64; WORDS],
}

pub struct Table([Way; WAYS]);

impl Table {
    pub const fn new() -> Table {
        Table(
            [const {
                Way {
                    key: AtomicU64::new(0),
                    born: AtomicU64::new(0),
                    bits: [const { AtomicU64::new(0) }; WORDS],
                }
            }; WAYS],
        )
    }
}

static TABLE: Table = Table::new();

/// Milliseconds of CLOCK_MONOTONIC (the vDSO: no syscall).
fn now_ms() -> u64 {
    // SAFETY: clock_gettime into a zeroed timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1000).wrapping_add(ts.tv_nsec as u64 / 1_000_000)
}

fn key(slice: &Slice, dst: SocketAddr) -> u64 {
    // FNV-1a over the destination and the slice: any mix will do (a collision only shares an
    // entry, which is harmless).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h = (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    let ip = |a: std::net::IpAddr| match crate::config::canonical(a) {
        std::net::IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v) => v.octets(),
    };
    eat(&ip(dst.ip()));
    eat(&dst.port().to_ne_bytes());
    eat(&ip(slice.ip));
    eat(&slice.lo.to_ne_bytes());
    eat(&slice.hi.to_ne_bytes());
    h | 1
}

/// The memory of one destination and slice, for one search.
#[derive(Clone, Copy)]
pub struct Seen {
    table: &'static Table,
    way: usize,
    key: u64,
}

impl Seen {
    /// The entry for `dst` in `slice`: the remembered one if it is young enough, else a fresh one.
    pub fn open(slice: &Slice, dst: SocketAddr) -> Seen {
        Seen::open_at(&TABLE, slice, dst, now_ms())
    }

    fn open_at(table: &'static Table, slice: &Slice, dst: SocketAddr, now: u64) -> Seen {
        let key = key(slice, dst);
        let way = (key >> 7) as usize % WAYS;
        let w = &table.0[way];
        let born = w.born.load(Relaxed);
        if w.key.load(Relaxed) != key || now.wrapping_sub(born) >= TTL.as_millis() as u64 {
            // Started again: nothing remembered (a thread marking meanwhile for the old key
            // leaves a bit or two: at most a free port skipped).
            w.key.store(0, Relaxed);
            for b in &w.bits {
                b.store(0, Relaxed);
            }
            w.born.store(now, Relaxed);
            w.key.store(key, Relaxed);
        }
        Seen { table, way, key }
    }

    fn valid(&self) -> Option<&'static Way> {
        let w = &self.table.0[self.way];
        (w.key.load(Relaxed) == self.key).then_some(w)
    }

    /// Port `i` of the slice was found held (by a socket, a closing tuple, or conntrack).
    pub fn mark(&self, i: u32) {
        let i = i as usize;
        if i < BITS {
            if let Some(w) = self.valid() {
                w.bits[i / 64].fetch_or(1 << (i % 64), Relaxed);
            }
        }
    }

    /// Port `i` was found held not long ago: skip it without a look-up.
    pub fn held(&self, i: u32) -> bool {
        let i = i as usize;
        i < BITS && self.valid().is_some_and(|w| w.bits[i / 64].load(Relaxed) & (1 << (i % 64)) != 0)
    }

    /// Forget what this entry remembers (a pass that skipped ports found nothing free).
    pub fn forget(&self) {
        if let Some(w) = self.valid() {
            for b in &w.bits {
                b.store(0, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(lo: u16) -> Slice {
        Slice { ip: "127.0.0.2".parse().unwrap(), lo, hi: lo + 2047 }
    }

    #[test]
    fn remembers_per_destination_until_it_expires() {
        static T: Table = Table::new();
        let (s, d1, d2) = (slice(20000), "127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        let t0 = 1_000_000;
        let m = Seen::open_at(&T, &s, d1, t0);
        assert!(!m.held(5));
        m.mark(5);
        m.mark(BITS as u32 + 5); // beyond what is remembered
        let again = Seen::open_at(&T, &s, d1, t0 + 10);
        assert!(again.held(5) && !again.held(6) && !again.held(BITS as u32 + 5));
        // Another destination (if it shares the way, it starts it afresh).
        let other = Seen::open_at(&T, &s, d2, t0 + 20);
        assert!(!other.held(5));
        other.mark(7);
        // Expired: started again, nothing remembered.
        let late = Seen::open_at(&T, &s, d2, t0 + 20 + TTL.as_millis() as u64);
        assert!(!late.held(7));
        late.mark(9);
        assert!(late.held(9));
        late.forget();
        assert!(!late.held(9));
    }

    #[test]
    fn a_replaced_entry_answers_nothing_for_the_old_key() {
        static T: Table = Table::new();
        let s = slice(24000);
        let d1: SocketAddr = "127.0.0.1:3".parse().unwrap();
        // Find a destination that maps to the same way.
        let k1 = key(&s, d1);
        let d2 = (4..10_000u16)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .find(|d| (key(&s, *d) >> 7) as usize % WAYS == (k1 >> 7) as usize % WAYS && key(&s, *d) != k1)
            .unwrap();
        let m1 = Seen::open_at(&T, &s, d1, 5_000_000);
        m1.mark(1);
        let m2 = Seen::open_at(&T, &s, d2, 5_000_001);
        assert!(!m1.held(1), "the way now belongs to another destination");
        m1.mark(2); // ignored
        assert!(!m2.held(2));
    }
}
