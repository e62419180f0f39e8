//! Issue 9 case 9: a UDP placement that had to retry on a fresh socket was refused when the
//! program set an option the replay table lacked (QUIC stacks set UDP_GRO: 22 of 40 connects
//! failed on a 2-port slice with one port in use). Now the 4-tuple is looked up before the
//! program's own socket is bound (no swap needed), and a swap carries such options anyway.
//! Both ports are held (one for the peer, one for another peer), so that every connect goes on
//! from its exclusive binds to the cookie check, the placement this is about.

use cdylib_tests::{json_number, slice_ports, slice_spec, Run, TempDir, SLICE_IP};

const SCRIPT: &str = include_str!("../py/udp_precheck.py");

fn run(precheck: &str) -> (Vec<String>, i64, String) {
    let (lo, hi) = slice_ports(2);
    let dir = TempDir::new("udp-precheck");
    let stats = dir.path().join("stats");
    let out = Run::python(SCRIPT)
        .arg("40")
        .slice(&slice_spec(SLICE_IP, lo, hi))
        .env("PORTRANGE_PRECHECK", precheck)
        .env("PORTRANGE_STATS", &stats)
        .run();
    out.assert_success();
    let held = out.expect_addr("held");
    let other = out.expect_addr("other");
    assert_ne!(held.port(), other.port(), "the two holders share no port\n{}", out.dump());
    let others: Vec<String> = out.fields("b").iter().map(|s| s.to_string()).collect();
    assert_eq!(others.len(), 40, "{}", out.dump());
    let want = format!("{SLICE_IP} {}", if held.port() == lo { hi } else { lo });
    for b in &others {
        assert_eq!(
            b,
            &want,
            "[PORTRANGE_PRECHECK={precheck}] every connect gets the free port\n{}",
            out.dump()
        );
    }
    let line = std::fs::read_to_string(&stats).unwrap_or_default();
    let swaps = json_number(&line, "swaps").unwrap_or_else(|| panic!("no swaps counter in {line:?}"));
    // `a` and `c` got ports nobody held (no cookie check); the 40 connects of `b` found none.
    assert_eq!(json_number(&line, "udp_checked"), Some(40), "{line}\n{}", out.dump());
    (others, swaps, out.dump())
}

#[test]
fn udp_gro_does_not_refuse_a_placement_and_the_precheck_avoids_swaps() {
    // With the pre-check (the default), the program's own socket never binds the held port.
    let (_, swaps, dump) = run("on");
    assert_eq!(swaps, 0, "the pre-check leaves no conflict for a swap to resolve\n{dump}");
    // Without it, about half the connects bind the held port first and continue on a fresh
    // socket: still placed, the option carried over.
    let (_, swaps, dump) = run("off");
    assert!(swaps > 0, "without the pre-check some connects need a swap (random order)\n{dump}");
}
