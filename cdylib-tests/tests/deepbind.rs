//! Issue 9 case 3: libraries opened with RTLD_DEEPBIND. PHP loads every extension that way, so
//! its curl extension (libcurl) bound `connect` straight to libc and every flow left from outside
//! the slice. A real PHP, in a private network namespace, against a recorder: every flow — curl's
//! and PHP's own — must arrive from the slice, and the shim says once what it did.

use cdylib_tests::{
    expect_in_slice, expect_peers, in_private_netns, require, sh, slice_ports, Recorder, Run,
};

const PHP_CURL: &str = include_str!("../php/curl.php");
const SLICE_IP: &str = "198.51.100.10";
const SERVER_IP: &str = "203.0.113.1";

#[test]
fn php_curl_extension_is_placed() {
    require!("php");
    in_private_netns(|| {
        sh(&["ip", "link", "set", "lo", "up"]);
        sh(&["ip", "addr", "add", &format!("{SLICE_IP}/32"), "dev", "lo"]);
        sh(&["ip", "addr", "add", &format!("{SERVER_IP}/32"), "dev", "lo"]);
        let m = Run::new("php").no_preload().arg("-m").run();
        assert!(
            m.stdout.lines().any(|l| l.trim() == "curl"),
            "php has no curl extension (Debian: php-curl); .ci/run installs it\n{}",
            m.dump()
        );
        for strategy in ["kernel", "retry"] {
            let rec = Recorder::http(SERVER_IP);
            let (lo, hi) = slice_ports(20);
            let out = Run::new("php")
                .args(["-r", PHP_CURL.trim_start_matches("<?php"), "--", &rec.url(), "5"])
                .slice(&format!("{SLICE_IP}:{lo}-{hi}"))
                .env("PORTRANGE_STRATEGY", strategy)
                .run();
            out.assert_success();
            assert_eq!(out.stdout.matches("curl ok").count(), 5, "[{strategy}]\n{}", out.dump());
            assert!(out.stdout.contains("file_get_contents ok"), "[{strategy}]\n{}", out.dump());
            let peers = expect_peers(&rec, 6, strategy, &out);
            expect_in_slice(&peers, SLICE_IP, lo, hi, strategy, &out);
            let notes: Vec<&str> =
                out.portrange_lines().into_iter().filter(|l| l.contains("RTLD_DEEPBIND")).collect();
            assert_eq!(
                notes.len(),
                1,
                "[{strategy}] one line about RTLD_DEEPBIND per process\n{}",
                out.dump()
            );
        }
    });
}
