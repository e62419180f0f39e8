//! Configuration errors and warnings, observed from a real program.

use cdylib_tests::*;

/// Connects a v4 TCP socket, an AF_INET6 TCP socket (v4-mapped destination) and a v4 UDP
/// socket to the recorder's port on 127.0.0.1, then exchanges data over AF_UNIX (never in
/// scope). Prints `tcp4 …`, `tcp6 …`, `udp4 …` as `ok` or `err ERRNO`, and `unix ok`.
const PROBE: &str = r#"
import os, socket, sys, tempfile
port = int(sys.argv[1])
def attempt(name, fam, typ, host):
    s = socket.socket(fam, typ)
    try:
        s.connect((host, port))
        if typ == socket.SOCK_STREAM:
            s.sendall(b"x")
        print(name, "ok")
    except OSError as e:
        print(name, "err", e.errno)
    s.close()
attempt("tcp4", socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1")
attempt("tcp6", socket.AF_INET6, socket.SOCK_STREAM, "::ffff:127.0.0.1")
attempt("udp4", socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1")
a, b = socket.socketpair()
a.sendall(b"u")
d = tempfile.mkdtemp()
p = os.path.join(d, "s")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(p)
srv.listen(1)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(p)
print("unix", "ok" if b.recv(1) == b"u" else "bad")
os.unlink(p)
os.rmdir(d)
"#;

struct Case {
    var: &'static str,
    value: &'static str,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for value in [
        "1.2.3.4",
        "[::1:1-2",
        "[::1]1-2",
        "1.2.3.4:20-10",
        "0.0.0.0:1-2",
        "[::]:1-2",
        "224.0.0.1:1-2",
        "255.255.255.255:1-2",
        "1.2.3.4:0-5",
        "1.2.3.4:1-70000",
        "1.2.3.4:x-y",
        "::1:1-2",
        "host.example:1-2",
        "1.2.3.4:10-20,1.2.3.4:15-25",
        "1.2.3.4:1-2,",
        "nonsense",
    ] {
        v.push(Case { var: "PORTRANGE", value });
    }
    for value in ["bogus", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/8,,1.2.3.4", "fe80::/129", "1.2.3.4/-1"] {
        v.push(Case { var: "PORTRANGE_SKIP", value });
    }
    for value in ["fast", "kernel,retry", "userspace"] {
        v.push(Case { var: "PORTRANGE_STRATEGY", value });
    }
    v
}

/// Lines on stderr that name `var` with its value (the spec: "one clear line naming the
/// variable, the bad value and why").
fn lines_naming<'a>(out: &'a Output, var: &str, value: &str) -> Vec<&'a str> {
    let tag = format!("{var}=");
    out.stderr.lines().filter(|l| l.contains(&tag) && l.contains(value.trim())).collect()
}

/// What every run of an invalid case must show whatever PORTRANGE_ON_ERROR says: the program
/// exits 0 and exactly one stderr line names the variable with its value. Returns the problems.
fn named_once_problems(out: &Output, case: &Case) -> Vec<String> {
    let mut bad = Vec::new();
    if !out.success() {
        bad.push("program did not exit 0".to_string());
    }
    let named = lines_naming(out, case.var, case.value);
    if named.len() != 1 {
        bad.push(format!("{} stderr lines name {}= with the value (want exactly 1)", named.len(), case.var));
    }
    bad
}

/// Note a case's problems (if any) in `failures`, labelled and with the run's dump.
fn note_failure(failures: &mut Vec<String>, label: &str, bad: &[String], out: &Output) {
    if !bad.is_empty() {
        failures.push(format!("[{label}] {}\n{}", bad.join("; "), out.dump()));
    }
}

/// Assert no case failed; lists every failing case at once.
#[track_caller]
fn assert_no_failures(failures: &[String]) {
    assert!(failures.is_empty(), "{} failing case(s):\n\n{}", failures.len(), failures.join("\n\n"));
}

fn case_run(case: &Case, on_error: Option<&str>, lo: u16, hi: u16, rec: &Recorder) -> Output {
    let good = slice_spec(SLICE_IP, lo, hi);
    let mut r = Run::python(PROBE).arg(rec.port().to_string());
    r = if case.var == "PORTRANGE" {
        r.env("PORTRANGE", case.value)
    } else {
        r.env("PORTRANGE", &good).env(case.var, case.value)
    };
    if let Some(o) = on_error {
        r = r.env("PORTRANGE_ON_ERROR", o);
    }
    r.run()
}

/// Every invalid PORTRANGE / PORTRANGE_SKIP / PORTRANGE_STRATEGY: no crash, one line naming the
/// variable; under `deny` (default) every inet TCP/UDP connect fails with EPERM and nothing
/// reaches the peer; under `passthrough` the program works as without the shim.
#[test]
fn invalid_configuration_table() {
    let mut failures = Vec::new();
    // Deny runs whose recorder is checked (for connections that must not arrive) once, after
    // one settle for all of them, instead of a settle per run.
    let mut deny_runs = Vec::new();
    for case in cases() {
        let (lo, hi) = slice_ports(10);
        let label = format!("{}={:?}", case.var, case.value);

        // deny (the default), and deny spelled out.
        for on_error in [None, Some("deny")] {
            let rec = Recorder::echo("127.0.0.1");
            let out = case_run(&case, on_error, lo, hi, &rec);
            let mut bad = named_once_problems(&out, &case);
            for key in ["tcp4", "tcp6", "udp4"] {
                let want = format!("err {EPERM}");
                if out.field(key) != Some(want.as_str()) {
                    bad.push(format!("{key}: {:?}, want {want:?} (EPERM)", out.field(key)));
                }
            }
            if out.field("unix") != Some("ok") {
                bad.push(format!("AF_UNIX broken: {:?}", out.field("unix")));
            }
            deny_runs.push((format!("{label}, ON_ERROR={on_error:?}"), bad, out, rec));
        }

        // passthrough: the shim is inactive.
        let rec = Recorder::echo("127.0.0.1");
        let out = case_run(&case, Some("passthrough"), lo, hi, &rec);
        let mut bad = named_once_problems(&out, &case);
        for key in ["tcp4", "tcp6", "udp4", "unix"] {
            if out.field(key) != Some("ok") {
                bad.push(format!("{key}: {:?}, want ok", out.field(key)));
            }
        }
        let peers = rec.wait_for(2, PEER_WAIT);
        if peers.len() != 2 {
            bad.push(format!("peer saw {peers:?}, want the 2 TCP connections"));
        }
        for p in &peers {
            if p.ip().to_string() != "127.0.0.1" || in_slice(*p, SLICE_IP, lo, hi) {
                bad.push(format!("peer saw {p}: passthrough must leave the flow alone"));
            }
        }
        note_failure(&mut failures, &format!("{label}, passthrough"), &bad, &out);
    }
    // Every deny run's program has exited: one settle gives any connection that got through
    // time to be accepted, by each recorder at once.
    std::thread::sleep(std::time::Duration::from_millis(200));
    for (label, mut bad, out, rec) in deny_runs {
        let peers = rec.peers();
        if !peers.is_empty() {
            bad.push(format!("peer saw connections under deny: {peers:?}"));
        }
        note_failure(&mut failures, &label, &bad, &out);
    }
    assert_no_failures(&failures);
}

/// Warn-only variables: the program gets a warning line naming the variable and the shim still
/// places the flow.
#[test]
fn bad_log_stats_on_error_only_warn() {
    let cases = [
        ("PORTRANGE_LOG", "portrange=loud"),
        ("PORTRANGE_LOG", "=debug"),
        ("PORTRANGE_STATS", " "),
        ("PORTRANGE_ON_ERROR", "explode"),
    ];
    let mut failures = Vec::new();
    for (var, value) in cases {
        let rec = Recorder::hold("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let out = py_connect(&["tcp", "127.0.0.1", &rec.port().to_string()])
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env(var, value)
            .run();
        let mut bad = Vec::new();
        if !out.success() {
            bad.push("program did not exit 0".to_string());
        }
        let tag = format!("{var}=");
        let named: Vec<&str> = out.stderr.lines().filter(|l| l.contains(&tag)).collect();
        if named.len() != 1 {
            bad.push(format!("{} stderr lines name {tag} (want exactly 1 warning)", named.len()));
        }
        let results = out.connects();
        if results.len() != 1 || results[0].result.is_err() {
            bad.push(format!("connect: {results:?}"));
        }
        let peers = rec.wait_for(1, PEER_WAIT);
        if peers.len() != 1 || !in_slice(peers[0], SLICE_IP, lo, hi) {
            bad.push(format!("peer saw {peers:?}, want one flow inside {SLICE_IP}:{lo}-{hi}"));
        }
        note_failure(&mut failures, &format!("{var}={value:?}"), &bad, &out);
    }
    assert_no_failures(&failures);
}

/// A bad PORTRANGE_ON_ERROR does not weaken `deny`: with an invalid PORTRANGE, connects still
/// fail with EPERM.
#[test]
fn bad_on_error_keeps_deny() {
    let rec = Recorder::echo("127.0.0.1");
    let out = Run::python(PROBE)
        .arg(rec.port().to_string())
        .env("PORTRANGE", "1.2.3.4:20-10")
        .env("PORTRANGE_ON_ERROR", "explode")
        .run();
    out.assert_success();
    assert_eq!(out.field("tcp4"), Some(format!("err {EPERM}").as_str()), "{}", out.dump());
    assert_eq!(lines_naming(&out, "PORTRANGE_ON_ERROR", "explode").len(), 1, "{}", out.dump());
    assert_eq!(lines_naming(&out, "PORTRANGE", "1.2.3.4:20-10").len(), 1, "{}", out.dump());
    assert!(rec.settle().is_empty());
}

/// PORTRANGE unset, empty or blank: the shim does nothing at all (no output, flows untouched),
/// even with other PORTRANGE_* variables set to garbage.
#[test]
fn unset_or_empty_portrange_does_nothing() {
    type Variant<'a> = (&'a str, Option<&'a str>, &'a [(&'a str, &'a str)]);
    let variants: [Variant; 4] = [
        ("unset", None, &[]),
        ("empty", Some(""), &[]),
        ("blank", Some("   "), &[]),
        ("unset + junk", None, &[("PORTRANGE_SKIP", "bogus"), ("PORTRANGE_STRATEGY", "fast")]),
    ];
    for (label, value, extra) in variants {
        let rec = Recorder::echo("127.0.0.1");
        let mut r = Run::python(PROBE).arg(rec.port().to_string());
        if let Some(v) = value {
            r = r.env("PORTRANGE", v);
        }
        for (k, v) in extra {
            r = r.env(k, v);
        }
        let out = r.run();
        out.assert_success();
        assert_eq!(out.stderr, "", "[{label}] the shim must print nothing\n{}", out.dump());
        for key in ["tcp4", "tcp6", "udp4", "unix"] {
            assert_eq!(out.field(key), Some("ok"), "[{label}] {key}\n{}", out.dump());
        }
        let peers = rec.wait_for(2, PEER_WAIT);
        assert_eq!(peers.len(), 2, "[{label}] {peers:?}");
        for p in peers {
            assert_eq!(p.ip().to_string(), "127.0.0.1", "[{label}] flow moved: {p}");
        }
    }
}

/// RUST_LOG belongs to the host program: RUST_LOG=trace must not change what the shim prints.
#[test]
fn rust_log_is_ignored() {
    let mut counts = Vec::new();
    for rust_log in [None, Some("trace")] {
        let rec = Recorder::hold("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let mut r =
            py_connect(&["tcp", "127.0.0.1", &rec.port().to_string()]).slice(&slice_spec(SLICE_IP, lo, hi));
        if let Some(v) = rust_log {
            r = r.env("RUST_LOG", v);
        }
        let out = r.run();
        out.assert_success();
        let peers = rec.wait_for(1, PEER_WAIT);
        assert_eq!(peers.len(), 1, "{}", out.dump());
        assert_in_slice(peers[0], SLICE_IP, lo, hi);
        counts.push((out.portrange_lines().len(), out.dump()));
    }
    assert_eq!(
        counts[0].0, counts[1].0,
        "RUST_LOG=trace changed the shim's output:\n{}\n{}",
        counts[0].1, counts[1].1
    );
}
