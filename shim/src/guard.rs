//! Per-thread re-entry guard.
//!
//! While a thread is inside the shim, its own libc calls (bind, setsockopt, close of a
//! temporary socket, a log write...) that reach an interposed symbol go straight to the real
//! function. The flag is a const-initialised `Cell<bool>`: no lazy initialisation and no
//! destructor, so it is usable at any point of a thread's life, including during TLS teardown.

use std::cell::Cell;

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Proof that this thread entered the shim; leaving clears the flag.
pub struct Entered(());

impl Drop for Entered {
    fn drop(&mut self) {
        let _ = INSIDE.try_with(|c| c.set(false));
    }
}

/// `Some` when the thread was not already inside the shim.
pub fn enter() -> Option<Entered> {
    INSIDE
        .try_with(|c| {
            if c.get() {
                None
            } else {
                c.set(true);
                Some(Entered(()))
            }
        })
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    #[test]
    fn nested_entry_is_refused_and_released() {
        let g = super::enter().expect("first entry");
        assert!(super::enter().is_none());
        drop(g);
        assert!(super::enter().is_some());
        // Other threads have their own flag.
        let _g = super::enter().unwrap();
        std::thread::spawn(|| assert!(super::enter().is_some())).join().unwrap();
    }
}
