//! Static lqtrace binaries for x86-64 and arm64 hosts, built on this x86-64 machine:
//! `cargo xtask build --target x86_64|aarch64` (also what the VM matrix boots, and what the
//! multi-architecture image in deploy/ copies).
//!
//! - x86-64: `x86_64-unknown-linux-musl`, static by default (its rust-std comes from rustup).
//! - arm64: `aarch64-unknown-linux-gnu` with `-Z build-std=std,panic_abort` (nightly toolchain
//!   and rust-src, which the BPF build needs anyway): the aarch64 standard library is not
//!   installed and rustup cannot fetch it here. Linked by `aarch64-linux-gnu-gcc` against
//!   Debian's static glibc (`libc6-dev-arm64-cross`) with `+crt-static`. Not musl: the aarch64
//!   musl target takes its C library and start files from its rust-std component only. A static
//!   glibc resolves host *names* through NSS modules it would load at run time, so give lqtrace
//!   numeric addresses (`--metrics 0.0.0.0:9464`): the linker's warning about `getaddrinfo` is
//!   silenced (`-A linker_messages`) and documented in README instead.
//!
//! The kernel programs: lqtrace/build.rs (aya-build) compiles lqtrace-ebpf for `bpfel` with
//! `--cfg bpf_target_arch="$CARGO_CFG_TARGET_ARCH"`, i.e. the architecture lqtrace is built for,
//! not the build machine's; aya-ebpf's kprobe `ProbeContext::arg` reads that architecture's
//! `struct pt_regs`. [`check_bpf_object`] proves it on every build: it decodes the context reads
//! of each kprobe program and compares their offsets with the target's `pt_regs`.

use std::{fmt, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{
    commands, elf, toolchain,
    util::{self, render},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Arch {
    /// `x86_64`/`x86-64`/`amd64`, `aarch64`/`arm64`, or one of the target triples.
    pub fn parse(s: &str) -> anyhow::Result<Arch> {
        match s {
            "x86_64" | "x86-64" | "amd64" | "x86_64-unknown-linux-musl" => Ok(Arch::X86_64),
            "aarch64" | "arm64" | "aarch64-unknown-linux-gnu" => Ok(Arch::Aarch64),
            _ => bail!("unknown target {s:?}: use x86_64 (amd64) or aarch64 (arm64)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's name (packages, `.deb` file names) and Docker's `TARGETARCH`.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    pub fn triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
        }
    }

    fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => elf::EM_X86_64,
            Arch::Aarch64 => elf::EM_AARCH64,
        }
    }

    /// Byte offset in the kernel's `struct pt_regs` of each register-passed function argument:
    /// x86-64 di, si, dx, cx, r8, r9 (arch/x86/include/asm/ptrace.h); arm64 `regs[0..8]`
    /// (arch/arm64/include/asm/ptrace.h, the `user_pt_regs` at the start).
    pub fn pt_regs_args(self) -> &'static [i16] {
        match self {
            Arch::X86_64 => &[112, 104, 96, 88, 72, 64],
            Arch::Aarch64 => &[0, 8, 16, 24, 32, 40, 48, 56],
        }
    }
}

/// `target/<triple>/<profile>/lqtrace`.
pub fn binary(arch: Arch, release: bool) -> PathBuf {
    util::target_dir()
        .join(arch.triple())
        .join(util::profile_dir(release))
        .join("lqtrace")
}

/// aarch64 build flags. Kept identical for every command (build, tests, VM guests): a change of
/// RUSTFLAGS rebuilds the standard library and every dependency (~7 min here).
const AARCH64_RUSTFLAGS: &str = "-C target-feature=+crt-static -A linker_messages";
pub const AARCH64_LINKER: &str = "aarch64-linux-gnu-gcc";

/// `cargo SUBCOMMAND --target <triple>` with what that target needs (see the module comment).
pub fn cargo(arch: Arch, subcommand: &str) -> Command {
    let mut cmd = match arch {
        Arch::X86_64 => util::cargo(),
        Arch::Aarch64 => {
            // rustup's proxy, so that `+nightly` selects the toolchain with rust-src.
            let mut c = util::command("rustup");
            c.args(["run", "nightly", "cargo"]);
            c.env_remove("RUSTC").env_remove("CARGO");
            c
        }
    };
    cmd.current_dir(util::workspace_root())
        .args([subcommand, "--target", arch.triple()]);
    if arch == Arch::Aarch64 {
        cmd.arg("-Zbuild-std=std,panic_abort")
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                AARCH64_LINKER,
            )
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                AARCH64_RUSTFLAGS,
            )
            .env("CC_aarch64_unknown_linux_gnu", AARCH64_LINKER)
            .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar");
    }
    cmd
}

/// `cargo xtask build --target ARCH [--release]`: setup check for that target, build, verify.
pub fn build(arch: Arch, release: bool) -> anyhow::Result<PathBuf> {
    toolchain::ensure_for(false, Some(arch))?;
    let mut cmd = cargo(arch, "build");
    cmd.args(["--package", "lqtrace"]);
    if release {
        cmd.arg("--release");
    }
    eprintln!("running: {}", render(&cmd));
    util::run(&mut cmd)?;
    let bin = binary(arch, release);
    println!("{}", bin.display());
    println!("  {}", check_built(arch, release)?);
    Ok(bin)
}

/// Checks the binary built for `arch` (machine, static) and its embedded BPF object (see
/// [`check_bpf_object`]); returns a one-line description.
pub fn check_built(arch: Arch, release: bool) -> anyhow::Result<String> {
    let bin = binary(arch, release);
    let data = fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    let machine = elf::machine(&data)?;
    if machine != arch.elf_machine() {
        bail!("{}: ELF machine {machine}, not {arch}", bin.display());
    }
    let (needed, interp) = elf::dynamic_deps(&data)?;
    if !needed.is_empty() || interp.is_some() {
        bail!(
            "{} is not static (needs {needed:?}, interpreter {interp:?})",
            bin.display()
        );
    }
    let build_dir = bin.parent().expect("profile dir").join("build");
    let obj = commands::newest_object(&build_dir)?
        .with_context(|| format!("no eBPF object under {}", build_dir.display()))?;
    let obj_data = fs::read(&obj).with_context(|| format!("reading {}", obj.display()))?;
    let probes = check_bpf_object(&obj_data, arch).with_context(|| obj.display().to_string())?;
    Ok(format!(
        "{arch} static executable, {} KiB; BPF object: {probes}",
        data.len() / 1024
    ))
}

/// The offsets at which a BPF program reads its context (`r1` on entry) with 64-bit loads,
/// up to the first instruction that overwrites `r1` (or a call, which clobbers it).
pub fn ctx_reads(insns: &[u8]) -> Vec<i16> {
    const BPF_LDX_MEM_DW: u8 = 0x79;
    const BPF_CALL: u8 = 0x85;
    let mut out = Vec::new();
    for insn in insns.chunks_exact(8) {
        let (op, dst, src) = (insn[0], insn[1] & 0x0f, insn[1] >> 4);
        let off = i16::from_le_bytes([insn[2], insn[3]]);
        if op == BPF_LDX_MEM_DW && src == 1 {
            out.push(off);
        }
        // Classes LD, LDX, ALU, ALU64 write dst.
        if op == BPF_CALL || (matches!(op & 7, 0 | 1 | 4 | 7) && dst == 1) {
            break;
        }
    }
    out
}

/// Every `kprobe/<function>` program of [`lqtrace_common::PROBE_ARGS`] must read its `sk` and
/// `skb` arguments from `arch`'s `pt_regs`, and nothing there but argument registers (the
/// reset probes also read the `reason` argument where the prototype has it): a BPF object
/// built for another architecture reads other registers and reports garbage sockets (or none)
/// at run time.
pub fn check_bpf_object(obj: &[u8], arch: Arch) -> anyhow::Result<String> {
    if elf::machine(obj)? != elf::EM_BPF {
        bail!("not a BPF object");
    }
    let regs = arch.pt_regs_args();
    for (func, sk, skb) in lqtrace_common::PROBE_ARGS {
        let want = [regs[sk as usize], regs[skb as usize]];
        let insns = elf::section(obj, &format!("kprobe/{func}"))?;
        let got = ctx_reads(&insns);
        let args_only = got.iter().all(|o| regs.contains(o));
        if !want.iter().all(|w| got.contains(w)) || !args_only {
            bail!(
                "kprobe/{func} reads pt_regs at offsets {got:?}, {arch} passes (sk, skb) at \
                 {want:?} and its arguments at {regs:?}: the BPF object was built for another architecture \
                 (bpf_target_arch; see lqtrace/build.rs)"
            );
        }
    }
    Ok(format!(
        "kprobe arguments read from {arch} pt_regs ({} programs checked)",
        lqtrace_common::PROBE_ARGS.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() {
        for a in [Arch::X86_64, Arch::Aarch64] {
            assert_eq!(Arch::parse(a.name()).unwrap(), a);
            assert_eq!(Arch::parse(a.debian()).unwrap(), a);
            assert_eq!(Arch::parse(a.triple()).unwrap(), a);
        }
        assert!(Arch::parse("riscv64").is_err());
        assert!(binary(Arch::Aarch64, true).ends_with("aarch64-unknown-linux-gnu/release/lqtrace"));
    }

    fn insn(op: u8, dst: u8, src: u8, off: i16) -> [u8; 8] {
        let o = off.to_le_bytes();
        [op, (src << 4) | dst, o[0], o[1], 0, 0, 0, 0]
    }

    #[test]
    fn decodes_context_reads() {
        // r6 = *(u64 *)(r1 + 16); r7 = *(u64 *)(r1 + 24); r1 = 0 (mov64 imm); r2 = *(r1 + 8)
        let prog: Vec<u8> = [
            insn(0x79, 6, 1, 16),
            insn(0x79, 7, 1, 24),
            insn(0xb7, 1, 0, 0),
            insn(0x79, 2, 1, 8),
        ]
        .concat();
        assert_eq!(ctx_reads(&prog), [16, 24]);
        // A call clobbers r1.
        let prog: Vec<u8> = [insn(0x85, 0, 0, 0), insn(0x79, 6, 1, 112)].concat();
        assert!(ctx_reads(&prog).is_empty());
        // A store through r1 does not overwrite it.
        let prog: Vec<u8> = [insn(0x7b, 1, 2, 0), insn(0x79, 6, 1, 96)].concat();
        assert_eq!(ctx_reads(&prog), [96]);
        // tcp_conn_request's (sk, skb) = args 2, 3.
        assert_eq!(Arch::X86_64.pt_regs_args()[2..4], [96, 88]);
        assert_eq!(Arch::Aarch64.pt_regs_args()[2..4], [16, 24]);
    }
}
