//! C test programs, compiled once per test binary.

use crate::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Compile the C program `source` (`include_str!` of a file in `cdylib-tests/c/`) with
/// `gcc -O1 -pthread`, once per test process and name; returns the executable's path. Needs gcc
/// (`.ci/run` installs it): without it, panics under CI, else returns `None` after a SKIP line.
pub fn compile_c(name: &str, source: &str) -> Option<PathBuf> {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    if !require_programs(&["gcc"], name) {
        return None;
    }
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(n, _)| n == name) {
        return Some(p.clone());
    }
    let mut dir = target_dir().join("c-programs").join(format!("{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        // A target directory this user cannot write (another user's build): use /tmp.
        dir = std::env::temp_dir().join(format!("portrange-c-programs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    let src = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    std::fs::write(&src, source).expect("write C source");
    let out = Command::new("gcc")
        .args(["-O1", "-Wall", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .expect("run gcc");
    assert!(out.status.success(), "gcc {name}.c failed:\n{}", String::from_utf8_lossy(&out.stderr));
    built.push((name.to_string(), exe.clone()));
    Some(exe)
}
