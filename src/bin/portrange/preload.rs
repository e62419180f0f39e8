//! Where the shim library is, and the LD_PRELOAD value that loads it.
//!
//! Search order: `$PORTRANGE_SO`; then, relative to this executable (symlinks resolved),
//! `libportrange.so` beside it, `../lib/portrange/`, `../lib/`; then the package's path. This
//! covers the build tree (`target/release/`), `make install PREFIX=...` (`PREFIX/bin` +
//! `PREFIX/lib/portrange`), a flat copy into `/usr/local/{bin,lib}`, and the Debian package.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub const LIB_NAME: &str = "libportrange.so";
/// Where the Debian package installs the library.
pub const PACKAGE_PATH: &str = "/usr/lib/portrange/libportrange.so";

/// The places searched, in order, for an executable at `exe`.
pub fn candidates(exe: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(dir) = exe.parent() {
        v.push(dir.join(LIB_NAME));
        v.push(dir.join("../lib/portrange").join(LIB_NAME));
        v.push(dir.join("../lib").join(LIB_NAME));
    }
    v.push(PathBuf::from(PACKAGE_PATH));
    v
}

/// The shim library: `$PORTRANGE_SO`, else the first of [`candidates`] that exists.
pub fn so_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PORTRANGE_SO").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p.canonicalize().unwrap_or(p))
        } else {
            Err(format!("PORTRANGE_SO={}: no such file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let tried = candidates(&exe);
    match tried.iter().find(|p| p.is_file()) {
        // An absolute, normalised path: LD_PRELOAD is read in the program's working directory.
        Some(p) => Ok(p.canonicalize().unwrap_or_else(|_| p.clone())),
        None => Err(format!(
            "{LIB_NAME} not found; looked at {} (set PORTRANGE_SO to the library's path)",
            tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// LD_PRELOAD with the shim first, keeping what the environment already preloads.
pub fn ld_preload(so: &Path) -> OsString {
    let mut v = OsString::from(so);
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
        v.push(":");
        v.push(old);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_order() {
        let c = candidates(Path::new("/opt/x/bin/portrange"));
        let c: Vec<String> = c.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            c,
            [
                "/opt/x/bin/libportrange.so",
                "/opt/x/bin/../lib/portrange/libportrange.so",
                "/opt/x/bin/../lib/libportrange.so",
                "/usr/lib/portrange/libportrange.so"
            ]
        );
    }
}
