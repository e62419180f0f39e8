//! `portrange plan`: split a port range on one IP into N slices for a fleet.

use crate::USAGE;
use portrange::{config, plan as cli_plan};
use std::ffi::OsString;

pub fn run(args: &[OsString]) -> Result<(), String> {
    let mut ip = None;
    let mut ports = None;
    let mut servers = None;
    let mut index = None;
    let mut exclude = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_str().unwrap_or("");
        let v =
            args.get(i + 1).and_then(|v| v.to_str()).ok_or_else(|| format!("{a} needs a value\n{USAGE}"))?;
        match a {
            "--ip" => {
                let p: std::net::IpAddr = v
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse()
                    .map_err(|_| format!("--ip {v}: not an IP address"))?;
                ip = Some(p);
            }
            "--ports" => ports = Some(config::parse_port_range(v).map_err(|e| format!("--ports {v}: {e}"))?),
            "--servers" => {
                servers = Some(v.parse::<usize>().map_err(|_| format!("--servers {v}: not a number"))?)
            }
            "--index" => index = Some(v.parse::<usize>().map_err(|_| format!("--index {v}: not a number"))?),
            "--exclude" => {
                exclude.extend(cli_plan::parse_ports(v).map_err(|e| format!("--exclude {v}: {e}"))?)
            }
            _ => return Err(format!("unexpected argument {a:?}\n{USAGE}")),
        }
        i += 2;
    }
    let (Some(ip), Some((lo, hi)), Some(n)) = (ip, ports, servers) else {
        return Err(format!("plan needs --ip, --ports and --servers\n{USAGE}"));
    };
    config::parse_slices(&cli_plan::portrange_value(ip, &[(lo, hi)]))
        .map_err(|e| format!("--ip {ip}: {e}"))?;
    let shares = cli_plan::split(lo, hi, &exclude, n)?;
    match index {
        Some(k) if k >= n => Err(format!("--index {k}: servers are numbered 0 to {}", n - 1)),
        Some(k) => {
            println!("{}", cli_plan::portrange_value(ip, &shares[k]));
            Ok(())
        }
        None => {
            println!("{:>6} {:>6}  PORTRANGE", "server", "ports");
            for (k, r) in shares.iter().enumerate() {
                let count: u32 = r.iter().map(|(a, b)| u32::from(*b) - u32::from(*a) + 1).sum();
                println!("{k:>6} {count:>6}  {}", cli_plan::portrange_value(ip, r));
            }
            Ok(())
        }
    }
}
