//! The shim's own descriptors: close-on-exec, placed high, and checked before every use.
//!
//! The program may close or reuse any fd number (close_range, closefrom, dup2 over it), so an
//! own fd remembers the identity (device, inode) of what it was opened on, and every use first
//! checks that the number still refers to that; if not, the descriptor is given up — its number
//! may now be one of the program's files or sockets, and must never receive the shim's bytes.

use crate::real;
use libc::c_int;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};

pub struct OwnFd {
    fd: AtomicI32,
    dev: AtomicU64,
    ino: AtomicU64,
}

fn identity(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

/// The lowest number an own descriptor takes: high, but inside the usual 1024 soft limit so the
/// kernel's fd table does not grow (and select() users are unaffected in practice).
pub fn high_floor() -> c_int {
    // SAFETY: getrlimit into a zeroed struct.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur.min(1024) as c_int
    } else {
        256
    };
    (soft - 64).max(3)
}

impl OwnFd {
    pub const fn new() -> OwnFd {
        OwnFd { fd: AtomicI32::new(-1), dev: AtomicU64::new(0), ino: AtomicU64::new(0) }
    }

    fn set(&self, fd: c_int) -> bool {
        match identity(fd) {
            Some((dev, ino)) => {
                self.dev.store(dev, Relaxed);
                self.ino.store(ino, Relaxed);
                self.fd.store(fd, Relaxed);
                true
            }
            None => false,
        }
    }

    /// Duplicate `src` (e.g. the program's stderr at start) as this own descriptor.
    pub fn dup_of(&self, src: c_int) -> bool {
        // SAFETY: F_DUPFD_CLOEXEC never touches `src` itself.
        let fd = unsafe { real::fcntl(src, libc::F_DUPFD_CLOEXEC, high_floor() as libc::c_ulong) };
        fd >= 0 && self.set(fd)
    }

    /// The fd, if it still refers to what it was opened on. A mismatch forgets it for good
    /// (the number now belongs to the program; it is not closed).
    pub fn get(&self) -> Option<c_int> {
        let fd = self.fd.load(Relaxed);
        if fd < 0 {
            return None;
        }
        match identity(fd) {
            Some((dev, ino)) if dev == self.dev.load(Relaxed) && ino == self.ino.load(Relaxed) => Some(fd),
            _ => {
                self.fd.store(-1, Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_reuse_of_its_number() {
        let own = OwnFd::new();
        assert!(own.dup_of(1));
        let fd = own.get().expect("valid");
        assert!(fd >= 3);
        // FD_CLOEXEC is set.
        // SAFETY: F_GETFD on our own descriptor.
        assert_ne!(unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC, 0);
        // The program closes our number and reuses it for something else.
        // SAFETY: the test plays the program: it closes our number...
        unsafe { libc::close(fd) };
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: ...and reuses it for its own file (dup2 onto a number it just freed).
        unsafe { libc::dup2(f.as_raw_fd(), fd) };
        assert_eq!(own.get(), None, "a reused number must not be used");
        // SAFETY: the test's own file.
        unsafe { libc::close(fd) };
    }
}
