//! Per-fd storage, lock-free and allocation-free: the socket's lifecycle word (its meaning is
//! `socket.rs`'s), the program's option records and its epoll registration.
//!
//! An fd can die behind the shim's back (glibc-internal closes under `fclose()` of an
//! `fdopen`ed socket, `close_range`, `dup2` over it), so every entry carries the identity of the
//! socket it describes (its sockfs inode) and is trusted only while that still matches: a reader
//! passes the inode it just read with `fstat`, and a stale entry reads as empty.
//!
//! Storage: a static top-level array (16 KiB) of pointers to middle tables, each of pointers to
//! chunks of 1024 entries, both mapped with `mmap` the first time an fd in their range is
//! written — so every fd a process can own (up to 2^31; systemd raises fs.nr_open to 2^30) is
//! covered without a heap allocation, and close/dup touch only atomics (plus an `mmap` the first
//! time an fd in a new range is recorded; no lock, no malloc).

use libc::c_int;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering::Relaxed};

const CHUNK: usize = 1024;
/// Options outside the replay table remembered per socket (QUIC stacks set UDP_GRO, SO_RXQ_OVFL...).
pub const EXTRA: usize = 4;
const CHUNKS: usize = 1024;

#[derive(Default)]
struct Entry {
    /// sockfs inode of the socket this entry describes; 0 = empty.
    ino: AtomicU64,
    /// The socket's lifecycle word (`socket::State`; this module only stores it).
    state: AtomicU64,
    /// The program's own IP_LOCAL_PORT_RANGE value (low 32 bits).
    range: AtomicU64,
    /// Options the program set, as bits of `options::REPLAY` (carried over by a socket swap).
    opts: AtomicU64,
    /// The last option the program set that cannot be carried over: (level << 32) | name, +1.
    unknown: AtomicU64,
    /// Options outside the replay table that a swap copies as bytes (get on the old socket, set
    /// on the new one): (level << 32) | name, +1; 0 = free slot. A further one goes to `unknown`.
    extra: [AtomicU64; EXTRA],
    /// The program's epoll registration of this fd: epoll fd + 1 (0 = none), events, data.
    /// Not tied to the inode (epoll keys on the fd); checked with EPOLL_CTL_MOD before use.
    ep_fd: AtomicI32,
    ep_events: AtomicU32,
    ep_data: AtomicU64,
}

/// Three levels: a static top of [`TOPS`] pointers to middle tables of [`CHUNKS`] pointers to
/// chunks of [`CHUNK`] entries, mapped on first write: every fd a process can own (fs.nr_open
/// goes up to 2^31 - 64) has an entry, and an unused range costs nothing.
type Mid = [AtomicPtr<Entry>; CHUNKS];
const TOPS: usize = 2048;
static TABLE: [AtomicPtr<Mid>; TOPS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; TOPS];

/// A zeroed anonymous mapping of `bytes` (zeroed memory is a valid array of atomics), installed
/// in `at` unless another thread installed one first; the installed pointer.
fn install<T>(at: &AtomicPtr<T>, bytes: usize) -> Option<*mut T> {
    // SAFETY: anonymous private mapping, no file; the result is checked.
    let m = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if m == libc::MAP_FAILED {
        return None;
    }
    match at.compare_exchange(std::ptr::null_mut(), m.cast(), Relaxed, Relaxed) {
        Ok(_) => Some(m.cast()),
        Err(other) => {
            // SAFETY: we own `m`; another thread installed its mapping first.
            unsafe { libc::munmap(m, bytes) };
            Some(other)
        }
    }
}

/// The middle table for `fd`, if mapped (or mapped now when `create`).
fn mid(fd: usize, create: bool) -> Option<&'static Mid> {
    let top = TABLE.get(fd / (CHUNK * CHUNKS))?;
    let mut p = top.load(Relaxed);
    if p.is_null() {
        if !create {
            return None;
        }
        p = install(top, std::mem::size_of::<Mid>())?;
    }
    // SAFETY: middle tables are never unmapped once installed.
    Some(unsafe { &*p })
}

fn slot(fd: c_int, create: bool) -> Option<&'static Entry> {
    let fd = usize::try_from(fd).ok()?;
    let chunk = &mid(fd, create)?[(fd / CHUNK) % CHUNKS];
    let mut p = chunk.load(Relaxed);
    if p.is_null() {
        if !create {
            return None;
        }
        p = install(chunk, CHUNK * std::mem::size_of::<Entry>())?;
    }
    // SAFETY: chunks are never unmapped once installed; the index is < CHUNK.
    Some(unsafe { &*p.add(fd % CHUNK) })
}

/// The identity of the socket behind `fd` (its inode), or `None` if `fd` is not a socket.
pub fn ino(fd: c_int) -> Option<u64> {
    // SAFETY: fstat writes into a zeroed stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    Some(st.st_ino)
}

/// The lifecycle word recorded for the socket `ino` at `fd` (0 if none, or if the entry is stale).
pub fn word(fd: c_int, ino: u64) -> u64 {
    match slot(fd, false) {
        Some(e) if e.ino.load(Relaxed) == ino => e.state.load(Relaxed),
        _ => 0,
    }
}

/// The program's own IP_LOCAL_PORT_RANGE value recorded for socket `ino` at `fd`.
pub fn prog_range(fd: c_int, ino: u64) -> u32 {
    match slot(fd, false) {
        Some(e) if e.ino.load(Relaxed) == ino => e.range.load(Relaxed) as u32,
        _ => 0,
    }
}

fn claim(fd: c_int, ino: u64) -> Option<&'static Entry> {
    let e = slot(fd, true)?;
    if e.ino.load(Relaxed) != ino {
        e.state.store(0, Relaxed);
        e.range.store(0, Relaxed);
        e.opts.store(0, Relaxed);
        e.unknown.store(0, Relaxed);
        for x in &e.extra {
            x.store(0, Relaxed);
        }
        e.ino.store(ino, Relaxed);
    }
    Some(e)
}

/// Options recorded for socket `ino` at `fd`: (replay bits, the last unknown (level, name)).
pub fn opts(fd: c_int, ino: u64) -> (u64, Option<(c_int, c_int)>) {
    match slot(fd, false) {
        Some(e) if e.ino.load(Relaxed) == ino => {
            let u = e.unknown.load(Relaxed);
            let unknown = (u != 0).then(|| unpack(u));
            (e.opts.load(Relaxed), unknown)
        }
        _ => (0, None),
    }
}

fn pack(level: c_int, name: c_int) -> u64 {
    ((level as u32 as u64) << 32 | name as u32 as u64) + 1
}

fn unpack(u: u64) -> (c_int, c_int) {
    (((u - 1) >> 32) as c_int, (u - 1) as u32 as c_int)
}

/// The program set option bit `bit` (an index into `options::REPLAY`), or another option:
/// `copyable` ones are remembered (up to [`EXTRA`]) to be copied as bytes, the rest make a swap
/// impossible.
pub fn record_opt(fd: c_int, ino: u64, bit: Option<u32>, level: c_int, name: c_int, copyable: bool) {
    if let Some(e) = claim(fd, ino) {
        match bit {
            Some(b) => {
                e.opts.fetch_or(1 << b, Relaxed);
            }
            None => {
                let v = pack(level, name);
                if copyable {
                    for x in &e.extra {
                        match x.compare_exchange(0, v, Relaxed, Relaxed) {
                            Ok(_) => return,
                            Err(cur) if cur == v => return,
                            Err(_) => {}
                        }
                    }
                }
                e.unknown.store(v, Relaxed)
            }
        }
    }
}

/// The options outside the replay table recorded for socket `ino` at `fd`, to copy as bytes.
pub fn extra_opts(fd: c_int, ino: u64) -> [Option<(c_int, c_int)>; EXTRA] {
    let mut out = [None; EXTRA];
    if let Some(e) = slot(fd, false).filter(|e| e.ino.load(Relaxed) == ino) {
        for (o, x) in out.iter_mut().zip(&e.extra) {
            let u = x.load(Relaxed);
            *o = (u != 0).then(|| unpack(u));
        }
    }
    out
}

/// The socket behind `fd` was replaced (swap): the entry now describes `new_ino`.
pub fn rekey(fd: c_int, new_ino: u64) {
    if let Some(e) = slot(fd, true) {
        e.ino.store(new_ino, Relaxed);
    }
}

/// Record the program's epoll registration of `fd` (ADD/MOD), or forget it (DEL).
pub fn epoll_record(fd: c_int, epfd: c_int, ev: Option<(u32, u64)>) {
    match ev {
        Some((events, data)) => {
            if let Some(e) = slot(fd, true) {
                e.ep_events.store(events, Relaxed);
                e.ep_data.store(data, Relaxed);
                e.ep_fd.store(epfd + 1, Relaxed);
            }
        }
        None => {
            if let Some(e) = slot(fd, false) {
                let _ = e.ep_fd.compare_exchange(epfd + 1, 0, Relaxed, Relaxed);
            }
        }
    }
}

/// The recorded epoll registration of `fd`: (epfd, events, data).
pub fn epoll_of(fd: c_int) -> Option<(c_int, u32, u64)> {
    let e = slot(fd, false)?;
    let ep = e.ep_fd.load(Relaxed);
    (ep > 0).then(|| (ep - 1, e.ep_events.load(Relaxed), e.ep_data.load(Relaxed)))
}

/// Replace the lifecycle word of socket `ino` at `fd` by `f(word)` (a stale entry is reset
/// first). One compare-and-swap loop: concurrent changes of the same socket are not lost.
pub fn modify(fd: c_int, ino: u64, f: impl Fn(u64) -> u64) {
    if let Some(e) = claim(fd, ino) {
        let _ = e.state.fetch_update(Relaxed, Relaxed, |w| Some(f(w)));
    }
}

/// Replace the lifecycle word of whatever socket `fd`'s entry describes by `f(word)`, with no
/// identity check (atomics only; nothing happens when the entry is empty, and no write when
/// `f` changes nothing: a dup of a socket already touched costs loads only).
pub fn modify_unchecked(fd: c_int, f: impl Fn(u64) -> u64) {
    if let Some(e) = slot(fd, false).filter(|e| e.ino.load(Relaxed) != 0) {
        let _ = e.state.fetch_update(Relaxed, Relaxed, |w| (f(w) != w).then(|| f(w)));
    }
}

/// Record the program's own IP_LOCAL_PORT_RANGE value.
pub fn set_prog_range(fd: c_int, ino: u64, v: u32) {
    if let Some(e) = claim(fd, ino) {
        e.range.store(u64::from(v), Relaxed);
    }
}

/// Whether `fd` has an entry at all (cheap: no syscall).
pub fn occupied(fd: c_int) -> bool {
    slot(fd, false).is_some_and(|e| e.ino.load(Relaxed) != 0 || e.ep_fd.load(Relaxed) != 0)
}

/// Forget `fd` (it was closed).
pub fn clear(fd: c_int) {
    if let Some(e) = slot(fd, false) {
        e.ino.store(0, Relaxed);
        e.ep_fd.store(0, Relaxed);
    }
}

/// Walk the entries of the chunks in use (no syscall, no allocation) until `f` says stop: the
/// fd number and its entry. For the rare passes over all sockets.
fn scan(mut f: impl FnMut(usize, &Entry) -> bool) -> Option<usize> {
    for (t, top) in TABLE.iter().enumerate() {
        let m = top.load(Relaxed);
        if m.is_null() {
            continue;
        }
        // SAFETY: an installed mid table, never freed.
        let m = unsafe { &*m };
        for (c, chunk) in m.iter().enumerate() {
            let p = chunk.load(Relaxed);
            if p.is_null() {
                continue;
            }
            for lo in 0..CHUNK {
                // SAFETY: an installed chunk of CHUNK entries, never unmapped.
                let e = unsafe { &*p.add(lo) };
                let fd = (t * CHUNKS + c) * CHUNK + lo;
                if f(fd, e) {
                    return Some(fd);
                }
            }
        }
    }
    None
}

/// Another descriptor of the same socket `ino` whose lifecycle word satisfies `wanted` (a dup made
/// before the shim changed an option on the original fd knows nothing of it): for the rare reads
/// of the options the shim manages.
pub fn sibling(fd: c_int, ino: u64, wanted: impl Fn(u64) -> bool) -> Option<c_int> {
    scan(|other, e| other != fd as usize && e.ino.load(Relaxed) == ino && wanted(e.state.load(Relaxed)))
        .and_then(|other| c_int::try_from(other).ok())
}

/// Every entry that names a socket: `f(fd, ino, lifecycle word)` (before an exec).
pub fn each(mut f: impl FnMut(c_int, u64, u64)) {
    scan(|fd, e| {
        let ino = e.ino.load(Relaxed);
        if ino != 0 {
            if let Ok(fd) = c_int::try_from(fd) {
                f(fd, ino, e.state.load(Relaxed));
            }
        }
        false
    });
}

/// `to` now refers to the same socket as `from` (dup): copy the entry, or clear `to`.
#[cfg(test)]
pub fn copy(from: c_int, to: c_int) {
    copy_with(from, to, |w| w)
}

/// A dup of `from` into `to` (the hooks' bookkeeping, one look-up of `from`): nothing when
/// `from` has no entry at all. Else the lifecycle word of `from` becomes `f(word)` (written
/// only when it changes), and `to` gets a copy of the entry with that word — unless the word
/// is not `worth` a copy and no option is recorded: then `to` gets no entry (the dup's calls
/// look at the socket; a copy costs more stores than the dup is worth), and an old entry of
/// `to` is dropped only if it names this very socket (any other reads as stale anyway).
#[inline]
pub fn duped(from: c_int, to: c_int, f: impl Fn(u64) -> u64, worth: impl Fn(u64) -> bool) {
    let Some(src) = slot(from, false) else { return };
    let ino = src.ino.load(Relaxed);
    if ino == 0 && src.ep_fd.load(Relaxed) == 0 {
        return;
    }
    let _ = src.state.fetch_update(Relaxed, Relaxed, |w| (f(w) != w).then(|| f(w)));
    let bare = !worth(src.state.load(Relaxed))
        && src.range.load(Relaxed) == 0
        && src.opts.load(Relaxed) == 0
        && src.unknown.load(Relaxed) == 0
        // Extra options fill the slots in order: the first one empty means all are.
        && src.extra[0].load(Relaxed) == 0;
    if bare {
        if let Some(dst) = slot(to, false).filter(|d| d.ino.load(Relaxed) == ino) {
            dst.ino.store(0, Relaxed);
        }
    } else {
        copy_with(from, to, f)
    }
}

fn copy_with(from: c_int, to: c_int, f: impl Fn(u64) -> u64) {
    match slot(from, false) {
        Some(src) if src.ino.load(Relaxed) != 0 => {
            if let Some(dst) = slot(to, true) {
                dst.ino.store(0, Relaxed);
                dst.state.store(f(src.state.load(Relaxed)), Relaxed);
                dst.range.store(src.range.load(Relaxed), Relaxed);
                dst.opts.store(src.opts.load(Relaxed), Relaxed);
                dst.unknown.store(src.unknown.load(Relaxed), Relaxed);
                for (d, x) in dst.extra.iter().zip(&src.extra) {
                    d.store(x.load(Relaxed), Relaxed);
                }
                // epoll registrations belong to the fd number, not the socket: the new number
                // has none.
                dst.ep_fd.store(0, Relaxed);
                dst.ino.store(src.ino.load(Relaxed), Relaxed);
            }
        }
        _ => clear(to),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn entries_follow_socket_identity() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = a.as_raw_fd();
        let ino_a = ino(fd).unwrap();
        assert_eq!(word(fd, ino_a), 0);
        modify(fd, ino_a, |w| w | 0b1100);
        set_prog_range(fd, ino_a, 7);
        assert_eq!(word(fd, ino_a), 0b1100);
        assert_eq!(prog_range(fd, ino_a), 7);
        modify(fd, ino_a, |w| w & !0b100);
        assert_eq!(word(fd, ino_a), 0b1000);

        // The fd dies behind our back and a new socket takes its number: the entry is stale.
        drop(a);
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ino_b = ino(b.as_raw_fd()).unwrap();
        assert_ne!(ino_a, ino_b);
        if b.as_raw_fd() == fd {
            assert_eq!(word(fd, ino_b), 0);
            assert_eq!(prog_range(fd, ino_b), 0);
        }
        // Writing for the new socket resets the stale entry first.
        modify(b.as_raw_fd(), ino_b, |w| w | 0b10000);
        assert_eq!(word(b.as_raw_fd(), ino_b), 0b10000);

        // dup copies; close clears.
        copy(b.as_raw_fd(), 5000);
        assert_eq!(word(5000, ino_b), 0b10000);
        assert!(occupied(5000));
        clear(5000);
        assert!(!occupied(5000));
        assert_eq!(word(5000, ino_b), 0);
        copy(4999, 5000); // from an empty entry: clears
        assert!(!occupied(5000));

        // Options and the unknown one.
        record_opt(5001, 77, Some(3), 0, 0, false);
        record_opt(5001, 77, None, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, false);
        record_opt(5001, 77, None, libc::IPPROTO_UDP, 104, true);
        record_opt(5001, 77, None, libc::IPPROTO_UDP, 104, true);
        assert_eq!(extra_opts(5001, 77), [Some((libc::IPPROTO_UDP, 104)), None, None, None]);
        assert_eq!(opts(5001, 77), (1 << 3, Some((libc::SOL_SOCKET, libc::SO_ATTACH_FILTER))));
        assert_eq!(opts(5001, 78), (0, None));
        rekey(5001, 78);
        assert_eq!(opts(5001, 78).0, 1 << 3);
        // epoll: recorded per fd number, cleared by DEL of the same epoll fd and by close.
        epoll_record(5002, 9, Some((libc::EPOLLIN as u32, 1234)));
        assert_eq!(epoll_of(5002), Some((9, libc::EPOLLIN as u32, 1234)));
        epoll_record(5002, 8, None);
        assert!(epoll_of(5002).is_some(), "DEL on another epoll fd");
        epoll_record(5002, 9, None);
        assert_eq!(epoll_of(5002), None);
        epoll_record(5002, 9, Some((1, 2)));
        clear(5002);
        assert_eq!(epoll_of(5002), None);
    }

    #[test]
    fn duped_changes_the_source_and_copies_only_what_is_worth_it() {
        let (f, worth) = (|w: u64| w & !0b100, |w: u64| w & 0b1000 != 0);
        // Nothing recorded at all: nothing happens, `to` keeps what it had.
        modify(5101, 9, |_| 0b1000);
        duped(5100, 5101, f, worth);
        assert_eq!(word(5101, 9), 0b1000);
        // A word worth a copy: both numbers get f(word).
        modify(5100, 7, |_| 0b1100);
        duped(5100, 5101, f, worth);
        assert_eq!((word(5100, 7), word(5101, 7)), (0b1000, 0b1000));
        // A bare word (not worth it, no option recorded): `from` changed, `to` not copied; its
        // old entry dropped when it names the same socket, else left (it reads as stale).
        modify(5102, 8, |_| 0b0110);
        modify(5101, 8, |_| 0b1111);
        duped(5102, 5101, f, worth);
        assert_eq!(word(5102, 8), 0b0010);
        assert_eq!(word(5101, 8), 0, "the old entry of the same socket is gone");
        modify(5103, 6, |_| 0b1);
        duped(5102, 5103, f, worth);
        assert_eq!((word(5103, 6), word(5103, 8)), (0b1, 0), "another socket's entry left as it was");
        // The same word with an option recorded: copied.
        record_opt(5102, 8, Some(2), 0, 0, false);
        duped(5102, 5101, f, worth);
        assert_eq!((word(5101, 8), opts(5101, 8).0), (0b0010, 1 << 2));
    }

    #[test]
    fn negative_fds_are_ignored_and_high_ones_kept() {
        modify(-1, 1, |w| w | 0b1000);
        assert_eq!(word(-1, 1), 0);
        // Descriptors at and above 2^20 (fs.nr_open raised), up to the largest c_int.
        for fd in [1 << 20, (1 << 20) + 1023, 1 << 21, (1 << 30) + 5, c_int::MAX] {
            modify(fd, 7, |w| w | 0b100000);
            assert_eq!(word(fd, 7), 0b100000, "fd {fd}");
            assert!(occupied(fd));
            copy(fd, fd - 1);
            assert_eq!(word(fd - 1, 7), 0b100000, "dup of fd {fd}");
        }
        for fd in [1 << 20, 1 << 21, (1 << 30) + 5, c_int::MAX, c_int::MAX - 1] {
            clear(fd);
            assert!(!occupied(fd), "fd {fd} cleared");
        }
        assert!(ino(-1).is_none());
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(ino(f.as_raw_fd()).is_none(), "files are not sockets");
    }
}
