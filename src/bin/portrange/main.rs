//! `portrange`: run programs with the shim (`exec`), show it at work (`demo`), explain a
//! configuration (`check`), split a range for a fleet (`plan`).
//!
//! One file per command; this file only dispatches and holds the usage text.

mod check;
mod demo;
mod exec;
mod flags;
mod plan;
mod preload;

use std::ffi::OsString;
use std::process::ExitCode;

pub const USAGE: &str = "\
usage:
  portrange exec --slice IP:LO-HI [--slice ...] [--skip CIDR ...] [--strategy auto|kernel|retry]
                 [--log LEVEL] [--stats PATH] -- PROGRAM [ARGS...]
  portrange demo
  portrange check [--json] [--slice ... --skip ... --strategy ...]   (default: the PORTRANGE* environment)
  portrange plan --ip IP --ports LO-HI --servers N [--index I] [--exclude PORTS]

The shim is found at $PORTRANGE_SO, or as libportrange.so next to this executable.";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let cmd = args.first().and_then(|a| a.to_str()).unwrap_or("");
    let rest = args.get(1..).unwrap_or(&[]);
    let r = match cmd {
        "exec" => exec::run(rest),
        "demo" => demo::run(),
        "check" => return check::run(rest),
        "plan" => plan::run(rest),
        "demo-client" => demo::client(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unknown command {cmd:?}\n{USAGE}")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portrange: {e}");
            ExitCode::from(2)
        }
    }
}
