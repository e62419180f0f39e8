//! The call path under hostile-but-ordinary programs (issue 8, items 1, 2, 5, 9): thread
//! cancellation inside hooked calls, signals interrupting a blocking connect, signal handlers that
//! connect while their thread is inside the shim, descriptors above 2^20. Each runs under both
//! TCP strategies and with the shim loaded but inactive; the C programs are in `c/`.

use cdylib_tests::*;

/// The configurations every test runs under: inactive (PORTRANGE unset), then each strategy.
fn configurations() -> Vec<Option<&'static str>> {
    let mut v = vec![None];
    v.extend(tcp_strategies().into_iter().map(Some));
    v
}

fn configure(run: Run, strategy: Option<&str>, ip: &str, lo: u16, hi: u16, stats: &std::path::Path) -> Run {
    match strategy {
        None => run,
        Some(s) => {
            run.slice(&slice_spec(ip, lo, hi)).env("PORTRANGE_STRATEGY", s).env("PORTRANGE_STATS", stats)
        }
    }
}

/// Item 1: pthread_cancel of threads blocked in connect (full accept queue), in sendto/sendmsg
/// (full socket buffers) and in fcntl(F_SETLKW): cleanup handlers run, pthread_join returns
/// PTHREAD_CANCELED, the process goes on; the send connections were placed.
#[test]
fn cancelled_threads_unwind_through_hooks() {
    let Some(exe) = compile_c("cancel", include_str!("../c/cancel.c")) else { return };
    for strategy in configurations() {
        let (lo, hi) = slice_ports(64);
        let tmp = TempDir::new("cancel");
        let stats = tmp.path().join("stats");
        let run = Run::new(&exe).arg(free_listen_port().to_string()).arg(free_listen_port().to_string());
        let out = configure(run, strategy, SLICE_IP, lo, hi, &stats)
            .timeout(std::time::Duration::from_secs(30))
            .run();
        let ctx = format!("strategy {strategy:?}");
        assert!(out.success() && out.field("DONE") == Some("ok"), "{ctx}:\n{}", out.dump());
        let peers: Vec<&str> = out.fields("PEER");
        assert_eq!(peers.len(), 2, "{ctx}:\n{}", out.dump());
        if strategy.is_some() {
            for p in peers {
                let (ip, port) = p.split_once(' ').unwrap();
                let port: u16 = port.parse().unwrap();
                assert!(ip == SLICE_IP && (lo..=hi).contains(&port), "{ctx}: peer saw {p}\n{}", out.dump());
            }
        }
    }
}
