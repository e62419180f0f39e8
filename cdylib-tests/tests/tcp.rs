//! TCP connect placement, checked on the peer side, for real client programs. Every test runs
//! once per TCP strategy ([`tcp_strategies`]), each run with a fresh slice and fresh recorders.

use cdylib_tests::*;
use std::net::SocketAddr;
use std::time::Duration;

const SLICE_IP: &str = "127.0.0.2";

/// Assert `rec` saw exactly `n` peers, all inside the slice.
#[track_caller]
fn assert_peers_in_slice(
    rec: &Recorder,
    n: usize,
    lo: u16,
    hi: u16,
    ctx: &str,
    out: &Output,
) -> Vec<SocketAddr> {
    let peers = rec.wait_for(n, PEER_WAIT);
    assert_eq!(
        peers.len(),
        n,
        "[{ctx}] recorder {} saw {peers:?}, expected {n} connection(s)\n{}",
        rec.addr(),
        out.dump()
    );
    for p in &peers {
        assert!(
            in_slice(*p, SLICE_IP, lo, hi),
            "[{ctx}] peer saw {p}, outside the slice {SLICE_IP}:{lo}-{hi}\n{}",
            out.dump()
        );
    }
    peers
}

#[test]
fn curl_is_placed() {
    require!("curl");
    for strategy in tcp_strategies() {
        let rec = Recorder::http("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let out = Run::new("curl")
            .args(["-sS", "--max-time", "20", &rec.url()])
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        assert_eq!(out.stdout, HTTP_BODY, "[{strategy}]\n{}", out.dump());
        assert_peers_in_slice(&rec, 1, lo, hi, strategy, &out);
    }
}

#[test]
fn python_urllib_is_placed() {
    let code = r#"
import sys, urllib.request
r = urllib.request.urlopen(sys.argv[1], timeout=20)
print("status", r.status)
print("body", r.read().decode().strip())
"#;
    for strategy in tcp_strategies() {
        let rec = Recorder::http("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let out = Run::python(code)
            .arg(rec.url())
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        assert_eq!(out.expect_field("status"), "200", "[{strategy}]\n{}", out.dump());
        assert_eq!(out.expect_field("body"), "ok", "[{strategy}]\n{}", out.dump());
        assert_peers_in_slice(&rec, 1, lo, hi, strategy, &out);
    }
}

#[test]
fn python_raw_socket_is_placed() {
    let code = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.connect(("127.0.0.1", int(sys.argv[1])))
print("local", "%s %d" % s.getsockname())
s.sendall(b"ping")
print("echo", s.recv(4).decode())
"#;
    for strategy in tcp_strategies() {
        let rec = Recorder::echo("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let out = Run::python(code)
            .arg(rec.port().to_string())
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        assert_eq!(out.expect_field("echo"), "ping", "[{strategy}]\n{}", out.dump());
        let peers = assert_peers_in_slice(&rec, 1, lo, hi, strategy, &out);
        // getsockname() in the program agrees with what the peer saw.
        assert_eq!(
            out.expect_field("local"),
            format!("{} {}", peers[0].ip(), peers[0].port()),
            "[{strategy}]\n{}",
            out.dump()
        );
    }
}

#[test]
fn node_net_connect_is_placed() {
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
    for strategy in tcp_strategies() {
        let rec = Recorder::echo("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let out = Run::node(code)
            .arg(rec.port().to_string())
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        assert_eq!(out.expect_field("echo"), "ping", "[{strategy}]\n{}", out.dump());
        let peers = assert_peers_in_slice(&rec, 1, lo, hi, strategy, &out);
        assert_eq!(
            out.expect_field("local"),
            format!("{} {}", peers[0].ip(), peers[0].port()),
            "[{strategy}]\n{}",
            out.dump()
        );
    }
}

#[test]
fn node_http_get_is_placed() {
    require!("node");
    let code = r#"
const http = require('http');
http.get(process.argv[1], (res) => {
  let body = '';
  res.on('data', (c) => body += c);
  res.on('end', () => { console.log('status ' + res.statusCode); console.log('body ' + body.trim()); });
}).on('error', (e) => { console.log('error ' + e.code); process.exit(3); });
"#;
    for strategy in tcp_strategies() {
        let rec = Recorder::http("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let out = Run::node(code)
            .arg(rec.url())
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        assert_eq!(out.expect_field("status"), "200", "[{strategy}]\n{}", out.dump());
        assert_eq!(out.expect_field("body"), "ok", "[{strategy}]\n{}", out.dump());
        assert_peers_in_slice(&rec, 1, lo, hi, strategy, &out);
    }
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
    require!("java", "javac");
    let classes = compile_java_client();
    for strategy in tcp_strategies() {
        let rec = Recorder::echo("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let out = java_client(&classes)
            .args(["socket", &rec.port().to_string()])
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        assert_eq!(out.expect_field("echo"), "ping", "[{strategy}]\n{}", out.dump());
        assert_peers_in_slice(&rec, 1, lo, hi, strategy, &out);
    }
}

#[test]
fn java_httpclient_is_placed() {
    require!("java", "javac");
    let classes = compile_java_client();
    for strategy in tcp_strategies() {
        let rec = Recorder::http("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let out = java_client(&classes)
            .args(["http", &rec.port().to_string()])
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        assert_eq!(out.expect_field("status"), "200", "[{strategy}]\n{}", out.dump());
        assert_peers_in_slice(&rec, 1, lo, hi, strategy, &out);
    }
}

/// A 10-port slice serves 10 concurrent flows to each of 3 destinations (30 in all, one
/// process); the 11th to one destination fails with EADDRNOTAVAIL.
#[test]
fn ten_port_slice_serves_ten_flows_per_destination() {
    for strategy in tcp_strategies() {
        let recs = [Recorder::hold("127.0.0.1"), Recorder::hold("127.0.0.3"), Recorder::hold("127.0.0.4")];
        let (lo, hi) = slice_ports(10);
        let mut args: Vec<String> = Vec::new();
        for rec in &recs {
            for _ in 0..10 {
                args.extend(["tcp".to_string(), rec.ip(), rec.port().to_string()]);
            }
        }
        args.extend(["tcp".to_string(), recs[0].ip(), recs[0].port().to_string()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out =
            py_connect(&argv).slice(&slice_spec(SLICE_IP, lo, hi)).env("PORTRANGE_STRATEGY", strategy).run();
        out.assert_success();
        let results = out.connects();
        assert_eq!(results.len(), 31, "[{strategy}]\n{}", out.dump());
        for (i, r) in results[..30].iter().enumerate() {
            match r.result {
                Ok(local) => assert!(
                    in_slice(local, SLICE_IP, lo, hi),
                    "[{strategy}] connect #{i} got local {local}, outside the slice\n{}",
                    out.dump()
                ),
                Err(e) => panic!(
                    "[{strategy}] connect #{i} to {} failed with errno {e}; a 10-port slice must serve 10 flows per destination\n{}",
                    r.dst,
                    out.dump()
                ),
            }
        }
        assert_eq!(
            results[30].result,
            Err(EADDRNOTAVAIL),
            "[{strategy}] the 11th connect to {} must fail with EADDRNOTAVAIL ({EADDRNOTAVAIL})\n{}",
            results[30].dst,
            out.dump()
        );
        for rec in &recs {
            let peers = rec.wait_for(10, PEER_WAIT);
            assert_eq!(peers.len(), 10, "[{strategy}] {} saw {peers:?}\n{}", rec.addr(), out.dump());
            let mut ports: Vec<u16> = peers.iter().map(|p| p.port()).collect();
            ports.sort_unstable();
            ports.dedup();
            assert_eq!(ports.len(), 10, "[{strategy}] {} saw duplicate source ports {peers:?}", rec.addr());
            for p in peers {
                assert!(
                    in_slice(p, SLICE_IP, lo, hi),
                    "[{strategy}] peer saw {p}, expected a source inside the slice {SLICE_IP}:{lo}-{hi}\n{}",
                    out.dump()
                );
            }
        }
        // The failed 11th attempt never reached the peer.
        assert_eq!(recs[0].settle().len(), 10, "[{strategy}]\n{}", out.dump());
    }
}

#[test]
fn ipv6_slice_is_placed() {
    for strategy in tcp_strategies() {
        let rec = Recorder::hold("::1");
        let (lo, hi) = slice_ports(10);
        let port = rec.port().to_string();
        let out = py_connect(&["tcp", "::1", &port, "tcp", "::1", &port])
            .slice(&slice_spec("::1", lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        for r in out.connects() {
            assert!(r.result.is_ok(), "[{strategy}] {r:?}\n{}", out.dump());
        }
        let peers = rec.wait_for(2, PEER_WAIT);
        assert_eq!(peers.len(), 2, "[{strategy}] {peers:?}\n{}", out.dump());
        for p in peers {
            assert!(
                in_slice(p, "::1", lo, hi),
                "[{strategy}] peer saw {p}, expected a source inside the slice [::1]:{lo}-{hi}\n{}",
                out.dump()
            );
        }
    }
}

/// An AF_INET6 socket connecting to `::ffff:127.0.0.1` uses the IPv4 slice.
#[test]
fn v4_mapped_destination_uses_v4_slice() {
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
        assert_peers_in_slice(&rec, 1, lo, hi, strategy, &out);
    }
}

/// Several slices: flows are placed in one of them, and only when all are full does the
/// connect fail.
#[test]
fn several_slices_share_the_load() {
    for strategy in tcp_strategies() {
        let rec = Recorder::hold("127.0.0.1");
        let (lo1, hi1) = slice_ports(3);
        let (lo2, hi2) = slice_ports(3);
        let spec = format!("{},{}", slice_spec(SLICE_IP, lo1, hi1), slice_spec("127.0.0.5", lo2, hi2));
        let port = rec.port().to_string();
        let mut args = Vec::new();
        for _ in 0..7 {
            args.extend(["tcp", "127.0.0.1", port.as_str()]);
        }
        let out = py_connect(&args).slice(&spec).env("PORTRANGE_STRATEGY", strategy).run();
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
}
