//! Sockets a program started by exec inherits (issue 9 case 7): a deferred `bind(0.0.0.0, 0)` is
//! carried out before the exec, and whoever connects the socket afterwards — the new program, or
//! this one after its fork child exec'd — leaves from the slice, also on a host whose route to
//! the peer has another source address than the slice IP (the slice IP on `lo`, as soft-unicast
//! set-ups have it). The differential suite cannot show this: there the slice IP is the only
//! address.

use cdylib_tests::*;
use std::net::SocketAddr;
use std::time::Duration;

const SLICE: &str = "198.51.100.10";
const CLIENT: &str = "10.9.0.2";
const SERVER: &str = "10.9.0.1";

#[test]
fn an_inherited_wildcard_bind_leaves_from_the_slice_ip() {
    require_netns!();
    let Some(exe) = compile_c("exec_inherit", include_str!("../c/exec_inherit.c")) else { return };
    let pair = VethPair::new("pex", &[&format!("{CLIENT}/24")], &[&format!("{SERVER}/24")]);
    sh(&["ip", "-n", &pair.client, "addr", "add", &format!("{SLICE}/32"), "dev", "lo"]);
    pair.server_route(&format!("{SLICE}/32"));
    let rec = pair.in_server(|| Recorder::hold(SERVER));
    for strategy in tcp_strategies() {
        let run = Run::new(&exe)
            .args([SERVER.to_string(), rec.port().to_string()])
            .slice(&slice_spec(SLICE, 40000, 40009))
            .env("PORTRANGE_STRATEGY", strategy)
            .timeout(Duration::from_secs(30));
        let out = pair.in_client(move || run.run());
        out.assert_success();
        for who in ["CHILD", "PARENT"] {
            let local: SocketAddr = out.expect_field(who).parse().unwrap();
            assert!(
                local.ip().to_string() == SLICE && (40000..=40009).contains(&local.port()),
                "[{strategy}] {who} connected from {local}, outside the slice\n{}",
                out.dump()
            );
        }
    }
    let peers = rec.wait_for(2 * tcp_strategies().len(), PEER_WAIT);
    assert_eq!(peers.len(), 2 * tcp_strategies().len(), "{peers:?}");
    for p in &peers {
        assert_in_slice(*p, SLICE, 40000, 40009);
    }
}
