//! `portrange cgroup attach|detach|status CGROUP`: the BPF placement on a cgroup v2 group, for
//! programs LD_PRELOAD cannot reach (static, Go, io_uring, raw syscalls). `attach` pins it under
//! bpffs so it outlives the command; `detach` removes everything `attach` added.

use crate::bpf;
use portrange::config::{self, Prefix, Slice};
use portrange::placement::{self, BpfConfig};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub const HELP: &str = "\
usage: portrange cgroup attach CGROUP --slice IP:LO-HI [--slice ...] [--skip CIDR ...]
       portrange cgroup detach CGROUP
       portrange cgroup status [CGROUP]

Place every outgoing TCP and UDP flow of the processes of a cgroup v2 group with a BPF program
(cgroup/connect4 and connect6), for what LD_PRELOAD cannot reach: static, Go, musl, io_uring and
raw-syscall programs. CGROUP is a cgroup v2 directory, e.g. a systemd unit's
/sys/fs/cgroup/system.slice/NAME.service. IPv4 slices only (IPv4 and v4-mapped flows); --skip
as for exec (default: loopback and link-local, minus ranges holding a slice IP).

attach  loads the program and pins it under $PORTRANGE_BPFFS/portrange (default /sys/fs/bpf,
        mounted if needed), so it stays attached after this command exits
status  what is attached to CGROUP, its slices, and the program's counters; without CGROUP,
        every group portrange attached to (pins under bpffs), found in the cgroup v2 mounts
detach  removes everything attach added

exit status: 0 success; 2 bad arguments or a fault (one line says which: no cgroup v2, no
permission to load BPF, a kernel without a needed helper); nothing is left half-attached.";

pub fn run(args: &[OsString]) -> Result<(), String> {
    let sub = args.first().and_then(|a| a.to_str()).unwrap_or("");
    if matches!(sub, "-h" | "--help" | "help") {
        println!("{HELP}");
        return Ok(());
    }
    if sub == "status" && args.len() == 1 {
        return status_all();
    }
    let path = args.get(1).map(PathBuf::from).ok_or_else(|| format!("no cgroup given\n{HELP}"))?;
    let rest = &args[2.min(args.len())..];
    match sub {
        "attach" => {
            let (slices, skip) = slice_flags(rest)?;
            let cfg = encode(&slices, skip)?;
            attach(&path, &cfg)
        }
        "detach" | "status" if !rest.is_empty() => {
            Err(format!("unexpected argument {:?}\n{HELP}", rest[0].to_string_lossy()))
        }
        "detach" => detach(&path),
        "status" => status(&path),
        _ => Err(format!("unknown cgroup command {sub:?}\n{HELP}")),
    }
}

/// `--slice` and `--skip` flags, checked. No `--skip`: the shim's default list.
pub fn slice_flags(args: &[OsString]) -> Result<(Vec<Slice>, Option<Vec<Prefix>>), String> {
    let mut slices = Vec::new();
    let mut skip: Option<Vec<Prefix>> = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_str().unwrap_or("");
        let v = args.get(i + 1).and_then(|v| v.to_str()).ok_or_else(|| format!("{a} needs a value"));
        match a {
            "--slice" => {
                let v = v?;
                slices.extend(config::parse_slices(v).map_err(|e| format!("--slice {v}: {e}"))?);
            }
            "--skip" => {
                let v = v?;
                skip.get_or_insert_with(Vec::new)
                    .extend(config::parse_skip(v).map_err(|e| format!("--skip {v}: {e}"))?);
            }
            _ => return Err(format!("unexpected argument {a:?}\n{HELP}")),
        }
        i += 2;
    }
    // The joined list is checked as a whole (overlapping slices on one IP).
    let joined: Vec<String> = slices
        .iter()
        .map(|s| match s.ip {
            std::net::IpAddr::V4(ip) => format!("{ip}:{}-{}", s.lo, s.hi),
            std::net::IpAddr::V6(ip) => format!("[{ip}]:{}-{}", s.lo, s.hi),
        })
        .collect();
    if !joined.is_empty() {
        config::parse_slices(&joined.join(",")).map_err(|e| format!("--slice: {e}"))?;
    }
    Ok((slices, skip))
}

/// The program's configuration: the slices, the skip list (default: the shim's), and whether a
/// TIME_WAIT tuple may be taken (net.ipv4.tcp_timestamps of this network namespace), and the
/// kernel's ephemeral range (net.ipv4.ip_local_port_range).
pub fn encode(slices: &[Slice], skip: Option<Vec<Prefix>>) -> Result<BpfConfig, String> {
    let skip = skip.unwrap_or_else(|| config::default_skip_for(slices));
    let timestamps = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_timestamps")
        .map(|s| s.trim() != "0")
        .unwrap_or(false);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|w| w.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    placement::encode(slices, &skip, timestamps, ephemeral, seed ^ u64::from(std::process::id()))
}

fn attach(path: &Path, cfg: &BpfConfig) -> Result<(), String> {
    let cg = bpf::open_cgroup(path)?;
    let root = bpf::pin_root()?;
    let dir = bpf::pin_dir(&root, &cg)?;
    if dir.exists() {
        return Err(format!(
            "{}: the placement is already attached (pinned in {}); detach it first",
            path.display(),
            dir.display()
        ));
    }
    let r = bpf::load(cfg, &root).and_then(|e| bpf::attach(e, &cg)).and_then(|p| p.pin(&dir));
    if let Err(e) = r {
        bpf::tidy_root(&root);
        return Err(e);
    }
    let slices: Vec<String> = placement::slices_from_bytes(&placement::to_bytes(cfg))
        .iter()
        .map(|(ip, lo, hi)| format!("{ip}:{lo}-{hi}"))
        .collect();
    println!("{}: placement attached for {} (pinned in {})", path.display(), slices.join(","), dir.display());
    Ok(())
}

fn detach(path: &Path) -> Result<(), String> {
    let cg = bpf::open_cgroup(path)?;
    let root = bpf::pin_root()?;
    let dir = bpf::pin_dir(&root, &cg)?;
    if !dir.exists() {
        bpf::tidy_root(&root);
        return Err(format!("{}: no placement attached by portrange", path.display()));
    }
    let removed = bpf::remove_pins(&dir)?;
    bpf::tidy_root(&root);
    println!("{}: placement detached (removed {})", path.display(), removed.join(" "));
    Ok(())
}

fn status(path: &Path) -> Result<(), String> {
    let cg = bpf::open_cgroup(path)?;
    let root = bpf::pin_root()?;
    let dir = bpf::pin_dir(&root, &cg)?;
    if !dir.exists() {
        bpf::tidy_root(&root);
        println!("{}: no placement attached", path.display());
        return Ok(());
    }
    show(path, &dir)
}

/// Every pinned attachment, with the group's path (looked up by inode in the cgroup v2 mounts).
fn status_all() -> Result<(), String> {
    let root = bpf::pin_root()?;
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| format!("{}: {e}", root.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("cgroup-")))
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        println!("no placement attached by portrange (pins: {})", root.display());
        bpf::tidy_root(&root);
        return Ok(());
    }
    let mounts = cgroup2_mounts();
    for dir in dirs {
        let ino: u64 =
            dir.file_name().unwrap().to_string_lossy().trim_start_matches("cgroup-").parse().unwrap_or(0);
        let path = mounts
            .iter()
            .find_map(|m| find_ino(m, ino, 32))
            .unwrap_or_else(|| PathBuf::from(format!("(cgroup id {ino}, not under a cgroup v2 mount here)")));
        show(&path, &dir)?;
    }
    Ok(())
}

fn cgroup2_mounts() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .collect()
}

/// The directory under `dir` whose inode is `ino` (depth-limited walk).
fn find_ino(dir: &Path, ino: u64, depth: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(dir).ok()?.ino() == ino {
        return Some(dir.to_path_buf());
    }
    if depth == 0 {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| find_ino(&e.path(), ino, depth - 1))
}

fn show(path: &Path, dir: &Path) -> Result<(), String> {
    let p = bpf::read_pinned(dir)?;
    let slices: Vec<String> = p.slices.iter().map(|(ip, lo, hi)| format!("{ip}:{lo}-{hi}")).collect();
    println!("{}: placement attached (pinned in {})", path.display(), dir.display());
    println!("  programs: {}", p.programs.join(" "));
    println!("  slices: {}", slices.join(","));
    for (name, v) in p.counters {
        println!("  {name} {v}");
    }
    Ok(())
}
