//! PORTRANGE_SKIP: explicit lists and the default (loopback, link-local). Every test runs once
//! per TCP strategy ([`tcp_strategies`]), each run with a fresh slice and fresh recorders: a
//! skipped flow is left alone and a placed one lands in the slice whatever the strategy.

use cdylib_tests::*;
use std::net::SocketAddr;

/// One process under `strategy`, with PORTRANGE_SKIP=`skip` and a fresh slice on [`SLICE_IP`],
/// connects to a fresh recorder on `skipped_ip`, then to one on `placed_ip`. Asserts each
/// recorder saw one flow: the first left alone (outside the slice), the second placed. Returns
/// the run and the source the skipped recorder saw.
fn skip_case(strategy: &str, skip: &str, skipped_ip: &str, placed_ip: &str) -> (Output, SocketAddr) {
    let skipped = Recorder::hold(skipped_ip);
    let placed = Recorder::hold(placed_ip);
    let (lo, hi) = slice_ports(10);
    let out = py_connect_tcp(&[(&skipped, 1), (&placed, 1)])
        .slice(&slice_spec(SLICE_IP, lo, hi))
        .env("PORTRANGE_SKIP", skip)
        .env("PORTRANGE_STRATEGY", strategy)
        .run();
    out.assert_success();
    let s = skipped.wait_for(1, PEER_WAIT);
    let p = placed.wait_for(1, PEER_WAIT);
    assert_eq!((s.len(), p.len()), (1, 1), "[{strategy}]\n{}", out.dump());
    expect_not_in_slice(&s, SLICE_IP, lo, hi, strategy, &out);
    expect_in_slice(&p, SLICE_IP, lo, hi, strategy, &out);
    (out, s[0])
}

/// PORTRANGE_SKIP=127.0.0.3/32: a flow to 127.0.0.3 is left alone, one to 127.0.0.1 is placed.
#[test]
fn explicit_skip_leaves_destination_alone() {
    for strategy in tcp_strategies() {
        let (out, skipped) = skip_case(strategy, "127.0.0.3/32", "127.0.0.3", "127.0.0.1");
        for r in out.connects() {
            assert!(r.result.is_ok(), "[{strategy}] {r:?}\n{}", out.dump());
        }
        assert_ne!(
            skipped.ip().to_string(),
            SLICE_IP,
            "[{strategy}] skipped flow was bound to the slice IP: {skipped}\n{}",
            out.dump()
        );
    }
}

/// A v6 skip entry does not affect v4 flows, and a bare address is a /32.
#[test]
fn bare_address_skip() {
    for strategy in tcp_strategies() {
        skip_case(strategy, " 127.0.0.3 , 2001:db8::/32", "127.0.0.3", "127.0.0.4");
    }
}

/// Default skip with a slice IP outside 127/8, in a private network namespace: loopback
/// destinations are left alone, the slice IP's own address is placed.
#[test]
fn default_skip_leaves_loopback_alone() {
    require_netns!();
    require!("ip");
    const NS_IP: &str = "198.51.100.10";
    in_private_netns(|| {
        sh(&["ip", "link", "set", "lo", "up"]);
        sh(&["ip", "addr", "add", &format!("{NS_IP}/32"), "dev", "lo"]);
        for strategy in tcp_strategies() {
            let placed = Recorder::hold(NS_IP);
            let loopback = Recorder::hold("127.0.0.1");
            let (lo, hi) = slice_ports(10);
            let out = py_connect_tcp(&[(&placed, 1), (&loopback, 1)])
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
            expect_in_slice(&p, NS_IP, lo, hi, strategy, &out);
            expect_not_in_slice(&l, NS_IP, lo, hi, strategy, &out);
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
            expect_in_slice(&l2, NS_IP, lo2, hi2, strategy, &out);
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
        // A flow to each recorder, under a slice of the other family only.
        for (rec, slice_ip) in [(&v4, "::1"), (&v6, SLICE_IP)] {
            let (lo, hi) = slice_ports(10);
            let out = py_connect_tcp(&[(rec, 1)])
                .slice(&slice_spec(slice_ip, lo, hi))
                .env("PORTRANGE_STRATEGY", strategy)
                .run();
            out.assert_success();
            assert!(out.connects()[0].result.is_ok(), "[{strategy}]\n{}", out.dump());
            let p = rec.wait_for(1, PEER_WAIT);
            assert_eq!(p.len(), 1, "[{strategy}]\n{}", out.dump());
            assert_eq!(p[0].ip().to_string(), rec.ip(), "[{strategy}]\n{}", out.dump());
        }
    }
}
