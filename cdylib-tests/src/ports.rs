//! Cross-process port allocator: slices and listener ports unique across parallel test binaries.

use crate::*;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Slices inside the default ephemeral range (32768-60999), so `auto` can use the kernel.
pub const SLICE_RANGE: (u16, u16) = (33000, 60000);
/// Listeners below the ephemeral range.
pub const LISTEN_RANGE: (u16, u16) = (20000, 32000);
/// Slices above the ephemeral range.
pub const HIGH_RANGE: (u16, u16) = (61000, 65500);

const ALLOC_FILE: &str = "/tmp/portrange-cdylib-tests.ports";

#[derive(Clone, Copy)]
enum Pool {
    Slice = 0,
    Listen = 1,
    High = 2,
}

/// Open the allocator file read-write, creating it usable by every user (0666), so root and
/// non-root runs on one machine share it. An existing file is opened without O_CREAT: with
/// `fs.protected_regular`, O_CREAT on another user's file in sticky /tmp fails even when its mode
/// allows writing.
pub fn open_alloc_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    for _ in 0..8 {
        match OpenOptions::new().read(true).write(true).open(path) {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Ok(f) => {
                // A file an earlier version created 0644: its owner opens it up for everyone.
                if f.metadata().is_ok_and(|m| m.permissions().mode() & 0o666 != 0o666) {
                    let _ = f.set_permissions(std::fs::Permissions::from_mode(0o666));
                }
                return Ok(f);
            }
            r => return r,
        }
        match OpenOptions::new().read(true).write(true).create_new(true).mode(0o666).open(path) {
            Ok(f) => {
                // The umask narrowed the mode: widen it on the open file.
                f.set_permissions(std::fs::Permissions::from_mode(0o666))?;
                return Ok(f);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("the file keeps appearing and disappearing"))
}

/// Reserve `n` consecutive ports of `pool`; returns the first. Wraps around at the pool's end.
fn alloc(pool: Pool, n: u16) -> u16 {
    let (start, end) = match pool {
        Pool::Slice => SLICE_RANGE,
        Pool::Listen => LISTEN_RANGE,
        Pool::High => HIGH_RANGE,
    };
    assert!(n >= 1 && n < end - start, "cannot allocate {n} ports");
    let mut f =
        open_alloc_file(Path::new(ALLOC_FILE)).unwrap_or_else(|e| panic!("cannot open {ALLOC_FILE}: {e}"));
    // SAFETY: flock on an fd we own; released when `f` is closed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        panic!("flock {ALLOC_FILE}: {}", std::io::Error::last_os_error());
    }
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let mut next: Vec<u16> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    if next.len() != 3 {
        next = vec![SLICE_RANGE.0, LISTEN_RANGE.0, HIGH_RANGE.0];
    }
    let i = pool as usize;
    let mut first = next[i];
    if first < start || u32::from(first) + u32::from(n) > u32::from(end) {
        first = start;
    }
    next[i] = first + n;
    let out = format!("{} {} {}\n", next[0], next[1], next[2]);
    f.set_len(0)
        .and_then(|_| f.seek(SeekFrom::Start(0)))
        .and_then(|_| f.write_all(out.as_bytes()))
        .unwrap_or_else(|e| panic!("cannot write {ALLOC_FILE}: {e}"));
    first
}

/// `n` fresh ports for a slice, inside 33000..60000: `(lo, hi)`.
pub fn slice_ports(n: u16) -> (u16, u16) {
    let lo = alloc(Pool::Slice, n);
    (lo, lo + n - 1)
}

/// `n` fresh ports for a slice above the ephemeral range (61000..65500): `(lo, hi)`.
pub fn high_slice_ports(n: u16) -> (u16, u16) {
    let lo = alloc(Pool::High, n);
    (lo, lo + n - 1)
}

/// A fresh port for a listener, in 20000..32000. Callers bind it and retry on EADDRINUSE.
pub fn listen_port() -> u16 {
    alloc(Pool::Listen, 1)
}

/// Bind a TCP listener on `ip` at a fresh listen port (retrying on EADDRINUSE).
pub fn bind_listener(ip: IpAddr) -> TcpListener {
    let mut last = None;
    for _ in 0..64 {
        let port = listen_port();
        match TcpListener::bind(SocketAddr::new(ip, port)) {
            Ok(l) => return l,
            Err(e) if e.kind() == ErrorKind::AddrInUse => last = Some(e),
            Err(e) => panic!("cannot listen on {}: {e}", SocketAddr::new(ip, port)),
        }
    }
    panic!("no free listen port on {ip}: {last:?}")
}

/// A listen-pool port that is free on 127.0.0.1 right now (bound once, then released), for a
/// program to listen on or for a connect that must be refused. The allocator hands it to nobody
/// else.
pub fn free_listen_port() -> u16 {
    bind_listener(LOCALHOST_V4).local_addr().expect("local_addr").port()
}

/// `net.ipv4.ip_local_port_range` of the caller's network namespace.
pub fn local_port_range() -> (u16, u16) {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("read /proc/sys/net/ipv4/ip_local_port_range");
    let v: Vec<u16> = s.split_whitespace().map(|w| w.parse().expect("port")).collect();
    (v[0], v[1])
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod harness_tests {
    use super::*;
    use crate::TempDir;
    use std::os::unix::fs::PermissionsExt;

    /// The shared port-allocation file is usable by any user (root and non-root runs share it).
    #[test]
    fn alloc_file_is_shared_by_every_user() {
        let _ = slice_ports(1);
        let mode = std::fs::metadata(ALLOC_FILE).expect("allocator file").permissions().mode();
        assert_eq!(mode & 0o666, 0o666, "{ALLOC_FILE} has mode {mode:o}");
        // A fresh one is created 0666 whatever the umask.
        let dir = TempDir::new("alloc");
        let p = dir.path().join("ports");
        // SAFETY: umask only changes this process's file-creation mask; restored below.
        let old = unsafe { libc::umask(0o077) };
        let f = open_alloc_file(&p);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        f.expect("create");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o666);
    }
}
