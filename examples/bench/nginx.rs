//! The nginx load run (issue 13): a reverse proxy under the shim with a 64-port slice and one
//! upstream, no upstream keepalive (the proxy closes first, so each upstream 4-tuple goes
//! through TIME_WAIT), `ab -n 20000 -c 50` against it. Two private network namespaces joined by
//! a veth pair, real addresses (proxy 198.51.100.10, upstream 203.0.113.1, an nginx returning
//! a constant), tcp_tw_reuse=1 in the proxy's namespace (where `auto` could pick the kernel
//! strategy). Rows: failed requests (ab's non-2xx + failed) and requests/s against nginx without
//! the shim, interleaved per round.
//!
//!     cargo run --release --example bench -- --nginx [--rounds 3] [--requests 20000]
//!
//! Needs root, `ip`, `nginx` and `ab` (apache2-utils); prints a skip line otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLIENT_IP: &str = "198.51.100.10";
const SERVER_IP: &str = "203.0.113.1";
const SLICE: &str = "198.51.100.10:40000-40063";

struct Ns(Vec<String>);

impl Drop for Ns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).stdin(Stdio::null()).status();
    assert!(st.is_ok_and(|s| s.success()), "{args:?} failed");
}

fn which(p: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(p))
        .find(|f| f.is_file())
}

fn nginx_conf(dir: &Path, listen: &str, body: &str) -> PathBuf {
    for d in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = std::fs::create_dir_all(dir.join(d));
    }
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root root;\nerror_log {d}/error.log;\n\
         pid {d}/nginx.pid;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n\
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  server {{\n    listen {listen};\n    \
         location / {{ {body} }}\n  }}\n}}\n"
    );
    let p = dir.join("nginx.conf");
    std::fs::write(&p, conf).unwrap();
    p
}

fn start_nginx(nginx: &Path, ns: &str, dir: &Path, conf: &Path, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(nginx).arg("-p").arg(dir).arg("-c").arg(conf);
    cmd.env_remove("LD_PRELOAD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap();
    // Wait for the pid file (nginx is listening by then).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("nginx.pid").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    child
}

/// SIGQUIT (graceful: the worker writes its PORTRANGE_STATS line) and reap.
fn stop_nginx(mut child: Child, dir: &Path) {
    if let Some(pid) = std::fs::read_to_string(dir.join("nginx.pid")).ok().and_then(|s| s.trim().parse().ok())
    {
        // SAFETY: a signal to the nginx master we started.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

struct Row {
    name: &'static str,
    env: Vec<(&'static str, String)>,
}

#[derive(Clone, Copy, Default)]
struct Got {
    rps: f64,
    failed: u64,
    complete: u64,
}

fn ab_field(out: &str, key: &str) -> Option<f64> {
    out.lines().find_map(|l| l.strip_prefix(key)).and_then(|r| r.split_whitespace().next()?.parse().ok())
}

/// The load run. `so`: the library; `rounds` interleaved rounds; `requests` per run.
pub fn main(so: &Path, rounds: usize, requests: usize) {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let (Some(nginx), Some(ab), true, Some(_)) = (which("nginx"), which("ab"), root, which("ip")) else {
        println!("\nnginx load run: SKIPPED (needs root, ip, nginx and ab from apache2-utils)");
        return;
    };
    let tag = std::process::id();
    let (c, s) = (format!("bnc-{tag}"), format!("bns-{tag}"));
    let _ns = Ns(vec![c.clone(), s.clone()]);
    sh(&["ip", "netns", "add", &c]);
    sh(&["ip", "netns", "add", &s]);
    sh(&["ip", "-n", &c, "link", "add", "vc", "type", "veth", "peer", "name", "vs", "netns", &s]);
    sh(&["ip", "-n", &c, "addr", "add", &format!("{CLIENT_IP}/24"), "dev", "vc"]);
    sh(&["ip", "-n", &s, "addr", "add", &format!("{SERVER_IP}/24"), "dev", "vs"]);
    for (ns, dev) in [(&c, "vc"), (&s, "vs")] {
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    sh(&["ip", "-n", &c, "route", "add", "203.0.113.0/24", "dev", "vc"]);
    sh(&["ip", "-n", &s, "route", "add", "198.51.100.0/24", "dev", "vs"]);
    sh(&["ip", "netns", "exec", &c, "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"]);

    let tmp = std::env::temp_dir().join(format!("portrange-bench-nginx-{tag}"));
    let up_dir = tmp.join("upstream");
    std::fs::create_dir_all(&up_dir).unwrap();
    let up_conf = nginx_conf(&up_dir, &format!("{SERVER_IP}:8080"), "return 200 \"ok\\n\";");
    let upstream = start_nginx(&nginx, &s, &up_dir, &up_conf, &[]);

    let shim = |strategy: &str| {
        vec![
            ("LD_PRELOAD", so.display().to_string()),
            ("PORTRANGE", SLICE.to_string()),
            ("PORTRANGE_STRATEGY", strategy.to_string()),
        ]
    };
    let rows = [
        Row { name: "no shim", env: vec![] },
        Row { name: "auto", env: shim("auto") },
        Row { name: "kernel", env: shim("kernel") },
        Row { name: "retry", env: shim("retry") },
    ];
    let mut got: Vec<Vec<Got>> = vec![Vec::new(); rows.len()];
    let mut stats: Vec<String> = vec![String::new(); rows.len()];
    for _ in 0..rounds {
        for (i, row) in rows.iter().enumerate() {
            let dir = tmp.join(format!("proxy-{i}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let conf = nginx_conf(
                &dir,
                "127.0.0.1:8000",
                &format!(
                    // HTTP/1.1 without "Connection: close" and no upstream keepalive pool: the
                    // upstream keeps each connection open, the proxy closes it after the response
                    // (client side first), so every upstream 4-tuple goes through TIME_WAIT here.
                    "proxy_pass http://{SERVER_IP}:8080; proxy_http_version 1.1; \
                 proxy_set_header Connection \"\";"
                ),
            );
            let mut env = row.env.clone();
            let stats_path = dir.join("stats.jsonl");
            if !env.is_empty() {
                env.push(("PORTRANGE_STATS", stats_path.display().to_string()));
            }
            let proxy = start_nginx(&nginx, &c, &dir, &conf, &env);
            let out = Command::new("ip")
                .args(["netns", "exec", &c])
                .arg(&ab)
                .args(["-q", "-n", &requests.to_string(), "-c", "50", "http://127.0.0.1:8000/"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            stop_nginx(proxy, &dir);
            let text = String::from_utf8_lossy(&out.stdout);
            // A 502 counts in both of ab's lines (its body length differs too): the larger one.
            let failed = ab_field(&text, "Failed requests:")
                .unwrap_or(0.0)
                .max(ab_field(&text, "Non-2xx responses:").unwrap_or(0.0));
            got[i].push(Got {
                rps: ab_field(&text, "Requests per second:").unwrap_or(0.0),
                failed: failed as u64,
                complete: ab_field(&text, "Complete requests:").unwrap_or(0.0) as u64,
            });
            if let Ok(s) = std::fs::read_to_string(&stats_path) {
                stats[i].push_str(&s);
            }
            // Let this run's TIME_WAITs age out of the kernel's 1-second window.
            std::thread::sleep(Duration::from_millis(1500));
        }
    }
    stop_nginx(upstream, &up_dir);
    let _ = std::fs::remove_dir_all(&tmp);

    let med = |v: Vec<f64>| -> f64 {
        let mut v = v;
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let base = med(got[0].iter().map(|g| g.rps).collect());
    println!();
    println!(
        "nginx reverse proxy, slice {SLICE} (64 ports), one upstream, no keepalive, tcp_tw_reuse=1, \
         ab -n {requests} -c 50, {rounds} rounds"
    );
    println!("{:<12} {:>14} {:>12} {:>10}  placements", "proxy", "failed (max)", "requests/s", "vs no shim");
    for (i, row) in rows.iter().enumerate() {
        let rps = med(got[i].iter().map(|g| g.rps).collect());
        let failed =
            got[i].iter().map(|g| g.failed + (requests as u64 - g.complete.min(requests as u64))).max();
        let counters =
            ["placed_tcp_kernel", "placed_tcp_retry", "kernel_fallbacks", "closing_waits", "exhausted"]
                .iter()
                .filter_map(|k| {
                    // Summed over every process (master, worker) of every round.
                    let v: u64 = stats[i]
                        .split(&format!("\"{k}\":"))
                        .skip(1)
                        .filter_map(|r| r.split([',', '}']).next()?.parse::<u64>().ok())
                        .sum();
                    (v != 0).then(|| format!("{k}={v}"))
                })
                .collect::<Vec<_>>()
                .join(" ");
        println!(
            "{:<12} {:>14} {:>12.0} {:>9.2}x  {}",
            row.name,
            failed.unwrap_or(0),
            rps,
            rps / base,
            counters
        );
    }
}
