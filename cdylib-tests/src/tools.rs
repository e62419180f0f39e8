//! Required programs and root/namespace checks: a visible SKIP line, a failure under CI=true.

use std::io::Write;
use std::sync::OnceLock;
use std::thread;

/// Is `program` an executable in PATH?
pub fn have(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else { return false };
    std::env::split_paths(&path).any(|d| {
        let p = d.join(program);
        std::fs::metadata(&p)
            .map(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Under `CI=true` (any non-empty `CI`): a missing tool or permission is a failure, never a skip.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The running test's name for messages: `module::test` (libtest names the thread after it).
fn test_name(module: &str) -> String {
    match thread::current().name() {
        Some(name) if name != "main" && name != "netns" => format!("{module}::{name}"),
        _ => module.to_string(),
    }
}

/// A test cannot run here because of `why`. Under CI that is a failure (panics); elsewhere one
/// `SKIP` line goes straight to the process's stderr — libtest captures `eprintln!` of a passing
/// test, so the line would otherwise only show with `--nocapture`.
pub fn skip_or_fail(module: &str, why: &str) {
    let test = test_name(module);
    if under_ci() {
        panic!("{test}: {why}; CI must provide it (.ci/run)");
    }
    // One write, so that the line does not interleave with libtest's own output.
    let _ = std::io::stderr().write_all(format!("SKIP {test}: {why}\n").as_bytes());
}

/// True if every program is present. Otherwise: panics when `CI` is set, else prints SKIP and
/// returns false (the test should return). See [`require!`].
pub fn require_programs(programs: &[&str], test: &str) -> bool {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !have(p)).collect();
    if missing.is_empty() {
        return true;
    }
    skip_or_fail(test, &format!("required program(s) {missing:?} not found in PATH"));
    false
}

/// Whether this process may create network namespaces (root, or CAP_SYS_ADMIN): probed once
/// with `unshare(CLONE_NEWNET)` on a throw-away thread.
pub fn can_unshare_net() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        thread::spawn(|| {
            // SAFETY: plain syscall; affects only this short-lived thread.
            unsafe { libc::unshare(libc::CLONE_NEWNET) == 0 }
        })
        .join()
        .unwrap_or(false)
    })
}

/// True when network namespaces can be made here; otherwise a visible SKIP (a failure under
/// CI). See [`require_netns!`].
pub fn require_netns_for(test: &str) -> bool {
    if can_unshare_net() {
        return true;
    }
    skip_or_fail(test, "needs root (CAP_SYS_ADMIN) to create network namespaces");
    false
}

/// `require_netns!();` at the top of a test that uses [`in_private_netns`] or `ip netns`:
/// returns from the test with a visible SKIP line when not root (panics under CI).
#[macro_export]
macro_rules! require_netns {
    () => {
        if !$crate::require_netns_for(module_path!()) {
            return;
        }
    };
}

/// True when running as root; otherwise a visible SKIP (a failure under CI).
pub fn require_root_for(test: &str, why: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip_or_fail(test, &format!("needs root: {why}"));
    false
}

/// `require!("curl")` / `require!("java", "javac")`: return from the test (or panic under CI)
/// when a program is missing.
#[macro_export]
macro_rules! require {
    ($($p:expr),+ $(,)?) => {
        if !$crate::require_programs(&[$($p),+], module_path!()) {
            return;
        }
    };
}

// ---------------------------------------------------------------------------------------------
