//! Network namespaces: a private one per test, and named client/server pairs over a veth.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

/// Run `f` on a new thread that first enters a private network namespace (`unshare(CLONE_NEWNET)`
/// affects only that thread and what it spawns: threads, child processes, sockets it creates).
/// Panics with a clear message if unsharing is not permitted: call [`require_netns!`] first to
/// skip visibly instead when not root.
pub fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let h = thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            // SAFETY: plain syscall; affects only this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                panic!("unshare(CLONE_NEWNET) failed: {e} — this test needs root (CAP_SYS_ADMIN) to make a private network namespace (start it with require_netns!() to skip when not root)");
            }
            f()
        })
        .expect("spawn netns thread");
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Run `f` in a private network namespace with `lo` up where namespaces can be made (root), so
/// that a test's loopback slices, TIME_WAITs and bind buckets meet no other test's; elsewhere in
/// the current namespace, as before (tests that need no more than loopback still run as any
/// user).
pub fn isolated<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    if !crate::can_unshare_net() {
        return f();
    }
    in_private_netns(move || {
        sh(&["ip", "link", "set", "lo", "up"]);
        f()
    })
}

/// Run a setup command (e.g. `ip link set lo up`) and panic if it fails.
#[track_caller]
pub fn sh(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Wait helper: a generous timeout for a recorder to see connections a finished program made.
pub const PEER_WAIT: Duration = Duration::from_secs(5);

/// Read `/proc/sys/...` value if present.
pub fn sysctl(path: &str) -> Option<String> {
    let mut s = String::new();
    File::open(Path::new("/proc/sys").join(path)).ok()?.read_to_string(&mut s).ok()?;
    Some(s.trim().to_string())
}

/// Run `f` on a thread that entered the named network namespace (`ip netns add NAME`), as do the
/// threads and processes it spawns.
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    let h = thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a namespace fd we own; affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!("setns({path}): {}", std::io::Error::last_os_error());
            }
            f()
        })
        .expect("spawn netns thread");
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// A python3 helper (`-c code args...`) in the named namespace, without the shim, in a process
/// group of its own (so a test can kill what it starts), stdout piped, stderr inherited.
pub fn python_in_netns(name: &str, code: &'static str, args: Vec<String>) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    in_netns(name, move || {
        Command::new(crate::python3())
            .arg("-c")
            .arg(code)
            .args(args)
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("spawn a namespace helper")
    })
}

/// Two named network namespaces, client and server, joined by a veth pair (`vc` in the client,
/// `vs` in the server), both up with their loopback; deleted on drop. Names are
/// `<prefix>c-PID-N` / `<prefix>s-PID-N`, unique across parallel tests and test binaries.
pub struct VethPair {
    pub client: String,
    pub server: String,
}

impl VethPair {
    /// `client` / `server`: addresses with their prefix length (`198.51.100.10/24`,
    /// `2001:db8:a::10/64`; IPv6 ones are added without duplicate address detection).
    pub fn new(prefix: &str, client: &[&str], server: &[&str]) -> VethPair {
        static N: AtomicUsize = AtomicUsize::new(0);
        let tag = format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let pair = VethPair { client: format!("{prefix}c-{tag}"), server: format!("{prefix}s-{tag}") };
        let (c, s) = (pair.client.as_str(), pair.server.as_str());
        sh(&["ip", "netns", "add", c]);
        sh(&["ip", "netns", "add", s]);
        sh(&["ip", "-n", c, "link", "add", "vc", "type", "veth", "peer", "name", "vs", "netns", s]);
        for (ns, dev, addrs) in [(c, "vc", client), (s, "vs", server)] {
            for a in addrs {
                let mut argv = vec!["ip", "-n", ns, "addr", "add", a, "dev", dev];
                if a.contains(':') {
                    argv.push("nodad");
                }
                sh(&argv);
            }
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }

    /// Run `f` on a thread inside the client namespace (as are the processes it spawns).
    pub fn in_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.client, f)
    }

    /// Run `f` on a thread inside the server namespace (as are the processes it spawns).
    pub fn in_server<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.server, f)
    }

    /// Route `net` from the client through its veth.
    pub fn client_route(&self, net: &str) -> &Self {
        sh(&["ip", "-n", &self.client, "route", "add", net, "dev", "vc"]);
        self
    }

    /// Route `net` from the server through its veth.
    pub fn server_route(&self, net: &str) -> &Self {
        sh(&["ip", "-n", &self.server, "route", "add", net, "dev", "vs"]);
        self
    }

    /// Set a sysctl (`net.ipv4.tcp_tw_reuse`) in the client namespace.
    pub fn client_sysctl(&self, key: &str, value: &str) -> &Self {
        sh(&["ip", "netns", "exec", &self.client, "sysctl", "-q", "-w", &format!("{key}={value}")]);
        self
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stdin(Stdio::null()).output();
        }
    }
}
