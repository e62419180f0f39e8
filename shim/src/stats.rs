//! Counters: relaxed atomics, bumped on decision paths, written as one JSON line at exit.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Every counter, by name.
        #[allow(non_camel_case_types, dead_code)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum C { $($name),* }
        const NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

counters! {
    // flows the shim placed in a slice, by protocol and strategy
    placed_tcp_kernel,
    placed_tcp_retry,
    placed_udp,
    // bind(SLICE_IP, 0) by the program, given a slice port at once
    placed_bind,
    // port attempts (each bind/connect of a candidate port) and conflicts found
    attempts,
    conflicts,
    // sock_diag look-ups (retry pre-check, UDP cookie check)
    lookups,
    // UDP connects that went on to the cookie check (their exclusive binds found ports held:
    // a crowded slice); the others were placed without a look-up
    udp_checked,
    // a slice (or all slices) had no free port for the destination
    exhausted,
    // blocking connects placed after waiting for 4-tuples in closing states
    closing_waits,
    // kernel-strategy flows the kernel found no port for, placed by an explicit bind (retry)
    kernel_fallbacks,
    // flows left alone, by reason
    skipped_dest,
    no_slice_family,
    bound_by_program,
    // calls outside the shim's scope (other families/protocols, inactive, ...)
    passed_through,
    // connects/sends refused because the configuration is invalid
    denied,
    // fresh sockets moved into the program's fd (a swap)
    swaps,
    // a placement aborted because the kernel chose a port outside the slice
    outside_slice,
    // conntrack (PORTRANGE_CONNTRACK): 4-tuples reserved with CT_NEW, found held by another
    // flow (another port tried), and placed flows conntrack rewrote (aborted, placed again)
    conntrack_reserved,
    conntrack_held,
    conntrack_rewrites,
    // internal errors (a panic caught at a hook boundary)
    internal_errors,
    // placements refused (EADDRNOTAVAIL/EAGAIN) because a signal handler connected or sent while
    // its thread was inside the shim
    reentered_refused,
}

const N: usize = NAMES.len();
static VALUES: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];

pub fn bump(c: C) {
    add(c, 1)
}

pub fn add(c: C, n: u64) {
    VALUES[c as usize].fetch_add(n, Relaxed);
}

/// A forked child starts its own count.
pub fn reset() {
    for v in &VALUES {
        v.store(0, Relaxed);
    }
}

/// The program's name as `ps` shows it (/proc/self/comm), for `portrange stats` to group by.
fn program() -> String {
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    comm.trim_end_matches('\n')
        .chars()
        .map(|c| if c == '"' || c == '\\' || c.is_control() { '_' } else { c })
        .collect()
}

/// `{"pid":..,"program":"..","strategy":"..","placed_tcp_kernel":..,...}`
pub fn json(pid: i32, strategy: &str) -> String {
    let mut s = format!("{{\"pid\":{pid},\"program\":\"{}\",\"strategy\":\"{strategy}\"", program());
    for (name, v) in NAMES.iter().zip(VALUES.iter()) {
        s.push_str(&format!(",\"{name}\":{}", v.load(Relaxed)));
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_json() {
        bump(C::conflicts);
        add(C::conflicts, 2);
        assert!(VALUES[C::conflicts as usize].load(Relaxed) >= 3);
        let j = json(7, "kernel");
        assert!(j.starts_with("{\"pid\":7,\"program\":\""), "{j}");
        assert!(j.contains(",\"strategy\":\"kernel\",\"placed_tcp_kernel\":"), "{j}");
        assert!(j.contains("\"conflicts\":") && j.ends_with('}'));
        assert_eq!(j.matches(':').count(), NAMES.len() + 3);
    }
}
