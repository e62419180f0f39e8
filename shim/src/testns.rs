//! Unit tests only: the test process runs in a network namespace of its own.
//!
//! The strategy, diag and conntrack unit tests bind fixed ports of 127.0.0.2 (59900-59999). In
//! the host's namespace a TIME_WAIT left there by anything else — a benchmark, an integration
//! test's slice, another engineer's run — made them fail (`exclusive::owns_every_port_once_then_
//! refuses`: EADDRINUSE). A constructor moves the process, before the test harness starts its
//! threads (they inherit the namespace), into a fresh one with `lo` up. Not root: the tests run
//! where they are, as before.

/// `unshare(CLONE_NEWNET)` and bring `lo` up; nothing if not permitted.
extern "C" fn private_netns() {
    // SAFETY: plain syscalls at process start (one thread); the ifreq is zeroed and its name
    // NUL-terminated; the fd is closed.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            return;
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        }
        libc::close(fd);
    }
}

#[used]
#[link_section = ".init_array"]
static PRIVATE_NETNS: extern "C" fn() = private_netns;

#[test]
fn runs_in_a_namespace_of_its_own() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP runs_in_a_namespace_of_its_own: not root");
        return;
    }
    let mine = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    // SAFETY: getppid has no preconditions.
    let parent = std::fs::read_link(format!("/proc/{}/ns/net", unsafe { libc::getppid() })).unwrap();
    assert_ne!(mine, parent, "the unit tests share the network namespace they were started in");
    std::net::UdpSocket::bind("127.0.0.2:0").expect("lo is up");
}
