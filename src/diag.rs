//! A NETLINK_SOCK_DIAG dump of the TCP and UDP sockets of this network namespace, for
//! `portrange status` (which 4-tuples of each slice are held, in which state).
//!
//! One dump request (SOCK_DIAG_BY_FAMILY, NLM_F_DUMP) per family and protocol, every state.
//! In dump replies the id is the socket's own view for both protocols: `src` = local, `dst` =
//! remote (unlike the UDP *exact lookup* the shim makes, whose id is swapped). Timewait sockets
//! are included (state TIME_WAIT or FIN_WAIT2 substate).
//!
//! This is the command line's own code, separate from the shim's `sys/diag.rs` (which makes
//! exact look-ups on hook paths under different constraints: no allocation, own descriptors).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::diag_wire::{ReqV2, Request, SockId, NLMSG_HDRLEN, SOCK_DIAG_BY_FAMILY};

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub mod state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;

    pub fn name(s: u8) -> &'static str {
        match s {
            ESTABLISHED => "ESTABLISHED",
            SYN_SENT => "SYN_SENT",
            SYN_RECV => "SYN_RECV",
            FIN_WAIT1 => "FIN_WAIT1",
            FIN_WAIT2 => "FIN_WAIT2",
            TIME_WAIT => "TIME_WAIT",
            CLOSE => "CLOSE",
            CLOSE_WAIT => "CLOSE_WAIT",
            LAST_ACK => "LAST_ACK",
            LISTEN => "LISTEN",
            CLOSING => "CLOSING",
            _ => "?",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One socket of the dump. Addresses are canonical (a v4-mapped address is shown as IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sock {
    pub proto: Proto,
    pub state: u8,
    pub local: SocketAddr,
    /// Unspecified address and port 0 for an unconnected socket.
    pub remote: SocketAddr,
    /// 0 for timewait and orphaned sockets.
    pub inode: u32,
}

/// inet_diag_msg: family, state, timer, retrans, id (48 bytes), expires, rqueue, wqueue, uid, inode.
const DIAG_MSG_LEN: usize = 4 + 48 + 20;

fn addr(family: u8, words: &[u8], port_be: [u8; 2]) -> SocketAddr {
    let port = u16::from_be_bytes(port_be);
    let ip = if i32::from(family) == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::new(words[0], words[1], words[2], words[3]))
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&words[..16]);
        let v6 = Ipv6Addr::from(a);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    };
    SocketAddr::new(ip, port)
}

/// Parse one inet_diag_msg.
fn parse_msg(proto: Proto, b: &[u8]) -> Option<Sock> {
    if b.len() < DIAG_MSG_LEN {
        return None;
    }
    let family = b[0];
    let state = b[1];
    let id = &b[4..52];
    let local = addr(family, &id[4..20], [id[0], id[1]]);
    let remote = addr(family, &id[20..36], [id[2], id[3]]);
    let inode = u32::from_ne_bytes(b[68..72].try_into().ok()?);
    Some(Sock { proto, state, local, remote, inode })
}

/// Every socket of `family` (AF_INET or AF_INET6) and `proto`, all states.
pub fn dump_one(family: i32, proto: Proto) -> io::Result<Vec<Sock>> {
    // SAFETY: socket() returns a new descriptor or -1; it is owned from here.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let req = Request {
        nlh: libc::nlmsghdr {
            nlmsg_len: std::mem::size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        req: ReqV2 {
            family: family as u8,
            protocol: match proto {
                Proto::Tcp => libc::IPPROTO_TCP as u8,
                Proto::Udp => libc::IPPROTO_UDP as u8,
            },
            states: !0,
            id: SockId { cookie: [!0, !0], ..SockId::default() },
            ..ReqV2::default()
        },
    };
    // SAFETY: sending a plain-old-data struct of the stated size on our socket; the kernel
    // address (pid 0) is the destination by default for a netlink socket.
    let n = unsafe {
        libc::send(fd.as_raw_fd(), (&req as *const Request).cast(), std::mem::size_of::<Request>(), 0)
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into a buffer we own, of the stated length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut b = &buf[..n as usize];
        if b.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "sock_diag: empty reply"));
        }
        while b.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(b[4..6].try_into().unwrap());
            if len < NLMSG_HDRLEN || len > b.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "sock_diag: bad message length"));
            }
            let payload = &b[NLMSG_HDRLEN..len];
            match i32::from(ty) {
                libc::NLMSG_DONE => return Ok(out),
                libc::NLMSG_ERROR => {
                    let errno =
                        payload.get(0..4).map(|e| i32::from_ne_bytes(e.try_into().unwrap())).unwrap_or(0);
                    if errno == 0 {
                        return Ok(out);
                    }
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ if ty == SOCK_DIAG_BY_FAMILY => {
                    if let Some(s) = parse_msg(proto, payload) {
                        out.push(s);
                    }
                }
                _ => {}
            }
            let aligned = (len + 3) & !3;
            b = &b[aligned.min(b.len())..];
        }
    }
}

/// TCP and UDP, IPv4 and IPv6: every socket of this network namespace. A family this kernel
/// lacks (IPv6 disabled) gives no sockets rather than an error.
pub fn dump() -> io::Result<Vec<Sock>> {
    let mut all = Vec::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        for family in [libc::AF_INET, libc::AF_INET6] {
            match dump_one(family, proto) {
                Ok(v) => all.extend(v),
                Err(e) if family == libc::AF_INET6 && e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    #[test]
    fn sees_a_tcp_connection_and_a_connected_udp_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.connect("127.0.0.1:9").unwrap();
        let u6 = UdpSocket::bind("[::]:0").unwrap();
        u6.connect("127.0.0.1:9").unwrap();
        let all = dump().unwrap();
        let find =
            |local: SocketAddr, proto| all.iter().find(|s| s.local == local && s.proto == proto).copied();
        let t = find(c.local_addr().unwrap(), Proto::Tcp).expect("client socket in the dump");
        assert_eq!((t.state, t.remote), (state::ESTABLISHED, l.local_addr().unwrap()));
        assert!(t.inode != 0);
        let lst = find(l.local_addr().unwrap(), Proto::Tcp).expect("listener");
        assert_eq!(lst.state, state::LISTEN);
        let us = find(u.local_addr().unwrap(), Proto::Udp).expect("udp socket");
        assert_eq!(us.remote, "127.0.0.1:9".parse().unwrap(), "dump ids are local/remote for UDP too");
        // A v4-mapped AF_INET6 socket is reported with canonical IPv4 addresses.
        let port6 = u6.local_addr().unwrap().port();
        assert!(
            all.iter().any(|s| s.proto == Proto::Udp
                && s.local.port() == port6
                && s.remote == "127.0.0.1:9".parse().unwrap()),
            "v4-mapped socket"
        );
    }
}
