//! What the program sees through its fd: non-blocking connects, errors, errno on success; and
//! the first promise for slices the kernel cannot honour. Every test runs once per TCP strategy
//! ([`tcp_strategies`]), each run with a fresh slice and fresh recorders.

use cdylib_tests::*;

#[test]
fn nonblocking_connect_is_placed() {
    let code = r#"
import errno, fcntl, select, socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
fd = s.fileno()
s.setblocking(False)
r = s.connect_ex(("127.0.0.1", port))
print("connect_ex", r)
_, w, _ = select.select([], [s], [], 10)
print("writable", len(w))
print("so_error", s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
print("same_fd", int(s.fileno() == fd))
print("nonblock", int(bool(fcntl.fcntl(fd, fcntl.F_GETFL) & __import__("os").O_NONBLOCK)))
print("cloexec", int(bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)))
s.setblocking(True)
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
data = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    data += b
print("reply", data.split(b"\r\n")[0].decode())
"#;
    one_flow_per_strategy(
        Mode::Http,
        |rec| Run::python(code).arg(rec.port().to_string()),
        |out, _, strategy| {
            assert_eq!(
                out.expect_field("connect_ex"),
                EINPROGRESS.to_string(),
                "[{strategy}] non-blocking connect must report EINPROGRESS\n{}",
                out.dump()
            );
            assert_eq!(out.expect_field("writable"), "1", "[{strategy}]\n{}", out.dump());
            assert_eq!(out.expect_field("so_error"), "0", "[{strategy}]\n{}", out.dump());
            assert_eq!(out.expect_field("same_fd"), "1", "[{strategy}]\n{}", out.dump());
            assert_eq!(out.expect_field("nonblock"), "1", "[{strategy}] O_NONBLOCK lost\n{}", out.dump());
            assert_eq!(out.expect_field("cloexec"), "1", "[{strategy}] FD_CLOEXEC lost\n{}", out.dump());
            assert_eq!(out.expect_field("reply"), "HTTP/1.1 200 OK", "[{strategy}]\n{}", out.dump());
        },
    );
}

/// A connect to a closed port fails exactly as without the shim (blocking: ECONNREFUSED;
/// non-blocking: EINPROGRESS then SO_ERROR ECONNREFUSED).
#[test]
fn connection_refused_is_unchanged() {
    let code = r#"
import select, socket, sys
port = int(sys.argv[1])
s = socket.socket()
print("blocking", s.connect_ex(("127.0.0.1", port)))
s = socket.socket()
s.setblocking(False)
print("nonblocking", s.connect_ex(("127.0.0.1", port)))
select.select([], [s], [], 10)
print("so_error", s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
"#;
    for strategy in tcp_strategies() {
        let closed = free_listen_port();
        let (lo, hi) = slice_ports(10);
        let base = Run::python(code).arg(closed.to_string()).no_preload().run();
        base.assert_success();
        let out = Run::python(code)
            .arg(closed.to_string())
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        assert_eq!(base.expect_field("blocking"), ECONNREFUSED.to_string(), "baseline\n{}", base.dump());
        assert_eq!(out.expect_field("blocking"), ECONNREFUSED.to_string(), "[{strategy}]\n{}", out.dump());
        assert_eq!(
            out.expect_field("nonblocking"),
            base.expect_field("nonblocking"),
            "[{strategy}]\n{}\n{}",
            out.dump(),
            base.dump()
        );
        assert_eq!(out.expect_field("so_error"), ECONNREFUSED.to_string(), "[{strategy}]\n{}", out.dump());
    }
}

/// errno is left untouched by a successful connect (checked through ctypes).
#[test]
fn errno_unchanged_on_success() {
    let code = r#"
import ctypes, socket, struct, sys
port = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
s = socket.socket()
sa = struct.pack("=HH4s8x", socket.AF_INET, socket.htons(port), socket.inet_aton("127.0.0.1"))
buf = ctypes.create_string_buffer(sa, len(sa))
ctypes.set_errno(4242)
r = libc.connect(s.fileno(), buf, len(sa))
e = ctypes.get_errno()
print("ret", r)
print("errno", e)
"#;
    one_flow_per_strategy(
        Mode::Hold,
        |rec| Run::python(code).arg(rec.port().to_string()),
        |out, _, strategy| {
            assert_eq!(out.expect_field("ret"), "0", "[{strategy}]\n{}", out.dump());
            assert_eq!(
                out.expect_field("errno"),
                "4242",
                "[{strategy}] errno changed by a successful connect\n{}",
                out.dump()
            );
        },
    );
}

/// A slice outside net.ipv4.ip_local_port_range: the kernel would silently clamp it. Whatever
/// the strategy, a flow must never reach the peer from outside the slice. Checked under `auto`
/// and every TCP strategy ([`tcp_strategies`]): for `kernel` such a slice is a configuration
/// error (every in-scope connect fails with EPERM, nothing reaches the peer); `retry` binds its
/// ports explicitly, which the sysctl does not limit, so every connect succeeds from the slice.
#[test]
fn slice_outside_sysctl_range_never_escapes() {
    let (_, sys_hi) = local_port_range();
    let mut strategies = vec!["auto"];
    for s in tcp_strategies() {
        if !strategies.contains(&s) {
            strategies.push(s);
        }
    }
    for strategy in strategies {
        let (lo, hi) = high_slice_ports(10);
        if lo <= sys_hi {
            println!(
                "SKIP [{strategy}]: net.ipv4.ip_local_port_range reaches {sys_hi}; no room above it for a slice"
            );
            continue;
        }
        let recs = [Recorder::hold("127.0.0.1"), Recorder::hold("127.0.0.3")];
        let out = py_connect_tcp(&[(&recs[0], 2), (&recs[1], 1)])
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        let results = out.connects();
        assert_eq!(results.len(), 3, "[{strategy}]\n{}", out.dump());
        let ok = results.iter().filter(|r| r.result.is_ok()).count();
        for r in &results {
            match r.result {
                Ok(local) => assert!(
                    in_slice(local, SLICE_IP, lo, hi),
                    "[{strategy}] connect to {} succeeded from {local}, outside the slice\n{}",
                    r.dst,
                    out.dump()
                ),
                Err(e) => {
                    assert!(e > 0, "[{strategy}]\n{}", out.dump());
                    println!("[{strategy}] connect to {} failed with errno {e} (allowed for a slice outside the sysctl range)", r.dst);
                }
            }
        }
        match strategy {
            "kernel" => {
                for r in &results {
                    assert_eq!(
                        r.result,
                        Err(EPERM),
                        "[{strategy}] a slice outside the sysctl range is a configuration error for the \
                         kernel strategy: the connect to {} must fail with EPERM ({EPERM})\n{}",
                        r.dst,
                        out.dump()
                    );
                }
            }
            "retry" => assert_eq!(
                ok,
                results.len(),
                "[{strategy}] the retry strategy binds slice ports explicitly (the sysctl does not \
                 limit that): every connect must succeed\n{}",
                out.dump()
            ),
            _ => {}
        }
        let mut seen = 0;
        for rec in &recs {
            for p in rec.settle() {
                seen += 1;
                assert!(
                    in_slice(p, SLICE_IP, lo, hi),
                    "[{strategy}] peer {} saw {p}: a flow escaped the slice {SLICE_IP}:{lo}-{hi}\n{}",
                    rec.addr(),
                    out.dump()
                );
            }
        }
        assert_eq!(
            seen,
            ok,
            "[{strategy}] the program reported {ok} successful connects, the peers saw {seen}\n{}",
            out.dump()
        );
        if ok < results.len() {
            assert!(
                !out.portrange_lines().is_empty(),
                "[{strategy}] connects failed without any log line explaining why\n{}",
                out.dump()
            );
        }
    }
}

/// Options the program set survive the connect, the program's own values of options the shim
/// uses are reported back, and an epoll registration made before connect still fires (nginx
/// registers its upstream socket with EPOLLOUT|EPOLLET before connecting).
#[test]
fn options_and_epoll_survive_connect() {
    let code = r#"
import select, socket, sys
s = socket.socket()
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.setblocking(False)
ep = select.epoll()
ep.register(s.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET)
print("connect_ex", s.connect_ex(("127.0.0.1", int(sys.argv[1]))))
ev = ep.poll(10)
print("epoll_out", int(any(fd == s.fileno() and m & select.EPOLLOUT for fd, m in ev)))
print("so_error", s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
print("nodelay", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
print("keepalive", s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
print("reuseaddr", s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR))
print("bind_address_no_port", s.getsockopt(socket.IPPROTO_IP, 24))
print("local_port_range", s.getsockopt(socket.IPPROTO_IP, 51))
"#;
    one_flow_per_strategy(
        Mode::Hold,
        |rec| Run::python(code).arg(rec.port().to_string()),
        |out, _, strategy| {
            for (key, want) in [
                ("connect_ex", EINPROGRESS.to_string().as_str()),
                ("epoll_out", "1"),
                ("so_error", "0"),
                ("nodelay", "1"),
                ("keepalive", "1"),
                ("reuseaddr", "0"),
                ("bind_address_no_port", "0"),
                ("local_port_range", "0"),
            ] {
                assert_eq!(out.expect_field(key), want, "[{strategy}] {key}\n{}", out.dump());
            }
        },
    );
}

/// The sysctl may change after the program started (the kernel then silently clamps the
/// per-socket range): in a private network namespace the program narrows
/// net.ipv4.ip_local_port_range to exclude the slice, then connects. Each connect must fail or
/// be in the slice, and a connection the kernel made from outside the slice must be torn down
/// at once (the peer may see its handshake, never a flow that continues). Once per TCP strategy,
/// each in a namespace of its own (the program's sysctl change must not leak into the next run).
#[test]
fn sysctl_change_after_start_never_escapes() {
    require_netns!();
    require!("ip");
    let code = r#"
import socket, sys, time
open("/proc/sys/net/ipv4/ip_local_port_range", "w").write("61000 61100")
held = []
for i in range(3):
    s = socket.socket()
    line, ok = tcp_result(s, "127.0.0.1", int(sys.argv[1]))
    print(line, flush=True)
    if ok:
        held.append(s)
time.sleep(3)
"#;
    for strategy in tcp_strategies() {
        in_private_netns(move || {
            sh(&["ip", "link", "set", "lo", "up"]);
            let rec = Recorder::bytes("127.0.0.1");
            let (lo, hi) = slice_ports(10);
            let start = std::time::Instant::now();
            let out = py_tcp_result(code)
                .arg(rec.port().to_string())
                .slice(&slice_spec(SLICE_IP, lo, hi))
                .env("PORTRANGE_STRATEGY", strategy)
                .run();
            out.assert_success();
            for r in out.connects() {
                if let Ok(local) = r.result {
                    assert!(
                        in_slice(local, SLICE_IP, lo, hi),
                        "[{strategy}] connect succeeded from {local}\n{}",
                        out.dump()
                    );
                }
            }
            let ok = out.connects().iter().filter(|r| r.result.is_ok()).count();
            if ok < 3 {
                assert!(
                    !out.portrange_lines().is_empty(),
                    "[{strategy}] connects failed without a log line\n{}",
                    out.dump()
                );
            }
            assert!(
                rec.wait_finished(rec.peers().len(), PEER_WAIT),
                "[{strategy}] connections the peer accepted did not end\n{}",
                out.dump()
            );
            // Every successful connect reached the peer from the address the program sees, and
            // only those reached it from inside the slice.
            let peers = rec.peers();
            for r in out.connects() {
                if let Ok(local) = r.result {
                    assert!(
                        peers.contains(&local),
                        "[{strategy}] the program's {local} is not among the peers {peers:?}\n{}",
                        out.dump()
                    );
                }
            }
            let placed = peers.iter().filter(|p| in_slice(**p, SLICE_IP, lo, hi)).count();
            assert_eq!(
                placed,
                ok,
                "[{strategy}] the program reported {ok} successful connects, the peer saw {placed} from \
                 the slice: {peers:?}\n{}",
                out.dump()
            );
            if strategy == "retry" {
                // The retry strategy binds slice ports explicitly: the kernel never picks a port.
                expect_in_slice(&peers, SLICE_IP, lo, hi, strategy, &out);
            }
            for c in rec.connections() {
                if in_slice(c.peer, SLICE_IP, lo, hi) {
                    continue;
                }
                let ended = c.ended.unwrap_or_else(|| {
                    panic!("[{strategy}] the connection from {} did not end\n{}", c.peer, out.dump())
                });
                // The program holds its sockets for 3 s: a wrong-port connection must end long
                // before that.
                assert!(
                    ended.duration_since(c.accepted) < std::time::Duration::from_millis(1500),
                    "[{strategy}] a connection from {} (outside the slice {SLICE_IP}:{lo}-{hi}) stayed open for {:?} (program ran {:?})\n{}",
                    c.peer,
                    ended.duration_since(c.accepted),
                    start.elapsed(),
                    out.dump()
                );
            }
        });
    }
}
