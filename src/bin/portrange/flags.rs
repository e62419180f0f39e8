//! The shim's settings given as command-line flags (`--slice`, `--skip`, `--strategy`,
//! `--conntrack`, `--log`, `--stats`). They are collected here, not validated: a flag is an override of its PORTRANGE*
//! variable, and the one validation in `evaluate.rs` judges both the same way (same errors, same
//! exit codes), naming the flag when the bad value came from one.

use std::ffi::OsString;

/// A PORTRANGE* value given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    pub var: &'static str,
    pub flag: &'static str,
    pub value: String,
}

/// Every shim flag given, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShimFlags {
    /// Each `--slice` value on its own (they are joined into one PORTRANGE).
    pub slices: Vec<String>,
    pub overrides: Vec<Override>,
}

impl ShimFlags {
    /// The PORTRANGE* variables these flags set, as (name, value); repeated `--slice` and
    /// `--skip` joined with commas.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env: Vec<(&'static str, String)> = Vec::new();
        if !self.slices.is_empty() {
            env.push(("PORTRANGE", self.slices.join(",")));
        }
        let skips: Vec<&str> =
            self.overrides.iter().filter(|o| o.var == "PORTRANGE_SKIP").map(|o| o.value.as_str()).collect();
        if !skips.is_empty() {
            env.push(("PORTRANGE_SKIP", skips.join(",")));
        }
        for o in self.overrides.iter().filter(|o| o.var != "PORTRANGE_SKIP") {
            // The last one wins, as with a repeated variable assignment.
            env.retain(|(k, _)| *k != o.var);
            env.push((o.var, o.value.clone()));
        }
        env
    }

    /// The flag that set `var`, if one did.
    pub fn flag_for(&self, var: &str) -> Option<&'static str> {
        if var == "PORTRANGE" && !self.slices.is_empty() {
            return Some("--slice");
        }
        self.overrides.iter().find(|o| o.var == var).map(|o| o.flag)
    }
}

const FLAGS: [(&str, &str); 6] = [
    ("--slice", "PORTRANGE"),
    ("--skip", "PORTRANGE_SKIP"),
    ("--strategy", "PORTRANGE_STRATEGY"),
    ("--conntrack", "PORTRANGE_CONNTRACK"),
    ("--log", "PORTRANGE_LOG"),
    ("--stats", "PORTRANGE_STATS"),
];

/// Collect shim flags from the start of `args`; `switches` are other flags without a value the
/// caller accepts (it looks for them itself). Stops at the first other argument and returns its
/// index. `--flag=value` is accepted too. Errors are usage errors (a flag without its value).
pub fn shim_flags(args: &[OsString], switches: &[&str]) -> Result<(ShimFlags, usize), String> {
    let mut out = ShimFlags::default();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_str().unwrap_or("");
        if switches.contains(&a) {
            i += 1;
            continue;
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (a, None),
        };
        let Some(&(flag, var)) = FLAGS.iter().find(|(f, _)| *f == name) else { break };
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                args.get(i)
                    .and_then(|v| v.to_str())
                    .map(str::to_string)
                    .ok_or_else(|| format!("{flag} needs a value"))?
            }
        };
        if var == "PORTRANGE" {
            out.slices.push(value);
        } else {
            out.overrides.push(Override { var, flag, value });
        }
        i += 1;
    }
    Ok((out, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn collects_without_judging() {
        let a = os(&[
            "--slice",
            "nope",
            "--json",
            "--slice=1.2.3.4:5-6",
            "--skip",
            "10.0.0.0/8",
            "--skip",
            "x",
            "--log",
            "a",
            "--log",
            "debug",
            "--",
            "prog",
        ]);
        let (f, i) = shim_flags(&a, &["--json"]).unwrap();
        assert_eq!(i, 12);
        assert_eq!(
            f.env(),
            vec![
                ("PORTRANGE", "nope,1.2.3.4:5-6".to_string()),
                ("PORTRANGE_SKIP", "10.0.0.0/8,x".to_string()),
                ("PORTRANGE_LOG", "debug".to_string())
            ]
        );
        assert_eq!(f.flag_for("PORTRANGE"), Some("--slice"));
        assert_eq!(f.flag_for("PORTRANGE_STRATEGY"), None);
        assert_eq!(shim_flags(&os(&["--strategy"]), &[]).unwrap_err(), "--strategy needs a value");
    }
}
