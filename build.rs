//! Builds the cgroup BPF placement program (bpf/placement.c) with clang when clang is present;
//! otherwise uses the committed object bpf/placement.bpf.o (see README: "Rebuilding the BPF
//! object"). PORTRANGE_BPF_PREBUILT=1 forces the committed object. Under CI=true a clang that
//! is present but fails is an error, as it is anywhere else: a broken program must not ship.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let src = Path::new("bpf/placement.c");
    let prebuilt = Path::new("bpf/placement.bpf.o");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", prebuilt.display());
    println!("cargo:rerun-if-env-changed=PORTRANGE_BPF_PREBUILT");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("placement.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let forced = std::env::var_os("PORTRANGE_BPF_PREBUILT").is_some_and(|v| v == "1");
    let have_clang =
        !forced && Command::new(&clang).arg("--version").output().is_ok_and(|o| o.status.success());
    if have_clang {
        let st = Command::new(&clang)
            .current_dir(src.parent().unwrap_or(Path::new(".")))
            .args(clang_args(src, &out))
            .status()
            .unwrap_or_else(|e| panic!("{clang}: {e}"));
        assert!(
            st.success(),
            "{clang} failed to build {} (set PORTRANGE_BPF_PREBUILT=1 to use the committed object)",
            src.display()
        );
        // The committed object is what a build without clang ships: say when it lags behind.
        let stripped = out.with_extension("stripped.o");
        let strip = Command::new("llvm-strip").arg("-g").arg(&out).arg("-o").arg(&stripped).status();
        if strip.is_ok_and(|s| s.success()) && std::fs::read(&stripped).ok() != std::fs::read(prebuilt).ok() {
            println!(
                "cargo:warning=bpf/placement.bpf.o differs from what {clang} builds from bpf/placement.c: \
                 run bpf/rebuild.sh and commit it (or ignore this if your clang is not Debian 12's)"
            );
        }
    } else {
        std::fs::copy(prebuilt, &out).unwrap_or_else(|e| panic!("{}: {e}", prebuilt.display()));
    }
}

/// The one clang command line; README and `bpf/rebuild.sh` use the same flags.
fn clang_args(src: &Path, out: &Path) -> Vec<String> {
    // Run in the source's directory, as bpf/rebuild.sh does: the object then names no path of
    // this checkout (BTF keeps the file name as given; DWARF's directory is mapped to `bpf`).
    let dir = std::env::current_dir().unwrap_or_default().join(src.parent().unwrap_or(Path::new(".")));
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => other,
    };
    vec![
        "-O2".into(),
        "-g".into(),
        "-target".into(),
        "bpf".into(),
        "-Wall".into(),
        "-Werror".into(),
        // Wherever the checkout is, the object built here and the committed one are identical.
        format!("-fdebug-prefix-map={}=bpf", dir.display()),
        format!("-I/usr/include/{multiarch}"),
        "-c".into(),
        src.file_name().unwrap_or_default().to_string_lossy().into_owned(),
        "-o".into(),
        out.display().to_string(),
    ]
}
