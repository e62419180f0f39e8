//! Issue 10 (seed 004): conntrack and the slice. A packet forwarder's flows are SNATed into the
//! slice, so conntrack holds 4-tuples that no socket holds; a socket connected over one of them
//! is silently NATed to another source port, outside the slice. Three network namespaces, made
//! and removed by each test:
//!
//! ```text
//!  forwarder 10.99.0.2 ──veth── client (ip_forward=1; 198.51.100.10/32 on lo; SNAT of
//!                               10.99.0.0/24 → 198.51.100.10:61000-61009) ──veth── server 203.0.113.1:8080
//! ```
//!
//! 5 forwarded TCP flows and 5 forwarded UDP flows hold 5 slice ports each in the client's
//! conntrack table; a program under the shim then opens ≥ 200 flows one after another from the
//! slice, and the server's recorder says where each came from.

use cdylib_tests::*;
use portrange::reserve::{Proto as ReserveProto, Reservation};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const SERVER_PY: &str = include_str!("../py/conntrack_server.py");
const FORWARDER_PY: &str = include_str!("../py/conntrack_forwarder.py");
const CLIENT_PY: &str = include_str!("../py/conntrack_client.py");
const SNAT_NFT: &str = include_str!("../nft/conntrack_snat.nft");

const SLICE_IP: &str = "198.51.100.10";
const SLICE: (u16, u16) = (61000, 61009);
const SERVER_IP: &str = "203.0.113.1";
const SERVER_PORT: u16 = 8080;
/// Flows per protocol the program opens.
const FLOWS: usize = 200;
/// Forwarded flows per protocol holding slice tuples.
const HELD: usize = 5;

fn spec() -> String {
    slice_spec(SLICE_IP, SLICE.0, SLICE.1)
}

// ---------------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------------

/// The three namespaces, deleted on drop.
struct Topology {
    client: String,
    server: String,
    forwarder: String,
}

impl Topology {
    fn new() -> Topology {
        static N: AtomicUsize = AtomicUsize::new(0);
        let tag = format!("prct-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let t = Topology {
            client: format!("{tag}-c"),
            server: format!("{tag}-s"),
            forwarder: format!("{tag}-f"),
        };
        let (c, s, f) = (t.client.as_str(), t.server.as_str(), t.forwarder.as_str());
        for ns in [c, s, f] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&["ip", "-n", c, "link", "add", "vcs", "type", "veth", "peer", "name", "vsc", "netns", s]);
        sh(&["ip", "-n", c, "link", "add", "vcf", "type", "veth", "peer", "name", "vfc", "netns", f]);
        sh(&["ip", "-n", c, "addr", "add", &format!("{SLICE_IP}/32"), "dev", "lo"]);
        sh(&["ip", "-n", c, "addr", "add", "203.0.113.2/24", "dev", "vcs"]);
        sh(&["ip", "-n", c, "addr", "add", "10.99.0.1/24", "dev", "vcf"]);
        sh(&["ip", "-n", s, "addr", "add", &format!("{SERVER_IP}/24"), "dev", "vsc"]);
        sh(&["ip", "-n", f, "addr", "add", "10.99.0.2/24", "dev", "vfc"]);
        for (ns, dev) in [(c, "vcs"), (c, "vcf"), (s, "vsc"), (f, "vfc")] {
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        sh(&["ip", "-n", s, "route", "add", &format!("{SLICE_IP}/32"), "via", "203.0.113.2"]);
        sh(&["ip", "-n", f, "route", "add", "default", "via", "10.99.0.1"]);
        sh(&["ip", "netns", "exec", c, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        nft_load(c, SNAT_NFT);
        t
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server, &self.forwarder] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stdin(Stdio::null()).output();
        }
    }
}

/// `nft -f -` in namespace `ns`.
#[track_caller]
fn nft_load(ns: &str, ruleset: &str) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nft");
    child.stdin.take().unwrap().write_all(ruleset.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft -f failed in {ns}:\n{}\n{ruleset}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A python program in a namespace (no shim), killed with its process group on drop; its
/// stdout lines are collected.
struct Bg {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Bg {
    fn start(ns: &str, code: &'static str, args: Vec<String>) -> Bg {
        let mut child = python_in_netns(ns, code, args);
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap().push(line);
            }
        });
        Bg { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    #[track_caller]
    fn wait_line(&self, line: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.lines().iter().any(|l| l == line) {
            assert!(
                Instant::now() < deadline,
                "{what} never printed {line:?}; it printed {:?}",
                self.lines()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `PROTO IP PORT` lines (what the server saw), after the first `skip` of that protocol.
    fn peers(&self, proto: &str) -> Vec<SocketAddr> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix(proto).and_then(|r| r.strip_prefix(' ')))
            .map(|r| {
                let (ip, port) = r.split_once(' ').unwrap();
                SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap())
            })
            .collect()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        // SAFETY: kill the process group this test created for the child.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// The reproducer's world: namespaces, the server, and the forwarder's held flows.
struct World {
    server: Bg,
    _forwarder: Bg,
    /// Peers the server saw from the forwarder, per protocol.
    forwarded: usize,
    topo: Topology,
}

impl World {
    fn new() -> World {
        let topo = Topology::new();
        let server = Bg::start(&topo.server, SERVER_PY, vec![SERVER_IP.into(), SERVER_PORT.to_string()]);
        server.wait_line("listening", "the server");
        let forwarder = Bg::start(
            &topo.forwarder,
            FORWARDER_PY,
            vec![SERVER_IP.into(), SERVER_PORT.to_string(), HELD.to_string()],
        );
        forwarder.wait_line("ready", "the forwarder");
        let deadline = Instant::now() + PEER_WAIT;
        while (server.peers("tcp").len() < HELD || server.peers("udp").len() < HELD)
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(20));
        }
        for proto in ["tcp", "udp"] {
            let p = server.peers(proto);
            assert_eq!(p.len(), HELD, "the server saw {p:?} from the forwarder ({proto})");
            for peer in &p {
                assert!(
                    in_slice(*peer, SLICE_IP, SLICE.0, SLICE.1),
                    "forwarded {proto} flow from {peer}: no SNAT?"
                );
            }
        }
        World { server, _forwarder: forwarder, forwarded: HELD, topo }
    }

    /// The program under the shim, in the client namespace: `n` flows of `proto`.
    fn client(&self, proto: &str, n: usize, timeout: &str, env: &[(&str, &str)], wrap: &[&str]) -> Output {
        let mut run = if wrap.is_empty() {
            Run::new(python3())
        } else {
            // e.g. capsh --drop=cap_net_admin -- -c '...; exec "$0" "$@"' python3 ...
            Run::new(wrap[0]).args(&wrap[1..]).arg(python3()).no_preload().env("CT_TEST_SO", so_path())
        };
        run = run
            .arg("-c")
            .arg(CLIENT_PY)
            .args([proto, SERVER_IP, &SERVER_PORT.to_string(), &n.to_string(), timeout])
            .slice(&spec())
            .timeout(Duration::from_secs(120));
        for (k, v) in env {
            run = run.env(k, v);
        }
        in_netns(&self.topo.client, move || run.run())
    }

    /// What the server saw of the program's flows (the forwarder's excluded).
    fn program_peers(&self, proto: &str) -> Vec<SocketAddr> {
        self.server.peers(proto).split_off(self.forwarded)
    }
}

fn outside(peers: &[SocketAddr]) -> Vec<SocketAddr> {
    peers.iter().copied().filter(|p| !in_slice(*p, SLICE_IP, SLICE.0, SLICE.1)).collect()
}

fn stats_line(path: &std::path::Path, out: &Output) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 1, "one stats line expected: {lines:?}\n{}", out.dump());
    lines[0].to_string()
}

// ---------------------------------------------------------------------------------------------
// 1. The reproducer: with ctnetlink, no flow leaves from outside the slice
// ---------------------------------------------------------------------------------------------

/// Under 5 held forwarded tuples per protocol, 200 flows of a program under the shim (default
/// settings: `PORTRANGE_CONNTRACK=auto`, `PORTRANGE_STRATEGY=auto`) all reach the server from
/// inside the slice, and the shim met held tuples on the way. (Before issue 10, 113 of 200 TCP
/// flows were NATed out of the slice.)
fn no_flow_leaves_outside_the_slice(proto: &str, mode: &str) {
    let world = World::new();
    let dir = TempDir::new("conntrack");
    let stats = dir.path().join("stats");
    let env = [("PORTRANGE_STATS", stats.to_str().unwrap()), ("PORTRANGE_CONNTRACK", mode)];
    let out = world.client(proto, FLOWS, "5", &env, &[]);
    out.assert_success();
    let results = out.connects();
    assert_eq!(results.len(), FLOWS, "{proto}\n{}", out.dump());
    let failed: Vec<_> = results.iter().filter(|r| r.result.is_err()).collect();
    assert!(failed.is_empty(), "{proto}: failed flows {failed:?}\n{}", out.dump());
    let deadline = Instant::now() + PEER_WAIT;
    while world.program_peers(proto).len() < FLOWS && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let peers = world.program_peers(proto);
    assert_eq!(
        peers.len(),
        FLOWS,
        "{proto}: the server saw {} of the program's flows\n{}",
        peers.len(),
        out.dump()
    );
    let bad = outside(&peers);
    assert!(
        bad.is_empty(),
        "{proto}: {} of {FLOWS} flows reached the server from outside the slice: {bad:?}\n{}",
        bad.len(),
        out.dump()
    );
    let line = stats_line(&stats, &out);
    assert_eq!(json_number(&line, "conntrack_rewrites"), Some(0), "{line}");
    assert!(json_number(&line, "conntrack_held").unwrap_or(0) > 0, "the held tuples were never met: {line}");
    if proto == "tcp" {
        assert!(
            line.contains("\"strategy\":\"retry\""),
            "auto must pick retry with conntrack active: {line}"
        );
    }
    if proto == "tcp" && mode == "auto" {
        // Each of the 5 free ports carries ~40 flows one after the other: every flow is placed
        // on a reservation of its own (a closed flow's stale entry makes way for it), none goes
        // ahead on a stale entry to be verified after (before: 5 reservations in 200 flows).
        let reserved = json_number(&line, "conntrack_reserved").unwrap_or(0);
        assert!(reserved >= FLOWS as i64, "{reserved} reservations for {FLOWS} flows: {line}");
    }
}

#[test]
fn tcp_flows_never_take_a_forwarded_tuple() {
    require!("ip", "nft");
    no_flow_leaves_outside_the_slice("tcp", "auto");
}

/// The same with `PORTRANGE_CONNTRACK=verify`: look-ups before and after the connect, no
/// reservation.
#[test]
fn tcp_flows_never_take_a_forwarded_tuple_verify_only() {
    require!("ip", "nft");
    no_flow_leaves_outside_the_slice("tcp", "verify");
}

#[test]
fn udp_flows_never_take_a_forwarded_tuple() {
    require!("ip", "nft");
    no_flow_leaves_outside_the_slice("udp", "auto");
}

/// `PORTRANGE_STRATEGY=kernel` (chosen explicitly; `auto` picks retry here): the kernel picks
/// the port inside connect(), too late to reserve it, so each flow is verified after its connect
/// and one that conntrack rewrote is aborted and placed again (retry, reserved). Its SYN has left
/// by then, so the server may see the aborted attempt; what it must never see is a request —
/// sent only once connect() returned success — from outside the slice.
#[test]
fn kernel_strategy_never_returns_a_rewritten_flow() {
    require!("ip", "nft");
    let world = World::new();
    // The kernel strategy needs the slice inside the namespace's ephemeral range.
    sh(&[
        "ip",
        "netns",
        "exec",
        &world.topo.client,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_local_port_range=32768 61999",
    ]);
    let dir = TempDir::new("conntrack");
    let stats = dir.path().join("stats");
    let env = [("PORTRANGE_STATS", stats.to_str().unwrap()), ("PORTRANGE_STRATEGY", "kernel")];
    let out = world.client("tcp", FLOWS, "5", &env, &[]);
    out.assert_success();
    let results = out.connects();
    assert_eq!(results.len(), FLOWS, "{}", out.dump());
    let failed: Vec<_> = results.iter().filter(|r| r.result.is_err()).collect();
    assert!(failed.is_empty(), "failed flows {failed:?}\n{}", out.dump());
    let deadline = Instant::now() + PEER_WAIT;
    while world.server.peers("req").len() < FLOWS && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let reqs = world.server.peers("req");
    assert_eq!(reqs.len(), FLOWS, "requests the server saw\n{}", out.dump());
    let bad = outside(&reqs);
    assert!(bad.is_empty(), "{} requests came from outside the slice: {bad:?}\n{}", bad.len(), out.dump());
    let line = stats_line(&stats, &out);
    assert!(line.contains("\"strategy\":\"kernel\""), "{line}");
    assert!(json_number(&line, "conntrack_rewrites").unwrap_or(0) > 0, "no rewrite was caught: {line}");
}

// ---------------------------------------------------------------------------------------------
// 2. Without ctnetlink: `portrange check` says so, and the guard drops what NAT rewrote
// ---------------------------------------------------------------------------------------------

/// A program without CAP_NET_ADMIN (the shim cannot use ctnetlink). The shim is preloaded into
/// that program only (`$CT_TEST_SO`), not into capsh and its shell.
const NO_NET_ADMIN: [&str; 5] =
    ["capsh", "--drop=cap_net_admin", "--", "-c", "export LD_PRELOAD=\"$CT_TEST_SO\"; exec \"$0\" \"$@\""];

/// `portrange` (no shim) in the client namespace, optionally without CAP_NET_ADMIN.
fn portrange_in(world: &World, args: &[&str], drop_cap: bool) -> Output {
    let mut run = if drop_cap {
        Run::new(NO_NET_ADMIN[0]).args(&NO_NET_ADMIN[1..]).arg(bin_path())
    } else {
        Run::new(bin_path())
    };
    run = run.no_preload().args(args).slice(&spec());
    in_netns(&world.topo.client, move || run.run())
}

/// Packets counted by the guard's rules for `proto` in `chain`.
fn guard_count(ns: &str, chain: &str, proto: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "chain", "inet", "portrange_guard", chain])
        .output()
        .expect("nft list chain");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains(&format!(" {proto} sport")))
        .filter_map(|l| l.split("counter packets ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// `portrange check` sees conntrack, the SNAT rule into the slice IP, and what the shim will do
/// with and without CAP_NET_ADMIN. Then, with the guard from `portrange check --nft` loaded and
/// the program under the shim without CAP_NET_ADMIN (ctnetlink refused: the shim warns once and
/// cannot protect its flows), every flow that conntrack rewrote is dropped in postrouting and
/// counted — the server sees nothing from outside the slice — and a program binding a port
/// outside the slice itself is rejected at once by the output rule. (Before issue 10 the printed
/// guard had no postrouting chain and `--nft` did not exist.)
#[test]
fn guard_drops_and_counts_rewritten_flows_without_ctnetlink() {
    require!("ip", "nft", "capsh");
    let world = World::new();
    let c = world.topo.client.clone();

    // What check says, as root and without CAP_NET_ADMIN.
    let root = portrange_in(&world, &["check"], false);
    root.assert_success();
    for want in [
        "conntrack in this namespace    active",
        "snat in ip fwdnat post maps into slice IP 198.51.100.10",
        "reserve+verify",
    ] {
        assert!(root.stdout.contains(want), "check lacks {want:?}:\n{}", root.dump());
    }
    let capless = portrange_in(&world, &["check"], true);
    capless.assert_success();
    for want in ["no CAP_NET_ADMIN", "the shim will use              neither", "portrange plan"] {
        assert!(capless.stdout.contains(want), "check lacks {want:?}:\n{}", capless.dump());
    }
    let json = portrange_in(&world, &["check", "--json"], true);
    let want = "\"conntrack\":{\"requested\":\"auto\",\"active\":true,\"ctnetlink\":\"no CAP_NET_ADMIN\",\"plan\":\"off\",\"nat_rules\":null";
    assert!(json.stdout.contains(want), "check --json lacks {want:?}:\n{}", json.dump());
    let json = portrange_in(&world, &["check", "--json"], false);
    for want in [
        "\"plan\":\"reserve+verify\"",
        "\"kind\":\"snat\",\"chain\":\"ip fwdnat post\",\"into\":\"198.51.100.10\"",
        "\"nft\":\"# portrange guard",
    ] {
        assert!(json.stdout.contains(want), "check --json lacks {want:?}:\n{}", json.dump());
    }

    // The guard, exactly as `check --nft` prints it.
    let nft = portrange_in(&world, &["check", "--nft"], false);
    nft.assert_success();
    assert!(nft.stdout.starts_with("# portrange guard"), "--nft prints only the ruleset:\n{}", nft.dump());
    nft_load(&c, &nft.stdout);

    for proto in ["tcp", "udp"] {
        let n = 30;
        let out = world.client(proto, n, "0.3", &[], &NO_NET_ADMIN);
        out.assert_success();
        let warnings: Vec<&str> =
            out.portrange_lines().into_iter().filter(|l| l.contains("CAP_NET_ADMIN")).collect();
        assert_eq!(warnings.len(), 1, "one warning about ctnetlink expected:\n{}", out.dump());
        let results = out.connects();
        assert_eq!(results.len(), n, "{}", out.dump());
        let failed = results.iter().filter(|r| r.result.is_err()).count();
        thread::sleep(Duration::from_millis(300));
        let peers = world.program_peers(proto);
        let bad = outside(&peers);
        assert!(bad.is_empty(), "{proto}: the guard let {bad:?} through\n{}", out.dump());
        assert_eq!(peers.len(), n - failed, "{proto}: every flow the server saw succeeded\n{}", out.dump());
        assert!(
            failed > 0,
            "{proto}: no flow was rewritten (are the forwarded tuples held?)\n{}",
            out.dump()
        );
        let dropped = guard_count(&c, "postrouting", proto);
        assert!(
            dropped >= failed as u64,
            "{proto}: {failed} flows rewritten, {dropped} packets dropped\n{}",
            out.dump()
        );
    }

    // The output rule: a program's own bind outside the slice is rejected before NAT.
    let own = Run::python(
        "import socket\ns = socket.socket()\ns.bind(('198.51.100.10', 62000))\ns.settimeout(3)\ntry:\n    s.connect(('203.0.113.1', 8080))\n    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)\n",
    )
    .no_preload();
    let out = in_netns(&c, move || own.run());
    assert!(out.stdout.starts_with("refused"), "the output rule did not reject:\n{}", out.dump());
    assert!(guard_count(&c, "output", "tcp") > 0, "output rule never counted");
    assert!(world.server.peers("tcp").iter().all(|p| p.port() != 62000));
}

// ---------------------------------------------------------------------------------------------
// 3. The forwarder's side: a reserved 4-tuple is never taken, and free again once dropped
// ---------------------------------------------------------------------------------------------

const RESERVE_CLIENT_PY: &str = include_str!("../py/reserve_client.py");

/// A forwarder reserves 8 of a 10-port slice's 4-tuples towards a server with
/// `portrange::reserve` (TCP Fast Open sockets that never send). Under each TCP strategy, a
/// program under the shim gets the 2 free ports, then EADDRNOTAVAIL; once the forwarder drops
/// one reservation, the program's next connect gets exactly that port. The server never saw a
/// connection from a reserved port, nor anything from the reservations themselves.
#[test]
fn reserved_tuples_are_never_taken_and_free_again_once_dropped() {
    require!("ip");
    in_private_netns(|| {
        sh(&["ip", "link", "set", "lo", "up"]);
        for strategy in ["kernel", "retry"] {
            let rec = Recorder::hold("127.0.0.1");
            let (lo, hi) = slice_ports(10);
            let ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
            let mut reservations: Vec<Option<Reservation>> = (lo + 2..=hi)
                .map(|p| {
                    Some(Reservation::new(ReserveProto::Tcp, SocketAddr::new(ip, p), rec.addr()).unwrap())
                })
                .collect();
            let dir = TempDir::new("reserve");
            let go = dir.path().join("go");
            let run = Run::python(RESERVE_CLIENT_PY)
                .args([rec.ip(), rec.port().to_string(), "3".into(), go.to_string_lossy().into_owned()])
                .slice(&slice_spec("127.0.0.2", lo, hi))
                .env("PORTRANGE_STRATEGY", strategy);
            let waiting = dir.path().join("go.waiting");
            let client = thread::spawn(move || run.run());
            // The client made its first 3 connects and waits for the go.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !waiting.exists() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let first = rec.wait_for(2, PEER_WAIT);
            let freed = lo + 5;
            reservations[(freed - lo - 2) as usize] = None; // the forwarder drops one reservation
            std::fs::write(&go, b"go").unwrap();
            let out = client.join().unwrap();
            out.assert_success();
            let ctx = format!("{strategy}: {}", out.dump());
            let r = out.connects();
            assert_eq!(r.len(), 4, "{ctx}");
            let mut ports: Vec<u16> = r[..2].iter().map(|c| c.result.expect("connected").port()).collect();
            ports.sort_unstable();
            assert_eq!(ports, [lo, lo + 1], "the free ports first, {ctx}");
            assert_eq!(r[2].result, Err(EADDRNOTAVAIL), "every other tuple is reserved, {ctx}");
            assert_eq!(r[3].result.map(|a| a.port()), Ok(freed), "the dropped reservation's port, {ctx}");
            let peers = rec.wait_for(3, PEER_WAIT);
            assert_eq!(first.len(), 2, "{ctx}");
            let mut seen: Vec<u16> = peers.iter().map(|p| p.port()).collect();
            seen.sort_unstable();
            assert_eq!(seen, [lo, lo + 1, freed], "what the server saw, {ctx}");
            drop(reservations);
        }
    });
}
