//! Install it: `make install`, the Debian package (unpacked into a scratch root), and the
//! examples (each checked by its own tool).

use cdylib_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn run_tool(cmd: &mut Command) -> (bool, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn examples() -> PathBuf {
    workspace_root().join("examples")
}

/// Under an installed tree, `portrange exec -- curl` finds the library by itself (no
/// PORTRANGE_SO) and the peer sees the slice; `portrange check` accepts a loopback slice.
fn installed_tree_works(bin: &Path, what: &str) {
    let rec = Recorder::http("127.0.0.1");
    let (lo, hi) = slice_ports(10);
    let slice = slice_spec(SLICE_IP, lo, hi);
    let out = Run::new(bin).no_preload().args(["check", "--slice", &slice]).run();
    out.assert_success();
    let out = Run::new(bin)
        .no_preload()
        .args(["exec", "--slice", &slice, "--", "curl", "-sS", "--max-time", "20", &rec.url()])
        .run();
    out.assert_success();
    assert_eq!(out.stdout, HTTP_BODY, "[{what}] {}", out.dump());
    let peers = rec.wait_for(1, PEER_WAIT);
    assert_eq!(peers.len(), 1, "[{what}] {}", out.dump());
    assert_in_slice(peers[0], SLICE_IP, lo, hi);
}

/// `make install PREFIX=...` lays out bin/, lib/portrange/, the man page, the docs and the
/// examples; the installed launcher works from there; `make uninstall` removes it all.
#[test]
fn make_install_gives_a_working_tree() {
    require!("make", "curl");
    // Make sure the release build exists (built once per test process).
    let (so, bin) = (so_path(), bin_path());
    let (Some(out_dir), true) = (bin.parent(), so.parent() == bin.parent()) else {
        skip_or_fail(module_path!(), "PORTRANGE_SO/PORTRANGE_BIN point at separate directories");
        return;
    };
    let dir = TempDir::new("make-install");
    let prefix = dir.path().join("usr/local");
    let target = out_dir.parent().unwrap();
    let profile = out_dir.file_name().unwrap();
    let make = |goal: &str| {
        let (ok, text) = run_tool(
            Command::new("make")
                .arg("-C")
                .arg(workspace_root())
                .arg(goal)
                .arg(format!("PREFIX={}", prefix.display()))
                .arg(format!("PROFILE={}", profile.to_string_lossy()))
                .arg(format!("TARGET_DIR={}", target.display())),
        );
        assert!(ok, "make {goal} failed:\n{text}");
    };
    make("install");
    let files = [
        "bin/portrange",
        "lib/portrange/libportrange.so",
        "share/man/man1/portrange.1",
        "share/doc/portrange/README.md",
        "share/doc/portrange/CONTRACT.md",
        "share/doc/portrange/examples/systemd/portrange.conf",
        "share/doc/portrange/examples/nginx/proxy_bind.conf",
        "share/doc/portrange/examples/haproxy/haproxy.cfg",
        "share/doc/portrange/examples/nft/portrange-guard.nft",
    ];
    for f in files {
        assert!(prefix.join(f).is_file(), "make install did not install {f}");
    }
    installed_tree_works(&prefix.join("bin/portrange"), "make install");
    make("uninstall");
    for f in files {
        assert!(!prefix.join(f).exists(), "make uninstall left {f}");
    }
}

/// Whether an ELF file still has a symbol table or debug info (section names in .shstrtab).
/// The file's section headers (`readelf -S`, binutils) name a symbol table or debug info. Read
/// from the headers, not the bytes: the launcher embeds the BPF placement object, whose own
/// `.symtab`/`.debug_info` names are data, not sections of the launcher.
fn unstripped(path: &Path) -> bool {
    let out = Command::new("readelf").args(["-S", "-W"]).arg(path).output().expect("readelf (binutils)");
    assert!(out.status.success(), "readelf -S {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().any(|w| w == ".symtab" || w == ".debug_info")
}

/// The Debian package: its control fields, its files at the documented paths, and — unpacked
/// into a scratch root with `dpkg -x` — a launcher that finds its library there and places a
/// curl flow. `PORTRANGE_DEB` (set by .ci/run after `make deb`) is the package to test, whose
/// library must be stripped; without it the package is built here from the test build.
#[test]
fn debian_package_installs_into_a_scratch_root() {
    require!("dpkg-deb", "curl");
    let dir = TempDir::new("deb");
    let deb = match std::env::var_os("PORTRANGE_DEB").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => {
            if under_ci() {
                panic!("PORTRANGE_DEB is not set: .ci/run builds the package (make deb) and sets it");
            }
            require!("cargo-deb");
            let (so, bin) = (so_path(), bin_path());
            assert_eq!(so.parent(), bin.parent(), "PORTRANGE_SO and PORTRANGE_BIN in one directory");
            let profile = bin.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let (ok, text) = run_tool(
                Command::new(cargo)
                    .current_dir(workspace_root())
                    .args([
                        "deb",
                        "-p",
                        "portrange",
                        "--no-build",
                        "--no-strip",
                        "--profile",
                        &profile,
                        "--output",
                    ])
                    .arg(dir.path().join("portrange.deb"))
                    .env("CARGO_TARGET_DIR", target_dir()),
            );
            assert!(ok, "cargo deb failed:\n{text}");
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"note: debian_package_installs_into_a_scratch_root: testing a package of the test build (not stripped); CI tests the `make deb` one\n",
            );
            dir.path().join("portrange.deb")
        }
    };
    let (ok, info) = run_tool(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(ok, "{info}");
    for field in ["Package: portrange", "Section: net", "Depends: libc6"] {
        assert!(info.contains(field), "control lacks {field:?}:\n{info}");
    }
    assert!(info.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))), "{info}");
    let root = dir.path().join("root");
    let (ok, text) = run_tool(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    assert!(ok, "dpkg-deb -x: {text}");
    for f in [
        "usr/bin/portrange",
        "usr/lib/portrange/libportrange.so",
        "usr/share/man/man1/portrange.1.gz",
        "usr/share/doc/portrange/README.md",
        "usr/share/doc/portrange/CONTRACT.md",
        "usr/share/doc/portrange/examples/systemd/portrange.conf",
        "usr/share/doc/portrange/examples/nginx/proxy.conf",
        "usr/share/doc/portrange/examples/nginx/proxy_bind.conf",
        "usr/share/doc/portrange/examples/haproxy/haproxy.cfg",
        "usr/share/doc/portrange/examples/nft/portrange-guard.nft",
    ] {
        assert!(root.join(f).is_file(), "the package lacks /{f}");
    }
    if std::env::var_os("PORTRANGE_DEB").is_some() {
        require!("readelf");
        let lib = root.join("usr/lib/portrange/libportrange.so");
        assert!(!unstripped(&lib), "the packaged library is not stripped");
        assert!(unstripped(&so_path()), "the test build keeps its symbols: the check can fail");
        let bin = root.join("usr/bin/portrange");
        assert!(!unstripped(&bin), "the packaged binary is not stripped");
    }
    installed_tree_works(&root.join("usr/bin/portrange"), "dpkg -x");
}

/// The nginx examples pass `nginx -t` (with and without proxy_bind).
#[test]
fn nginx_examples_pass_nginx_t() {
    let nginx = ["nginx", "/usr/sbin/nginx"].into_iter().find(|p| have(p) || Path::new(p).is_file());
    let Some(nginx) = nginx else {
        skip_or_fail(module_path!(), "nginx not found");
        return;
    };
    for conf in ["proxy.conf", "proxy_bind.conf"] {
        let dir = TempDir::new("nginx-t");
        let (ok, text) = run_tool(
            Command::new(nginx)
                .arg("-t")
                .arg("-e")
                .arg("stderr")
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(examples().join("nginx").join(conf)),
        );
        assert!(ok && text.contains("syntax is ok"), "nginx -t {conf}:\n{text}");
    }
    // The check can fail: a broken copy is refused.
    let dir = TempDir::new("nginx-t-bad");
    let bad = dir.path().join("bad.conf");
    let text = std::fs::read_to_string(examples().join("nginx/proxy_bind.conf")).unwrap();
    std::fs::write(&bad, text.replace("proxy_bind 198.51.100.10;", "proxy_bind;")).unwrap();
    let (ok, _) = run_tool(
        Command::new(nginx).arg("-t").arg("-e").arg("stderr").arg("-p").arg(dir.path()).arg("-c").arg(&bad),
    );
    assert!(!ok, "nginx -t accepted a broken proxy_bind line");
}

/// The HAProxy example passes `haproxy -c`.
#[test]
fn haproxy_example_passes_haproxy_c() {
    let haproxy = ["haproxy", "/usr/sbin/haproxy"].into_iter().find(|p| have(p) || Path::new(p).is_file());
    let Some(haproxy) = haproxy else {
        skip_or_fail(module_path!(), "haproxy not found");
        return;
    };
    let cfg = examples().join("haproxy/haproxy.cfg");
    let (ok, text) = run_tool(Command::new(haproxy).arg("-c").arg("-f").arg(&cfg));
    assert!(ok, "haproxy -c:\n{text}");
    let dir = TempDir::new("haproxy-bad");
    let bad = dir.path().join("bad.cfg");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&cfg).unwrap().replace("source 198.51.100.10", "source nowhere:x"),
    )
    .unwrap();
    let (ok, _) = run_tool(Command::new(haproxy).arg("-c").arg("-f").arg(&bad));
    assert!(!ok, "haproxy -c accepted a broken source line");
}

/// The nftables guard passes `nft -c -f` (in a private network namespace: the check talks to
/// the kernel, the ruleset is never loaded on the host).
#[test]
fn nft_guard_example_passes_nft_c() {
    require!("nft");
    require_netns!();
    let file = examples().join("nft/portrange-guard.nft");
    let (ok, text, bad_ok) = in_private_netns(move || {
        let (ok, text) = run_tool(Command::new("nft").arg("-c").arg("-f").arg(&file));
        let dir = TempDir::new("nft-bad");
        let bad = dir.path().join("bad.nft");
        let t = std::fs::read_to_string(&file).unwrap().replace("priority srcnat + 1", "priority nowhere");
        std::fs::write(&bad, t).unwrap();
        let (bad_ok, _) = run_tool(Command::new("nft").arg("-c").arg("-f").arg(&bad));
        (ok, text, bad_ok)
    });
    assert!(ok, "nft -c -f portrange-guard.nft:\n{text}");
    assert!(!bad_ok, "nft -c accepted a broken ruleset");
}

/// The systemd drop-in, applied to the example unit, passes `systemd-analyze verify` with
/// nothing to say; a deliberately broken copy of the drop-in fails (so the drop-in is read).
#[test]
fn systemd_dropin_passes_systemd_analyze_verify() {
    require!("systemd-analyze");
    let verify = |dropin: &str| {
        let dir = TempDir::new("systemd");
        let unit = dir.path().join("example.service");
        std::fs::copy(examples().join("systemd/example.service"), &unit).unwrap();
        std::fs::create_dir(dir.path().join("example.service.d")).unwrap();
        std::fs::write(dir.path().join("example.service.d/portrange.conf"), dropin).unwrap();
        run_tool(
            Command::new("systemd-analyze")
                .arg("verify")
                .arg(&unit)
                .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display())),
        )
    };
    let dropin = std::fs::read_to_string(examples().join("systemd/portrange.conf")).unwrap();
    let (ok, text) = verify(&dropin);
    assert!(ok && text.trim().is_empty(), "systemd-analyze verify:\n{text}");
    let (ok, text) = verify(&dropin.replace("/usr/bin/env -u LD_PRELOAD", "/nonexistent/env"));
    assert!(!ok && text.contains("/nonexistent/env"), "the drop-in was not read:\n{text}");
}
