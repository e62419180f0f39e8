//! This process's id without a `getpid` syscall per use, right across fork, raw clone and vfork.
//!
//! The pid is kept in one page of its own, mapped at initialisation with `MADV_WIPEONFORK`: the
//! kernel gives any child made *without* `CLONE_VM` (glibc's `fork`, `syscall(SYS_fork)`, a raw
//! `clone`, `clone3`) a zero-filled page instead of a copy, so a child never believes its parent's
//! pid. Threads (`CLONE_THREAD`) share the process's pid and the page: right as well.
//!
//! Who writes the page: only [`init`] (the library's initialisation) and the `pthread_atfork`
//! child handler (a glibc `fork` child, single-threaded at that point). Never [`get`]: a page
//! that reads 0 (a child made by a raw clone, before anything refilled it) is answered with a
//! `getpid` syscall each time and left at 0. Storing it there would be wrong in the one case
//! that cannot be told apart cheaply: a `CLONE_VM` child (vfork, posix_spawn) of such a process
//! shares the page, and would leave *its* pid for the parent to find after it execs.
//!
//! A `CLONE_VM` child (vfork, `posix_spawn`, clone(CLONE_VM) without CLONE_THREAD) reads its
//! parent's pid here. That is what each user needs:
//! - the netlink slot's owner tag (`sys::netlink`): the tag says "this socket is in the fd table
//!   of the process that shares this memory"; a vfork child has a copy of that table (the same
//!   open sockets under the same numbers), and every number is checked (device, inode) before it
//!   is used or closed, so a child using the parent's idle socket uses the very same socket (one
//!   user at a time: the slot is taken by compare-exchange), and a socket the child opened and
//!   left in the slot fails the parent's identity check (never used, never closed by it);
//! - `process_vm_readv` of "this process" (`sys::addr`): a CLONE_VM child shares its parent's
//!   address space, so reading the parent's memory at an address reads the child's own bytes; the
//!   kernel may refuse the cross-process read (EPERM: Yama ptrace_scope, credentials), which that
//!   caller already treats as "not available" (a direct read, as before the check existed).
//!
//! Not for telling a vfork child from its parent (`crate::in_shared_child` needs the real
//! `getpid` for exactly that).

use std::sync::atomic::{
    AtomicI32, AtomicPtr,
    Ordering::{AcqRel, Acquire, Relaxed},
};

/// The page holding the cached pid (null: not set up, or madvise refused — `get` asks the kernel).
static PAGE: AtomicPtr<AtomicI32> = AtomicPtr::new(std::ptr::null_mut());

/// The kernel's answer, every time.
fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// This process's id: one load from the cached page (a syscall only before [`init`], without
/// MADV_WIPEONFORK, or in a child made by a raw clone).
#[inline]
pub fn get() -> i32 {
    let p = PAGE.load(Acquire);
    if !p.is_null() {
        // SAFETY: PAGE is only ever set to a live page that is never unmapped (see `init`).
        let v = unsafe { &*p }.load(Relaxed);
        if v != 0 {
            return v;
        }
    }
    getpid()
}

/// Map the page (once per process; later calls do nothing): from the library's initialisation,
/// before any hooked call needs the pid. On a kernel without MADV_WIPEONFORK (before 4.14) the
/// page is given back and every [`get`] asks the kernel.
pub fn init() {
    if !PAGE.load(Acquire).is_null() {
        return;
    }
    let size = page_size();
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return;
    }
    // SAFETY: p is the mapping just made, of `size` bytes.
    if unsafe { libc::madvise(p, size, libc::MADV_WIPEONFORK) } != 0 {
        // SAFETY: our own mapping, not published.
        unsafe { libc::munmap(p, size) };
        return;
    }
    let cell = p.cast::<AtomicI32>();
    // SAFETY: the page is zero-filled, page-aligned memory: a valid AtomicI32 (value 0).
    unsafe { &*cell }.store(getpid(), Relaxed);
    if PAGE.compare_exchange(std::ptr::null_mut(), cell, AcqRel, Acquire).is_err() {
        // Another thread published its page first: this one was never seen by anyone.
        // SAFETY: our own mapping, not published.
        unsafe { libc::munmap(p, size) };
        return;
    }
    // SAFETY: registering a plain extern "C" function that lives as long as the process.
    unsafe { libc::pthread_atfork(None, None, Some(after_fork_child)) };
}

/// A glibc fork child (single-threaded here, its own memory): the page was wiped; refill it.
extern "C" fn after_fork_child() {
    let p = PAGE.load(Acquire);
    if !p.is_null() {
        // SAFETY: as in `get`.
        unsafe { &*p }.store(getpid(), Relaxed);
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `f` in a child made by glibc's clone() with `flags` (on a stack of its own), wait for
    /// it, and return its exit status. `f` returns the child's exit code.
    fn in_clone(
        flags: libc::c_int,
        f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
        arg: *mut libc::c_void,
    ) -> i32 {
        let mut stack = vec![0u8; 256 * 1024];
        // SAFETY: the top of a live, 16-aligned-enough buffer (aligned down below).
        let top = unsafe { stack.as_mut_ptr().add(stack.len()) };
        let top = (top as usize & !15) as *mut libc::c_void;
        // SAFETY: f runs on `stack`, which outlives the child (we wait for it below).
        let pid = unsafe { libc::clone(f, top, flags | libc::SIGCHLD, arg) };
        assert!(pid > 0, "clone: {}", std::io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// Child: 0 when `get()` is the child's own pid.
    extern "C" fn own_pid(_: *mut libc::c_void) -> libc::c_int {
        i32::from(get() != getpid())
    }

    /// The test process's tests run in threads: the page is shared, so every test inits first.
    #[test]
    fn the_cached_pid_is_this_process_and_a_thread_sees_it_too() {
        init();
        assert!(!PAGE.load(Relaxed).is_null(), "MADV_WIPEONFORK refused on this kernel");
        assert_eq!(get(), getpid());
        assert_eq!(std::thread::spawn(get).join().unwrap(), getpid());
    }

    #[test]
    fn a_fork_child_reads_its_own_pid() {
        init();
        // SAFETY: the child only reads memory, makes syscalls and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: leaving the child at once, without running the test harness's code.
            unsafe { libc::_exit(own_pid(std::ptr::null_mut())) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(libc::WEXITSTATUS(status), 0, "the fork child saw another pid");
    }

    #[test]
    fn a_raw_clone_child_reads_its_own_pid() {
        // No atfork handler runs here: only the wiped page keeps the parent's pid away.
        init();
        assert_eq!(in_clone(0, own_pid, std::ptr::null_mut()), 0, "the raw clone child saw its parent's pid");
        assert_eq!(get(), getpid());
    }

    /// Child of a raw clone: its page reads 0; a vfork child of it asks for the pid (and gets
    /// its own pid from the kernel: it must not store it, the page is its parent's too); then
    /// this child must still read its own pid. Exit 0 when all holds.
    extern "C" fn vfork_inside_raw_clone(_: *mut libc::c_void) -> libc::c_int {
        let me = getpid();
        let mut seen: i32 = 0;
        let r = in_clone_raw(
            libc::CLONE_VM | libc::CLONE_VFORK,
            vfork_child_reads,
            (&mut seen as *mut i32).cast(),
        );
        if r != 0 {
            return 10 + r;
        }
        if seen == me || seen == 0 {
            return 2; // the vfork child of a wiped page asks the kernel: its own pid
        }
        if get() != me {
            return 3; // the vfork child left its pid in the shared page
        }
        0
    }

    /// Like `in_clone`, usable inside a child (no assert, no allocation: a static stack).
    fn in_clone_raw(
        flags: libc::c_int,
        f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
        arg: *mut libc::c_void,
    ) -> i32 {
        static mut STACK: [u128; 8192] = [0; 8192];
        // SAFETY: only one grandchild at a time uses it (each test process has its own copy
        // after the raw clone that runs this).
        let top = unsafe { std::ptr::addr_of_mut!(STACK).cast::<u8>().add(8192 * 16) }.cast::<libc::c_void>();
        // SAFETY: f runs on STACK; CLONE_VFORK: we resume when it has exited.
        let pid = unsafe { libc::clone(f, top, flags | libc::SIGCHLD, arg) };
        if pid <= 0 {
            return 1;
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid || !libc::WIFEXITED(status) {
            return 2;
        }
        libc::WEXITSTATUS(status)
    }

    /// A CLONE_VM child: writes what `get()` says into the parent's memory.
    extern "C" fn vfork_child_reads(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: arg points at the parent's i32 (shared memory, the parent is suspended).
        unsafe { *arg.cast::<i32>() = get() };
        0
    }

    #[test]
    fn a_vfork_child_reads_its_parents_pid_and_never_writes_it() {
        init();
        let mut seen: i32 = 0;
        let r =
            in_clone(libc::CLONE_VM | libc::CLONE_VFORK, vfork_child_reads, (&mut seen as *mut i32).cast());
        assert_eq!(r, 0);
        assert_eq!(seen, getpid(), "a CLONE_VM child shares the page: its parent's pid (see the module doc)");
        assert_eq!(get(), getpid());
        // A vfork child of a process whose page was wiped (raw clone) leaves nothing behind.
        assert_eq!(in_clone(0, vfork_inside_raw_clone, std::ptr::null_mut()), 0);
    }
}
