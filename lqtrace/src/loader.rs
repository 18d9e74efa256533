//! Loading the embedded eBPF object and attaching every hook of `hooks::HOOKS`, each step with
//! context (program, attach point) and, on `-v`, the verifier log.

use std::{fs::File, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    maps::{PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, RawTracePoint, TracePoint,
    },
};
use lqtrace_common::{Config, STAT_COUNT};

use crate::hooks::{Attach, HOOKS, Hook, describe};

/// The kernel programs, built by build.rs (aya-build) and embedded in the binary.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lqtrace"));

pub struct Tracer {
    pub ebpf: Ebpf,
}

/// Load the programs with `config` and attach them all. `cgroup_root`: root of the cgroup v2
/// hierarchy (every socket's cgroup descends from it).
pub fn load(config: &Config, cgroup_root: &Path, verbose: bool) -> Result<Tracer> {
    if OBJECT.is_empty() {
        bail!("this lqtrace binary was built without its eBPF object (AYA_BUILD_SKIP): rebuild with `cargo xtask build`");
    }
    let level = if verbose { VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS } else { VerifierLogLevel::DEBUG | VerifierLogLevel::STATS };
    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", config, true)
        .verifier_log_level(level)
        .load(OBJECT)
        .map_err(|e| anyhow!("loading the eBPF object failed: {}", first_line(&e.to_string(), verbose)))?;
    for hook in HOOKS {
        attach(&mut ebpf, hook, cgroup_root, verbose)?;
    }
    Ok(Tracer { ebpf })
}

fn attach(ebpf: &mut Ebpf, hook: &Hook, cgroup_root: &Path, verbose: bool) -> Result<()> {
    let where_ = describe(hook.attach);
    let ctx = || format!("program {} ({where_})", hook.program);
    let program = ebpf
        .program_mut(hook.program)
        .ok_or_else(|| anyhow!("{}: not found in the eBPF object", ctx()))?;
    let explain = |e: ProgramError, step: &str| {
        anyhow!("{}: {step} failed: {} [needs: {}]", ctx(), program_error(&e, verbose), hook.relies_on)
    };
    match hook.attach {
        Attach::CgroupIngress => {
            let p: &mut CgroupSkb = program.try_into().with_context(ctx)?;
            p.load().map_err(|e| explain(e, "load"))?;
            let cgroup = File::open(cgroup_root)
                .with_context(|| format!("{}: opening cgroup {}", ctx(), cgroup_root.display()))?;
            // aya uses BPF_LINK_CREATE here (kernel >= 5.7); cgroup links always coexist with
            // other programs and the kernel rejects any flag (cgroup_bpf_link_attach: EINVAL),
            // so the mode must be Single (flags 0) even though the effect is "multi".
            p.attach(cgroup, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
                .map_err(|e| explain(e, "attach"))?;
        }
        Attach::RawTracepoint(name) => {
            let p: &mut RawTracePoint = program.try_into().with_context(ctx)?;
            p.load().map_err(|e| explain(e, "load"))?;
            p.attach(name).map_err(|e| explain(e, "attach"))?;
        }
        Attach::Tracepoint(category, name) => {
            let p: &mut TracePoint = program.try_into().with_context(ctx)?;
            p.load().map_err(|e| explain(e, "load"))?;
            p.attach(category, name).map_err(|e| explain(e, "attach"))?;
        }
    }
    if verbose {
        eprintln!("attached {:<14} {where_}", hook.program);
    }
    Ok(())
}

/// The verifier log is long: show it whole with -v, otherwise its last lines say why.
fn program_error(e: &ProgramError, verbose: bool) -> String {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            if verbose {
                format!("BPF_PROG_LOAD: {io_error}; verifier log:\n{log}")
            } else {
                let tail: Vec<&str> = log.lines().rev().filter(|l| !l.trim().is_empty()).take(2).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("BPF_PROG_LOAD: {io_error} (verifier: {}; run with -v for the full log)", tail.join(" / "))
            }
        }
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}

fn first_line(s: &str, verbose: bool) -> String {
    if verbose { s.to_string() } else { s.lines().next().unwrap_or("").to_string() }
}

impl Tracer {
    pub fn take_events(&mut self) -> Result<RingBuf<aya::maps::MapData>> {
        let map = self.ebpf.take_map("EVENTS").context("map EVENTS missing from the eBPF object")?;
        RingBuf::try_from(map).context("map EVENTS is not a ring buffer")
    }

    /// The programs' own counters (`lqtrace_common::STAT_*`), summed over CPUs.
    pub fn stats(&self) -> Result<[u64; STAT_COUNT as usize]> {
        let map = self.ebpf.map("STATS").context("map STATS missing")?;
        let arr: PerCpuArray<&aya::maps::MapData, u64> = PerCpuArray::try_from(map)?;
        let mut out = [0u64; STAT_COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = arr.get(&(i as u32), 0).context("reading STATS")?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}
