//! `portrange plan`: split a port range on one IP into N slices for a fleet.

use portrange::choice::KernelFacts;
use portrange::{config, plan as cli_plan};
use std::ffi::OsString;

pub const HELP: &str = "\
usage: portrange plan --ip IP --ports LO-HI --servers N [--index I] [--exclude PORTS]

Split the ports LO-HI of IP into N contiguous slices of (nearly) equal size, one per server.
Without --index: a table of every server's share and its PORTRANGE value. With --index I (0 to
N-1): only server I's PORTRANGE value, for scripts (PORTRANGE=$(portrange plan ... --index 3)).

  --exclude PORTS   ports left out of every slice: comma-separated ports and ranges,
                    e.g. --exclude 8080,60100-60199 (repeatable)

When a share lies outside this host's net.ipv4.ip_local_port_range, a note on stderr says that
the kernel strategy cannot serve it here and prints the sysctl line that would let it.

exit status: 0 success; 2 bad arguments, or the range cannot be split N ways.";

pub fn run(args: &[OsString]) -> Result<(), String> {
    let mut ip = None;
    let mut ports = None;
    let mut servers = None;
    let mut index = None;
    let mut exclude = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_str().unwrap_or("");
        let v = args
            .get(i + 1)
            .and_then(|v| v.to_str())
            .ok_or_else(|| format!("{a} needs a value (see portrange plan --help)"))?;
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
            _ => return Err(format!("unexpected argument {a:?} (see portrange plan --help)")),
        }
        i += 2;
    }
    let (Some(ip), Some((lo, hi)), Some(n)) = (ip, ports, servers) else {
        return Err("plan needs --ip, --ports and --servers (see portrange plan --help)".into());
    };
    config::parse_slices(&cli_plan::portrange_value(ip, &[(lo, hi)]))
        .map_err(|e| format!("--ip {ip}: {e}"))?;
    let shares = cli_plan::split(lo, hi, &exclude, n)?;
    let shown: Vec<(u16, u16)> = match index {
        Some(k) if k >= n => return Err(format!("--index {k}: servers are numbered 0 to {}", n - 1)),
        Some(k) => {
            println!("{}", cli_plan::portrange_value(ip, &shares[k]));
            shares[k].clone()
        }
        None => {
            println!("{:>6} {:>6}  PORTRANGE", "server", "ports");
            for (k, r) in shares.iter().enumerate() {
                let count: u32 = r.iter().map(|(a, b)| u32::from(*b) - u32::from(*a) + 1).sum();
                println!("{k:>6} {count:>6}  {}", cli_plan::portrange_value(ip, r));
            }
            shares.iter().flatten().copied().collect()
        }
    };
    if let Some(current) = KernelFacts::read().sysctl_range {
        if let Some((wlo, whi)) = cli_plan::widened_sysctl_range(current, &shown) {
            eprint!("{}", sysctl_note(current, (wlo, whi)));
        }
    }
    Ok(())
}

/// Why the kernel strategy cannot serve these slices on this host, and the line that fixes it.
fn sysctl_note((clo, chi): (u16, u16), (wlo, whi): (u16, u16)) -> String {
    format!(
        "note: part of this plan lies outside net.ipv4.ip_local_port_range ({clo}-{chi} on this host): \
         the kernel strategy cannot serve those slices here (auto falls back to retry; --strategy \
         kernel is refused). To let it, widen the range to contain every slice:\n\
         \x20   sysctl -w net.ipv4.ip_local_port_range=\"{wlo} {whi}\"\n\
         \x20   echo 'net.ipv4.ip_local_port_range = {wlo} {whi}' > /etc/sysctl.d/60-portrange.conf\n\
         (programs without the shim then also take ephemeral ports from that range, including \
         other servers' slices: run them under the shim too, or keep the retry strategy)\n"
    )
}
