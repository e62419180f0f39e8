//! Locating (and building) the library and the `portrange` binary under test.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cdylib-tests lives inside the workspace")
        .to_path_buf()
}

/// `CARGO_TARGET_DIR` if set (relative to the workspace root), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        _ => workspace_root().join("target"),
    }
}

struct Built {
    so: PathBuf,
    bin: PathBuf,
}

static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();

fn built() -> &'static Built {
    match BUILT.get_or_init(build_portrange) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

/// `cargo build --release -p portrange -p portrange-shim`, once per test process.
fn build_portrange() -> Result<Built, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from(env!("CARGO")));
    let out = Command::new(&cargo)
        .args(["build", "--release", "-p", "portrange", "-p", "portrange-shim"])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cargo:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build --release -p portrange -p portrange-shim` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let rel = target_dir().join("release");
    let b = Built { so: rel.join("libportrange.so"), bin: rel.join("portrange") };
    for p in [&b.so, &b.bin] {
        if !p.exists() {
            return Err(format!("the build succeeded but {} does not exist", p.display()));
        }
    }
    Ok(b)
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The library to preload: `PORTRANGE_SO` if set, else the release build (built on first use).
pub fn so_path() -> PathBuf {
    if let Some(p) = env_path("PORTRANGE_SO") {
        assert!(p.exists(), "PORTRANGE_SO={} does not exist", p.display());
        return p;
    }
    built().so.clone()
}

/// The `portrange` binary: `PORTRANGE_BIN` if set, else next to `PORTRANGE_SO` if that is set
/// and has one, else the release build (built on first use).
pub fn bin_path() -> PathBuf {
    if let Some(p) = env_path("PORTRANGE_BIN") {
        return p;
    }
    if let Some(so) = env_path("PORTRANGE_SO") {
        if let Some(p) = so.parent().map(|d| d.join("portrange")).filter(|p| p.exists()) {
            return p;
        }
    }
    built().bin.clone()
}

// ---------------------------------------------------------------------------------------------
