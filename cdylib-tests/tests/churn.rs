//! Issue 13, capacity under churn: the shim never refuses a connection another placement would
//! have made. Every test runs in two private network namespaces joined by a veth pair, with
//! real addresses (client 198.51.100.10, server 203.0.113.1): loopback has its own TIME_WAIT
//! rules (tcp_tw_reuse=2) that would hide what happens on a real network. The server side is
//! a plain python server (tests/churn/server.py) in its namespace; clients are
//! tests/churn/client.py under the shim.
//!
//! 1. Client-closed connect+close loops never fail, under `auto` and `kernel`, with
//!    tcp_tw_reuse 1 and 2 (the kernel's own choice skips TIME_WAITs younger than 1 s).
//! 2. bind(SLICE_IP, 0)-then-connect loops never fail (python, and `wget --bind-address`); a
//!    kernel-strategy process and a retry process share one slice, in either order.
//! 3. Closing states: 10 closed + 10 immediate blocking reconnects on a 10-port slice succeed;
//!    an orphaned FIN_WAIT2 is never taken over (the peer is never reset), with
//!    PORTRANGE_PRECHECK on or off; TIME_WAIT is not attempted with tcp_timestamps=0.
//! 4. A flow refused for a full slice is logged at warn, once per destination.

use cdylib_tests::*;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const CLIENT_IP: &str = "198.51.100.10";
const SERVER_IP: &str = "203.0.113.1";
const PORT: u16 = 8080;
const PORT2: u16 = 8081;
/// A 10-port slice inside the namespace's default ip_local_port_range (32768-60999), so that
/// `auto` may choose the kernel strategy. The namespaces are private: no other test uses it.
const LO: u16 = 40000;
const HI: u16 = 40009;

const SERVER_PY: &str = include_str!("churn/server.py");
const CLIENT_PY: &str = include_str!("churn/client.py");

/// Client and server namespaces over a veth (the harness's [`VethPair`], deleted on drop).
struct Pair(VethPair);

impl std::ops::Deref for Pair {
    type Target = VethPair;
    fn deref(&self) -> &VethPair {
        &self.0
    }
}

impl Pair {
    fn new(client_sysctls: &[(&str, &str)]) -> Pair {
        let pair = VethPair::new("ch", &[&format!("{CLIENT_IP}/24")], &[&format!("{SERVER_IP}/24")]);
        pair.client_route("203.0.113.0/24").server_route("198.51.100.0/24");
        // A stray RST must not kill a client TIME_WAIT (retry.rs measured ~3% of fresh pairs).
        pair.client_sysctl("net.ipv4.tcp_rfc1337", "1");
        for (k, v) in client_sysctls {
            pair.client_sysctl(k, v);
        }
        Pair(pair)
    }

    /// client.py under the shim, in the client namespace.
    fn client(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut run = Run::python(CLIENT_PY)
            .args(args)
            .slice(&slice_spec(CLIENT_IP, LO, HI))
            .timeout(Duration::from_secs(60));
        for (k, v) in env {
            run = run.env(k, v);
        }
        self.in_client(move || run.run())
    }
}

/// server.py in the server namespace (no shim).
struct Server {
    child: Child,
    stdin: ChildStdin,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(pair: &Pair, mode: &str, ports: &[u16]) -> Server {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pair.server]).arg(python3()).args(["-c", SERVER_PY, SERVER_IP, mode]);
        cmd.args(ports.iter().map(|p| p.to_string()));
        let mut child = cmd
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server.py");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        let s = Server { child, stdin, lines };
        assert!(s.wait_line(|l| l == "listening", 1), "server.py never listened");
        s
    }

    fn wait_line(&self, pred: impl Fn(&str) -> bool, n: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.lines.lock().unwrap().iter().filter(|l| pred(l)).count() >= n {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// The source address of every connection accepted so far on listener `port`.
    fn peers(&self, port: u16) -> Vec<SocketAddr> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|l| l.strip_prefix("peer ")?.strip_suffix(&format!(" {port}")))
            .map(parse_addr)
            .collect()
    }

    fn wait_peers(&self, port: u16, n: usize) -> Vec<SocketAddr> {
        let suffix = format!(" {port}");
        self.wait_line(|l| l.starts_with("peer ") && l.ends_with(&suffix), n);
        self.peers(port)
    }

    /// tcpi_state of every connection held after the client's FIN (hold mode).
    fn held_states(&mut self) -> Vec<(SocketAddr, u8)> {
        let before = self.lines.lock().unwrap().iter().filter(|l| *l == "checked").count();
        writeln!(self.stdin, "check").unwrap();
        assert!(self.wait_line(|l| l == "checked", before + 1), "server.py did not answer `check`");
        let lines = self.lines.lock().unwrap();
        let start = lines.iter().rposition(|l| l == "checked").unwrap();
        let from = lines[..start].iter().rposition(|l| l == "checked").map_or(0, |i| i + 1);
        lines[from..start]
            .iter()
            .filter_map(|l| l.strip_prefix("state "))
            .map(|r| {
                let (a, st) = r.rsplit_once(' ').unwrap();
                (parse_addr(a), st.parse().unwrap())
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_addr(r: &str) -> SocketAddr {
    let (ip, port) = r.split_once(' ').unwrap();
    SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap())
}

/// The client's connect outcomes: `Ok(local)` (also EINPROGRESS), or `Err((errno, ms))`.
fn outcomes(out: &Output) -> Vec<Result<SocketAddr, (i32, f64)>> {
    out.stdout
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.first().copied() {
                Some("ok" | "inprogress") => Ok(parse_addr(&format!("{} {}", w[1], w[2]))).into(),
                Some("err") => Some(Err((w[1].parse().unwrap(), w[2].parse().unwrap()))),
                _ => None,
            }
        })
        .collect()
}

fn ok_count(out: &Output) -> usize {
    outcomes(out).iter().filter(|r| r.is_ok()).count()
}

/// Every connect succeeded, from the slice, the server saw each from the slice (on PORT), and
/// none of the server's connections was reset.
#[track_caller]
fn expect_all_ok(out: &Output, n: usize, server: &Server, peers_before: usize, ctx: &str) {
    out.assert_success();
    let got = outcomes(out);
    assert_eq!(got.len(), n, "[{ctx}] outcomes\n{}", out.dump());
    let ok = ok_count(out);
    assert_eq!(ok, n, "[{ctx}] {ok} of {n} connects succeeded\n{}", out.dump());
    for local in got.iter().flatten() {
        assert!(in_slice(*local, CLIENT_IP, LO, HI), "[{ctx}] placed at {local}\n{}", out.dump());
    }
    let peers = server.wait_peers(PORT, peers_before + n);
    assert_eq!(peers.len(), peers_before + n, "[{ctx}] the server saw {} connections", peers.len());
    for p in &peers[peers_before..] {
        assert!(in_slice(*p, CLIENT_IP, LO, HI), "[{ctx}] the server saw {p}");
    }
    let resets: Vec<String> =
        server.lines.lock().unwrap().iter().filter(|l| l.starts_with("reset ")).cloned().collect();
    assert!(resets.is_empty(), "[{ctx}] the server's connections were reset: {resets:?}");
}

fn stats_of(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn stat(line: &str, key: &str) -> i64 {
    let k = format!("\"{key}\":");
    line.split(&k).nth(1).and_then(|r| r.split([',', '}']).next()).and_then(|v| v.parse().ok()).unwrap_or(-1)
}

// ---------------------------------------------------------------------------------------------
// 1. The kernel strategy never fails where an explicit bind would succeed
// ---------------------------------------------------------------------------------------------

/// 200 client-closed connect+close cycles 5 ms apart on a 10-port slice: 200 of 200 succeed,
/// with tcp_tw_reuse=1 (where `auto` may choose the kernel, which reuses a TIME_WAIT only once
/// it is a second old: ~20 of 200 before the fix) and 2, under `auto` and `kernel`.
#[test]
fn client_closed_loops_never_fail() {
    require_netns!();
    require!("ip");
    for tw_reuse in ["1", "2"] {
        let pair = Pair::new(&[("net.ipv4.tcp_tw_reuse", tw_reuse)]);
        let server = Server::start(&pair, "close", &[PORT]);
        let mut seen = 0;
        for strategy in ["auto", "kernel"] {
            let ctx = format!("tcp_tw_reuse={tw_reuse}, {strategy}");
            let out =
                pair.client(&[("PORTRANGE_STRATEGY", strategy)], &["loop", SERVER_IP, "8080", "200", "5"]);
            expect_all_ok(&out, 200, &server, seen, &ctx);
            seen += 200;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Every placed socket leaves reusable TIME_WAITs
// ---------------------------------------------------------------------------------------------

/// `wget --bind-address` in a loop: 100 × (bind(SLICE_IP, 0), connect, close) 5 ms apart on a
/// 10-port slice all succeed (before: each bind took an exclusive port, whose TIME_WAIT locked
/// it for 60 s — 10 of 100).
#[test]
fn bind_then_connect_loops_never_fail() {
    require_netns!();
    require!("ip");
    let pair = Pair::new(&[("net.ipv4.tcp_tw_reuse", "1")]);
    let server = Server::start(&pair, "close", &[PORT]);
    let mut seen = 0;
    for strategy in ["auto", "retry", "kernel"] {
        let out = pair.client(
            &[("PORTRANGE_STRATEGY", strategy)],
            &["loop", SERVER_IP, "8080", "100", "5", "bind", CLIENT_IP],
        );
        expect_all_ok(&out, 100, &server, seen, &format!("bind-then-connect, {strategy}"));
        seen += 100;
    }
}

/// The same with the real program: 30 `wget --bind-address=SLICE_IP` runs in a row on a
/// 10-port slice all succeed (before: from the 11th on, wget's bind failed with EADDRINUSE for
/// 60 s).
#[test]
fn wget_bind_address_runs_never_fail() {
    require_netns!();
    require!("ip", "wget");
    let pair = Pair::new(&[]);
    let server = Server::start(&pair, "http", &[PORT]);
    let url = format!("http://{SERVER_IP}:{PORT}/");
    let bind = format!("--bind-address={CLIENT_IP}");
    for i in 0..30 {
        let run = Run::new("wget")
            .args(["-q", "-O", "-", "--tries=1", "--timeout=5", &bind, &url])
            .slice(&slice_spec(CLIENT_IP, LO, HI));
        let out = pair.in_client(move || run.run());
        out.assert_success();
        assert_eq!(out.stdout, "ok\n", "run {i}\n{}", out.dump());
    }
    let peers = server.wait_peers(PORT, 30);
    assert_eq!(peers.len(), 30, "the server saw {peers:?}");
    for p in &peers {
        assert!(in_slice(*p, CLIENT_IP, LO, HI), "the server saw {p}");
    }
}

/// bind(SLICE_IP, 0) then getsockname() before connect: the socket gets a port of its own at
/// once (as the kernel would), and at connect it starts sharing it, so its TIME_WAIT does not
/// lock the port: after 5 such cycles on a 10-port slice another process holds 10 connections
/// (before: 5 of 10, the explicit binds refused over the exclusive TIME_WAITs). The program
/// still reads its own SO_REUSEADDR (0).
#[test]
fn getsockname_before_connect_leaves_reusable_time_waits() {
    require_netns!();
    require!("ip");
    let pair = Pair::new(&[]);
    let server = Server::start(&pair, "close", &[PORT]);
    let out = pair.client(&[], &["loop", SERVER_IP, "8080", "5", "0", "bind", CLIENT_IP, "getsockname"]);
    expect_all_ok(&out, 5, &server, 0, "bind, getsockname, connect");
    assert_eq!(out.fields("reuse"), ["0"; 5], "{}", out.dump());
    let out = pair.client(&[], &["hold", SERVER_IP, "8080", "10"]);
    expect_all_ok(&out, 10, &server, 5, "then 10 held connections");
}

/// One slice, two processes one after the other: the first (kernel or retry) makes 10
/// client-closed connections, the second (the other strategy) then holds 10 connections to
/// the same server: 10 of 10 (before: the kernel process's TIME_WAITs, without SO_REUSEADDR,
/// refused the retry process's binds; the retry process's explicit binds hid the ports from
/// the kernel's own choice).
#[test]
fn kernel_and_retry_processes_share_a_slice() {
    require_netns!();
    require!("ip");
    for (first, second) in [("kernel", "retry"), ("retry", "kernel")] {
        let pair = Pair::new(&[("net.ipv4.tcp_tw_reuse", "1")]);
        let server = Server::start(&pair, "close", &[PORT]);
        let ctx = format!("{first} then {second}");
        let out = pair.client(&[("PORTRANGE_STRATEGY", first)], &["loop", SERVER_IP, "8080", "10", "0"]);
        expect_all_ok(&out, 10, &server, 0, &format!("{ctx}: first"));
        let out = pair.client(&[("PORTRANGE_STRATEGY", second)], &["timewait", SERVER_IP, "8080", "10"]);
        expect_all_ok(&out, 20, &server, 10, &format!("{ctx}: second"));
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Closing states
// ---------------------------------------------------------------------------------------------

/// 10 connections on a 10-port slice, closed by the client, and at once 10 blocking reconnects:
/// 20 of 20 (the tuples are FIN_WAIT1 for about a round trip; before: 1-2 of the 10 reconnects
/// succeeded). Non-blocking reconnects never wait: each succeeds or fails with EADDRNOTAVAIL at
/// once. The server's connections are never reset.
#[test]
fn blocking_connects_wait_for_closing_tuples() {
    require_netns!();
    require!("ip");
    let pair = Pair::new(&[]);
    let server = Server::start(&pair, "close", &[PORT, PORT2]);
    let mut seen = 0;
    for strategy in ["retry", "kernel"] {
        let ctx = format!("blocking, {strategy}");
        let out =
            pair.client(&[("PORTRANGE_STRATEGY", strategy)], &["burst", SERVER_IP, "8080", "10", "block"]);
        expect_all_ok(&out, 20, &server, seen, &ctx);
        seen += 20;
        thread::sleep(Duration::from_millis(300));
        // Another server port: an EINPROGRESS connect over a tuple the server still holds in
        // LAST_ACK waits for a SYN retransmission the short-lived client does not outlive.
        let out =
            pair.client(&[("PORTRANGE_STRATEGY", strategy)], &["burst", SERVER_IP, "8081", "10", "nonblock"]);
        out.assert_success();
        for r in outcomes(&out) {
            if let Err((e, ms)) = r {
                assert_eq!(e, EADDRNOTAVAIL, "[non-blocking, {strategy}]\n{}", out.dump());
                assert!(ms < 50.0, "[non-blocking, {strategy}] a non-blocking connect waited {ms} ms");
            }
        }
        thread::sleep(Duration::from_millis(300));
    }
}

/// The server keeps its end open after the client's FIN: the client's tuples become orphaned
/// FIN_WAIT2. 10 blocking reconnects on the full 10-port slice must all fail (EADDRNOTAVAIL,
/// after the bounded wait) and the server's 10 connections must still be open (CLOSE_WAIT):
/// an explicit bind over an orphaned FIN_WAIT2 succeeds and resets the peer — which
/// PORTRANGE_PRECHECK=off did before (10 of 10 reset).
#[test]
fn orphaned_fin_wait2_is_never_taken_over() {
    require_netns!();
    require!("ip");
    for (strategy, precheck) in [("retry", "on"), ("retry", "off"), ("kernel", "off")] {
        let ctx = format!("{strategy}, PORTRANGE_PRECHECK={precheck}");
        let pair = Pair::new(&[]);
        let mut server = Server::start(&pair, "hold", &[PORT]);
        let out = pair.client(
            &[("PORTRANGE_STRATEGY", strategy), ("PORTRANGE_PRECHECK", precheck)],
            &["orphans", SERVER_IP, "8080", "10"],
        );
        out.assert_success();
        assert_eq!(out.expect_field("fin_wait2"), "10", "[{ctx}]\n{}", out.dump());
        let got = outcomes(&out);
        assert_eq!(got.len(), 20, "[{ctx}]\n{}", out.dump());
        assert!(got[..10].iter().all(|r| r.is_ok()), "[{ctx}] first batch\n{}", out.dump());
        for r in &got[10..] {
            assert!(
                matches!(r, Err((EADDRNOTAVAIL, _))),
                "[{ctx}] a reconnect over an orphaned FIN_WAIT2: {r:?}\n{}",
                out.dump()
            );
        }
        let states = server.held_states();
        assert_eq!(states.len(), 10, "[{ctx}] held: {states:?}");
        for (peer, st) in &states {
            assert_eq!(*st, 8, "[{ctx}] the server's connection from {peer} is no longer CLOSE_WAIT");
        }
    }
}

/// With net.ipv4.tcp_timestamps=0 an explicit bind cannot reuse a TIME_WAIT: the shim treats
/// those tuples as held (no attempt, no swap) and the reconnects fail at once.
#[test]
fn time_wait_is_held_without_timestamps() {
    require_netns!();
    require!("ip");
    let pair = Pair::new(&[("net.ipv4.tcp_timestamps", "0")]);
    let _server = Server::start(&pair, "close", &[PORT]);
    let dir = TempDir::new("churn-ts");
    let stats = dir.path().join("stats");
    let out = pair.client(
        &[("PORTRANGE_STRATEGY", "retry"), ("PORTRANGE_STATS", stats.to_str().unwrap())],
        &["timewait", SERVER_IP, "8080", "10"],
    );
    out.assert_success();
    assert_eq!(out.expect_field("timewait"), "10", "{}", out.dump());
    let got = outcomes(&out);
    assert_eq!(got.len(), 20, "{}", out.dump());
    for r in &got[10..] {
        assert!(matches!(r, Err((EADDRNOTAVAIL, _))), "{r:?}\n{}", out.dump());
    }
    let line = stats_of(&stats);
    assert_eq!(stat(&line, "attempts"), 10, "only the first batch binds and connects: {line}");
    assert_eq!(stat(&line, "swaps"), 0, "{line}");
}

// ---------------------------------------------------------------------------------------------
// 4. Exhaustion is logged at warn, once per destination
// ---------------------------------------------------------------------------------------------

/// 10 held connections fill the slice towards each of two server ports; 20 more connects to
/// each fail. At the default log level, exactly one line per destination says so.
#[test]
fn exhaustion_is_logged_once_per_destination() {
    require_netns!();
    require!("ip");
    let pair = Pair::new(&[]);
    let _server = Server::start(&pair, "close", &[PORT, PORT2]);
    let code = r#"
import socket, sys
held = []
for port in (8080, 8081):
    for i in range(30):
        s = socket.socket()
        try:
            s.connect((sys.argv[1], port))
            held.append(s)
            print("ok", port)
        except OSError as e:
            print("err", port, e.errno)
"#;
    for strategy in ["retry", "kernel"] {
        let run = Run::python(code)
            .arg(SERVER_IP)
            .slice(&slice_spec(CLIENT_IP, LO, HI))
            .env("PORTRANGE_STRATEGY", strategy);
        let out = pair.in_client(move || run.run());
        out.assert_success();
        for port in [PORT, PORT2] {
            assert_eq!(out.stdout.matches(&format!("ok {port}\n")).count(), 10, "{}", out.dump());
            assert_eq!(
                out.stdout.matches(&format!("err {port} {EADDRNOTAVAIL}\n")).count(),
                20,
                "{}",
                out.dump()
            );
            let dst = format!("{SERVER_IP}:{port}");
            let lines: Vec<&str> = out
                .portrange_lines()
                .into_iter()
                .filter(|l| l.contains(&dst) && l.contains("WARN"))
                .collect();
            assert_eq!(lines.len(), 1, "[{strategy}] warn lines about {dst}\n{}", out.dump());
            assert!(lines[0].contains("full"), "{}", lines[0]);
        }
    }
}
