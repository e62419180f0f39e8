//! TCP sockets known from their birth (issue 11): socket() in this process records a TCP
//! socket's protocol and family, and that nothing has touched its address yet, so its connect
//! is placed without a look (no getsockopt(SO_PROTOCOL), no getsockname). Whatever touches the
//! socket — a bind or listen through the hooks, a dup, or calls no hook sees (syscall()) — must
//! leave the outcome exactly as a look would have made it.

use cdylib_tests::*;
use std::net::SocketAddr;

/// Not a slice IP: a program's own choice, left alone.
const OTHER_IP: &str = "127.0.0.5";

struct Case {
    ret: i32,
    errno: i32,
    local: SocketAddr,
    same: bool,
    listening: bool,
    reuseaddr: bool,
}

fn cases(out: &Output) -> std::collections::BTreeMap<String, Case> {
    out.fields("CASE")
        .into_iter()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let c = Case {
                ret: w[1].parse().unwrap(),
                errno: w[2].parse().unwrap(),
                local: SocketAddr::new(w[3].parse().unwrap(), w[4].parse().unwrap()),
                same: w[5] == "1",
                listening: w[6] == "1",
                reuseaddr: w[7] == "1",
            };
            (w[0].to_string(), c)
        })
        .collect()
}

/// Each way of touching a socket born here, under each strategy, against the same program
/// without the shim: a bind through syscall() or by a fork child (found by the placement's own
/// bind: EINVAL), an IP-only bind (IP_BIND_ADDRESS_NO_PORT) through the hook and through a dup
/// (no EINVAL: only the hooks can tell), and listen() through the hook and through syscall(). The socket the
/// program connects is never swapped; a program's bind is left alone; a listener stays one.
#[test]
fn sockets_touched_after_birth_are_looked_at() {
    let Some(exe) = compile_c("birth", include_str!("../c/birth.c")) else { return };
    let rec = Recorder::start("127.0.0.1", Mode::Hold);
    let args = |r: Run| r.args(["127.0.0.1".to_string(), rec.port().to_string(), OTHER_IP.to_string()]);
    let base = args(Run::new(&exe).no_preload()).run();
    base.assert_success();
    let base = cases(&base);
    let mut seen = 0;
    for strategy in tcp_strategies() {
        let (lo, hi) = slice_ports(8);
        let out = args(Run::new(&exe))
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        let got = cases(&out);
        let ctx = |name: &str| format!("[{strategy}] case {name}\n{}", out.dump());
        assert_eq!(got.len(), 7, "{}", ctx("count"));
        let fresh = &got["fresh"];
        assert_eq!(fresh.ret, 0, "{}", ctx("fresh"));
        assert!(in_slice(fresh.local, SLICE_IP, lo, hi), "{}", ctx("fresh"));
        for name in ["sysbind", "noport", "dupnoport", "forkbind"] {
            let c = &got[name];
            assert_eq!((c.ret, c.errno), (0, 0), "{}", ctx(name));
            assert_eq!(c.local.ip().to_string(), OTHER_IP, "the program's bind is left alone: {}", ctx(name));
            assert!(c.same, "the program's socket was swapped: {}", ctx(name));
        }
        // The fork child's SO_REUSEADDR=1 on the shared socket: the kernel strategy sets nothing
        // but IP_BIND_ADDRESS_NO_PORT before its bind, and puts back only that. (The explicit-bind
        // searches set SO_REUSEADDR before their bind and put back the value this process knows:
        // the child's is lost there, a known limit.)
        assert!(base["forkbind"].reuseaddr, "without the shim\n{}", out.dump());
        if strategy == "kernel" {
            assert!(got["forkbind"].reuseaddr, "the child's SO_REUSEADDR is kept: {}", ctx("forkbind"));
        }
        for name in ["listen", "syslisten"] {
            let (c, b) = (&got[name], &base[name]);
            assert_eq!((c.ret, c.errno), (b.ret, b.errno), "the kernel's answer: {}", ctx(name));
            assert!(c.same && c.listening, "the listener is kept: {}", ctx(name));
        }
        seen += 5;
        let peers = rec.wait_for(seen, PEER_WAIT);
        for name in ["fresh", "sysbind", "noport", "dupnoport", "forkbind"] {
            assert!(
                peers.contains(&got[name].local),
                "the peer never saw {name}'s {:?}: {peers:?}",
                got[name].local
            );
        }
    }
}

/// The point of the birth record: between socket() and the connect that places it, the shim
/// asks the kernel neither the protocol (getsockopt SO_PROTOCOL) nor the address (getsockname)
/// of a TCP socket it saw born (strace of the program's first case).
#[test]
fn a_socket_born_here_is_placed_without_a_look() {
    require!("strace");
    let Some(exe) = compile_c("birth", include_str!("../c/birth.c")) else { return };
    let rec = Recorder::start("127.0.0.1", Mode::Hold);
    for strategy in tcp_strategies() {
        let (lo, hi) = slice_ports(8);
        let tmp = TempDir::new("birth-strace");
        let log = tmp.path().join("strace");
        let out = Run::new("strace")
            .args(["-f", "-e", "trace=socket,getsockopt,getsockname,bind,connect,process_vm_readv", "-o"])
            .arg(&log)
            .arg(&exe)
            .args(["127.0.0.1".to_string(), rec.port().to_string(), OTHER_IP.to_string()])
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        let fresh = cases(&out).remove("fresh").expect("case fresh");
        assert!(in_slice(fresh.local, SLICE_IP, lo, hi), "[{strategy}]\n{}", out.dump());
        let trace = std::fs::read_to_string(&log).unwrap();
        // The program's first connect to the peer, and the last TCP socket() before it (the
        // shim's own start-up sockets, if any, come earlier).
        let to_peer = format!("sin_port=htons({})", rec.port());
        let n = trace
            .lines()
            .position(|l| l.contains("connect(") && l.contains(&to_peer))
            .expect("the program's connect in the trace");
        let end: usize = trace.lines().take(n).map(|l| l.len() + 1).sum();
        let start =
            trace[..end].rfind("socket(AF_INET, SOCK_STREAM").expect("the program's socket() in the trace");
        let before = &trace[start..end];
        assert!(
            !before.contains("SO_PROTOCOL") && !before.contains("getsockname("),
            "[{strategy}] the shim looked at a socket it saw born:\n{before}"
        );
        assert!(before.contains("bind("), "[{strategy}] the placement's bind is in the trace:\n{before}");
        // The destination is read after a probe with the kernel's checks (rt_sigprocmask), not
        // with process_vm_readv (~0.8 µs, the largest single call of a placement).
        assert!(
            !before.contains("process_vm_readv("),
            "[{strategy}] the destination was read with process_vm_readv:\n{before}"
        );
    }
}
