//! Conntrack and the slice (seed 004): when forwarded flows are SNATed into a slice, conntrack
//! holds 4-tuples that no socket holds, and a local socket connected over one of them is silently
//! NATed to another source port — outside the slice. This module has what the shim and
//! `portrange check` share:
//!
//! - the ctnetlink wire format (IPCTNL_MSG_CT_NEW / CT_GET / CT_DELETE requests for one tuple,
//!   and the parsing of the answer), pure and unit-tested; the shim sends them on its own
//!   netlink socket (`shim/src/sys/conntrack.rs`);
//! - the facts of a network namespace (is conntrack tracking anything here? may this process
//!   use ctnetlink?) and the pure decision of what the shim does with them ([`plan`]).

use crate::config::{canonical, ConntrackChoice};
use std::net::{IpAddr, SocketAddr};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_TIMEOUT: u16 = 7;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const TCP_CONNTRACK_SYN_SENT: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The entry's source was rewritten (SNAT, masquerade, or conntrack's own clash resolution).
pub const IPS_SRC_NAT: u32 = 1 << 4;

const NLMSG_HDRLEN: usize = 16;
const NFGEN_LEN: usize = 4;

/// One direction of a conntrack entry: protocol, source and destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl Tuple {
    /// v4-mapped addresses as IPv4 (conntrack tracks those flows as IPv4).
    pub fn new(proto: u8, src: SocketAddr, dst: SocketAddr) -> Tuple {
        let c = |a: SocketAddr| SocketAddr::new(canonical(a.ip()), a.port());
        Tuple { proto, src: c(src), dst: c(dst) }
    }
    /// The other direction, as conntrack stores it when nothing is NATed.
    pub fn inverse(&self) -> Tuple {
        Tuple { proto: self.proto, src: self.dst, dst: self.src }
    }
    fn family(&self) -> u8 {
        if self.dst.ip().is_ipv4() {
            libc::AF_INET as u8
        } else {
            libc::AF_INET6 as u8
        }
    }
}

/// A conntrack entry as CT_GET returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
    pub status: u32,
}

impl Entry {
    /// Where the flow that `orig` describes really leaves from: the reply's destination (an
    /// SNAT rewrites it), or `None` when it leaves from `orig.src` unchanged.
    pub fn rewritten_source(&self) -> Option<SocketAddr> {
        let real = self.reply.dst;
        (real != self.orig.src || self.status & IPS_SRC_NAT != 0).then_some(real)
    }
}

/// One netlink request, built in place (no allocation): header, nfgenmsg, attributes.
pub struct Msg {
    buf: [u8; 256],
    len: usize,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, family: u8) -> Msg {
        let mut m = Msg { buf: [0; 256], len: NLMSG_HDRLEN + NFGEN_LEN };
        m.buf[4..6].copy_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
        m.buf[6..8].copy_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
        m.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        m.buf[NLMSG_HDRLEN] = family; // nfgen_family; version 0; res_id 0
        m
    }
    fn put(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf[self.len..self.len + 2].copy_from_slice(&(len as u16).to_ne_bytes());
        self.buf[self.len + 2..self.len + 4].copy_from_slice(&ty.to_ne_bytes());
        self.buf[self.len + 4..self.len + len].copy_from_slice(data);
        self.len += (len + 3) & !3;
    }
    fn nest(&mut self, ty: u16) -> usize {
        let at = self.len;
        self.buf[at + 2..at + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self.len += 4;
        at
    }
    fn end(&mut self, at: usize) {
        let len = (self.len - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
    fn tuple(&mut self, ty: u16, t: &Tuple) {
        let outer = self.nest(ty);
        let ip = self.nest(CTA_TUPLE_IP);
        match (t.src.ip(), t.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.put(CTA_IP_V4_SRC, &s.octets());
                self.put(CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                let v6 = |a: IpAddr| match a {
                    IpAddr::V6(a) => a.octets(),
                    IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                };
                self.put(CTA_IP_V6_SRC, &v6(s));
                self.put(CTA_IP_V6_DST, &v6(d));
            }
        }
        self.end(ip);
        let proto = self.nest(CTA_TUPLE_PROTO);
        self.put(CTA_PROTO_NUM, &[t.proto]);
        self.put(CTA_PROTO_SRC_PORT, &t.src.port().to_be_bytes());
        self.put(CTA_PROTO_DST_PORT, &t.dst.port().to_be_bytes());
        self.end(proto);
        self.end(outer);
    }
    /// The finished message.
    pub fn bytes(&mut self) -> &[u8] {
        let len = self.len as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        &self.buf[..self.len]
    }
    pub fn set_seq(&mut self, seq: u32) {
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    }
    pub fn seq(&self) -> u32 {
        u32::from_ne_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]])
    }
}

/// IPCTNL_MSG_CT_NEW with NLM_F_CREATE|NLM_F_EXCL: an entry for `orig` and its exact inverse
/// (no NAT), expiring after `timeout_s` unless packets refresh it. The kernel refuses (EEXIST)
/// when either direction's tuple is already in the table — race-free against a forwarder.
/// A TCP entry starts in SYN_SENT, as the connect's own SYN would leave it.
pub fn new_request(seq: u32, orig: &Tuple, timeout_s: u32) -> Msg {
    new_nat_request(seq, orig, &orig.inverse(), timeout_s)
}

/// CT_NEW (create|excl) of an entry whose reply tuple is `reply`: with a `reply` that is not the
/// inverse of `orig`, what an SNAT makes (tests use it to stand for a forwarded flow).
pub fn new_nat_request(seq: u32, orig: &Tuple, reply: &Tuple, timeout_s: u32) -> Msg {
    let flags = (libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut m = Msg::new(IPCTNL_MSG_CT_NEW, flags, seq, orig.family());
    m.tuple(CTA_TUPLE_ORIG, orig);
    m.tuple(CTA_TUPLE_REPLY, reply);
    m.put(CTA_TIMEOUT, &timeout_s.to_be_bytes());
    if orig.proto == libc::IPPROTO_TCP as u8 {
        let info = m.nest(CTA_PROTOINFO);
        let tcp = m.nest(CTA_PROTOINFO_TCP);
        m.put(CTA_PROTOINFO_TCP_STATE, &[TCP_CONNTRACK_SYN_SENT]);
        m.end(tcp);
        m.end(info);
    }
    m
}

/// IPCTNL_MSG_CT_GET of the entry whose original (`by_reply` false) or reply (`by_reply` true)
/// tuple is `t`. The answer is the entry, or an error (ENOENT: none).
pub fn get_request(seq: u32, t: &Tuple, by_reply: bool) -> Msg {
    let mut m = Msg::new(IPCTNL_MSG_CT_GET, 0, seq, t.family());
    m.tuple(if by_reply { CTA_TUPLE_REPLY } else { CTA_TUPLE_ORIG }, t);
    m
}

/// IPCTNL_MSG_CT_DELETE of the entry whose original tuple is `orig`.
pub fn delete_request(seq: u32, orig: &Tuple) -> Msg {
    let mut m = Msg::new(IPCTNL_MSG_CT_DELETE, libc::NLM_F_ACK as u16, seq, orig.family());
    m.tuple(CTA_TUPLE_ORIG, orig);
    m
}

/// One message of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// NLMSG_ERROR: 0 (an acknowledgement) or a positive errno.
    Status(i32),
    Entry(Entry),
    /// A message this code does not read (or cannot parse).
    Other,
}

/// The first message in `buf` and its sequence number.
pub fn parse_answer(buf: &[u8]) -> Option<(u32, Answer)> {
    if buf.len() < NLMSG_HDRLEN {
        return None;
    }
    let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
    let ty = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
    let seq = u32::from_ne_bytes(buf[8..12].try_into().ok()?);
    let msg = buf.get(NLMSG_HDRLEN..len.min(buf.len()))?;
    if ty == libc::NLMSG_ERROR as u16 {
        let e = i32::from_ne_bytes(msg.get(0..4)?.try_into().ok()?);
        return Some((seq, Answer::Status(-e)));
    }
    if ty >> 8 != NFNL_SUBSYS_CTNETLINK || msg.len() < NFGEN_LEN {
        return Some((seq, Answer::Other));
    }
    let (mut orig, mut reply, mut status) = (None, None, 0);
    for (t, v) in Attrs(&msg[NFGEN_LEN..]) {
        match t {
            CTA_TUPLE_ORIG => orig = parse_tuple(v),
            CTA_TUPLE_REPLY => reply = parse_tuple(v),
            CTA_STATUS => status = u32::from_be_bytes(v.get(0..4)?.try_into().ok()?),
            _ => {}
        }
    }
    Some((
        seq,
        match (orig, reply) {
            (Some(orig), Some(reply)) => Answer::Entry(Entry { orig, reply, status }),
            _ => Answer::Other,
        },
    ))
}

/// Netlink attributes: (type without flags, payload).
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        self.0 = &b[((len + 3) & !3).min(b.len())..];
        Some((ty, &b[4..len]))
    }
}

fn parse_tuple(b: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0, 0);
    for (t, v) in Attrs(b) {
        match t {
            CTA_TUPLE_IP => {
                for (t, v) in Attrs(v) {
                    let ip = match v.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(v).ok()?),
                        16 => IpAddr::from(<[u8; 16]>::try_from(v).ok()?),
                        _ => continue,
                    };
                    match t {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(ip),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(ip),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (t, v) in Attrs(v) {
                    match (t, v.len()) {
                        (CTA_PROTO_NUM, 1..) => proto = Some(v[0]),
                        (CTA_PROTO_SRC_PORT, 2..) => sport = u16::from_be_bytes([v[0], v[1]]),
                        (CTA_PROTO_DST_PORT, 2..) => dport = u16::from_be_bytes([v[0], v[1]]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple { proto: proto?, src: SocketAddr::new(src?, sport), dst: SocketAddr::new(dst?, dport) })
}

// ---------------------------------------------------------------------------------------------
// The namespace's facts and the decision
// ---------------------------------------------------------------------------------------------

/// Whether this process may use ctnetlink here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Netlink {
    Usable,
    /// EPERM: no CAP_NET_ADMIN in this network namespace.
    NoPermission,
    /// Another failure (no NETLINK_NETFILTER, ...): the errno.
    Unavailable(i32),
}

/// Is conntrack tracking flows in this network namespace? It is once some rule needs it (an
/// nft `ct` expression, a nat chain, iptables `-m state`), and then its table holds entries:
/// `net.netfilter.nf_conntrack_count` (per namespace) > 0.
pub fn active_here() -> bool {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// What the shim does about conntrack, decided once per process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Plan {
    /// Reserve each 4-tuple with CT_NEW (create|excl) before the connect.
    pub reserve: bool,
    /// Look the flow's own entry up after the connect (and, without `reserve`, the would-be
    /// reply tuple before it).
    pub verify: bool,
}

impl Plan {
    pub const OFF: Plan = Plan { reserve: false, verify: false };
    pub fn is_off(&self) -> bool {
        !self.reserve && !self.verify
    }
    pub fn describe(&self) -> &'static str {
        match (self.reserve, self.verify) {
            (true, true) => "reserve+verify",
            (true, false) => "reserve",
            (false, true) => "verify",
            (false, false) => "off",
        }
    }
}

/// The remedy when ctnetlink cannot be used, for the log line and `portrange check`.
pub const REMEDY: &str = "keep SNAT/masquerade port ranges and socket slices disjoint (`portrange \
    plan --exclude` can split a slice into a socket part and a forwarding part), or give the \
    process CAP_NET_ADMIN; the guard ruleset (`portrange check --nft`) drops what NAT rewrites";

/// `choice` with the facts of this namespace → the plan, and the one warning to give (if any).
pub fn plan(choice: ConntrackChoice, active: bool, netlink: Netlink) -> (Plan, Option<String>) {
    let why_not = |n: Netlink| match n {
        Netlink::Usable => String::new(),
        Netlink::NoPermission => "ctnetlink needs CAP_NET_ADMIN in this network namespace".into(),
        Netlink::Unavailable(e) => {
            format!("ctnetlink is unavailable ({})", std::io::Error::from_raw_os_error(e))
        }
    };
    match (choice, netlink) {
        (ConntrackChoice::Off, _) => (Plan::OFF, None),
        (ConntrackChoice::Auto, _) if !active => (Plan::OFF, None),
        (ConntrackChoice::Auto, Netlink::Usable) => (Plan { reserve: true, verify: true }, None),
        (ConntrackChoice::Reserve, Netlink::Usable) => (Plan { reserve: true, verify: false }, None),
        (ConntrackChoice::Verify, Netlink::Usable) => (Plan { reserve: false, verify: true }, None),
        (c, n) => (
            Plan::OFF,
            Some(format!(
                "conntrack is {}active in this network namespace and {}: flows are not protected \
                 from NAT rewriting their source port out of the slice (PORTRANGE_CONNTRACK={c}); \
                 remedy: {REMEDY}",
                if active { "" } else { "not " },
                why_not(n)
            )),
        ),
    }
}

/// Ask the kernel whether this process may use ctnetlink (a CT_GET of a tuple nobody uses:
/// ENOENT = usable, EPERM = no CAP_NET_ADMIN). For `portrange check` and tests; the shim probes
/// on its own socket.
pub fn probe() -> Netlink {
    // SAFETY: socket/sendto/recv/close on a socket this function owns, buffers valid for their sizes.
    unsafe {
        let fd =
            libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER);
        if fd < 0 {
            return Netlink::Unavailable(*libc::__errno_location());
        }
        let tv = libc::timeval { tv_sec: 1, tv_usec: 0 };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let r = probe_on(fd);
        libc::close(fd);
        r
    }
}

/// The probe on an open NETLINK_NETFILTER socket.
///
/// # Safety
/// `fd` must be a netlink socket the caller owns.
pub unsafe fn probe_on(fd: libc::c_int) -> Netlink {
    let t = probe_tuple();
    let mut m = get_request(0x7072_6f62, &t, false);
    let seq = m.seq();
    let b = m.bytes();
    // SAFETY: b is valid for its length (the caller owns fd).
    if unsafe { libc::send(fd, b.as_ptr().cast(), b.len(), 0) } < 0 {
        return Netlink::Unavailable(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    let mut buf = [0u64; 128];
    loop {
        // SAFETY: buf is writable for its size.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), std::mem::size_of_val(&buf), 0) };
        if n < 0 {
            return Netlink::Unavailable(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        // SAFETY: n bytes of buf were written.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
        match parse_answer(bytes) {
            Some((s, _)) if s != seq => continue,
            Some((_, Answer::Status(libc::EPERM))) => return Netlink::NoPermission,
            Some((_, Answer::Status(0 | libc::ENOENT))) | Some((_, Answer::Entry(_))) => {
                return Netlink::Usable
            }
            Some((_, Answer::Status(e))) => return Netlink::Unavailable(e),
            _ => return Netlink::Unavailable(libc::EPROTO),
        }
    }
}

/// A tuple no flow uses (TCP 127.0.0.1:1 → 127.0.0.1:1).
pub fn probe_tuple() -> Tuple {
    let a = SocketAddr::from(([127, 0, 0, 1], 1));
    Tuple::new(libc::IPPROTO_TCP as u8, a, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(src: &str, dst: &str) -> Tuple {
        Tuple::new(libc::IPPROTO_TCP as u8, src.parse().unwrap(), dst.parse().unwrap())
    }

    /// The answer the kernel would give for an entry (its attributes as a CT_NEW carries them).
    fn entry_answer(seq: u32, orig: &Tuple, reply: &Tuple, status: u32) -> Vec<u8> {
        let mut m = Msg::new(IPCTNL_MSG_CT_NEW, 0, seq, orig.family());
        m.tuple(CTA_TUPLE_ORIG, orig);
        m.tuple(CTA_TUPLE_REPLY, reply);
        m.put(CTA_STATUS, &status.to_be_bytes());
        m.bytes().to_vec()
    }

    #[test]
    fn requests_round_trip_through_the_parser() {
        let t = tcp("198.51.100.10:61003", "203.0.113.1:8080");
        let reply = tcp("203.0.113.1:8080", "198.51.100.10:45004");
        let b = entry_answer(7, &t, &reply, IPS_SRC_NAT | 0x8);
        let (seq, a) = parse_answer(&b).unwrap();
        assert_eq!(seq, 7);
        let Answer::Entry(e) = a else { panic!("{a:?}") };
        assert_eq!((e.orig, e.reply), (t, reply));
        assert_eq!(e.rewritten_source(), Some("198.51.100.10:45004".parse().unwrap()));
        // Not NATed: the reply is the exact inverse.
        let b = entry_answer(8, &t, &t.inverse(), 0x8);
        let Some((8, Answer::Entry(e))) = parse_answer(&b) else { panic!() };
        assert_eq!(e.rewritten_source(), None);
        // The NAT bit alone (same port kept by a null mapping that changed the address) counts.
        let b = entry_answer(9, &t, &t.inverse(), IPS_SRC_NAT);
        let Some((9, Answer::Entry(e))) = parse_answer(&b) else { panic!() };
        assert!(e.rewritten_source().is_some());
    }

    #[test]
    fn v6_and_v4_mapped_tuples() {
        let mapped = Tuple::new(
            libc::IPPROTO_UDP as u8,
            "[::ffff:198.51.100.10]:5000".parse().unwrap(),
            "[::ffff:203.0.113.1]:53".parse().unwrap(),
        );
        assert_eq!(mapped.src, "198.51.100.10:5000".parse().unwrap());
        assert_eq!(mapped.family(), libc::AF_INET as u8);
        let v6 = Tuple::new(
            libc::IPPROTO_UDP as u8,
            "[2001:db8::1]:5000".parse().unwrap(),
            "[2001:db8::2]:53".parse().unwrap(),
        );
        assert_eq!(v6.family(), libc::AF_INET6 as u8);
        let b = entry_answer(1, &v6, &v6.inverse(), 0);
        let Some((1, Answer::Entry(e))) = parse_answer(&b) else { panic!() };
        assert_eq!(e.orig, v6);
        assert_eq!(e.reply, v6.inverse());
    }

    #[test]
    fn new_request_layout() {
        let t = tcp("198.51.100.10:61003", "203.0.113.1:8080");
        let mut m = new_request(42, &t, 10);
        let seq = m.seq();
        let b = m.bytes().to_vec();
        assert_eq!(seq, 42);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize, b.len());
        assert_eq!(u16::from_ne_bytes(b[4..6].try_into().unwrap()), 0x100); // ctnetlink, CT_NEW
        let flags = u16::from_ne_bytes(b[6..8].try_into().unwrap());
        assert_eq!(flags, 0x1 | 0x4 | 0x200 | 0x400); // REQUEST|ACK|EXCL|CREATE
        let attrs: Vec<(u16, Vec<u8>)> = Attrs(&b[20..]).map(|(t, v)| (t, v.to_vec())).collect();
        let kinds: Vec<u16> = attrs.iter().map(|a| a.0).collect();
        assert_eq!(kinds, [CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_TIMEOUT, CTA_PROTOINFO]);
        assert_eq!(parse_tuple(&attrs[0].1), Some(t));
        assert_eq!(parse_tuple(&attrs[1].1), Some(t.inverse()));
        assert_eq!(attrs[2].1, 10u32.to_be_bytes());
        // UDP: no protoinfo.
        let u = Tuple::new(libc::IPPROTO_UDP as u8, t.src, t.dst);
        let mut m = new_request(1, &u, 30);
        assert_eq!(Attrs(&m.bytes()[20..]).count(), 3);
    }

    #[test]
    fn errors_and_garbage() {
        let mut b = vec![0u8; 36];
        b[0..4].copy_from_slice(&36u32.to_ne_bytes());
        b[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        b[8..12].copy_from_slice(&5u32.to_ne_bytes());
        b[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(parse_answer(&b), Some((5, Answer::Status(libc::EEXIST))));
        assert_eq!(parse_answer(&b[..10]), None);
        // A truncated attribute never panics.
        let t = tcp("10.0.0.1:1", "10.0.0.2:2");
        let full = entry_answer(3, &t, &t.inverse(), 0);
        for cut in 16..full.len() {
            let mut c = full[..cut].to_vec();
            c[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            let _ = parse_answer(&c);
        }
    }

    #[test]
    fn the_plan_follows_the_choice_and_the_facts() {
        use ConntrackChoice::*;
        let both = Plan { reserve: true, verify: true };
        assert_eq!(plan(Auto, true, Netlink::Usable), (both, None));
        assert_eq!(plan(Auto, false, Netlink::Usable), (Plan::OFF, None));
        assert_eq!(plan(Auto, false, Netlink::NoPermission), (Plan::OFF, None));
        let (p, w) = plan(Auto, true, Netlink::NoPermission);
        assert!(p.is_off());
        let w = w.unwrap();
        assert!(w.contains("CAP_NET_ADMIN") && w.contains("portrange plan"), "{w}");
        assert_eq!(plan(Reserve, false, Netlink::Usable).0, Plan { reserve: true, verify: false });
        assert_eq!(plan(Verify, true, Netlink::Usable).0, Plan { reserve: false, verify: true });
        assert!(plan(Verify, true, Netlink::Unavailable(libc::EPROTONOSUPPORT)).1.is_some());
        assert_eq!(plan(Off, true, Netlink::Usable), (Plan::OFF, None));
        assert_eq!(both.describe(), "reserve+verify");
    }

    #[test]
    fn probe_says_something_definite() {
        // As root in a test namespace: usable; without CAP_NET_ADMIN: NoPermission.
        let p = probe();
        assert!(matches!(p, Netlink::Usable | Netlink::NoPermission), "{p:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// NAT rules that map into a slice IP (for `portrange check`)
// ---------------------------------------------------------------------------------------------

/// A source-NAT rule of the ruleset, as `portrange check` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatRule {
    /// `family table chain` of the rule.
    pub place: String,
    /// `snat` or `masquerade`.
    pub kind: &'static str,
    /// The slice IP it maps to (`None` for masquerade: the outgoing interface's address).
    pub into: Option<IpAddr>,
}

/// Source-NAT rules in `nft -j list ruleset` output that map into one of `ips` (snat to a
/// slice IP), and every masquerade rule (it maps to whatever address the interface has).
pub fn nat_rules(json: &str, ips: &[IpAddr]) -> Vec<NatRule> {
    let mut out = Vec::new();
    for chunk in json.split("{\"rule\":").skip(1) {
        let field = |k: &str| {
            let pat = format!("\"{k}\":");
            let rest = chunk[chunk.find(&pat)? + pat.len()..].trim_start();
            let rest = rest.strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_string())
        };
        let place = format!(
            "{} {} {}",
            field("family").unwrap_or_default(),
            field("table").unwrap_or_default(),
            field("chain").unwrap_or_default()
        );
        if chunk.contains("\"masquerade\"") {
            out.push(NatRule { place: place.clone(), kind: "masquerade", into: None });
        }
        if let Some(at) = chunk.find("\"snat\"") {
            let after = &chunk[at..];
            if let Some(ip) = ips.iter().find(|ip| {
                let v6 = ip.to_string();
                after.contains(&format!("\"{v6}\""))
            }) {
                out.push(NatRule { place, kind: "snat", into: Some(*ip) });
            }
        }
    }
    out
}

#[cfg(test)]
mod nat_tests {
    use super::*;

    #[test]
    fn finds_snat_into_a_slice_ip_and_masquerade() {
        // As printed by `nft -j list ruleset` (nftables 1.0.6) for the reproducer's rules.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "fwdnat", "handle": 1}}, {"rule": {"family": "ip", "table": "fwdnat", "chain": "post", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.99.0.0", "len": 24}}}}, {"snat": {"addr": "198.51.100.10", "port": {"range": [61000, 61009]}}}]}}, {"rule": {"family": "ip", "table": "fwdnat", "chain": "post", "handle": 3, "expr": [{"snat": {"addr": "192.0.2.7"}}]}}, {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 4, "expr": [{"masquerade": null}]}}]}"#;
        let ips: Vec<IpAddr> = vec!["198.51.100.10".parse().unwrap()];
        let r = nat_rules(json, &ips);
        assert_eq!(
            r,
            [
                NatRule { place: "ip fwdnat post".into(), kind: "snat", into: Some(ips[0]) },
                NatRule { place: "inet t c".into(), kind: "masquerade", into: None },
            ]
        );
        assert!(nat_rules("", &ips).is_empty());
    }
}
