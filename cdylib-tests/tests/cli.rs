//! The `portrange` command line.

use cdylib_tests::*;
use std::time::Duration;

/// `portrange demo` runs with no set-up, exits 0 and shows flows from 127.0.0.2:PORT.
#[test]
fn demo_exits_zero_and_shows_the_slice() {
    let out = Run::portrange().arg("demo").timeout(Duration::from_secs(120)).run();
    out.assert_success();
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("127.0.0.2"),
        "demo output does not mention the slice IP 127.0.0.2\n{}",
        out.dump()
    );
    let has_source = text
        .match_indices("127.0.0.2:")
        .any(|(i, m)| text[i + m.len()..].chars().next().is_some_and(|c| c.is_ascii_digit()));
    assert!(has_source, "demo output shows no observed `127.0.0.2:PORT` source\n{}", out.dump());
}

/// `portrange exec --slice … -- curl …` places the flow (checked at the peer).
#[test]
fn exec_places_curl() {
    require!("curl");
    let rec = Recorder::http("127.0.0.1");
    let (lo, hi) = slice_ports(10);
    let out = Run::portrange()
        .args([
            "exec",
            "--slice",
            &slice_spec(SLICE_IP, lo, hi),
            "--",
            "curl",
            "-sS",
            "--max-time",
            "20",
            &rec.url(),
        ])
        .run();
    out.assert_success();
    assert_eq!(out.stdout, HTTP_BODY, "{}", out.dump());
    let peers = rec.wait_for(1, PEER_WAIT);
    assert_eq!(peers.len(), 1, "{}", out.dump());
    assert_in_slice(peers[0], SLICE_IP, lo, hi);
}

/// `--slice` may be repeated; `--skip` leaves a destination alone.
#[test]
fn exec_with_skip_and_two_slices() {
    let placed = Recorder::hold("127.0.0.1");
    let skipped = Recorder::hold("127.0.0.3");
    let (lo, hi) = slice_ports(10);
    let (lo6, hi6) = slice_ports(10);
    let out = Run::portrange()
        .args([
            "exec",
            "--slice",
            &slice_spec(SLICE_IP, lo, hi),
            "--slice",
            &slice_spec("::1", lo6, hi6),
            "--skip",
            "127.0.0.3/32",
            "--strategy",
            "auto",
            "--",
        ])
        .arg(python3())
        .arg("-c")
        .arg(PY_CONNECT)
        .args([
            "tcp",
            "127.0.0.1",
            &placed.port().to_string(),
            "tcp",
            "127.0.0.3",
            &skipped.port().to_string(),
        ])
        .run();
    out.assert_success();
    let p = placed.wait_for(1, PEER_WAIT);
    let s = skipped.wait_for(1, PEER_WAIT);
    assert_eq!((p.len(), s.len()), (1, 1), "{}", out.dump());
    assert_in_slice(p[0], SLICE_IP, lo, hi);
    assert_not_in_slice(s[0], SLICE_IP, lo, hi);
}

/// The program's exit status is passed on.
#[test]
fn exec_passes_exit_status() {
    let (lo, hi) = slice_ports(10);
    let out = Run::portrange()
        .args(["exec", "--slice", &slice_spec(SLICE_IP, lo, hi), "--", "sh", "-c", "exit 7"])
        .run();
    assert_eq!(out.code(), Some(7), "{}", out.dump());
}

/// A bad --slice: non-zero exit, a clear message, and the program is not run.
#[test]
fn exec_rejects_bad_slice() {
    for bad in ["1.2.3.4:20-10", "0.0.0.0:1-2", "nonsense", "[::1:1-2"] {
        let out = Run::portrange().args(["exec", "--slice", bad, "--", "sh", "-c", "echo PROGRAM-RAN"]).run();
        assert!(!out.success() && !out.timed_out, "[{bad}] exec accepted a bad slice\n{}", out.dump());
        assert!(
            !out.stdout.contains("PROGRAM-RAN"),
            "[{bad}] the program ran despite a bad slice\n{}",
            out.dump()
        );
        let msg = out.stderr.to_lowercase();
        assert!(
            msg.contains(&bad.to_lowercase()) || msg.contains("slice"),
            "[{bad}] no clear message naming the slice\n{}",
            out.dump()
        );
    }
}
