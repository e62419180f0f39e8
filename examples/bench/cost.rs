//! Issue 11: what the shim costs where it passes through, how it scales with threads, the memory
//! it adds, and a TIME_WAIT-heavy run — and the table of every issue-11 row with its target.
//!
//! Hook costs: a child makes millions of one call (setsockopt TCP_NODELAY on a socket the shim
//! never placed; getsockopt SO_REUSEADDR; dup + close) with and without the shim (active),
//! interleaved; the row is the difference in ns per call (median over rounds).

use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// One row of the issue-11 table.
pub struct Row {
    pub measure: String,
    pub value: String,
    pub target: String,
    pub holds: Option<bool>,
}

impl Row {
    pub fn new(measure: &str, value: String, target: &str, holds: Option<bool>) -> Row {
        Row { measure: measure.into(), value, target: target.into(), holds }
    }
}

pub fn print_table(rows: &[Row]) {
    println!();
    println!("issue 11 targets (ratios and differences measured in this run)");
    println!("{:<62} {:>16} {:>10} {:>6}", "measure", "measured", "target", "holds");
    for r in rows {
        let h = match r.holds {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        println!("{:<62} {:>16} {:>10} {:>6}", r.measure, r.value, r.target, h);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn child(so: Option<&Path>, env: &[(&str, &str)], args: &[String]) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    for k in ["LD_PRELOAD", "PORTRANGE", "PORTRANGE_STRATEGY", "PORTRANGE_STATS", "PORTRANGE_LOG"] {
        cmd.env_remove(k);
    }
    if let Some(so) = so {
        cmd.env("LD_PRELOAD", so);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.args(args).output().expect("run child");
    if !out.stderr.is_empty() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// libc's own definition of `name` (not the preloaded shim's): dlsym on libc's handle.
fn libc_fn(name: &std::ffi::CStr) -> *mut libc::c_void {
    // SAFETY: dlopen of an already loaded library (RTLD_NOLOAD) and dlsym with C strings.
    unsafe {
        let h = libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
        assert!(!h.is_null(), "libc.so.6 not loaded");
        let p = libc::dlsym(h, name.as_ptr());
        assert!(!p.is_null(), "{name:?} not in libc");
        p
    }
}

/// `--hook-child KIND N`: N calls of KIND through the dynamic symbol (the shim's hook when it is
/// preloaded) and N through libc's own function, alternating in chunks of 50,000; prints the
/// fastest chunk's ns per call for each ("hooked direct"). The difference is the hook's cost,
/// measured in one process: machine noise hits both alike.
pub fn hook_child(kind: &str, n: usize) {
    type SetOpt = unsafe extern "C" fn(
        libc::c_int,
        libc::c_int,
        libc::c_int,
        *const libc::c_void,
        libc::socklen_t,
    ) -> libc::c_int;
    type GetOpt = unsafe extern "C" fn(
        libc::c_int,
        libc::c_int,
        libc::c_int,
        *mut libc::c_void,
        *mut libc::socklen_t,
    ) -> libc::c_int;
    type Dup = unsafe extern "C" fn(libc::c_int) -> libc::c_int;
    // SAFETY: the symbols have these C signatures in glibc.
    let (set_d, get_d, dup_d, close_d): (SetOpt, GetOpt, Dup, Dup) = unsafe {
        (
            std::mem::transmute::<*mut libc::c_void, SetOpt>(libc_fn(c"setsockopt")),
            std::mem::transmute::<*mut libc::c_void, GetOpt>(libc_fn(c"getsockopt")),
            std::mem::transmute::<*mut libc::c_void, Dup>(libc_fn(c"dup")),
            std::mem::transmute::<*mut libc::c_void, Dup>(libc_fn(c"close")),
        )
    };
    // SAFETY: plain socket calls on a socket this child owns.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    let one: libc::c_int = 1;
    let chunk = 50_000usize;
    let (mut hooked, mut direct) = (f64::MAX, f64::MAX);
    for _ in 0..(n / chunk).max(1) {
        for via_hook in [true, false] {
            let t = Instant::now();
            for _ in 0..chunk {
                let mut v: libc::c_int = 0;
                let mut len = 4 as libc::socklen_t;
                // SAFETY: valid option buffers; fd is ours; a dup is closed at once.
                unsafe {
                    match (kind, via_hook) {
                        ("setsockopt", true) => {
                            libc::setsockopt(
                                fd,
                                libc::IPPROTO_TCP,
                                libc::TCP_NODELAY,
                                (&one as *const libc::c_int).cast(),
                                4,
                            );
                        }
                        ("setsockopt", false) => {
                            set_d(
                                fd,
                                libc::IPPROTO_TCP,
                                libc::TCP_NODELAY,
                                (&one as *const libc::c_int).cast(),
                                4,
                            );
                        }
                        ("getsockopt", true) => {
                            libc::getsockopt(
                                fd,
                                libc::SOL_SOCKET,
                                libc::SO_REUSEADDR,
                                (&mut v as *mut libc::c_int).cast(),
                                &mut len,
                            );
                        }
                        ("getsockopt", false) => {
                            get_d(
                                fd,
                                libc::SOL_SOCKET,
                                libc::SO_REUSEADDR,
                                (&mut v as *mut libc::c_int).cast(),
                                &mut len,
                            );
                        }
                        (_, true) => {
                            libc::close(libc::dup(fd));
                        }
                        (_, false) => {
                            close_d(dup_d(fd));
                        }
                    }
                }
            }
            let ns = t.elapsed().as_secs_f64() * 1e9 / chunk as f64;
            if via_hook {
                hooked = hooked.min(ns);
            } else {
                direct = direct.min(ns);
            }
        }
    }
    println!("{hooked} {direct}");
}

/// Hook costs: (kind, ns per call without the shim, ns added by the shim's hook).
pub fn hooks(so: &Path, rounds: usize, n: usize) -> Vec<(&'static str, f64, f64)> {
    let env = [("PORTRANGE", "127.0.0.2:40000-40099")];
    let mut out = Vec::new();
    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>9} {:>9}",
        "hook cost, ns per call (fastest chunk)", "libc", "via hook", "added", "control"
    );
    for kind in ["setsockopt", "getsockopt", "dupclose"] {
        let (mut libc_ns, mut added, mut control) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let args = ["--hook-child".to_string(), kind.to_string(), n.to_string()];
            let parse = |t: String| -> (f64, f64) {
                let v: Vec<f64> = t.split_whitespace().filter_map(|x| x.parse().ok()).collect();
                (v.first().copied().unwrap_or(f64::NAN), v.get(1).copied().unwrap_or(f64::NAN))
            };
            let (h, d) = parse(child(Some(so), &env, &args));
            let (h0, d0) = parse(child(None, &[], &args));
            libc_ns.push(d);
            added.push(h - d);
            control.push(h0 - d0);
        }
        let (l, a, c) = (median(libc_ns), median(added), median(control));
        let name = match kind {
            "setsockopt" => "setsockopt(TCP_NODELAY), socket not placed",
            "getsockopt" => "getsockopt(SO_REUSEADDR)",
            _ => "dup + close",
        };
        println!("{name:<44} {l:>10.1} {:>10.1} {a:>+9.1} {c:>+9.1}", l + a);
        out.push((kind, l, a));
    }
    println!("  (control: the same difference without the shim, i.e. PLT vs a direct pointer)");
    out
}

/// `--threads-child ADDR N T`: T threads, N connect+close(RST) in all; prints connects/s.
pub fn threads_child(addr: &str, n: usize, t: usize) {
    let addr: SocketAddr = addr.parse().unwrap();
    let start = Instant::now();
    let hs: Vec<_> = (0..t)
        .map(|_| {
            std::thread::spawn(move || {
                let mut failed = 0;
                for _ in 0..n / t {
                    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                        Ok(mut s) => {
                            let _ = s.read(&mut [0u8; 16]);
                            super::set_linger0(s.as_raw_fd());
                        }
                        Err(_) => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    let failed: usize = hs.into_iter().map(|h| h.join().unwrap()).sum();
    if failed > 0 {
        eprintln!("threads: {failed} connects failed");
    }
    println!("{}", (n / t * t) as f64 / start.elapsed().as_secs_f64());
}

/// Scaling with threads: shim rate / no-shim rate at 1, 2 and 16 threads, per strategy.
pub fn threads(so: &Path, rounds: usize, addr: SocketAddr, n: usize, slice: &str) -> Vec<(String, f64)> {
    println!();
    println!("{:<40} {:>12} {:>12} {:>12}", "TCP connect+close, threads", "no shim /s", "shim /s", "ratio");
    let mut out = Vec::new();
    for strategy in ["kernel", "retry"] {
        let env = [("PORTRANGE", slice), ("PORTRANGE_STRATEGY", strategy)];
        for t in [1usize, 2, 16] {
            let (mut base, mut shim) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                let args = ["--threads-child".to_string(), addr.to_string(), n.to_string(), t.to_string()];
                base.push(child(None, &[], &args).parse::<f64>().unwrap_or(f64::NAN));
                shim.push(child(Some(so), &env, &args).parse::<f64>().unwrap_or(f64::NAN));
            }
            let x = median(base.iter().zip(&shim).map(|(b, s)| s / b).collect());
            let (b, s) = (median(base), median(shim));
            let name = format!("{strategy}, {t} thread{}", if t == 1 { "" } else { "s" });
            println!("{name:<40} {b:>12.0} {s:>12.0} {x:>11.2}x");
            out.push((name, x));
        }
    }
    out
}

/// `--rss-child ADDR`: 200 placed connects, then prints VmRSS in KiB.
pub fn rss_child(addr: &str) {
    let addr: SocketAddr = addr.parse().unwrap();
    for _ in 0..200 {
        if let Ok(s) = std::net::TcpStream::connect(addr) {
            super::set_linger0(s.as_raw_fd());
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("0");
    println!("{kb}");
}

/// RSS added by the shim (KiB), kernel strategy, after 200 placed connects.
pub fn rss(so: &Path, addr: SocketAddr, slice: &str) -> f64 {
    let args = ["--rss-child".to_string(), addr.to_string()];
    let base: Vec<f64> = (0..3).map(|_| child(None, &[], &args).parse().unwrap_or(f64::NAN)).collect();
    let env = [("PORTRANGE", slice), ("PORTRANGE_STRATEGY", "kernel")];
    let shim: Vec<f64> = (0..3).map(|_| child(Some(so), &env, &args).parse().unwrap_or(f64::NAN)).collect();
    let (b, s) = (median(base), median(shim));
    println!();
    println!("RSS after 200 connects: no shim {b:.0} KiB, shim {s:.0} KiB, added {:.0} KiB", s - b);
    s - b
}

/// `--tw-client PORT SECS`: connect + close (the client closes first: every tuple goes to
/// TIME_WAIT) to the churn server for SECS seconds; prints connects/s and failures.
pub fn tw_client(port: u16, secs: f64) {
    let dst: SocketAddr = (super::churn::SERVER_IP.parse::<std::net::IpAddr>().unwrap(), port).into();
    let start = Instant::now();
    let (mut ok, mut failed) = (0u64, 0u64);
    while start.elapsed().as_secs_f64() < secs {
        match std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(2)) {
            Ok(s) => {
                drop(s);
                ok += 1;
            }
            Err(_) => failed += 1,
        }
    }
    println!("{} {failed}", ok as f64 / start.elapsed().as_secs_f64());
}

/// TIME_WAIT-heavy: client-closed connections to one destination, 512-port slice, 5 s, in two
/// namespaces (non-loopback addresses, tcp_tw_reuse=1 on the client): connects per second.
pub fn timewait(so: &Path) -> Vec<(String, f64, u64)> {
    let mut out = Vec::new();
    println!();
    if !super::churn::usable() {
        println!("TIME_WAIT-heavy row: SKIPPED (needs root and ip)");
        return out;
    }
    let port = 8080u16;
    println!("{:<40} {:>12} {:>10}", "TIME_WAIT-heavy, 512-port slice, 5 s", "connects/s", "failed");
    for (name, strategy) in [("no shim", None), ("kernel", Some("kernel")), ("retry", Some("retry"))] {
        // A fresh pair of namespaces per run: no TIME_WAIT of another run in the way.
        let pair = super::churn::pair("tw");
        let mut server = Command::new("ip")
            .args(["netns", "exec", &pair.server])
            .arg(std::env::current_exe().unwrap())
            .args(["--churn-server", &port.to_string(), "eof"])
            .env_remove("LD_PRELOAD")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("server");
        let mut line = [0u8; 10];
        let _ = server.stdout.as_mut().unwrap().read(&mut line);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pair.client]).arg(std::env::current_exe().unwrap());
        cmd.args(["--tw-client", &port.to_string(), "5"]);
        for k in ["LD_PRELOAD", "PORTRANGE", "PORTRANGE_STRATEGY", "PORTRANGE_STATS"] {
            cmd.env_remove(k);
        }
        if let Some(s) = strategy {
            cmd.env("LD_PRELOAD", so)
                .env("PORTRANGE", "198.51.100.10:40000-40511")
                .env("PORTRANGE_STRATEGY", s);
        }
        let o = cmd.output().expect("tw client");
        let text = String::from_utf8_lossy(&o.stdout);
        let mut w = text.split_whitespace();
        let rate: f64 = w.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        let failed: u64 = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        println!("{name:<40} {rate:>12.0} {failed:>10}");
        out.push((name.to_string(), rate, failed));
        let _ = server.kill();
        let _ = server.wait();
    }
    out
}
