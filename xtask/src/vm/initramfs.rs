//! The guests' initramfs: a minimal writer of uncompressed cpio "newc" (the format the kernel
//! unpacks), built in memory, and the two archives vm-test writes with it: one shared by every
//! kernel (/init, binaries, `/vmtest.conf`) and, per kernel, that one plus its modules. No `cpio`
//! tool and no busybox needed: /init is the static vm-guest binary.

use std::{
    collections::HashSet,
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::payloads::GUEST_MODULE_DIR;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    dirs: HashSet<String>,
}

fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

impl Cpio {
    pub fn new() -> Cpio {
        Cpio {
            buf: Vec::new(),
            ino: 1,
            dirs: HashSet::new(),
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let name = name.trim_start_matches('/');
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).expect("initramfs file < 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).expect("short name"),
            0, // check
        ];
        self.ino += 1;
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        pad4(&mut self.buf);
        self.buf.extend_from_slice(data);
        pad4(&mut self.buf);
    }

    /// A directory and its missing parents (each emitted once).
    pub fn dir(&mut self, name: &str) {
        let name = name.trim_matches('/');
        if name.is_empty() || self.dirs.contains(name) {
            return;
        }
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(name.to_string());
        self.entry(name, S_IFDIR | 0o755, (0, 0), &[]);
    }

    fn parent_dirs(&mut self, name: &str) {
        if let Some((parent, _)) = name.trim_matches('/').rsplit_once('/') {
            self.dir(parent);
        }
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.parent_dirs(name);
        self.entry(name, S_IFREG | perm, (0, 0), data);
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.parent_dirs(name);
        self.entry(name, S_IFCHR | perm, (major, minor), &[]);
    }

    /// Adds the file at `src` as `name`, keeping its permission bits.
    pub fn copy(&mut self, name: &str, src: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let data = fs::read(src)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
        let perm = fs::metadata(src)?.permissions().mode() & 0o7777;
        self.file(name, perm, &data);
        Ok(())
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

pub fn write_initramfs(
    path: &Path,
    init: &Path,
    binaries: &[(String, PathBuf)],
    extra: &[(String, PathBuf)],
    config: &str,
) -> anyhow::Result<u64> {
    let mut c = Cpio::new();
    for d in [
        "dev", "proc", "sys", "tmp", "run", "bin", "sbin", "etc", "root",
    ] {
        c.dir(d);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.char_dev("dev/null", 0o666, 1, 3);
    c.copy("init", init)?;
    for (name, host) in binaries {
        c.copy(&format!("bin/{name}"), host)?;
    }
    let mut seen = HashSet::new();
    for (guest, host) in extra {
        if seen.insert(guest.clone()) {
            c.copy(guest, host)?;
        }
    }
    c.file("vmtest.conf", 0o644, config.as_bytes());
    c.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    c.file("etc/group", 0o644, b"root:x:0:\n");
    let bytes = c.finish();
    fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(bytes.len() as u64)
}

/// `base` + a second cpio archive with this kernel's modules (the kernel unpacks concatenated
/// archives in order).
pub fn kernel_initramfs(base: &Path, modules: &[PathBuf], out: &Path) -> anyhow::Result<PathBuf> {
    if modules.is_empty() {
        return Ok(base.to_path_buf());
    }
    let mut c = Cpio::new();
    for m in modules {
        let file = m.file_name().context("module path")?.to_string_lossy();
        c.copy(&format!("{GUEST_MODULE_DIR}/{file}"), m)?;
    }
    let mut bytes = fs::read(base)?;
    bytes.extend(c.finish());
    fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let mut c = Cpio::new();
        c.dir("/dev");
        c.char_dev("dev/console", 0o600, 5, 1);
        c.file("init", 0o755, b"hello");
        c.dir("dev");
        let out = c.finish();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        // First header: ino 1, mode 040755, name "dev" (4 bytes with NUL).
        let h = std::str::from_utf8(&out[..110]).unwrap();
        assert_eq!(&h[6..14], "00000001");
        assert_eq!(&h[14..22], "000041ed");
        assert_eq!(&h[94..102], "00000004");
        assert_eq!(&out[110..113], b"dev");
        // Header (110) + "dev\0" = 114 -> padded to 116.
        let second = std::str::from_utf8(&out[116..226]).unwrap();
        assert_eq!(&second[14..22], "00002180", "char device, 0600");
        assert_eq!(&second[78..86], "00000005", "rdevmajor");
        assert_eq!(&second[86..94], "00000001", "rdevminor");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("init\0"));
        assert_eq!(text.matches("dev\0").count(), 1, "dev emitted once");
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!\0"));
    }

    #[test]
    fn parents_first() {
        let mut c = Cpio::new();
        c.file("lib/x86_64-linux-gnu/libc.so.6", 0o755, b"x");
        let text = String::from_utf8_lossy(&c.finish()).into_owned();
        let lib = text.find("lib\0").unwrap();
        let multi = text.find("lib/x86_64-linux-gnu\0").unwrap();
        let file = text.find("lib/x86_64-linux-gnu/libc.so.6\0").unwrap();
        assert!(lib < multi && multi < file);
    }
}
