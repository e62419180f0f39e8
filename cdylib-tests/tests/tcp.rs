//! TCP connect placement, checked on the peer side, for real client programs. Every test runs
//! once per TCP strategy ([`tcp_strategies`]), each run with a fresh slice and fresh recorders,
//! in a network namespace of its own when run as root ([`isolated`]): the loopback slices lie in
//! the ephemeral range, where another test's binds and TIME_WAITs could hide a port from the
//! kernel strategy (one CI rehearsal saw `several_slices_share_the_load` refused its last port).

use cdylib_tests::*;
use std::net::SocketAddr;
use std::time::Duration;

/// The checks of the HTTP clients that print `status` and `body`.
#[track_caller]
fn expect_http_ok(out: &Output, _peer: SocketAddr, strategy: &str) {
    assert_eq!(out.expect_field("status"), "200", "[{strategy}]\n{}", out.dump());
    assert_eq!(out.expect_field("body"), "ok", "[{strategy}]\n{}", out.dump());
}

/// The check of the echo clients, which send `ping` and print the `echo`.
#[track_caller]
fn expect_echo_ping(out: &Output, _peer: SocketAddr, strategy: &str) {
    assert_eq!(out.expect_field("echo"), "ping", "[{strategy}]\n{}", out.dump());
}

/// The checks of the echo clients that also print `local IP PORT` (their getsockname()): the
/// echo came back, and the program's local address is what the peer saw.
#[track_caller]
fn expect_echo_from_peer(out: &Output, peer: SocketAddr, strategy: &str) {
    expect_echo_ping(out, peer, strategy);
    assert_eq!(
        out.expect_field("local"),
        format!("{} {}", peer.ip(), peer.port()),
        "[{strategy}] the program's getsockname() differs from what the peer saw\n{}",
        out.dump()
    );
}

#[test]
fn curl_is_placed() {
    isolated(|| {
        require!("curl");
        one_flow_per_strategy(
            Mode::Http,
            |rec| Run::new("curl").args(["-sS", "--max-time", "20", &rec.url()]),
            |out, _, strategy| assert_eq!(out.stdout, HTTP_BODY, "[{strategy}]\n{}", out.dump()),
        );
    })
}

#[test]
fn python_urllib_is_placed() {
    isolated(|| {
        let code = r#"
import sys, urllib.request
r = urllib.request.urlopen(sys.argv[1], timeout=20)
print("status", r.status)
print("body", r.read().decode().strip())
"#;
        one_flow_per_strategy(Mode::Http, |rec| Run::python(code).arg(rec.url()), expect_http_ok);
    })
}

#[test]
fn python_raw_socket_is_placed() {
    isolated(|| {
        let code = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.connect(("127.0.0.1", int(sys.argv[1])))
print("local", "%s %d" % s.getsockname())
s.sendall(b"ping")
print("echo", s.recv(4).decode())
"#;
        one_flow_per_strategy(
            Mode::Echo,
            |rec| Run::python(code).arg(rec.port().to_string()),
            expect_echo_from_peer,
        );
    })
}

#[test]
fn node_net_connect_is_placed() {
    isolated(|| {
        require!("node");
        let code = r#"
const net = require('net');
const port = Number(process.argv[1]);
const s = net.connect({ host: '127.0.0.1', port }, () => {
  console.log('local ' + s.localAddress + ' ' + s.localPort);
  s.write('ping');
});
s.on('data', (d) => { console.log('echo ' + d.toString()); s.end(); });
s.on('error', (e) => { console.log('error ' + e.code); process.exit(3); });
"#;
        one_flow_per_strategy(
            Mode::Echo,
            |rec| Run::node(code).arg(rec.port().to_string()),
            expect_echo_from_peer,
        );
    })
}

#[test]
fn node_http_get_is_placed() {
    isolated(|| {
        require!("node");
        let code = r#"
const http = require('http');
http.get(process.argv[1], (res) => {
  let body = '';
  res.on('data', (c) => body += c);
  res.on('end', () => { console.log('status ' + res.statusCode); console.log('body ' + body.trim()); });
}).on('error', (e) => { console.log('error ' + e.code); process.exit(3); });
"#;
        one_flow_per_strategy(Mode::Http, |rec| Run::node(code).arg(rec.url()), expect_http_ok);
    })
}

/// Java's sockets are AF_INET6 (dual stack) and connect to `::ffff:127.0.0.1`.
const JAVA_CLIENT: &str = r#"
import java.io.*;
import java.net.*;
import java.net.http.*;

public class Client {
    public static void main(String[] args) throws Exception {
        String mode = args[0];
        int port = Integer.parseInt(args[1]);
        if (mode.equals("socket")) {
            try (Socket s = new Socket("127.0.0.1", port)) {
                System.out.println("local " + s.getLocalSocketAddress());
                OutputStream o = s.getOutputStream();
                o.write("ping".getBytes());
                o.flush();
                byte[] b = new byte[4];
                new DataInputStream(s.getInputStream()).readFully(b);
                System.out.println("echo " + new String(b));
            }
        } else {
            HttpClient c = HttpClient.newHttpClient();
            HttpRequest req = HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + port + "/")).build();
            HttpResponse<String> r = c.send(req, HttpResponse.BodyHandlers.ofString());
            System.out.println("status " + r.statusCode());
            System.out.println("body " + r.body().trim());
        }
    }
}
"#;

/// Compile [`JAVA_CLIENT`] once (javac, without the shim) into a temp dir, so that the runs of
/// one test (one per strategy) share a single compile.
fn compile_java_client() -> TempDir {
    let dir = TempDir::new("java");
    let src = dir.path().join("Client.java");
    std::fs::write(&src, JAVA_CLIENT).expect("write java source");
    Run::new("javac")
        .arg("-d")
        .arg(dir.path())
        .arg(&src)
        .no_preload()
        .timeout(Duration::from_secs(90))
        .run()
        .assert_success();
    dir
}

/// `java -cp <classes> Client` under the shim (timeout 90 s, as [`Run::java`]).
fn java_client(classes: &TempDir) -> Run {
    Run::new("java").arg("-cp").arg(classes.path()).arg("Client").timeout(Duration::from_secs(90))
}

#[test]
fn java_socket_is_placed() {
    isolated(|| {
        require!("java", "javac");
        let classes = compile_java_client();
        one_flow_per_strategy(
            Mode::Echo,
            |rec| java_client(&classes).args(["socket", &rec.port().to_string()]),
            expect_echo_ping,
        );
    })
}

#[test]
fn java_httpclient_is_placed() {
    isolated(|| {
        require!("java", "javac");
        let classes = compile_java_client();
        one_flow_per_strategy(
            Mode::Http,
            |rec| java_client(&classes).args(["http", &rec.port().to_string()]),
            |out, _, strategy| assert_eq!(out.expect_field("status"), "200", "[{strategy}]\n{}", out.dump()),
        );
    })
}

/// A 10-port slice serves 10 concurrent flows to each of 3 destinations (30 in all, one
/// process); the 11th to one destination fails with EADDRNOTAVAIL.
#[test]
fn ten_port_slice_serves_ten_flows_per_destination() {
    isolated(|| {
        for strategy in tcp_strategies() {
            let recs =
                [Recorder::hold("127.0.0.1"), Recorder::hold("127.0.0.3"), Recorder::hold("127.0.0.4")];
            let (lo, hi) = slice_ports(10);
            let out = py_connect_tcp(&[(&recs[0], 10), (&recs[1], 10), (&recs[2], 10), (&recs[0], 1)])
                .slice(&slice_spec(SLICE_IP, lo, hi))
                .env("PORTRANGE_STRATEGY", strategy)
                .run();
            out.assert_success();
            expect_slice_fills_after(&out, 30, SLICE_IP, lo, hi, strategy);
            // Exactly 10 each (after a settle): the failed 11th attempt never reached the peer.
            for rec in &recs {
                let peers = expect_peers(rec, 10, strategy, &out);
                expect_distinct_ports(&peers, strategy, &out);
                expect_in_slice(&peers, SLICE_IP, lo, hi, strategy, &out);
            }
        }
    })
}

#[test]
fn ipv6_slice_is_placed() {
    isolated(|| {
        for strategy in tcp_strategies() {
            let rec = Recorder::hold("::1");
            let (lo, hi) = slice_ports(10);
            let out = py_connect_tcp(&[(&rec, 2)])
                .slice(&slice_spec("::1", lo, hi))
                .env("PORTRANGE_STRATEGY", strategy)
                .run();
            out.assert_success();
            for r in out.connects() {
                assert!(r.result.is_ok(), "[{strategy}] {r:?}\n{}", out.dump());
            }
            let peers = rec.wait_for(2, PEER_WAIT);
            assert_eq!(peers.len(), 2, "[{strategy}] {peers:?}\n{}", out.dump());
            expect_in_slice(&peers, "::1", lo, hi, strategy, &out);
        }
    })
}

/// An AF_INET6 socket connecting to `::ffff:127.0.0.1` uses the IPv4 slice.
#[test]
fn v4_mapped_destination_uses_v4_slice() {
    isolated(|| {
        for strategy in tcp_strategies() {
            let rec = Recorder::hold("127.0.0.1");
            let (lo, hi) = slice_ports(10);
            let out = py_connect(&["tcp", "::ffff:127.0.0.1", &rec.port().to_string()])
                .slice(&slice_spec(SLICE_IP, lo, hi))
                .env("PORTRANGE_STRATEGY", strategy)
                .run();
            out.assert_success();
            let r = &out.connects()[0];
            let local =
                r.result.unwrap_or_else(|e| panic!("[{strategy}] connect failed, errno {e}\n{}", out.dump()));
            assert!(in_slice(local, SLICE_IP, lo, hi), "[{strategy}] getsockname {local}\n{}", out.dump());
            let peers = rec.wait_for(1, PEER_WAIT);
            assert_eq!(peers.len(), 1, "[{strategy}] {peers:?}\n{}", out.dump());
            expect_in_slice(&peers, SLICE_IP, lo, hi, strategy, &out);
        }
    })
}

/// Several slices: flows are placed in one of them, and only when all are full does the
/// connect fail.
#[test]
fn several_slices_share_the_load() {
    isolated(|| {
        for strategy in tcp_strategies() {
            let rec = Recorder::hold("127.0.0.1");
            let (lo1, hi1) = slice_ports(3);
            let (lo2, hi2) = slice_ports(3);
            let spec = format!("{},{}", slice_spec(SLICE_IP, lo1, hi1), slice_spec("127.0.0.5", lo2, hi2));
            let out = py_connect_tcp(&[(&rec, 7)]).slice(&spec).env("PORTRANGE_STRATEGY", strategy).run();
            out.assert_success();
            let results = out.connects();
            for r in &results[..6] {
                assert!(r.result.is_ok(), "[{strategy}] 6 slots in two slices, yet {r:?}\n{}", out.dump());
            }
            assert_eq!(results[6].result, Err(EADDRNOTAVAIL), "[{strategy}]\n{}", out.dump());
            let peers = rec.wait_for(6, PEER_WAIT);
            assert_eq!(peers.len(), 6, "[{strategy}] {peers:?}\n{}", out.dump());
            for p in peers {
                assert!(
                    in_slice(p, SLICE_IP, lo1, hi1) || in_slice(p, "127.0.0.5", lo2, hi2),
                    "[{strategy}] peer {p} outside both slices {spec}\n{}",
                    out.dump()
                );
            }
        }
    })
}
