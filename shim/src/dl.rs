//! `dlopen` / `dlmopen` with `RTLD_DEEPBIND` (PHP opens every extension that way).
//!
//! A library opened with `RTLD_DEEPBIND` looks symbols up in its own scope (itself, then its
//! dependencies: libc) before the global scope, so its `connect`/`sendto` bind to libc and never
//! reach the shim: measured, 10 of 10 flows of PHP's curl extension left from outside the slice.
//!
//! What is done: the flag is cleared (`dlmopen` into the base namespace too), so the library is
//! bound like any other, preloaded interposers first; one warning per process says so. Why this
//! and not something finer: glibc has no way to put an object in front of a deep-bound
//! library's own scope, and rewriting its GOT entries for the shim's symbols would write into
//! RELRO memory of a library we do not own, at every later lazy binding too. Clearing the flag
//! changes only which definition wins for symbols that the program itself, or a library loaded
//! before, also defines — the clash DEEPBIND exists to avoid; the warning names the library.
//! `dlmopen` into a new namespace (`LM_ID_NEWLM`) is out of reach: preloaded objects are not
//! loaded there at all (warned once).
//!
//! The hooks are naked tail jumps (x86_64): glibc's `dlopen` finds its caller from its return
//! address (the caller's namespace and its DT_RUNPATH decide where a bare library name is
//! searched), so the real function must see the program's call site, not the shim's. The
//! assembly saves the argument registers, asks [`prepare`] for the real function (logging once
//! when the flag is set), clears `RTLD_DEEPBIND` and jumps.

use libc::{c_char, c_int, c_long, c_void};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering::Relaxed};

static REAL_DLOPEN: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
static REAL_DLMOPEN: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

fn real(slot: &AtomicPtr<c_void>, name: &std::ffi::CStr) -> *const c_void {
    let p = slot.load(Relaxed);
    if !p.is_null() {
        return p;
    }
    // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT searches the objects after ours.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    slot.store(p, Relaxed);
    p
}

/// The library's name for a log line.
fn name_of(file: *const c_char) -> String {
    if file.is_null() {
        return "(the program)".to_string();
    }
    // SAFETY: dlopen's file argument is a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(file) }.to_string_lossy().into_owned()
}

/// Decide for one call: (log once), the real function to jump to.
fn decide(
    slot: &AtomicPtr<c_void>,
    name: &std::ffi::CStr,
    lmid: c_long,
    file: *const c_char,
    mode: c_int,
) -> *const c_void {
    if mode & libc::RTLD_DEEPBIND != 0 && active() {
        let e0 = crate::errno::get();
        if lmid == libc::LM_ID_BASE {
            static ONCE: AtomicBool = AtomicBool::new(false);
            if !ONCE.swap(true, Relaxed) {
                log::warn!(
                    "{} opened with RTLD_DEEPBIND: the flag is cleared so that its socket calls reach the \
                     shim (deep-bound, they would leave from outside the slice); warned once per process",
                    name_of(file)
                );
            }
        } else {
            static ONCE: AtomicBool = AtomicBool::new(false);
            if !ONCE.swap(true, Relaxed) {
                log::warn!(
                    "{} opened with dlmopen into another link-map namespace: preloaded libraries are not \
                     there, its flows are out of the shim's reach; warned once per process",
                    name_of(file)
                );
            }
        }
        crate::errno::set(e0);
    }
    real(slot, name)
}

fn active() -> bool {
    matches!(crate::mode(), Some(crate::Mode::Active(_) | crate::Mode::Deny))
}

/// Called from the `dlopen` trampoline: the real `dlopen`.
extern "C" fn prepare_dlopen(file: *const c_char, mode: c_int) -> *const c_void {
    let Some(_inside) = crate::guard::enter() else { return real(&REAL_DLOPEN, c"dlopen") };
    std::panic::catch_unwind(|| decide(&REAL_DLOPEN, c"dlopen", libc::LM_ID_BASE, file, mode))
        .unwrap_or_else(|_| real(&REAL_DLOPEN, c"dlopen"))
}

/// Called from the `dlmopen` trampoline: the real `dlmopen`.
extern "C" fn prepare_dlmopen(lmid: c_long, file: *const c_char, mode: c_int) -> *const c_void {
    let Some(_inside) = crate::guard::enter() else { return real(&REAL_DLMOPEN, c"dlmopen") };
    std::panic::catch_unwind(|| decide(&REAL_DLMOPEN, c"dlmopen", lmid, file, mode))
        .unwrap_or_else(|_| real(&REAL_DLMOPEN, c"dlmopen"))
}

/// Only when the shim is configured and the call is into the base namespace: the mode to use.
extern "C" fn mode_for(lmid: c_long, mode: c_int) -> c_int {
    if lmid == libc::LM_ID_BASE && active() {
        mode & !libc::RTLD_DEEPBIND
    } else {
        mode
    }
}

/// `void *dlopen(const char *file, int mode)`.
///
/// # Safety
/// As glibc's dlopen.
#[cfg(target_arch = "x86_64")]
#[no_mangle]
#[unsafe(naked)]
pub unsafe extern "C" fn dlopen(_file: *const c_char, _mode: c_int) -> *mut c_void {
    // Entry: rsp ≡ 8 (mod 16). Three pushes make it 0 for the calls.
    core::arch::naked_asm!(
        "push rdi",
        "push rsi",
        "push rbx",
        "call {prepare}",      // rdi = file, esi = mode → rax = real dlopen
        "mov rbx, rax",
        "xor edi, edi",        // LM_ID_BASE
        "mov esi, [rsp + 8]",  // mode
        "call {mode_for}",     // eax = mode to use
        "mov r11, rbx",
        "pop rbx",
        "pop rsi",
        "pop rdi",
        "mov esi, eax",
        "jmp r11",
        prepare = sym prepare_dlopen,
        mode_for = sym mode_for,
    )
}

/// `void *dlmopen(Lmid_t lmid, const char *file, int mode)`.
///
/// # Safety
/// As glibc's dlmopen.
#[cfg(target_arch = "x86_64")]
#[no_mangle]
#[unsafe(naked)]
pub unsafe extern "C" fn dlmopen(_lmid: c_long, _file: *const c_char, _mode: c_int) -> *mut c_void {
    // Entry: rsp ≡ 8 (mod 16). Three pushes make it 0 for the calls.
    core::arch::naked_asm!(
        "push rdi",
        "push rsi",
        "push rdx",
        "call {prepare}",      // rdi = lmid, rsi = file, edx = mode → rax = real dlmopen
        "push rax",
        "mov rdi, [rsp + 24]", // lmid
        "mov esi, [rsp + 8]",  // mode
        "sub rsp, 8",
        "call {mode_for}",     // eax = mode to use
        "add rsp, 8",
        "pop r11",
        "pop rdx",
        "pop rsi",
        "pop rdi",
        "mov edx, eax",
        "jmp r11",
        prepare = sym prepare_dlmopen,
        mode_for = sym mode_for,
    )
}
