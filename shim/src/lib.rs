//! `libportrange.so`: an LD_PRELOAD shim that makes a program's outgoing TCP and UDP flows leave
//! from a configured slice (one source IP and a range of its ports). See SPEC.md for the contract
//! and README.md for the layout; the path of a call is
//! `hooks` → `calls::*` (→ `scope::decide`) → `strategy::*` → `sys::*`; the hook makes the
//! program's own call from its frame.

#![deny(unsafe_op_in_unsafe_fn)]

pub use portrange_lib::{choice, config, scope};

#[cfg_attr(test, allow(dead_code))]
mod calls;
mod errno;
mod exec;
mod fdtable;
mod guard;
mod log;
#[cfg_attr(test, allow(dead_code))]
mod real;
mod socket;
mod stats;
mod strategy;
mod sys;

#[cfg(test)]
mod testns;

#[cfg(not(test))]
mod dl;
#[cfg(not(test))]
mod hooks;

use config::{Config, OnError};
use std::sync::atomic::{
    AtomicI32, AtomicPtr, AtomicU64, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};

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
    /// TIME_WAIT 4-tuples can be reused by an explicit bind (net.ipv4.tcp_timestamps is on).
    pub tw_reusable: bool,
}

pub enum Mode {
    /// PORTRANGE unset/empty, or invalid with PORTRANGE_ON_ERROR=passthrough.
    Inactive,
    /// Invalid configuration with PORTRANGE_ON_ERROR=deny: in-scope connects/sends get EPERM.
    Deny,
    Active(Active),
}

/// The mode, once initialised (a leaked box: set once per process, read with one atomic load).
static MODE: AtomicPtr<Mode> = AtomicPtr::new(std::ptr::null_mut());
/// `PORTRANGE_STATS`, once initialised (a leaked box, like MODE).
static STATS_PATH: AtomicPtr<String> = AtomicPtr::new(std::ptr::null_mut());
/// This process's pid, updated in the fork child; a mismatch with getpid() means we run in a
/// vfork child (or a raw clone) that shares the parent's memory and must not change its state.
static PID: AtomicI32 = AtomicI32::new(0);

/// The initialisation's state: 0 = not started, `DONE`, or the thread running it as
/// `pid << 32 | tid`. Not a `Once`/`OnceLock`: a child forked while another thread runs the
/// initialisation would wait for that thread forever (it does not exist in the child); here the
/// child sees another pid and takes over.
static INIT: AtomicU64 = AtomicU64::new(0);
const DONE: u64 = u64::MAX;

/// The mode. The first call in a process initialises it (parse the configuration, set up
/// logging, probe the kernel): from the library constructor, or from the first hooked call if a
/// constructor that runs before ours (another preloaded library's) makes one. `None` only on the
/// thread that is running the initialisation itself (a signal handler that interrupted it).
pub fn mode() -> Option<&'static Mode> {
    let p = MODE.load(Acquire);
    if p.is_null() {
        ensure_init();
        return mode_now();
    }
    // SAFETY: MODE is only ever set to a leaked Box<Mode>, never freed.
    Some(unsafe { &*p })
}

fn mode_now() -> Option<&'static Mode> {
    let p = MODE.load(Acquire);
    // SAFETY: as in `mode`.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// True in a vfork child (shared memory with the parent).
pub fn in_shared_child() -> bool {
    // SAFETY: getpid has no preconditions.
    PID.load(Relaxed) != unsafe { libc::getpid() }
}

/// The library constructor: initialise now unless a hooked call already did.
#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;

#[cfg_attr(test, allow(dead_code))]
extern "C" fn constructor() {
    let Some(_inside) = guard::enter() else { return };
    ensure_init();
}

/// This thread, as `pid << 32 | tid`.
fn me() -> u64 {
    // SAFETY: getpid/gettid have no preconditions.
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    (pid as u32 as u64) << 32 | tid as u32 as u64
}

/// Run the initialisation exactly once per process, whichever comes first (constructor or a
/// hooked call), without a lock: one thread runs it, other threads of the process wait for it
/// (it is short and takes no lock of theirs), a re-entry on the running thread returns at once,
/// and a fork child whose initialising thread did not follow it takes over.
fn ensure_init() {
    let me = me();
    let mut spins = 0u32;
    loop {
        let cur = INIT.load(Acquire);
        let take = match cur {
            DONE => return,
            0 => true,
            _ if cur == me => return,
            _ if (cur >> 32) != (me >> 32) => true,
            _ => false,
        };
        if take {
            if INIT.compare_exchange(cur, me, Acquire, Relaxed).is_ok() {
                run_init();
                INIT.store(DONE, Release);
                return;
            }
            continue;
        }
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }
}

fn run_init() {
    // From a hook's fast path the thread may not be inside the shim yet: the initialisation's
    // own libc calls (std's file reads and closes) must pass straight through, and no
    // cancellation point may act inside it (no Rust frame is unwound by a cancellation).
    let _inside = guard::enter();
    let mut cancel: libc::c_int = 0;
    // SAFETY: plain libc call writing the previous state into `cancel`.
    unsafe { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &mut cancel) };
    // Every real symbol first: no hook resolves one later (a signal handler must not dlsym).
    real::resolve_all();
    // The pid page (sys::pid) before any hooked call can ask for the pid.
    sys::pid::init();
    // SAFETY: getpid has no preconditions.
    PID.store(unsafe { libc::getpid() }, Relaxed);
    let mode = std::panic::catch_unwind(build_mode).unwrap_or(Mode::Inactive);
    MODE.store(Box::into_raw(Box::new(mode)), Release);
    // SAFETY: as above; restoring the program's state does not act on a pending request.
    unsafe { pthread_setcancelstate(cancel, &mut cancel) };
}

extern "C" {
    fn pthread_setcancelstate(state: libc::c_int, old: *mut libc::c_int) -> libc::c_int;
}
const PTHREAD_CANCEL_DISABLE: libc::c_int = 1;

fn env(k: &str) -> Option<String> {
    // Non-UTF-8 values are kept (lossily) so that they are reported as invalid, not ignored.
    std::env::var_os(k).map(|v| v.to_string_lossy().into_owned())
}

fn build_mode() -> Mode {
    let parsed = config::parse(env);
    let Some(result) = parsed.config else { return Mode::Inactive };

    log::init(&parsed.log);
    std::panic::set_hook(Box::new(|info| {
        ::log::error!("internal error (the call fails, the program goes on): {info}");
    }));
    for w in &parsed.warnings {
        log::line(format_args!("warning: {w}"));
    }
    if let Some(p) = parsed.stats {
        STATS_PATH.store(Box::into_raw(Box::new(p)), Release);
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
    // Without AF_NETLINK (a hardened service) flows are placed without look-ups; one warning.
    sys::diag::probe();
    match choice::choose_tcp(&cfg, &choice::KernelFacts::read()) {
        Ok((tcp, why)) => {
            ::log::debug!("tcp strategy {}: {why}", tcp.name());
            if tcp == Tcp::Kernel && sys::sysctl::tcp_tw_reuse() != Some(1) {
                ::log::info!(
                    "kernel strategy with net.ipv4.tcp_tw_reuse != 1: the kernel never reuses a 4-tuple \
                     in TIME_WAIT (loopback: after 1 s); those flows are placed by an explicit bind"
                );
            }
            ::log::debug!(
                "active: slices {}; skip {}; tcp strategy {}",
                cfg.slices.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
                cfg.skip.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
                tcp.name()
            );
            conntrack_plan(&cfg, tcp);
            Mode::Active(Active {
                cfg,
                tcp,
                rotate: AtomicUsize::new(0),
                reserved: sys::sysctl::Reserved::read(),
                precheck: parsed.precheck && sys::diag::available(),
                tw_reusable: sys::holder::timestamps_on(),
            })
        }
        Err(why) => {
            config_error(&why, parsed.on_error);
            on_error(parsed.on_error)
        }
    }
}

/// Decide, once, what the shim does about conntrack (seed 004) and say so when it cannot help.
fn conntrack_plan(cfg: &Config, tcp: Tcp) {
    use portrange_lib::conntrack::{self as ct, Netlink};
    let active = ct::active_here();
    let wanted = match cfg.conntrack {
        config::ConntrackChoice::Off => false,
        config::ConntrackChoice::Auto => active,
        _ => true,
    };
    let netlink = if wanted { sys::conntrack::probe() } else { Netlink::Unavailable(0) };
    let (plan, warning) = ct::plan(cfg.conntrack, active, netlink);
    if let Some(w) = warning {
        ::log::warn!("{w}");
    }
    if !plan.is_off() && tcp == Tcp::Kernel {
        ::log::info!(
            "PORTRANGE_STRATEGY=kernel: the kernel picks TCP ports inside connect(), too late to \
             reserve them in conntrack; TCP flows are verified after connect instead (a rewritten \
             one is aborted after its SYN left), the retry strategy reserves them"
        );
    }
    ::log::debug!(
        "conntrack {}active here; PORTRANGE_CONNTRACK={}: {}",
        if active { "" } else { "not " },
        cfg.conntrack,
        plan.describe()
    );
    sys::conntrack::init(plan);
}

fn config_error(what: &str, on_error: OnError) {
    let consequence = match on_error {
        OnError::Deny => "TCP/UDP connects and first sends will fail with EPERM (PORTRANGE_ON_ERROR=deny)",
        OnError::Passthrough => "the shim is inactive (PORTRANGE_ON_ERROR=passthrough)",
    };
    log::line(format_args!("error: {what} — {consequence}"));
}

fn on_error(o: OnError) -> Mode {
    match o {
        OnError::Deny => Mode::Deny,
        OnError::Passthrough => Mode::Inactive,
    }
}

extern "C" fn write_stats() {
    let path = STATS_PATH.load(Acquire);
    if path.is_null() {
        return;
    }
    // SAFETY: STATS_PATH is only ever set to a leaked Box<String>, never freed.
    let path: &String = unsafe { &*path };
    let Some(_inside) = guard::enter() else { return };
    let _ = std::panic::catch_unwind(|| {
        let strategy = match mode_now() {
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
