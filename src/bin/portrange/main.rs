//! `portrange`: run programs with the shim (`exec`), show it at work (`demo`), explain a
//! configuration (`check`), split a range for a fleet (`plan`).
//!
//! One file per command, each with its `run` and its `HELP`; this file only dispatches and holds
//! the overall usage text.

mod bpf;
mod cgroup;
mod check;
mod demo;
mod evaluate;
mod exec;
mod exec_cgroup;
mod flags;
mod plan;
mod preload;
mod stats;
mod status;

use std::ffi::OsString;
use std::process::ExitCode;

pub const USAGE: &str = "\
portrange — keep a program's outgoing TCP and UDP flows inside a slice: one source IP and a
range of its source ports (libportrange.so, loaded with LD_PRELOAD).

usage:
  portrange exec [--slice IP:LO-HI ...] [--skip CIDR ...] [--strategy auto|kernel|retry]
                 [--conntrack auto|reserve|verify|off] [--log LEVEL] [--stats PATH] [--] PROGRAM [ARGS...]
                              run PROGRAM with the shim
  portrange check [--json | --nft] [--slice ... --skip ... --strategy ...]
                              judge a configuration and explain what the shim will do here
  portrange plan --ip IP --ports LO-HI --servers N [--index I] [--exclude PORTS]
                              split a port range into N slices for a fleet
  portrange status [--json] [--watch SECONDS] [--slice ...]
                              per slice and destination: 4-tuples held, headroom left
  portrange stats FILE [--prometheus]
                              summarise PORTRANGE_STATS lines per program
  portrange demo              the shim at work on this machine, no set-up (loopback only)
  portrange cgroup attach|detach|status CGROUP [--slice IP:LO-HI ...] [--skip CIDR ...]
                              place every flow of a cgroup v2 group with a BPF program (static,
                              Go, io_uring programs: what LD_PRELOAD cannot reach)
  portrange help COMMAND      (or COMMAND --help) the details of one command
  portrange --version

environment (the flags of exec and check override these):
  PORTRANGE            the slices: IPv4:LO-HI or [IPv6]:LO-HI (IP:P for one port), comma-separated;
                       unset or empty: the shim does nothing at all
  PORTRANGE_SKIP       destination prefixes left untouched, CIDR v4/v6 comma-separated; default:
                       127.0.0.0/8, ::1/128, 169.254.0.0/16, fe80::/10 minus ranges holding a slice IP
  PORTRANGE_STRATEGY   TCP strategy: auto (default), kernel (IP_LOCAL_PORT_RANGE), retry
  PORTRANGE_LOG        log levels: off, error, warn (default), info, debug, trace;
                       or portrange[::module]=LEVEL, comma-separated (env_logger syntax)
  PORTRANGE_ON_ERROR   invalid configuration: deny (default: TCP/UDP connects fail with EPERM)
                       or passthrough (the shim stays inactive)
  PORTRANGE_STATS      a file: each process appends one JSON line of counters at exit
  PORTRANGE_CONNTRACK  auto (default), reserve, verify, off: protect placed flows from
                       conntrack/NAT rewriting
  PORTRANGE_PRECHECK   on (default) / off: the retry strategy's sock_diag look-up before a bind
  PORTRANGE_SO         the library exec and demo load; default: libportrange.so next to this
                       executable, then ../lib/portrange/, ../lib/, /usr/lib/portrange/
  PORTRANGE_BPFFS      cgroup placement: the BPF filesystem for pins (default /sys/fs/bpf)
  PORTRANGE_CGROUP_ROOT  exec's cgroup placement: where its group is made (default: under
                       this process's own group in the first cgroup v2 mount)
  PORTRANGE_EXEC_COUNTERS  set: exec prints the cgroup placement's counters when the program ends
  PORTRANGE_BPF_DEBUG  set: a BPF load failure shows the verifier's whole log

--exclude PORTS (plan): comma-separated ports and ranges, e.g. 8080,60100-60199.

exit status: 0 success; 1 check: invalid or unusable configuration; 2 bad arguments;
exec: the program's status, or 125 (portrange failed), 126 (not executable), 127 (not found).";

/// The subcommands with their help texts (the internal `demo-client` is not listed).
const COMMANDS: [(&str, &str); 7] = [
    ("exec", exec::HELP),
    ("check", check::HELP),
    ("plan", plan::HELP),
    ("status", status::HELP),
    ("stats", stats::HELP),
    ("demo", demo::HELP),
    ("cgroup", cgroup::HELP),
];

fn wants_help(cmd: &str, rest: &[OsString]) -> bool {
    let is_help = |a: &OsString| a == "--help" || a == "-h";
    if cmd == "exec" {
        // Only before the program: `exec -- prog --help` is the program's.
        return match flags::shim_flags(rest, &[]) {
            Ok((_, i)) => rest.get(i).is_some_and(is_help),
            Err(_) => false,
        };
    }
    rest.iter().any(is_help)
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let cmd = cmd.to_str().unwrap_or("");
    let rest = &args[1..];
    if let Some((_, help)) = COMMANDS.iter().find(|(c, _)| *c == cmd) {
        if wants_help(cmd, rest) {
            println!("{help}");
            return ExitCode::SUCCESS;
        }
    }
    let r = match cmd {
        "exec" => return exec::run(rest),
        "check" => return check::run(rest),
        "stats" => return stats::run(rest),
        "status" => return status::run(rest),
        "demo" => demo::run(),
        "plan" => plan::run(rest),
        "cgroup" => cgroup::run(rest),
        "demo-client" => demo::client(rest),
        "-h" | "--help" | "help" => match rest.first().and_then(|a| a.to_str()) {
            None => {
                println!("{USAGE}");
                Ok(())
            }
            Some(c) => match COMMANDS.iter().find(|(n, _)| *n == c) {
                Some((_, help)) => {
                    println!("{help}");
                    Ok(())
                }
                None => Err(format!("no command {c:?} (see portrange --help)")),
            },
        },
        "-V" | "--version" | "version" => {
            println!("portrange {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => Err(format!("unknown command {cmd:?} (see portrange --help)")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portrange {cmd}: {e}");
            ExitCode::from(2)
        }
    }
}
