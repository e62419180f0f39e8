//! `portrange exec` for a program LD_PRELOAD cannot reach (static, Go, musl, set-id: from its
//! ELF; or any program with `--cgroup`): run it in a fresh cgroup v2 group with the BPF
//! placement attached, held by this process until the group is empty, then detached and the
//! group removed. When the placement cannot be had (no cgroup v2, no BPF permission, an old
//! kernel) the program is not run, unless `--allow-unplaced`: then it runs with a warning.

use crate::bpf;
use crate::cgroup;
use portrange::config::Config;
use portrange::elf::Obstacle;
use std::convert::Infallible;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

/// The cgroup placement for a program the shim cannot reach (`obstacles`, or `--cgroup`):
/// runs it placed and exits with its status; when the placement is unavailable, refuses (an
/// exit status) or, with `allow_unplaced`, warns and returns None so the caller runs it as usual.
pub fn place_or_refuse(
    resolved: &Path,
    program: &OsStr,
    args: &[OsString],
    cfg: &Config,
    obstacles: &[Obstacle],
    allow_unplaced: bool,
) -> Option<ExitCode> {
    let why = obstacles.first().map_or_else(|| "--cgroup".to_string(), |o| o.to_string());
    let Err(e) = run_placed(resolved, program, args, cfg);
    let name = resolved.display();
    if !allow_unplaced {
        eprintln!(
            "portrange exec: {name}: {why}; the cgroup placement is unavailable: {e}; not started \
             (--allow-unplaced runs it anyway, UNPLACED)"
        );
        return Some(ExitCode::from(125));
    }
    eprintln!(
        "portrange exec: warning: {name}: {why}; the cgroup placement is unavailable: {e}; running it \
         UNPLACED: its flows may leave from outside the slice"
    );
    None
}

/// Runs the program placed by the cgroup program and exits with its status; returns only when
/// the placement is unavailable (the error says why).
fn run_placed(
    resolved: &Path,
    program: &OsStr,
    args: &[OsString],
    cfg: &Config,
) -> Result<Infallible, String> {
    let skip = if cfg.default_skip { None } else { Some(cfg.skip.clone()) };
    let cfg = cgroup::encode(&cfg.slices, skip)?;

    let parent = cgroup_parent()?;
    let group = parent.join(format!("portrange-exec-{}", std::process::id()));
    std::fs::create_dir(&group).map_err(|e| format!("cannot create cgroup {}: {e}", group.display()))?;
    let root = match bpf::pin_root() {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir(&group);
            return Err(e);
        }
    };
    // A marker while this exec runs, so the shared claims map stays pinned for others.
    let marker = root.join(format!("exec-{}", std::process::id()));
    let _ = std::fs::create_dir(&marker);
    let cleanup = |placement: Option<bpf::Placement>| {
        drop(placement);
        let _ = std::fs::remove_dir(&group);
        let _ = std::fs::remove_dir(&marker);
        bpf::tidy_root(&root);
    };
    let placement = match bpf::open_cgroup(&group)
        .and_then(|cg| bpf::load(&cfg, &root).and_then(|e| bpf::attach(e, &cg)))
    {
        Ok(p) => p,
        Err(e) => {
            cleanup(None);
            return Err(e);
        }
    };
    let procs = match std::fs::OpenOptions::new().write(true).open(group.join("cgroup.procs")) {
        Ok(f) => f,
        Err(e) => {
            cleanup(Some(placement));
            return Err(format!("{}: {e}", group.join("cgroup.procs").display()));
        }
    };
    let procs_fd = procs.as_raw_fd();
    let mut cmd = Command::new(resolved);
    cmd.arg0(program).args(args).env_remove("LD_PRELOAD");
    // SAFETY: only async-signal-safe calls (prctl, getppid, write, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The placement lives as long as this process: if it dies, so does the program.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // Join the group before exec: no flow of the program is ever unplaced.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The terminal's signals go to the program; this process waits for it (as system() does).
    // SAFETY: setting dispositions to SIG_IGN; the child gets them back at exec.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let status = match cmd.spawn() {
        Ok(mut child) => child.wait(),
        Err(e) => {
            cleanup(Some(placement));
            let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            eprintln!("portrange exec: cannot run {}: {e}", resolved.display());
            std::process::exit(code);
        }
    };
    drop(procs);
    // Daemons the program left behind are still placed: wait until the group is empty.
    while populated(&group) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if std::env::var_os("PORTRANGE_EXEC_COUNTERS").is_some() {
        let c: Vec<String> = placement.counters().iter().map(|(n, v)| format!("{n}={v}")).collect();
        eprintln!("portrange exec: cgroup placement counters: {}", c.join(" "));
    }
    cleanup(Some(placement));
    let code = match status {
        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        Err(e) => {
            eprintln!("portrange exec: waiting for {}: {e}", resolved.display());
            1
        }
    };
    std::process::exit(code);
}

fn populated(group: &Path) -> bool {
    std::fs::read_to_string(group.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Where the program's group is made: under this process's own cgroup v2 group (so a service's
/// limits still apply), in the first cgroup2 mount; $PORTRANGE_CGROUP_ROOT overrides.
fn cgroup_parent() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PORTRANGE_CGROUP_ROOT").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mounts =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS... - FSTYPE SOURCE SUPEROPTS
    let mount = mounts
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or(
            "no cgroup v2 hierarchy is mounted (mount -t cgroup2 none DIR, or set PORTRANGE_CGROUP_ROOT)",
        )?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|s| {
        s.lines().find_map(|l| l.strip_prefix("0::").map(|p| p.trim_start_matches('/').to_string()))
    });
    Ok(own.map(|o| mount.join(o)).filter(|p| p.is_dir()).unwrap_or(mount))
}
