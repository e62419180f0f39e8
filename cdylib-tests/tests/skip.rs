//! PORTRANGE_SKIP: explicit lists and the default (loopback, link-local). Every test runs once
//! per TCP strategy ([`tcp_strategies`]), each run with a fresh slice and fresh recorders: a
//! skipped flow is left alone and a placed one lands in the slice whatever the strategy.

use cdylib_tests::*;
use std::net::SocketAddr;

const SLICE_IP: &str = "127.0.0.2";

/// Assert the peer saw `peer` inside the slice `ip:lo-hi`.
#[track_caller]
fn expect_in_slice(peer: SocketAddr, ip: &str, lo: u16, hi: u16, ctx: &str, out: &Output) {
    assert!(
        in_slice(peer, ip, lo, hi),
        "[{ctx}] peer saw {peer}, expected a source inside the slice {ip}:{lo}-{hi}\n{}",
        out.dump()
    );
}

/// Assert the peer saw `peer` outside the slice `ip:lo-hi` (a flow left alone).
#[track_caller]
fn expect_not_in_slice(peer: SocketAddr, ip: &str, lo: u16, hi: u16, ctx: &str, out: &Output) {
    assert!(
        !in_slice(peer, ip, lo, hi),
        "[{ctx}] peer saw {peer}, inside the slice {ip}:{lo}-{hi}, but this flow should have been left alone\n{}",
        out.dump()
    );
}

/// PORTRANGE_SKIP=127.0.0.3/32: a flow to 127.0.0.3 is left alone, one to 127.0.0.1 is placed.
#[test]
fn explicit_skip_leaves_destination_alone() {
    for strategy in tcp_strategies() {
        let skipped = Recorder::hold("127.0.0.3");
        let placed = Recorder::hold("127.0.0.1");
        let (lo, hi) = slice_ports(10);
        let (ps, pp) = (skipped.port().to_string(), placed.port().to_string());
        let out = py_connect(&["tcp", "127.0.0.3", &ps, "tcp", "127.0.0.1", &pp])
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_SKIP", "127.0.0.3/32")
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        for r in out.connects() {
            assert!(r.result.is_ok(), "[{strategy}] {r:?}\n{}", out.dump());
        }
        let s = skipped.wait_for(1, PEER_WAIT);
        let p = placed.wait_for(1, PEER_WAIT);
        assert_eq!((s.len(), p.len()), (1, 1), "[{strategy}]\n{}", out.dump());
        expect_not_in_slice(s[0], SLICE_IP, lo, hi, strategy, &out);
        assert_ne!(
            s[0].ip().to_string(),
            SLICE_IP,
            "[{strategy}] skipped flow was bound to the slice IP: {}\n{}",
            s[0],
            out.dump()
        );
        expect_in_slice(p[0], SLICE_IP, lo, hi, strategy, &out);
    }
}

/// A v6 skip entry does not affect v4 flows, and a bare address is a /32.
#[test]
fn bare_address_skip() {
    for strategy in tcp_strategies() {
        let skipped = Recorder::hold("127.0.0.3");
        let other = Recorder::hold("127.0.0.4");
        let (lo, hi) = slice_ports(10);
        let (ps, po) = (skipped.port().to_string(), other.port().to_string());
        let out = py_connect(&["tcp", "127.0.0.3", &ps, "tcp", "127.0.0.4", &po])
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_SKIP", " 127.0.0.3 , 2001:db8::/32")
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        let s = skipped.wait_for(1, PEER_WAIT);
        let o = other.wait_for(1, PEER_WAIT);
        assert_eq!((s.len(), o.len()), (1, 1), "[{strategy}]\n{}", out.dump());
        expect_not_in_slice(s[0], SLICE_IP, lo, hi, strategy, &out);
        expect_in_slice(o[0], SLICE_IP, lo, hi, strategy, &out);
    }
}

/// Default skip with a slice IP outside 127/8, in a private network namespace: loopback
/// destinations are left alone, the slice IP's own address is placed.
#[test]
fn default_skip_leaves_loopback_alone() {
    require!("ip");
    const NS_IP: &str = "198.51.100.10";
    in_private_netns(|| {
        sh(&["ip", "link", "set", "lo", "up"]);
        sh(&["ip", "addr", "add", &format!("{NS_IP}/32"), "dev", "lo"]);
        for strategy in tcp_strategies() {
            let placed = Recorder::hold(NS_IP);
            let loopback = Recorder::hold("127.0.0.1");
            let (lo, hi) = slice_ports(10);
            let (pp, pl) = (placed.port().to_string(), loopback.port().to_string());
            let out = py_connect(&["tcp", NS_IP, &pp, "tcp", "127.0.0.1", &pl])
                .slice(&slice_spec(NS_IP, lo, hi))
                .env("PORTRANGE_STRATEGY", strategy)
                .run();
            out.assert_success();
            for r in out.connects() {
                assert!(r.result.is_ok(), "[{strategy}] {r:?}\n{}", out.dump());
            }
            let p = placed.wait_for(1, PEER_WAIT);
            let l = loopback.wait_for(1, PEER_WAIT);
            assert_eq!((p.len(), l.len()), (1, 1), "[{strategy}]\n{}", out.dump());
            expect_in_slice(p[0], NS_IP, lo, hi, strategy, &out);
            expect_not_in_slice(l[0], NS_IP, lo, hi, strategy, &out);
            assert_eq!(
                l[0].ip().to_string(),
                "127.0.0.1",
                "[{strategy}] loopback flow left alone keeps the kernel's source\n{}",
                out.dump()
            );

            // PORTRANGE_SKIP set (even empty) replaces the default list: loopback is placed too.
            let loopback2 = Recorder::hold("127.0.0.1");
            let (lo2, hi2) = slice_ports(10);
            let out = py_connect(&["tcp", "127.0.0.1", &loopback2.port().to_string()])
                .slice(&slice_spec(NS_IP, lo2, hi2))
                .env("PORTRANGE_SKIP", "")
                .env("PORTRANGE_STRATEGY", strategy)
                .run();
            out.assert_success();
            let l2 = loopback2.wait_for(1, PEER_WAIT);
            assert_eq!(l2.len(), 1, "[{strategy}]\n{}", out.dump());
            expect_in_slice(l2[0], NS_IP, lo2, hi2, strategy, &out);
        }
    });
}

/// A flow with no slice of its family is left alone: a v6-only configuration does not touch a
/// v4 flow, and a v4-only one does not touch a v6 flow.
#[test]
fn no_slice_of_the_family_is_left_alone() {
    for strategy in tcp_strategies() {
        let v4 = Recorder::hold("127.0.0.1");
        let v6 = Recorder::hold("::1");
        let (lo, hi) = slice_ports(10);
        let out = py_connect(&["tcp", "127.0.0.1", &v4.port().to_string()])
            .slice(&slice_spec("::1", lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        assert!(out.connects()[0].result.is_ok(), "[{strategy}]\n{}", out.dump());
        let p = v4.wait_for(1, PEER_WAIT);
        assert_eq!(p.len(), 1, "[{strategy}]\n{}", out.dump());
        assert_eq!(p[0].ip().to_string(), "127.0.0.1", "[{strategy}]\n{}", out.dump());

        let (lo, hi) = slice_ports(10);
        let out = py_connect(&["tcp", "::1", &v6.port().to_string()])
            .slice(&slice_spec(SLICE_IP, lo, hi))
            .env("PORTRANGE_STRATEGY", strategy)
            .run();
        out.assert_success();
        assert!(out.connects()[0].result.is_ok(), "[{strategy}]\n{}", out.dump());
        let p = v6.wait_for(1, PEER_WAIT);
        assert_eq!(p.len(), 1, "[{strategy}]\n{}", out.dump());
        assert_eq!(p[0].ip().to_string(), "::1", "[{strategy}]\n{}", out.dump());
    }
}
