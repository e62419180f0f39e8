//! `portrange exec`: run a program with the shim.
//!
//! Before the program starts: the configuration (environment + flags) is judged exactly as
//! `check` judges it and refused on the same grounds; the program is looked up as execvp would
//! (127 missing, 126 not executable, like a shell); and its ELF headers say whether LD_PRELOAD
//! can reach it at all (static, Go, musl, set-id/capabilities) — if not, a warning says so.

use crate::evaluate::evaluate;
use crate::exec_cgroup;
use crate::flags::shim_flags;
use crate::preload::{ld_preload, so_path};
use portrange::elf;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};

pub const HELP: &str = "\
usage: portrange exec [--slice IP:LO-HI ...] [--skip CIDR ...] [--strategy auto|kernel|retry]
                      [--conntrack auto|reserve|verify|off] [--log LEVEL] [--stats PATH]
                      [--cgroup] [--allow-unplaced] [--] PROGRAM [ARGS...]

Run PROGRAM with libportrange.so preloaded, so that its outgoing TCP and UDP flows leave from the
slice. The configuration is the PORTRANGE* environment with the flags laid over it (--slice sets
PORTRANGE, --skip PORTRANGE_SKIP, --strategy PORTRANGE_STRATEGY, --conntrack PORTRANGE_CONNTRACK,
--log PORTRANGE_LOG, --stats PORTRANGE_STATS); it is judged as `portrange check` judges it, and
the program is not started under a configuration check refuses (invalid, or a slice IP not
assigned to this host).

Before starting PROGRAM, its ELF headers are read: a statically linked, Go or musl program, or a
set-user-ID/set-group-ID/file-capability one (the loader ignores LD_PRELOAD for these), cannot be
reached by the shim: it runs in a fresh cgroup v2 group with the BPF placement attached (as
`portrange cgroup attach`; --cgroup does this for any program, e.g. an io_uring one). Where the
placement cannot be had (no cgroup v2, no permission to load BPF) the program is not started
(125), unless --allow-unplaced: then it runs with a warning.

The library is $PORTRANGE_SO, else libportrange.so next to this executable, in ../lib/portrange/,
in ../lib/, or /usr/lib/portrange/ (the package's path), in that order.

exit status: PROGRAM's own status once it runs; 125 portrange itself failed (bad arguments, a
configuration check refuses, library not found); 126 PROGRAM is not executable; 127 PROGRAM was
not found.";

/// Exit status when portrange itself fails before the program runs (as env(1), timeout(1)).
pub const EXIT_LAUNCHER: u8 = 125;
pub const EXIT_NOT_EXECUTABLE: u8 = 126;
pub const EXIT_NOT_FOUND: u8 = 127;

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("portrange exec: {msg}");
    ExitCode::from(code)
}

pub fn run(args: &[OsString]) -> ExitCode {
    let (flags, mut i) = match shim_flags(args, &["--cgroup", "--allow-unplaced"]) {
        Ok(v) => v,
        Err(e) => return fail(EXIT_LAUNCHER, format!("{e} (see portrange exec --help)")),
    };
    match args.get(i).and_then(|a| a.to_str()) {
        Some("--") => i += 1,
        Some(a) if a.starts_with('-') => {
            return fail(
                EXIT_LAUNCHER,
                format!("unexpected argument {a:?} (the program goes after `--`; see portrange exec --help)"),
            )
        }
        _ => {}
    }
    let Some(program) = args.get(i) else {
        return fail(EXIT_LAUNCHER, "no program given (see portrange exec --help)");
    };

    let ev = evaluate(&flags);
    if !ev.usable() {
        for e in ev.errors.iter().chain(&ev.problems) {
            eprintln!("portrange exec: error: {e}");
        }
        return fail(
            EXIT_LAUNCHER,
            format!(
                "not starting {}: `portrange check` refuses this configuration",
                program.to_string_lossy()
            ),
        );
    }
    let so = match so_path() {
        Ok(p) => p,
        Err(e) => return fail(EXIT_LAUNCHER, e),
    };

    let path_var = std::env::var_os("PATH");
    let Some(resolved) = elf::resolve(program, path_var.as_deref()) else {
        return fail(EXIT_NOT_FOUND, format!("{}: command not found", program.to_string_lossy()));
    };
    match std::fs::metadata(&resolved) {
        Err(e) => return fail(EXIT_NOT_FOUND, format!("{}: {e}", resolved.display())),
        Ok(m) if m.is_dir() => {
            return fail(EXIT_NOT_EXECUTABLE, format!("{}: is a directory", resolved.display()))
        }
        Ok(_) if !elf::is_executable(&resolved) => {
            return fail(
                EXIT_NOT_EXECUTABLE,
                format!("{}: permission denied (not executable)", resolved.display()),
            )
        }
        Ok(_) => {}
    }
    let obstacles = elf::obstacles(&resolved, path_var.as_deref());
    // What LD_PRELOAD cannot reach runs under the cgroup BPF placement (exec_cgroup.rs).
    let switch = |f: &str| args[..i].iter().any(|a| a == f);
    if let (true, Some(cfg)) = (switch("--cgroup") || !obstacles.is_empty(), ev.config()) {
        let allow = switch("--allow-unplaced");
        if let Some(code) =
            exec_cgroup::place_or_refuse(&resolved, program, &args[i + 1..], cfg, &obstacles, allow)
        {
            return code;
        }
    }
    for o in obstacles {
        eprintln!(
            "portrange exec: warning: {} cannot be reached by LD_PRELOAD: {o}; its flows will NOT be \
             kept in the slice (the cgroup placement or the nftables guard covers such programs)",
            resolved.display()
        );
    }

    let mut cmd = Command::new(&resolved);
    cmd.arg0(program).args(&args[i + 1..]).env("LD_PRELOAD", ld_preload(&so));
    for (k, v) in flags.env() {
        cmd.env(k, v);
    }
    let err = cmd.exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound && !Path::new(&resolved).exists() {
        EXIT_NOT_FOUND
    } else {
        EXIT_NOT_EXECUTABLE
    };
    fail(code, format!("cannot run {}: {err}", resolved.display()))
}
