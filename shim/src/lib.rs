//! `libportrange.so`: an LD_PRELOAD shim that makes a program's outgoing TCP and UDP flows leave
//! from a configured slice (one source IP and a range of its ports). See SPEC.md for the contract
//! and README.md for the layout; the path of a call is
//! `hooks` → `guard` → `flow` (→ `scope::decide`) → `strategy::*` → errno/return.

pub use portrange_lib::{choice, config, scope};

mod errno;
mod fdtable;
#[cfg_attr(test, allow(dead_code))]
mod flow;
mod guard;
mod log;
#[cfg_attr(test, allow(dead_code))]
mod real;
mod stats;
mod strategy;
mod sys;

#[cfg(not(test))]
mod hooks;

use config::{Config, OnError};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

pub use choice::Tcp;

pub struct Active {
    pub cfg: Config,
    pub tcp: Tcp,
    /// Rotating start among several slices of one family.
    pub rotate: AtomicUsize,
    /// net.ipv4.ip_local_reserved_ports at start.
    pub reserved: sys::sysctl::Reserved,
    /// The retry strategy looks each candidate 4-tuple up before binding it.
    pub precheck: bool,
}

pub enum Mode {
    /// PORTRANGE unset/empty, or invalid with PORTRANGE_ON_ERROR=passthrough.
    Inactive,
    /// Invalid configuration with PORTRANGE_ON_ERROR=deny: in-scope connects/sends get EPERM.
    Deny,
    Active(Active),
}

static MODE: OnceLock<Mode> = OnceLock::new();
static STATS_PATH: OnceLock<String> = OnceLock::new();
/// This process's pid, updated in the fork child; a mismatch with getpid() means we run in a
/// vfork child (or a raw clone) that shares the parent's memory and must not change its state.
static PID: AtomicI32 = AtomicI32::new(0);

/// The mode, once the constructor has run (`None` before: every call passes through).
pub fn mode() -> Option<&'static Mode> {
    MODE.get()
}

/// True in a vfork child (shared memory with the parent).
pub fn in_shared_child() -> bool {
    // SAFETY: getpid has no preconditions.
    PID.load(Relaxed) != unsafe { libc::getpid() }
}

/// The library constructor: parse the configuration once, set up logging, probe the kernel.
#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

#[cfg_attr(test, allow(dead_code))]
extern "C" fn init() {
    let Some(_inside) = guard::enter() else { return };
    let _ = std::panic::catch_unwind(|| {
        let mode = build_mode();
        let _ = MODE.set(mode);
    });
}

fn env(k: &str) -> Option<String> {
    // Non-UTF-8 values are kept (lossily) so that they are reported as invalid, not ignored.
    std::env::var_os(k).map(|v| v.to_string_lossy().into_owned())
}

fn build_mode() -> Mode {
    let parsed = config::parse(env);
    let Some(result) = parsed.config else { return Mode::Inactive };

    // SAFETY: getpid has no preconditions.
    PID.store(unsafe { libc::getpid() }, Relaxed);
    log::init(&parsed.log);
    std::panic::set_hook(Box::new(|info| {
        ::log::error!("internal error (the call fails, the program goes on): {info}");
    }));
    for w in &parsed.warnings {
        log::line(&format!("warning: {w}"));
    }
    if let Some(p) = parsed.stats {
        let _ = STATS_PATH.set(p);
    }
    at_exit_and_fork();

    let cfg = match result {
        Ok(cfg) => cfg,
        Err(errors) => {
            for e in &errors {
                config_error(&e.to_string(), parsed.on_error);
            }
            return on_error(parsed.on_error);
        }
    };
    match choice::choose_tcp(&cfg, &choice::KernelFacts::read()) {
        Ok((tcp, why)) => {
            ::log::debug!("tcp strategy {}: {why}", tcp.name());
            if tcp == Tcp::Kernel && sys::sysctl::tcp_tw_reuse() != Some(1) {
                ::log::info!(
                    "kernel strategy with net.ipv4.tcp_tw_reuse != 1: a 4-tuple in TIME_WAIT stays \
                     unusable for 60 s (loopback: 1 s)"
                );
            }
            ::log::debug!(
                "active: slices {}; skip {}; tcp strategy {}",
                cfg.slices.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
                cfg.skip.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
                tcp.name()
            );
            Mode::Active(Active {
                cfg,
                tcp,
                rotate: AtomicUsize::new(0),
                reserved: sys::sysctl::Reserved::read(),
                precheck: parsed.precheck,
            })
        }
        Err(why) => {
            config_error(&why, parsed.on_error);
            on_error(parsed.on_error)
        }
    }
}

fn config_error(what: &str, on_error: OnError) {
    let consequence = match on_error {
        OnError::Deny => "TCP/UDP connects and first sends will fail with EPERM (PORTRANGE_ON_ERROR=deny)",
        OnError::Passthrough => "the shim is inactive (PORTRANGE_ON_ERROR=passthrough)",
    };
    log::line(&format!("error: {what} — {consequence}"));
}

fn on_error(o: OnError) -> Mode {
    match o {
        OnError::Deny => Mode::Deny,
        OnError::Passthrough => Mode::Inactive,
    }
}

extern "C" fn write_stats() {
    let Some(path) = STATS_PATH.get() else { return };
    let Some(_inside) = guard::enter() else { return };
    let _ = std::panic::catch_unwind(|| {
        let strategy = match MODE.get() {
            Some(Mode::Active(a)) => a.tcp.name(),
            Some(Mode::Deny) => "deny",
            _ => "inactive",
        };
        let line = stats::json(std::process::id() as i32, strategy) + "\n";
        use std::io::Write;
        let r = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = r {
            ::log::warn!("PORTRANGE_STATS={path:?}: cannot write statistics: {e}");
        }
    });
}

extern "C" fn after_fork_child() {
    // SAFETY: getpid has no preconditions.
    PID.store(unsafe { libc::getpid() }, Relaxed);
    stats::reset();
}

fn at_exit_and_fork() {
    // SAFETY: registering plain extern "C" functions that live as long as the process.
    unsafe {
        libc::atexit(write_stats);
        libc::pthread_atfork(None, None, Some(after_fork_child));
    }
}
