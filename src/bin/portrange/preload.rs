//! Where the shim library is, and the LD_PRELOAD value that loads it.

use std::ffi::OsString;
use std::path::PathBuf;

/// The shim library: $PORTRANGE_SO, or libportrange.so beside this executable.
pub fn so_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PORTRANGE_SO") {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("PORTRANGE_SO={}: no such file", p.display())) };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let p = exe.with_file_name("libportrange.so");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{} not found (set PORTRANGE_SO to the library's path)", p.display()))
    }
}

/// LD_PRELOAD with the shim first, keeping what the environment already preloads.
pub fn ld_preload(so: &std::path::Path) -> OsString {
    let mut v = OsString::from(so);
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
        v.push(":");
        v.push(old);
    }
    v
}
