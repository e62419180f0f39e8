//! `portrange exec`: run a program with the shim.

use crate::flags::shim_flags;
use crate::preload::{ld_preload, so_path};
use crate::USAGE;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

pub fn run(args: &[OsString]) -> Result<(), String> {
    let (env, mut i) = shim_flags(args, &[])?;
    match args.get(i).and_then(|a| a.to_str()) {
        Some("--") => i += 1,
        Some(a) if a.starts_with("--") => {
            return Err(format!("unexpected argument {a:?} (the program goes after `--`)\n{USAGE}"))
        }
        _ => {}
    }
    let program = args.get(i).ok_or_else(|| format!("no program given\n{USAGE}"))?;
    if !env.iter().any(|(k, _)| *k == "PORTRANGE") {
        return Err("at least one --slice is needed".into());
    }
    let so = so_path()?;
    let mut cmd = Command::new(program);
    cmd.args(&args[i + 1..]).env("LD_PRELOAD", ld_preload(&so));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let err = cmd.exec();
    Err(format!("cannot run {}: {err}", program.to_string_lossy()))
}
