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

/// The header the C programs of `cdylib-tests/c/` may include.
const HEADERS: &[(&str, &str)] = &[("no_netlink_filter.h", include_str!("../c/no_netlink_filter.h"))];

/// Compile a C program of `cdylib-tests/c/` (its source included with `include_str!`).
fn cc(dir: &TempDir, name: &str, source: &str, extra: &[&str]) -> PathBuf {
    for (h, text) in HEADERS {
        std::fs::write(dir.path().join(h), text).expect("write C header");
    }
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
    require_netns!();
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
    require_netns!();
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

// ---------------------------------------------------------------------------------------------
// 6. A hardened service: no AF_NETLINK
// ---------------------------------------------------------------------------------------------

/// Under a seccomp filter that denies socket(AF_NETLINK) (as systemd's
/// `RestrictAddressFamilies=` does), UDP connects are still placed, each on a slice port no
/// other socket holds (8 ports: 8 flows, the 9th fails with EAGAIN and its socket holds no
/// slice port; one closed, the next connect succeeds), TCP connects are placed under both
/// strategies, one log line says sock_diag is unavailable, and `portrange check` says so.
#[test]
fn without_af_netlink_flows_are_still_placed() {
    require_netns!();
    require!("gcc", "ip");
    let dir = TempDir::new("no-netlink");
    let launcher = cc(&dir, "no_netlink", include_str!("../c/no_netlink.c"), &[]);
    in_private_netns(move || {
        netns_setup();
        let (lo, hi) = (42000, 42007);
        for run in runs() {
            let ua = UdpRecorder::start(PEER_IP);
            let ub = UdpRecorder::start(PEER_IP);
            let tcp = Recorder::hold(PEER_IP);
            let out = configure(Run::new(&launcher), run, lo, hi)
                .arg(python3())
                .arg("-c")
                .arg(include_str!("../py/no_netlink_client.py"))
                .args([PEER_IP, &ua.addr.port().to_string(), &ub.addr.port().to_string()])
                .args([tcp.port().to_string(), "9".into(), "3".into()])
                .run();
            out.assert_success();
            let c = ctx(run);
            assert_eq!(
                out.field("netlink"),
                Some("97"),
                "[{c}] the filter did not deny AF_NETLINK\n{}",
                out.dump()
            );
            let udp = out.fields("udp");
            assert_eq!(udp.len(), 9, "[{c}]\n{}", out.dump());
            let port = |l: &str| l.rsplit(' ').next().and_then(|p| p.parse::<u16>().ok()).unwrap();
            let inside = |p: u16| (lo..=hi).contains(&p);
            let warned = out.stderr.lines().filter(|l| l.contains("sock_diag is unavailable")).count();
            if run.is_some() {
                let mut ports: Vec<u16> = udp[..8]
                    .iter()
                    .map(|l| {
                        assert!(l.starts_with("ok "), "[{c}] UDP connect failed: {l}\n{}", out.dump());
                        port(l)
                    })
                    .collect();
                assert!(ports.iter().all(|p| inside(*p)), "[{c}] {ports:?}\n{}", out.dump());
                ports.sort();
                ports.dedup();
                assert_eq!(ports.len(), 8, "[{c}] a slice port given twice\n{}", out.dump());
                assert!(udp[8].starts_with("err 11 "), "[{c}] the 9th must fail with EAGAIN\n{}", out.dump());
                assert!(
                    !inside(port(udp[8])),
                    "[{c}] the failed socket holds slice port {}\n{}",
                    port(udp[8]),
                    out.dump()
                );
                let again = out.expect_field("again");
                assert!(
                    again.starts_with("ok ") && inside(port(again)),
                    "[{c}] again: {again}\n{}",
                    out.dump()
                );
                assert_eq!(
                    warned,
                    1,
                    "[{c}] expected one line saying sock_diag is unavailable\n{}",
                    out.dump()
                );
            } else {
                assert!(udp.iter().all(|l| l.starts_with("ok ")), "[{c}]\n{}", out.dump());
                assert_eq!(warned, 0, "[{c}]\n{}", out.dump());
            }
            for l in out.fields("tcp") {
                assert!(l.starts_with("ok "), "[{c}] TCP connect failed: {l}\n{}", out.dump());
            }
            let mut seen = ua.sources();
            seen.extend(ub.sources());
            assert_eq!(seen.len(), if run.is_some() { 9 } else { 10 }, "[{c}] datagrams\n{}", out.dump());
            expect_sources(&seen, run, lo, hi, "datagram", &out);
            let peers = tcp.wait_for(3, PEER_WAIT);
            assert_eq!(peers.len(), 3, "[{c}]\n{}", out.dump());
            expect_sources(&peers, run, lo, hi, "TCP connection", &out);
        }
        // `portrange check`, run the way the service runs, says what is missing.
        let spec = slice_spec(CLIENT_IP, lo, hi);
        let human = Run::new(&launcher).no_preload().arg(bin_path()).arg("check").slice(&spec).run();
        assert!(human.stdout.contains("sock_diag (AF_NETLINK)         UNAVAILABLE"), "{}", human.dump());
        let json = Run::new(&launcher).no_preload().args([
            bin_path().as_os_str(),
            "check".as_ref(),
            "--json".as_ref(),
        ]);
        let json = json.slice(&spec).run();
        assert!(json.stdout.contains("\"sock_diag\":false"), "{}", json.dump());
        let free = Run::portrange().args(["check", "--json"]).slice(&spec).run();
        assert!(free.stdout.contains("\"sock_diag\":true"), "{}", free.dump());
    });
}

/// sock_diag goes away while the program runs (the program installs a filter denying AF_NETLINK
/// after the shim started with it): on a slice crowded by the program's own sockets (no port for
/// an exclusive bind, so the connect goes on to the cookie check), the UDP connect that finds it
/// gone fails with EADDRNOTAVAIL and its socket holds no slice port (it was bound to one for the
/// check); one line says sock_diag is unavailable; once ports are free again, the next connects
/// are placed without it.
#[test]
fn af_netlink_denied_after_start_leaves_no_slice_port_held() {
    require_netns!();
    require!("gcc", "ip");
    let dir = TempDir::new("late-no-netlink");
    let prog = cc(&dir, "late_no_netlink", include_str!("../c/late_no_netlink.c"), &[]);
    in_private_netns(move || {
        netns_setup();
        let (lo, hi) = (42100, 42109);
        for run in runs() {
            let c = ctx(run);
            let udp = UdpRecorder::start(PEER_IP);
            let out = configure(Run::new(&prog), run, lo, hi)
                .args([PEER_IP, &udp.addr.port().to_string(), CLIENT_IP, &lo.to_string(), &hi.to_string()])
                .run();
            out.assert_success();
            let lines: Vec<Vec<i64>> = out
                .fields("udp")
                .iter()
                .map(|l| l.split_whitespace().map(|w| w.parse().unwrap()).collect())
                .collect();
            assert_eq!(lines.len(), 3, "[{c}]\n{}", out.dump());
            let inside = |p: i64| (i64::from(lo)..=i64::from(hi)).contains(&p);
            if run.is_some() {
                assert_eq!(lines[0][..2], [-1, 99], "[{c}] the first connect\n{}", out.dump());
                assert!(
                    !inside(lines[0][2]),
                    "[{c}] the failed socket holds slice port {}\n{}",
                    lines[0][2],
                    out.dump()
                );
                for l in &lines[1..] {
                    assert!(l[0] == 0 && inside(l[2]), "[{c}] {l:?}\n{}", out.dump());
                }
                let warned = out.stderr.lines().filter(|l| l.contains("sock_diag is unavailable")).count();
                assert_eq!(warned, 1, "[{c}]\n{}", out.dump());
            } else {
                assert!(lines.iter().all(|l| l[0] == 0), "[{c}]\n{}", out.dump());
            }
            let seen = udp.sources();
            assert_eq!(seen.len(), if run.is_some() { 2 } else { 3 }, "[{c}]\n{}", out.dump());
            expect_sources(&seen, run, lo, hi, "datagram", &out);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 7. dup2 over the shim's netlink descriptor
// ---------------------------------------------------------------------------------------------

/// A thread dup2()s a UDP socket over every netlink socket it finds while three threads place
/// UDP flows (3 x 2000): the process finishes (a shim that receives on a descriptor that is no
/// longer its own blocks forever on the program's UDP socket), nearly every flow is placed, and
/// the peer saw only slice ports.
#[test]
fn dup2_over_the_netlink_descriptor_never_hangs() {
    require_netns!();
    require!("gcc", "ip");
    let dir = TempDir::new("dup2-netlink");
    let prog = cc(&dir, "dup2_netlink", include_str!("../c/dup2_netlink.c"), &[]);
    in_private_netns(move || {
        netns_setup();
        for run in runs() {
            let udp = UdpRecorder::start(PEER_IP);
            let (lo, hi) = (43000, 43999);
            let out = configure(Run::new(&prog), run, lo, hi)
                .args([PEER_IP, &udp.addr.port().to_string(), "2000"])
                .timeout(Duration::from_secs(30))
                .run();
            assert!(!out.timed_out, "[{}] the process hung\n{}", ctx(run), out.dump());
            out.assert_success();
            let n = numbers(&out, "ok");
            eprintln!("[{}] {}", ctx(run), out.stdout.trim());
            assert!(n["ok"] >= 5400, "[{}] too many failed flows\n{}", ctx(run), out.dump());
            expect_sources(&udp.sources(), run, lo, hi, "datagram", &out);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 8. Close + reuse of the program's fd around a swap
// ---------------------------------------------------------------------------------------------

/// The program's socket (bound to 0.0.0.0:0 and asked for its port, so the shim places the
/// connect on a fresh socket) is closed and its number reused for /dev/null at the moment the
/// shim creates the fresh socket — what another thread of the program can do at any time
/// (injected deterministically by a library preloaded after the shim, `c/swap_inject.c`). The
/// shim must give the placement up rather than dup3 its socket over the program's new file.
/// TCP and UDP; a control connect after it is placed as usual.
#[test]
fn a_swap_never_overwrites_a_reused_descriptor() {
    require_netns!();
    require!("gcc", "ip");
    let dir = TempDir::new("swap-race");
    let inject =
        cc(&dir, "swap_inject.so", include_str!("../c/swap_inject.c"), &["-shared", "-fPIC", "-ldl"]);
    let prog = cc(&dir, "swap_race", include_str!("../c/swap_race.c"), &[]);
    in_private_netns(move || {
        netns_setup();
        for run in runs() {
            let c = ctx(run);
            let tcp = Recorder::hold(PEER_IP);
            let udp = UdpRecorder::start(PEER_IP);
            let (lo, hi) = (44000, 44099);
            let out = configure(Run::new(&prog), run, lo, hi)
                .env("LD_PRELOAD", format!("{} {}", so_path().display(), inject.display()))
                .args([PEER_IP, &tcp.port().to_string(), &udp.addr.port().to_string()])
                .run();
            out.assert_success();
            for proto in ["tcp", "udp"] {
                let lines = out.fields(proto);
                let (injected, control) = (lines[0], lines[1]);
                if run.is_some() {
                    assert!(
                        injected.starts_with("injected 1 ") && injected.ends_with(" fd null"),
                        "[{c}] {proto}: the shim's socket replaced the program's new file at that number \
                         (`{injected}`)\n{}",
                        out.dump()
                    );
                    assert!(!injected.contains("connect 0 "), "[{c}] {proto}: {injected}\n{}", out.dump());
                } else {
                    assert_eq!(injected, "injected 0 connect 0 0 fd socket", "[{c}] {proto}\n{}", out.dump());
                }
                assert_eq!(control, "control 0 0 fd socket", "[{c}] {proto}\n{}", out.dump());
            }
            let peers = tcp.wait_for(1, PEER_WAIT);
            expect_sources(&peers, run, lo, hi, "TCP connection", &out);
            expect_sources(&udp.sources(), run, lo, hi, "datagram", &out);
        }
    });
}
