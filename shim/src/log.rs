//! Logging behind the `log` facade, without a lock: each record is formatted into a buffer on the
//! stack and written with one `write(2)` to a private duplicate of the stderr the program had at
//! start (an own descriptor: close-on-exec, high, checked before each write).
//!
//! Why not env_logger: it writes through a `Mutex`-guarded buffer. A program that forks while
//! another of its threads is inside a log call leaves the child that mutex locked, and the
//! child's first log line hangs it forever (issue 8, item 3: 3 of 9 children hung with
//! `PORTRANGE_LOG=debug`). Here a log call touches only atomics, the stack and one syscall.
//! A daemon that closes fd 2 and reuses the number for a socket never receives a log line.
//!
//! The filter keeps env_logger's syntax (`PORTRANGE_LOG=warn,portrange::strategy=trace`): a bare
//! level is the default, `MODULE=LEVEL` applies to that module path and below, the longest
//! matching module wins. Parsed once at initialisation into a fixed table.

use crate::sys::ownfd::OwnFd;
use log::{LevelFilter, Log, Metadata, Record};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::Relaxed};

static OUT: OwnFd = OwnFd::new();

/// One line at most this long (longer ones are cut, ending in `…`).
const LINE: usize = 1024;

/// A `fmt::Write` into a fixed buffer that silently truncates.
struct StackLine {
    buf: [u8; LINE],
    len: usize,
    cut: bool,
}

impl StackLine {
    fn new() -> StackLine {
        StackLine { buf: [0; LINE], len: 0, cut: false }
    }

    /// The bytes to write, newline-terminated (and marked if cut).
    fn finish(&mut self) -> &[u8] {
        const MARK: &[u8] = "…\n".as_bytes();
        if self.cut {
            self.len = self.len.min(LINE - MARK.len());
            // Back off to a UTF-8 boundary.
            while self.len > 0 && (self.buf[self.len] & 0xC0) == 0x80 {
                self.len -= 1;
            }
            self.buf[self.len..self.len + MARK.len()].copy_from_slice(MARK);
            self.len += MARK.len();
        } else if self.len == LINE {
            self.buf[LINE - 1] = b'\n';
        } else {
            self.buf[self.len] = b'\n';
            self.len += 1;
        }
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for StackLine {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        // Keep one byte for the newline.
        let room = LINE - 1 - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            self.cut = true;
        }
        Ok(())
    }
}

/// Write `buf` to the log descriptor with one `write(2)`, if the descriptor is still ours.
pub fn write_raw(buf: &[u8]) {
    let Some(fd) = OUT.get() else { return };
    loop {
        // SAFETY: fd is our own descriptor (checked just now); buf is valid for buf.len() bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 && crate::errno::get() == libc::EINTR {
            continue;
        }
        return;
    }
}

fn pid() -> i32 {
    // SAFETY: getpid has no preconditions (and is right after fork).
    unsafe { libc::getpid() }
}

/// One line, whatever the log filter: for configuration errors that must always be seen.
pub fn line(args: std::fmt::Arguments) {
    let e0 = crate::errno::get();
    let mut l = StackLine::new();
    let _ = write!(l, "portrange[{}]: {args}", pid());
    write_raw(l.finish());
    crate::errno::set(e0);
}

// ---------------------------------------------------------------------------------------------
// The filter
// ---------------------------------------------------------------------------------------------

/// At most this many `MODULE=LEVEL` directives (more are ignored, with a warning line).
const MAX_DIRECTIVES: usize = 16;
/// Module paths longer than this never match (ours are all shorter).
const MAX_MODULE: usize = 64;

/// The parsed filter: written once by `init` before the logger is installed, read lock-free.
struct Filter {
    default: AtomicU8,
    count: AtomicUsize,
    modules: [Module; MAX_DIRECTIVES],
}

struct Module {
    name: [AtomicU8; MAX_MODULE],
    len: AtomicU8,
    level: AtomicU8,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_MODULE: Module =
    Module { name: [const { AtomicU8::new(0) }; MAX_MODULE], len: AtomicU8::new(0), level: AtomicU8::new(0) };

static FILTER: Filter =
    Filter { default: AtomicU8::new(0), count: AtomicUsize::new(0), modules: [EMPTY_MODULE; MAX_DIRECTIVES] };

fn level_of(s: &str) -> Option<LevelFilter> {
    s.trim().parse::<LevelFilter>().ok()
}

fn to_u8(l: LevelFilter) -> u8 {
    l as usize as u8
}

fn from_u8(v: u8) -> LevelFilter {
    LevelFilter::iter().nth(v as usize).unwrap_or(LevelFilter::Off)
}

/// Parse an env_logger filter (validated by `config::parse_log_filter`): directives `LEVEL`,
/// `MODULE` (= everything for that module) or `MODULE=LEVEL`. Returns (default, modules).
fn parse(filter: &str) -> (LevelFilter, Vec<(&str, LevelFilter)>) {
    let mut default = None;
    let mut modules = Vec::new();
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match d.split_once('=') {
            Some((m, l)) => {
                if let Some(l) = level_of(l) {
                    modules.push((m.trim(), l));
                }
            }
            None => match level_of(d) {
                Some(l) => default = Some(l),
                None => modules.push((d, LevelFilter::Trace)),
            },
        }
    }
    // env_logger: with module directives only, everything else is off.
    let default = default.unwrap_or(if modules.is_empty() { LevelFilter::Error } else { LevelFilter::Off });
    (default, modules)
}

/// The level enabled for `target` (a module path): the longest matching module directive, else
/// the default. A directive `a::b` matches `a::b` and `a::b::c`, not `a::bc`.
fn enabled_level(target: &str) -> LevelFilter {
    let mut best: Option<(usize, u8)> = None;
    let n = FILTER.count.load(Relaxed).min(MAX_DIRECTIVES);
    for m in &FILTER.modules[..n] {
        let len = m.len.load(Relaxed) as usize;
        let t = target.as_bytes();
        if t.len() < len || (t.len() > len && !target[len..].starts_with("::")) {
            continue;
        }
        if (0..len).all(|i| m.name[i].load(Relaxed) == t[i]) && best.is_none_or(|(l, _)| len >= l) {
            best = Some((len, m.level.load(Relaxed)));
        }
    }
    from_u8(best.map(|(_, l)| l).unwrap_or_else(|| FILTER.default.load(Relaxed)))
}

struct Logger;

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= enabled_level(metadata.target())
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let e0 = crate::errno::get();
        let mut l = StackLine::new();
        let _ = write!(l, "portrange[{}] {}: {}", pid(), record.level(), record.args());
        write_raw(l.finish());
        crate::errno::set(e0);
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Take the program's current stderr and install the logger with `filter` (already validated).
/// Called once per process, by the initialisation (which is exclusive).
pub fn init(filter: &str) {
    OUT.dup_of(libc::STDERR_FILENO);
    let (default, modules) = parse(filter);
    FILTER.default.store(to_u8(default), Relaxed);
    let mut max = default;
    let mut n = 0;
    for (name, level) in modules {
        if n == MAX_DIRECTIVES || name.len() > MAX_MODULE {
            line(format_args!("warning: PORTRANGE_LOG: directive `{name}` ignored (too many or too long)"));
            continue;
        }
        let m = &FILTER.modules[n];
        for (i, b) in name.bytes().enumerate() {
            m.name[i].store(b, Relaxed);
        }
        m.len.store(name.len() as u8, Relaxed);
        m.level.store(to_u8(level), Relaxed);
        max = max.max(level);
        n += 1;
    }
    FILTER.count.store(n, Relaxed);
    log::set_max_level(max);
    if !INSTALLED.swap(true, Relaxed) {
        // `set_logger` would spin forever in a child forked while another thread was inside it;
        // the initialisation that calls this is exclusive per process (see `crate::init`), and the
        // shim's copy of the `log` crate is its own (a Rust host program has another one).
        // SAFETY: no other call to set_logger/set_logger_racy can run at the same time.
        let _ = unsafe { log::set_logger_racy(&LOGGER) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(filter: &str) {
        let (default, modules) = parse(filter);
        FILTER.default.store(to_u8(default), Relaxed);
        for (i, (name, level)) in modules.iter().enumerate() {
            let m = &FILTER.modules[i];
            for (j, b) in name.bytes().enumerate() {
                m.name[j].store(b, Relaxed);
            }
            m.len.store(name.len() as u8, Relaxed);
            m.level.store(to_u8(*level), Relaxed);
        }
        FILTER.count.store(modules.len(), Relaxed);
    }

    #[test]
    fn env_logger_filter_semantics() {
        install("warn,portrange::strategy=trace,portrange::strategy::cookie=error");
        assert_eq!(enabled_level("portrange::flow"), LevelFilter::Warn);
        assert_eq!(enabled_level("portrange::strategy"), LevelFilter::Trace);
        assert_eq!(enabled_level("portrange::strategy::retry"), LevelFilter::Trace);
        assert_eq!(enabled_level("portrange::strategy::cookie"), LevelFilter::Error);
        assert_eq!(enabled_level("portrange::strategyx"), LevelFilter::Warn);
        install("portrange=debug");
        assert_eq!(enabled_level("portrange::flow"), LevelFilter::Debug);
        assert_eq!(enabled_level("other"), LevelFilter::Off);
        install("portrange");
        assert_eq!(enabled_level("portrange::sys::diag"), LevelFilter::Trace);
        install("DEBUG");
        assert_eq!(enabled_level("portrange::flow"), LevelFilter::Debug);
        install("off");
        assert_eq!(enabled_level("portrange::flow"), LevelFilter::Off);
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let mut l = StackLine::new();
        let s = "é".repeat(LINE);
        let _ = write!(l, "{s}");
        let out = l.finish().to_vec();
        assert!(out.len() <= LINE);
        let text = std::str::from_utf8(&out).expect("valid UTF-8");
        assert!(text.ends_with("…\n"));
        let mut l = StackLine::new();
        let _ = write!(l, "short");
        assert_eq!(l.finish(), b"short\n");
    }
}
