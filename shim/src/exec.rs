//! exec and the calls that start a program (`posix_spawn`, `system`, `popen`): what the new
//! program inherits must look as the kernel would show it (issue 9 case 7).
//!
//! Two things live only in this process's memory and are lost across an exec:
//! - a deferred `bind(wildcard | SLICE_IP, 0)` (`Phase::DeferredBind`): the new program would see
//!   port 0 where the kernel had bound a port at bind time;
//! - the program's own IP_BIND_ADDRESS_NO_PORT / IP_LOCAL_PORT_RANGE on a socket the kernel
//!   strategy placed: the shim's values stay on the socket after connect (this process answers
//!   getsockopt from its record, through dups and in fork children too), a new program would
//!   read the kernel's.
//!
//! So right before an exec, every socket that survives it (no FD_CLOEXEC, or the source of a
//! `posix_spawn` dup2 action) gets its deferred bind carried out — the slice IP and a port,
//! since the new program's shim leaves a bound port alone (`bind::materialize_for_exec`) — and
//! the program's option values back (`socket::BeforeExec`). A close-on-exec socket is
//! left alone: this process may still place it. `posix_spawn`, `system` and `popen` do it in the
//! parent before calling libc: glibc makes the child's exec through an internal `__execve` that
//! cannot be interposed, and the child's socket is the parent's object.
//!
//! Cost: `socket::exec_pending` counts the sockets that may need this; an exec with none costs
//! one atomic load (no syscall, no lock, no allocation, no log line). Otherwise one pass over
//! the fd table's entries in use, an fstat (identity) and an fcntl(F_GETFD) per pending entry.
//! The pass may run in a vfork child (it shares the parent's memory; its sockets are the
//! parent's objects, so the work done is right for the parent too): it allocates nothing, takes
//! no lock, and leaves the count as it is there (its descriptor table is its own).
//!
//! The hooks are naked tail jumps (x86_64), one generic stub for all: `execl`, `execlp` and
//! `execle` are variadic (stable Rust cannot define them), and a tail jump leaves every call as
//! the program made it. The stub saves the argument registers (and %al, a variadic call's count
//! of vector registers), calls [`before`] with the call's index and third argument, restores
//! them and jumps to the real function: the stack (arguments past the sixth, the return
//! address) is never touched. Vector registers are not saved: none of these functions takes a
//! floating-point argument.

use crate::socket::{self, fact, BeforeExec, Managed, State};
use crate::sys::addr;
use crate::{errno, fdtable, guard, real};
use libc::{c_int, c_void};

/// Indices into `real::EXEC_NAMES`.
#[cfg_attr(test, allow(dead_code))]
mod kind {
    pub const EXECVE: usize = 0;
    pub const EXECV: usize = 1;
    pub const EXECVP: usize = 2;
    pub const EXECVPE: usize = 3;
    pub const EXECVEAT: usize = 4;
    pub const FEXECVE: usize = 5;
    pub const EXECL: usize = 6;
    pub const EXECLP: usize = 7;
    pub const EXECLE: usize = 8;
    pub const POSIX_SPAWN: usize = 9;
    pub const POSIX_SPAWNP: usize = 10;
    pub const SYSTEM: usize = 11;
    pub const POPEN: usize = 12;
}

/// Put the program's own IP_BIND_ADDRESS_NO_PORT / IP_LOCAL_PORT_RANGE back on socket `ino` at
/// `fd`, where the shim changed them.
pub fn restore_options(fd: c_int, ino: u64) {
    let s = socket::of(fd, ino);
    if let Some(own) = s.program_value(Managed::NoPort) {
        let _ = addr::set_u32(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, u32::from(own));
    }
    if s.has(fact::SHIM_RANGE) {
        let own = fdtable::prog_range(fd, ino);
        let _ = addr::set_u32(fd, libc::IPPROTO_IP, crate::sys::sysctl::IP_LOCAL_PORT_RANGE, own);
    }
    socket::go(fd, ino, State::options_restored);
}

/// glibc's `struct __spawn_action` (spawn_int.h; 32 bytes on x86_64, unchanged since 2.2): a tag,
/// then a union whose first two ints are (fd, newfd) for dup2, (fd) for close, (from) for
/// closefrom.
#[repr(C)]
struct SpawnAction {
    tag: c_int,
    _pad: c_int,
    fd: c_int,
    newfd: c_int,
    _rest: [u64; 2],
}
const SPAWN_DO_CLOSE: c_int = 0;
const SPAWN_DO_DUP2: c_int = 1;
const SPAWN_DO_CLOSEFROM: c_int = 5;

/// glibc's `posix_spawn_file_actions_t` (spawn.h; the libc crate keeps its fields private).
#[repr(C)]
struct FileActions {
    allocated: c_int,
    used: c_int,
    actions: *const SpawnAction,
    _pad: [c_int; 16],
}
const _: () =
    assert!(std::mem::size_of::<FileActions>() == std::mem::size_of::<libc::posix_spawn_file_actions_t>());

/// What the file actions of a `posix_spawn` (null: none) do to `fd`: `Some(true)` if it is the
/// source of a dup2 (the copy survives the exec even when `fd` is close-on-exec), `Some(false)`
/// if a close or closefrom action closes it, `None` if they leave it alone.
///
/// # Safety
/// `actions` is null or the program's initialised `posix_spawn_file_actions_t`, as
/// `posix_spawn` requires (it reads the same memory right after).
unsafe fn spawn_fate(actions: *const libc::posix_spawn_file_actions_t, fd: c_int) -> Option<bool> {
    // SAFETY: the caller's contract; `FileActions` is the same layout.
    let fa = unsafe { actions.cast::<FileActions>().as_ref() }?;
    let n = fa.used;
    if n <= 0 || n > fa.allocated || fa.actions.is_null() {
        return None;
    }
    let mut fate = None;
    for i in 0..n as usize {
        // SAFETY: glibc keeps `used` initialised actions at `actions`.
        let a = unsafe { &*fa.actions.add(i) };
        match a.tag {
            SPAWN_DO_DUP2 if a.fd == fd => return Some(true),
            SPAWN_DO_CLOSE if a.fd == fd => fate = Some(false),
            SPAWN_DO_CLOSEFROM if a.fd <= fd => fate = Some(false),
            _ => {}
        }
    }
    fate
}

/// Does `fd` survive the exec?
///
/// # Safety
/// As [`spawn_fate`].
unsafe fn survives(fd: c_int, actions: *const libc::posix_spawn_file_actions_t) -> bool {
    // SAFETY: the caller's contract.
    if let Some(fate) = unsafe { spawn_fate(actions, fd) } {
        return fate;
    }
    // The raw syscall: no hook, no cancellation point.
    // SAFETY: F_GETFD takes no argument and touches no memory.
    let flags = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) };
    flags >= 0 && flags & libc::FD_CLOEXEC as libc::c_long == 0
}

/// The pass over every socket the shim has a record of.
///
/// # Safety
/// As [`spawn_fate`].
unsafe fn sweep(actions: *const libc::posix_spawn_file_actions_t) {
    let seen = socket::exec_pending();
    let mut left = 0;
    fdtable::each(|fd, ino, word| {
        let work = State::from_word(word).before_exec();
        if work == BeforeExec::Nothing || fdtable::ino(fd) != Some(ino) {
            return; // nothing to do, or a stale entry (the number holds another file now)
        }
        // SAFETY: the caller's contract.
        if !unsafe { survives(fd, actions) } {
            left += 1;
            return;
        }
        if work == BeforeExec::Materialize {
            crate::calls::bind::materialize_for_exec(fd, ino);
        }
        // Also after a deferred bind(SLICE_IP, 0) was carried out: the shim set NO_PORT for it.
        if work == BeforeExec::Materialize || socket::of(fd, ino).before_exec() == BeforeExec::RestoreOptions
        {
            restore_options(fd, ino);
        }
    });
    // In a vfork child the descriptor table is its own (it may have closed what the parent
    // still holds): the count stays as the parent needs it.
    if !crate::in_shared_child() {
        socket::exec_swept(seen, left);
    }
}

extern "C" {
    fn pthread_setcancelstate(state: c_int, old: *mut c_int) -> c_int;
}
const PTHREAD_CANCEL_DISABLE: c_int = 1;

/// Called by every stub: do the work (if any is pending) and answer the real function.
#[cfg_attr(test, allow(dead_code))]
extern "C" fn before(which: usize, third: usize) -> *const c_void {
    if socket::exec_pending() != 0 {
        let actions = if which == kind::POSIX_SPAWN || which == kind::POSIX_SPAWNP {
            third as *const libc::posix_spawn_file_actions_t
        } else {
            std::ptr::null()
        };
        prepare(actions);
    }
    let p = real::exec_fn(which);
    if !p.is_null() {
        return p;
    }
    // A function this libc lacks (the program found it elsewhere?): fail as a missing syscall.
    match which {
        kind::POSIX_SPAWN | kind::POSIX_SPAWNP => enosys_code as *const c_void,
        kind::POPEN => enosys_null as *const c_void,
        _ => enosys_minus_one as *const c_void,
    }
}

fn prepare(actions: *const libc::posix_spawn_file_actions_t) {
    // Nested (a signal handler that execs while its thread is inside the shim): that logic may be
    // in the middle of a transition; the exec goes ahead without the pass.
    let Some(_inside) = guard::enter() else { return };
    let e0 = errno::get();
    let mut cancel: c_int = 0;
    // SAFETY: plain libc call writing the previous state into `cancel`.
    unsafe { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &mut cancel) };
    // SAFETY: `actions` is null or the program's argument to posix_spawn (see `spawn_fate`).
    let _ = std::panic::catch_unwind(|| unsafe { sweep(actions) });
    // SAFETY: as above; restoring the program's state does not act on a pending request.
    unsafe { pthread_setcancelstate(cancel, &mut cancel) };
    errno::set(e0);
}

extern "C" fn enosys_minus_one() -> c_int {
    errno::set(libc::ENOSYS);
    -1
}

extern "C" fn enosys_code() -> c_int {
    libc::ENOSYS
}

extern "C" fn enosys_null() -> *mut c_void {
    errno::set(libc::ENOSYS);
    std::ptr::null_mut()
}

#[cfg(all(target_arch = "x86_64", not(test)))]
mod stubs {
    use super::{before, kind};

    /// One exported symbol per function: save the argument registers and %al, ask [`before`]
    /// (index, third argument) for the real function, restore, jump. Entry: rsp ≡ 8 (mod 16);
    /// seven pushes make it 0 for the call.
    macro_rules! stubs {
        ($($(#[$doc:meta])* $name:ident = $which:expr;)*) => {$(
            $(#[$doc])*
            ///
            /// # Safety
            /// As the libc function: every argument reaches it untouched.
            #[no_mangle]
            #[unsafe(naked)]
            pub unsafe extern "C" fn $name() {
                core::arch::naked_asm!(
                    "push rdi",
                    "push rsi",
                    "push rdx",
                    "push rcx",
                    "push r8",
                    "push r9",
                    "push rax",
                    "mov rsi, rdx",
                    "mov edi, {which}",
                    "call {before}",
                    "mov r11, rax",
                    "pop rax",
                    "pop r9",
                    "pop r8",
                    "pop rcx",
                    "pop rdx",
                    "pop rsi",
                    "pop rdi",
                    "jmp r11",
                    which = const $which,
                    before = sym before,
                )
            }
        )*};
    }

    stubs! {
        /// `int execve(const char *path, char *const argv[], char *const envp[])`.
        execve = kind::EXECVE;
        /// `int execv(const char *path, char *const argv[])`.
        execv = kind::EXECV;
        /// `int execvp(const char *file, char *const argv[])`.
        execvp = kind::EXECVP;
        /// `int execvpe(const char *file, char *const argv[], char *const envp[])`.
        execvpe = kind::EXECVPE;
        /// `int execveat(int dirfd, const char *path, char *const argv[], char *const envp[], int flags)`.
        execveat = kind::EXECVEAT;
        /// `int fexecve(int fd, char *const argv[], char *const envp[])`.
        fexecve = kind::FEXECVE;
        /// `int execl(const char *path, const char *arg, ... /*, NULL */)`.
        execl = kind::EXECL;
        /// `int execlp(const char *file, const char *arg, ... /*, NULL */)`.
        execlp = kind::EXECLP;
        /// `int execle(const char *path, const char *arg, ... /*, NULL, char *const envp[] */)`.
        execle = kind::EXECLE;
        /// `int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
        /// const posix_spawnattr_t *attr, char *const argv[], char *const envp[])`.
        posix_spawn = kind::POSIX_SPAWN;
        /// `int posix_spawnp(...)`, as posix_spawn.
        posix_spawnp = kind::POSIX_SPAWNP;
        /// `int system(const char *command)`: glibc spawns the shell with its internal posix_spawn.
        system = kind::SYSTEM;
        /// `FILE *popen(const char *command, const char *mode)`: the same.
        popen = kind::POPEN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_their_functions() {
        let names = [
            (kind::EXECVE, "execve"),
            (kind::EXECV, "execv"),
            (kind::EXECVP, "execvp"),
            (kind::EXECVPE, "execvpe"),
            (kind::EXECVEAT, "execveat"),
            (kind::FEXECVE, "fexecve"),
            (kind::EXECL, "execl"),
            (kind::EXECLP, "execlp"),
            (kind::EXECLE, "execle"),
            (kind::POSIX_SPAWN, "posix_spawn"),
            (kind::POSIX_SPAWNP, "posix_spawnp"),
            (kind::SYSTEM, "system"),
            (kind::POPEN, "popen"),
        ];
        assert_eq!(names.len(), real::EXEC_NAMES.len());
        for (i, n) in names {
            assert_eq!(real::EXEC_NAMES[i].to_str().unwrap(), n);
            assert!(!real::exec_fn(i).is_null(), "{n} resolved in this libc");
        }
    }

    extern "C" {
        fn posix_spawn_file_actions_addclosefrom_np(
            fa: *mut libc::posix_spawn_file_actions_t,
            from: c_int,
        ) -> c_int;
    }

    #[test]
    fn file_actions_are_read_from_glibcs_layout() {
        // SAFETY: an all-zero posix_spawn_file_actions_t is a valid value to initialise.
        let mut fa: libc::posix_spawn_file_actions_t = unsafe { std::mem::zeroed() };
        // SAFETY: fa is ours; glibc's own functions fill it.
        unsafe {
            libc::posix_spawn_file_actions_init(&mut fa);
            libc::posix_spawn_file_actions_addclose(&mut fa, 3);
            libc::posix_spawn_file_actions_adddup2(&mut fa, 5, 9);
            libc::posix_spawn_file_actions_addopen(&mut fa, 7, c"/nonexistent".as_ptr(), 0, 0);
            posix_spawn_file_actions_addclosefrom_np(&mut fa, 20);
            libc::posix_spawn_file_actions_adddup2(&mut fa, 25, 26);
            assert_eq!(spawn_fate(&fa, 5), Some(true), "dup2 source");
            // A dup2 source counts wherever it comes (one bind too many is harmless).
            assert_eq!(spawn_fate(&fa, 25), Some(true));
            assert_eq!(spawn_fate(&fa, 3), Some(false), "closed");
            assert_eq!(spawn_fate(&fa, 21), Some(false), "closefrom(20)");
            assert_eq!(spawn_fate(&fa, 9), None);
            assert_eq!(spawn_fate(&fa, 7), None);
            assert_eq!(spawn_fate(std::ptr::null(), 5), None);
            libc::posix_spawn_file_actions_destroy(&mut fa);
        }
        assert_eq!(std::mem::size_of::<SpawnAction>(), 32);
    }
}
