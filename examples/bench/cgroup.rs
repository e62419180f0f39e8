//! The cgroup BPF placement's cost (issue 14): a TCP child (`--cgroup-child`: N loopback
//! connects, each reading the EOF and closing with RST) run directly, and run by
//! `portrange exec --cgroup` in a fresh cgroup v2 group with the placement attached (slice
//! 127.0.0.2, 512 ports; every connect placed: random port, look-up, claim, bpf_bind, release),
//! interleaved, median over rounds.
//! The figure is the child's CPU time (user + sys from getrusage) per connect: the program runs
//! in the connecting thread's syscall, and CPU time stays readable on a loaded machine where
//! wall time does not.
//! Needs root (BPF) and a cgroup v2 mount; elsewhere it says why and skips the row.
//!
//!     cargo build --release && cargo run --release --example bench -- --cgroup-only

use std::net::TcpListener;
use std::process::Command;

pub fn rows(n: usize, rounds: usize) {
    let exe = std::env::current_exe().unwrap();
    let portrange = exe.parent().unwrap().parent().unwrap().join("portrange");
    if !portrange.is_file() {
        eprintln!("bench cgroup: {} not found: run `cargo build --release` first", portrange.display());
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let slice = if addr.port() < 40000 { "127.0.0.2:50000-50511" } else { "127.0.0.2:30000-30511" };
    let child = |placed: bool| -> Option<f64> {
        let mut cmd = if placed {
            let mut c = Command::new(&portrange);
            c.args(["exec", "--cgroup", "--slice", slice, "--"]).arg(&exe);
            c.env("PORTRANGE_EXEC_COUNTERS", "1");
            c
        } else {
            Command::new(&exe)
        };
        for k in ["LD_PRELOAD", "PORTRANGE", "PORTRANGE_SKIP", "PORTRANGE_STRATEGY", "PORTRANGE_STATS"] {
            cmd.env_remove(k);
        }
        let out =
            cmd.args(["--cgroup-child", &addr.to_string(), &n.to_string()]).output().expect("run child");
        let err = String::from_utf8_lossy(&out.stderr);
        if placed && !err.contains(&format!("placed_tcp={}", n + 20)) {
            eprintln!("bench cgroup: not every connect was placed, skipping the row: {}", err.trim());
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    let (mut none, mut bpf) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (Some(a), Some(b)) = (child(false), child(true)) else { return };
        none.push(a);
        bpf.push(b);
    }
    let (a, b) = (super::median(none), super::median(bpf));
    println!();
    println!("{:<36} {:>11} {:>10}", "TCP connect+close, cgroup placement", "CPU µs", "vs none");
    println!("{:<36} {:>11.2} {:>9.2}x", "no program", a, 1.0);
    println!("{:<36} {:>11.2} {:>9.2}x", "placement attached (BPF)", b, b / a);
}

/// Child: N connect + read EOF + close(RST) after 20 warm-up ones; prints CPU µs per connect.
pub fn child(addr: &str, n: usize) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let one = || match std::net::TcpStream::connect(addr) {
        Ok(mut s) => {
            let _ = s.read(&mut [0u8; 16]);
            super::set_linger0(s.as_raw_fd());
            true
        }
        Err(_) => false,
    };
    for _ in 0..20 {
        one();
    }
    let t = cpu_us();
    let failed = (0..n).filter(|_| !one()).count();
    let us = (cpu_us() - t) / n as f64;
    if failed > 0 {
        eprintln!("{failed} connects failed");
    }
    println!("{us}");
}

fn cpu_us() -> f64 {
    // SAFETY: getrusage fills a plain struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
