//! Loading the cgroup placement program (bpf/placement.c, built by build.rs) with aya, attaching
//! it to a cgroup v2 group, pinning it under bpffs, and reading it back. Used by
//! `portrange cgroup` (pinned: it outlives the command) and `portrange exec` (held: detached
//! when the program's cgroup is empty).
//!
//! Every failure is one line; an attach that fails half-way drops what it made (links detach
//! when their last reference goes, pins are removed).

use aya::maps::{Array, Map, MapData, PerCpuArray};
use aya::programs::links::{FdLink, Link, LinkError};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};
use portrange::placement::{self, BpfConfig, COUNTERS};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/placement.bpf.o"));

/// The programs, in attach order (the claim releaser first, so no connect is placed before its
/// claim can be released; the bind markers before the hooks that read their marks).
pub const PROGRAMS: [&str; 7] =
    ["release_claim", "bind4", "bind6", "connect4", "connect6", "sendmsg4", "sendmsg6"];

const CONFIG_SIZE: usize = std::mem::size_of::<BpfConfig>();
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The program loaded and attached to one cgroup; dropping it detaches everything.
pub struct Placement {
    ebpf: Ebpf,
    links: Vec<(&'static str, FdLink)>,
}

fn fs_magic(p: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs is plain data; a valid NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
}

/// Opens a cgroup v2 directory, or says why it is not one.
pub fn open_cgroup(path: &Path) -> Result<File, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_dir() || fs_magic(path) != Some(CGROUP2_SUPER_MAGIC) {
        return Err(format!(
            "{}: not a cgroup v2 directory (cgroup v2 is needed: mount -t cgroup2 none DIR)",
            path.display()
        ));
    }
    File::open(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The bpffs directory that holds portrange's pins ($PORTRANGE_BPFFS or /sys/fs/bpf, mounted if
/// nothing is mounted there yet).
pub fn pin_root() -> Result<PathBuf, String> {
    let fs = std::env::var_os("PORTRANGE_BPFFS").map(PathBuf::from).unwrap_or_else(|| "/sys/fs/bpf".into());
    if fs_magic(&fs) != Some(BPF_FS_MAGIC) {
        std::fs::create_dir_all(&fs).map_err(|e| format!("{}: {e}", fs.display()))?;
        let c = std::ffi::CString::new(fs.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: valid NUL-terminated strings; no data argument.
        let r = unsafe { libc::mount(c"bpf".as_ptr(), c.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
        if r != 0 {
            return Err(format!(
                "{} is not a BPF filesystem and mounting one failed: {}",
                fs.display(),
                std::io::Error::last_os_error()
            ));
        }
    }
    let root = fs.join("portrange");
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    Ok(root)
}

/// Where the pins of one cgroup's attachment live: named by the cgroup's inode (its id).
pub fn pin_dir(root: &Path, cgroup: &File) -> Result<PathBuf, String> {
    let ino = cgroup.metadata().map_err(|e| e.to_string())?.ino();
    Ok(root.join(format!("cgroup-{ino}")))
}

/// An error with its sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// One line for a load or attach failure: permission, a missing helper, or the kernel's words.
fn explain(what: &str, e: impl std::error::Error) -> String {
    let msg = chain(&e);
    if msg.contains("unknown func") || msg.contains("invalid func") {
        let helper = msg
            .split("unknown func ")
            .nth(1)
            .or_else(|| msg.split("invalid func ").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("?");
        return format!("{what}: this kernel lacks a BPF helper the placement needs ({helper}); Linux 6.1 or later is needed");
    }
    if msg.contains("Operation not permitted") || msg.contains("EPERM") || msg.contains("os error 1)") {
        return format!(
            "{what}: no permission to load BPF programs (needs root, or CAP_BPF with CAP_NET_ADMIN)"
        );
    }
    if std::env::var_os("PORTRANGE_BPF_DEBUG").is_some() {
        return format!("{what}: {msg}");
    }
    // The verifier's log is long; its last line says what it refused.
    let first = msg.lines().next().unwrap_or("");
    let last =
        msg.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with("verification time")).unwrap_or("");
    if first.contains(last) {
        format!("{what}: {first}")
    } else {
        format!(
            "{what}: {} ... {last} (PORTRANGE_BPF_DEBUG=1 shows the whole log)",
            first.split(". Verifier output").next().unwrap_or(first)
        )
    }
}

/// Loads the program with this configuration. The claims map is shared by every placement on
/// the host (pinned in `root`), so two groups placing on one slice do not race either.
pub fn load(cfg: &BpfConfig, root: &Path) -> Result<Ebpf, String> {
    let mut tries = 0;
    let mut ebpf = loop {
        match EbpfLoader::new().map_pin_path("claims", root.join("claims")).load(OBJECT) {
            Ok(e) => break e,
            // Another portrange pinned the claims map between our look and our pin: use theirs.
            Err(e) if tries < 3 && chain(&e).contains("File exists") => tries += 1,
            Err(e) => return Err(explain("loading the cgroup placement", e)),
        }
    };
    let map = ebpf.map_mut("config").ok_or("the BPF object has no config map")?;
    let mut arr: Array<&mut MapData, [u8; CONFIG_SIZE]> = Array::try_from(map).map_err(|e| e.to_string())?;
    let bytes: [u8; CONFIG_SIZE] = placement::to_bytes(cfg).try_into().map_err(|_| "config size")?;
    arr.set(0, bytes, 0).map_err(|e| explain("writing the placement's configuration", e))?;
    for name in PROGRAMS {
        let prog = ebpf.program_mut(name).ok_or_else(|| format!("the BPF object has no program {name}"))?;
        let r = if name == "release_claim" {
            <&mut SockOps>::try_from(prog).map_err(|e| e.to_string())?.load()
        } else {
            <&mut CgroupSockAddr>::try_from(prog).map_err(|e| e.to_string())?.load()
        };
        r.map_err(|e| explain(&format!("loading the cgroup placement ({name})"), e))?;
    }
    Ok(ebpf)
}

/// Attaches every program to the cgroup (as bpf_links: they always stack with other programs on
/// the group, whatever the mode says; the kernel refuses flags on a link). On failure, what was
/// attached is detached again.
pub fn attach(mut ebpf: Ebpf, cgroup: &File) -> Result<Placement, String> {
    let mut links = Vec::new();
    for name in PROGRAMS {
        let prog = ebpf.program_mut(name).ok_or_else(|| format!("no program {name}"))?;
        let link: FdLink = if name == "release_claim" {
            let p = <&mut SockOps>::try_from(prog).map_err(|e| e.to_string())?;
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(|e| explain("attaching", e))?;
            p.take_link(id).map_err(|e| e.to_string())?.try_into().map_err(|e: LinkError| e.to_string())?
        } else {
            let p = <&mut CgroupSockAddr>::try_from(prog).map_err(|e| e.to_string())?;
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(|e| explain("attaching", e))?;
            p.take_link(id).map_err(|e| e.to_string())?.try_into().map_err(|e: LinkError| e.to_string())?
        };
        links.push((name, link));
    }
    Ok(Placement { ebpf, links })
}

impl Placement {
    /// Pins links and maps in `dir` so they outlive this process. On failure, removes what it
    /// pinned (and the links detach when `self` is dropped).
    pub fn pin(mut self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let r = (|| -> Result<(), String> {
            for name in ["config", "counters"] {
                let map = self.ebpf.map(name).ok_or_else(|| format!("no map {name}"))?;
                map.pin(dir.join(name)).map_err(|e| explain(&format!("pinning {name}"), e))?;
            }
            for (name, link) in std::mem::take(&mut self.links) {
                let pinned = link.pin(dir.join(name)).map_err(|e| explain(&format!("pinning {name}"), e))?;
                // The pin keeps the link; this process's fd may go.
                drop(pinned);
            }
            Ok(())
        })();
        if r.is_err() {
            let _ = remove_pins(dir);
        }
        r
    }

    /// The counters, by name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.ebpf.map("counters").map(read_counters).unwrap_or_default()
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        for (_, link) in self.links.drain(..) {
            let _ = link.detach();
        }
    }
}

/// The counters, summed over CPUs (the program counts per CPU).
fn read_counters(map: &Map) -> Vec<(&'static str, u64)> {
    let Ok(arr) = PerCpuArray::<&MapData, u64>::try_from(map) else { return Vec::new() };
    let sum = |i: usize| arr.get(&(i as u32), 0).map(|v| v.iter().sum()).unwrap_or(0);
    COUNTERS.iter().enumerate().map(|(i, n)| (*n, sum(i))).collect()
}

/// bpf(2) with an attribute of `N` bytes.
fn bpf_cmd<const N: usize>(cmd: libc::c_long, attr: &mut [u8; N]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid, initialised buffer of N bytes the kernel reads (and may write).
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), N) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Detaches a pinned bpf_link now (BPF_LINK_DETACH). Dropping the last reference to a link
/// detaches it too, but from a kernel work item, after `detach` has returned: a connect right
/// after could still be placed.
fn detach_pinned_link(path: &Path) -> std::io::Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u8; 16];
    attr[..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    let fd = bpf_cmd(BPF_OBJ_GET, &mut attr)? as libc::c_int;
    let mut attr = [0u8; 8];
    attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    let r = bpf_cmd(BPF_LINK_DETACH, &mut attr);
    // SAFETY: `fd` was just returned by BPF_OBJ_GET and is owned here.
    unsafe { libc::close(fd) };
    r.map(|_| ())
}

/// Removes a cgroup's pins, detaching its links first, and its directory.
pub fn remove_pins(dir: &Path) -> Result<Vec<String>, String> {
    let mut removed = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        if PROGRAMS.iter().any(|p| e.file_name() == *p) {
            // A link whose cgroup is gone is already detached; removing its pin frees it anyway.
            let _ = detach_pinned_link(&e.path());
        }
        std::fs::remove_file(e.path()).map_err(|err| format!("{}: {err}", e.path().display()))?;
        removed.push(e.file_name().to_string_lossy().into_owned());
    }
    std::fs::remove_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    removed.sort();
    Ok(removed)
}

/// Drops the shared claims map's pin when no attachment is left under `root`.
pub fn tidy_root(root: &Path) {
    let others = std::fs::read_dir(root)
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("cgroup-")))
        .unwrap_or(true);
    if !others {
        let _ = std::fs::remove_file(root.join("claims"));
        let _ = std::fs::remove_dir(root);
    }
}

/// What a pinned attachment holds: the programs pinned, the slices and the counters.
pub struct Pinned {
    pub programs: Vec<String>,
    pub slices: Vec<(std::net::Ipv4Addr, u16, u16)>,
    pub counters: Vec<(&'static str, u64)>,
}

pub fn read_pinned(dir: &Path) -> Result<Pinned, String> {
    let mut programs: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| PROGRAMS.contains(&n.as_str()))
        .collect();
    programs.sort();
    let cfg = MapData::from_pin(dir.join("config")).map_err(|e| explain("reading the configuration", e))?;
    let cfg = Map::Array(cfg);
    let arr = Array::<&MapData, [u8; CONFIG_SIZE]>::try_from(&cfg).map_err(|e| e.to_string())?;
    let bytes = arr.get(&0, 0).map_err(|e| e.to_string())?;
    let counters = MapData::from_pin(dir.join("counters")).map_err(|e| explain("reading the counters", e))?;
    Ok(Pinned {
        programs,
        slices: placement::slices_from_bytes(&bytes),
        counters: read_counters(&Map::PerCpuArray(counters)),
    })
}
