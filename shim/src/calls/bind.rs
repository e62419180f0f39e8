//! bind(), listen(), getsockname(): deferred wildcard binds and bind(SLICE_IP, 0).

use super::Sock;
use crate::fdtable;
use crate::scope::Proto;
use crate::socket::{self, State};
use crate::stats::{self, C};
use crate::sys::addr;
use crate::{errno, mode, real, Mode};
use libc::{c_int, sockaddr, socklen_t};
use std::net::SocketAddr;

fn fail(e: c_int) -> c_int {
    errno::set(e);
    -1
}

/// Carry out a deferred bind: the program needs its port now (getsockname, listen), or the flow
/// is left alone. A deferred bind(wildcard, 0) gets the kernel's port and must behave exactly
/// as without the shim; a deferred bind(SLICE_IP, 0) (the socket holds the IP, no port) gets a
/// port of that IP's slices of its own, as the kernel would have given one at bind time.
/// `Err(errno)` when the slices have no free port.
pub fn materialize(fd: c_int, ino: u64, family: c_int) -> Result<(), c_int> {
    let local = addr::local(fd).map(|(_, a)| a);
    if let Some(a) = local.filter(|a| a.port() != 0) {
        // Carried out already, through another descriptor of the same socket (a dup): only
        // this entry is behind.
        let t = if a.ip().is_unspecified() { State::bound_by_kernel } else { State::bound_in_slice };
        socket::go(fd, ino, t);
        return Ok(());
    }
    let ip = local.map(|a| crate::config::canonical(a.ip()));
    match (ip, mode()) {
        (Some(ip), Some(Mode::Active(active))) if !ip.is_unspecified() => {
            let slices = active.cfg.slices.iter().filter(|s| s.ip == ip);
            let r = bind_slice_port(fd, family, slices, &active.reserved);
            socket::go(fd, ino, if r.is_ok() { State::bound_in_slice } else { State::deferred_bind_failed });
            r
        }
        _ => {
            let any = if family == libc::AF_INET6 {
                SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0)
            } else {
                SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0)
            };
            let _ = addr::bind(fd, any, family);
            socket::go(fd, ino, State::bound_by_kernel);
            Ok(())
        }
    }
}

/// Before an exec that the socket survives (`exec.rs`): carry out its deferred bind, so that
/// the new program sees a port — one of the slices, on the slice's IP. The new program's shim
/// has no record of the socket and leaves a bound socket alone as the program's own, and so does
/// this process once it finds the socket bound (a fork child may have done this): a port the
/// kernel picked, or a slice port on the wildcard address (its flows would leave from the
/// route's source address, not necessarily the slice IP), would send their flows from outside
/// the slice. So bind(SLICE_IP, 0) gets a port of that IP's slices, as in `materialize`, and
/// bind(wildcard, 0) gets SLICE_IP and a free port of a slice of its family (an AF_INET6 socket:
/// any slice, v4-mapped), owned (SO_REUSEADDR off while binding): the new program's getsockname
/// shows the slice IP where the kernel would show the wildcard (a row of the README's table).
/// With every such port taken it stays deferred: the new program sees port 0, and its shim
/// places the flow.
pub fn materialize_for_exec(fd: c_int, ino: u64) {
    let Some((family, local)) = addr::local(fd) else { return };
    if local.port() != 0 || !local.ip().is_unspecified() {
        let _ = materialize(fd, ino, family);
        return;
    }
    let Some(Mode::Active(active)) = mode() else { return };
    let slices = active.cfg.slices.iter().filter(|s| family == libc::AF_INET6 || s.ip.is_ipv4());
    if bind_slice_port(fd, family, slices, &active.reserved).is_ok() {
        socket::go(fd, ino, State::bound_in_slice);
    }
}

/// A port of one of `slices` owned by `fd` (SO_REUSEADDR=0 while binding; the program's own
/// value is put back: a port it binds this way is its own to share).
fn bind_slice_port<'a>(
    fd: c_int,
    family: c_int,
    slices: impl Iterator<Item = &'a crate::config::Slice>,
    reserved: &crate::sys::sysctl::Reserved,
) -> Result<(), c_int> {
    let prog_reuse = addr::get_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap_or(0) != 0;
    let r = crate::strategy::exclusive::bind_free(fd, family, slices, reserved);
    let _ = addr::set_u32(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, u32::from(prog_reuse));
    match r {
        Ok((slice, at)) => {
            stats::bump(C::placed_bind);
            log::debug!("fd {fd}: given {at} (slice {slice})");
            Ok(())
        }
        Err(e) => {
            log::info!("fd {fd}: no free port in its slices ({})", std::io::Error::from_raw_os_error(e));
            Err(e)
        }
    }
}

/// A deferred bind that must happen before the program's call on `fd`.
pub fn materialize_if_deferred(fd: c_int) -> Result<(), c_int> {
    if !fdtable::occupied(fd) {
        return Ok(());
    }
    let e0 = errno::get();
    let mut r = Ok(());
    if let Some(ino) = fdtable::ino(fd) {
        if socket::of(fd, ino).deferred() {
            if let Some((family, _)) = addr::local(fd) {
                r = materialize(fd, ino, family);
            }
        }
    }
    errno::set(e0);
    r
}

pub unsafe fn bind(fd: c_int, sa: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: the program's own arguments (valid as the libc call requires), passed on unchanged.
    let (Some(Mode::Active(active)), Some(req)) = (mode(), unsafe { addr::parse(sa, len) }) else {
        // SAFETY: the program's own arguments (valid as the libc call requires), passed on unchanged.
        return unsafe { real::bind(fd, sa, len) };
    };
    if fdtable::occupied(fd) {
        // A socket whose bind the shim deferred is bound, as far as the program knows.
        let e0 = errno::get();
        if fdtable::ino(fd).is_some_and(|ino| socket::of(fd, ino).deferred()) {
            return fail(libc::EINVAL) as c_int;
        }
        errno::set(e0);
    }
    if req.port() != 0 {
        // SAFETY: the program's own arguments (valid as the libc call requires), passed on unchanged.
        let r = unsafe { real::bind(fd, sa, len) };
        if r == 0 && fdtable::occupied(fd) {
            let e0 = errno::get();
            if let Some(ino) = fdtable::ino(fd) {
                socket::go(fd, ino, State::program_bound);
            }
            errno::set(e0);
        }
        return r;
    }
    let e0 = errno::get();
    let (Some(sock), Some(ino)) = (Sock::of(fd), fdtable::ino(fd)) else {
        errno::set(e0);
        // SAFETY: the program's own arguments (valid as the libc call requires), passed on unchanged.
        return unsafe { real::bind(fd, sa, len) };
    };
    if addr::kernel_refuses(sock.family, false, req, || addr::v6only(fd)) {
        errno::set(e0);
        // SAFETY: the program's own arguments (valid as the libc call requires), passed on unchanged.
        return unsafe { real::bind(fd, sa, len) };
    }
    let state = socket::of(fd, ino);
    let ip = crate::config::canonical(req.ip());
    if req.ip().is_unspecified() {
        // bind(0.0.0.0 / ::, 0): the kernel would pick a port now; the shim waits, so that a
        // connect or first send can still be placed, and a listen gets the port it expects.
        if state.bound_for_program() || sock.local.port() != 0 {
            return fail(libc::EINVAL) as c_int; // already bound, as the kernel says
        }
        if !sock.local.ip().is_unspecified() {
            errno::set(e0);
            // SAFETY: the program's own arguments (valid as the libc call requires), passed on unchanged.
            return unsafe { real::bind(fd, sa, len) };
        }
        socket::go(fd, ino, State::defer_bind);
        log::trace!("bind fd {fd} to {req}: deferred until connect/send/listen/getsockname");
        errno::set(e0);
        return 0;
    }
    if !active.cfg.slices.iter().any(|s| s.ip == ip) {
        errno::set(e0);
        // SAFETY: the program's own arguments (valid as the libc call requires), passed on unchanged.
        return unsafe { real::bind(fd, sa, len) };
    }
    // bind(SLICE_IP, 0). With IP_BIND_ADDRESS_NO_PORT (nginx proxy_bind, HAProxy source) the
    // port is placed at connect, shared across destinations: only the IP is bound now.
    if addr::get_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT) == Some(1) {
        errno::set(e0);
        // SAFETY: the program's own arguments (valid as the libc call requires), passed on unchanged.
        return unsafe { real::bind(fd, sa, len) };
    }
    if sock.proto == Proto::Tcp {
        // Without NO_PORT the kernel would give the socket a port of its own now, whose
        // TIME_WAIT would later keep it from every placement for 60 s (wget --bind-address,
        // ssh -b). The shim binds only the IP (NO_PORT, on the program's behalf) and places
        // the port at connect, shared across destinations; getsockname/listen first get a
        // port of their own then (`materialize`).
        if let Err(e) = addr::set_u32(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1) {
            return fail(e) as c_int;
        }
        // SAFETY: the program's own arguments (valid as the libc call requires), passed on unchanged.
        let r = unsafe { real::bind(fd, sa, len) };
        if r != 0 {
            let e = errno::get();
            let _ = addr::set_u32(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 0);
            return fail(e) as c_int;
        }
        socket::go(fd, ino, State::defer_slice_bind);
        log::trace!("bind fd {fd} to {req}: port deferred until connect/listen/getsockname");
        errno::set(e0);
        return 0;
    }
    // A UDP socket gets a port of that IP's slices at once, as the kernel would give one (an
    // unconnected socket talks to anyone from it: it owns it).
    let slices = active.cfg.slices.iter().filter(|s| s.ip == ip);
    match bind_slice_port(fd, sock.family, slices, &active.reserved) {
        Ok(()) => {
            socket::go(fd, ino, State::bound_in_slice);
            errno::set(e0);
            0
        }
        Err(e) => fail(e) as c_int,
    }
}

pub unsafe fn listen(fd: c_int, backlog: c_int) -> c_int {
    if let Err(e) = materialize_if_deferred(fd) {
        // The kernel would pick a port outside the slice: refuse, as for a full port range.
        return fail(e) as c_int;
    }
    // SAFETY: the program's own arguments (valid as the libc call requires), passed on unchanged.
    unsafe { real::listen(fd, backlog) }
}

pub unsafe fn getsockname(fd: c_int, sa: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let _ = materialize_if_deferred(fd);
    // SAFETY: the program's own arguments (valid as the libc call requires), passed on unchanged.
    unsafe { real::getsockname(fd, sa, len) }
}
