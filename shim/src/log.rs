//! Logging: env_logger under `PORTRANGE_LOG`, into a private duplicate of the stderr the
//! program had at start (an own descriptor: close-on-exec, high, checked before each write).
//! A daemon that closes fd 2 and reuses the number for a socket never receives a log line.

use crate::sys::ownfd::OwnFd;
use std::io::Write;

static OUT: OwnFd = OwnFd::new();

/// Write all of `buf` to the log descriptor, if it is still ours; drop it otherwise.
pub fn write_raw(buf: &[u8]) {
    let Some(fd) = OUT.get() else { return };
    let mut rest = buf;
    while !rest.is_empty() {
        // SAFETY: fd is our own descriptor; rest is valid for rest.len() bytes.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            if crate::errno::get() == libc::EINTR {
                continue;
            }
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// One line, whatever the log filter: for configuration errors that must always be seen.
pub fn line(msg: &str) {
    write_raw(format!("portrange[{}]: {msg}\n", std::process::id()).as_bytes());
}

struct Out;

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write_raw(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Take the program's current stderr and install the logger with `filter` (already validated).
pub fn init(filter: &str) {
    OUT.dup_of(libc::STDERR_FILENO);
    let _ = env_logger::Builder::new()
        .parse_filters(filter)
        .format(|buf, rec| {
            // SAFETY: getpid has no preconditions (and is right after fork).
            let pid = unsafe { libc::getpid() };
            writeln!(buf, "portrange[{pid}] {}: {}", rec.level(), rec.args())
        })
        .target(env_logger::Target::Pipe(Box::new(Out)))
        .try_init();
}
