//! The differential suite (issue 9): the same numbered scenarios of socket calls
//! (`probe/probe.c`) run without the shim and with it under each TCP strategy, each run in
//! network namespaces of its own, and their outputs compared line by line. Every difference
//! allowed is a row of the README's table "What the shim changes that a program can observe"
//! (read from README.md itself, so the table and the test cannot drift); anything else fails.
//!
//! The listener side records where every flow came from: a packet capture on the server's end
//! of the veth. With the shim, a TCP or UDP packet from the client that leaves from outside the
//! slice (and outside the ports the probe binds itself) fails the suite.
//!
//! Scenarios that expose a bug not fixed yet are listed in [`KNOWN`]: they are printed, their
//! differences do not fail the suite, and a listed scenario that shows no difference fails it
//! (so the list only shrinks).

use cdylib_tests::{require_programs, so_path, workspace_root, TempDir, VethPair};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const PROBE_C: &str = include_str!("../probe/probe.c");
const DEEP_C: &str = include_str!("../probe/deep.c");

const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const SERVER4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 0x10);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);
const SLICE: (u16, u16) = (40000, 40199);
/// Ports the probe binds itself (7000 + scenario): the program's choice, left alone.
const OWN_PORTS: (u16, u16) = (7000, 7999);

/// Scenarios that show a bug not fixed yet: (scenario, what it shows). Shrink it as fixes land.
const KNOWN: &[(u32, &str)] = &[];

/// The scenario that connects to port 0 (its flows cannot carry their number in the port).
const PORT_ZERO_SCENARIO: u32 = 8;

/// The configurations compared with the run without the shim.
const STRATEGIES: [&str; 3] = ["kernel", "retry", "auto"];
/// The run with the library loaded and `PORTRANGE` unset: every hook passes through (the exec
/// stubs included), so it must match the run without the shim line for line, no row allowed.
const INACTIVE: &str = "inactive";

// ---------------------------------------------------------------------------------------------
// The allowed differences: the README table
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Allowed {
    scenarios: Vec<u32>,
    strategies: Vec<String>,
    without: String,
    with: String,
    row: String,
}

/// The rows of the README table between the `observable-differences` markers that name
/// scenarios: `| 44, 45 | all | `line without` | `line with` | why |`. Rows whose first cell is
/// not a list of numbers document differences the probe does not show.
fn allowed_differences() -> Vec<Allowed> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("read README.md");
    let start = readme
        .find("<!-- observable-differences:begin")
        .expect("README: observable-differences:begin marker");
    let end =
        readme.find("<!-- observable-differences:end").expect("README: observable-differences:end marker");
    let mut out = Vec::new();
    for line in readme[start..end].lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        let Ok(scenarios) =
            cells[0].split(',').map(|n| n.trim().parse::<u32>()).collect::<Result<Vec<u32>, _>>()
        else {
            continue;
        };
        assert!(cells.len() >= 5, "README table row without 5 cells: {line}");
        let code = |c: &str| {
            c.strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .unwrap_or_else(|| panic!("README table: expected `a probe line` in {c:?} of {line}"))
                .to_string()
        };
        assert!(!cells[4].is_empty(), "README table row without a reason: {line}");
        out.push(Allowed {
            scenarios,
            strategies: cells[1].split(',').map(|s| s.trim().to_string()).collect(),
            without: code(cells[2]),
            with: code(cells[3]),
            row: line.to_string(),
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------------

/// Client and server namespaces over a veth (vc / vs), IPv4 and IPv6, deleted on drop.
fn topology() -> VethPair {
    let t = VethPair::new(
        "pdf",
        &[&format!("{CLIENT4}/24"), &format!("{CLIENT6}/64")],
        &[&format!("{SERVER4}/24"), &format!("{SERVER6}/64")],
    );
    t.client_route("203.0.113.0/24").client_route("2001:db8:b::/64");
    t.server_route("198.51.100.0/24").server_route("2001:db8:a::/64");
    t
}

fn enter(name: &str) {
    let path = format!("/run/netns/{name}");
    let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a namespace fd we own; affects only the calling thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!("setns({path}): {}", std::io::Error::last_os_error());
    }
}

/// Start `f` on a thread inside namespace `name`.
fn spawn_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let name = name.to_string();
    thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            enter(&name);
            f()
        })
        .expect("spawn netns thread")
}

// ---------------------------------------------------------------------------------------------
// The server side: echo listeners and the packet capture
// ---------------------------------------------------------------------------------------------

/// TCP and UDP echo on [::]:10000+N (dual-stack) for every scenario N (and 10100+N).
fn serve(count: u32, ready: mpsc::Sender<()>, stop: Arc<AtomicBool>) {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for n in (1..=count).chain(101..=100 + count) {
        let a = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 10000 + n as u16);
        let l = TcpListener::bind(a).unwrap_or_else(|e| panic!("listen {a}: {e}"));
        l.set_nonblocking(true).unwrap();
        tcp.push(l);
        let u = UdpSocket::bind(a).unwrap_or_else(|e| panic!("udp bind {a}: {e}"));
        u.set_nonblocking(true).unwrap();
        udp.push(u);
    }
    ready.send(()).unwrap();
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        let mut fds: Vec<libc::pollfd> = tcp
            .iter()
            .map(|l| l.as_raw_fd())
            .chain(udp.iter().map(|u| u.as_raw_fd()))
            .chain(conns.iter().map(|c| c.as_raw_fd()))
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: fds is a valid array of pollfd.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        for l in &tcp {
            while let Ok((s, _)) = l.accept() {
                s.set_nonblocking(true).unwrap();
                conns.push(s);
            }
        }
        for u in &udp {
            while let Ok((n, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(&buf[..n], from);
            }
        }
        conns.retain_mut(|c| loop {
            match c.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    let _ = c.write_all(&buf[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        });
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Flow {
    udp: bool,
    src: SocketAddr,
    dst: SocketAddr,
}

impl Flow {
    /// The scenario a flow belongs to, from its destination port (0: none).
    fn scenario(&self) -> u32 {
        match self.dst.port() {
            0 => PORT_ZERO_SCENARIO,
            p @ 10001..=10099 => u32::from(p) - 10000,
            p @ 10101..=10199 => u32::from(p) - 10100,
            p @ 30001..=30199 => u32::from(p) - 30000,
            _ => 0,
        }
    }
    fn in_slice(&self) -> bool {
        let ip_ok = match self.src.ip() {
            IpAddr::V4(a) => a == CLIENT4,
            IpAddr::V6(a) => a == CLIENT6,
        };
        let p = self.src.port();
        ip_ok && ((SLICE.0..=SLICE.1).contains(&p) || (OWN_PORTS.0..=OWN_PORTS.1).contains(&p))
    }
}

/// Capture every TCP/UDP packet arriving on the server's veth end from elsewhere.
fn sniff(ready: mpsc::Sender<()>, stop: Arc<AtomicBool>) -> BTreeSet<Flow> {
    // SAFETY: plain socket calls on a descriptor we own (closed at the end).
    let fd =
        unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32) };
    assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c"vs".as_ptr()) };
    assert!(ifindex > 0, "no interface vs");
    // SAFETY: all-zero sockaddr_ll, then filled.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll.
    let r = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
    // A busy machine may not schedule this thread for a while: room for every packet of a run,
    // and the kernel's drop counter checked at the end (a gap in the capture could hide a flow).
    let big: libc::c_int = 64 << 20;
    // SAFETY: an int option.
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&big as *const libc::c_int).cast(), 4)
    };
    ready.send(()).unwrap();
    let mut flows = BTreeSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut p, 1, 20) };
        if ready <= 0 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            continue;
        }
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            if let Some(f) = parse_frame(&buf[..n as usize]) {
                if f.src.ip() != IpAddr::V4(SERVER4) && f.src.ip() != IpAddr::V6(SERVER6) {
                    flows.insert(f);
                }
            }
        }
    }
    let mut st = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: PACKET_STATISTICS fills a tpacket_stats of `len` bytes; then our socket is closed.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        );
        libc::close(fd);
    }
    assert_eq!(
        st.tp_drops, 0,
        "the capture on the server side dropped {} packets: it cannot vouch for every flow",
        st.tp_drops
    );
    flows
}

fn parse_frame(b: &[u8]) -> Option<Flow> {
    let ethertype = u16::from_be_bytes([*b.get(12)?, *b.get(13)?]);
    let ip = b.get(14..)?;
    let (proto, src, dst, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            (ip[9], src, dst, ip.get(ihl..)?)
        }
        0x86dd => {
            let a: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (ip[6], IpAddr::V6(a.into()), IpAddr::V6(d.into()), ip.get(40..)?)
        }
        _ => return None,
    };
    if proto != 6 && proto != 17 {
        return None;
    }
    let sport = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
    let dport = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
    Some(Flow { udp: proto == 17, src: SocketAddr::new(src, sport), dst: SocketAddr::new(dst, dport) })
}

// ---------------------------------------------------------------------------------------------
// One run of the probe
// ---------------------------------------------------------------------------------------------

struct Built {
    _dir: TempDir,
    probe: PathBuf,
    deep: PathBuf,
    count: u32,
}

fn build_probe() -> Built {
    let dir = TempDir::new("differential");
    let src = dir.path().join("probe.c");
    let deep_src = dir.path().join("deep.c");
    std::fs::write(&src, PROBE_C).unwrap();
    std::fs::write(&deep_src, DEEP_C).unwrap();
    let probe = dir.path().join("probe");
    let deep = dir.path().join("libdeep.so");
    for args in [
        vec![
            "-O1",
            "-Wall",
            "-Werror",
            "-pthread",
            "-o",
            probe.to_str().unwrap(),
            src.to_str().unwrap(),
            "-ldl",
        ],
        vec![
            "-O1",
            "-Wall",
            "-Werror",
            "-shared",
            "-fPIC",
            "-o",
            deep.to_str().unwrap(),
            deep_src.to_str().unwrap(),
        ],
    ] {
        let out = Command::new("cc").args(&args).output().expect("run cc");
        assert!(out.status.success(), "cc {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = Command::new(&probe).arg("--count").output().expect("run probe --count");
    let count = String::from_utf8_lossy(&out.stdout).trim().parse().expect("probe --count");
    Built { _dir: dir, probe, deep, count }
}

/// What one run showed: per scenario, its probe lines and the shim's log lines; the flows the
/// server side saw.
struct RunResult {
    name: String,
    lines: BTreeMap<u32, Vec<String>>,
    logs: BTreeMap<u32, Vec<String>>,
    flows: BTreeSet<Flow>,
    raw: String,
}

fn run_probe(built: &Built, strategy: Option<&str>) -> RunResult {
    let topo = topology();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let count = built.count;
    let (s1, t1) = (stop.clone(), tx.clone());
    let server = spawn_in(&topo.server, move || serve(count, t1, s1));
    let s2 = stop.clone();
    let sniffer = spawn_in(&topo.server, move || sniff(tx, s2));
    for _ in 0..2 {
        rx.recv_timeout(Duration::from_secs(10)).expect("server side ready");
    }

    let mut cmd = Command::new(&built.probe);
    cmd.arg("--deep").arg(&built.deep).arg("all");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PORTRANGE") {
            cmd.env_remove(&k);
        }
    }
    cmd.env_remove("LD_PRELOAD");
    if strategy == Some(INACTIVE) {
        cmd.env("LD_PRELOAD", so_path());
    } else if let Some(s) = strategy {
        cmd.env("LD_PRELOAD", so_path())
            .env(
                "PORTRANGE",
                format!("{CLIENT4}:{}-{},[{CLIENT6}]:{}-{}", SLICE.0, SLICE.1, SLICE.0, SLICE.1),
            )
            .env("PORTRANGE_STRATEGY", s)
            .env("PORTRANGE_LOG", "warn");
    }
    let raw = spawn_in(&topo.client, move || {
        // stdout and stderr into one pipe: the shim's log lines land between the probe's lines.
        let (mut r, w) = std::io::pipe().expect("pipe");
        cmd.stdin(Stdio::null()).stdout(w.try_clone().expect("pipe")).stderr(w);
        let mut child = cmd.spawn().expect("spawn probe");
        drop(cmd);
        let reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        reader.join().unwrap()
    })
    .join()
    .expect("probe thread");
    thread::sleep(Duration::from_millis(150));
    stop.store(true, Ordering::SeqCst);
    let flows = sniffer.join().expect("sniffer");
    server.join().expect("server");
    drop(topo);

    let mut lines: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut logs: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut at = 0;
    for l in raw.lines() {
        if let Some((n, rest)) = l.strip_prefix('S').and_then(|r| r.split_once(' ')) {
            if let Ok(n) = n.parse::<u32>() {
                at = n;
                lines.entry(n).or_default().push(rest.to_string());
                continue;
            }
        }
        logs.entry(at).or_default().push(l.to_string());
    }
    RunResult { name: strategy.unwrap_or("none").to_string(), lines, logs, flows, raw }
}

// ---------------------------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Verdict {
    /// Unexplained differences: "scenario: without | with".
    diffs: Vec<String>,
    /// Flows outside the slice.
    outside: Vec<Flow>,
    /// ERROR log lines.
    errors: Vec<String>,
}

impl Verdict {
    fn clean(&self) -> bool {
        self.diffs.is_empty() && self.outside.is_empty() && self.errors.is_empty()
    }
}

fn compare(
    base: &[String],
    with: &[String],
    n: u32,
    strategy: &str,
    allowed: &[Allowed],
    used: &mut BTreeSet<usize>,
) -> Vec<String> {
    let mut out = Vec::new();
    let len = base.len().max(with.len());
    for i in 0..len {
        let (b, w) = (base.get(i).map(String::as_str), with.get(i).map(String::as_str));
        if b == w {
            continue;
        }
        let ok = allowed.iter().enumerate().find(|(_, a)| {
            a.scenarios.contains(&n)
                && (a.strategies.iter().any(|s| s == "all" || s == strategy))
                && Some(a.without.as_str()) == b
                && Some(a.with.as_str()) == w
        });
        match ok {
            Some((k, _)) => {
                used.insert(k);
            }
            None => {
                out.push(format!(
                    "line {}: without `{}` | with `{}`",
                    i + 1,
                    b.unwrap_or("(none)"),
                    w.unwrap_or("(none)")
                ));
                // After a missing or extra line, everything else is shifted: one report is enough.
                if base.len() != with.len() {
                    break;
                }
            }
        }
    }
    out
}

#[test]
fn differential() {
    if !require_programs(&["cc", "ip"], "differential") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "differential: needs root (network namespaces)");
        eprintln!("SKIP differential: needs root (network namespaces)");
        return;
    }
    let t0 = Instant::now();
    let built = build_probe();
    assert!(built.count >= 60, "the probe has {} scenarios; at least 60 are required", built.count);
    let allowed = allowed_differences();
    let base = run_probe(&built, None);
    let names: BTreeMap<u32, String> = base
        .lines
        .iter()
        .map(|(n, l)| (*n, l.first().and_then(|h| h.strip_prefix("== ")).unwrap_or("?").to_string()))
        .collect();
    assert_eq!(
        base.lines.len() as u32,
        built.count,
        "the run without the shim must print every scenario\n{}",
        base.raw
    );
    assert!(
        base.flows.iter().any(|f| f.src.ip() == IpAddr::V4(CLIENT4)) && base.flows.iter().any(|f| f.udp),
        "the capture on the server side saw no TCP and UDP flows from the client: {:?}",
        base.flows
    );

    let mut used = BTreeSet::new();
    // verdicts[scenario][strategy]
    let mut verdicts: BTreeMap<u32, BTreeMap<String, Verdict>> = BTreeMap::new();
    let mut runs = Vec::new();
    for s in STRATEGIES.into_iter().chain([INACTIVE]) {
        let r = run_probe(&built, Some(s));
        let inactive = s == INACTIVE;
        for n in 1..=built.count {
            let v = verdicts.entry(n).or_default().entry(s.to_string()).or_default();
            let empty = Vec::new();
            v.diffs = compare(
                base.lines.get(&n).unwrap_or(&empty),
                r.lines.get(&n).unwrap_or(&empty),
                n,
                s,
                if inactive { &[] } else { &allowed },
                &mut used,
            );
            v.errors =
                r.logs.get(&n).into_iter().flatten().filter(|l| l.contains("ERROR")).cloned().collect();
        }
        if inactive {
            runs.push(r);
            continue;
        }
        let inside = r.flows.iter().filter(|f| f.in_slice()).count();
        assert!(inside > 0, "[{s}] no flow at all from inside the slice:\n{}", r.raw);
        for f in r.flows.iter().filter(|f| !f.in_slice()) {
            verdicts.entry(f.scenario()).or_default().entry(s.to_string()).or_default().outside.push(*f);
        }
        runs.push(r);
    }

    // The report.
    let known: BTreeMap<u32, &str> = KNOWN.iter().copied().collect();
    let mut failures = Vec::new();
    let mut report = String::new();
    for (n, per) in &verdicts {
        let name = names.get(n).map(String::as_str).unwrap_or("(flows not attributable to a scenario)");
        let bad: Vec<(&String, &Verdict)> = per.iter().filter(|(_, v)| !v.clean()).collect();
        let is_known = known.contains_key(n);
        if bad.is_empty() {
            if is_known {
                failures.push(format!(
                    "S{n:02} ({name}) is listed in KNOWN but shows no difference under {STRATEGIES:?} (nor {INACTIVE}): remove it from the list"
                ));
            }
            continue;
        }
        let tag = if is_known { "KNOWN" } else { "FAIL" };
        report.push_str(&format!("{tag} S{n:02} {name}\n"));
        if let Some(why) = known.get(n) {
            report.push_str(&format!("      known: {why}\n"));
        }
        for (s, v) in bad {
            for d in &v.diffs {
                report.push_str(&format!("      [{s}] {d}\n"));
            }
            for f in &v.outside {
                report.push_str(&format!(
                    "      [{s}] a {} flow left from {} to {}, outside the slice\n",
                    if f.udp { "UDP" } else { "TCP" },
                    f.src,
                    f.dst
                ));
            }
            for e in &v.errors {
                report.push_str(&format!("      [{s}] shim log: {e}\n"));
            }
        }
        if !is_known {
            failures.push(format!("S{n:02} ({name})"));
        }
    }
    for (k, a) in allowed.iter().enumerate() {
        if !used.contains(&k) {
            failures.push(format!("README table row never seen in any run (stale?): {}", a.row));
        }
    }
    let summary = format!(
        "differential: {} scenarios, runs: none + {STRATEGIES:?} + {INACTIVE}, {} allowed differences in the README table, {} known failures, {:.1} s\n",
        built.count,
        allowed.len(),
        KNOWN.len(),
        t0.elapsed().as_secs_f64()
    );
    // Straight to the test process's stderr (not the captured test output): the known failures
    // show in every run's log, passing or not.
    let _ = std::io::stderr().write_all(format!("{summary}{report}").as_bytes());
    if !failures.is_empty() {
        let dumps: String = std::iter::once(&base)
            .chain(runs.iter())
            .map(|r| format!("===== run: {} =====\n{}", r.name, r.raw))
            .collect();
        panic!("differential: {} failure(s):\n  {}\n\n{dumps}", failures.len(), failures.join("\n  "));
    }
}
