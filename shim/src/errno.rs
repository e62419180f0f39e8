//! errno access.

pub fn get() -> i32 {
    // SAFETY: __errno_location always returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

pub fn set(e: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e }
}
