//! The shim's settings given as command-line flags, checked and turned into PORTRANGE* variables.

use portrange::config;
use std::ffi::OsString;

/// PORTRANGE* variables and their values.
pub type EnvVars = Vec<(&'static str, String)>;

/// The shim's settings given as flags (`--slice`, `--skip`, `--strategy`, `--log`, `--stats`),
/// each checked, as PORTRANGE* variables; and where the remaining arguments start.
pub fn shim_flags(args: &[OsString], allow: &[&str]) -> Result<(EnvVars, usize), String> {
    let mut slices = Vec::new();
    let mut skip: Option<Vec<String>> = None;
    let mut env: Vec<(&'static str, String)> = Vec::new();
    let mut i = 0;
    let value = |i: usize, name: &str| -> Result<String, String> {
        args.get(i + 1)
            .and_then(|v| v.to_str())
            .map(str::to_string)
            .ok_or_else(|| format!("{name} needs a value"))
    };
    while i < args.len() {
        let a = args[i].to_str().unwrap_or("");
        match a {
            "--slice" => {
                let v = value(i, a)?;
                config::parse_slices(&v).map_err(|e| format!("--slice {v}: {e}"))?;
                slices.push(v);
            }
            "--skip" => {
                let v = value(i, a)?;
                config::parse_skip(&v).map_err(|e| format!("--skip {v}: {e}"))?;
                skip.get_or_insert_with(Vec::new).push(v);
            }
            "--strategy" => {
                let v = value(i, a)?;
                config::parse_strategy(&v).map_err(|e| format!("--strategy {v}: {e}"))?;
                env.push(("PORTRANGE_STRATEGY", v));
            }
            "--log" => {
                let v = value(i, a)?;
                config::parse_log_filter(&v).map_err(|e| format!("--log {v}: {e}"))?;
                env.push(("PORTRANGE_LOG", v));
            }
            "--stats" => env.push(("PORTRANGE_STATS", value(i, a)?)),
            _ if allow.contains(&a) => {
                i += 1;
                continue;
            }
            _ => break,
        }
        i += 2;
    }
    if !slices.is_empty() {
        let portrange = slices.join(",");
        config::parse_slices(&portrange).map_err(|e| format!("--slice: {e}"))?;
        env.push(("PORTRANGE", portrange));
    }
    if let Some(skip) = skip {
        env.push(("PORTRANGE_SKIP", skip.join(",")));
    }
    Ok((env, i))
}
