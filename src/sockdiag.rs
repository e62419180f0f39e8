//! Is NETLINK_SOCK_DIAG usable by this process? Hardened services may not open AF_NETLINK
//! sockets (systemd `RestrictAddressFamilies=`, a seccomp filter); the shim then places flows
//! without its look-ups (see the README), and `portrange check` says so.

/// `Err(errno)` if a NETLINK_SOCK_DIAG socket cannot be opened here for a lasting reason
/// (EAFNOSUPPORT, EPERM, EACCES...). A transient failure (out of descriptors or memory) counts
/// as available.
pub fn probe() -> Result<(), i32> {
    // SAFETY: socket/close on a descriptor we own.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG)
    };
    if fd >= 0 {
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        return Ok(());
    }
    let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    if lasting(e) {
        Err(e)
    } else {
        Ok(())
    }
}

/// A socket() errno that will not go away by retrying (a sandbox, a kernel without the family).
pub fn lasting(e: i32) -> bool {
    matches!(e, libc::EAFNOSUPPORT | libc::EPERM | libc::EACCES | libc::EPROTONOSUPPORT | libc::EINVAL)
}

/// What placing flows without sock_diag costs, in one sentence (log line and `portrange check`).
pub const COST: &str = "UDP connects get a slice port of their own (race-free, but not shared across \
     peers: a slice serves at most its size in concurrent UDP flows in total), and the retry \
     strategy binds candidate ports without looking them up first (more failed attempts and socket \
     swaps when the slice is busy)";

#[cfg(test)]
mod tests {
    #[test]
    fn available_here() {
        assert_eq!(super::probe(), Ok(()));
        assert!(super::lasting(libc::EAFNOSUPPORT) && !super::lasting(libc::EMFILE));
    }
}
