//! `portrange`: run programs with the shim (`exec`), show it at work (`demo`), explain a
//! configuration (`check`), split a range for a fleet (`plan`).

mod check;

use portrange::{config, plan as cli_plan};

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage:
  portrange exec --slice IP:LO-HI [--slice ...] [--skip CIDR ...] [--strategy auto|kernel|retry]
                 [--log LEVEL] [--stats PATH] -- PROGRAM [ARGS...]
  portrange demo
  portrange check [--json] [--slice ... --skip ... --strategy ...]   (default: the PORTRANGE* environment)
  portrange plan --ip IP --ports LO-HI --servers N [--index I] [--exclude PORTS]

The shim is found at $PORTRANGE_SO, or as libportrange.so next to this executable.";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let cmd = args.first().and_then(|a| a.to_str()).unwrap_or("");
    let r = match cmd {
        "exec" => exec(&args[1..]),
        "demo" => demo(),
        "check" => return check(&args[1..]),
        "plan" => plan(&args[1..]),
        "demo-client" => demo_client(&args[1..]),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unknown command {cmd:?}\n{USAGE}")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portrange: {e}");
            ExitCode::from(2)
        }
    }
}

/// The shim library: $PORTRANGE_SO, or libportrange.so beside this executable.
fn so_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PORTRANGE_SO") {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("PORTRANGE_SO={}: no such file", p.display())) };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let p = exe.with_file_name("libportrange.so");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{} not found (set PORTRANGE_SO to the library's path)", p.display()))
    }
}

/// LD_PRELOAD with the shim first, keeping what the environment already preloads.
fn ld_preload(so: &std::path::Path) -> OsString {
    let mut v = OsString::from(so);
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
        v.push(":");
        v.push(old);
    }
    v
}

/// PORTRANGE* variables and their values.
type EnvVars = Vec<(&'static str, String)>;

/// The shim's settings given as flags (`--slice`, `--skip`, `--strategy`, `--log`, `--stats`),
/// each checked, as PORTRANGE* variables; and where the remaining arguments start.
fn shim_flags(args: &[OsString], allow: &[&str]) -> Result<(EnvVars, usize), String> {
    let mut slices = Vec::new();
    let mut skip: Option<Vec<String>> = None;
    let mut env: Vec<(&'static str, String)> = Vec::new();
    let mut i = 0;
    let value = |i: usize, name: &str| -> Result<String, String> {
        args.get(i + 1)
            .and_then(|v| v.to_str())
            .map(str::to_string)
            .ok_or_else(|| format!("{name} needs a value"))
    };
    while i < args.len() {
        let a = args[i].to_str().unwrap_or("");
        match a {
            "--slice" => {
                let v = value(i, a)?;
                config::parse_slices(&v).map_err(|e| format!("--slice {v}: {e}"))?;
                slices.push(v);
            }
            "--skip" => {
                let v = value(i, a)?;
                config::parse_skip(&v).map_err(|e| format!("--skip {v}: {e}"))?;
                skip.get_or_insert_with(Vec::new).push(v);
            }
            "--strategy" => {
                let v = value(i, a)?;
                config::parse_strategy(&v).map_err(|e| format!("--strategy {v}: {e}"))?;
                env.push(("PORTRANGE_STRATEGY", v));
            }
            "--log" => {
                let v = value(i, a)?;
                config::parse_log_filter(&v).map_err(|e| format!("--log {v}: {e}"))?;
                env.push(("PORTRANGE_LOG", v));
            }
            "--stats" => env.push(("PORTRANGE_STATS", value(i, a)?)),
            _ if allow.contains(&a) => {
                i += 1;
                continue;
            }
            _ => break,
        }
        i += 2;
    }
    if !slices.is_empty() {
        let portrange = slices.join(",");
        config::parse_slices(&portrange).map_err(|e| format!("--slice: {e}"))?;
        env.push(("PORTRANGE", portrange));
    }
    if let Some(skip) = skip {
        env.push(("PORTRANGE_SKIP", skip.join(",")));
    }
    Ok((env, i))
}

fn exec(args: &[OsString]) -> Result<(), String> {
    let (env, mut i) = shim_flags(args, &[])?;
    match args.get(i).and_then(|a| a.to_str()) {
        Some("--") => i += 1,
        Some(a) if a.starts_with("--") => {
            return Err(format!("unexpected argument {a:?} (the program goes after `--`)\n{USAGE}"))
        }
        _ => {}
    }
    let program = args.get(i).ok_or_else(|| format!("no program given\n{USAGE}"))?;
    if !env.iter().any(|(k, _)| *k == "PORTRANGE") {
        return Err("at least one --slice is needed".into());
    }
    let so = so_path()?;
    let mut cmd = Command::new(program);
    cmd.args(&args[i + 1..]).env("LD_PRELOAD", ld_preload(&so));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let err = cmd.exec();
    Err(format!("cannot run {}: {err}", program.to_string_lossy()))
}

/// Exit status 0: valid; 1: invalid; 2: bad arguments.
fn check(args: &[OsString]) -> ExitCode {
    let json = args.iter().any(|a| a == "--json");
    let r = shim_flags(args, &["--json"]).and_then(|(env, i)| match args.get(i) {
        Some(a) => Err(format!("unexpected argument {:?}\n{USAGE}", a.to_string_lossy())),
        None => Ok(env),
    });
    match r.and_then(|env| check::check(&check::parsed_from(&env), json)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("portrange: {e}");
            ExitCode::from(2)
        }
    }
}

fn plan(args: &[OsString]) -> Result<(), String> {
    let mut ip = None;
    let mut ports = None;
    let mut servers = None;
    let mut index = None;
    let mut exclude = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_str().unwrap_or("");
        let v =
            args.get(i + 1).and_then(|v| v.to_str()).ok_or_else(|| format!("{a} needs a value\n{USAGE}"))?;
        match a {
            "--ip" => {
                let p: std::net::IpAddr = v
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse()
                    .map_err(|_| format!("--ip {v}: not an IP address"))?;
                ip = Some(p);
            }
            "--ports" => ports = Some(config::parse_port_range(v).map_err(|e| format!("--ports {v}: {e}"))?),
            "--servers" => {
                servers = Some(v.parse::<usize>().map_err(|_| format!("--servers {v}: not a number"))?)
            }
            "--index" => index = Some(v.parse::<usize>().map_err(|_| format!("--index {v}: not a number"))?),
            "--exclude" => {
                exclude.extend(cli_plan::parse_ports(v).map_err(|e| format!("--exclude {v}: {e}"))?)
            }
            _ => return Err(format!("unexpected argument {a:?}\n{USAGE}")),
        }
        i += 2;
    }
    let (Some(ip), Some((lo, hi)), Some(n)) = (ip, ports, servers) else {
        return Err(format!("plan needs --ip, --ports and --servers\n{USAGE}"));
    };
    config::parse_slices(&cli_plan::portrange_value(ip, &[(lo, hi)]))
        .map_err(|e| format!("--ip {ip}: {e}"))?;
    let shares = cli_plan::split(lo, hi, &exclude, n)?;
    match index {
        Some(k) if k >= n => Err(format!("--index {k}: servers are numbered 0 to {}", n - 1)),
        Some(k) => {
            println!("{}", cli_plan::portrange_value(ip, &shares[k]));
            Ok(())
        }
        None => {
            println!("{:>6} {:>6}  PORTRANGE", "server", "ports");
            for (k, r) in shares.iter().enumerate() {
                let count: u32 = r.iter().map(|(a, b)| u32::from(*b) - u32::from(*a) + 1).sum();
                println!("{k:>6} {count:>6}  {}", cli_plan::portrange_value(ip, r));
            }
            Ok(())
        }
    }
}

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
fn demo_client(args: &[OsString]) -> Result<(), String> {
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

fn demo() -> Result<(), String> {
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
