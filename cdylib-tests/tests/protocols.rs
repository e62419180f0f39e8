//! Sockets outside the shim's scope are passed through untouched: AF_UNIX, MPTCP, SCTP,
//! UDP-Lite. A protocol the kernel lacks is skipped with a printed note.

use cdylib_tests::*;

#[test]
fn unix_sockets_pass_through() {
    let (lo, hi) = slice_ports(10);
    let code = r#"
import os, socket, tempfile
d = tempfile.mkdtemp()
p = os.path.join(d, "stream")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(p)
srv.listen(1)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(p)
a, _ = srv.accept()
c.sendall(b"ping")
print("stream_server_got", a.recv(4).decode())
a.sendall(b"pong")
print("stream_client_got", c.recv(4).decode())
q = os.path.join(d, "dgram")
ds = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
ds.bind(q)
dc = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
dc.connect(q)
dc.send(b"hello")
print("dgram_got", ds.recv(16).decode())
os.unlink(p)
os.unlink(q)
os.rmdir(d)
"#;
    let out = Run::python(code).slice(&slice_spec(SLICE_IP, lo, hi)).env("PORTRANGE_LOG", "trace").run();
    out.assert_success();
    assert_eq!(out.expect_field("stream_server_got"), "ping", "{}", out.dump());
    assert_eq!(out.expect_field("stream_client_got"), "pong", "{}", out.dump());
    assert_eq!(out.expect_field("dgram_got"), "hello", "{}", out.dump());
    let errs: Vec<&str> =
        out.portrange_lines().into_iter().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    assert!(errs.is_empty(), "AF_UNIX sockets made the shim warn: {errs:?}");
}

/// Python prologue of the protocol scripts: `open_or_skip(typ, proto)` is an AF_INET socket of
/// that protocol; when the kernel lacks it, the script prints `unsupported ERRNO` and exits 0.
const PY_OPEN_OR_SKIP: &str = r#"
import socket, sys
def open_or_skip(typ, proto):
    try:
        return socket.socket(socket.AF_INET, typ, proto)
    except OSError as e:
        print("unsupported", e.errno)
        raise SystemExit(0)
"#;

/// Run `code` (argv: a port; prints `unsupported` when the kernel lacks the protocol) without
/// the shim on `ports[0]`, then with it on `ports[1]`; returns `None` when unsupported, else
/// (baseline, shimmed).
fn compare(code: &str, lo: u16, hi: u16, ports: [u16; 2]) -> Option<(Output, Output)> {
    let base = Run::python(code).arg(ports[0].to_string()).no_preload().run();
    base.assert_success();
    if base.field("unsupported").is_some() {
        println!("NOTE: protocol not supported by this kernel ({}); sub-case skipped", base.stdout.trim());
        return None;
    }
    let out = Run::python(code).arg(ports[1].to_string()).slice(&slice_spec(SLICE_IP, lo, hi)).run();
    out.assert_success();
    Some((base, out))
}

#[test]
fn mptcp_passes_through() {
    let (lo, hi) = slice_ports(10);
    let code = format!(
        "{PY_OPEN_OR_SKIP}{}",
        r#"
s = open_or_skip(socket.SOCK_STREAM, 262)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
    print("connect ok")
    s.sendall(b"ping")
    print("echo", s.recv(4).decode())
except OSError as e:
    print("connect err", e.errno)
"#
    );
    let base_rec = Recorder::echo("127.0.0.1");
    let rec = Recorder::echo("127.0.0.1");
    let Some((base, out)) = compare(&code, lo, hi, [base_rec.port(), rec.port()]) else { return };
    assert_eq!(
        out.stdout,
        base.stdout,
        "MPTCP under the shim behaves differently\n{}\n{}",
        out.dump(),
        base.dump()
    );
    if base.field("connect").is_some_and(|r| r == "ok") {
        let peers = rec.wait_for(1, PEER_WAIT);
        assert_eq!(peers.len(), 1, "{}", out.dump());
        assert_not_in_slice(peers[0], SLICE_IP, lo, hi);
        assert_eq!(peers[0].ip().to_string(), "127.0.0.1", "MPTCP flow was moved by the shim");
    }
}

#[test]
fn sctp_passes_through() {
    let (lo, hi) = slice_ports(10);
    let code = format!(
        "{PY_OPEN_OR_SKIP}{}",
        r#"
port = int(sys.argv[1])
srv = open_or_skip(socket.SOCK_STREAM, 132)
srv.bind(("127.0.0.1", port))
srv.listen(1)
c = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132)
try:
    c.connect(("127.0.0.1", port))
    a, peer = srv.accept()
    print("connect ok")
    print("peer_ip", peer[0])
except OSError as e:
    print("connect err", e.errno)
"#
    );
    let Some((base, out)) = compare(&code, lo, hi, [free_listen_port(), free_listen_port()]) else { return };
    assert_eq!(out.field("connect"), base.field("connect"), "{}\n{}", out.dump(), base.dump());
    assert_eq!(out.field("peer_ip"), Some("127.0.0.1"), "SCTP flow was moved\n{}", out.dump());
}

#[test]
fn udplite_passes_through() {
    let (lo, hi) = slice_ports(10);
    let code = format!(
        "{PY_OPEN_OR_SKIP}{}",
        r#"
port = int(sys.argv[1])
srv = open_or_skip(socket.SOCK_DGRAM, 136)
srv.bind(("127.0.0.1", port))
srv.settimeout(10)
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136)
try:
    c.connect(("127.0.0.1", port))
    c.send(b"hello")
    data, peer = srv.recvfrom(64)
    print("connect ok")
    print("peer", "%s %d" % peer)
except OSError as e:
    print("connect err", e.errno)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136)
try:
    u.sendto(b"hi", ("127.0.0.1", port))
    data, peer = srv.recvfrom(64)
    print("sendto ok")
    print("peer2", "%s %d" % peer)
except OSError as e:
    print("sendto err", e.errno)
"#
    );
    let Some((base, out)) = compare(&code, lo, hi, [free_listen_port(), free_listen_port()]) else { return };
    assert_eq!(out.field("connect"), base.field("connect"), "{}\n{}", out.dump(), base.dump());
    assert_eq!(out.field("sendto"), base.field("sendto"), "{}\n{}", out.dump(), base.dump());
    for key in ["peer", "peer2"] {
        if let Some(p) = out.field(key) {
            let (ip, port) = p.split_once(' ').unwrap();
            let peer = std::net::SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap());
            assert_not_in_slice(peer, SLICE_IP, lo, hi);
            assert_eq!(ip, "127.0.0.1", "UDP-Lite flow was moved\n{}", out.dump());
        }
    }
}
