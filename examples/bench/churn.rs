//! Issue 13: which TCP strategy `auto` should take, in CPU time per connect (user + sys of the
//! client process, from getrusage: stable on a loaded machine, where wall time is not), in two
//! private network namespaces joined by a veth pair (client 198.51.100.10 with tcp_tw_reuse=1,
//! server 203.0.113.1), a 512-port slice, one destination:
//!
//! - churn: 2000 connect+close, the client closing first (every tuple goes through TIME_WAIT,
//!   which the kernel's own choice skips for 1 s): the kernel strategy lives on its fallback;
//! - busy: 460 of the 512 ports held by another process (kernel-placed, CLOSE_WAIT), then 2000
//!   connects that read the server's EOF and close (no TIME_WAIT on the client side).
//!
//!     cargo run --release --example bench -- --churn [--rounds 3]
//!
//! Needs root and `ip`; prints a skip line otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const CLIENT_IP: &str = "198.51.100.10";
pub const SERVER_IP: &str = "203.0.113.1";
const SLICE: &str = "198.51.100.10:40000-40511";

/// Two named network namespaces joined by a veth pair, deleted on drop.
pub struct Pair {
    pub client: String,
    pub server: String,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for n in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).stdin(Stdio::null()).status();
    assert!(st.is_ok_and(|s| s.success()), "{args:?} failed");
}

/// The pair `<tag>c-PID` / `<tag>s-PID`, with tcp_tw_reuse=1 on the client side.
pub fn pair(tag: &str) -> Pair {
    let pid = std::process::id();
    let p = Pair { client: format!("{tag}c-{pid}"), server: format!("{tag}s-{pid}") };
    let (c, s) = (p.client.as_str(), p.server.as_str());
    sh(&["ip", "netns", "add", c]);
    sh(&["ip", "netns", "add", s]);
    sh(&["ip", "-n", c, "link", "add", "vc", "type", "veth", "peer", "name", "vs", "netns", s]);
    sh(&["ip", "-n", c, "addr", "add", &format!("{CLIENT_IP}/24"), "dev", "vc"]);
    sh(&["ip", "-n", s, "addr", "add", &format!("{SERVER_IP}/24"), "dev", "vs"]);
    for (ns, dev) in [(c, "vc"), (s, "vs")] {
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    sh(&["ip", "-n", c, "route", "add", "203.0.113.0/24", "dev", "vc"]);
    sh(&["ip", "-n", s, "route", "add", "198.51.100.0/24", "dev", "vs"]);
    sh(&["ip", "netns", "exec", c, "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"]);
    p
}

pub fn usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success())
}

/// `--churn-server PORT MODE`: `eof` closes each connection at the client's EOF (the client
/// closed first); `first` closes each at once (the server closes first).
pub fn server(port: u16, mode: &str) {
    let l = TcpListener::bind((SERVER_IP, port)).unwrap();
    println!("listening");
    std::io::stdout().flush().unwrap();
    for s in l.incoming().map_while(Result::ok) {
        if mode == "first" {
            drop(s);
            continue;
        }
        std::thread::spawn(move || {
            let mut s = s;
            let mut b = [0u8; 64];
            while matches!(s.read(&mut b), Ok(n) if n > 0) {}
        });
    }
}

fn cpu_us() -> f64 {
    // SAFETY: getrusage fills a zeroed rusage.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let t = |v: libc::timeval| v.tv_sec as f64 * 1e6 + v.tv_usec as f64;
    t(r.ru_utime) + t(r.ru_stime)
}

/// `--churn-client PORT N MODE`: N connects (`close`: close at once; `eof`: read the server's
/// EOF, then close; `hold`: keep them, print `held`, wait for stdin to close). Prints the CPU µs
/// per connect and the number of failed connects.
pub fn client(port: u16, n: usize, mode: &str) {
    let dst: SocketAddr = (SERVER_IP.parse::<std::net::IpAddr>().unwrap(), port).into();
    let mut held = Vec::new();
    let mut failed = 0;
    let t0 = cpu_us();
    for _ in 0..n {
        match TcpStream::connect(dst) {
            Ok(mut s) => match mode {
                "hold" => held.push(s),
                "eof" => {
                    let mut b = [0u8; 16];
                    while matches!(s.read(&mut b), Ok(n) if n > 0) {}
                }
                _ => {}
            },
            Err(_) => failed += 1,
        }
    }
    let per = (cpu_us() - t0) / n as f64;
    if mode == "hold" {
        println!("held {}", held.len());
        std::io::stdout().flush().unwrap();
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    }
    println!("{per} {failed}");
}

fn spawn(ns: &str, args: &[String], env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(std::env::current_exe().unwrap()).args(args);
    cmd.env_remove("LD_PRELOAD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap()
}

fn first_line(c: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(c.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    line
}

pub fn main(so: &Path, rounds: usize) {
    if !usable() {
        println!("\nstrategy CPU cost under churn: SKIPPED (needs root and ip)");
        return;
    }
    let p = pair("bch");
    let mut servers: Vec<Child> = [(8080u16, "eof"), (9090, "first")]
        .iter()
        .map(|(port, mode)| {
            let mut c = spawn(&p.server, &["--churn-server".into(), port.to_string(), mode.to_string()], &[]);
            assert_eq!(first_line(&mut c).trim(), "listening");
            c
        })
        .collect();
    let shim = |strategy: &str| {
        vec![
            ("LD_PRELOAD", so.display().to_string()),
            ("PORTRANGE", SLICE.to_string()),
            ("PORTRANGE_STRATEGY", strategy.to_string()),
        ]
    };
    let confs: [(&str, Vec<(&str, String)>); 3] =
        [("no shim", vec![]), ("kernel (+fallback)", shim("kernel")), ("retry", shim("retry"))];
    let run = |port: u16, mode: &str, env: &[(&str, String)]| -> (f64, u64) {
        let args = ["--churn-client".to_string(), port.to_string(), "2000".into(), mode.into()];
        let out = spawn(&p.client, &args, env).wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut w = text.split_whitespace();
        (
            w.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
            w.next().and_then(|v| v.parse().ok()).unwrap_or(0),
        )
    };
    let mut churn = vec![Vec::new(); confs.len()];
    let mut busy = vec![Vec::new(); confs.len()];
    for _ in 0..rounds {
        for (i, (_, env)) in confs.iter().enumerate() {
            churn[i].push(run(8080, "close", env));
            // Let this run's TIME_WAITs age past the kernel's 1-second rule for the next one.
            std::thread::sleep(Duration::from_millis(1100));
        }
    }
    // The busy slice: a kernel-placed holder of 460 ports. (The churn runs' TIME_WAITs, whose
    // explicit binds hide their ports from the kernel's choice for 60 s, are in the way: a new
    // pair of namespaces.)
    for mut c in servers.drain(..) {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(p);
    let p = pair("bcb");
    let mut server = spawn(&p.server, &["--churn-server".into(), "9090".into(), "first".into()], &[]);
    assert_eq!(first_line(&mut server).trim(), "listening");
    let mut holder = spawn(
        &p.client,
        &["--churn-client".into(), "9090".into(), "460".into(), "hold".into()],
        &shim("kernel"),
    );
    assert_eq!(first_line(&mut holder).trim(), "held 460");
    for _ in 0..rounds {
        for (i, (_, env)) in confs.iter().enumerate() {
            let args = ["--churn-client".to_string(), "9090".into(), "2000".into(), "eof".into()];
            let out = spawn(&p.client, &args, env).wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let mut w = text.split_whitespace();
            busy[i].push((
                w.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
                w.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            ));
        }
    }
    drop(holder.stdin.take());
    let _ = holder.wait();
    let _ = server.kill();
    let _ = server.wait();

    let med = |v: &[(f64, u64)]| -> f64 {
        let mut x: Vec<f64> = v.iter().map(|m| m.0).collect();
        x.sort_by(|a, b| a.partial_cmp(b).unwrap());
        x[x.len() / 2]
    };
    println!();
    println!(
        "strategy CPU cost (µs of client CPU per connect, median of {rounds}), slice {SLICE}, tcp_tw_reuse=1"
    );
    println!("{:<20} {:>24} {:>30}", "client", "churn: close first", "busy: 460/512 held, no churn");
    for (i, (name, _)) in confs.iter().enumerate() {
        let fails: u64 = churn[i].iter().chain(&busy[i]).map(|m| m.1).sum();
        println!(
            "{:<20} {:>24.1} {:>30.1}{}",
            name,
            med(&churn[i]),
            med(&busy[i]),
            if fails > 0 { format!("  ({fails} connects failed)") } else { String::new() }
        );
    }
}
