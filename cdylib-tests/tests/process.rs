//! Issue 8: hooks that survive any process — fork in a threaded program while the shim logs,
//! a library constructor that connects before ours, a hardened service without AF_NETLINK,
//! a program that dup2()s over the shim's netlink descriptor, a close+reuse race around a swap.
//!
//! Each test runs in a network namespace of its own, with the slice IP 198.51.100.10 and the
//! peer 203.0.113.1 on its loopback device (non-loopback addresses: no default skip, no
//! loopback-only TIME_WAIT rules), once per TCP strategy and once with the shim loaded but
//! inactive (`PORTRANGE` unset), and checks what the peer saw. The programs are C files in
//! `cdylib-tests/c/`, built with gcc.

use cdylib_tests::*;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const CLIENT_IP: &str = "198.51.100.10";
const PEER_IP: &str = "203.0.113.1";

/// The runs of every test: each TCP strategy with the shim active, then inactive.
fn runs() -> Vec<Option<&'static str>> {
    let mut v: Vec<Option<&'static str>> = tcp_strategies().into_iter().map(Some).collect();
    v.push(None);
    v
}

fn ctx(run: Option<&str>) -> String {
    match run {
        Some(s) => format!("strategy {s}"),
        None => "inactive (PORTRANGE unset)".into(),
    }
}

/// Enter a fresh network namespace (this thread) with both addresses on lo.
fn netns_setup() {
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&["ip", "addr", "add", &format!("{CLIENT_IP}/32"), "dev", "lo"]);
    sh(&["ip", "addr", "add", &format!("{PEER_IP}/32"), "dev", "lo"]);
}

/// Compile a C program of `cdylib-tests/c/` (its source included with `include_str!`).
fn cc(dir: &TempDir, name: &str, source: &str, extra: &[&str]) -> PathBuf {
    let src = dir.path().join(format!("{name}.c"));
    std::fs::write(&src, source).expect("write C source");
    let out = dir.path().join(name);
    let r = Command::new("gcc")
        .args(["-O2", "-Wall", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .args(extra)
        .output()
        .expect("run gcc");
    assert!(r.status.success(), "gcc {name}.c failed:\n{}", String::from_utf8_lossy(&r.stderr));
    out
}

/// A UDP peer that records the source address of every datagram.
struct UdpRecorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl UdpRecorder {
    fn start(ip: &str) -> UdpRecorder {
        let sock = UdpSocket::bind((ip, 0)).expect("bind UDP recorder");
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = sock.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (seen.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !st2.load(Ordering::Relaxed) {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    s2.lock().unwrap().push(from);
                }
            }
        });
        UdpRecorder { addr, seen, stop, thread: Some(thread) }
    }

    /// Every source seen so far (after a short settle).
    fn sources(&self) -> Vec<SocketAddr> {
        thread::sleep(Duration::from_millis(100));
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for UdpRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Configure `r` for `run`: a slice of `lo..=hi` on CLIENT_IP and the strategy, or nothing.
fn configure(r: Run, run: Option<&str>, lo: u16, hi: u16) -> Run {
    match run {
        Some(strategy) => r.slice(&slice_spec(CLIENT_IP, lo, hi)).env("PORTRANGE_STRATEGY", strategy),
        None => r,
    }
}

/// Every source the peer saw is in the slice (active), or none is (inactive).
#[track_caller]
fn expect_sources(seen: &[SocketAddr], run: Option<&str>, lo: u16, hi: u16, what: &str, out: &Output) {
    assert!(!seen.is_empty(), "[{}] the peer saw no {what}\n{}", ctx(run), out.dump());
    for p in seen {
        let inside = in_slice(*p, CLIENT_IP, lo, hi);
        assert_eq!(
            inside,
            run.is_some(),
            "[{}] the peer saw a {what} from {p} ({} the slice {CLIENT_IP}:{lo}-{hi})\n{}",
            ctx(run),
            if inside { "inside" } else { "outside" },
            out.dump()
        );
    }
}

/// The numbers after each key of a `key N key N ...` line.
fn numbers(out: &Output, first_key: &str) -> std::collections::HashMap<String, i64> {
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with(first_key))
        .unwrap_or_else(|| panic!("no `{first_key}` line\n{}", out.dump()));
    let w: Vec<&str> = line.split_whitespace().collect();
    w.chunks(2).filter_map(|c| Some((c[0].to_string(), c.get(1)?.parse().ok()?))).collect()
}

// ---------------------------------------------------------------------------------------------
// 3. fork() while other threads log
// ---------------------------------------------------------------------------------------------

/// 300 forks while two threads place UDP flows with `PORTRANGE_LOG=debug` (every placement
/// logs a line): no child hangs. With a logger that holds a lock around its write, a child
/// forked while another thread was inside it inherits the lock held and hangs at its first line.
#[test]
fn fork_while_threads_log_never_hangs_a_child() {
    require!("gcc", "ip");
    let dir = TempDir::new("fork-log");
    let prog = cc(&dir, "fork_log", include_str!("../c/fork_log.c"), &[]);
    in_private_netns(move || {
        netns_setup();
        for run in runs() {
            let udp = UdpRecorder::start(PEER_IP);
            let tcp = Recorder::hold(PEER_IP);
            let (lo, hi) = (40000, 40999);
            let out = configure(Run::new(&prog), run, lo, hi)
                .args([PEER_IP, &udp.addr.port().to_string(), &tcp.port().to_string(), "300"])
                .env("PORTRANGE_LOG", "debug")
                .timeout(Duration::from_secs(120))
                .run();
            out.assert_success();
            let n = numbers(&out, "forks");
            assert_eq!(n["hung"], 0, "[{}] forked children hung\n{}", ctx(run), out.dump());
            assert_eq!(n["forks"], 300, "[{}]\n{}", ctx(run), out.dump());
            assert_eq!(n["child_failed"], 0, "[{}] children failed to connect\n{}", ctx(run), out.dump());
            assert!(n["thread_flows"] > 0, "[{}]\n{}", ctx(run), out.dump());
            if run.is_some() {
                assert!(
                    out.stderr.contains("DEBUG"),
                    "[{}] no debug line: the test did not log\n{}",
                    ctx(run),
                    out.dump()
                );
            }
            expect_sources(&udp.sources(), run, lo, hi, "datagram", &out);
            let peers = tcp.wait_for(300, PEER_WAIT);
            assert_eq!(peers.len(), 300, "[{}] TCP connections from children\n{}", ctx(run), out.dump());
            expect_sources(&peers, run, lo, hi, "TCP connection", &out);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 4. A constructor that connects before ours
// ---------------------------------------------------------------------------------------------

/// A library whose constructor connects runs before the shim's constructor when the program
/// links it (DT_NEEDED) or when it comes after the shim in LD_PRELOAD. Its flows (UDP and TCP)
/// are placed all the same: the shim initialises on its first hooked call.
#[test]
fn a_constructor_that_connects_before_ours_is_placed() {
    require!("gcc", "ip");
    let dir = TempDir::new("early");
    let lib = cc(&dir, "libearly.so", include_str!("../c/early_lib.c"), &["-shared", "-fPIC"]);
    let d = dir.path().to_string_lossy().into_owned();
    let main = cc(
        &dir,
        "early_main",
        include_str!("../c/early_main.c"),
        &["-Wl,--no-as-needed", &format!("-L{d}"), "-learly", &format!("-Wl,-rpath,{d}")],
    );
    in_private_netns(move || {
        netns_setup();
        for run in runs() {
            // The program linked against the library; then /bin/true with the library preloaded
            // after the shim (its constructor runs first).
            let cases = [
                ("DT_NEEDED", Run::new(&main), 2),
                (
                    "LD_PRELOAD after the shim",
                    Run::new("/bin/true")
                        .env("LD_PRELOAD", format!("{} {}", so_path().display(), lib.display())),
                    1,
                ),
            ];
            for (how, r, runs_of_flows) in cases {
                let udp = UdpRecorder::start(PEER_IP);
                let tcp = Recorder::hold(PEER_IP);
                let (lo, hi) = (41000, 41099);
                let out = configure(r, run, lo, hi)
                    .env("EARLY_PEER", PEER_IP)
                    .env("EARLY_UDP", udp.addr.port().to_string())
                    .env("EARLY_TCP", tcp.port().to_string())
                    .run();
                out.assert_success();
                let what = format!("{how}, {}", ctx(run));
                assert_eq!(
                    out.fields("early").len(),
                    2,
                    "[{what}] the constructor did not run\n{}",
                    out.dump()
                );
                let seen = udp.sources();
                assert_eq!(seen.len(), runs_of_flows, "[{what}] datagrams\n{}", out.dump());
                expect_sources(&seen, run, lo, hi, &format!("datagram ({what})"), &out);
                let peers = tcp.wait_for(runs_of_flows, PEER_WAIT);
                assert_eq!(peers.len(), runs_of_flows, "[{what}] TCP connections\n{}", out.dump());
                expect_sources(&peers, run, lo, hi, &format!("TCP connection ({what})"), &out);
            }
        }
    });
}
