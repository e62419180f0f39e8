//! The body of each hook, by concern. Each function here runs inside the shim (re-entry flag
//! set, cancellation disabled, panics caught: see `hooks`). Those of `outgoing` never make the
//! program's own call: they answer what the hook should do next.
pub mod bind;
pub mod fds;
pub mod options;
pub mod outgoing;

use crate::scope::{self, Proto};
use crate::sys::addr;
use libc::c_int;
use std::net::SocketAddr;

/// The facts about a socket that decisions need.
pub struct Sock {
    pub family: c_int,
    pub proto: Proto,
    pub local: SocketAddr,
}

impl Sock {
    /// `None` unless `fd` is an AF_INET/AF_INET6 TCP or UDP socket.
    pub fn of(fd: c_int) -> Option<Sock> {
        Self::known(fd, crate::socket::State::default())
    }

    /// As [`Sock::of`], for a socket whose recorded state may say what it was born as: a socket
    /// created by socket() here (`fact::CREATED_HERE`) needs no SO_PROTOCOL look-up, and one
    /// nothing has touched since (`State::untouched_tcp`, `untouched_udp`) no getsockname either — its
    /// address is the wildcard, port 0 (checked by the placement's own bind: see
    /// `strategy::Target::assumed`).
    pub fn known(fd: c_int, state: crate::socket::State) -> Option<Sock> {
        let untouched = match (state.untouched_tcp(), state.untouched_udp()) {
            (Some(family), _) => Some((family, Proto::Tcp)),
            (_, Some(family)) => Some((family, Proto::Udp)),
            _ => None,
        };
        if let Some((family, proto)) = untouched {
            let any: std::net::IpAddr = if family == libc::AF_INET6 {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            };
            return Some(Sock { family, proto, local: SocketAddr::new(any, 0) });
        }
        let proto = match state.born_proto() {
            Some(p) => p,
            None => scope::proto(addr::get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?)?,
        };
        let (family, local) = addr::local(fd)?;
        matches!(family, libc::AF_INET | libc::AF_INET6).then_some(Sock { family, proto, local })
    }
}
