//! `portrange check` and `portrange plan`: an operator's view of a configuration.

use cdylib_tests::*;

/// A valid configuration: exit 0, the slices, the strategy and why, the guard rules.
#[test]
fn check_explains_a_valid_configuration() {
    let (lo, hi) = slice_ports(16);
    let out = Run::portrange().arg("check").env("PORTRANGE", slice_spec("127.0.0.2", lo, hi)).run();
    out.assert_success();
    let text = &out.stdout;
    assert!(text.contains(&format!("127.0.0.2:{lo}-{hi}")), "{}", out.dump());
    assert!(text.contains("16 ports"), "{}", out.dump());
    // tcp_tw_reuse decides between the strategies under auto; the reason is shown.
    let tw = sysctl("net/ipv4/tcp_tw_reuse").unwrap_or_default();
    let expect = if tw.trim() == "1" { "kernel strategy" } else { "retry strategy" };
    assert!(text.contains(expect), "tcp_tw_reuse={tw}: expected {expect}\n{}", out.dump());
    assert!(text.contains("ip saddr 127.0.0.2 ct state new tcp sport != {"), "{}", out.dump());
    assert!(text.contains("OK: configuration valid"), "{}", out.dump());
    // 127.0.0.0/8 is not skipped by default: it contains the slice IP.
    assert!(!text.contains("127.0.0.0/8"), "{}", out.dump());
}

/// Flags override the environment; --json is one parseable object; invalid → exit 1.
#[test]
fn check_json_and_invalid_configurations() {
    let out = Run::portrange()
        .args(["check", "--json", "--slice", "127.0.0.2:61000-61009", "--strategy", "kernel"])
        .env("PORTRANGE", "127.0.0.2:40000-40009")
        .run();
    assert_eq!(out.code(), Some(1), "{}", out.dump());
    let j = out.stdout.trim();
    assert!(j.starts_with('{') && j.ends_with('}') && !j.contains('\n'), "{}", out.dump());
    assert!(j.contains("\"valid\":false"), "{j}");
    // The error names the flag the value came from.
    assert!(j.contains("--strategy kernel cannot be honoured"), "{j}");
    assert!(j.contains("\"slice\":\"127.0.0.2:61000-61009\""), "the flag wins over the environment: {j}");
    assert!(j.contains("\"inside_sysctl_range\":false"), "{j}");

    let out = Run::portrange().args(["check", "--json"]).env("PORTRANGE", "127.0.0.2:40000-40009").run();
    out.assert_success();
    assert!(
        out.stdout.contains("\"valid\":true") && out.stdout.contains("\"ip_assigned\":true"),
        "{}",
        out.dump()
    );

    // A slice IP this host does not have is pointed out.
    let out = Run::portrange().args(["check", "--json"]).env("PORTRANGE", "198.51.100.77:40000-40009").run();
    assert!(out.stdout.contains("\"ip_assigned\":false"), "{}", out.dump());

    for (var, value) in [("PORTRANGE", "1.2.3.4"), ("PORTRANGE_SKIP", "nope"), ("PORTRANGE_STRATEGY", "fast")]
    {
        let mut run = Run::portrange().arg("check").env(var, value);
        if var != "PORTRANGE" {
            run = run.env("PORTRANGE", "127.0.0.2:40000-40009");
        }
        let out = run.run();
        assert_eq!(out.code(), Some(1), "{var}={value}\n{}", out.dump());
        assert!(out.stdout.contains(&format!("{var}=\"{value}\"")), "{}", out.dump());
        assert!(out.stdout.contains("INVALID"), "{}", out.dump());
    }
    // A bad --slice is an invalid configuration (exit 1) like a bad PORTRANGE, named by its flag.
    let out = Run::portrange().args(["check", "--slice", "nope"]).run();
    assert_eq!(out.code(), Some(1), "{}", out.dump());
    assert!(out.stdout.contains("--slice \"nope\""), "{}", out.dump());
    // Bad arguments: exit 2 with a message.
    let out = Run::portrange().args(["check", "--frobnicate"]).run();
    assert_eq!(out.code(), Some(2), "{}", out.dump());
    assert!(out.stderr.contains("--frobnicate"), "{}", out.dump());
}

/// plan splits evenly around exclusions, and a planned slice places a real program's flow.
#[test]
fn plan_output_is_a_working_portrange() {
    let out = Run::portrange()
        .args([
            "plan",
            "--ip",
            "198.51.100.10",
            "--ports",
            "60000-60511",
            "--servers",
            "4",
            "--exclude",
            "60100-60101",
        ])
        .run();
    out.assert_success();
    let rows: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{}", out.dump());
    let total: u32 = rows.iter().map(|r| r.split_whitespace().nth(1).unwrap().parse::<u32>().unwrap()).sum();
    assert_eq!(total, 510, "{}", out.dump());
    assert!(!out.stdout.contains("60100") && !out.stdout.contains("60101,"), "{}", out.dump());

    for bad in [
        vec!["plan", "--ip", "1.2.3.4", "--ports", "10-12", "--servers", "5"],
        vec!["plan", "--ip", "1.2.3.4", "--ports", "10-12", "--servers", "2", "--index", "2"],
        vec!["plan", "--ip", "0.0.0.0", "--ports", "10-12", "--servers", "1"],
        vec!["plan", "--ports", "10-12", "--servers", "1"],
    ] {
        let out = Run::portrange().args(&bad).run();
        assert_eq!(out.code(), Some(2), "{bad:?}\n{}", out.dump());
    }

    // Server 2 of 3 on a loopback range: its PORTRANGE value drives `exec`, and the peer sees it.
    let (lo, hi) = slice_ports(30);
    let out = Run::portrange()
        .args([
            "plan",
            "--ip",
            "127.0.0.2",
            "--ports",
            &format!("{lo}-{hi}"),
            "--servers",
            "3",
            "--index",
            "2",
        ])
        .run();
    out.assert_success();
    let value = out.stdout.trim().to_string();
    assert_eq!(value, format!("127.0.0.2:{}-{hi}", lo + 20), "{}", out.dump());
    let rec = Recorder::hold("127.0.0.1");
    let out = Run::portrange()
        .args(["exec", "--slice", &value, "--"])
        .arg(python3())
        .args([
            "-c",
            "import socket,sys; s=socket.create_connection(('127.0.0.1', int(sys.argv[1]))); print('ok')",
        ])
        .arg(rec.port().to_string())
        .run();
    out.assert_success();
    let peers = rec.wait_for(1, PEER_WAIT);
    assert_eq!(peers.len(), 1, "{}", out.dump());
    assert_in_slice(peers[0], "127.0.0.2", lo + 20, hi);
}
