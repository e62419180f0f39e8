//! `portrange demo`: the shim at work on this machine with no set-up (loopback only).

use crate::preload::{ld_preload, so_path};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

pub const HELP: &str = "\
usage: portrange demo

Show the shim at work on this machine with no set-up: a listener on 127.0.0.1 records the source
address of every connection; a client run under the shim (slice 127.0.0.2:PORTS inside the
ephemeral range) opens 5 connections, one more runs without it. The table shows what the listener
saw. Loopback only: nothing leaves the machine.

exit status: 0 every shimmed flow came from the slice; 2 otherwise, or the library was not found.";

/// A listener that records the source address of every connection, as the peer saw it.
struct Recorder {
    addr: SocketAddr,
    peers: std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>,
}

impl Recorder {
    fn start(ip: &str) -> Result<Recorder, String> {
        let l = TcpListener::bind((ip, 0)).map_err(|e| format!("cannot listen on {ip}: {e}"))?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        let peers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let p = peers.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                if let Ok(a) = s.peer_addr() {
                    p.lock().unwrap().push(a);
                }
                // Hold the connection until the client closes it.
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut b = [0u8; 64];
                    while matches!(s.read(&mut b), Ok(n) if n > 0) {}
                });
            }
        });
        Ok(Recorder { addr, peers })
    }

    fn wait(&self, n: usize) -> Vec<SocketAddr> {
        let t = Instant::now();
        while self.peers.lock().unwrap().len() < n && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.peers.lock().unwrap().clone()
    }
}

/// Child side of the demo: open N connections at once to ADDR, then close them.
pub fn client(args: &[OsString]) -> Result<(), String> {
    let addr: SocketAddr =
        args.first().and_then(|a| a.to_str()).and_then(|a| a.parse().ok()).ok_or("demo-client ADDR N")?;
    let n: usize = args.get(1).and_then(|a| a.to_str()).and_then(|a| a.parse().ok()).unwrap_or(1);
    let mut held = Vec::new();
    for _ in 0..n {
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                let _ = s.write_all(b"hello");
                held.push(s);
            }
            Err(e) => println!("connect failed: {e}"),
        }
    }
    // Let the listener record every peer before the connections go.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

pub fn run() -> Result<(), String> {
    let so = so_path()?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let rec = Recorder::start("127.0.0.1")?;
    // A slice inside the ephemeral range (so every strategy can serve it), away from the listener.
    let (sys_lo, sys_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    let span = u32::from(sys_hi.saturating_sub(sys_lo)).max(64);
    let seed = (std::process::id() * 7919) % (span - 16).max(1);
    let mut lo = sys_lo + seed as u16;
    if lo.abs_diff(rec.addr.port()) < 16 {
        lo = if lo > sys_lo + 32 { lo - 32 } else { lo + 32 };
    }
    let hi = lo + 7;
    let slice = format!("127.0.0.2:{lo}-{hi}");
    let stats = std::env::temp_dir().join(format!("portrange-demo-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&stats);
    let n = 5;

    println!("portrange demo: {n} connections from a program run under the shim, 1 without");
    println!("  slice     {slice}   (PORTRANGE={slice})");
    println!("  listener  {}        (records the source address it sees)", rec.addr);
    println!("  library   {}", so.display());
    println!();

    let out = Command::new(&exe)
        .args(["demo-client", &rec.addr.to_string(), &n.to_string()])
        .env("LD_PRELOAD", ld_preload(&so))
        .env("PORTRANGE", &slice)
        .env("PORTRANGE_STATS", &stats)
        .env_remove("PORTRANGE_SKIP")
        .env_remove("PORTRANGE_STRATEGY")
        .output()
        .map_err(|e| format!("cannot run the demo client: {e}"))?;
    let shimmed = rec.wait(n);
    let out_plain = Command::new(&exe)
        .args(["demo-client", &rec.addr.to_string(), "1"])
        .env_remove("LD_PRELOAD")
        .env_remove("PORTRANGE")
        .output()
        .map_err(|e| format!("cannot run the demo client: {e}"))?;
    let all = rec.wait(n + 1);
    let strategy = std::fs::read_to_string(&stats)
        .ok()
        .and_then(|s| {
            s.split("\"strategy\":\"").nth(1).map(|r| r.split('"').next().unwrap_or("").to_string())
        })
        .unwrap_or_else(|| "?".into());
    let _ = std::fs::remove_file(&stats);

    let slice_ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let in_slice = |a: &SocketAddr| a.ip() == slice_ip && (lo..=hi).contains(&a.port());
    println!("  #  under shim  the listener saw  in slice");
    for (i, a) in all.iter().enumerate() {
        let shim = if i < shimmed.len() { "yes" } else { "no " };
        println!(
            "  {}  {shim}         {:<17} {}",
            i + 1,
            a.to_string(),
            if in_slice(a) { "yes" } else { "no" }
        );
    }
    println!();
    for o in [&out, &out_plain] {
        let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        if !text.trim().is_empty() {
            println!("  client said: {}", text.trim());
        }
    }
    let good = shimmed.len() == n && shimmed.iter().all(in_slice);
    if good {
        println!("OK: all {n} flows under the shim left from the slice (strategy: {strategy}); the unshimmed one did not.");
        Ok(())
    } else {
        Err(format!("expected {n} flows from {slice}, the listener saw {shimmed:?}"))
    }
}
