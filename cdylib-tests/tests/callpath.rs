//! The call path under hostile-but-ordinary programs (issue 8, items 1, 2, 5, 9): thread
//! cancellation inside hooked calls, signals interrupting a blocking connect, signal handlers that
//! connect while their thread is inside the shim, descriptors above 2^20. Each runs under both
//! TCP strategies and with the shim loaded but inactive; the C programs are in `c/`.

use cdylib_tests::*;

/// The configurations every test runs under: inactive (PORTRANGE unset), then each strategy.
fn configurations() -> Vec<Option<&'static str>> {
    let mut v = vec![None];
    v.extend(tcp_strategies().into_iter().map(Some));
    v
}

fn configure(run: Run, strategy: Option<&str>, ip: &str, lo: u16, hi: u16, stats: &std::path::Path) -> Run {
    match strategy {
        None => run,
        Some(s) => {
            run.slice(&slice_spec(ip, lo, hi)).env("PORTRANGE_STRATEGY", s).env("PORTRANGE_STATS", stats)
        }
    }
}

/// Item 1: pthread_cancel of threads blocked in connect (full accept queue), in sendto/sendmsg
/// (full socket buffers), in accept and in fcntl(F_SETLKW): cleanup handlers run, pthread_join returns
/// PTHREAD_CANCELED, the process goes on; the send connections were placed.
#[test]
fn cancelled_threads_unwind_through_hooks() {
    let Some(exe) = compile_c("cancel", include_str!("../c/cancel.c")) else { return };
    for strategy in configurations() {
        let (lo, hi) = slice_ports(64);
        let tmp = TempDir::new("cancel");
        let stats = tmp.path().join("stats");
        let run = Run::new(&exe).arg(free_listen_port().to_string()).arg(free_listen_port().to_string());
        let out = configure(run, strategy, SLICE_IP, lo, hi, &stats)
            .timeout(std::time::Duration::from_secs(30))
            .run();
        let ctx = format!("strategy {strategy:?}");
        assert!(out.success() && out.field("DONE") == Some("ok"), "{ctx}:\n{}", out.dump());
        let peers: Vec<&str> = out.fields("PEER");
        assert_eq!(peers.len(), 2, "{ctx}:\n{}", out.dump());
        if strategy.is_some() {
            for p in peers {
                let (ip, port) = p.split_once(' ').unwrap();
                let port: u16 = port.parse().unwrap();
                assert!(ip == SLICE_IP && (lo..=hi).contains(&port), "{ctx}: peer saw {p}\n{}", out.dump());
            }
        }
    }
}

const CLIENT_IP: &str = "198.51.100.10";
const SERVER_IP: &str = "203.0.113.1";

/// Two named network namespaces joined by a slow link: a tun device in each, and a forwarder
/// in this process that carries every packet across after `delay` (tc netem is not built into
/// every kernel; this machine's has none). Deleted on drop.
struct Pair {
    client: String,
    server: String,
}

impl Pair {
    fn new(tag: &str, delay: std::time::Duration) -> Pair {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = format!("{tag}{}-{n}", std::process::id());
        let pair = Pair { client: format!("cpc-{id}"), server: format!("cps-{id}") };
        let (c, s) = (pair.client.clone(), pair.server.clone());
        sh(&["ip", "netns", "add", &c]);
        sh(&["ip", "netns", "add", &s]);
        let tc = Pair::inside(&c, || tun("tc0"));
        let ts = Pair::inside(&s, || tun("ts0"));
        for (ns, dev, ip, route) in
            [(&c, "tc0", CLIENT_IP, "203.0.113.0/24"), (&s, "ts0", SERVER_IP, "198.51.100.0/24")]
        {
            sh(&["ip", "-n", ns, "addr", "add", &format!("{ip}/32"), "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "route", "add", route, "dev", dev]);
        }
        let (tc2, ts2) = (tc.try_clone().unwrap(), ts.try_clone().unwrap());
        forward(tc, ts2, delay);
        forward(ts, tc2, delay);
        pair
    }

    /// Run `f` on a thread inside namespace `ns` (its sockets and child processes live there).
    fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        use std::os::fd::AsRawFd;
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let f_ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a namespace fd we own; affects only this thread.
            assert_eq!(unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

/// A tun device `name` (IFF_TUN | IFF_NO_PI: raw IP packets) in this thread's namespace.
fn tun(name: &str) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f =
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").expect("open /dev/net/tun");
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    let mut req =
        IfReq { name: [0; 16], flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short, pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF with a valid ifreq-sized buffer.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    assert_eq!(r, 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    f
}

/// Carry packets read from `from` into `to`, each `delay` after it was read (until the devices
/// go away with their namespaces).
fn forward(mut from: std::fs::File, mut to: std::fs::File, delay: std::time::Duration) {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || tx.send((std::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (at, pkt) in rx {
            if let Some(d) = at.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(d);
            }
            if to.write(&pkt).is_err() {
                break;
            }
        }
    });
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Item 2: `while (connect() == -1 && errno == EINTR);` with a 1 ms SIGALRM against a 12 ms
/// round trip (a slow link between two namespaces). After EINTR the kernel goes on with the handshake and a later connect() on the same
/// socket waits for it: every loop ends with 0, the peer sees exactly one connection per socket,
/// from the address the client's socket holds (in the slice when the shim is active).
#[test]
fn eintr_loop_completes_with_one_connection_per_socket() {
    require_netns!();
    require!("ip");
    let Some(exe) = compile_c("eintr", include_str!("../c/eintr.c")) else { return };
    const N: usize = 10;
    let (lo, hi) = (40000, 40063);
    for strategy in configurations() {
        // 6 ms each way: a 12 ms round trip.
        let pair = Pair::new("eintr", std::time::Duration::from_millis(6));
        let rec = Pair::inside(&pair.server, || Recorder::hold(SERVER_IP));
        let port = rec.port();
        let stats = TempDir::new("eintr");
        let run = Run::new(&exe).args([SERVER_IP.to_string(), port.to_string(), N.to_string()]);
        let run = configure(run, strategy, CLIENT_IP, lo, hi, &stats.path().join("stats"))
            .timeout(std::time::Duration::from_secs(60));
        let out = Pair::inside(&pair.client, move || run.run());
        let ctx = format!("strategy {strategy:?}");
        assert!(out.success(), "{ctx}:\n{}", out.dump());
        let socks = out.fields("SOCK");
        assert_eq!(socks.len(), N, "{ctx}:\n{}", out.dump());
        let mut locals = Vec::new();
        for s in &socks {
            let w: Vec<&str> = s.split_whitespace().collect();
            assert_eq!((w[1], w[2]), ("0", "0"), "{ctx}: connect loop ended with {s}\n{}", out.dump());
            let local = std::net::SocketAddr::new(w[4].parse().unwrap(), w[5].parse().unwrap());
            if strategy.is_some() {
                assert_in_slice(local, CLIENT_IP, lo, hi);
            }
            locals.push(local);
        }
        let eintrs: u64 = out.expect_field("EINTRS").parse().unwrap();
        assert!(eintrs > 0, "{ctx}: no connect was interrupted (is netem slowing the link?)\n{}", out.dump());
        let peers = rec.wait_for(N, PEER_WAIT);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let peers = if peers.len() == N { rec.peers() } else { peers };
        let mut got = peers.clone();
        got.sort();
        locals.sort();
        assert_eq!(
            got,
            locals,
            "{ctx}: the peer saw {} connections for {N} sockets\n{}",
            peers.len(),
            out.dump()
        );
    }
}

/// A listener on `ip` that accepts and drops connections, remembering each peer address.
struct Sink {
    port: u16,
    peers: std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>,
}

impl Sink {
    fn start(ip: &str) -> Sink {
        let l = bind_listener(ip.parse().unwrap());
        let port = l.local_addr().unwrap().port();
        let peers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let p = peers.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                if let Ok(a) = c.peer_addr() {
                    p.lock().unwrap().push(a);
                }
            }
        });
        Sink { port, peers }
    }
    fn peers(&self) -> Vec<std::net::SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

/// Item 5: a signal handler that connects while its thread is inside the shim (here: a 300 us
/// timer interrupting a loop of placed connects). Every handler connect leaves from the slice or
/// is refused with EADDRNOTAVAIL (counted as `reentered_refused`) — never unplaced; the peer sees
/// only slice addresses. Inactive: every handler connect succeeds.
#[test]
fn signal_handler_connects_are_placed_or_refused() {
    let Some(exe) = compile_c("sighandler", include_str!("../c/sighandler.c")) else { return };
    for strategy in configurations() {
        let (lo, hi) = slice_ports(512);
        let sink = Sink::start("127.0.0.1");
        let tmp = TempDir::new("sighandler");
        let stats = tmp.path().join("stats");
        let run =
            Run::new(&exe).args(["127.0.0.1".to_string(), sink.port.to_string(), "300".into(), "20".into()]);
        let out = configure(run, strategy, SLICE_IP, lo, hi, &stats).run();
        let ctx = format!("strategy {strategy:?}");
        assert!(out.success() && out.field("DONE").is_some(), "{ctx}:\n{}", out.dump());
        let handler = out.fields("HANDLER");
        assert!(handler.len() >= 300, "{ctx}: only {} handler connects\n{}", handler.len(), out.dump());
        let (mut ok, mut refused) = (0, 0);
        for h in &handler {
            let w: Vec<&str> = h.split_whitespace().collect();
            match (w[0], strategy) {
                ("ok", None) => ok += 1,
                ("ok", Some(_)) => {
                    let local = std::net::SocketAddr::new(w[1].parse().unwrap(), w[2].parse().unwrap());
                    assert!(
                        in_slice(local, SLICE_IP, lo, hi),
                        "{ctx}: handler connect from {local}\n{}",
                        out.dump()
                    );
                    ok += 1;
                }
                ("err", Some(_)) if w[1] == EADDRNOTAVAIL.to_string() => refused += 1,
                _ => panic!("{ctx}: handler connect {h}\n{}", out.dump()),
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let peers = sink.peers();
        assert!(!peers.is_empty(), "{ctx}");
        if strategy.is_some() {
            let outside: Vec<_> = peers.iter().filter(|p| !in_slice(**p, SLICE_IP, lo, hi)).collect();
            assert!(
                outside.is_empty(),
                "{ctx}: the peer saw {} flows from outside the slice: {:?}\n{}",
                outside.len(),
                &outside[..outside.len().min(5)],
                out.dump()
            );
            let line = std::fs::read_to_string(&stats).unwrap_or_default();
            assert_eq!(json_number(&line, "reentered_refused"), Some(refused), "{ctx}: {line}");
        }
        eprintln!("{ctx}: {ok} handler connects placed, {refused} refused, {} peers", peers.len());
    }
}

/// Item 9: sockets at fd numbers >= 2^20 keep their per-socket state: a deferred wildcard bind
/// gives a port when asked (getsockname), a bound-then-connected socket is placed, the program's
/// own SO_REUSEADDR is reported, a UDP socket keeps the port of its first send. Needs
/// CAP_SYS_RESOURCE to raise RLIMIT_NOFILE past 2^20 (and raises fs.nr_open for the run).
#[test]
fn descriptors_above_2_pow_20_keep_their_state() {
    let Some(exe) = compile_c("highfd", include_str!("../c/highfd.c")) else { return };
    let nr_open = sysctl("fs/nr_open").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let need = (1u64 << 20) + 8192;
    if nr_open < need && std::fs::write("/proc/sys/fs/nr_open", need.to_string()).is_err() {
        eprintln!("SKIP descriptors_above_2_pow_20_keep_their_state: cannot raise fs.nr_open");
        return;
    }
    let out = (|| {
        for strategy in configurations() {
            let (lo, hi) = slice_ports(16);
            let sink = Sink::start("127.0.0.1");
            let tmp = TempDir::new("highfd");
            let run = Run::new(&exe).args(["127.0.0.1".to_string(), sink.port.to_string()]);
            let out = configure(run, strategy, SLICE_IP, lo, hi, &tmp.path().join("stats")).run();
            let ctx = format!("strategy {strategy:?}");
            assert!(out.success(), "{ctx}:\n{}", out.dump());
            if let Some(why) = out.field("SKIP") {
                return Some(why.to_string());
            }
            let fd: i64 = out.expect_field("FD").parse().unwrap();
            assert!(fd >= 1 << 20, "{ctx}: fd {fd}");
            assert_ne!(
                out.expect_field("WILDCARD"),
                "0",
                "{ctx}: bind(0.0.0.0:0) gave no port\n{}",
                out.dump()
            );
            let tcp: Vec<&str> = out.expect_field("TCP").split_whitespace().collect();
            assert_eq!(tcp[0], "0", "{ctx}: connect failed\n{}", out.dump());
            assert_eq!(
                out.expect_field("REUSEADDR"),
                "0",
                "{ctx}: the program's SO_REUSEADDR\n{}",
                out.dump()
            );
            let udp = out.expect_addr("UDP");
            assert_eq!(out.expect_addr("UDP2"), udp, "{ctx}: the UDP socket changed port\n{}", out.dump());
            if strategy.is_some() {
                let local = std::net::SocketAddr::new(tcp[2].parse().unwrap(), tcp[3].parse().unwrap());
                assert!(in_slice(local, SLICE_IP, lo, hi), "{ctx}: TCP from {local}\n{}", out.dump());
                assert!(in_slice(udp, SLICE_IP, lo, hi), "{ctx}: UDP from {udp}\n{}", out.dump());
                std::thread::sleep(std::time::Duration::from_millis(100));
                for p in sink.peers() {
                    assert!(in_slice(p, SLICE_IP, lo, hi), "{ctx}: the peer saw {p}\n{}", out.dump());
                }
            }
        }
        None
    })();
    if nr_open < need {
        let _ = std::fs::write("/proc/sys/fs/nr_open", nr_open.to_string());
    }
    if let Some(why) = out {
        eprintln!("SKIP descriptors_above_2_pow_20_keep_their_state: {why}");
    }
}
