//! Loading the embedded eBPF object and attaching hooks: the listener bookkeeping, then for each
//! stage (SYN, final ACK, accept, reset) the best hook variant the running kernel accepts
//! (`hooks::VARIANTS`). A variant is chosen by *trying* it (load + attach), after cheap
//! pre-checks that give a clear reason; a failed variant is unloaded before the next is tried.
//! Every step's error names the program and attach point, and carries the verifier log on `-v`.
//!
//! The drop stages must be covered (`load(.., require_all)`); the feature stages (accept, reset)
//! need not: an uncovered one is logged as a warning and left out of `Selection::chosen`
//! (`Selection::uncovered_features` lists it), and tracing goes on.
//!
//! `Tracer` also gives userspace the maps it shares with the programs: the connection attempts
//! (`attempts`, `end_attempt`), accept activity (`accept_stats`) and the watched ports of
//! refusals (`watch_port`, `refused_ports`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader, VerifierLogLevel,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, FEntry, FExit, KProbe, Program,
        ProgramError, RawTracePoint, TracePoint,
    },
};
use lqtrace_common::{CGROUP_ACK, CGROUP_SYN, Config, STAT_COUNT};

use crate::bpf::hooks::{
    Attach, Forced, Hook, LISTENER_HOOKS, Stage, Variant, VariantHooks, describe, variants,
};

/// The kernel programs, built by build.rs (aya-build) and embedded in the binary.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lqtrace"));

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub cgroup_root: PathBuf,
    pub btf_path: PathBuf,
    pub verbose: bool,
    pub forced: Forced,
    /// Functions present in /proc/kallsyms (for the kprobe pre-check); None: read
    /// /proc/kallsyms when a kprobe variant is first checked. Reading it takes the kernel ~65 ms
    /// on the 6.18 development host (120k symbols formatted), which has no kprobes at all, so
    /// most start-ups never need it.
    pub kallsyms: Option<HashSet<String>>,
    /// BTF id of a hooked function (`tcp_conn_request`), for the one-off fentry probe
    /// (`fentry_probe`); None: no probe, the fentry variants are tried as they are.
    pub fentry_probe_func: Option<(String, u32)>,
    /// For each hooked function: None if its BTF prototype matches the programs, else why not
    /// (fentry and kprobe pre-check).
    pub probe_funcs: HashMap<String, Option<String>>,
}

/// What was tried for each stage and why.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub chosen: BTreeMap<Stage, Variant>,
    /// (stage, variant, why it was not used).
    pub skipped: Vec<(Stage, Variant, String)>,
}

impl Selection {
    /// Drop stages no variant covers (the tracer would miss drops).
    pub fn uncovered(&self) -> Vec<Stage> {
        Stage::REQUIRED
            .into_iter()
            .filter(|g| !self.chosen.contains_key(g))
            .collect()
    }

    /// Feature stages (accept, reset) no variant covers: their records and keys are missing
    /// from this run (accept: `accepts_per_s`/`last_accept_ns` stay 0, no accept wait; reset: no
    /// `refused` records, no `reset` outcomes from listener RSTs).
    pub fn uncovered_features(&self) -> Vec<Stage> {
        Stage::HOOKED
            .into_iter()
            .filter(|g| !g.is_required() && !self.chosen.contains_key(g))
            .collect()
    }

    /// Why each variant of `stage` was skipped, joined.
    fn reasons(&self, stage: Stage) -> String {
        self.skipped
            .iter()
            .filter(|(g, _, _)| *g == stage)
            .map(|(_, m, why)| format!("{m}: {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

pub struct Tracer {
    pub ebpf: Ebpf,
    pub selection: Selection,
}

/// Load the programs with `config` and attach them. With `require_all`, a stage
/// that no variant covers is an error (the tracer would miss drops); `lqtrace check` passes false
/// to report instead.
pub fn load(config: &Config, opts: &LoadOptions, require_all: bool) -> Result<Tracer> {
    if OBJECT.is_empty() {
        bail!(
            "this lqtrace binary was built without its eBPF object (AYA_BUILD_SKIP): rebuild with `cargo xtask build`"
        );
    }
    let level = if opts.verbose {
        VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS
    } else {
        VerifierLogLevel::DEBUG | VerifierLogLevel::STATS
    };
    // No kernel BTF for aya: it is only used for CO-RE relocations, which Rust eBPF objects do
    // not have (the layout comes from `Config`), and keeping aya's parsed copy of vmlinux BTF
    // (several MiB of heap) through the load would only raise lqtrace's peak memory. aya still
    // parses it in `EbpfLoader::new()`; this drops it before the object is loaded.
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .override_global("CONFIG", config, true)
        .verifier_log_level(level)
        .load(OBJECT)
        .map_err(|e| {
            anyhow!(
                "loading the eBPF object failed: {}",
                first_line(&e.to_string(), opts.verbose)
            )
        })?;
    let mut ctx = AttachCtx {
        opts,
        kallsyms: std::cell::OnceCell::new(),
        fentry_refused: None,
        config,
        aya_btf: None,
        attached: HashSet::new(),
    };
    for hook in LISTENER_HOOKS {
        ctx.attach(&mut ebpf, hook)
            .map_err(|e| anyhow!("{e} [listener bookkeeping]"))?;
    }
    let mut selection = Selection::default();
    for stage in Stage::HOOKED {
        for v in variants(stage) {
            if let Some(m) = opts.forced.get(stage)
                && m != v.variant
            {
                continue;
            }
            if selection.chosen.get(&stage) == Some(&v.variant) {
                continue; // another entry of the chosen variant, for another kernel generation
            }
            if v.needs.check(config).is_some()
                && variants(stage)
                    .any(|o| o.variant == v.variant && o.needs.check(config).is_none())
            {
                continue; // this entry is for another kernel generation; its twin fits
            }
            match ctx.try_variant(&mut ebpf, v) {
                Ok(()) => {
                    selection.chosen.insert(stage, v.variant);
                    log::info!(
                        "{} stage: using {} ({})",
                        stage.as_str(),
                        v.variant,
                        v.relies_on
                    );
                    break;
                }
                Err(why) => {
                    log::info!("{} stage: {} skipped: {why}", stage.as_str(), v.variant);
                    selection.skipped.push((stage, v.variant, why));
                }
            }
        }
    }
    for stage in selection.uncovered_features() {
        log::warn!(
            "{} stage not covered on this kernel, tracing drops without it ({}): {}",
            stage.as_str(),
            match stage {
                Stage::Accept =>
                    "no accept activity: accepts_per_s, last_accept_ms_ago and the accept wait are missing",
                _ => "no refused records, no reset outcomes from listener RSTs",
            },
            selection.reasons(stage)
        );
    }
    let mut stages = 0u32;
    for (g, m) in &selection.chosen {
        if *m == Variant::Cgroup {
            stages |= if *g == Stage::Syn {
                CGROUP_SYN
            } else {
                CGROUP_ACK
            };
        }
    }
    let mut map: Array<_, u32> = Array::try_from(
        ebpf.map_mut("CGROUP_STAGES")
            .context("map CGROUP_STAGES missing")?,
    )?;
    map.set(0, stages, 0).context("setting CGROUP_STAGES")?;
    if require_all {
        let missing = selection.uncovered();
        if !missing.is_empty() {
            let reasons: Vec<String> = missing
                .iter()
                .map(|g| format!("{} {}", g.as_str(), selection.reasons(*g)))
                .collect();
            bail!(
                "no usable hook for {} drops on this kernel ({}); run `lqtrace check` for details",
                missing
                    .iter()
                    .map(|g| g.as_str())
                    .collect::<Vec<_>>()
                    .join(" and "),
                reasons.join("; ")
            );
        }
    }
    Ok(Tracer { ebpf, selection })
}

struct AttachCtx<'a> {
    opts: &'a LoadOptions,
    /// The fentry probe's verdict, once made: Some(why) when the kernel refuses fentry programs.
    fentry_refused: Option<Option<String>>,
    /// /proc/kallsyms, read on first use (see `LoadOptions::kallsyms`).
    kallsyms: std::cell::OnceCell<HashSet<String>>,
    config: &'a Config,
    aya_btf: Option<Btf>,
    /// Programs already attached (the cgroup variant serves both stages).
    attached: HashSet<&'static str>,
}

impl AttachCtx<'_> {
    fn try_variant(&mut self, ebpf: &mut Ebpf, v: &VariantHooks) -> Result<(), String> {
        self.precheck(v)?;
        let mut done: Vec<&'static str> = Vec::new();
        for hook in v.hooks {
            if self.attached.contains(hook.program) {
                continue;
            }
            if let Err(e) = self.attach(ebpf, hook) {
                // Undo this variant's attachments before the next variant is tried.
                for p in &done {
                    if let Some(prog) = ebpf.program_mut(p) {
                        let _ = unload(prog);
                    }
                    self.attached.remove(p);
                }
                return Err(e.to_string());
            }
            done.push(hook.program);
        }
        Ok(())
    }

    /// Cheap checks that explain a skip better than a failed load would.
    fn precheck(&self, v: &VariantHooks) -> Result<(), String> {
        if let Some(why) = v.needs.check(self.config) {
            return Err(why);
        }
        if matches!(v.variant, Variant::Fentry | Variant::Kprobe) {
            for f in v.functions {
                match self.opts.probe_funcs.get(*f) {
                    Some(None) => {}
                    Some(Some(why)) => return Err(why.clone()),
                    None => return Err(format!("{f}(): prototype not checked")),
                }
            }
        }
        match v.variant {
            Variant::Fentry => {}
            Variant::Kprobe => {
                if !Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
                    return Err("no kprobe PMU (/sys/bus/event_source/devices/kprobe missing: CONFIG_KPROBES off?)".into());
                }
                for f in v.functions {
                    let kallsyms = match &self.opts.kallsyms {
                        Some(k) => k,
                        None => self.kallsyms.get_or_init(read_kallsyms),
                    };
                    if !kallsyms.contains(*f) {
                        return Err(format!(
                            "{f}() is not in /proc/kallsyms (inlined or absent)"
                        ));
                    }
                }
            }
            Variant::Cgroup | Variant::Tracepoint | Variant::Syscalls => {}
        }
        Ok(())
    }

    fn attach(&mut self, ebpf: &mut Ebpf, hook: &Hook) -> Result<()> {
        let where_ = describe(hook.attach);
        let ctx = || format!("program {} ({where_})", hook.program);
        let verbose = self.opts.verbose;
        let explain = |e: ProgramError, step: &str| {
            anyhow!("{}: {step} failed: {}", ctx(), program_error(&e, verbose))
        };
        if skipped_by_env(hook.program) {
            log::warn!("{}: not attached ({SKIP_ENV})", ctx());
            self.attached.insert(hook.program);
            return Ok(());
        }
        if matches!(hook.attach, Attach::Fentry(_) | Attach::Fexit(_)) && self.aya_btf.is_none() {
            // Before parsing the kernel BTF for aya (~50 ms, megabytes of heap): does this kernel
            // load fentry programs at all?
            let refused = match &self.fentry_refused {
                Some(r) => r.clone(),
                None => {
                    let r = self
                        .opts
                        .fentry_probe_func
                        .as_ref()
                        .and_then(|(f, id)| fentry_probe(f, *id).err());
                    self.fentry_refused = Some(r.clone());
                    r
                }
            };
            if let Some(why) = refused {
                bail!("{}: load failed: {why}", ctx());
            }
            let btf = Btf::parse_file(&self.opts.btf_path, aya::Endianness::default())
                .map_err(|e| anyhow!("{}: reading BTF for fentry: {e}", ctx()))?;
            self.aya_btf = Some(btf);
        }
        let program = ebpf
            .program_mut(hook.program)
            .ok_or_else(|| anyhow!("{}: not found in the eBPF object", ctx()))?;
        match hook.attach {
            Attach::CgroupIngress => {
                let p: &mut CgroupSkb = program.try_into().with_context(ctx)?;
                p.load().map_err(|e| explain(e, "load"))?;
                let root = &self.opts.cgroup_root;
                let cgroup = File::open(root)
                    .with_context(|| format!("{}: opening cgroup {}", ctx(), root.display()))?;
                // aya uses BPF_LINK_CREATE here (kernel >= 5.7); cgroup links always coexist
                // with other programs and the kernel rejects any flag (cgroup_bpf_link_attach:
                // EINVAL), so the mode must be Single (flags 0) although the effect is "multi".
                p.attach(
                    cgroup,
                    CgroupSkbAttachType::Ingress,
                    CgroupAttachMode::Single,
                )
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
            Attach::Fentry(f) => {
                let btf = self.aya_btf.as_ref().context("BTF")?;
                let p: &mut FEntry = program.try_into().with_context(ctx)?;
                p.load(f, btf).map_err(|e| explain(e, "load"))?;
                p.attach().map_err(|e| explain(e, "attach"))?;
            }
            Attach::Fexit(f) => {
                let btf = self.aya_btf.as_ref().context("BTF")?;
                let p: &mut FExit = program.try_into().with_context(ctx)?;
                p.load(f, btf).map_err(|e| explain(e, "load"))?;
                p.attach().map_err(|e| explain(e, "attach"))?;
            }
            Attach::Kprobe(f) | Attach::Kretprobe(f) => {
                let p: &mut KProbe = program.try_into().with_context(ctx)?;
                p.load().map_err(|e| explain(e, "load"))?;
                p.attach(f, 0).map_err(|e| explain(e, "attach"))?;
            }
        }
        self.attached.insert(hook.program);
        log::info!("attached {:<18} {where_}", hook.program);
        Ok(())
    }
}

/// `LQTRACE_SKIP_PROGRAMS=a,b`: programs left unattached (a measuring aid for the bench's
/// overhead A/B runs: what one program costs the traced workload; drops can be missed).
const SKIP_ENV: &str = "LQTRACE_SKIP_PROGRAMS";

fn skipped_by_env(program: &str) -> bool {
    std::env::var(SKIP_ENV).is_ok_and(|v| v.split(',').any(|p| p.trim() == program))
}

/// Load (and close) a minimal fentry program (`r0 = 0; exit`) on `func` (BTF id `btf_id` in
/// vmlinux) with the raw `bpf(BPF_PROG_LOAD)` call: where the kernel refuses fentry programs
/// altogether (the development host: EPERM for any of them), every fentry variant is skipped
/// with this reason without parsing the kernel BTF for aya first.
fn fentry_probe(func: &str, btf_id: u32) -> Result<(), String> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_TRACING: u32 = 26;
    const BPF_TRACE_FENTRY: u32 = 24;
    // mov64 r0, 0; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    // union bpf_attr, BPF_PROG_LOAD part (include/uapi/linux/bpf.h): prog_type @0, insn_cnt
    // @4, insns @8, license @16, expected_attach_type @68, attach_btf_id @108.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_TRACING.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[68..72].copy_from_slice(&BPF_TRACE_FENTRY.to_ne_bytes());
    attr[108..112].copy_from_slice(&btf_id.to_ne_bytes());
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size passed; the pointers in it
    // outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!(
            "BPF_PROG_LOAD of a minimal fentry program on {func}(): {e} (fentry programs are refused on this kernel)"
        ));
    }
    // SAFETY: fd was just returned by the kernel and is ours.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Detach and unload one program of a variant that failed part-way.
fn unload(p: &mut Program) -> Result<(), ProgramError> {
    match p {
        Program::FEntry(x) => x.unload(),
        Program::FExit(x) => x.unload(),
        Program::KProbe(x) => x.unload(),
        Program::CgroupSkb(x) => x.unload(),
        Program::RawTracePoint(x) => x.unload(),
        Program::TracePoint(x) => x.unload(),
        _ => Ok(()),
    }
}

/// The verifier log is long: show it whole with -v, otherwise its last lines say why.
fn program_error(e: &ProgramError, verbose: bool) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            if verbose {
                format!("BPF_PROG_LOAD: {io_error}; verifier log:\n{log}")
            } else {
                let tail: Vec<&str> = log
                    .lines()
                    .rev()
                    .filter(|l| !l.trim().is_empty())
                    .take(2)
                    .collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                if tail.is_empty() {
                    format!("BPF_PROG_LOAD: {io_error}")
                } else {
                    format!(
                        "BPF_PROG_LOAD: {io_error} (verifier: {}; run with -v for the full log)",
                        tail.join(" / ")
                    )
                }
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
    if verbose {
        s.to_string()
    } else {
        s.lines().next().unwrap_or("").to_string()
    }
}

/// The functions of the hook table (`hooks::VARIANTS`) that /proc/kallsyms lists: only those,
/// not the whole symbol table (a distro kernel has ~150k text symbols, megabytes of heap).
pub fn read_kallsyms() -> HashSet<String> {
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let wanted: HashSet<&str> = crate::bpf::hooks::VARIANTS
        .iter()
        .flat_map(|v| v.functions.iter().copied())
        .collect();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (_addr, kind, name) = (it.next()?, it.next()?, it.next()?);
            (matches!(kind, "t" | "T") && wanted.contains(name)).then(|| name.to_string())
        })
        .collect()
}

pub fn parse_kallsyms(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (_addr, kind, name) = (it.next()?, it.next()?, it.next()?);
            matches!(kind, "t" | "T").then(|| name.to_string())
        })
        .collect()
}

impl Tracer {
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .context("map EVENTS missing from the eBPF object")?;
        RingBuf::try_from(map).context("map EVENTS is not a ring buffer")
    }

    /// The programs' own counters (`lqtrace_common::STAT_*`), summed over CPUs.
    pub fn stats(&self) -> Result<[u64; STAT_COUNT as usize]> {
        let map = self.ebpf.map("STATS").context("map STATS missing")?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        let mut out = [0u64; STAT_COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = arr.get(&(i as u32), 0).context("reading STATS")?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_text_symbols_only() {
        let t = "ffffffff81000000 T _stext\nffffffff81aa0000 t tcp_check_req\nffffffff82000000 D init_net\nffffffffc0000000 t foo\t[mod]\n";
        let s = parse_kallsyms(t);
        assert!(s.contains("tcp_check_req") && s.contains("_stext") && s.contains("foo"));
        assert!(!s.contains("init_net"));
    }
}
