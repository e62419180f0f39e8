//! The shim's cost per flow, as ratios measured in one run (machines are noisy; ratios travel).
//!
//!     cargo build --release && cargo run --release --example bench [-- --n 4000 --rounds 5]
//!
//! A native client (this program, re-executed as a child under each configuration) opens N
//! loopback TCP connections in a row against a listener that accepts and closes; the client reads
//! the EOF and closes with RST (SO_LINGER 0), so no TIME_WAIT piles up and the client never
//! outruns the accept queue. Configurations run interleaved, `--rounds` times; the figure
//! per configuration is the median of its rounds' per-connect times.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

struct Conf {
    name: &'static str,
    shim: bool,
    env: Vec<(&'static str, String)>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(&args[2], args[3].parse().expect("n"));
    }
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = flag("--n", 4000);
    let rounds = flag("--rounds", 5);
    let so = match std::env::var_os("PORTRANGE_SO") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("libportrange.so"),
    };
    if !so.is_file() {
        eprintln!(
            "bench: {} not found: run `cargo build --release` first (or set PORTRANGE_SO)",
            so.display()
        );
        std::process::exit(2);
    }

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The sink closes first (FIN); the client waits for it and answers with RST: each iteration
    // is one full round trip (the client cannot outrun the accept queue) and no TIME_WAIT is
    // left on either side to disturb later runs.
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });

    let (sys_lo, sys_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let v: Vec<u16> = s.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            Some((*v.first()?, *v.get(1)?))
        })
        .unwrap_or((32768, 60999));
    // A 4096-port slice inside the sysctl range, clear of the listener's port.
    let lo = if addr.port() > sys_lo + 5000 { sys_lo + 100 } else { sys_hi - 4200 };
    let slice = format!("127.0.0.2:{lo}-{}", lo + 4095);
    let confs = [
        Conf { name: "no shim", shim: false, env: vec![] },
        Conf { name: "shim loaded, PORTRANGE unset", shim: true, env: vec![] },
        Conf {
            name: "shim, kernel strategy",
            shim: true,
            env: vec![("PORTRANGE", slice.clone()), ("PORTRANGE_STRATEGY", "kernel".into())],
        },
    ];

    println!("portrange bench: {n} TCP connect+close per run, {rounds} rounds, loopback, slice {slice}");
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); confs.len()];
    for _ in 0..rounds {
        for (i, c) in confs.iter().enumerate() {
            results[i].push(run(c, &so, addr, n));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let base = median(&mut results[0].clone());
    println!("{:<34} {:>12} {:>12} {:>10}", "configuration", "µs/connect", "connects/s", "vs no shim");
    for (c, r) in confs.iter().zip(results.iter_mut()) {
        let m = median(r);
        println!("{:<34} {:>12.2} {:>12.0} {:>9.2}x", c.name, m, 1e6 / m, m / base);
    }
}

fn run(c: &Conf, so: &std::path::Path, addr: SocketAddr, n: usize) -> f64 {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--child", &addr.to_string(), &n.to_string()]);
    for k in [
        "LD_PRELOAD",
        "PORTRANGE",
        "PORTRANGE_SKIP",
        "PORTRANGE_STRATEGY",
        "PORTRANGE_LOG",
        "PORTRANGE_STATS",
    ] {
        cmd.env_remove(k);
    }
    if c.shim {
        cmd.env("LD_PRELOAD", so);
    }
    for (k, v) in &c.env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run child");
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().parse::<f64>() {
        Ok(v) => v,
        Err(_) => panic!("{}: child said {text:?} / {}", c.name, String::from_utf8_lossy(&out.stderr)),
    }
}

/// Child: N connect+close, prints µs per connect.
fn child(addr: &str, n: usize) {
    let addr: SocketAddr = addr.parse().unwrap();
    // Warm-up (first connect pays for lazy symbol resolution).
    for _ in 0..50 {
        let _ = std::net::TcpStream::connect(addr);
    }
    let t = Instant::now();
    let mut failed = 0;
    for _ in 0..n {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                let _ = s.read(&mut [0u8; 16]);
                set_linger0(s.as_raw_fd());
            }
            Err(_) => failed += 1,
        }
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    if failed > 0 {
        eprintln!("{failed} connects failed");
    }
    println!("{us}");
}

/// Close with RST: no TIME_WAIT on either side, so runs do not disturb each other.
fn set_linger0(fd: i32) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid linger struct of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
