//! The harness's own promises: as a non-root user the tests that need network namespaces skip
//! with a visible line (not only under --nocapture) instead of failing, and the shared port
//! allocator works for any user; under CI=true the same missing permission is a failure.

use cdylib_tests::*;
use std::process::{Command, Stdio};

const HELPER: &str = "PORTRANGE_HARNESS_HELPER";

/// Not a test on its own: run by the test below, as another user, in a child process.
#[test]
fn helper_needs_a_network_namespace() {
    if std::env::var_os(HELPER).is_none() {
        return;
    }
    let (lo, _) = slice_ports(1);
    println!("allocated {lo}");
    require_netns!();
    in_private_netns(|| println!("RAN IN A NAMESPACE"));
}

#[test]
fn as_non_root_namespace_tests_skip_with_a_message() {
    if !require_root_for(module_path!(), "switching to the nobody user") {
        return;
    }
    require!("setpriv");
    // A root run used the port allocator first (it may even have created its file).
    let _ = slice_ports(1);
    // A copy nobody can run wherever the build lives (CI may clone under /root).
    let dir = TempDir::new("harness");
    let exe = dir.path().join("harness-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    sh(&["chmod", "0755", dir.path().to_str().unwrap(), exe.to_str().unwrap()]);
    let run = |ci: Option<&str>| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&exe)
            .args(["--exact", "helper_needs_a_network_namespace", "--test-threads=1"])
            .env(HELPER, "1")
            .env("HOME", "/tmp")
            .env_remove("CI")
            .stdin(Stdio::null());
        if let Some(v) = ci {
            cmd.env("CI", v);
        }
        let out = cmd.output().expect("run setpriv");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(None);
    assert!(ok, "as nobody the namespace test must skip, not fail\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("SKIP harness::helper_needs_a_network_namespace: needs root"),
        "no visible SKIP line on stderr\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(!stdout.contains("RAN IN A NAMESPACE"), "{stdout}");
    let (ok, stdout, stderr) = run(Some("true"));
    assert!(!ok, "under CI=true a missing permission is a failure\n{stdout}\n{stderr}");
    assert!(stdout.contains("needs root") || stderr.contains("needs root"), "{stdout}\n{stderr}");
}
