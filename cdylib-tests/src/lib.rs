//! Harness for the `libportrange.so` integration tests.
//!
//! Every test runs a real program (curl, python3, node, java, ...) with the shim preloaded and
//! asserts on what the *peer* saw: a [`Recorder`] is a TCP listener that remembers the source
//! address of every connection it accepted.
//!
//! Ports: tests in one binary run in parallel and several test binaries may run at once, so
//! every port comes from a machine-wide allocator (a counter file guarded by `flock`):
//! [`slice_ports`] for slices (inside the kernel's ephemeral range), [`high_slice_ports`] for
//! slices above it, [`listen_port`] for listeners (below the ephemeral range, so neither the
//! kernel's automatic port choice nor a slice ever lands on a listener's port).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod json;
pub use json::Json;

pub const EPERM: i32 = libc::EPERM;
pub const EAGAIN: i32 = libc::EAGAIN;
pub const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;
pub const ECONNREFUSED: i32 = libc::ECONNREFUSED;
pub const EINPROGRESS: i32 = libc::EINPROGRESS;

// ---------------------------------------------------------------------------------------------
// Locating (and building) the library and the binary
// ---------------------------------------------------------------------------------------------

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cdylib-tests lives inside the workspace")
        .to_path_buf()
}

/// `CARGO_TARGET_DIR` if set (relative to the workspace root), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        _ => workspace_root().join("target"),
    }
}

struct Built {
    so: PathBuf,
    bin: PathBuf,
}

static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();

fn built() -> &'static Built {
    match BUILT.get_or_init(build_portrange) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

/// `cargo build --release -p portrange -p portrange-shim`, once per test process.
fn build_portrange() -> Result<Built, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from(env!("CARGO")));
    let out = Command::new(&cargo)
        .args(["build", "--release", "-p", "portrange", "-p", "portrange-shim"])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cargo:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build --release -p portrange -p portrange-shim` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let rel = target_dir().join("release");
    let b = Built { so: rel.join("libportrange.so"), bin: rel.join("portrange") };
    for p in [&b.so, &b.bin] {
        if !p.exists() {
            return Err(format!("the build succeeded but {} does not exist", p.display()));
        }
    }
    Ok(b)
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The library to preload: `PORTRANGE_SO` if set, else the release build (built on first use).
pub fn so_path() -> PathBuf {
    if let Some(p) = env_path("PORTRANGE_SO") {
        assert!(p.exists(), "PORTRANGE_SO={} does not exist", p.display());
        return p;
    }
    built().so.clone()
}

/// The `portrange` binary: `PORTRANGE_BIN` if set, else next to `PORTRANGE_SO` if that is set
/// and has one, else the release build (built on first use).
pub fn bin_path() -> PathBuf {
    if let Some(p) = env_path("PORTRANGE_BIN") {
        return p;
    }
    if let Some(so) = env_path("PORTRANGE_SO") {
        if let Some(p) = so.parent().map(|d| d.join("portrange")).filter(|p| p.exists()) {
            return p;
        }
    }
    built().bin.clone()
}

// ---------------------------------------------------------------------------------------------
// Cross-process port allocator
// ---------------------------------------------------------------------------------------------

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
// Peer recorder
// ---------------------------------------------------------------------------------------------

/// What a [`Recorder`] does with an accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Read a request, answer `HTTP/1.1 200 OK` + `Connection: close` + `ok\n`, close.
    Http,
    /// Keep the connection open until the recorder is dropped.
    Hold,
    /// Echo everything back until EOF.
    Echo,
    /// Record every byte received until EOF (see [`Recorder::received`]).
    Bytes,
}

/// One accepted connection.
#[derive(Clone, Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    pub accepted: Instant,
    /// When the peer closed or reset it (Http, Echo and Bytes modes; never set in Hold mode).
    pub ended: Option<Instant>,
    /// Bytes received (Bytes mode).
    pub bytes: Vec<u8>,
}

#[derive(Default)]
struct State {
    peers: Vec<SocketAddr>,
    /// Every accepted connection, in accept order.
    conns: Vec<Conn>,
    /// Connections whose handler finished (peer closed).
    finished: usize,
    held: Vec<TcpStream>,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

/// A TCP listener that records the source address of every connection it accepts.
pub struct Recorder {
    addr: SocketAddr,
    mode: Mode,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

pub const HTTP_BODY: &str = "ok\n";

impl Recorder {
    /// Listen on `ip` (e.g. `"127.0.0.1"`, `"::1"`) at a fresh port.
    pub fn start(ip: &str, mode: Mode) -> Recorder {
        let ip: IpAddr = ip.parse().unwrap_or_else(|_| panic!("bad recorder IP {ip}"));
        let listener = bind_listener(ip);
        let addr = listener.local_addr().expect("local_addr");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), cv: Condvar::new() });
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, st) = (shared.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name(format!("recorder-{addr}"))
            .spawn(move || accept_loop(listener, mode, sh, st))
            .expect("spawn recorder");
        Recorder { addr, mode, shared, stop, thread: Some(thread) }
    }
    pub fn http(ip: &str) -> Recorder {
        Recorder::start(ip, Mode::Http)
    }
    pub fn hold(ip: &str) -> Recorder {
        Recorder::start(ip, Mode::Hold)
    }
    pub fn echo(ip: &str) -> Recorder {
        Recorder::start(ip, Mode::Echo)
    }
    pub fn bytes(ip: &str) -> Recorder {
        Recorder::start(ip, Mode::Bytes)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// The listening IP as text (no brackets), for command lines.
    pub fn ip(&self) -> String {
        self.addr.ip().to_string()
    }
    /// `http://IP:PORT/` (IPv6 in brackets).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Every peer accepted so far, in accept order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.shared.state.lock().unwrap().peers.clone()
    }

    /// Wait until at least `n` peers were accepted or `timeout` passed; returns the peers.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<SocketAddr> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        while st.peers.len() < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self.shared.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
        st.peers.clone()
    }

    /// Give late connections a moment to be accepted, then return the peers (for asserting
    /// that nothing, or nothing more, arrived).
    pub fn settle(&self) -> Vec<SocketAddr> {
        thread::sleep(Duration::from_millis(200));
        self.peers()
    }

    /// Wait until `n` connections were closed by their peers (Http/Echo/Bytes modes).
    pub fn wait_finished(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        while st.finished < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self.shared.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
        true
    }

    /// All bytes received (Mode::Bytes), connections concatenated in accept order.
    pub fn received(&self) -> Vec<u8> {
        let st = self.shared.state.lock().unwrap();
        st.conns.iter().flat_map(|c| c.bytes.iter().copied()).collect()
    }

    /// Every accepted connection so far, in accept order.
    pub fn connections(&self) -> Vec<Conn> {
        self.shared.state.lock().unwrap().conns.clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(mut st) = self.shared.state.lock() {
            for s in st.held.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

fn accept_loop(listener: TcpListener, mode: Mode, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                {
                    let mut st = shared.state.lock().unwrap();
                    st.peers.push(peer);
                    st.conns.push(Conn { peer, accepted: Instant::now(), ended: None, bytes: Vec::new() });
                }
                shared.cv.notify_all();
                if mode == Mode::Hold {
                    shared.state.lock().unwrap().held.push(stream);
                    continue;
                }
                let sh = shared.clone();
                let _ = thread::Builder::new()
                    .name(format!("recorder-conn-{peer}"))
                    .spawn(move || serve(stream, peer, mode, sh));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 20) };
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve(mut s: TcpStream, peer: SocketAddr, mode: Mode, shared: Arc<Shared>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 4096];
    match mode {
        Mode::Http => {
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                HTTP_BODY.len(),
                HTTP_BODY
            );
            let _ = s.write_all(resp.as_bytes());
            let _ = s.flush();
        }
        Mode::Echo => loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        },
        Mode::Bytes => loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut st = shared.state.lock().unwrap();
                    if let Some(c) = st.conns.iter_mut().rev().find(|c| c.peer == peer) {
                        c.bytes.extend_from_slice(&buf[..n]);
                    }
                }
            }
        },
        Mode::Hold => unreachable!(),
    }
    drop(s);
    let mut st = shared.state.lock().unwrap();
    st.finished += 1;
    if let Some(c) = st.conns.iter_mut().rev().find(|c| c.peer == peer) {
        c.ended = Some(Instant::now());
    }
    drop(st);
    shared.cv.notify_all();
}

// ---------------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------------

/// `::ffff:a.b.c.d` → `a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn parse_ip(ip: &str) -> IpAddr {
    canonical(
        ip.trim_start_matches('[').trim_end_matches(']').parse().unwrap_or_else(|_| panic!("bad IP {ip}")),
    )
}

/// True when `peer` is `ip` with a port in `lo..=hi` (v4-mapped addresses count as IPv4).
pub fn in_slice(peer: SocketAddr, ip: &str, lo: u16, hi: u16) -> bool {
    canonical(peer.ip()) == parse_ip(ip) && (lo..=hi).contains(&peer.port())
}

#[track_caller]
pub fn assert_in_slice(peer: SocketAddr, ip: &str, lo: u16, hi: u16) {
    assert!(in_slice(peer, ip, lo, hi), "peer saw {peer}, expected a source inside the slice {ip}:{lo}-{hi}");
}

#[track_caller]
pub fn assert_not_in_slice(peer: SocketAddr, ip: &str, lo: u16, hi: u16) {
    assert!(
        !in_slice(peer, ip, lo, hi),
        "peer saw {peer}, inside the slice {ip}:{lo}-{hi}, but this flow should have been left alone"
    );
}

/// The slice IP most tests use (any 127/8 address is local, so it needs no set-up).
pub const SLICE_IP: &str = "127.0.0.2";

/// Wait until `rec` saw `n` connections, then assert it saw exactly `n` (nothing more arrives
/// within a short settle time). Returns the peers. `ctx` (e.g. the strategy) prefixes every
/// message, followed by `out`'s dump.
#[track_caller]
pub fn expect_peers(rec: &Recorder, n: usize, ctx: &str, out: &Output) -> Vec<SocketAddr> {
    let peers = rec.wait_for(n, PEER_WAIT);
    assert!(
        peers.len() >= n,
        "[{ctx}] recorder {} saw {peers:?}, expected {n} connection(s)\n{}",
        rec.addr(),
        out.dump()
    );
    let peers = rec.settle();
    assert_eq!(
        peers.len(),
        n,
        "[{ctx}] recorder {} saw {peers:?}, expected exactly {n}\n{}",
        rec.addr(),
        out.dump()
    );
    peers
}

/// Assert every address the peer saw (a TCP peer or a UDP server) is inside the slice `ip:lo-hi`.
#[track_caller]
pub fn expect_in_slice(peers: &[SocketAddr], ip: &str, lo: u16, hi: u16, ctx: &str, out: &Output) {
    for p in peers {
        assert!(
            in_slice(*p, ip, lo, hi),
            "[{ctx}] the peer saw {p}, outside the slice {ip}:{lo}-{hi}\n{}",
            out.dump()
        );
    }
}

/// Assert every address the peer saw is outside the slice `ip:lo-hi` (flows left alone).
#[track_caller]
pub fn expect_not_in_slice(peers: &[SocketAddr], ip: &str, lo: u16, hi: u16, ctx: &str, out: &Output) {
    for p in peers {
        assert!(
            !in_slice(*p, ip, lo, hi),
            "[{ctx}] the peer saw {p}, inside the slice {ip}:{lo}-{hi}, but this flow should have been left alone\n{}",
            out.dump()
        );
    }
}

/// Assert the source ports of `addrs` are pairwise distinct (for flows to one destination:
/// distinct 4-tuples); returns them.
#[track_caller]
pub fn expect_distinct_ports(addrs: &[SocketAddr], ctx: &str, out: &Output) -> BTreeSet<u16> {
    let ports: BTreeSet<u16> = addrs.iter().map(|a| a.port()).collect();
    assert_eq!(ports.len(), addrs.len(), "[{ctx}] duplicate source ports among {addrs:?}\n{}", out.dump());
    ports
}

/// Assert a run's RESULT lines ([`PY_CONNECT`] or a script printing the same lines) show a TCP
/// slice `ip:lo-hi` filling up: `n + 1` lines, the first `n` connected from inside the slice, the
/// last failed with EADDRNOTAVAIL. Returns the `n` local addresses.
#[track_caller]
pub fn expect_slice_fills_after(
    out: &Output,
    n: usize,
    ip: &str,
    lo: u16,
    hi: u16,
    ctx: &str,
) -> Vec<SocketAddr> {
    let results = out.connects();
    assert_eq!(results.len(), n + 1, "[{ctx}] expected {} RESULT lines\n{}", n + 1, out.dump());
    let mut locals = Vec::new();
    for (i, r) in results[..n].iter().enumerate() {
        match r.result {
            Ok(local) => {
                assert!(
                    in_slice(local, ip, lo, hi),
                    "[{ctx}] connect #{i} got local {local}, outside the slice {ip}:{lo}-{hi}\n{}",
                    out.dump()
                );
                locals.push(local);
            }
            Err(e) => panic!(
                "[{ctx}] connect #{i} to {} failed with errno {e}; the slice must serve the first {n} flows\n{}",
                r.dst,
                out.dump()
            ),
        }
    }
    assert_eq!(
        results[n].result,
        Err(EADDRNOTAVAIL),
        "[{ctx}] connect #{n} to {} must fail with EADDRNOTAVAIL ({EADDRNOTAVAIL}): the slice is full\n{}",
        results[n].dst,
        out.dump()
    );
    locals
}

/// The shape of a single-connection placement test. Under each TCP strategy
/// ([`tcp_strategies`]), with a fresh `mode` recorder on 127.0.0.1 and a fresh 10-port slice on
/// [`SLICE_IP`]: the client that `client(&recorder)` builds runs with that slice and strategy and
/// must exit 0; the recorder must have seen exactly one connection by [`PEER_WAIT`], from inside
/// the slice; then `check(&output, peer, strategy)` makes the test's own assertions.
pub fn one_flow_per_strategy(
    mode: Mode,
    client: impl Fn(&Recorder) -> Run,
    check: impl Fn(&Output, SocketAddr, &str),
) {
    for strategy in tcp_strategies() {
        let rec = Recorder::start("127.0.0.1", mode);
        let (lo, hi) = slice_ports(10);
        let out = client(&rec).slice(&slice_spec(SLICE_IP, lo, hi)).env("PORTRANGE_STRATEGY", strategy).run();
        out.assert_success();
        let peers = rec.wait_for(1, PEER_WAIT);
        assert_eq!(
            peers.len(),
            1,
            "[{strategy}] recorder {} saw {peers:?}, expected 1 connection\n{}",
            rec.addr(),
            out.dump()
        );
        expect_in_slice(&peers, SLICE_IP, lo, hi, strategy, &out);
        check(&out, peers[0], strategy);
    }
}

/// The PORTRANGE value for one slice: `IP:LO-HI` or `[IPv6]:LO-HI`.
pub fn slice_spec(ip: &str, lo: u16, hi: u16) -> String {
    match parse_ip(ip) {
        IpAddr::V4(v4) => format!("{v4}:{lo}-{hi}"),
        IpAddr::V6(v6) => format!("[{v6}]:{lo}-{hi}"),
    }
}

pub const LOCALHOST_V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const LOCALHOST_V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

// ---------------------------------------------------------------------------------------------
// Required programs
// ---------------------------------------------------------------------------------------------

/// Is `program` an executable in PATH?
pub fn have(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else { return false };
    std::env::split_paths(&path).any(|d| {
        let p = d.join(program);
        std::fs::metadata(&p)
            .map(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Under `CI=true` (any non-empty `CI`): a missing tool or permission is a failure, never a skip.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The running test's name for messages: `module::test` (libtest names the thread after it).
fn test_name(module: &str) -> String {
    match thread::current().name() {
        Some(name) if name != "main" && name != "netns" => format!("{module}::{name}"),
        _ => module.to_string(),
    }
}

/// A test cannot run here because of `why`. Under CI that is a failure (panics); elsewhere one
/// `SKIP` line goes straight to the process's stderr — libtest captures `eprintln!` of a passing
/// test, so the line would otherwise only show with `--nocapture`.
pub fn skip_or_fail(module: &str, why: &str) {
    let test = test_name(module);
    if under_ci() {
        panic!("{test}: {why}; CI must provide it (.ci/run)");
    }
    // One write, so that the line does not interleave with libtest's own output.
    let _ = std::io::stderr().write_all(format!("SKIP {test}: {why}\n").as_bytes());
}

/// True if every program is present. Otherwise: panics when `CI` is set, else prints SKIP and
/// returns false (the test should return). See [`require!`].
pub fn require_programs(programs: &[&str], test: &str) -> bool {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !have(p)).collect();
    if missing.is_empty() {
        return true;
    }
    skip_or_fail(test, &format!("required program(s) {missing:?} not found in PATH"));
    false
}

/// Whether this process may create network namespaces (root, or CAP_SYS_ADMIN): probed once
/// with `unshare(CLONE_NEWNET)` on a throw-away thread.
pub fn can_unshare_net() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        thread::spawn(|| {
            // SAFETY: plain syscall; affects only this short-lived thread.
            unsafe { libc::unshare(libc::CLONE_NEWNET) == 0 }
        })
        .join()
        .unwrap_or(false)
    })
}

/// True when network namespaces can be made here; otherwise a visible SKIP (a failure under
/// CI). See [`require_netns!`].
pub fn require_netns_for(test: &str) -> bool {
    if can_unshare_net() {
        return true;
    }
    skip_or_fail(test, "needs root (CAP_SYS_ADMIN) to create network namespaces");
    false
}

/// `require_netns!();` at the top of a test that uses [`in_private_netns`] or `ip netns`:
/// returns from the test with a visible SKIP line when not root (panics under CI).
#[macro_export]
macro_rules! require_netns {
    () => {
        if !$crate::require_netns_for(module_path!()) {
            return;
        }
    };
}

/// True when running as root; otherwise a visible SKIP (a failure under CI).
pub fn require_root_for(test: &str, why: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip_or_fail(test, &format!("needs root: {why}"));
    false
}

/// `require!("curl")` / `require!("java", "javac")`: return from the test (or panic under CI)
/// when a program is missing.
#[macro_export]
macro_rules! require {
    ($($p:expr),+ $(,)?) => {
        if !$crate::require_programs(&[$($p),+], module_path!()) {
            return;
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Temp dirs
// ---------------------------------------------------------------------------------------------

/// The real python3 interpreter (`sys.executable`), resolved once without the shim. Version
/// managers (pyenv) put a shell-script wrapper first in PATH that execs several helper programs
/// before python; under LD_PRELOAD each of those would print its own shim lines.
pub fn python3() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(out.status.success() && !p.is_empty(), "python3 -c 'print(sys.executable)' failed: {out:?}");
        PathBuf::from(p)
    })
    .clone()
}

/// A directory under /tmp removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "portrange-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Running programs
// ---------------------------------------------------------------------------------------------

/// A program to run, by default with `LD_PRELOAD=<so_path()>`. The environment is inherited
/// except every `PORTRANGE*` variable (and LD_PRELOAD), which the test sets itself.
pub struct Run {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    preload: bool,
    timeout: Duration,
    _tmp: Option<TempDir>,
}

/// The result of a [`Run`].
pub struct Output {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

/// One line `RESULT <proto> <host> <port> ok <local-ip> <local-port>` or
/// `RESULT <proto> <host> <port> err <errno>` printed by [`PY_CONNECT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectResult {
    pub proto: String,
    pub dst: String,
    /// `Ok(local address)` or `Err(errno)`.
    pub result: Result<SocketAddr, i32>,
}

impl Run {
    pub fn new(program: impl AsRef<OsStr>) -> Run {
        Run {
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            envs: Vec::new(),
            preload: true,
            timeout: Duration::from_secs(30),
            _tmp: None,
        }
    }
    /// `python3 -c CODE` (append script arguments with [`Run::arg`]). Runs the real
    /// interpreter ([`python3`]), not a wrapper script such as a pyenv shim, so that every
    /// shim log line comes from the one process under test.
    pub fn python(code: &str) -> Run {
        Run::new(python3()).arg("-c").arg(code)
    }
    /// `node -e CODE`; further arguments appear in `process.argv[1..]`.
    pub fn node(code: &str) -> Run {
        Run::new("node").arg("-e").arg(code)
    }
    /// Write `source` to `<tmp>/<class>.java` and run `java <tmp>/<class>.java` (single-file
    /// source launcher). Timeout 90 s.
    pub fn java(class: &str, source: &str) -> Run {
        let dir = TempDir::new("java");
        let file = dir.path().join(format!("{class}.java"));
        std::fs::write(&file, source).expect("write java source");
        let mut r = Run::new("java").arg(file).timeout(Duration::from_secs(90));
        r._tmp = Some(dir);
        r
    }
    /// The `portrange` command line ([`bin_path`]): no LD_PRELOAD, `PORTRANGE_SO` set to the
    /// library under test ([`so_path`]).
    pub fn portrange() -> Run {
        Run::new(bin_path()).no_preload().env("PORTRANGE_SO", so_path())
    }
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Run {
        self.args.push(a.as_ref().to_os_string());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, a: I) -> Run {
        self.args.extend(a.into_iter().map(|s| s.as_ref().to_os_string()));
        self
    }
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Run {
        self.envs.push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }
    /// `PORTRANGE=<spec>`.
    pub fn slice(self, spec: &str) -> Run {
        self.env("PORTRANGE", spec)
    }
    /// Run without LD_PRELOAD (baseline, or the `portrange` CLI).
    pub fn no_preload(mut self) -> Run {
        self.preload = false;
        self
    }
    pub fn timeout(mut self, t: Duration) -> Run {
        self.timeout = t;
        self
    }

    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.envs {
            s.push_str(&format!("{}={:?} ", k.to_string_lossy(), v.to_string_lossy()));
        }
        if self.preload {
            s.push_str("LD_PRELOAD=libportrange.so ");
        }
        s.push_str(&self.program.to_string_lossy());
        for a in &self.args {
            let a = a.to_string_lossy();
            if a.contains('\n') {
                s.push_str(" <script>");
            } else {
                s.push_str(&format!(" {a}"));
            }
        }
        s
    }

    /// Run to completion (killing the whole process group after the timeout).
    pub fn run(self) -> Output {
        let what = self.describe();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PORTRANGE") {
                cmd.env_remove(&k);
            }
        }
        cmd.env_remove("LD_PRELOAD");
        if self.preload {
            cmd.env("LD_PRELOAD", so_path());
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        let pid = child.id() as libc::pid_t;
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let t_out = thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let t_err = thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        let deadline = Instant::now() + self.timeout;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait().expect("wait") {
                Some(s) => break s,
                None if Instant::now() >= deadline => {
                    timed_out = true;
                    // SAFETY: kill the process group we created for this child.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    break child.wait().expect("wait");
                }
                None => thread::sleep(Duration::from_millis(10)),
            }
        };
        // Descendants that outlived the child may still hold the pipes: kill them too.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
        let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
        Output { what, status, stdout, stderr, timed_out }
    }
}

impl Output {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    /// Everything about the run, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "command: {}\nstatus: {}{}\n--- stdout ---\n{}--- stderr ---\n{}--------------",
            self.what,
            self.status,
            if self.timed_out { " (TIMED OUT, killed)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
    #[track_caller]
    pub fn assert_success(&self) -> &Output {
        assert!(self.success(), "program failed:\n{}", self.dump());
        assert!(self.status.signal().is_none(), "killed by a signal:\n{}", self.dump());
        self
    }
    /// stderr lines written by the shim (starting with `portrange`).
    pub fn portrange_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.starts_with("portrange")).collect()
    }
    /// The rest of the first stdout line starting with `key ` (or equal to `key`).
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields(key).into_iter().next()
    }
    /// The rest of every stdout line starting with `key `.
    pub fn fields(&self, key: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter_map(|l| {
                if l == key {
                    Some("")
                } else {
                    l.strip_prefix(key).and_then(|r| r.strip_prefix(' '))
                }
            })
            .collect()
    }
    #[track_caller]
    pub fn expect_field(&self, key: &str) -> &str {
        self.field(key).unwrap_or_else(|| panic!("no `{key}` line in stdout:\n{}", self.dump()))
    }
    /// The `IP PORT` value of the first stdout line `key IP PORT` (as printed by
    /// `print("key %s %d" % s.getsockname())`), as an address.
    #[track_caller]
    pub fn expect_addr(&self, key: &str) -> SocketAddr {
        let v = self.expect_field(key);
        let parsed = v
            .split_once(' ')
            .and_then(|(ip, port)| Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?)));
        parsed.unwrap_or_else(|| panic!("bad `{key}` line {v:?}\n{}", self.dump()))
    }
    /// The RESULT lines of [`PY_CONNECT`].
    pub fn connects(&self) -> Vec<ConnectResult> {
        self.fields("RESULT").into_iter().map(|r| self.parse_result(r)).collect()
    }

    fn parse_result(&self, r: &str) -> ConnectResult {
        fn bad<T>(r: &str, o: &Output) -> T {
            panic!("bad RESULT line {r:?}:\n{}", o.dump())
        }
        let w: Vec<&str> = r.split_whitespace().collect();
        if w.len() < 5 {
            return bad(r, self);
        }
        let result = match (w[3], w.len()) {
            ("ok", 6) => {
                let ip: IpAddr = w[4].parse().unwrap_or_else(|_| bad(r, self));
                Ok(SocketAddr::new(ip, w[5].parse().unwrap_or_else(|_| bad(r, self))))
            }
            ("err", 5) => Err(w[4].parse().unwrap_or_else(|_| bad(r, self))),
            _ => bad(r, self),
        };
        ConnectResult { proto: w[0].to_string(), dst: format!("{} {}", w[1], w[2]), result }
    }
}

/// A python3 client: arguments are triples `PROTO HOST PORT` (PROTO `tcp` or `udp`); each is a
/// new socket (AF_INET6 when HOST contains `:`) connected to HOST:PORT; prints one
/// `RESULT` line per triple (see [`ConnectResult`]). TCP sockets stay open until the script
/// exits; a UDP socket sends one datagram after connecting.
/// Options before the triples: `--http` sends `GET /` on each TCP connection and reads the
/// reply to EOF before going on (so the server closes first and the client port leaves no
/// TIME_WAIT); `--close` closes each socket right away.
pub const PY_CONNECT: &str = r#"
import errno, socket, sys
args = sys.argv[1:]
http = close = False
while args and args[0].startswith("--"):
    o = args.pop(0)
    if o == "--http": http = True
    elif o == "--close": close = True
    else: raise SystemExit("unknown option " + o)
held = []
for i in range(0, len(args), 3):
    proto, host, port = args[i], args[i + 1], int(args[i + 2])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    typ = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(fam, typ)
    try:
        s.connect((host, port))
        name = s.getsockname()
        if proto == "udp":
            s.send(b"x")
        elif http:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            while s.recv(4096):
                pass
        print("RESULT %s %s %d ok %s %d" % (proto, host, port, name[0], name[1]), flush=True)
        if close:
            s.close()
        else:
            held.append(s)
    except OSError as e:
        print("RESULT %s %s %d err %d" % (proto, host, port, e.errno or -1), flush=True)
        s.close()
"#;

/// Run [`PY_CONNECT`] with the given arguments under the shim.
pub fn py_connect(args: &[&str]) -> Run {
    Run::python(PY_CONNECT).args(args)
}

/// A python prologue for scripts that print their own RESULT lines (see [`ConnectResult`]):
/// `tcp_result(s, host, port)` connects the TCP socket `s` to `(host, port)` and returns
/// `(line, ok)`, the RESULT line to print and whether it connected. A socket that failed is
/// closed; one that connected is the caller's to hold or close. Run such a script with
/// [`py_tcp_result`].
pub const PY_TCP_RESULT: &str = r#"
def tcp_result(s, host, port):
    try:
        s.connect((host, port))
    except OSError as e:
        s.close()
        return "RESULT tcp %s %d err %d" % (host, port, e.errno or -1), False
    name = s.getsockname()
    return "RESULT tcp %s %d ok %s %d" % (host, port, name[0], name[1]), True
"#;

/// `python3 -c` with [`PY_TCP_RESULT`] and then `code`, under the shim.
pub fn py_tcp_result(code: &str) -> Run {
    Run::python(&format!("{PY_TCP_RESULT}{code}"))
}

/// [`PY_CONNECT`] making, for each `(recorder, n)` in turn, `n` TCP connections to that
/// recorder (held open until the script exits).
pub fn py_connect_tcp(targets: &[(&Recorder, usize)]) -> Run {
    let mut args: Vec<String> = Vec::new();
    for (rec, n) in targets {
        for _ in 0..*n {
            args.extend(["tcp".to_string(), rec.ip(), rec.port().to_string()]);
        }
    }
    Run::python(PY_CONNECT).args(args)
}

// ---------------------------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// TCP strategies and stats
// ---------------------------------------------------------------------------------------------

/// The TCP strategies (`PORTRANGE_STRATEGY` values) that placement tests run under, once each.
/// `PORTRANGE_TEST_STRATEGIES` (comma-separated, e.g. `kernel,retry`) overrides the list, to try
/// a strategy before it is listed here.
pub fn tcp_strategies() -> Vec<&'static str> {
    const KNOWN: [&str; 3] = ["auto", "kernel", "retry"];
    if let Some(v) = std::env::var("PORTRANGE_TEST_STRATEGIES").ok().filter(|v| !v.trim().is_empty()) {
        return v
            .split(',')
            .map(|w| {
                let w = w.trim();
                KNOWN.into_iter().find(|k| *k == w).unwrap_or_else(|| {
                    panic!("PORTRANGE_TEST_STRATEGIES: unknown strategy {w:?} (expected one of {KNOWN:?})")
                })
            })
            .collect();
    }
    vec!["kernel", "retry"]
}

/// The number after `"key":` in a flat JSON object line (a `PORTRANGE_STATS` line), if any.
pub fn json_number(line: &str, key: &str) -> Option<i64> {
    let pat = format!("\"{key}\":");
    let rest = line[line.find(&pat)? + pat.len()..].trim_start();
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '-')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Golden outputs
// ---------------------------------------------------------------------------------------------

/// Compare `actual` with `cdylib-tests/golden/<name>`; with `PORTRANGE_BLESS=1` the file is
/// (re)written instead. Mask host-specific parts before calling.
#[track_caller]
pub fn assert_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden").join(name);
    if std::env::var_os("PORTRANGE_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e} (PORTRANGE_BLESS=1 writes it)", path.display()));
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .map(Some)
            .chain(std::iter::repeat(None))
            .zip(actual.lines().map(Some).chain(std::iter::repeat(None)))
            .take_while(|(a, b)| a.is_some() || b.is_some())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| {
                format!(
                    "line {}:\n  golden: {}\n  actual: {}",
                    i + 1,
                    a.unwrap_or("<none>"),
                    b.unwrap_or("<none>")
                )
            })
            .collect();
        panic!(
            "output differs from {} (PORTRANGE_BLESS=1 rewrites it if the change is intended):\n{}\n--- actual ---\n{actual}",
            path.display(),
            diff.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// C test programs
// ---------------------------------------------------------------------------------------------

/// Compile the C program `source` (`include_str!` of a file in `cdylib-tests/c/`) with
/// `gcc -O1 -pthread`, once per test process and name; returns the executable's path. Needs gcc
/// (`.ci/run` installs it): without it, panics under CI, else returns `None` after a SKIP line.
pub fn compile_c(name: &str, source: &str) -> Option<PathBuf> {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    if !require_programs(&["gcc"], name) {
        return None;
    }
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(n, _)| n == name) {
        return Some(p.clone());
    }
    let mut dir = target_dir().join("c-programs").join(format!("{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        // A target directory this user cannot write (another user's build): use /tmp.
        dir = std::env::temp_dir().join(format!("portrange-c-programs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    let src = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    std::fs::write(&src, source).expect("write C source");
    let out = Command::new("gcc")
        .args(["-O1", "-Wall", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .expect("run gcc");
    assert!(out.status.success(), "gcc {name}.c failed:\n{}", String::from_utf8_lossy(&out.stderr));
    built.push((name.to_string(), exe.clone()));
    Some(exe)
}

#[cfg(test)]
mod harness_tests {
    use super::*;
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
