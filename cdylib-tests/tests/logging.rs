//! Log output goes to the stderr the program had at start, never into a descriptor the program
//! later reuses (a daemon that closes fd 2 and gets a socket there).

use cdylib_tests::*;

/// argv: MODE (close|dup2) SINK_PORT HTTP_PORT REFUSED_PORT BOUND_PORT.
/// Puts a TCP connection to the sink on fd 2, then does things the shim logs about (placed
/// connects, a refused connect, a socket bound to a specific port, UDP traffic) at trace level,
/// writing its own marker lines to fd 2 in between.
const DAEMON: &str = r#"
import os, socket, sys
mode, sink, http, refused, bound = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if mode == "close":
    os.close(2)
    s = socket.create_connection(("127.0.0.1", sink))
    fd = s.fileno()
else:
    s = socket.create_connection(("127.0.0.1", sink))
    os.dup2(s.fileno(), 2)
    fd = 2
print("fd", fd, flush=True)
os.write(2, b"program-line-1\n")
for i in range(4):
    c = socket.socket()
    c.connect(("127.0.0.1", http))
    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    while c.recv(4096):
        pass
    c.close()
os.write(2, b"program-line-2\n")
c = socket.socket()
print("refused", c.connect_ex(("127.0.0.1", refused)), flush=True)
c.close()
b = socket.socket()
b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
b.bind(("127.0.0.1", bound))
print("bound_connect", b.connect_ex(("127.0.0.1", http)), flush=True)
b.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.connect(("127.0.0.1", refused))
    u.send(b"x")
except OSError as e:
    print("udp_err", e.errno, flush=True)
u.close()
c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
print("v6_connect", c.connect_ex(("::1", refused)), flush=True)
c.close()
os.write(2, b"program-line-3\n")
"#;

fn daemon_case(mode: &str) {
    let sink = Recorder::bytes("127.0.0.1");
    let http = Recorder::http("127.0.0.1");
    let (lo, hi) = slice_ports(10);
    let out = Run::python(DAEMON)
        .args([
            mode,
            &sink.port().to_string(),
            &http.port().to_string(),
            &free_listen_port().to_string(),
            &free_listen_port().to_string(),
        ])
        .slice(&slice_spec(SLICE_IP, lo, hi))
        .env("PORTRANGE_LOG", "trace")
        .run();
    out.assert_success();
    assert_eq!(out.expect_field("fd"), "2", "the sink connection did not land on fd 2\n{}", out.dump());
    assert!(sink.wait_finished(1, PEER_WAIT), "the sink connection was not closed\n{}", out.dump());
    let got = String::from_utf8_lossy(&sink.received()).into_owned();
    assert_eq!(
        got,
        "program-line-1\nprogram-line-2\nprogram-line-3\n",
        "[{mode}] the socket on fd 2 received bytes the program did not write (shim log lines?)\n{}",
        out.dump()
    );
    assert!(!got.contains("portrange"));
    // The shim did log (so the test exercised something), to the original stderr.
    assert!(
        !out.portrange_lines().is_empty(),
        "[{mode}] PORTRANGE_LOG=trace produced no log line on the original stderr\n{}",
        out.dump()
    );
    // And the placed flows were placed.
    let peers = http.wait_for(4, PEER_WAIT);
    assert!(peers.len() >= 4, "{peers:?}\n{}", out.dump());
    for p in &peers[..4] {
        assert_in_slice(*p, SLICE_IP, lo, hi);
    }
}

#[test]
fn log_never_goes_into_fd2_reused_after_close() {
    daemon_case("close");
}

#[test]
fn log_never_goes_into_fd2_replaced_by_dup2() {
    daemon_case("dup2");
}

/// Log lines start with `portrange`.
#[test]
fn log_lines_are_prefixed() {
    let rec = Recorder::hold("127.0.0.1");
    let (lo, hi) = slice_ports(10);
    let out = py_connect(&["tcp", "127.0.0.1", &rec.port().to_string()])
        .slice(&slice_spec(SLICE_IP, lo, hi))
        .env("PORTRANGE_LOG", "trace")
        .run();
    out.assert_success();
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(!lines.is_empty(), "PORTRANGE_LOG=trace printed nothing\n{}", out.dump());
    for l in lines {
        assert!(
            l.starts_with("portrange"),
            "stderr line without the `portrange` prefix: {l:?}\n{}",
            out.dump()
        );
    }
    let peers = rec.wait_for(1, PEER_WAIT);
    assert_eq!(peers.len(), 1);
    assert_in_slice(peers[0], SLICE_IP, lo, hi);
}
