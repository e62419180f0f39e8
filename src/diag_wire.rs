//! The sock_diag wire format (`linux/inet_diag.h`), shared by `portrange status`'s dump
//! (`diag`) and the shim's exact look-ups (`shim/src/sys/diag.rs`).

/// Netlink message type of a sock_diag request.
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `inet_diag_sockid.idiag_cookie` word meaning "any socket".
pub const INET_DIAG_NOCOOKIE: u32 = !0;
/// The netlink header's size: a payload starts here.
pub const NLMSG_HDRLEN: usize = std::mem::size_of::<libc::nlmsghdr>();

/// `struct inet_diag_sockid`. Ports and addresses in network order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct SockId {
    pub sport: u16,
    pub dport: u16,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub ifindex: u32,
    pub cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ReqV2 {
    pub family: u8,
    pub protocol: u8,
    pub ext: u8,
    pub pad: u8,
    pub states: u32,
    pub id: SockId,
}

/// One request: the netlink header and its `inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Request {
    pub nlh: libc::nlmsghdr,
    pub req: ReqV2,
}

/// `struct inet_diag_msg`, one socket of a reply.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct DiagMsg {
    pub family: u8,
    pub state: u8,
    pub timer: u8,
    pub retrans: u8,
    pub id: SockId,
    pub expires: u32,
    pub rqueue: u32,
    pub wqueue: u32,
    pub uid: u32,
    pub inode: u32,
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_match_the_kernel_headers() {
        assert_eq!(std::mem::size_of::<super::SockId>(), 48);
        assert_eq!(std::mem::size_of::<super::ReqV2>(), 56);
        assert_eq!(std::mem::size_of::<super::DiagMsg>(), 72);
    }
}
