//! Running programs under the shim (`Run`) and reading their output (`Output`).

use crate::*;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A program to run, by default with `LD_PRELOAD=<so_path()>`. The environment is inherited
/// except every `PORTRANGE*` variable (and LD_PRELOAD), which the test sets itself.
pub struct Run {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    preload: bool,
    timeout: Duration,
    _tmp: Option<TempDir>,
}

/// The result of a [`Run`].
pub struct Output {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

/// One line `RESULT <proto> <host> <port> ok <local-ip> <local-port>` or
/// `RESULT <proto> <host> <port> err <errno>` printed by [`PY_CONNECT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectResult {
    pub proto: String,
    pub dst: String,
    /// `Ok(local address)` or `Err(errno)`.
    pub result: Result<SocketAddr, i32>,
}

impl Run {
    pub fn new(program: impl AsRef<OsStr>) -> Run {
        Run {
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            envs: Vec::new(),
            preload: true,
            timeout: Duration::from_secs(30),
            _tmp: None,
        }
    }
    /// `python3 -c CODE` (append script arguments with [`Run::arg`]). Runs the real
    /// interpreter ([`python3`]), not a wrapper script such as a pyenv shim, so that every
    /// shim log line comes from the one process under test.
    pub fn python(code: &str) -> Run {
        Run::new(python3()).arg("-c").arg(code)
    }
    /// `node -e CODE`; further arguments appear in `process.argv[1..]`.
    pub fn node(code: &str) -> Run {
        Run::new("node").arg("-e").arg(code)
    }
    /// Write `source` to `<tmp>/<class>.java` and run `java <tmp>/<class>.java` (single-file
    /// source launcher). Timeout 90 s.
    pub fn java(class: &str, source: &str) -> Run {
        let dir = TempDir::new("java");
        let file = dir.path().join(format!("{class}.java"));
        std::fs::write(&file, source).expect("write java source");
        let mut r = Run::new("java").arg(file).timeout(Duration::from_secs(90));
        r._tmp = Some(dir);
        r
    }
    /// The `portrange` command line ([`bin_path`]): no LD_PRELOAD, `PORTRANGE_SO` set to the
    /// library under test ([`so_path`]).
    pub fn portrange() -> Run {
        Run::new(bin_path()).no_preload().env("PORTRANGE_SO", so_path())
    }
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Run {
        self.args.push(a.as_ref().to_os_string());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, a: I) -> Run {
        self.args.extend(a.into_iter().map(|s| s.as_ref().to_os_string()));
        self
    }
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Run {
        self.envs.push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }
    /// `PORTRANGE=<spec>`.
    pub fn slice(self, spec: &str) -> Run {
        self.env("PORTRANGE", spec)
    }
    /// Run without LD_PRELOAD (baseline, or the `portrange` CLI).
    pub fn no_preload(mut self) -> Run {
        self.preload = false;
        self
    }
    pub fn timeout(mut self, t: Duration) -> Run {
        self.timeout = t;
        self
    }

    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.envs {
            s.push_str(&format!("{}={:?} ", k.to_string_lossy(), v.to_string_lossy()));
        }
        if self.preload {
            s.push_str("LD_PRELOAD=libportrange.so ");
        }
        s.push_str(&self.program.to_string_lossy());
        for a in &self.args {
            let a = a.to_string_lossy();
            if a.contains('\n') {
                s.push_str(" <script>");
            } else {
                s.push_str(&format!(" {a}"));
            }
        }
        s
    }

    /// Run to completion (killing the whole process group after the timeout).
    pub fn run(self) -> Output {
        let what = self.describe();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PORTRANGE") {
                cmd.env_remove(&k);
            }
        }
        cmd.env_remove("LD_PRELOAD");
        if self.preload {
            cmd.env("LD_PRELOAD", so_path());
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        let pid = child.id() as libc::pid_t;
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let t_out = thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let t_err = thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        let deadline = Instant::now() + self.timeout;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait().expect("wait") {
                Some(s) => break s,
                None if Instant::now() >= deadline => {
                    timed_out = true;
                    // SAFETY: kill the process group we created for this child.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    break child.wait().expect("wait");
                }
                None => thread::sleep(Duration::from_millis(10)),
            }
        };
        // Descendants that outlived the child may still hold the pipes: kill them too.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
        let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
        Output { what, status, stdout, stderr, timed_out }
    }
}

impl Output {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    /// Everything about the run, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "command: {}\nstatus: {}{}\n--- stdout ---\n{}--- stderr ---\n{}--------------",
            self.what,
            self.status,
            if self.timed_out { " (TIMED OUT, killed)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
    #[track_caller]
    pub fn assert_success(&self) -> &Output {
        assert!(self.success(), "program failed:\n{}", self.dump());
        assert!(self.status.signal().is_none(), "killed by a signal:\n{}", self.dump());
        self
    }
    /// stderr lines written by the shim (starting with `portrange`).
    pub fn portrange_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.starts_with("portrange")).collect()
    }
    /// The rest of the first stdout line starting with `key ` (or equal to `key`).
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields(key).into_iter().next()
    }
    /// The rest of every stdout line starting with `key `.
    pub fn fields(&self, key: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter_map(|l| {
                if l == key {
                    Some("")
                } else {
                    l.strip_prefix(key).and_then(|r| r.strip_prefix(' '))
                }
            })
            .collect()
    }
    #[track_caller]
    pub fn expect_field(&self, key: &str) -> &str {
        self.field(key).unwrap_or_else(|| panic!("no `{key}` line in stdout:\n{}", self.dump()))
    }
    /// The `IP PORT` value of the first stdout line `key IP PORT` (as printed by
    /// `print("key %s %d" % s.getsockname())`), as an address.
    #[track_caller]
    pub fn expect_addr(&self, key: &str) -> SocketAddr {
        let v = self.expect_field(key);
        let parsed = v
            .split_once(' ')
            .and_then(|(ip, port)| Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?)));
        parsed.unwrap_or_else(|| panic!("bad `{key}` line {v:?}\n{}", self.dump()))
    }
    /// The RESULT lines of [`PY_CONNECT`].
    pub fn connects(&self) -> Vec<ConnectResult> {
        self.fields("RESULT").into_iter().map(|r| self.parse_result(r)).collect()
    }

    fn parse_result(&self, r: &str) -> ConnectResult {
        fn bad<T>(r: &str, o: &Output) -> T {
            panic!("bad RESULT line {r:?}:\n{}", o.dump())
        }
        let w: Vec<&str> = r.split_whitespace().collect();
        if w.len() < 5 {
            return bad(r, self);
        }
        let result = match (w[3], w.len()) {
            ("ok", 6) => {
                let ip: IpAddr = w[4].parse().unwrap_or_else(|_| bad(r, self));
                Ok(SocketAddr::new(ip, w[5].parse().unwrap_or_else(|_| bad(r, self))))
            }
            ("err", 5) => Err(w[4].parse().unwrap_or_else(|_| bad(r, self))),
            _ => bad(r, self),
        };
        ConnectResult { proto: w[0].to_string(), dst: format!("{} {}", w[1], w[2]), result }
    }
}

/// A python3 client: arguments are triples `PROTO HOST PORT` (PROTO `tcp` or `udp`); each is a
/// new socket (AF_INET6 when HOST contains `:`) connected to HOST:PORT; prints one
/// `RESULT` line per triple (see [`ConnectResult`]). TCP sockets stay open until the script
/// exits; a UDP socket sends one datagram after connecting.
/// Options before the triples: `--http` sends `GET /` on each TCP connection and reads the
/// reply to EOF before going on (so the server closes first and the client port leaves no
/// TIME_WAIT); `--close` closes each socket right away.
pub const PY_CONNECT: &str = r#"
import errno, socket, sys
args = sys.argv[1:]
http = close = False
while args and args[0].startswith("--"):
    o = args.pop(0)
    if o == "--http": http = True
    elif o == "--close": close = True
    else: raise SystemExit("unknown option " + o)
held = []
for i in range(0, len(args), 3):
    proto, host, port = args[i], args[i + 1], int(args[i + 2])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    typ = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(fam, typ)
    try:
        s.connect((host, port))
        name = s.getsockname()
        if proto == "udp":
            s.send(b"x")
        elif http:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            while s.recv(4096):
                pass
        print("RESULT %s %s %d ok %s %d" % (proto, host, port, name[0], name[1]), flush=True)
        if close:
            s.close()
        else:
            held.append(s)
    except OSError as e:
        print("RESULT %s %s %d err %d" % (proto, host, port, e.errno or -1), flush=True)
        s.close()
"#;

/// Run [`PY_CONNECT`] with the given arguments under the shim.
pub fn py_connect(args: &[&str]) -> Run {
    Run::python(PY_CONNECT).args(args)
}

/// A python prologue for scripts that print their own RESULT lines (see [`ConnectResult`]):
/// `tcp_result(s, host, port)` connects the TCP socket `s` to `(host, port)` and returns
/// `(line, ok)`, the RESULT line to print and whether it connected. A socket that failed is
/// closed; one that connected is the caller's to hold or close. Run such a script with
/// [`py_tcp_result`].
pub const PY_TCP_RESULT: &str = r#"
def tcp_result(s, host, port):
    try:
        s.connect((host, port))
    except OSError as e:
        s.close()
        return "RESULT tcp %s %d err %d" % (host, port, e.errno or -1), False
    name = s.getsockname()
    return "RESULT tcp %s %d ok %s %d" % (host, port, name[0], name[1]), True
"#;

/// `python3 -c` with [`PY_TCP_RESULT`] and then `code`, under the shim.
pub fn py_tcp_result(code: &str) -> Run {
    Run::python(&format!("{PY_TCP_RESULT}{code}"))
}

/// [`PY_CONNECT`] making, for each `(recorder, n)` in turn, `n` TCP connections to that
/// recorder (held open until the script exits).
pub fn py_connect_tcp(targets: &[(&Recorder, usize)]) -> Run {
    let mut args: Vec<String> = Vec::new();
    for (rec, n) in targets {
        for _ in 0..*n {
            args.extend(["tcp".to_string(), rec.ip(), rec.port().to_string()]);
        }
    }
    Run::python(PY_CONNECT).args(args)
}

// ---------------------------------------------------------------------------------------------
