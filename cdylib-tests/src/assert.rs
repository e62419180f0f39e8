//! Assertions on what the peer saw (in the slice, outside it, distinct ports, fill-up).

use crate::*;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `::ffff:a.b.c.d` → `a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn parse_ip(ip: &str) -> IpAddr {
    canonical(
        ip.trim_start_matches('[').trim_end_matches(']').parse().unwrap_or_else(|_| panic!("bad IP {ip}")),
    )
}

/// True when `peer` is `ip` with a port in `lo..=hi` (v4-mapped addresses count as IPv4).
pub fn in_slice(peer: SocketAddr, ip: &str, lo: u16, hi: u16) -> bool {
    canonical(peer.ip()) == parse_ip(ip) && (lo..=hi).contains(&peer.port())
}

#[track_caller]
pub fn assert_in_slice(peer: SocketAddr, ip: &str, lo: u16, hi: u16) {
    assert!(in_slice(peer, ip, lo, hi), "peer saw {peer}, expected a source inside the slice {ip}:{lo}-{hi}");
}

#[track_caller]
pub fn assert_not_in_slice(peer: SocketAddr, ip: &str, lo: u16, hi: u16) {
    assert!(
        !in_slice(peer, ip, lo, hi),
        "peer saw {peer}, inside the slice {ip}:{lo}-{hi}, but this flow should have been left alone"
    );
}

/// The slice IP most tests use (any 127/8 address is local, so it needs no set-up).
pub const SLICE_IP: &str = "127.0.0.2";

/// Wait until `rec` saw `n` connections, then assert it saw exactly `n` (nothing more arrives
/// within a short settle time). Returns the peers. `ctx` (e.g. the strategy) prefixes every
/// message, followed by `out`'s dump.
#[track_caller]
pub fn expect_peers(rec: &Recorder, n: usize, ctx: &str, out: &Output) -> Vec<SocketAddr> {
    let peers = rec.wait_for(n, PEER_WAIT);
    assert!(
        peers.len() >= n,
        "[{ctx}] recorder {} saw {peers:?}, expected {n} connection(s)\n{}",
        rec.addr(),
        out.dump()
    );
    let peers = rec.settle();
    assert_eq!(
        peers.len(),
        n,
        "[{ctx}] recorder {} saw {peers:?}, expected exactly {n}\n{}",
        rec.addr(),
        out.dump()
    );
    peers
}

/// Assert every address the peer saw (a TCP peer or a UDP server) is inside the slice `ip:lo-hi`.
#[track_caller]
pub fn expect_in_slice(peers: &[SocketAddr], ip: &str, lo: u16, hi: u16, ctx: &str, out: &Output) {
    for p in peers {
        assert!(
            in_slice(*p, ip, lo, hi),
            "[{ctx}] the peer saw {p}, outside the slice {ip}:{lo}-{hi}\n{}",
            out.dump()
        );
    }
}

/// Assert every address the peer saw is outside the slice `ip:lo-hi` (flows left alone).
#[track_caller]
pub fn expect_not_in_slice(peers: &[SocketAddr], ip: &str, lo: u16, hi: u16, ctx: &str, out: &Output) {
    for p in peers {
        assert!(
            !in_slice(*p, ip, lo, hi),
            "[{ctx}] the peer saw {p}, inside the slice {ip}:{lo}-{hi}, but this flow should have been left alone\n{}",
            out.dump()
        );
    }
}

/// Assert the source ports of `addrs` are pairwise distinct (for flows to one destination:
/// distinct 4-tuples); returns them.
#[track_caller]
pub fn expect_distinct_ports(addrs: &[SocketAddr], ctx: &str, out: &Output) -> BTreeSet<u16> {
    let ports: BTreeSet<u16> = addrs.iter().map(|a| a.port()).collect();
    assert_eq!(ports.len(), addrs.len(), "[{ctx}] duplicate source ports among {addrs:?}\n{}", out.dump());
    ports
}

/// Assert a run's RESULT lines ([`PY_CONNECT`] or a script printing the same lines) show a TCP
/// slice `ip:lo-hi` filling up: `n + 1` lines, the first `n` connected from inside the slice, the
/// last failed with EADDRNOTAVAIL. Returns the `n` local addresses.
#[track_caller]
pub fn expect_slice_fills_after(
    out: &Output,
    n: usize,
    ip: &str,
    lo: u16,
    hi: u16,
    ctx: &str,
) -> Vec<SocketAddr> {
    let results = out.connects();
    assert_eq!(results.len(), n + 1, "[{ctx}] expected {} RESULT lines\n{}", n + 1, out.dump());
    let mut locals = Vec::new();
    for (i, r) in results[..n].iter().enumerate() {
        match r.result {
            Ok(local) => {
                assert!(
                    in_slice(local, ip, lo, hi),
                    "[{ctx}] connect #{i} got local {local}, outside the slice {ip}:{lo}-{hi}\n{}",
                    out.dump()
                );
                locals.push(local);
            }
            Err(e) => panic!(
                "[{ctx}] connect #{i} to {} failed with errno {e}; the slice must serve the first {n} flows\n{}",
                r.dst,
                out.dump()
            ),
        }
    }
    assert_eq!(
        results[n].result,
        Err(EADDRNOTAVAIL),
        "[{ctx}] connect #{n} to {} must fail with EADDRNOTAVAIL ({EADDRNOTAVAIL}): the slice is full\n{}",
        results[n].dst,
        out.dump()
    );
    locals
}

/// The shape of a single-connection placement test. Under each TCP strategy
/// ([`tcp_strategies`]), with a fresh `mode` recorder on 127.0.0.1 and a fresh 10-port slice on
/// [`SLICE_IP`]: the client that `client(&recorder)` builds runs with that slice and strategy and
/// must exit 0; the recorder must have seen exactly one connection by [`PEER_WAIT`], from inside
/// the slice; then `check(&output, peer, strategy)` makes the test's own assertions.
pub fn one_flow_per_strategy(
    mode: Mode,
    client: impl Fn(&Recorder) -> Run,
    check: impl Fn(&Output, SocketAddr, &str),
) {
    for strategy in tcp_strategies() {
        let rec = Recorder::start("127.0.0.1", mode);
        let (lo, hi) = slice_ports(10);
        let out = client(&rec).slice(&slice_spec(SLICE_IP, lo, hi)).env("PORTRANGE_STRATEGY", strategy).run();
        out.assert_success();
        let peers = rec.wait_for(1, PEER_WAIT);
        assert_eq!(
            peers.len(),
            1,
            "[{strategy}] recorder {} saw {peers:?}, expected 1 connection\n{}",
            rec.addr(),
            out.dump()
        );
        expect_in_slice(&peers, SLICE_IP, lo, hi, strategy, &out);
        check(&out, peers[0], strategy);
    }
}

/// The PORTRANGE value for one slice: `IP:LO-HI` or `[IPv6]:LO-HI`.
pub fn slice_spec(ip: &str, lo: u16, hi: u16) -> String {
    match parse_ip(ip) {
        IpAddr::V4(v4) => format!("{v4}:{lo}-{hi}"),
        IpAddr::V6(v6) => format!("[{v6}]:{lo}-{hi}"),
    }
}

pub const LOCALHOST_V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const LOCALHOST_V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

// ---------------------------------------------------------------------------------------------
