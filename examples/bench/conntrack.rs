//! Conntrack (issue 10): the retry strategy's connect cost on a veth pair between two network
//! namespaces, with conntrack inactive and active, and PORTRANGE_CONNTRACK off, verify and auto
//! (reserve+verify). Needs root, ip and nft; otherwise one skip line.

use super::{median, Conf};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

const CLIENT_IP: &str = "198.51.100.10";
const SERVER_IP: &str = "198.51.100.20";
const SLICE: &str = "198.51.100.10:40000-40511";

/// A client and a server namespace joined by a veth pair; deleted on drop. With `track`, the
/// client namespace has an nft `ct` rule (conntrack active) and one flow in its table.
struct Pair {
    client: String,
    server: String,
}

fn sh(argv: &[&str]) -> bool {
    Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Pair {
    fn new(tag: &str) -> Option<Pair> {
        let p = Pair {
            client: format!("prbench-{}-{tag}-c", std::process::id()),
            server: format!("prbench-{}-{tag}-s", std::process::id()),
        };
        let (c, s) = (p.client.as_str(), p.server.as_str());
        let ok = sh(&["ip", "netns", "add", c])
            && sh(&["ip", "netns", "add", s])
            && sh(&["ip", "-n", c, "link", "add", "vc", "type", "veth", "peer", "name", "vs", "netns", s])
            && sh(&["ip", "-n", c, "addr", "add", &format!("{CLIENT_IP}/24"), "dev", "vc"])
            && sh(&["ip", "-n", s, "addr", "add", &format!("{SERVER_IP}/24"), "dev", "vs"])
            && [(c, "lo"), (c, "vc"), (s, "lo"), (s, "vs")]
                .iter()
                .all(|(ns, dev)| sh(&["ip", "-n", ns, "link", "set", dev, "up"]));
        ok.then_some(p)
    }

    fn track(&self) -> bool {
        let c = self.client.as_str();
        let nft = |cmd: &str| sh(&["ip", "netns", "exec", c, "nft", cmd]);
        nft("add table ip prbench")
            && nft("add chain ip prbench out { type filter hook output priority 0; }")
            && nft("add rule ip prbench out ct state new counter")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            sh(&["ip", "netns", "del", ns]);
        }
    }
}

/// Run `f` on a thread inside the named namespace.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on a namespace fd we own; affects only this thread.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A sink in the server namespace that accepts and closes.
fn sink(ns: &str) -> SocketAddr {
    let l = in_ns(ns, || TcpListener::bind((SERVER_IP, 8080)).expect("bind the sink"));
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
    addr
}

pub fn rows(so: &std::path::Path, n: usize, rounds: usize) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !sh(&["nft", "--version"]) {
        println!("\nconntrack rows: skipped (needs root, ip and nft)");
        return;
    }
    let (Some(quiet), Some(tracked)) = (Pair::new("q"), Pair::new("t")) else {
        println!("\nconntrack rows: skipped (cannot make network namespaces)");
        return;
    };
    if !tracked.track() {
        println!("\nconntrack rows: skipped (nft ct rule refused)");
        return;
    }
    let (q_addr, t_addr) = (sink(&quiet.server), sink(&tracked.server));
    let conf = |name: &str, shim: bool, ct: &str| Conf {
        name: name.into(),
        shim,
        env: if shim {
            vec![
                ("PORTRANGE", SLICE.to_string()),
                ("PORTRANGE_STRATEGY", "retry".to_string()),
                ("PORTRANGE_CONNTRACK", ct.to_string()),
            ]
        } else {
            vec![]
        },
        fill: 0,
    };
    let confs: Vec<(Conf, &Pair, SocketAddr)> = vec![
        (conf("inactive: no shim", false, ""), &quiet, q_addr),
        (conf("inactive: retry, conntrack off", true, "off"), &quiet, q_addr),
        (conf("inactive: retry, conntrack auto", true, "auto"), &quiet, q_addr),
        (conf("active: no shim", false, ""), &tracked, t_addr),
        (conf("active: retry, conntrack off", true, "off"), &tracked, t_addr),
        (conf("active: retry, verify", true, "verify"), &tracked, t_addr),
        (conf("active: retry, auto (reserve+verify)", true, "auto"), &tracked, t_addr),
    ];
    let mut us: Vec<Vec<f64>> = vec![Vec::new(); confs.len()];
    let mut lines: Vec<String> = vec![String::new(); confs.len()];
    for _ in 0..rounds {
        // One flow in the tracked namespace's table, so that `auto` sees conntrack active.
        let a = t_addr;
        in_ns(&tracked.client, move || drop(std::net::TcpStream::connect(a)));
        for (i, (c, pair, addr)) in confs.iter().enumerate() {
            let (v, line) = run_in(&pair.client, c, so, *addr, n);
            us[i].push(v);
            lines[i] = line;
        }
    }
    println!();
    println!("conntrack: {n} TCP connect+close per run on a veth pair, slice {SLICE}, {rounds} rounds");
    println!(
        "{:<40} {:>11} {:>10} {:>9} {:>9}",
        "configuration", "µs/connect", "vs no shim", "ct new/c", "ct held/c"
    );
    let base = |i: usize| median(us[if i < 3 { 0 } else { 3 }].clone());
    for (i, (c, _, _)) in confs.iter().enumerate() {
        let m = median(us[i].clone());
        let placed = super::counter(&lines[i], "placed_tcp_retry").max(1.0);
        println!(
            "{:<40} {:>11.2} {:>9.2}x {:>9.2} {:>9.2}",
            c.name,
            m,
            m / base(i),
            super::counter(&lines[i], "conntrack_reserved") / placed,
            super::counter(&lines[i], "conntrack_held") / placed
        );
    }
    let d = |a: usize, b: usize| median(us[a].clone()) - median(us[b].clone());
    println!("  detection cost, conntrack inactive (auto − off):       {:+.2} µs/connect", d(2, 1));
    println!("  reserve+verify over retry, conntrack active (auto − off): {:+.2} µs/connect", d(6, 4));
    println!("  verify only over retry, conntrack active (verify − off):  {:+.2} µs/connect", d(5, 4));
}

/// The bench's TCP child (`--child`), started from a thread inside network namespace `ns`.
fn run_in(ns: &str, c: &Conf, so: &std::path::Path, addr: SocketAddr, n: usize) -> (f64, String) {
    let (c, so) = (c.clone(), so.to_path_buf());
    in_ns(ns, move || super::run(&c, &so, "--ct-child", addr, n))
}

/// Child (`--ct-child ADDR N`): N connects (each read to EOF, closed with RST); prints the median
/// connect() time in µs. A median, not a mean: on a loaded machine a few descheduled connects
/// (milliseconds each) would otherwise swamp the few µs being measured.
pub fn child(addr: &str, n: usize) {
    use std::io::Read;
    let addr: SocketAddr = addr.parse().unwrap();
    let mut t = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let start = std::time::Instant::now();
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)) else {
            continue;
        };
        if i >= 20 {
            t.push(start.elapsed().as_secs_f64() * 1e6);
        }
        let _ = s.read(&mut [0u8; 16]);
        super::set_linger0(s.as_raw_fd());
    }
    println!("{}", median(t));
}
