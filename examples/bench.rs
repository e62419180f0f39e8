//! The shim's cost per flow, as ratios measured in one run (machines are noisy; ratios travel).
//!
//!     cargo run --release --example bench [-- --n 2000 --rounds 3]
//!
//! The bench builds the shim itself (`cargo build --release -p portrange -p portrange-shim` into
//! its own target directory) unless `PORTRANGE_SO` names the library to measure.
//!
//! TCP: a native client (this program, re-executed as a child under each configuration) opens N
//! loopback connections in a row against a listener that accepts and closes; the client reads
//! the EOF and closes with RST (SO_LINGER 0), so no TIME_WAIT piles up and the client never
//! outruns the accept queue. For the retry strategy, a "filler" child under the shim first holds
//! 0%, 50% or 90% of the slice's ports towards the same listener, with the sock_diag pre-check
//! on and off; attempts (binds) and look-ups per placed connect come from PORTRANGE_STATS.
//!
//! UDP: socket() + connect() + close() cycles, the median cycle time with and without the shim.
//!
//! Configurations run interleaved, `--rounds` times; each figure is the median over rounds
//! (TCP: the client's CPU time per connect; ratios: each round against that round's no-shim run).
//!
//! Issue 11 (`cost.rs`, also alone with `--cost-only`): hook costs in ns from millions of calls
//! (the hooked symbol against libc's own function, alternating in one process), TCP throughput
//! at 1, 2 and 16 threads, the RSS the shim adds, a TIME_WAIT-heavy run (two namespaces, a
//! 512-port slice, the client closing first, 5 s per strategy), then every issue-11 row with its
//! target.
//!
//! Conntrack (issue 10, as root): the retry strategy's connect cost on a veth pair between
//! network namespaces, with conntrack inactive and active, and with PORTRANGE_CONNTRACK off,
//! auto (reserve+verify) and verify (examples/bench/conntrack.rs; `-- --conntrack-only` runs just
//! these rows).
//!
//! The cgroup BPF placement (issue 14, as root): connect+close with the program attached vs none
//! (examples/bench/cgroup.rs; `-- --cgroup-only`).

// Issue 13's runs live in their own files: the nginx load run (examples/bench/nginx.rs) and
// the strategies' CPU cost under churn (examples/bench/churn.rs).
#[path = "bench/churn.rs"]
mod churn;
#[path = "bench/cost.rs"]
mod cost;
#[path = "bench/nginx.rs"]
mod nginx;
// The conntrack rows (issue 10): examples/bench/conntrack.rs.
#[path = "bench/conntrack.rs"]
mod conntrack;
// The cgroup BPF placement row (issue 14): examples/bench/cgroup.rs.
#[path = "bench/cgroup.rs"]
mod cgroup;

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SLICE_PORTS: u16 = 512;

#[derive(Clone)]
struct Conf {
    name: String,
    shim: bool,
    env: Vec<(&'static str, String)>,
    /// Ports of the slice held by a filler process while measuring.
    fill: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--child") => return child(&args[2], args[3].parse().expect("n")),
        Some("--ct-child") => return conntrack::child(&args[2], args[3].parse().expect("n")),
        Some("--cgroup-child") => return cgroup::child(&args[2], args[3].parse().expect("n")),
        Some("--udp-child") => return udp_child(&args[2], args[3].parse().expect("n")),
        Some("--sendto-child") => return sendto_child(&args[2], args[3].parse().expect("n")),
        Some("--hold") => return hold(&args[2], args[3].parse().expect("n")),
        Some("--hook-child") => return cost::hook_child(&args[2], args[3].parse().expect("n")),
        Some("--threads-child") => {
            return cost::threads_child(&args[2], args[3].parse().expect("n"), args[4].parse().expect("t"))
        }
        Some("--rss-child") => return cost::rss_child(&args[2]),
        Some("--tw-client") => {
            return cost::tw_client(args[2].parse().expect("port"), args[3].parse().expect("s"))
        }
        Some("--churn-server") => return churn::server(args[2].parse().expect("port"), &args[3]),
        Some("--churn-client") => {
            return churn::client(args[2].parse().expect("port"), args[3].parse().expect("n"), &args[4])
        }
        _ => {}
    }
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = flag("--n", 2000);
    let rounds = flag("--rounds", 3);
    let so = match std::env::var_os("PORTRANGE_SO") {
        Some(p) => std::path::PathBuf::from(p),
        None => build_shim(),
    };
    if !so.is_file() {
        eprintln!("bench: {} not found (PORTRANGE_SO)", so.display());
        std::process::exit(2);
    }
    if args.iter().any(|a| a == "--cgroup-only") {
        return cgroup::rows(n, rounds);
    }
    if args.iter().any(|a| a == "--conntrack-only") {
        return conntrack::rows(&so, n, rounds);
    }
    if args.iter().any(|a| a == "--nginx") {
        return nginx::main(&so, rounds, flag("--requests", 20000));
    }
    if args.iter().any(|a| a == "--churn") {
        return churn::main(&so, rounds);
    }

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The sink closes first (FIN); held connections stay in CLOSE_WAIT on the client side, which
    // keeps their 4-tuples taken.
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let udp_server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_addr = udp_server.local_addr().unwrap();

    let (sys_lo, sys_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let v: Vec<u16> = s.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            Some((*v.first()?, *v.get(1)?))
        })
        .unwrap_or((32768, 60999));
    // Slices inside the sysctl range (so the kernel strategy can serve them), clear of the
    // listener's port: a big one for the kernel strategy, a 512-port one for the retry fills.
    let base = if addr.port() > sys_lo + 6000 { sys_lo + 100 } else { sys_hi - 6000 };
    let big = format!("127.0.0.2:{base}-{}", base + 4095);
    let small = format!("127.0.0.2:{}-{}", base + 4200, base + 4200 + SLICE_PORTS - 1);

    let env = |strategy: &str, slice: &str, precheck: bool| {
        vec![
            ("PORTRANGE", slice.to_string()),
            ("PORTRANGE_STRATEGY", strategy.to_string()),
            ("PORTRANGE_PRECHECK", if precheck { "on" } else { "off" }.to_string()),
        ]
    };
    let mut confs = vec![
        Conf { name: "no shim".into(), shim: false, env: vec![], fill: 0 },
        Conf { name: "shim loaded, PORTRANGE unset".into(), shim: true, env: vec![], fill: 0 },
        Conf { name: "kernel strategy".into(), shim: true, env: env("kernel", &big, true), fill: 0 },
    ];
    for fill_pct in [0, 50, 90] {
        for precheck in [true, false] {
            confs.push(Conf {
                name: format!("retry, {fill_pct}% full, pre-check {}", if precheck { "on" } else { "off" }),
                shim: true,
                env: env("retry", &small, precheck),
                fill: SLICE_PORTS as usize * fill_pct / 100,
            });
        }
    }

    println!("portrange bench: {n} TCP connect+close per run, {rounds} rounds, loopback");
    println!("  kernel slice {big}; retry slice {small} ({SLICE_PORTS} ports)");
    let mut results: Vec<Vec<Measured>> = vec![Vec::new(); confs.len()];
    // Each round starts one configuration later: whatever a run leaves behind (TIME_WAITs in the
    // shared tables, a warm cache) does not always favour the same neighbour. (A fixed order read
    // the library loaded with PORTRANGE unset, same syscalls as no library, at 1.22x.)
    for r in 0..rounds {
        for k in 0..confs.len() {
            let i = (k + r) % confs.len();
            results[i].push(run_tcp(&confs[i], &so, addr, n));
        }
    }
    let base_us = median(results[0].iter().map(|m| m.us).collect());
    // Each round's figure against the no-shim run of the same round, then the median.
    let ratio_of = |i: usize| median((0..rounds).map(|r| results[i][r].us / results[0][r].us).collect());
    println!();
    println!(
        "{:<36} {:>11} {:>11} {:>10} {:>9} {:>9}",
        "TCP configuration", "CPU µs/c", "connects/s", "vs no shim", "binds/c", "lookups/c"
    );
    for (i, (c, r)) in confs.iter().zip(&results).enumerate() {
        let us = median(r.iter().map(|m| m.us).collect());
        let per = |f: fn(&Measured) -> f64| -> String {
            if c.env.is_empty() {
                "-".into()
            } else {
                format!("{:.2}", median(r.iter().map(f).collect()))
            }
        };
        println!(
            "{:<36} {:>11.2} {:>11.0} {:>9.2}x {:>9} {:>9}",
            c.name,
            us,
            1e6 / us,
            ratio_of(i),
            per(|m| m.binds),
            per(|m| m.lookups)
        );
    }

    // UDP socket + connect + close.
    let udp_confs = [
        Conf { name: "no shim".into(), shim: false, env: vec![], fill: 0 },
        Conf { name: "shim (exclusive first)".into(), shim: true, env: env("auto", &big, true), fill: 0 },
    ];
    let mut udp: Vec<Vec<f64>> = vec![Vec::new(); udp_confs.len()];
    for r in 0..rounds {
        for k in 0..udp_confs.len() {
            let i = (k + r) % udp_confs.len();
            udp[i].push(run(&udp_confs[i], &so, "--udp-child", udp_addr, n).0);
        }
    }
    let udp_base = median(udp[0].clone());
    println!();
    println!("{:<36} {:>11} {:>10}", "UDP socket+connect+close", "µs median", "vs no shim");
    for (c, r) in udp_confs.iter().zip(&udp) {
        let m = median(r.clone());
        println!("{:<36} {:>11.2} {:>9.2}x", c.name, m, m / udp_base);
    }
    // Unconnected sendto on a socket already placed (the per-datagram path: fstat + a load).
    let mut sends: Vec<Vec<f64>> = vec![Vec::new(); udp_confs.len()];
    for r in 0..rounds {
        for k in 0..udp_confs.len() {
            let i = (k + r) % udp_confs.len();
            sends[i].push(run(&udp_confs[i], &so, "--sendto-child", udp_addr, n * 10).0);
        }
    }
    let send_base = median(sends[0].clone());
    println!();
    println!("{:<36} {:>11} {:>10}", "UDP unconnected sendto (per datagram)", "µs", "vs no shim");
    for (c, r) in udp_confs.iter().zip(&sends) {
        let m = median(r.clone());
        println!("{:<36} {:>11.2} {:>9.2}x", c.name, m, m / send_base);
    }
    drop(udp_server);

    // Issue 11: hook costs, threads, RSS, TIME_WAIT-heavy, and every row with its target.
    let hooks = cost::hooks(&so, rounds, flag("--calls", 2_000_000));
    let threads = cost::threads(&so, rounds, addr, n, &big);
    let rss = cost::rss(&so, addr, &big);
    let tw = cost::timewait(&so);
    let ratio = ratio_of;
    let udp_ratio = median((0..rounds).map(|r| udp[1][r] / udp[0][r]).collect());
    let _ = base_us;
    let mut rows = Vec::new();
    for (kind, _, added) in &hooks {
        let name = match *kind {
            "setsockopt" => "setsockopt on a socket the shim never placed (ns added)",
            "getsockopt" => "getsockopt(SO_REUSEADDR) (ns added)",
            _ => "dup + close (ns added)",
        };
        rows.push(cost::Row::new(name, format!("{added:+.1} ns"), "<= +10 ns", Some(*added <= 10.0)));
    }
    let r = |m: &str, v: f64, t: &str, ok: bool| cost::Row::new(m, format!("{v:.3}x"), t, Some(ok));
    rows.push(r("TCP connect+close, shim loaded, PORTRANGE unset", ratio(1), "<= 1.01x", ratio(1) <= 1.01));
    rows.push(r("TCP connect+close, kernel strategy", ratio(2), "<= 1.05x", ratio(2) <= 1.05));
    rows.push(r(
        "TCP connect+close, retry, empty slice (pre-check on)",
        ratio(3),
        "<= 1.10x",
        ratio(3) <= 1.10,
    ));
    let fill90 = ratio(7) / ratio(3);
    rows.push(r("retry at 90% fill vs its own empty-slice time", fill90, "<= 1.5x", fill90 <= 1.5));
    rows.push(r("UDP socket+connect+close", udp_ratio, "<= 1.4x", udp_ratio <= 1.4));
    for (name, x) in &threads {
        rows.push(r(&format!("scaling vs no shim, {name}"), *x, ">= 0.9x", *x >= 0.9));
    }
    rows.push(cost::Row::new(
        "RSS added by the shim (200 placed connects)",
        format!("{rss:.0} KiB"),
        "-",
        None,
    ));
    for (name, rate, failed) in &tw {
        rows.push(cost::Row::new(
            &format!("TIME_WAIT-heavy, 512 ports, one destination, 5 s: {name}"),
            format!("{rate:.0}/s ({failed} failed)"),
            "-",
            None,
        ));
    }
    cost::print_table(&rows);
    if args.iter().any(|a| a == "--cost-only") {
        return;
    }

    churn::main(&so, rounds);
    nginx::main(&so, rounds, flag("--requests", 20000));
    conntrack::rows(&so, n, rounds);
    cgroup::rows(n, rounds);
}

#[derive(Clone, Copy)]
struct Measured {
    us: f64,
    binds: f64,
    lookups: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn command(c: &Conf, so: &std::path::Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
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
    cmd
}

/// Run a measuring child; returns (its figure, its stats line).
fn run(c: &Conf, so: &std::path::Path, mode: &str, addr: SocketAddr, n: usize) -> (f64, String) {
    let stats = std::env::temp_dir().join(format!("portrange-bench-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&stats);
    let out = command(c, so)
        .args([mode, &addr.to_string(), &n.to_string()])
        .env("PORTRANGE_STATS", &stats)
        .output()
        .expect("run child");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = match text.trim().parse::<f64>() {
        Ok(v) => v,
        Err(_) => panic!("{}: child said {text:?} / {}", c.name, String::from_utf8_lossy(&out.stderr)),
    };
    if !out.stderr.is_empty() {
        eprintln!("{}: {}", c.name, String::from_utf8_lossy(&out.stderr).trim());
    }
    let line = std::fs::read_to_string(&stats).unwrap_or_default();
    let _ = std::fs::remove_file(&stats);
    (v, line)
}

fn counter(line: &str, name: &str) -> f64 {
    line.split(&format!("\"{name}\":"))
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn run_tcp(c: &Conf, so: &std::path::Path, addr: SocketAddr, n: usize) -> Measured {
    let filler: Option<Child> = (c.fill > 0).then(|| {
        let mut f = command(c, so)
            .args(["--hold", &addr.to_string(), &c.fill.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("filler");
        let mut line = String::new();
        std::io::BufReader::new(f.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("held {}", c.fill), "{}: filler", c.name);
        f
    });
    let (us, stats) = run(c, so, "--child", addr, n);
    if let Some(mut f) = filler {
        drop(f.stdin.take());
        let _ = f.wait();
    }
    let placed = counter(&stats, "placed_tcp_kernel") + counter(&stats, "placed_tcp_retry");
    let per = |x: f64| if placed > 0.0 { x / placed } else { 0.0 };
    Measured { us, binds: per(counter(&stats, "attempts")), lookups: per(counter(&stats, "lookups")) }
}

/// Filler: hold N connections (placed by the shim) until stdin closes.
fn hold(addr: &str, n: usize) {
    let addr: SocketAddr = addr.parse().unwrap();
    let held: Vec<_> = (0..n).filter_map(|_| std::net::TcpStream::connect(addr).ok()).collect();
    println!("held {}", held.len());
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read(&mut [0u8; 1]);
}

fn cpu_us() -> f64 {
    // SAFETY: getrusage fills a zeroed rusage.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let t = |v: libc::timeval| v.tv_sec as f64 * 1e6 + v.tv_usec as f64;
    t(r.ru_utime) + t(r.ru_stime)
}

/// Child: N connect + read EOF + close(RST); prints CPU µs per connect.
fn child(addr: &str, n: usize) {
    let addr: SocketAddr = addr.parse().unwrap();
    for _ in 0..20 {
        let _ = std::net::TcpStream::connect(addr).map(|s| set_linger0(s.as_raw_fd()));
    }
    let cpu0 = cpu_us();
    let mut failed = std::collections::BTreeMap::new();
    for _ in 0..n {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                let _ = s.read(&mut [0u8; 16]);
                set_linger0(s.as_raw_fd());
            }
            Err(e) => *failed.entry(e.to_string()).or_insert(0) += 1,
        }
    }
    // CPU time (user + sys) of this client: stable on a loaded machine, where wall time is not,
    // and it is where the shim's work shows.
    let us = (cpu_us() - cpu0) / n as f64;
    if !failed.is_empty() {
        eprintln!("connects failed: {failed:?}");
    }
    println!("{us}");
}

/// UDP child: N socket+connect+close cycles; prints the median cycle in µs.
fn udp_child(addr: &str, n: usize) {
    let addr: SocketAddr = addr.parse().unwrap();
    let std::net::SocketAddr::V4(a) = addr else { panic!("v4") };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let mut times = Vec::with_capacity(n);
    let mut failed = 0;
    for i in 0..n + 50 {
        let t = Instant::now();
        // SAFETY: plain socket calls on a socket we own.
        let ok = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            let r = libc::connect(fd, (&sin as *const libc::sockaddr_in).cast(), 16);
            libc::close(fd);
            r == 0
        };
        if i >= 50 {
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        failed += usize::from(!ok);
    }
    if failed > 0 {
        eprintln!("{failed} UDP connects failed");
    }
    println!("{}", median(times));
}

/// sendto child: one unconnected socket, N datagrams to ADDR; prints µs per sendto.
fn sendto_child(addr: &str, n: usize) {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    s.send_to(b"warm-up", addr).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        let _ = s.send_to(b"0123456789abcdef", addr);
    }
    println!("{}", t.elapsed().as_secs_f64() * 1e6 / n as f64);
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

/// Builds the shim this bench measures (and the `portrange` launcher the cgroup row runs), into the target directory the bench itself runs from,
/// and returns its path. `cargo build --workspace --examples` does not rebuild the cdylib, so
/// loading `release/libportrange.so` as found measured a stale library more than once; cargo
/// decides here whether it is up to date.
fn build_shim() -> std::path::PathBuf {
    // <target>/release/examples/bench → <target>/release
    let exe = std::env::current_exe().expect("current_exe");
    let release = exe.parent().and_then(|d| d.parent()).expect("bench runs from <target>/release/examples");
    let target = release.parent().expect("<target>/release has a parent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    eprintln!(
        "bench: cargo build --release -p portrange -p portrange-shim --target-dir {}",
        target.display()
    );
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "portrange", "-p", "portrange-shim", "--target-dir"])
        .arg(target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => release.join("libportrange.so"),
        Ok(s) => {
            eprintln!("bench: building the shim failed ({s}); set PORTRANGE_SO to measure a given library");
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("bench: cannot run {cargo:?} ({e}); set PORTRANGE_SO to measure a given library");
            std::process::exit(2);
        }
    }
}
