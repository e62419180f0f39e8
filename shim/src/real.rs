//! The real libc functions, found with `dlsym(RTLD_NEXT, ...)` and cached in atomics. Every one
//! is resolved by the initialisation (`resolve_all`, from the library constructor or the first
//! hooked call, whichever comes first), so no hook runs `dlsym` later — not from a signal
//! handler, not in a fork child. A call before that (impossible in practice) resolves on the
//! spot; a race resolves twice, harmlessly. The shim's own calls use these directly, so they
//! never pass through its hooks; the re-entry guard covers whatever still does (std's `close`).

use libc::{c_int, c_uint, c_ulong, c_void, sockaddr, socklen_t, ssize_t};
use std::sync::atomic::{AtomicPtr, Ordering};

fn resolve(slot: &AtomicPtr<c_void>, names: &[&std::ffi::CStr]) -> *mut c_void {
    let p = slot.load(Ordering::Relaxed);
    if !p.is_null() {
        return p;
    }
    for name in names {
        // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT searches the objects after ours.
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
        if !p.is_null() {
            slot.store(p, Ordering::Relaxed);
            return p;
        }
    }
    std::ptr::null_mut()
}

/// One slot per real function, named after it.
#[allow(non_upper_case_globals)]
mod slot {
    use super::*;
    macro_rules! slots {
        ($($name:ident),*) => {$(
            pub static $name: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
        )*};
    }
    slots!(
        connect,
        bind,
        setsockopt,
        getsockopt,
        listen,
        getsockname,
        sendto,
        sendmsg,
        sendmmsg,
        epoll_ctl,
        close,
        dup,
        dup2,
        dup3,
        fcntl,
        fcntl64,
        socket,
        accept,
        accept4
    );
}

macro_rules! real {
    ($( $name:ident [$($sym:literal),+] : fn($($arg:ident: $ty:ty),*) -> $ret:ty; )*) => {
        $(
        /// The next definition of this libc function after the shim's.
        ///
        /// # Safety
        /// As the libc function: the pointers must be valid as it requires.
        pub unsafe fn $name($($arg: $ty),*) -> $ret {
            let p = resolve(&slot::$name, &[$($sym),+]);
            if p.is_null() {
                crate::errno::set(libc::ENOSYS);
                return -1 as $ret;
            }
            // SAFETY: the symbol has this C signature in glibc; the caller upholds its contract.
            // "C-unwind": a cancellation point (connect, close, send*, fcntl F_SETLKW) unwinds
            // when the thread is cancelled, through the hook that called it.
            unsafe {
                let f: unsafe extern "C-unwind" fn($($ty),*) -> $ret = std::mem::transmute(p);
                f($($arg),*)
            }
        }
        )*

        /// Resolve every real function now (the initialisation calls this once per process).
        pub fn resolve_all() {
            $( resolve(&slot::$name, &[$($sym),+]); )*
            for i in 0..EXEC_NAMES.len() {
                exec_fn(i);
            }
        }
    };
}

real! {
    connect [c"connect"]: fn(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    bind [c"bind"]: fn(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    setsockopt [c"setsockopt"]: fn(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int;
    getsockopt [c"getsockopt"]: fn(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
    listen [c"listen"]: fn(fd: c_int, backlog: c_int) -> c_int;
    getsockname [c"getsockname"]: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    sendto [c"sendto"]: fn(fd: c_int, buf: *const c_void, n: usize, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t;
    sendmsg [c"sendmsg"]: fn(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t;
    sendmmsg [c"sendmmsg"]: fn(fd: c_int, msgs: *mut libc::mmsghdr, n: c_uint, flags: c_int) -> c_int;
    epoll_ctl [c"epoll_ctl"]: fn(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int;
    close [c"close"]: fn(fd: c_int) -> c_int;
    dup [c"dup"]: fn(fd: c_int) -> c_int;
    dup2 [c"dup2"]: fn(old: c_int, new: c_int) -> c_int;
    dup3 [c"dup3"]: fn(old: c_int, new: c_int, flags: c_int) -> c_int;
    fcntl [c"fcntl"]: fn(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int;
    fcntl64 [c"fcntl64", c"fcntl"]: fn(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int;
    socket [c"socket"]: fn(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    accept [c"accept"]: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    accept4 [c"accept4"]: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
}

/// The exec family and the calls that spawn a program (`exec.rs`'s tail jumps), by index: the
/// stubs jump to these addresses with the program's registers untouched, so they are kept raw.
pub const EXEC_NAMES: [&std::ffi::CStr; 13] = [
    c"execve",
    c"execv",
    c"execvp",
    c"execvpe",
    c"execveat",
    c"fexecve",
    c"execl",
    c"execlp",
    c"execle",
    c"posix_spawn",
    c"posix_spawnp",
    c"system",
    c"popen",
];
static EXEC: [AtomicPtr<c_void>; EXEC_NAMES.len()] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; EXEC_NAMES.len()];
/// Stored for a symbol this libc lacks (execveat before glibc 2.34), so that it is asked once.
const ABSENT: *mut c_void = usize::MAX as *mut c_void;

/// The real function `EXEC_NAMES[i]`, or null if libc has none. Resolved by `resolve_all`; a
/// call before that (another library's constructor running a program) resolves on the spot.
pub fn exec_fn(i: usize) -> *const c_void {
    let Some(slot) = EXEC.get(i) else { return std::ptr::null() };
    let p = slot.load(Ordering::Relaxed);
    if p == ABSENT {
        return std::ptr::null();
    }
    if !p.is_null() {
        return p;
    }
    let p = resolve(slot, &[EXEC_NAMES[i]]);
    if p.is_null() {
        slot.store(ABSENT, Ordering::Relaxed);
    }
    p
}
