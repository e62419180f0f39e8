//! A packet forwarder's side of sharing a slice with local sockets (seed 004): reserve 4-tuples
//! with sockets that never send, so that programs under the shim never take them, and use them
//! for forwarded flows.
//!
//!     cargo run --release --example reserve -- --slice 198.51.100.10:61000-61009 \
//!         --to 203.0.113.1:443 [--count 3] [--udp]
//!
//! Prints one `reserved LOCAL -> REMOTE` line per tuple, then holds them until stdin closes
//! (Enter or Ctrl-D); the tuples are free again when it exits.

use portrange::config::parse_slice;
use portrange::reserve::{Proto, Reservation};
use std::net::SocketAddr;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut slice = None;
    let mut to: Option<SocketAddr> = None;
    let mut count = 1usize;
    let mut proto = Proto::Tcp;
    let mut i = 0;
    while i < args.len() {
        let value =
            || args.get(i + 1).cloned().unwrap_or_else(|| fail(&format!("{} needs a value", args[i])));
        match args[i].as_str() {
            "--slice" => slice = Some(parse_slice(&value()).unwrap_or_else(|e| fail(&e))),
            "--to" => to = Some(value().parse().unwrap_or_else(|_| fail("--to IP:PORT"))),
            "--count" => count = value().parse().unwrap_or_else(|_| fail("--count N")),
            "--udp" => {
                proto = Proto::Udp;
                i += 1;
                continue;
            }
            other => fail(&format!("unknown argument {other}")),
        }
        i += 2;
    }
    let (Some(slice), Some(to)) = (slice, to) else { fail("--slice and --to are required") };
    let mut held = Vec::new();
    for _ in 0..count {
        match Reservation::in_slice(proto, &slice, to) {
            Ok(r) => {
                println!("reserved {} -> {}", r.local(), r.remote());
                held.push(r);
            }
            Err(e) => fail(&format!("no free 4-tuple in {slice} towards {to}: {e}")),
        }
    }
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(held);
}

fn fail(msg: &str) -> ! {
    eprintln!("reserve: {msg}");
    std::process::exit(2)
}
