//! What an executable's ELF headers (and its file mode) say about whether an LD_PRELOAD shim can
//! reach it: statically linked (no dynamic loader at all), Go (raw syscalls, no libc `connect`),
//! musl (a loader other than glibc's; a glibc-built shim does not load), setuid/setgid/file
//! capabilities (the loader runs in secure mode and ignores LD_PRELOAD with a path).
//!
//! Used by `portrange exec` to warn before running such a program, and to decide when the cgroup
//! placement is needed instead. Reads only the headers it needs (a Go binary is tens of MB).

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What the headers of one ELF file say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfInfo {
    /// ELFCLASS64.
    pub is_64: bool,
    /// e_machine (62 = x86-64, 183 = aarch64, ...).
    pub machine: u16,
    /// ET_DYN (a PIE or a shared object) rather than ET_EXEC.
    pub is_pie_or_dyn: bool,
    /// The PT_INTERP path (the dynamic loader), if any.
    pub interp: Option<String>,
    /// A PT_DYNAMIC segment exists.
    pub has_dynamic: bool,
    /// A Go build ID note or a `.go.buildinfo` section.
    pub go: bool,
}

impl ElfInfo {
    /// No dynamic loader runs for this program: LD_PRELOAD is never read.
    pub fn is_static(&self) -> bool {
        self.interp.is_none()
    }
    /// Loaded by musl's loader.
    pub fn is_musl(&self) -> bool {
        self.interp.as_deref().is_some_and(|i| i.contains("ld-musl"))
    }
}

/// Why the LD_PRELOAD shim cannot (or may not) reach a program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Obstacle {
    /// No PT_INTERP: statically linked (or static-pie).
    Static,
    /// A Go program: its net package makes raw syscalls.
    Go,
    /// Its loader is musl's (`interp`).
    Musl(String),
    /// Set-user-ID to an owner other than the caller: secure mode.
    Setuid,
    /// Set-group-ID to a group other than the caller's: secure mode.
    Setgid,
    /// File capabilities (security.capability) for a caller that is not root: secure mode.
    FileCaps,
}

impl Obstacle {
    /// A short name for machine-readable output.
    pub fn name(&self) -> &'static str {
        match self {
            Obstacle::Static => "static",
            Obstacle::Go => "go",
            Obstacle::Musl(_) => "musl",
            Obstacle::Setuid => "setuid",
            Obstacle::Setgid => "setgid",
            Obstacle::FileCaps => "setcap",
        }
    }
}

impl fmt::Display for Obstacle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Obstacle::Static => write!(f, "statically linked (no dynamic loader reads LD_PRELOAD)"),
            Obstacle::Go => {
                write!(f, "a Go program (its network calls are raw syscalls, not libc's connect())")
            }
            Obstacle::Musl(i) => write!(f, "linked against musl ({i}; the glibc-built shim does not load)"),
            Obstacle::Setuid => {
                write!(f, "set-user-ID (the loader runs in secure mode and ignores LD_PRELOAD)")
            }
            Obstacle::Setgid => {
                write!(f, "set-group-ID (the loader runs in secure mode and ignores LD_PRELOAD)")
            }
            Obstacle::FileCaps => {
                write!(f, "given file capabilities with setcap (the loader runs in secure mode and ignores LD_PRELOAD)")
            }
        }
    }
}

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
const ET_DYN: u16 = 3;
/// The Go linker's build ID note: name "Go", type 4.
const NT_GO_BUILDID: u32 = 4;
/// Headers larger than this are not believed (a corrupt or hostile file).
const MAX_TABLE: u64 = 1 << 20;

/// Little or big endian reads of the fields we need.
#[derive(Clone, Copy)]
struct Endian(bool);

impl Endian {
    fn u16(self, b: &[u8], at: usize) -> Option<u16> {
        let a: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
        Some(if self.0 { u16::from_le_bytes(a) } else { u16::from_be_bytes(a) })
    }
    fn u32(self, b: &[u8], at: usize) -> Option<u32> {
        let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if self.0 { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) })
    }
    fn u64(self, b: &[u8], at: usize) -> Option<u64> {
        let a: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
        Some(if self.0 { u64::from_le_bytes(a) } else { u64::from_be_bytes(a) })
    }
    /// A 32- or 64-bit "word" (address/offset/size) field.
    fn word(self, is_64: bool, b: &[u8], at: usize) -> Option<u64> {
        if is_64 {
            self.u64(b, at)
        } else {
            self.u32(b, at).map(u64::from)
        }
    }
}

/// Random access to the file's bytes (a file, or a buffer in tests).
pub trait ReadAt {
    fn read_at_exact(&self, off: u64, len: usize) -> io::Result<Vec<u8>>;
}

impl ReadAt for File {
    fn read_at_exact(&self, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read_exact_at(&mut v, off)?;
        Ok(v)
    }
}

impl ReadAt for [u8] {
    fn read_at_exact(&self, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let start = usize::try_from(off).map_err(|_| bad("offset"))?;
        self.get(start..start.checked_add(len).ok_or_else(|| bad("offset"))?)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "truncated ELF file"))
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed ELF header: {what}"))
}

/// Parse the headers. `Ok(None)`: not an ELF file (a script, say).
pub fn parse(r: &(impl ReadAt + ?Sized)) -> io::Result<Option<ElfInfo>> {
    let ident = match r.read_at_exact(0, 64) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if &ident[..4] != b"\x7fELF" {
        return Ok(None);
    }
    let is_64 = match ident[4] {
        1 => false,
        2 => true,
        _ => return Err(bad("EI_CLASS")),
    };
    let e = match ident[5] {
        1 => Endian(true),
        2 => Endian(false),
        _ => return Err(bad("EI_DATA")),
    };
    let h = &ident;
    let field = |o32: usize, o64: usize| if is_64 { o64 } else { o32 };
    let e_type = e.u16(h, 16).ok_or_else(|| bad("e_type"))?;
    let machine = e.u16(h, 18).ok_or_else(|| bad("e_machine"))?;
    let phoff = e.word(is_64, h, field(28, 32)).ok_or_else(|| bad("e_phoff"))?;
    let shoff = e.word(is_64, h, field(32, 40)).ok_or_else(|| bad("e_shoff"))?;
    let phentsize = u64::from(e.u16(h, field(42, 54)).ok_or_else(|| bad("e_phentsize"))?);
    let phnum = u64::from(e.u16(h, field(44, 56)).ok_or_else(|| bad("e_phnum"))?);
    let shentsize = u64::from(e.u16(h, field(46, 58)).ok_or_else(|| bad("e_shentsize"))?);
    let shnum = u64::from(e.u16(h, field(48, 60)).ok_or_else(|| bad("e_shnum"))?);
    let shstrndx = u64::from(e.u16(h, field(50, 62)).ok_or_else(|| bad("e_shstrndx"))?);

    let mut info = ElfInfo { is_64, machine, is_pie_or_dyn: e_type == ET_DYN, ..ElfInfo::default() };

    // Program headers: PT_INTERP, PT_DYNAMIC, PT_NOTE (the Go build ID).
    let min_ph = if is_64 { 56 } else { 32 };
    if phnum > 0 {
        if phentsize < min_ph || phentsize * phnum > MAX_TABLE {
            return Err(bad("program header table"));
        }
        let table = r.read_at_exact(phoff, (phentsize * phnum) as usize)?;
        for i in 0..phnum as usize {
            let p = &table[i * phentsize as usize..(i + 1) * phentsize as usize];
            let p_type = e.u32(p, 0).ok_or_else(|| bad("p_type"))?;
            let (off, filesz) = if is_64 {
                (e.u64(p, 8), e.u64(p, 32))
            } else {
                (e.u32(p, 4).map(u64::from), e.u32(p, 16).map(u64::from))
            };
            let (off, filesz) = (off.ok_or_else(|| bad("p_offset"))?, filesz.ok_or_else(|| bad("p_filesz"))?);
            match p_type {
                PT_INTERP if filesz <= 4096 => {
                    let b = r.read_at_exact(off, filesz as usize)?;
                    let s = b.split(|c| *c == 0).next().unwrap_or_default();
                    info.interp = Some(String::from_utf8_lossy(s).into_owned());
                }
                PT_DYNAMIC => info.has_dynamic = true,
                PT_NOTE if filesz <= MAX_TABLE => {
                    let b = r.read_at_exact(off, filesz as usize)?;
                    if notes(e, &b).any(|(name, ty)| name == b"Go" && ty == NT_GO_BUILDID) {
                        info.go = true;
                    }
                }
                _ => {}
            }
        }
    }

    // Section names: `.go.buildinfo` (Go binaries whose notes were dropped), `.note.go.buildid`.
    let min_sh = if is_64 { 64 } else { 40 };
    if !info.go && shnum > 0 && shstrndx < shnum && shentsize >= min_sh && shentsize * shnum <= MAX_TABLE {
        let table = r.read_at_exact(shoff, (shentsize * shnum) as usize)?;
        let sh = |i: u64| &table[(i * shentsize) as usize..((i + 1) * shentsize) as usize];
        let s = sh(shstrndx);
        let (str_off, str_size) = if is_64 {
            (e.u64(s, 24), e.u64(s, 32))
        } else {
            (e.u32(s, 16).map(u64::from), e.u32(s, 20).map(u64::from))
        };
        if let (Some(o), Some(n)) = (str_off, str_size) {
            if n <= MAX_TABLE {
                let names = r.read_at_exact(o, n as usize)?;
                for i in 0..shnum {
                    let Some(name_off) = e.u32(sh(i), 0) else { continue };
                    let name = names.get(name_off as usize..).unwrap_or_default();
                    let name = name.split(|c| *c == 0).next().unwrap_or_default();
                    if name == b".go.buildinfo" || name == b".note.go.buildid" {
                        info.go = true;
                    }
                }
            }
        }
    }
    Ok(Some(info))
}

/// (name, type) of each note in a PT_NOTE segment.
fn notes(e: Endian, b: &[u8]) -> impl Iterator<Item = (&[u8], u32)> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let namesz = e.u32(b, at)? as usize;
        let descsz = e.u32(b, at + 4)? as usize;
        let ty = e.u32(b, at + 8)?;
        let name_at = at + 12;
        let name = b.get(name_at..name_at.checked_add(namesz)?)?;
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        let desc_at = name_at + namesz.div_ceil(4) * 4;
        at = desc_at.checked_add(descsz.div_ceil(4) * 4)?;
        Some((name, ty))
    })
}

/// Read the headers of the file at `path`. `Ok(None)`: not an ELF file.
pub fn inspect(path: &Path) -> io::Result<Option<ElfInfo>> {
    parse(&File::open(path)?)
}

/// Where `program` is: a path (containing `/`) as given, otherwise the first executable regular
/// file of that name in `PATH` (as execvp searches). `None`: not found.
pub fn resolve(program: &std::ffi::OsStr, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    if program.is_empty() {
        return None;
    }
    let dirs = path_var.map(std::env::split_paths).into_iter().flatten();
    let mut first_existing = None;
    for d in dirs {
        let p = d.join(program);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() && is_executable(&p) => return Some(p),
            Ok(m) if m.is_file() => {
                first_existing.get_or_insert(p);
            }
            _ => {}
        }
    }
    // Like execvp: a file found but not executable is reported as such (EACCES), not as missing.
    first_existing
}

/// access(X_OK) for the caller.
pub fn is_executable(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else { return false };
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

fn has_file_caps(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else { return false };
    // SAFETY: valid NUL-terminated strings; size 0 asks only for the attribute's length.
    let n = unsafe { libc::getxattr(c.as_ptr(), c"security.capability".as_ptr(), std::ptr::null_mut(), 0) };
    n > 0
}

/// The script interpreter named by a `#!` line (with `/usr/bin/env NAME` resolved in `PATH`).
fn shebang(p: &Path, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let f = File::open(p).ok()?;
    let mut head = vec![0u8; 256];
    let n = f.read_at(&mut head, 0).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|c| *c == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let interp = PathBuf::from(words.next()?);
    if interp.file_name().is_some_and(|n| n == "env") {
        let name = words.find(|w| !w.starts_with('-'))?;
        return resolve(std::ffi::OsStr::new(name), path_var);
    }
    Some(interp)
}

/// What stands between the shim and the program at `path` (a resolved path): empty when
/// LD_PRELOAD reaches it. A script is judged by its interpreter (one `#!` level). Unreadable
/// files give no obstacle (the exec itself will say what is wrong).
pub fn obstacles(path: &Path, path_var: Option<&std::ffi::OsStr>) -> Vec<Obstacle> {
    let mut out = Vec::new();
    let Ok(meta) = std::fs::metadata(path) else { return out };
    // SAFETY: getuid/getgid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mode = meta.mode();
    if mode & libc::S_ISUID != 0 && meta.uid() != uid {
        out.push(Obstacle::Setuid);
    }
    if mode & libc::S_ISGID != 0 && meta.gid() != gid && !in_groups(meta.gid()) {
        out.push(Obstacle::Setgid);
    }
    if uid != 0 && has_file_caps(path) {
        out.push(Obstacle::FileCaps);
    }
    match inspect(path) {
        Ok(Some(info)) => {
            if info.go {
                out.push(Obstacle::Go);
            }
            if info.is_static() {
                out.push(Obstacle::Static);
            } else if info.is_musl() {
                out.push(Obstacle::Musl(info.interp.clone().unwrap_or_default()));
            }
        }
        Ok(None) => {
            if let Some(interp) = shebang(path, path_var).filter(|i| i != path) {
                // The interpreter's own set-id bits do not apply to a script (Linux ignores them
                // on `#!`), only what its binary is.
                if let Ok(Some(info)) = inspect(&interp) {
                    if info.go {
                        out.push(Obstacle::Go);
                    }
                    if info.is_static() {
                        out.push(Obstacle::Static);
                    } else if info.is_musl() {
                        out.push(Obstacle::Musl(info.interp.clone().unwrap_or_default()));
                    }
                }
            }
        }
        Err(_) => {}
    }
    out
}

fn in_groups(gid: libc::gid_t) -> bool {
    // SAFETY: getegid cannot fail; getgroups with a buffer of the size it reports.
    unsafe {
        if libc::getegid() == gid {
            return true;
        }
        let n = libc::getgroups(0, std::ptr::null_mut());
        if n <= 0 {
            return false;
        }
        let mut v = vec![0 as libc::gid_t; n as usize];
        let n = libc::getgroups(n, v.as_mut_ptr());
        n > 0 && v[..n as usize].contains(&gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 LE image: header, program headers, optional interp and note, optional
    /// section headers with a string table.
    fn image(interp: Option<&str>, go_note: bool, sections: &[&str]) -> Vec<u8> {
        let mut phdrs: Vec<(u32, Vec<u8>)> = Vec::new();
        if let Some(i) = interp {
            let mut b = i.as_bytes().to_vec();
            b.push(0);
            phdrs.push((PT_INTERP, b));
        }
        if go_note {
            let mut n = Vec::new();
            n.extend(3u32.to_le_bytes()); // namesz "Go\0"
            n.extend(4u32.to_le_bytes()); // descsz
            n.extend(NT_GO_BUILDID.to_le_bytes());
            n.extend(b"Go\0\0");
            n.extend(b"abcd");
            phdrs.push((PT_NOTE, n));
        }
        let phoff = 64u64;
        let mut data_off = phoff + 56 * phdrs.len() as u64;
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&ET_DYN.to_le_bytes());
        out[18..20].copy_from_slice(&62u16.to_le_bytes());
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        let mut payload: Vec<u8> = Vec::new();
        for (ty, data) in &phdrs {
            let mut p = vec![0u8; 56];
            p[0..4].copy_from_slice(&ty.to_le_bytes());
            p[8..16].copy_from_slice(&data_off.to_le_bytes());
            p[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
            out.extend(p);
            payload.extend(data);
            data_off += data.len() as u64;
        }
        out.extend(payload);
        if !sections.is_empty() {
            // String table: "\0" + names.
            let mut strtab = vec![0u8];
            let mut offs = Vec::new();
            for s in sections.iter().chain([&".shstrtab"]) {
                offs.push(strtab.len() as u32);
                strtab.extend(s.as_bytes());
                strtab.push(0);
            }
            let str_off = out.len() as u64;
            out.extend(&strtab);
            let shoff = out.len() as u64;
            let n = offs.len() + 1; // + the null section
            out.extend(vec![0u8; 64]);
            for (k, o) in offs.iter().enumerate() {
                let mut s = vec![0u8; 64];
                s[0..4].copy_from_slice(&o.to_le_bytes());
                if k == offs.len() - 1 {
                    s[24..32].copy_from_slice(&str_off.to_le_bytes());
                    s[32..40].copy_from_slice(&(strtab.len() as u64).to_le_bytes());
                }
                out.extend(s);
            }
            out[40..48].copy_from_slice(&shoff.to_le_bytes());
            out[58..60].copy_from_slice(&64u16.to_le_bytes());
            out[60..62].copy_from_slice(&(n as u16).to_le_bytes());
            out[62..64].copy_from_slice(&((n - 1) as u16).to_le_bytes());
        }
        out
    }

    #[test]
    fn reads_interp_go_note_and_sections() {
        let glibc =
            parse(&image(Some("/lib64/ld-linux-x86-64.so.2"), false, &[".text"])[..]).unwrap().unwrap();
        assert_eq!(glibc.interp.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert!(!glibc.is_static() && !glibc.is_musl() && !glibc.go && glibc.is_64 && glibc.machine == 62);

        let musl = parse(&image(Some("/lib/ld-musl-x86_64.so.1"), false, &[])[..]).unwrap().unwrap();
        assert!(musl.is_musl() && !musl.is_static());

        let stat = parse(&image(None, false, &[])[..]).unwrap().unwrap();
        assert!(stat.is_static());

        let go = parse(&image(None, true, &[])[..]).unwrap().unwrap();
        assert!(go.go && go.is_static());
        let go2 = parse(&image(Some("/lib64/ld-linux-x86-64.so.2"), false, &[".text", ".go.buildinfo"])[..])
            .unwrap()
            .unwrap();
        assert!(go2.go && !go2.is_static());
    }

    #[test]
    fn not_elf_and_malformed() {
        assert_eq!(parse(&b"#!/bin/sh\necho hi\n"[..]).unwrap(), None);
        assert_eq!(parse(&b""[..]).unwrap(), None);
        let mut img = image(Some("/x"), false, &[]);
        img[4] = 9;
        assert!(parse(&img[..]).is_err());
        // A program header table that points past the end of the file.
        let mut img = image(Some("/x"), false, &[]);
        img[32..40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(parse(&img[..]).is_err());
        // Truncated in the middle of the interp string.
        let img = image(Some("/lib64/ld-linux-x86-64.so.2"), false, &[]);
        assert!(parse(&img[..img.len() - 5]).is_err());
    }

    #[test]
    fn this_machine_sh_is_reachable_and_resolve_follows_path() {
        let sh =
            resolve(std::ffi::OsStr::new("sh"), std::env::var_os("PATH").as_deref()).expect("sh in PATH");
        let info = inspect(&sh).unwrap().expect("sh is ELF");
        assert!(!info.is_static() && !info.go, "{info:?}");
        assert!(resolve(std::ffi::OsStr::new("no-such-program-xyz"), std::env::var_os("PATH").as_deref())
            .is_none());
        assert_eq!(resolve(std::ffi::OsStr::new("./a/b"), None), Some(PathBuf::from("./a/b")));
    }
}
