//! Issue 3, core completion: several slices, the program's own bind() (IP_BIND_ADDRESS_NO_PORT,
//! slice IP, wildcard, non-slice IP), fork/exec/vfork/threads, TCP Fast Open and the
//! `PORTRANGE_STATS` file. Every placement is checked on the peer side (a [`Recorder`]), and
//! the placement tests run once per TCP strategy ([`tcp_strategies`]), each run with a fresh
//! slice and fresh recorders.

use cdylib_tests::*;
use std::net::SocketAddr;

/// The local addresses of the RESULT lines; panics on any failure.
#[track_caller]
fn all_ok(out: &Output, n: usize, ctx: &str) -> Vec<SocketAddr> {
    let results = out.connects();
    assert_eq!(results.len(), n, "[{ctx}] expected {n} RESULT lines\n{}", out.dump());
    results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.result.unwrap_or_else(|e| {
                panic!("[{ctx}] connect #{i} to {} failed with errno {e}\n{}", r.dst, out.dump())
            })
        })
        .collect()
}

/// A `host port` pair of a recorder, as script arguments.
fn hp(rec: &Recorder) -> [String; 2] {
    [rec.ip(), rec.port().to_string()]
}

// ---------------------------------------------------------------------------------------------
// 1. Several slices
// ---------------------------------------------------------------------------------------------

/// Two slices on different IPs, 2 ports each (the same port numbers on both): one process holds
/// 4 concurrent connections to one destination, from both IPs; the 5th fails with EADDRNOTAVAIL.
#[test]
fn two_slices_on_two_ips_serve_four_flows_then_eaddrnotavail() {
    for strategy in tcp_strategies() {
        let rec = Recorder::hold("127.0.0.1");
        let (lo, hi) = slice_ports(2);
        let ips = [SLICE_IP, "127.0.0.6"];
        let spec = format!("{},{}", slice_spec(ips[0], lo, hi), slice_spec(ips[1], lo, hi));
        let out = py_connect_tcp(&[(&rec, 5)]).slice(&spec).env("PORTRANGE_STRATEGY", strategy).run();
        out.assert_success();
        let results = out.connects();
        assert_eq!(results.len(), 5, "[{strategy}]\n{}", out.dump());
        for (i, r) in results[..4].iter().enumerate() {
            match r.result {
                Ok(local) => assert!(
                    ips.iter().any(|ip| in_slice(local, ip, lo, hi)),
                    "[{strategy}] connect #{i} got local {local}, outside {spec}\n{}",
                    out.dump()
                ),
                Err(e) => panic!(
                    "[{strategy}] connect #{i} failed with errno {e}; {spec} has 4 ports\n{}",
                    out.dump()
                ),
            }
        }
        assert_eq!(
            results[4].result,
            Err(EADDRNOTAVAIL),
            "[{strategy}] the 5th connect must fail with EADDRNOTAVAIL ({EADDRNOTAVAIL}): both slices are full\n{}",
            out.dump()
        );
        let peers = expect_peers(&rec, 4, strategy, &out);
        for p in &peers {
            assert!(
                ips.iter().any(|ip| in_slice(*p, ip, lo, hi)),
                "[{strategy}] the peer saw {p}, outside both slices {spec}\n{}",
                out.dump()
            );
        }
        for ip in ips {
            let n = peers.iter().filter(|p| in_slice(**p, ip, lo, hi)).count();
            assert_eq!(
                n,
                2,
                "[{strategy}] expected 2 flows from {ip}, the peer saw {peers:?}\n{}",
                out.dump()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2-4. The program's own bind()
// ---------------------------------------------------------------------------------------------

/// argv: SLICE_IP then `HOST PORT` pairs. Each pair: a socket with IP_BIND_ADDRESS_NO_PORT=1,
/// bind(SLICE_IP, 0), connect; prints `bound IP PORT` (getsockname after bind), `no_port V`
/// (getsockopt after bind) and `no_port_after V` (after connect), and a RESULT line (as
/// PY_CONNECT). Every connected socket is held until exit.
const PY_NO_PORT: &str = r#"
import socket, sys
slice_ip, args = sys.argv[1], sys.argv[2:]
held = []
for i in range(0, len(args), 2):
    host, port = args[i], int(args[i + 1])
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_IP, 24, 1)
    s.bind((slice_ip, 0))
    print("bound %s %d" % s.getsockname())
    print("no_port", s.getsockopt(socket.IPPROTO_IP, 24))
    line, ok = tcp_result(s, host, port)
    print(line, flush=True)
    if ok:
        print("no_port_after", s.getsockopt(socket.IPPROTO_IP, 24))
        held.append(s)
"#;

/// IP_BIND_ADDRESS_NO_PORT + bind(SLICE_IP, 0) (nginx proxy_bind): the port is chosen at connect
/// and shared across destinations — a 10-port slice holds 30 connections to 3 destinations;
/// the 11th to one destination fails with EADDRNOTAVAIL. The program reads back its own
/// IP_BIND_ADDRESS_NO_PORT=1.
#[test]
fn no_port_bind_to_slice_ip_shares_ports_across_destinations() {
    for strategy in tcp_strategies() {
        let recs = [Recorder::hold("127.0.0.1"), Recorder::hold("127.0.0.3"), Recorder::hold("127.0.0.4")];
        let (lo, hi) = slice_ports(10);
        let mut args = vec![SLICE_IP.to_string()];
        for rec in &recs {
            for _ in 0..10 {
                args.extend(hp(rec));
            }
        }
        args.extend(hp(&recs[0]));
        let out = py_tcp_result(PY_NO_PORT)
            .args(&args)
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        // 10 flows to each destination, then the 11th to the first one finds the slice full.
        expect_slice_fills_after(&out, 30, SLICE_IP, lo, hi, strategy);
        // As without the shim: NO_PORT binds the IP only, the program reads back its own value.
        for b in out.fields("bound") {
            assert_eq!(
                b,
                format!("{SLICE_IP} 0"),
                "[{strategy}] getsockname after a NO_PORT bind\n{}",
                out.dump()
            );
        }
        let reads: Vec<&str> = out.fields("no_port").into_iter().chain(out.fields("no_port_after")).collect();
        assert_eq!(reads.len(), 31 + 30, "[{strategy}]\n{}", out.dump());
        assert!(
            reads.iter().all(|v| *v == "1"),
            "[{strategy}] getsockopt(IP_BIND_ADDRESS_NO_PORT) must read the program's 1: {reads:?}\n{}",
            out.dump()
        );
        for rec in &recs {
            let peers = expect_peers(rec, 10, strategy, &out);
            expect_in_slice(&peers, SLICE_IP, lo, hi, strategy, &out);
            expect_distinct_ports(&peers, strategy, &out);
        }
    }
}

/// argv: SLICE_IP RECORDER_PORT. (a) bind(SLICE_IP, 0) then connect to 127.0.0.1:RECORDER_PORT;
/// (b) bind(SLICE_IP, 0), listen, and a plain client (socket + connect, no bind) in the same
/// process connects to the getsockname() address.
const PY_BIND_SLICE_IP: &str = r#"
import socket, sys
slice_ip, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
s.bind((slice_ip, 0))
print("bound %s %d" % s.getsockname(), flush=True)
s.connect(("127.0.0.1", port))
print("connected %s %d" % s.getsockname(), flush=True)
s.sendall(b"ping")
s.close()
l = socket.socket()
l.bind((slice_ip, 0))
addr = l.getsockname()
print("listen_bound %s %d" % addr, flush=True)
l.listen(1)
print("listening %s %d" % l.getsockname(), flush=True)
l.settimeout(10)
c = socket.socket()
c.settimeout(10)
c.connect(addr)
a, peer = l.accept()
c.sendall(b"hello")
print("accepted_data", a.recv(5).decode(), flush=True)
print("accepted_peer %s %d" % peer, flush=True)
print("client_local %s %d" % c.getsockname(), flush=True)
"#;

/// bind(SLICE_IP, 0) without IP_BIND_ADDRESS_NO_PORT: the socket has a slice port right after
/// bind (getsockname before connect), the peer sees exactly that port, and such a socket can
/// listen() and accept a connection.
#[test]
fn bind_slice_ip_port_zero_gets_a_slice_port_at_once() {
    for strategy in tcp_strategies() {
        let rec = Recorder::bytes("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let out = Run::python(PY_BIND_SLICE_IP)
            .args([SLICE_IP, &rec.port().to_string()])
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        let bound = out.expect_addr("bound");
        assert!(
            in_slice(bound, SLICE_IP, lo, hi),
            "[{strategy}] getsockname right after bind({SLICE_IP}, 0) shows {bound}, not a port of the slice {lo}-{hi}\n{}",
            out.dump()
        );
        assert_eq!(
            out.expect_addr("connected"),
            bound,
            "[{strategy}] the port changed at connect\n{}",
            out.dump()
        );
        let peers = expect_peers(&rec, 1, strategy, &out);
        assert_eq!(
            peers[0],
            bound,
            "[{strategy}] the peer saw {}, the program bound {bound}\n{}",
            peers[0],
            out.dump()
        );
        assert!(rec.wait_finished(1, PEER_WAIT), "[{strategy}] the connection did not end\n{}", out.dump());
        assert_eq!(rec.received(), b"ping", "[{strategy}]\n{}", out.dump());

        let lb = out.expect_addr("listen_bound");
        assert!(
            in_slice(lb, SLICE_IP, lo, hi),
            "[{strategy}] listening socket bound to {lb}\n{}",
            out.dump()
        );
        assert_ne!(lb, bound, "[{strategy}] two sockets hold {bound} exclusively\n{}", out.dump());
        assert_eq!(out.expect_addr("listening"), lb, "[{strategy}]\n{}", out.dump());
        assert_eq!(out.expect_field("accepted_data"), "hello", "[{strategy}]\n{}", out.dump());
        // The listener is the peer of the plain client: it saw the client's own address.
        assert_eq!(
            out.expect_addr("accepted_peer"),
            out.expect_addr("client_local"),
            "[{strategy}]\n{}",
            out.dump()
        );
    }
}

/// argv: PORT. Connects to 127.0.0.1:PORT after bind(("0.0.0.0", 0)) (`v4 IP PORT`) and from
/// an AF_INET6 socket after bind(("::", 0)) to `::ffff:127.0.0.1` (`v6 IP PORT`).
const PY_WILDCARD_CONNECT: &str = r#"
import socket, sys
port = int(sys.argv[1])
held = []
s = socket.socket()
s.bind(("0.0.0.0", 0))
s.connect(("127.0.0.1", port))
print("v4 %s %d" % s.getsockname(), flush=True)
held.append(s)
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 0))
s.connect(("::ffff:127.0.0.1", port))
print("v6 %s %d" % s.getsockname()[:2], flush=True)
held.append(s)
"#;

/// bind(0.0.0.0, 0) or bind(::, 0) then connect: the flow still leaves from the slice (the v6
/// socket with a v4-mapped destination uses the IPv4 slice).
#[test]
fn wildcard_bind_then_connect_is_placed() {
    for strategy in tcp_strategies() {
        let rec = Recorder::hold("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let out = Run::python(PY_WILDCARD_CONNECT)
            .arg(rec.port().to_string())
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        let peers = expect_peers(&rec, 2, strategy, &out);
        expect_in_slice(&peers, SLICE_IP, lo, hi, strategy, &out);
        for key in ["v4", "v6"] {
            let local = out.expect_addr(key);
            assert!(
                in_slice(local, SLICE_IP, lo, hi),
                "[{strategy}] {key}: getsockname after connect shows {local}\n{}",
                out.dump()
            );
            assert!(
                peers.iter().any(|p| p.port() == local.port()),
                "[{strategy}] {key}: the program's {local} is not among the peers {peers:?}\n{}",
                out.dump()
            );
        }
    }
}

/// bind(0.0.0.0, 0) then listen(): as without the shim. `a` calls getsockname between bind and
/// listen (as programs that publish their port do), `b` does not. Each accepts one client.
const PY_WILDCARD_LISTEN: &str = r#"
import socket
def serve(tag, early):
    l = socket.socket()
    l.bind(("0.0.0.0", 0))
    if early:
        print("%s_after_bind %s %d" % ((tag,) + l.getsockname()), flush=True)
    l.listen(1)
    name = l.getsockname()
    print("%s_listening %s %d" % ((tag,) + name), flush=True)
    l.settimeout(10)
    c = socket.socket()
    c.settimeout(10)
    c.connect(("127.0.0.1", name[1]))
    a, peer = l.accept()
    c.sendall(b"hi")
    print("%s_data" % tag, a.recv(2).decode(), flush=True)
    print("%s_peer %s %d" % ((tag,) + peer), flush=True)
    print("%s_client %s %d" % ((tag,) + c.getsockname()), flush=True)
serve("a", True)
serve("b", False)
"#;

/// bind(0.0.0.0, 0) then listen() behaves exactly as without the shim: a real port (≠ 0, from
/// the kernel's ephemeral range, the same before and after listen) that a client can reach.
#[test]
fn wildcard_bind_then_listen_is_unchanged() {
    let (eph_lo, eph_hi) = local_port_range();
    let base = Run::python(PY_WILDCARD_LISTEN).no_preload().run();
    base.assert_success();
    for strategy in tcp_strategies() {
        let (lo, hi) = slice_ports(10);
        let out = Run::python(PY_WILDCARD_LISTEN)
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        for (o, label) in [(&base, "baseline"), (&out, strategy)] {
            let a = o.expect_addr("a_after_bind");
            assert_eq!(o.expect_addr("a_listening"), a, "[{label}] the port changed at listen\n{}", o.dump());
            for tag in ["a", "b"] {
                let l = o.expect_addr(&format!("{tag}_listening"));
                assert_eq!(l.ip().to_string(), "0.0.0.0", "[{label}] {tag}\n{}", o.dump());
                assert!(
                    l.port() != 0 && (eph_lo..=eph_hi).contains(&l.port()),
                    "[{label}] {tag}: listening on {l}, expected a port of the kernel's range {eph_lo}-{eph_hi}\n{}",
                    o.dump()
                );
                assert_eq!(o.expect_field(&format!("{tag}_data")), "hi", "[{label}] {tag}\n{}", o.dump());
                assert_eq!(
                    o.expect_addr(&format!("{tag}_peer")),
                    o.expect_addr(&format!("{tag}_client")),
                    "[{label}] {tag}\n{}",
                    o.dump()
                );
            }
        }
        // The listener is the peer of the client (a plain connect under the shim): placed.
        for tag in ["a", "b"] {
            let peer = out.expect_addr(&format!("{tag}_peer"));
            assert!(
                in_slice(peer, SLICE_IP, lo, hi),
                "[{strategy}] {tag}: the listener saw the client at {peer}, outside the slice {SLICE_IP}:{lo}-{hi}\n{}",
                out.dump()
            );
        }
    }
}

/// bind(127.0.0.5, 0) — a specific IP that is not a slice IP — then connect: left alone (the
/// peer sees 127.0.0.5) and warned once per process, for 3 such sockets.
#[test]
fn bind_to_non_slice_ip_is_left_alone_and_warned_once() {
    let code = r#"
import socket, sys
port = int(sys.argv[1])
held = []
for i in range(3):
    s = socket.socket()
    s.bind(("127.0.0.5", 0))
    s.connect(("127.0.0.1", port))
    print("local %s %d" % s.getsockname(), flush=True)
    held.append(s)
"#;
    for strategy in tcp_strategies() {
        let rec = Recorder::hold("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let out = Run::python(code)
            .arg(rec.port().to_string())
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        let peers = expect_peers(&rec, 3, strategy, &out);
        for p in &peers {
            assert_eq!(
                p.ip().to_string(),
                "127.0.0.5",
                "[{strategy}] the peer saw {p}: a socket the program bound to 127.0.0.5 was moved\n{}",
                out.dump()
            );
        }
        let locals = out.fields("local");
        assert_eq!(locals.len(), 3, "[{strategy}]\n{}", out.dump());
        for l in locals {
            assert!(
                peers.iter().any(|p| format!("{} {}", p.ip(), p.port()) == l),
                "[{strategy}] the program's local address {l} is not among the peers {peers:?}\n{}",
                out.dump()
            );
        }
        let warnings: Vec<&str> = out.portrange_lines().into_iter().filter(|l| l.contains("WARN")).collect();
        assert_eq!(
            warnings.len(),
            1,
            "[{strategy}] expected exactly one warning line for 3 sockets bound by the program, got {warnings:?}\n{}",
            out.dump()
        );
        assert!(
            warnings[0].contains("127.0.0.5"),
            "[{strategy}] the warning does not name the address\n{}",
            out.dump()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. fork / exec / vfork / threads
// ---------------------------------------------------------------------------------------------

const CURL_LOCAL: &str = "LOCAL %{local_ip} %{local_port}\\n";

/// Assert the `LOCAL IP PORT` lines printed by curl match the peers one to one.
#[track_caller]
fn expect_locals_match(out: &Output, peers: &[SocketAddr], ctx: &str) {
    let mut locals: Vec<String> = out.fields("LOCAL").into_iter().map(str::to_string).collect();
    let mut seen: Vec<String> = peers.iter().map(|p| format!("{} {}", p.ip(), p.port())).collect();
    locals.sort();
    seen.sort();
    assert_eq!(locals, seen, "[{ctx}] curl's local addresses differ from what the peer saw\n{}", out.dump());
}

/// LD_PRELOAD and PORTRANGE survive an exec chain: `sh -c 'curl URL; exec curl URL'`.
#[test]
fn curl_from_shell_is_placed() {
    require!("curl", "sh");
    for strategy in tcp_strategies() {
        let rec = Recorder::http("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let script = format!(
            "curl -sS --max-time 20 -o /dev/null -w '{CURL_LOCAL}' \"$1\" && exec curl -sS --max-time 20 -o /dev/null -w '{CURL_LOCAL}' \"$1\""
        );
        let out = Run::new("sh")
            .args(["-c", &script, "sh", &rec.url()])
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        let peers = expect_peers(&rec, 2, strategy, &out);
        expect_in_slice(&peers, SLICE_IP, lo, hi, strategy, &out);
        expect_locals_match(&out, &peers, strategy);
    }
}

/// curl started by python's subprocess.run (vfork + exec in CPython 3.10+) and by
/// os.posix_spawnp (glibc: clone(CLONE_VM|CLONE_VFORK)).
#[test]
fn curl_from_python_subprocess_and_posix_spawn_is_placed() {
    require!("curl");
    let code = r#"
import os, subprocess, sys
url, fmt = sys.argv[1], sys.argv[2]
argv = ["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", fmt, url]
sys.stdout.flush()
r = subprocess.run(argv)
print("subprocess_rc", r.returncode, flush=True)
pid = os.posix_spawnp("curl", argv, os.environ)
_, st = os.waitpid(pid, 0)
print("posix_spawn_rc", os.waitstatus_to_exitcode(st), flush=True)
"#;
    for strategy in tcp_strategies() {
        let rec = Recorder::http("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let out = Run::python(code)
            .args([rec.url().as_str(), &CURL_LOCAL.replace("\\n", "\n")])
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        assert_eq!(out.expect_field("subprocess_rc"), "0", "[{strategy}]\n{}", out.dump());
        assert_eq!(out.expect_field("posix_spawn_rc"), "0", "[{strategy}]\n{}", out.dump());
        let peers = expect_peers(&rec, 2, strategy, &out);
        expect_in_slice(&peers, SLICE_IP, lo, hi, strategy, &out);
        expect_locals_match(&out, &peers, strategy);
    }
}

/// The parent connects once, forks; then the child and the parent each connect N times at the
/// same time (holding their connections). Prints RESULT lines (both processes) and
/// `child_status`.
const PY_FORK: &str = r#"
import os, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
def say(line):
    os.write(1, (line + "\n").encode())  # one write: lines of both processes stay whole
def connect():
    s = socket.socket()
    line, ok = tcp_result(s, host, port)
    say(line)
    if ok:
        held.append(s)
connect()
go_r, go_w = os.pipe()
done_r, done_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.read(go_r, 1)
    for i in range(n):
        connect()
    os.write(done_w, b"x")
    os.read(go_r, 1)  # hold until the parent is done too
    os._exit(0)
os.write(go_w, b"x")
for i in range(n):
    connect()
os.read(done_r, 1)
os.write(go_w, b"x")
_, st = os.waitpid(pid, 0)
say("child_status %d" % os.waitstatus_to_exitcode(st))
"#;

/// A forked child connects while its parent also connects: every flow of both is in the slice,
/// with distinct source ports (one destination).
#[test]
fn forked_child_and_parent_are_placed() {
    const N: usize = 5;
    for strategy in tcp_strategies() {
        let rec = Recorder::hold("127.0.0.1");
        let (lo, hi) = slice_ports(20);
        let out = py_tcp_result(PY_FORK)
            .args([rec.ip(), rec.port().to_string(), N.to_string()])
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        assert_eq!(out.expect_field("child_status"), "0", "[{strategy}]\n{}", out.dump());
        let locals = all_ok(&out, 1 + 2 * N, strategy);
        for l in &locals {
            assert!(in_slice(*l, SLICE_IP, lo, hi), "[{strategy}] getsockname {l}\n{}", out.dump());
        }
        let peers = expect_peers(&rec, 1 + 2 * N, strategy, &out);
        expect_in_slice(&peers, SLICE_IP, lo, hi, strategy, &out);
        expect_distinct_ports(&peers, strategy, &out);
    }
}

/// argv: HOST PORT THREADS PER_THREAD. THREADS threads start together and each makes PER_THREAD
/// connections; every connection is held until all threads are done.
const PY_THREADS: &str = r#"
import socket, sys, threading
host, port, nthreads, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
lock = threading.Lock()
held = []
start = threading.Barrier(nthreads)
def work():
    start.wait()
    for i in range(per):
        s = socket.socket()
        line, ok = tcp_result(s, host, port)
        if ok:
            with lock:
                held.append(s)
        with lock:
            print(line, flush=True)
ts = [threading.Thread(target=work) for _ in range(nthreads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print("held", len(held), flush=True)
"#;

/// 8 threads × 5 connections in parallel to one destination, all held: every flow in the slice,
/// distinct ports, no failure.
#[test]
fn threads_connect_in_parallel() {
    const THREADS: usize = 8;
    const PER: usize = 5;
    for strategy in tcp_strategies() {
        let rec = Recorder::hold("127.0.0.1");
        let (lo, hi) = slice_ports(64);
        let out = py_tcp_result(PY_THREADS)
            .args([rec.ip(), rec.port().to_string(), THREADS.to_string(), PER.to_string()])
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        let n = THREADS * PER;
        let locals = all_ok(&out, n, strategy);
        assert_eq!(out.expect_field("held"), n.to_string(), "[{strategy}]\n{}", out.dump());
        for l in &locals {
            assert!(in_slice(*l, SLICE_IP, lo, hi), "[{strategy}] getsockname {l}\n{}", out.dump());
        }
        let peers = expect_peers(&rec, n, strategy, &out);
        expect_in_slice(&peers, SLICE_IP, lo, hi, strategy, &out);
        expect_distinct_ports(&peers, strategy, &out);
    }
}

// ---------------------------------------------------------------------------------------------
// 6. TCP Fast Open
// ---------------------------------------------------------------------------------------------

/// Under each TCP strategy, run `code` (argv: a bytes recorder's port; prints `local IP PORT`
/// after sending `payload` on one TCP connection) with a fresh slice: the stdout line
/// `field.0` must read `field.1`, the one flow is placed and is the program's `local`, and the
/// peer receives `payload`.
fn fast_open_case(code: &str, field: (&str, &str), payload: &str) {
    let (key, want) = field;
    for strategy in tcp_strategies() {
        let rec = Recorder::bytes("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let out = Run::python(code)
            .arg(rec.port().to_string())
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        assert_eq!(out.expect_field(key), want, "[{strategy}]\n{}", out.dump());
        let peers = expect_peers(&rec, 1, strategy, &out);
        expect_in_slice(&peers, SLICE_IP, lo, hi, strategy, &out);
        assert_eq!(out.expect_addr("local"), peers[0], "[{strategy}]\n{}", out.dump());
        assert!(rec.wait_finished(1, PEER_WAIT), "[{strategy}] the connection did not end\n{}", out.dump());
        assert_eq!(String::from_utf8_lossy(&rec.received()), payload, "[{strategy}]\n{}", out.dump());
    }
}

/// `sendto(b"hello", MSG_FASTOPEN, addr)` on a fresh TCP socket (the kernel's client TFO bit is
/// on by default): the peer sees the slice and receives "hello".
#[test]
fn msg_fastopen_is_placed() {
    if sysctl("net/ipv4/tcp_fastopen").and_then(|v| v.parse::<u32>().ok()).is_some_and(|v| v & 1 == 0) {
        println!("SKIP: net.ipv4.tcp_fastopen has the client bit off");
        return;
    }
    let code = r#"
import socket, sys
s = socket.socket()
print("sent", s.sendto(b"hello", socket.MSG_FASTOPEN, ("127.0.0.1", int(sys.argv[1]))), flush=True)
print("local %s %d" % s.getsockname(), flush=True)
s.close()
"#;
    fast_open_case(code, ("sent", "5"), "hello");
}

/// connect() after setsockopt(IPPROTO_TCP, TCP_FASTOPEN_CONNECT=30, 1): placed as a connect;
/// the data sent next reaches the peer, and the program reads back its own option value.
#[test]
fn tcp_fastopen_connect_is_placed() {
    let code = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.IPPROTO_TCP, 30, 1)
s.connect(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"world")
print("fastopen_connect", s.getsockopt(socket.IPPROTO_TCP, 30), flush=True)
print("local %s %d" % s.getsockname(), flush=True)
s.close()
"#;
    fast_open_case(code, ("fastopen_connect", "1"), "world");
}

// ---------------------------------------------------------------------------------------------
// 7. PORTRANGE_STATS
// ---------------------------------------------------------------------------------------------

/// The parent makes 3 placed connects, then forks a child that makes 1 and exits normally:
/// the stats file holds one JSON line per process, and the child's counters start at 0.
#[test]
fn stats_file_has_one_line_per_process() {
    let code = r#"
import os, socket, sys
port = int(sys.argv[1])
held = []
for i in range(3):
    s = socket.socket()
    s.connect(("127.0.0.1", port))
    held.append(s)
print("parent", os.getpid(), flush=True)
pid = os.fork()
if pid == 0:
    s = socket.socket()
    s.connect(("127.0.0.1", port))
    held.append(s)
    print("child", os.getpid(), flush=True)
    sys.exit(0)
_, st = os.waitpid(pid, 0)
print("child_status", os.waitstatus_to_exitcode(st), flush=True)
"#;
    let rec = Recorder::hold("127.0.0.1");
    let (lo, hi) = slice_ports(10);
    let dir = TempDir::new("stats");
    let stats = dir.path().join("stats.jsonl");
    let out = Run::python(code)
        .arg(rec.port().to_string())
        .slice(&slice_spec(SLICE_IP, lo, hi))
        .env("PORTRANGE_STATS", &stats)
        .run();
    out.assert_success();
    assert_eq!(out.expect_field("child_status"), "0", "{}", out.dump());
    let peers = expect_peers(&rec, 4, "stats", &out);
    expect_in_slice(&peers, SLICE_IP, lo, hi, "stats", &out);

    let text = std::fs::read_to_string(&stats).unwrap_or_else(|e| {
        panic!("PORTRANGE_STATS file {} not written: {e}\n{}", stats.display(), out.dump())
    });
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 2, "expected one JSON line per process (parent, child):\n{text}\n{}", out.dump());
    let pid_of = |key: &str| -> i64 { out.expect_field(key).parse().expect("pid") };
    let line_of = |pid: i64| -> &str {
        let found: Vec<&str> = lines.iter().copied().filter(|l| json_number(l, "pid") == Some(pid)).collect();
        assert_eq!(found.len(), 1, "expected one stats line with \"pid\":{pid}:\n{text}\n{}", out.dump());
        found[0]
    };
    let placed = |line: &str| -> i64 {
        ["placed_tcp_kernel", "placed_tcp_retry"]
            .iter()
            .map(|k| json_number(line, k).unwrap_or_else(|| panic!("no \"{k}\" in stats line {line}")))
            .sum()
    };
    let (parent, child) = (line_of(pid_of("parent")), line_of(pid_of("child")));
    assert_eq!(placed(parent), 3, "parent's placed_tcp_* counters (3 connects): {parent}");
    assert_eq!(
        placed(child),
        1,
        "child's placed_tcp_* counters (1 connect; counters reset at fork): {child}"
    );
}
