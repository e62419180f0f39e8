//! Issue 5, UDP: connected sockets placed with the cookie check (a slice port is shared across
//! destinations, never a 4-tuple), unconnected sockets owning a slice port from their first
//! send, `connect(AF_UNSPEC)` re-placement, reserved ports, the program's own bind, several
//! slices, bad destinations and the program's own SO_REUSEADDR. Every placement is checked on
//! the server side: a [`UdpEcho`] records the source of every datagram as the server saw it and
//! answers `payload|ip:port`, so the client can tell that each reply reached the socket that
//! asked (a unique token per socket and round).

use cdylib_tests::*;
use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// UDP echo recorder
// ---------------------------------------------------------------------------------------------

/// What a [`UdpEcho`] saw: every (source, payload), and a condvar signalled on each datagram.
type Seen = Arc<(Mutex<Vec<(SocketAddr, Vec<u8>)>>, Condvar)>;

/// A UDP server on a fresh listen port that records `(source, payload)` of every datagram and
/// answers `payload|source` (source as `ip:port` or `[ip6]:port`), or, as a DNS responder, an
/// NXDOMAIN answer to the query.
struct UdpEcho {
    addr: SocketAddr,
    seen: Seen,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn echo(ip: &str) -> UdpEcho {
        UdpEcho::start(ip, false)
    }

    fn dns(ip: &str) -> UdpEcho {
        UdpEcho::start(ip, true)
    }

    fn start(ip: &str, dns: bool) -> UdpEcho {
        let ip: IpAddr = ip.parse().unwrap_or_else(|_| panic!("bad server IP {ip}"));
        let mut sock = None;
        for _ in 0..64 {
            match UdpSocket::bind(SocketAddr::new(ip, listen_port())) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) if e.kind() == ErrorKind::AddrInUse => continue,
                Err(e) => panic!("cannot bind a UDP server on {ip}: {e}"),
            }
        }
        let sock = sock.unwrap_or_else(|| panic!("no free UDP listen port on {ip}"));
        let addr = sock.local_addr().expect("local_addr");
        sock.set_read_timeout(Some(Duration::from_millis(20))).expect("read timeout");
        let seen = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, st) = (seen.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name(format!("udp-echo-{addr}"))
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !st.load(Ordering::SeqCst) {
                    let Ok((n, peer)) = sock.recv_from(&mut buf) else { continue };
                    let payload = buf[..n].to_vec();
                    let reply = if dns {
                        dns_nxdomain(&payload).unwrap_or_else(|| payload.clone())
                    } else {
                        let mut r = payload.clone();
                        r.extend_from_slice(format!("|{peer}").as_bytes());
                        r
                    };
                    sh.0.lock().unwrap().push((peer, payload));
                    sh.1.notify_all();
                    let _ = sock.send_to(&reply, peer);
                }
            })
            .expect("spawn udp echo");
        UdpEcho { addr, seen, stop, thread: Some(thread) }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn ip(&self) -> String {
        self.addr.ip().to_string()
    }

    /// `[ip, port]` as script arguments.
    fn hp(&self) -> [String; 2] {
        [self.ip(), self.port().to_string()]
    }

    /// Every datagram so far: (source as the server saw it, payload).
    fn datagrams(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.seen.0.lock().unwrap().clone()
    }

    /// The distinct sources so far, in first-seen order.
    fn sources(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for (p, _) in self.datagrams() {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// Wait until `n` distinct sources were seen (or [`PEER_WAIT`] passed), then give late
    /// datagrams a moment; returns the distinct sources.
    fn wait_sources(&self, n: usize) -> Vec<SocketAddr> {
        let deadline = Instant::now() + PEER_WAIT;
        let mut g = self.seen.0.lock().unwrap();
        loop {
            let distinct: BTreeSet<SocketAddr> = g.iter().map(|(p, _)| *p).collect();
            let now = Instant::now();
            if distinct.len() >= n || now >= deadline {
                break;
            }
            g = self.seen.1.wait_timeout(g, deadline - now).unwrap().0;
        }
        drop(g);
        thread::sleep(Duration::from_millis(100));
        self.sources()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A DNS answer to `q`: same id and question, QR+RA, RCODE NXDOMAIN, no records. `None` if `q`
/// does not look like a query with one question.
fn dns_nxdomain(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 || q[4..6] != [0, 1] {
        return None;
    }
    let mut off = 12;
    loop {
        let len = *q.get(off)? as usize;
        if len == 0 {
            off += 1;
            break;
        }
        if len & 0xc0 != 0 {
            off += 2;
            break;
        }
        off += 1 + len;
    }
    let end = off + 4;
    if end > q.len() {
        return None;
    }
    let mut r = vec![q[0], q[1], 0x80 | (q[2] & 0x79), 0x83, 0, 1, 0, 0, 0, 0, 0, 0];
    r.extend_from_slice(&q[12..end]);
    Some(r)
}

// ---------------------------------------------------------------------------------------------
// The python UDP client
// ---------------------------------------------------------------------------------------------

/// A python3 UDP client. Arguments are triples `HOST PORT COUNT`: COUNT new sockets
/// (AF_INET6 when HOST contains `:`) each connected to HOST:PORT (or, with `--unconnected`,
/// placed by a first `sendto`). Prints one `SOCK <i> <host> <port> ok <local-ip> <local-port>`
/// or `SOCK <i> <host> <port> err <errno>` line per socket (local IP v4-mapped → IPv4), then runs
/// `--rounds` rounds (default 3): every socket sends a token unique to (process, socket, round),
/// then every socket receives one reply, which must be its own token with the source the server
/// saw equal to the socket's getsockname(). Unread datagrams left afterwards count as `extra`.
/// Prints `ok N`, `good N`, `wrong N`, `lost N`, `extra N` (and a `WRONG`/`LOST`/`EXTRA` line
/// per problem).
/// `--bind-any`: each socket is first bound to the wildcard address, port 0 (the program's own
/// `bind(0.0.0.0 / ::, 0)`, which the shim defers to the connect or send).
/// `--barrier DIR`: create `DIR/ready.<pid>`, wait for `DIR/go` (a wall-clock time), spin until
/// then, and only then open the sockets. `--hold DIR N`: after the rounds, create
/// `DIR/done.<pid>` and keep the sockets open until N `done.*` files exist (then drain again).
const PY_UDP: &str = r#"
import os, socket, sys, time
args = sys.argv[1:]
rounds, unconnected, barrier, hold, bind_any = 3, False, None, None, False
while args and args[0].startswith("--"):
    o = args.pop(0)
    if o == "--rounds": rounds = int(args.pop(0))
    elif o == "--unconnected": unconnected = True
    elif o == "--bind-any": bind_any = True
    elif o == "--barrier": barrier = args.pop(0)
    elif o == "--hold": hold = (args.pop(0), int(args.pop(0)))
    else: raise SystemExit("unknown option " + o)
pid = os.getpid()

def wait_until(cond, what, timeout=25):
    end = time.time() + timeout
    while not cond():
        if time.time() > end:
            raise SystemExit("timed out waiting for " + what)
        time.sleep(0.002)

def canon(ip):
    return ip[7:] if ip.startswith("::ffff:") else ip

def fmt(ip, port):
    return ("[%s]:%d" if ":" in ip else "%s:%d") % (ip, port)

if barrier:
    open(os.path.join(barrier, "ready.%d" % pid), "w").close()
    go = os.path.join(barrier, "go")
    wait_until(lambda: os.path.exists(go), go)
    t = float(open(go).read())
    while time.time() < t:
        pass

plan = []
for g in range(0, len(args), 3):
    plan += [(args[g], int(args[g + 1]))] * int(args[g + 2])
tok = lambda i, r: "t%d.%d.%d" % (pid, i, r)
results, socks = [], []
for i, (host, port) in enumerate(plan):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if bind_any:
            s.bind(("::" if ":" in host else "0.0.0.0", 0))
        if unconnected:
            s.sendto(tok(i, 0).encode(), (host, port))
        else:
            s.connect((host, port))
    except OSError as e:
        results.append("%d %s %d err %d" % (i, host, port, e.errno or -1))
        s.close()
        continue
    n = s.getsockname()
    results.append("%d %s %d ok %s %d" % (i, host, port, canon(n[0]), n[1]))
    socks.append((i, s, (host, port), fmt(canon(n[0]), n[1])))
for r in results:
    print("SOCK " + r)
sys.stdout.flush()

counts = dict(good=0, wrong=0, lost=0, extra=0)
def collect(r):
    deadline = time.time() + 5
    for i, s, dst, local in socks:
        s.settimeout(max(0.05, deadline - time.time()))
        try:
            data = s.recv(65536)
        except OSError as e:
            counts["lost"] += 1
            print("LOST %d round %d (%s)" % (i, r, e))
            continue
        t, _, src = data.decode(errors="replace").rpartition("|")
        if t == tok(i, r) and src == local:
            counts["good"] += 1
        else:
            counts["wrong"] += 1
            print("WRONG %d round %d: want %s|%s, got %r" % (i, r, tok(i, r), local, data))

if unconnected:
    collect(0)
for r in range(1, rounds + 1):
    for i, s, dst, local in socks:
        if unconnected:
            s.sendto(tok(i, r).encode(), dst)
        else:
            s.send(tok(i, r).encode())
    collect(r)

def drain():
    time.sleep(0.1)
    for i, s, dst, local in socks:
        s.setblocking(False)
        while True:
            try:
                data = s.recv(65536)
            except (BlockingIOError, ConnectionRefusedError):
                break
            counts["extra"] += 1
            print("EXTRA %d got %r" % (i, data))

drain()
if hold:
    d, n = hold
    open(os.path.join(d, "done.%d" % pid), "w").close()
    wait_until(lambda: len([f for f in os.listdir(d) if f.startswith("done.")]) >= n, "done files")
    drain()
print("ok %d" % len(socks))
for k in ("good", "wrong", "lost", "extra"):
    print("%s %d" % (k, counts[k]))
"#;

/// One `SOCK` line of [`PY_UDP`].
#[derive(Clone, Debug)]
struct SockLine {
    dst: String,
    /// `Ok(local address)` (v4-mapped shown as IPv4) or `Err(errno)`.
    result: Result<SocketAddr, i32>,
}

/// Every flow placed, from the IPv6 slice on `::1` when it went to `::1`, else from the IPv4
/// slice on SLICE_IP (v4-mapped destinations included).
#[track_caller]
fn expect_dual_slices(lines: &[SockLine], v4: (u16, u16), v6: (u16, u16), ctx: &str, out: &Output) {
    for l in lines {
        let local = l.result.unwrap_or_else(|e| panic!("[{ctx}] to {}: errno {e}\n{}", l.dst, out.dump()));
        let (ip, (lo, hi)) = if l.dst.starts_with("::1 ") { ("::1", v6) } else { (SLICE_IP, v4) };
        assert!(
            in_slice(local, ip, lo, hi),
            "[{ctx}] to {}: local {local} outside {ip}:{lo}-{hi}\n{}",
            l.dst,
            out.dump()
        );
    }
}

#[track_caller]
fn sock_lines(out: &Output) -> Vec<SockLine> {
    out.fields("SOCK")
        .into_iter()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let bad = || -> ! { panic!("bad SOCK line {l:?}\n{}", out.dump()) };
            let result = match (w.get(3).copied(), w.len()) {
                (Some("ok"), 6) => Ok(SocketAddr::new(
                    w[4].parse().unwrap_or_else(|_| bad()),
                    w[5].parse().unwrap_or_else(|_| bad()),
                )),
                (Some("err"), 5) => Err(w[4].parse().unwrap_or_else(|_| bad())),
                _ => bad(),
            };
            SockLine { dst: format!("{} {}", w[1], w[2]), result }
        })
        .collect()
}

/// The number on the stdout line `key N`.
#[track_caller]
fn count(out: &Output, key: &str) -> usize {
    out.expect_field(key).parse().unwrap_or_else(|_| panic!("bad `{key}` line\n{}", out.dump()))
}

/// Assert that every reply reached the socket that asked: `good` = `ok` × `rounds` (+1 per
/// socket for the placing send when unconnected), nothing wrong, lost or extra.
#[track_caller]
fn expect_exact_replies(out: &Output, replies_per_socket: usize, ctx: &str) {
    let ok = count(out, "ok");
    for key in ["wrong", "lost", "extra"] {
        assert_eq!(
            count(out, key),
            0,
            "[{ctx}] {key} replies: a reply reached the wrong socket or none\n{}",
            out.dump()
        );
    }
    assert_eq!(count(out, "good"), ok * replies_per_socket, "[{ctx}] good replies\n{}", out.dump());
}

/// The local addresses of the successful SOCK lines and the errnos of the others.
fn split(lines: &[SockLine]) -> (Vec<SocketAddr>, Vec<i32>) {
    let ok = lines.iter().filter_map(|l| l.result.ok()).collect();
    let err = lines.iter().filter_map(|l| l.result.err()).collect();
    (ok, err)
}

fn ports_of(lo: u16, hi: u16) -> BTreeSet<u16> {
    (lo..=hi).collect()
}

fn wait_files(dir: &Path, prefix: &str, n: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let have = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                    .count()
            })
            .unwrap_or(0);
        if have >= n {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Write `DIR/name` atomically (a reader never sees it half written).
fn write_file(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, dir.join(name)).expect("rename temp file");
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// 1. Connected sockets: a slice port shared across destinations, never a 4-tuple
// ---------------------------------------------------------------------------------------------

/// A 10-port slice serves 10 connected sockets to EACH of 3 servers (30 in one process); every
/// socket gets exactly its own replies; the 11th socket to one server gets EAGAIN.
#[test]
fn connected_sockets_share_ports_across_servers() {
    let (lo, hi) = slice_ports(10);
    let servers = [UdpEcho::echo("127.0.0.1"), UdpEcho::echo("127.0.0.3"), UdpEcho::echo("127.0.0.4")];
    let mut args = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        args.extend(s.hp());
        args.push(if i == 0 { "11" } else { "10" }.to_string());
    }
    let out = Run::python(PY_UDP).args(&args).slice(&slice_spec(SLICE_IP, lo, hi)).run();
    out.assert_success();
    let lines = sock_lines(&out);
    assert_eq!(lines.len(), 31, "{}", out.dump());
    for (i, l) in lines.iter().enumerate() {
        if i == 10 {
            assert_eq!(
                l.result,
                Err(EAGAIN),
                "the 11th socket to one server on a 10-port slice must get EAGAIN\n{}",
                out.dump()
            );
        } else {
            let local = l
                .result
                .unwrap_or_else(|e| panic!("socket #{i} to {} failed: errno {e}\n{}", l.dst, out.dump()));
            assert!(
                in_slice(local, SLICE_IP, lo, hi),
                "socket #{i} got {local}, outside the slice\n{}",
                out.dump()
            );
        }
    }
    assert_eq!(count(&out, "ok"), 30, "{}", out.dump());
    expect_exact_replies(&out, 3, "30 connected sockets");
    for s in &servers {
        let src = s.wait_sources(10);
        assert_eq!(src.len(), 10, "server {} saw {src:?}, expected 10 sources\n{}", s.addr, out.dump());
        expect_in_slice(&src, SLICE_IP, lo, hi, "connected", &out);
        let ports = expect_distinct_ports(&src, "connected", &out);
        assert_eq!(
            ports,
            ports_of(lo, hi),
            "server {} did not see every slice port once\n{}",
            s.addr,
            out.dump()
        );
        assert_eq!(s.datagrams().len(), 30, "server {} datagrams\n{}", s.addr, out.dump());
    }
}

/// Two processes on one 20-port slice connect 15 sockets each to the same server at the same
/// moment (a wall-clock start line) and hold them until both are done: exactly 20 succeed,
/// the rest get EAGAIN, no 4-tuple is shared and no reply reaches the wrong socket.
#[test]
fn two_processes_race_for_one_slice() {
    for iteration in 0..3 {
        let ctx = format!("iteration {iteration}");
        let (lo, hi) = slice_ports(20);
        let server = UdpEcho::echo("127.0.0.1");
        let dir = TempDir::new("udp-race");
        let d = dir.path().to_string_lossy().into_owned();
        let spec = slice_spec(SLICE_IP, lo, hi);
        let runs: Vec<JoinHandle<Output>> = (0..2)
            .map(|_| {
                let args =
                    ["--barrier", &d, "--hold", &d, "2", &server.ip(), &server.port().to_string(), "15"]
                        .map(str::to_string);
                let spec = spec.clone();
                thread::spawn(move || {
                    Run::python(PY_UDP).args(args).slice(&spec).timeout(Duration::from_secs(60)).run()
                })
            })
            .collect();
        let ready = wait_files(dir.path(), "ready.", 2, Duration::from_secs(30));
        write_file(dir.path(), "go", &format!("{:.6}", now_secs() + 0.2));
        let outs: Vec<Output> = runs.into_iter().map(|h| h.join().expect("runner thread")).collect();
        let dumps = || outs.iter().map(Output::dump).collect::<Vec<_>>().join("\n");
        assert!(ready, "[{ctx}] the two processes never both reached the barrier\n{}", dumps());
        let mut all_ok = Vec::new();
        for out in &outs {
            out.assert_success();
            let lines = sock_lines(out);
            assert_eq!(lines.len(), 15, "[{ctx}]\n{}", out.dump());
            let (ok, errs) = split(&lines);
            for e in &errs {
                assert_eq!(*e, EAGAIN, "[{ctx}] a failed connect must give EAGAIN\n{}", dumps());
            }
            expect_in_slice(&ok, SLICE_IP, lo, hi, &ctx, out);
            expect_exact_replies(out, 3, &ctx);
            all_ok.extend(ok);
        }
        assert_eq!(all_ok.len(), 20, "[{ctx}] expected exactly 20 of 30 sockets to succeed\n{}", dumps());
        let ports = expect_distinct_ports(&all_ok, &ctx, &outs[0]);
        assert_eq!(ports, ports_of(lo, hi), "[{ctx}]\n{}", dumps());
        let src = server.wait_sources(20);
        assert_eq!(src.len(), 20, "[{ctx}] server saw {src:?}\n{}", dumps());
        expect_in_slice(&src, SLICE_IP, lo, hi, &ctx, &outs[0]);
        expect_distinct_ports(&src, &ctx, &outs[0]);
        println!(
            "[{ctx}] sockets that succeeded per process: {:?}",
            outs.iter().map(|o| count(o, "ok")).collect::<Vec<_>>()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Unconnected sockets own their port
// ---------------------------------------------------------------------------------------------

/// Keeps exchanging datagrams (sendto, recv) from one unconnected socket until `DIR/stop`
/// exists, then 20 more. Writes its local port to `DIR/owner.ready` after the first exchange.
const PY_OWNER: &str = r#"
import os, socket, sys, time
host, port, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
c = dict(good=0, wrong=0, lost=0)
def one(k):
    tok = "owner.%d" % k
    s.sendto(tok.encode(), (host, port))
    try:
        data = s.recv(65536)
    except OSError as e:
        c["lost"] += 1
        print("LOST", k, e, flush=True)
        return
    t, _, src = data.decode(errors="replace").rpartition("|")
    if t == tok and src == "%s:%d" % s.getsockname():
        c["good"] += 1
    else:
        c["wrong"] += 1
        print("WRONG", k, repr(data), flush=True)
try:
    one(0)
except OSError as e:
    print("first err %d" % e.errno, flush=True)
    raise SystemExit(0)
name = s.getsockname()
print("local %s %d" % name, flush=True)
open(os.path.join(d, ".owner"), "w").write("%d" % name[1])
os.rename(os.path.join(d, ".owner"), os.path.join(d, "owner.ready"))
k = 1
deadline = time.time() + 25
while not os.path.exists(os.path.join(d, "stop")) and time.time() < deadline:
    one(k)
    k += 1
    time.sleep(0.002)
for _ in range(20):
    one(k)
    k += 1
print("rounds %d" % k)
for key in ("good", "wrong", "lost"):
    print("%s %d" % (key, c[key]))
print("local_after %s %d" % s.getsockname())
"#;

/// An unconnected socket owns the slice port of its first send: while it keeps talking to a
/// server, another process connects 12 sockets through the same 10-port slice to the same
/// server. It gets 9 (never the owned port, EAGAIN for the rest) and the owner keeps getting
/// every reply.
#[test]
fn owned_port_is_never_taken_by_connected_sockets() {
    let (lo, hi) = slice_ports(10);
    let server = UdpEcho::echo("127.0.0.1");
    let dir = TempDir::new("udp-owner");
    let d = dir.path().to_string_lossy().into_owned();
    let spec = slice_spec(SLICE_IP, lo, hi);
    let owner = {
        let (args, spec) = ([server.ip(), server.port().to_string(), d.clone()], spec.clone());
        thread::spawn(move || {
            Run::python(PY_OWNER).args(args).slice(&spec).timeout(Duration::from_secs(60)).run()
        })
    };
    let started = wait_files(dir.path(), "owner.ready", 1, Duration::from_secs(20));
    if !started {
        write_file(dir.path(), "stop", "");
        panic!("the owner never got its first reply\n{}", owner.join().unwrap().dump());
    }
    let owned: u16 = std::fs::read_to_string(dir.path().join("owner.ready")).unwrap().trim().parse().unwrap();
    let mut args = server.hp().to_vec();
    args.push("12".into());
    let other = Run::python(PY_UDP).args(&args).slice(&spec).run();
    write_file(dir.path(), "stop", "");
    let owner = owner.join().expect("owner thread");
    owner.assert_success();
    other.assert_success();
    let both = || format!("{}\n{}", owner.dump(), other.dump());

    assert!((lo..=hi).contains(&owned), "the owner got port {owned}, outside the slice\n{}", both());
    assert_eq!(owner.expect_field("local"), format!("{SLICE_IP} {owned}"), "{}", both());
    assert_eq!(owner.expect_field("local_after"), format!("{SLICE_IP} {owned}"), "{}", both());
    assert_eq!(count(&owner, "wrong"), 0, "{}", both());
    assert_eq!(count(&owner, "lost"), 0, "the owner lost replies (its port was taken?)\n{}", both());
    assert!(count(&owner, "good") >= 21, "{}", both());

    let (ok, errs) = split(&sock_lines(&other));
    assert_eq!(ok.len() + errs.len(), 12, "{}", both());
    assert!(
        ok.len() < 10,
        "the other process got {} sockets: the owned port was taken\n{}",
        ok.len(),
        both()
    );
    assert_eq!(ok.len(), 9, "the other process should get every slice port but the owned one\n{}", both());
    assert!(errs.iter().all(|e| *e == EAGAIN), "{}", both());
    for a in &ok {
        assert!(in_slice(*a, SLICE_IP, lo, hi), "{a} outside the slice\n{}", both());
        assert_ne!(a.port(), owned, "a connected socket took the owned port {owned}\n{}", both());
    }
    expect_exact_replies(&other, 3, "other process");

    let src = server.wait_sources(10);
    expect_in_slice(&src, SLICE_IP, lo, hi, "server", &other);
    assert_eq!(src.len(), 10, "server saw {src:?}\n{}", both());
    let from_owner =
        server.datagrams().iter().filter(|(p, d)| p.port() == owned && d.starts_with(b"owner.")).count();
    assert_eq!(from_owner, owner.expect_field("rounds").parse::<usize>().unwrap(), "{}", both());
    let foreign_on_owned =
        server.datagrams().iter().filter(|(p, d)| p.port() == owned && !d.starts_with(b"owner.")).count();
    assert_eq!(foreign_on_owned, 0, "another socket sent from the owned port\n{}", both());
}

// ---------------------------------------------------------------------------------------------
// 3. connect(AF_UNSPEC)
// ---------------------------------------------------------------------------------------------

/// Shared python helpers: `xchg(s, tok, dst=None)` (send or sendto, then one reply: `ok`,
/// `lost` or `wrong ...`), `unspec(s)` (ctypes `connect(fd, {AF_UNSPEC}, 16)` → `"ret errno"`),
/// `name(s)` (`"ip port"`, v4-mapped shown as IPv4), `libc`.
const PY_HELPERS: &str = r#"
import ctypes, fcntl, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
UNSPEC = ctypes.create_string_buffer(struct.pack("=H14x", socket.AF_UNSPEC), 16)
def unspec(s):
    ctypes.set_errno(0)
    r = libc.connect(s.fileno(), UNSPEC, 16)
    return "%d %d" % (r, ctypes.get_errno() if r else 0)
def canon(ip):
    return ip[7:] if ip.startswith("::ffff:") else ip
def name(s):
    n = s.getsockname()
    return "%s %d" % (canon(n[0]), n[1])
def src_of(s):
    n = s.getsockname()
    ip = canon(n[0])
    return ("[%s]:%d" if ":" in ip else "%s:%d") % (ip, n[1])
def xchg(s, tok, dst=None, n=1):
    s.settimeout(5)
    if dst is not None:
        s.sendto(tok.encode(), dst)
    else:
        s.send(tok.encode())
    return check(s, [tok] * n)
def check(s, toks):
    s.settimeout(5)
    for tok in toks:
        try:
            data = s.recv(65536)
        except OSError as e:
            return "lost"
        t, _, src = data.decode(errors="replace").rpartition("|")
        want = src_of(s)
        if want.startswith(("0.0.0.0:", "[::]:")):
            # Not bound to an address: the server sees the routed source; compare the port.
            src, want = src.rpartition(":")[2], want.rpartition(":")[2]
        if t != tok or src != want:
            return "wrong %r (want %s|%s)" % (data, tok, src_of(s))
    return "ok"
def cloexec(s):
    return int(bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
"#;

/// connect(AF_UNSPEC) on a placed socket, then connect to another server: placed again, exact
/// replies, same fd (still close-on-exec). After the disconnect the socket is unbound, as
/// without the shim. A disconnected socket's next first send is placed afresh too.
#[test]
fn af_unspec_then_connect_elsewhere_is_placed_again() {
    let code = format!(
        "{PY_HELPERS}{}",
        r#"
h1, p1, h2, p2 = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
fd = s.fileno()
s.connect((h1, p1))
print("first", name(s))
print("xchg1", xchg(s, "a1"))
print("unspec", unspec(s))
print("after_unspec", name(s))
s.connect((h2, p2))
print("second", name(s))
print("xchg2", xchg(s, "a2"))
print("same_fd", int(s.fileno() == fd and os.fstat(fd).st_ino == os.fstat(s.fileno()).st_ino))
print("type", s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE))
print("cloexec", cloexec(s))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect((h1, p1))
print("u_first", name(u))
print("u_xchg1", xchg(u, "b1"))
print("u_unspec", unspec(u))
print("u_xchg2", xchg(u, "b2", (h2, p2)))
print("u_second", name(u))
"#
    );
    let bases = [UdpEcho::echo("127.0.0.1"), UdpEcho::echo("127.0.0.3")];
    let base = Run::python(&code).args(bases[0].hp()).args(bases[1].hp()).no_preload().run();
    base.assert_success();

    let (lo, hi) = slice_ports(10);
    let servers = [UdpEcho::echo("127.0.0.1"), UdpEcho::echo("127.0.0.3")];
    let out = Run::python(&code)
        .args(servers[0].hp())
        .args(servers[1].hp())
        .slice(&slice_spec(SLICE_IP, lo, hi))
        .run();
    out.assert_success();
    let local = |key: &str| out.expect_addr(key);
    for key in ["first", "second", "u_first", "u_second"] {
        assert!(
            in_slice(local(key), SLICE_IP, lo, hi),
            "{key}: {} outside the slice\n{}",
            local(key),
            out.dump()
        );
    }
    for key in ["xchg1", "xchg2", "u_xchg1", "u_xchg2"] {
        assert_eq!(out.expect_field(key), "ok", "{key}\n{}", out.dump());
    }
    // after_unspec: the slice address stays until the next flow (README: what the shim changes).
    assert!(in_slice(local("after_unspec"), SLICE_IP, lo, hi), "{}", out.dump());
    for key in ["unspec", "u_unspec", "same_fd", "type", "cloexec"] {
        assert_eq!(
            out.field(key),
            base.field(key),
            "{key} differs from the run without the shim\n{}\n{}",
            out.dump(),
            base.dump()
        );
    }
    assert_eq!(out.expect_field("unspec"), "0 0", "{}", out.dump());
    assert_eq!(out.expect_field("same_fd"), "1", "{}", out.dump());
    for (i, s) in servers.iter().enumerate() {
        // Two sockets per server. Server 0: `u` connects after `s` disconnected, so it may reuse
        // the freed 4-tuple (one or two distinct sources). Server 1: `s` is still connected to it
        // when `u` sends, so the two must differ.
        let want = if i == 0 && local("first") == local("u_first") { 1 } else { 2 };
        let src = s.wait_sources(want);
        assert_eq!(src.len(), want, "server {i} saw {src:?}\n{}", out.dump());
        expect_in_slice(&src, SLICE_IP, lo, hi, &format!("server {i}"), &out);
    }
    assert!(servers[1].sources().contains(&local("second")), "{}", out.dump());
    assert!(servers[1].sources().contains(&local("u_second")), "{}", out.dump());
}

/// With a one-port slice: after connect(AF_UNSPEC) the disconnected socket keeps its socket and
/// port (datagrams already queued stay readable: issue 9 case 4) until its next connect or send,
/// which is placed afresh; meanwhile another socket's first send cannot own that port (EAGAIN).
#[test]
fn af_unspec_keeps_the_socket_until_its_next_flow() {
    let (lo, hi) = slice_ports(1);
    let servers = [UdpEcho::echo("127.0.0.1"), UdpEcho::echo("127.0.0.3")];
    let code = format!(
        "{PY_HELPERS}{}",
        r#"
h1, p1, h2, p2 = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((h1, p1))
print("s_first", name(s))
print("s_xchg1", xchg(s, "s1"))
print("unspec", unspec(s))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    print("u_xchg", xchg(u, "u1", (h2, p2)))
    print("u_local", name(u))
except OSError as e:
    print("u_xchg err %s" % e.errno)
try:
    s.connect((h1, p1))
    print("s_again ok", name(s))
except OSError as e:
    print("s_again err %d" % e.errno)
u.close()
try:
    s.connect((h1, p1))
    print("s_after_close ok", name(s))
    print("s_xchg2", xchg(s, "s2"))
except OSError as e:
    print("s_after_close err %d" % e.errno)
"#
    );
    let out = Run::python(&code)
        .args(servers[0].hp())
        .args(servers[1].hp())
        .slice(&slice_spec(SLICE_IP, lo, hi))
        .run();
    out.assert_success();
    let one = format!("{SLICE_IP} {lo}");
    assert_eq!(out.expect_field("s_first"), one, "{}", out.dump());
    assert_eq!(out.expect_field("s_xchg1"), "ok", "{}", out.dump());
    assert_eq!(out.expect_field("unspec"), "0 0", "{}", out.dump());
    // EAGAIN from sendto; python's socket timeout turns it into a wait, then a timeout (errno None).
    let u = out.expect_field("u_xchg");
    assert!(
        u == format!("err {EAGAIN}") || u == "err None",
        "the disconnected socket still holds the only slice port: a first send elsewhere cannot own it\n{}",
        out.dump()
    );
    assert_eq!(
        out.expect_field("s_again"),
        format!("ok {one}"),
        "the disconnected socket's next connect is placed afresh\n{}",
        out.dump()
    );
    assert_eq!(out.expect_field("s_after_close"), format!("ok {one}"), "{}", out.dump());
    assert_eq!(out.expect_field("s_xchg2"), "ok", "{}", out.dump());
    let s1 = servers[0].wait_sources(1);
    assert_eq!(s1.len(), 1, "{s1:?}\n{}", out.dump());
    expect_in_slice(&s1, SLICE_IP, lo, hi, "server 1", &out);
    assert_eq!(servers[0].datagrams().len(), 2, "{}", out.dump());
    assert!(servers[1].sources().is_empty(), "{}", out.dump());
}

// ---------------------------------------------------------------------------------------------
// 4. First sends: python and real programs
// ---------------------------------------------------------------------------------------------

/// The first send on an unbound socket places it whichever call makes it: sendto, sendmsg and
/// sendmmsg (through ctypes, two messages in one call). The socket owns its port (SO_REUSEADDR
/// stays 0 in the kernel) and keeps it for later sends.
#[test]
fn first_sendto_sendmsg_sendmmsg_are_placed() {
    let (lo, hi) = slice_ports(10);
    let server = UdpEcho::echo("127.0.0.1");
    let code = format!(
        "{PY_HELPERS}{}",
        r#"
host, port = sys.argv[1], int(sys.argv[2])
dst = (host, port)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
def sendmmsg(s, toks):
    sa = struct.pack("=HH4s8x", socket.AF_INET, socket.htons(port), socket.inet_aton(host))
    nm = ctypes.create_string_buffer(sa, len(sa))
    bufs = [ctypes.create_string_buffer(t.encode(), len(t)) for t in toks]
    iovs = (iovec * len(toks))(*[iovec(ctypes.cast(b, ctypes.c_void_p), len(t)) for b, t in zip(bufs, toks)])
    msgs = (mmsghdr * len(toks))()
    for k in range(len(toks)):
        msgs[k].hdr.name = ctypes.cast(nm, ctypes.c_void_p)
        msgs[k].hdr.namelen = len(sa)
        msgs[k].hdr.iov = ctypes.pointer(iovs[k])
        msgs[k].hdr.iovlen = 1
    ctypes.set_errno(0)
    r = libc.sendmmsg(s.fileno(), ctypes.cast(msgs, ctypes.c_void_p), len(toks), 0)
    if r < 0:
        raise OSError(ctypes.get_errno(), "sendmmsg")
    return r
reuse = lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
a.sendto(b"sendto.1", dst)
print("sendto_local", name(a))
print("sendto_reply", check(a, ["sendto.1"]))
print("sendto_again", xchg(a, "sendto.2", dst))
print("sendto_reuse", reuse(a))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
b.sendmsg([b"sendmsg.1"], [], 0, dst)
print("sendmsg_local", name(b))
print("sendmsg_reply", check(b, ["sendmsg.1"]))
print("sendmsg_reuse", reuse(b))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("sendmmsg_ret", sendmmsg(c, ["sendmmsg.1", "sendmmsg.2"]))
print("sendmmsg_local", name(c))
print("sendmmsg_reply", check(c, ["sendmmsg.1", "sendmmsg.2"]))
print("sendmmsg_reuse", reuse(c))
"#
    );
    let out = Run::python(&code).args(server.hp()).slice(&slice_spec(SLICE_IP, lo, hi)).run();
    out.assert_success();
    let mut locals = Vec::new();
    for call in ["sendto", "sendmsg", "sendmmsg"] {
        let a = out.expect_addr(&format!("{call}_local"));
        assert!(in_slice(a, SLICE_IP, lo, hi), "{call}: placed at {a}, outside the slice\n{}", out.dump());
        assert_eq!(out.expect_field(&format!("{call}_reply")), "ok", "{call}\n{}", out.dump());
        assert_eq!(out.expect_field(&format!("{call}_reuse")), "0", "{call}\n{}", out.dump());
        locals.push(a);
    }
    assert_eq!(out.expect_field("sendto_again"), "ok", "{}", out.dump());
    assert_eq!(out.expect_field("sendmmsg_ret"), "2", "{}", out.dump());
    expect_distinct_ports(&locals, "owned ports", &out);
    let src = server.wait_sources(3);
    assert_eq!(src.len(), 3, "server saw {src:?}\n{}", out.dump());
    expect_in_slice(&src, SLICE_IP, lo, hi, "first sends", &out);
    assert_eq!(
        src.iter().copied().collect::<BTreeSet<_>>(),
        locals.iter().copied().collect(),
        "{}",
        out.dump()
    );
    assert_eq!(server.datagrams().len(), 5, "{}", out.dump());
}

/// Unconnected sockets may be placed by a first send to a destination the skip list covers (the
/// socket can talk to anyone from its port), while a connect to it is left alone. Without a
/// slice of the family, the first send is left alone.
#[test]
fn first_send_ignores_the_skip_list_but_needs_a_slice_family() {
    let (lo, hi) = slice_ports(10);
    let server = UdpEcho::echo("127.0.0.1");
    let code = format!(
        "{PY_HELPERS}{}",
        r#"
dst = (sys.argv[1], int(sys.argv[2]))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("u_xchg", xchg(u, "u", dst))
print("u_local", name(u))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.connect(dst)
print("c_xchg", xchg(c, "c"))
print("c_local", name(c))
"#
    );
    let out = Run::python(&code)
        .args(server.hp())
        .slice(&slice_spec(SLICE_IP, lo, hi))
        .env("PORTRANGE_SKIP", "127.0.0.1/32")
        .run();
    out.assert_success();
    assert_eq!(out.expect_field("u_xchg"), "ok", "{}", out.dump());
    assert_eq!(out.expect_field("c_xchg"), "ok", "{}", out.dump());
    let src = server.wait_sources(2);
    assert_eq!(src.len(), 2, "{src:?}\n{}", out.dump());
    let u = out.expect_addr("u_local");
    assert!(src.contains(&u), "server never saw the unconnected socket {u}: {src:?}\n{}", out.dump());
    assert!(
        in_slice(u, SLICE_IP, lo, hi),
        "first send to a skipped destination left from {u}\n{}",
        out.dump()
    );
    let c: Vec<SocketAddr> = src.iter().copied().filter(|p| *p != u).collect();
    assert_not_in_slice(c[0], SLICE_IP, lo, hi);
    assert_eq!(
        c[0].ip().to_string(),
        "127.0.0.1",
        "connect to a skipped destination was moved\n{}",
        out.dump()
    );

    // Only an IPv6 slice: an IPv4 first send is left alone.
    let server4 = UdpEcho::echo("127.0.0.1");
    let (lo6, hi6) = slice_ports(10);
    let out = Run::python(&code).args(server4.hp()).slice(&slice_spec("::1", lo6, hi6)).run();
    out.assert_success();
    assert_eq!(out.expect_field("u_xchg"), "ok", "{}", out.dump());
    let src = server4.wait_sources(2);
    assert_eq!(src.len(), 2, "{src:?}\n{}", out.dump());
    for p in &src {
        assert_eq!(p.ip().to_string(), "127.0.0.1", "no IPv4 slice, yet the flow was moved\n{}", out.dump());
    }
}

/// dig (BIND 9: bind(0.0.0.0, 0) with SO_REUSEPORT, connect, sendmmsg) against a tiny DNS
/// responder: the query comes from the slice and dig gets its NXDOMAIN answer.
#[test]
fn dig_query_is_placed() {
    require!("dig");
    let (lo, hi) = slice_ports(10);
    let server = UdpEcho::dns("127.0.0.1");
    let out = Run::new("dig")
        .args(["@127.0.0.1", "-p", &server.port().to_string(), "example.test", "+tries=1", "+time=2"])
        .slice(&slice_spec(SLICE_IP, lo, hi))
        .run();
    out.assert_success();
    assert!(out.stdout.contains("status: NXDOMAIN"), "dig got no answer\n{}", out.dump());
    let src = server.wait_sources(1);
    assert_eq!(src.len(), 1, "{src:?}\n{}", out.dump());
    expect_in_slice(&src, SLICE_IP, lo, hi, "dig", &out);
}

/// socat: `UDP:` connects, `UDP-SENDTO:` sends unconnected; both leave from the slice and get
/// their reply.
#[test]
fn socat_is_placed() {
    require!("socat");
    for (i, addr) in ["UDP", "UDP-SENDTO"].into_iter().enumerate() {
        let (lo, hi) = slice_ports(10);
        let server = UdpEcho::echo("127.0.0.1");
        let tok = format!("socat-{i}");
        let out = Run::new("sh")
            .args(["-c", "printf %s \"$1\" | socat -t 2 - \"$2\"", "sh", &tok])
            .arg(format!("{addr}:127.0.0.1:{}", server.port()))
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .run();
        out.assert_success();
        let src = server.wait_sources(1);
        assert_eq!(src.len(), 1, "[{addr}] {src:?}\n{}", out.dump());
        expect_in_slice(&src, SLICE_IP, lo, hi, addr, &out);
        assert_eq!(out.stdout, format!("{tok}|{}", src[0]), "[{addr}] socat's reply\n{}", out.dump());
    }
}

// ---------------------------------------------------------------------------------------------
// 5. IPv6 and v4-mapped
// ---------------------------------------------------------------------------------------------

/// An IPv6 slice on ::1 with a server on [::1], and an IPv4 slice used by AF_INET6 sockets
/// talking to `::ffff:127.0.0.1` (and by plain AF_INET sockets), in one process: connected and
/// unconnected sockets each leave from the slice of their destination's family.
#[test]
fn ipv6_and_v4_mapped_sockets_are_placed() {
    for unconnected in [false, true] {
        let ctx = if unconnected { "unconnected" } else { "connected" };
        let (lo4, hi4) = slice_ports(10);
        let (lo6, hi6) = slice_ports(10);
        let s6 = UdpEcho::echo("::1");
        let s4 = UdpEcho::echo("127.0.0.1");
        let mut args: Vec<String> = Vec::new();
        if unconnected {
            args.push("--unconnected".into());
        }
        args.extend(["::1".into(), s6.port().to_string(), "3".into()]);
        args.extend(["::ffff:127.0.0.1".into(), s4.port().to_string(), "3".into()]);
        args.extend(["127.0.0.1".into(), s4.port().to_string(), "2".into()]);
        let spec = format!("{},{}", slice_spec(SLICE_IP, lo4, hi4), slice_spec("::1", lo6, hi6));
        let out = Run::python(PY_UDP).args(&args).slice(&spec).run();
        out.assert_success();
        let lines = sock_lines(&out);
        assert_eq!(lines.len(), 8, "[{ctx}]\n{}", out.dump());
        expect_dual_slices(&lines, (lo4, hi4), (lo6, hi6), ctx, &out);
        expect_exact_replies(&out, if unconnected { 4 } else { 3 }, ctx);
        let src6 = s6.wait_sources(3);
        assert_eq!(src6.len(), 3, "[{ctx}] {src6:?}\n{}", out.dump());
        expect_in_slice(&src6, "::1", lo6, hi6, ctx, &out);
        expect_distinct_ports(&src6, ctx, &out);
        let src4 = s4.wait_sources(5);
        assert_eq!(src4.len(), 5, "[{ctx}] {src4:?}\n{}", out.dump());
        expect_in_slice(&src4, SLICE_IP, lo4, hi4, ctx, &out);
        for p in &src4 {
            assert!(p.is_ipv4(), "[{ctx}] the v4 server saw {p}");
        }
        expect_distinct_ports(&src4, ctx, &out);
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Reserved ports
// ---------------------------------------------------------------------------------------------

/// In a private network namespace, 3 ports of a 10-port slice are in
/// net.ipv4.ip_local_reserved_ports: 7 connected sockets succeed, the 8th gets EAGAIN; the same
/// for unconnected first sends; no flow ever leaves from a reserved port.
#[test]
fn reserved_ports_are_never_used() {
    require_netns!();
    in_private_netns(|| {
        sh(&["ip", "link", "set", "lo", "up"]);
        let (lo, hi) = slice_ports(10);
        let reserved = [lo + 1, lo + 4, lo + 8];
        let list = reserved.map(|p| p.to_string()).join(",");
        sh(&["sysctl", "-q", "-w", &format!("net.ipv4.ip_local_reserved_ports={list}")]);
        assert_eq!(sysctl("net/ipv4/ip_local_reserved_ports").as_deref(), Some(list.as_str()));
        let free: BTreeSet<u16> = ports_of(lo, hi).into_iter().filter(|p| !reserved.contains(p)).collect();
        for unconnected in [false, true] {
            let ctx = if unconnected { "unconnected" } else { "connected" };
            let server = UdpEcho::echo("127.0.0.1");
            let mut args: Vec<String> = Vec::new();
            if unconnected {
                args.push("--unconnected".into());
            }
            args.extend(server.hp());
            args.push("8".into());
            let out = Run::python(PY_UDP).args(&args).slice(&slice_spec(SLICE_IP, lo, hi)).run();
            out.assert_success();
            let lines = sock_lines(&out);
            assert_eq!(lines.len(), 8, "[{ctx}]\n{}", out.dump());
            let (ok, errs) = split(&lines);
            assert_eq!(errs, vec![EAGAIN], "[{ctx}] the 8th socket must get EAGAIN\n{}", out.dump());
            assert!(lines[7].result.is_err(), "[{ctx}]\n{}", out.dump());
            let ports = expect_distinct_ports(&ok, ctx, &out);
            assert_eq!(ports, free, "[{ctx}] reserved ports {reserved:?} used?\n{}", out.dump());
            expect_exact_replies(&out, if unconnected { 4 } else { 3 }, ctx);
            let src = server.wait_sources(7);
            assert_eq!(src.len(), 7, "[{ctx}] {src:?}\n{}", out.dump());
            expect_in_slice(&src, SLICE_IP, lo, hi, ctx, &out);
            for p in &src {
                assert!(
                    !reserved.contains(&p.port()),
                    "[{ctx}] the server saw reserved port {p}\n{}",
                    out.dump()
                );
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 7. The program's own bind, several slices
// ---------------------------------------------------------------------------------------------

/// bind(0.0.0.0, 0) is deferred: the following first send or connect is placed. bind(SLICE_IP,
/// 0) gets an owned slice port at once (getsockname shows it), and the socket keeps it for its
/// sends and its connect. bind(non-slice IP, 0) is the program's choice: left alone.
#[test]
fn program_binds_then_sends_or_connects() {
    let (lo, hi) = slice_ports(10);
    let server = UdpEcho::echo("127.0.0.1");
    let code = format!(
        "{PY_HELPERS}{}",
        r#"
dst = (sys.argv[1], int(sys.argv[2]))
slice_ip = sys.argv[3]
held = []
def sock(at):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(at)
    held.append(s)
    return s
s = sock(("0.0.0.0", 0))
print("wild_send", xchg(s, "wild_send", dst), name(s))
s = sock(("0.0.0.0", 0))
s.connect(dst)
print("wild_connect", xchg(s, "wild_connect"), name(s))
s = sock((slice_ip, 0))
print("slice_bound", name(s))
print("slice_send", xchg(s, "slice_send", dst), name(s))
s = sock((slice_ip, 0))
print("slice_bound2", name(s))
s.connect(dst)
print("slice_connect", xchg(s, "slice_connect"), name(s))
s = sock(("127.0.0.1", 0))
print("other_send", xchg(s, "other_send", dst), name(s))
"#
    );
    let out = Run::python(&code).args(server.hp()).arg(SLICE_IP).slice(&slice_spec(SLICE_IP, lo, hi)).run();
    out.assert_success();
    let field = |key: &str| -> (String, SocketAddr) {
        let v = out.expect_field(key);
        let w: Vec<&str> = v.split_whitespace().collect();
        let bad = || -> ! { panic!("bad `{key}` line {v:?}\n{}", out.dump()) };
        if w.len() != 3 {
            bad()
        }
        let a =
            SocketAddr::new(w[1].parse().unwrap_or_else(|_| bad()), w[2].parse().unwrap_or_else(|_| bad()));
        (w[0].to_string(), a)
    };
    let mut placed = Vec::new();
    for key in ["wild_send", "wild_connect", "slice_send", "slice_connect"] {
        let (r, local) = field(key);
        assert_eq!(r, "ok", "{key}\n{}", out.dump());
        assert!(
            in_slice(local, SLICE_IP, lo, hi),
            "{key}: left from {local}, outside the slice\n{}",
            out.dump()
        );
        placed.push(local);
    }
    for (bound, used) in [("slice_bound", "slice_send"), ("slice_bound2", "slice_connect")] {
        let b = out.expect_addr(bound);
        assert!(in_slice(b, SLICE_IP, lo, hi), "bind({SLICE_IP}, 0) gave {b}\n{}", out.dump());
        assert_eq!(b, field(used).1, "{used} did not keep the port bind() gave\n{}", out.dump());
    }
    expect_distinct_ports(&placed, "owned and placed ports", &out);
    let (r, other) = field("other_send");
    assert_eq!(r, "ok", "{}", out.dump());
    assert_not_in_slice(other, SLICE_IP, lo, hi);
    let src = server.wait_sources(5);
    assert_eq!(src.len(), 5, "{src:?}\n{}", out.dump());
    for p in &placed {
        assert!(src.contains(p), "the server never saw {p}: {src:?}\n{}", out.dump());
    }
    assert!(src.contains(&other), "{src:?}\n{}", out.dump());
}

/// Two slices of 2 ports: 4 connected sockets to one server (two from each slice IP), the 5th
/// gets EAGAIN; an unconnected first send then finds no free port either (EAGAIN).
#[test]
fn several_slices_are_tried_before_eagain() {
    let (lo, hi) = slice_ports(2);
    let server = UdpEcho::echo("127.0.0.1");
    let other = UdpEcho::echo("127.0.0.3");
    let spec = format!("{},{}", slice_spec("127.0.0.2", lo, hi), slice_spec("127.0.0.5", lo, hi));
    let mut args = server.hp().to_vec();
    args.push("5".into());
    let out = Run::python(PY_UDP).args(&args).slice(&spec).run();
    out.assert_success();
    let lines = sock_lines(&out);
    let (ok, errs) = split(&lines);
    assert_eq!(errs, vec![EAGAIN], "the 5th socket must get EAGAIN\n{}", out.dump());
    assert!(lines[4].result.is_err(), "{}", out.dump());
    for a in &ok {
        assert!(
            in_slice(*a, "127.0.0.2", lo, hi) || in_slice(*a, "127.0.0.5", lo, hi),
            "{a} outside both slices\n{}",
            out.dump()
        );
    }
    assert_eq!(ok.iter().copied().collect::<BTreeSet<_>>().len(), 4, "{}", out.dump());
    expect_exact_replies(&out, 3, "two slices");
    let src = server.wait_sources(4);
    assert_eq!(src.iter().copied().collect::<BTreeSet<_>>(), ok.iter().copied().collect(), "{}", out.dump());

    // The same sockets held, plus first sends to another server: the connected sockets hold every
    // port (shared ports are not free to own), so every first send fails.
    let code = r#"
import socket, sys
h, p, h2, p2 = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
held = []
for i in range(4):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((h, p))
    held.append(s)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"x", (h2, p2))
    print("first_send ok %s %d" % u.getsockname())
except OSError as e:
    print("first_send err %d" % e.errno)
"#;
    let out = Run::python(code).args(server.hp()).args(other.hp()).slice(&spec).run();
    out.assert_success();
    assert_eq!(out.expect_field("first_send"), format!("err {EAGAIN}"), "{}", out.dump());
    assert!(other.wait_sources(0).is_empty(), "{}", out.dump());
}

// ---------------------------------------------------------------------------------------------
// 8. Bad destinations, the program's SO_REUSEADDR
// ---------------------------------------------------------------------------------------------

/// sendto port 0, connect to port 0 and connect(AF_UNSPEC) on a never-placed socket behave as
/// without the shim; a socket whose first send failed (port 0) still leaves from the slice on
/// its next send.
#[test]
fn bad_destinations_behave_as_without_the_shim() {
    let code = format!(
        "{PY_HELPERS}{}",
        r#"
dst = (sys.argv[1], int(sys.argv[2]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"x", (dst[0], 0))
    print("sendto0 ok")
except OSError as e:
    print("sendto0 err %d" % e.errno)
print("then", xchg(s, "after-port-0", dst))
print("then_local", name(s))
f = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("unspec_fresh", unspec(f))
f6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
print("unspec_fresh6", unspec(f6))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    c.connect((dst[0], 0))
    print("connect0 ok")
except OSError as e:
    print("connect0 err %d" % e.errno)
"#
    );
    let base_server = UdpEcho::echo("127.0.0.1");
    let base = Run::python(&code).args(base_server.hp()).no_preload().run();
    base.assert_success();
    let (lo, hi) = slice_ports(10);
    let server = UdpEcho::echo("127.0.0.1");
    let out = Run::python(&code).args(server.hp()).slice(&slice_spec(SLICE_IP, lo, hi)).run();
    out.assert_success();
    for key in ["sendto0", "unspec_fresh", "unspec_fresh6", "connect0", "then"] {
        assert_eq!(
            out.field(key),
            base.field(key),
            "{key} differs from the run without the shim\n{}\n{}",
            out.dump(),
            base.dump()
        );
    }
    assert_eq!(out.expect_field("sendto0"), format!("err {}", libc::EINVAL), "{}", out.dump());
    assert_eq!(out.expect_field("unspec_fresh"), "0 0", "{}", out.dump());
    assert_eq!(out.expect_field("then"), "ok", "{}", out.dump());
    let src = server.wait_sources(1);
    assert_eq!(src.len(), 1, "{src:?}\n{}", out.dump());
    expect_in_slice(&src, SLICE_IP, lo, hi, "send after a failed first send", &out);
}

/// getsockopt(SO_REUSEADDR) reports the program's own value: 0 on a placed connected socket
/// (the shim keeps 1 in the kernel), 1 if the program set it before connect; the same for
/// sockets placed by a first send.
#[test]
fn so_reuseaddr_reports_the_programs_value() {
    let code = format!(
        "{PY_HELPERS}{}",
        r#"
dst = (sys.argv[1], int(sys.argv[2]))
reuse = lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
def sock(v):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if v is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, v)
    return s
held = []
for label, v in (("default", None), ("set1", 1), ("set0", 0)):
    s = sock(v)
    held.append(s)
    s.connect(dst)
    print("connected_%s %d %s %s" % (label, reuse(s), xchg(s, "c" + label), name(s)))
    u = sock(v)
    held.append(u)
    r = xchg(u, "u" + label, dst)
    print("unconnected_%s %d %s %s" % (label, reuse(u), r, name(u)))
"#
    );
    let base_server = UdpEcho::echo("127.0.0.1");
    let base = Run::python(&code).args(base_server.hp()).no_preload().run();
    base.assert_success();
    let (lo, hi) = slice_ports(10);
    let server = UdpEcho::echo("127.0.0.1");
    let out = Run::python(&code).args(server.hp()).slice(&slice_spec(SLICE_IP, lo, hi)).run();
    out.assert_success();
    for kind in ["connected", "unconnected"] {
        for (label, want) in [("default", "0"), ("set1", "1"), ("set0", "0")] {
            let key = format!("{kind}_{label}");
            let w: Vec<&str> = out.expect_field(&key).split_whitespace().collect();
            let b: Vec<&str> = base.expect_field(&key).split_whitespace().collect();
            assert_eq!(w[0], want, "{key}: getsockopt(SO_REUSEADDR)\n{}", out.dump());
            assert_eq!(w[0], b[0], "{key}: differs from the run without the shim\n{}", base.dump());
            assert_eq!(w[1], "ok", "{key}\n{}", out.dump());
            let local = SocketAddr::new(w[2].parse().unwrap(), w[3].parse().unwrap());
            assert!(in_slice(local, SLICE_IP, lo, hi), "{key}: {local} outside the slice\n{}", out.dump());
        }
    }
    let src = server.wait_sources(6);
    assert_eq!(src.len(), 6, "{src:?}\n{}", out.dump());
    expect_in_slice(&src, SLICE_IP, lo, hi, "SO_REUSEADDR", &out);
}

/// A placed socket connects to another server *without* disconnecting first (UDP allows it).
/// Its port is shared, so the new 4-tuple must be checked like a first connect: on a 2-port
/// slice where the other port already talks to server 2, the re-connect takes the free 4-tuple
/// or fails with EAGAIN — it never duplicates a 4-tuple, and the holder keeps its replies.
#[test]
fn reconnect_without_disconnect_is_checked_again() {
    let code = format!(
        "{PY_HELPERS}{}",
        r#"
h1, p1, h2, p2 = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
holder.connect((h2, p2))
print("holder", name(holder))
movers = []
for i in range(2):
    m = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    m.connect((h1, p1))
    print("before%d" % i, name(m))
    fd = m.fileno()
    try:
        m.connect((h2, p2))
        print("after%d" % i, name(m))
        print("xchg%d" % i, xchg(m, "m%d" % i))
    except OSError as e:
        print("after%d" % i, "errno", e.errno)
    print("same_fd%d" % i, int(m.fileno() == fd))
    movers.append(m)
print("holder_xchg", xchg(holder, "h"))
"#
    );
    let (lo, hi) = slice_ports(2);
    let servers = [UdpEcho::echo("127.0.0.1"), UdpEcho::echo("127.0.0.3")];
    let out = Run::python(&code)
        .args(servers[0].hp())
        .args(servers[1].hp())
        .slice(&slice_spec(SLICE_IP, lo, hi))
        .run();
    out.assert_success();
    let holder = out.expect_addr("holder");
    // The holder's 4-tuple towards server 2 is never taken over: its reply comes back to it.
    assert_eq!(out.expect_field("holder_xchg"), "ok", "{}", out.dump());
    let mut moved = Vec::new();
    for i in 0..2 {
        assert_eq!(out.expect_field(&format!("same_fd{i}")), "1", "{}", out.dump());
        match out.expect_field(&format!("after{i}")) {
            a if a.starts_with("errno") => assert_eq!(a, format!("errno {EAGAIN}"), "{}", out.dump()),
            _ => {
                let a = out.expect_addr(&format!("after{i}"));
                assert!(in_slice(a, SLICE_IP, lo, hi), "{a} outside the slice\n{}", out.dump());
                assert_ne!(a, holder, "re-connect duplicated the holder's 4-tuple\n{}", out.dump());
                assert_eq!(out.expect_field(&format!("xchg{i}")), "ok", "{}", out.dump());
                moved.push(a);
            }
        }
    }
    // Only one free 4-tuple towards server 2 remains: exactly one mover gets it.
    assert_eq!(moved.len(), 1, "{}", out.dump());
    // What server 2 saw: the holder and the one mover, from distinct slice ports.
    let seen: BTreeSet<u16> = servers[1].wait_sources(2).iter().map(|s| s.port()).collect();
    assert_eq!(seen, ports_of(lo, hi), "{}", out.dump());
}

// ---------------------------------------------------------------------------------------------
// 9. Exclusive first (issue 11): no look-up while the slice has free ports
// ---------------------------------------------------------------------------------------------

/// The sum of counter `key` over the stats lines (one per process) in `path`.
fn stat_total(path: &Path, key: &str) -> i64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty(), "no stats line in {}", path.display());
    lines.iter().map(|l| json_number(l, key).unwrap_or_else(|| panic!("no `{key}` counter in {l}"))).sum()
}

/// Which sockets (`t<pid>.<i>`, from the tokens) each source address sent from, per server: a
/// source used by two sockets is a shared 4-tuple (one of them gets the other's replies).
fn sockets_by_source(server: &UdpEcho) -> std::collections::BTreeMap<SocketAddr, BTreeSet<String>> {
    let mut by = std::collections::BTreeMap::<SocketAddr, BTreeSet<String>>::new();
    for (src, payload) in server.datagrams() {
        let tok = String::from_utf8_lossy(&payload).into_owned();
        let sock = tok.rsplit_once('.').map_or(tok.clone(), |(s, _)| s.to_string());
        by.entry(src).or_default().insert(sock);
    }
    by
}

/// Issue 11: on a slice with free ports a UDP connect takes a port no other socket holds (an
/// exclusive bind: SO_REUSEADDR off, so the bind itself proves nobody else has the port) and
/// needs no sock_diag look-up at all — IPv4, IPv6 and v4-mapped sockets, with and without the
/// program's own `bind(wildcard, 0)` first. Every reply reaches the socket that asked. (Before:
/// two look-ups per connect.)
#[test]
fn a_free_slice_needs_no_lookup() {
    require_netns!();
    in_private_netns(|| {
        sh(&["ip", "link", "set", "lo", "up"]);
        let (lo4, hi4) = slice_ports(512);
        let (lo6, hi6) = slice_ports(512);
        let spec = format!("{},{}", slice_spec(SLICE_IP, lo4, hi4), slice_spec("::1", lo6, hi6));
        for bind_any in [false, true] {
            let ctx = if bind_any { "bind(wildcard, 0) first" } else { "socket, connect" };
            let s4 = UdpEcho::echo("127.0.0.1");
            let s6 = UdpEcho::echo("::1");
            let dir = TempDir::new("udp-free");
            let stats = dir.path().join("stats");
            let mut args: Vec<String> = Vec::new();
            if bind_any {
                args.push("--bind-any".into());
            }
            args.extend(["127.0.0.1".into(), s4.port().to_string(), "10".into()]);
            args.extend(["::ffff:127.0.0.1".into(), s4.port().to_string(), "10".into()]);
            args.extend(["::1".into(), s6.port().to_string(), "10".into()]);
            let out = Run::python(PY_UDP).args(&args).slice(&spec).env("PORTRANGE_STATS", &stats).run();
            out.assert_success();
            let lines = sock_lines(&out);
            assert_eq!(lines.len(), 30, "[{ctx}]\n{}", out.dump());
            expect_dual_slices(&lines, (lo4, hi4), (lo6, hi6), ctx, &out);
            expect_exact_replies(&out, 3, ctx);
            let src4 = s4.wait_sources(20);
            assert_eq!(src4.len(), 20, "[{ctx}] {src4:?}\n{}", out.dump());
            expect_distinct_ports(&src4, ctx, &out);
            expect_in_slice(&src4, SLICE_IP, lo4, hi4, ctx, &out);
            let src6 = s6.wait_sources(10);
            assert_eq!(src6.len(), 10, "[{ctx}] {src6:?}\n{}", out.dump());
            expect_in_slice(&src6, "::1", lo6, hi6, ctx, &out);
            assert_eq!(stat_total(&stats, "placed_udp"), 30, "[{ctx}]\n{}", out.dump());
            assert_eq!(stat_total(&stats, "lookups"), 0, "[{ctx}] sock_diag look-ups\n{}", out.dump());
            assert_eq!(stat_total(&stats, "udp_checked"), 0, "[{ctx}] cookie checks\n{}", out.dump());
        }
    });
}

/// Issue 11: three processes share a 16-port slice towards two servers at the same moment (12
/// connected sockets per server, all held until every process is done: 24 sockets on 16 ports,
/// so at least 8 must share a port with a socket of another peer). The first connects take
/// ports nobody holds (exclusive binds, no look-up); as the slice fills, exclusive binds find
/// ports held and the connects go on to the cookie check. Whichever way each was placed, no
/// source address ever carries two sockets' datagrams to one server (a shared 4-tuple), and
/// every reply reaches the socket that asked. IPv4, v4-mapped, and the program's own
/// `bind(wildcard, 0)` first, one process each; then all three on an IPv6 slice. (Before:
/// every connect made two look-ups.)
#[test]
fn exclusive_and_checked_connects_never_share_a_4_tuple() {
    require_netns!();
    in_private_netns(|| {
        sh(&["ip", "link", "set", "lo", "up"]);
        for iteration in 0..4 {
            // The last round on an IPv6 slice (servers on two ports of ::1).
            let v6 = iteration == 3;
            let ctx = format!("iteration {iteration}{}", if v6 { ", IPv6" } else { "" });
            let (lo, hi) = slice_ports(16);
            let slice_ip = if v6 { "::1" } else { SLICE_IP };
            let spec = slice_spec(slice_ip, lo, hi);
            let (a, b) = if v6 {
                (UdpEcho::echo("::1"), UdpEcho::echo("::1"))
            } else {
                (UdpEcho::echo("127.0.0.1"), UdpEcho::echo("127.0.0.3"))
            };
            let dir = TempDir::new("udp-share");
            let d = dir.path().to_string_lossy().into_owned();
            let stats = dir.path().join("stats");
            let runs: Vec<JoinHandle<Output>> = (0..3)
                .map(|k| {
                    let mut args: Vec<String> =
                        ["--barrier", &d, "--hold", &d, "3"].map(str::to_string).to_vec();
                    if k == 2 {
                        args.push("--bind-any".into());
                    }
                    let host = |ip: &str| match (v6, k) {
                        (true, _) => "::1".to_string(),
                        (false, 1) => format!("::ffff:{ip}"),
                        _ => ip.to_string(),
                    };
                    for _ in 0..2 {
                        args.extend([host("127.0.0.1"), a.port().to_string(), "2".into()]);
                        args.extend([host("127.0.0.3"), b.port().to_string(), "2".into()]);
                    }
                    let (spec, stats) = (spec.clone(), stats.clone());
                    thread::spawn(move || {
                        Run::python(PY_UDP)
                            .args(args)
                            .slice(&spec)
                            .env("PORTRANGE_STATS", &stats)
                            .timeout(Duration::from_secs(60))
                            .run()
                    })
                })
                .collect();
            let ready = wait_files(dir.path(), "ready.", 3, Duration::from_secs(30));
            write_file(dir.path(), "go", &format!("{:.6}", now_secs() + 0.2));
            let outs: Vec<Output> = runs.into_iter().map(|h| h.join().expect("runner thread")).collect();
            let dumps = || outs.iter().map(Output::dump).collect::<Vec<_>>().join("\n");
            assert!(ready, "[{ctx}] the processes never all reached the barrier\n{}", dumps());
            let mut placed = 0;
            for out in &outs {
                out.assert_success();
                let lines = sock_lines(out);
                assert_eq!(lines.len(), 8, "[{ctx}]\n{}", out.dump());
                let (ok, errs) = split(&lines);
                // 12 sockets per server on 16 ports: a connect finds a port unless, at that
                // moment, the others are all in another placement's exclusive or locked window.
                assert!(errs.iter().all(|e| *e == EAGAIN), "[{ctx}] errnos {errs:?}\n{}", dumps());
                expect_in_slice(&ok, slice_ip, lo, hi, &ctx, out);
                expect_exact_replies(out, 3, &ctx);
                placed += ok.len();
            }
            assert!(placed >= 22, "[{ctx}] only {placed} of 24 placed\n{}", dumps());
            for server in [&a, &b] {
                let by = sockets_by_source(server);
                for (src, socks) in &by {
                    assert_eq!(
                        socks.len(),
                        1,
                        "[{ctx}] server {} saw sockets {socks:?} all from {src}: a shared 4-tuple\n{}",
                        server.addr,
                        dumps()
                    );
                }
                let srcs: Vec<SocketAddr> = by.keys().copied().collect();
                expect_in_slice(&srcs, slice_ip, lo, hi, &ctx, &outs[0]);
            }
            let (lookups, checked) = (stat_total(&stats, "lookups"), stat_total(&stats, "udp_checked"));
            let placed_udp = stat_total(&stats, "placed_udp");
            assert_eq!(placed_udp, placed as i64, "[{ctx}]\n{}", dumps());
            assert!(checked >= 1, "[{ctx}] 24 sockets on 16 ports, yet no cookie check\n{}", dumps());
            // Some placements took an exclusive port (no look-up). Counted directly: the number
            // of look-ups grows with contention (one CI run: 51 for 24 placements, 11-13 of them
            // exclusive), so a bound on it was a flaky proxy.
            assert!(
                checked < placed_udp,
                "[{ctx}] {checked} of {placed_udp} placements needed the cookie check: none placed exclusively\n{}",
                dumps()
            );
            println!("[{ctx}] placed {placed}, cookie checks {checked}, look-ups {lookups}");
        }
    });
}

/// Issue 11: the program's own SO_REUSEPORT is off while the shim binds: the program holds the
/// slice's only port itself (SO_REUSEPORT, connected to the server), and a second socket with
/// SO_REUSEPORT (no SO_REUSEADDR anywhere in the process) connecting to the same server gets
/// EAGAIN — an SO_REUSEPORT bind would have succeeded over the holder, duplicated its 4-tuple
/// and stolen its replies. (SO_REUSEPORT passes the setsockopt hook straight through; the
/// placement must still learn that the program set it.)
#[test]
fn a_programs_so_reuseport_never_shares_a_held_port() {
    let (lo, _) = slice_ports(1);
    let server = UdpEcho::echo("127.0.0.1");
    let out = Run::python(include_str!("../py/udp_reuseport.py"))
        .args([SLICE_IP.to_string(), lo.to_string(), server.ip(), server.port().to_string()])
        .slice(&slice_spec(SLICE_IP, lo, lo))
        .run();
    out.assert_success();
    assert_eq!(out.field("a"), Some("err 11"), "the slice's only port is held\n{}", out.dump());
    assert_eq!(out.field("h"), Some("good"), "the holder's reply went elsewhere\n{}", out.dump());
}

// ---------------------------------------------------------------------------------------------
// 10. Known from birth (issue 11): no look at a socket nothing touched
// ---------------------------------------------------------------------------------------------

/// Not a slice IP: a program's own choice, left alone.
const OTHER_IP: &str = "127.0.0.5";

/// The `CASE` lines of `c/udp_birth.c`: name → (ret, errno, local, same socket).
fn birth_cases(out: &Output) -> std::collections::BTreeMap<String, (i32, i32, SocketAddr, bool)> {
    out.fields("CASE")
        .into_iter()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let local = SocketAddr::new(w[3].parse().unwrap(), w[4].parse().unwrap());
            (w[0].to_string(), (w[1].parse().unwrap(), w[2].parse().unwrap(), local, w[5] == "1"))
        })
        .collect()
}

/// A UDP socket born here is taken as unbound at its connect (no getsockname); each way a
/// program can touch it first comes out as a look would make it: a bind through syscall() or
/// through a dup is the program's (left alone, never swapped), a port the kernel gave it for a
/// failed write() is not (placed), a connect through syscall() left it bound to a non-slice
/// address (left alone). The server saw each flow from the address the program reports.
#[test]
fn udp_sockets_touched_after_birth_come_out_as_with_a_look() {
    let Some(exe) = compile_c("udp_birth", include_str!("../c/udp_birth.c")) else { return };
    let server = UdpEcho::echo("127.0.0.1");
    let (lo, hi) = slice_ports(8);
    let out = Run::new(&exe)
        .args(["127.0.0.1".to_string(), server.port().to_string(), OTHER_IP.to_string()])
        .slice(&slice_spec(SLICE_IP, lo, hi))
        .run();
    out.assert_success();
    let got = birth_cases(&out);
    let ctx = |name: &str| format!("case {name}\n{}", out.dump());
    assert_eq!(got.len(), 7, "{}", ctx("count"));
    for (name, (ret, errno, local, same)) in &got {
        assert_eq!((*ret, *errno), (0, 0), "{}", ctx(name));
        match name.as_str() {
            "fresh" | "v6fresh" | "firstsend" => {
                assert!(in_slice(*local, SLICE_IP, lo, hi), "{}", ctx(name));
                assert!(same, "taken as unbound, yet swapped: {}", ctx(name));
            }
            "write" => {
                assert!(in_slice(*local, SLICE_IP, lo, hi), "the kernel's port is placed: {}", ctx(name))
            }
            "sysbind" | "dupbind" => {
                assert_eq!(
                    local.ip().to_string(),
                    OTHER_IP,
                    "the program's bind is left alone: {}",
                    ctx(name)
                );
                assert!(same, "the program's socket was swapped: {}", ctx(name));
            }
            "sysconnect" => {
                assert!(!in_slice(*local, SLICE_IP, lo, hi), "connected behind the hooks: {}", ctx(name));
                assert!(same, "{}", ctx(name));
            }
            _ => panic!("unexpected {}", ctx(name)),
        }
    }
    server.wait_sources(7);
    for (src, payload) in server.datagrams() {
        let name = String::from_utf8_lossy(&payload).into_owned();
        let want = got.get(&name).map(|c| c.2);
        assert_eq!(Some(src), want, "the server saw {name} from {src}\n{}", out.dump());
    }
    assert_eq!(server.datagrams().len(), 7, "{}", out.dump());
}

/// The point of the birth record: between socket() and the connect that places it, the shim
/// asks the kernel nothing about a UDP socket it saw born (no getsockname, no SO_PROTOCOL, no
/// sock_diag socket on a free slice): the placement's own bind is the first syscall on it.
#[test]
fn a_udp_socket_born_here_is_placed_without_a_look() {
    require!("strace");
    let Some(exe) = compile_c("udp_birth", include_str!("../c/udp_birth.c")) else { return };
    let server = UdpEcho::echo("127.0.0.1");
    let (lo, hi) = slice_ports(8);
    let tmp = TempDir::new("udp-birth-strace");
    let log = tmp.path().join("strace");
    let out = Run::new("strace")
        .args(["-f", "-e", "trace=socket,getsockopt,getsockname,setsockopt,bind,connect", "-o"])
        .arg(&log)
        .arg(&exe)
        .args(["127.0.0.1".to_string(), server.port().to_string(), OTHER_IP.to_string()])
        .slice(&slice_spec(SLICE_IP, lo, hi))
        .run();
    out.assert_success();
    let (ret, _, local, _) = birth_cases(&out).remove("fresh").expect("case fresh");
    assert!(ret == 0 && in_slice(local, SLICE_IP, lo, hi), "{}", out.dump());
    let trace = std::fs::read_to_string(&log).unwrap();
    let to_peer = format!("sin_port=htons({})", server.port());
    // The program's first socket is the last one made before its first connect to the server
    // (start-up sockets of the shim, if any, come earlier).
    let first_connect = trace
        .lines()
        .scan(0, |at, l| {
            let here = *at;
            *at += l.len() + 1;
            Some((here, l))
        })
        .find(|(_, l)| l.contains("connect(") && l.contains(&to_peer))
        .map(|(at, _)| at)
        .expect("the program's connect in the trace");
    let start = trace[..first_connect].rfind("socket(AF_INET, SOCK_DGRAM").expect("the program's socket()");
    let before: String = trace[start..]
        .lines()
        .skip(1)
        .take_while(|l| !(l.contains("connect(") && l.contains(&to_peer)))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        !before.contains("getsockname(") && !before.contains("SO_PROTOCOL") && !before.contains("AF_NETLINK"),
        "the shim looked at a UDP socket it saw born:\n{before}"
    );
    assert!(before.contains("bind("), "the placement's bind is in the trace:\n{before}");
    assert_eq!(before.lines().count(), 1, "one syscall (the bind) before the connect:\n{before}");
    // A first unconnected send gets a port of its own: neither SO_REUSEADDR nor SO_REUSEPORT
    // needs setting or reading on a socket born here (the program set neither).
    let (ret, _, local, _) = birth_cases(&out).remove("firstsend").expect("case firstsend");
    assert!(ret == 0 && in_slice(local, SLICE_IP, lo, hi), "{}", out.dump());
    let last = trace.rfind("socket(AF_INET, SOCK_DGRAM").expect("the last socket() in the trace");
    let send: String = trace[last..].lines().skip(1).map(|l| format!("{l}\n")).collect();
    assert!(
        !send.contains("SO_REUSEADDR") && !send.contains("SO_REUSEPORT"),
        "options set or read for a first send:\n{send}"
    );
    assert!(send.contains("bind("), "the first send's bind is in the trace:\n{send}");
}

/// A UDP socket that a fork child connected (the shim placed it there, on a shared slice port)
/// and the parent then connects elsewhere: the parent's records say nothing of that placement,
/// and the socket holds a slice port the program never bound — not the program's choice, so
/// the new 4-tuple is placed and checked like any other. On a one-port slice where the parent's
/// other socket already talks to that peer from the port, the connect gets EAGAIN and the other
/// socket keeps its replies (before: left on its port unchecked, it took them).
#[test]
fn a_port_placed_by_a_fork_child_is_checked_again() {
    let (lo, _) = slice_ports(1);
    let a = UdpEcho::echo("127.0.0.1");
    let b = UdpEcho::echo("127.0.0.1");
    let out = Run::python(include_str!("../py/udp_fork_share.py"))
        .args(["127.0.0.1".to_string(), a.port().to_string(), b.port().to_string()])
        .slice(&slice_spec(SLICE_IP, lo, lo))
        .run();
    out.assert_success();
    assert_eq!(out.field("x"), Some(format!("ok {lo}").as_str()), "{}", out.dump());
    let s = out.fields("s");
    assert_eq!(s, ["err 11"], "the slice's one port is x's towards B\n{}", out.dump());
    assert!(out.stdout.contains("x good"), "x's reply went elsewhere\n{}", out.dump());
}
