//! The few ELF facts xtask reads, with the `object` crate: the machine of a binary, its
//! `DT_NEEDED` libraries and `PT_INTERP` (to ship an arm64 `ip` with its libraries, where the
//! host's `ldd` cannot run), and the bytes of one section (the BPF object's programs).

use anyhow::{Context as _, bail};
pub use object::elf::{EM_AARCH64, EM_BPF, EM_X86_64};
use object::{
    Endianness, Object as _, ObjectSection as _,
    elf::{DT_NEEDED, FileHeader64, PT_INTERP},
    read::elf::{FileHeader as _, ProgramHeader as _},
};

/// `e_machine` of a 64-bit ELF file.
pub fn machine(data: &[u8]) -> anyhow::Result<u16> {
    let header = FileHeader64::<Endianness>::parse(data).context("not a 64-bit ELF file")?;
    let endian = header.endian().context("ELF endianness")?;
    Ok(header.e_machine(endian))
}

/// What the dynamic loader needs for a 64-bit ELF file: its `DT_NEEDED` sonames in order, and
/// its `PT_INTERP` (None for a shared library or a static binary).
pub fn dynamic_deps(data: &[u8]) -> anyhow::Result<(Vec<String>, Option<String>)> {
    let header = FileHeader64::<Endianness>::parse(data).context("not a 64-bit ELF file")?;
    let endian = header.endian().context("ELF endianness")?;
    let mut interp = None;
    for ph in header.program_headers(endian, data)? {
        if ph.p_type(endian) == PT_INTERP {
            let bytes = ph.data(endian, data).ok().context("PT_INTERP data")?;
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            interp = Some(String::from_utf8_lossy(&bytes[..end]).into_owned());
        }
    }
    let sections = header.sections(endian, data)?;
    let table = sections.dynamic_table(endian, data)?;
    let mut needed = Vec::new();
    for d in table.iter() {
        if d.tag == DT_NEEDED {
            let name = table.string(d).ok().context("DT_NEEDED string")?;
            needed.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok((needed, interp))
}

/// The contents of the section `name`.
pub fn section(data: &[u8], name: &str) -> anyhow::Result<Vec<u8>> {
    let file = object::File::parse(data).context("not an ELF file")?;
    let Some(s) = file.section_by_name(name) else {
        bail!("no section {name}");
    };
    Ok(s.data()?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_test_binary() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let want = if cfg!(target_arch = "x86_64") {
            EM_X86_64
        } else {
            EM_AARCH64
        };
        assert_eq!(machine(&exe).unwrap(), want);
        let (needed, interp) = dynamic_deps(&exe).unwrap();
        // The host build links glibc dynamically.
        assert!(
            needed.iter().any(|n| n.starts_with("libc.so")),
            "{needed:?}"
        );
        assert!(interp.is_some_and(|i| i.starts_with('/')));
        assert!(!section(&exe, ".text").unwrap().is_empty());
        assert!(section(&exe, "no/such/section").is_err());
        assert!(machine(b"not an elf").is_err());
    }
}
