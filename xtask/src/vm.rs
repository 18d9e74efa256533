//! `cargo xtask vm-test`: boot Debian kernels under QEMU and run lqtrace's scenarios in each,
//! on x86-64 and arm64 guests.
//!
//! 1. Host tools: QEMU for each guest architecture (`qemu.rs`; installed from
//!    bookworm-backports together with qemu-utils when missing, so the machine's qemu-utils 10
//!    stays), and what the static builds need (`toolchain/cross.rs`).
//! 2. Per guest architecture, static builds of lqtrace, vm-guest and the integration tests the
//!    guests run (`binaries.rs`, `cross.rs`: x86_64-unknown-linux-musl, or
//!    aarch64-unknown-linux-gnu with a static glibc; build.rs builds the eBPF object for the
//!    BPF target with that architecture's `bpf_target_arch`, checked on the object).
//! 3. Kernels (`kernels.rs`): Debian cloud images via `apt-get download` with a private sources
//!    list per architecture, cached under `target/vm/cache/`.
//! 4. One initramfs per architecture (`initramfs.rs`): /init = vm-guest, /bin/lqtrace, `ip`
//!    with its libraries (`tools.rs`), /vmtest.conf (the payload list generated from
//!    `payloads.rs`), plus one per kernel with its modules.
//! 5. Each kernel boots under QEMU/TCG (`qemu.rs`), `--jobs` at a time whatever the
//!    architecture (arm64 guests first: they take longest); the serial console goes to
//!    `target/vm/<kernel>.log`; the guest prints `VMTEST <payload> PASS|FAIL|SKIP ...` lines
//!    and `VMTEST-EXIT <code>`, and ends the VM (isa-debug-exit on x86-64, power-off on arm64).
//! 6. A table per kernel and README's "Supported kernels" rows (`report.rs`); the default hook
//!    choice must be the kernel's `default_hooks`; non-zero exit if any kernel failed.
//!
//! `--kernel host` runs the same payload list on this machine with `vm-guest run` (root).
//! This file holds the command line and the order of the steps.

mod binaries;
mod initramfs;
mod kernels;
pub mod payloads;
mod qemu;
pub mod report;
mod tools;

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use clap::Args;
use payloads::{GUEST_MODULES, PAYLOADS, Payload};
use report::Outcome;

use crate::{
    cross::Arch,
    toolchain,
    util::{self, command, render},
};

/// Default overall limit per kernel, seconds: above the sum of the payloads' timeouts
/// (`payloads.rs`), so that one hung payload does not hide the others' results.
pub const TIMEOUT_S: u64 = 1020;

#[derive(Debug, Clone, Args)]
pub struct VmTestArgs {
    /// Kernel to test (repeatable): 5.10, 6.1, 6.12, sid (alias 7.x), arm64-6.1, arm64-6.12,
    /// arm64-sid (alias arm64-7.x), all (every one of them), host (no VM: the payloads run on
    /// this machine), or the path of a kernel image (bzImage, or an arm64 Image) [default:
    /// $LQTRACE_VM_KERNELS if set, else 5.10 6.1 6.12 sid arm64-6.1 arm64-6.12]
    #[arg(long = "kernel", value_name = "KERNEL")]
    pub kernels: Vec<String>,
    /// Keep target/vm/work (initramfs, payload lists) and print the QEMU command of each kernel
    #[arg(long)]
    pub keep: bool,
    /// Resolve the kernel packages again (apt-get update on the private lists) instead of
    /// reusing the cached choice
    #[arg(long)]
    pub refresh: bool,
    /// Virtual machines to run at the same time (2 on a 2-CPU machine: the guests wait a lot;
    /// 4 kernels took 93 s with 1, 48 s with 2, 44 s with 4)
    #[arg(short = 'j', long, value_name = "N", default_value_t = 2)]
    pub jobs: usize,
    /// Overall limit per kernel, seconds (boot + every payload)
    #[arg(long, value_name = "SECONDS", default_value_t = TIMEOUT_S)]
    pub timeout: u64,
    /// Virtual CPUs per VM
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub smp: u32,
}

/// What to boot.
enum Target {
    Host,
    Debian(&'static kernels::Spec),
    File(PathBuf),
}

struct Job {
    label: String,
    arch: Arch,
    target: Target,
}

/// The architecture of a kernel image file: arm64 `Image`s carry the magic `ARM\x64` at byte
/// 0x38 (Documentation/arch/arm64/booting.rst); anything else is taken for an x86-64 bzImage.
fn image_arch(path: &Path) -> Arch {
    use std::io::Read as _;
    let mut head = [0u8; 0x40];
    let ok = fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    if ok.is_ok() && &head[0x38..0x3c] == b"ARM\x64" {
        Arch::Aarch64
    } else {
        Arch::X86_64
    }
}

/// `LQTRACE_VM_KERNELS` (kernel names separated by spaces or commas) replaces the default set
/// when no `--kernel` is given: CI can trim or widen the matrix without code changes.
pub const KERNELS_ENV: &str = "LQTRACE_VM_KERNELS";

/// The jobs for `--kernel` `names`, or for `env_default` (the [`KERNELS_ENV`] value) when none.
fn parse_targets(names: &[String], env_default: Option<&str>) -> anyhow::Result<Vec<Job>> {
    let from_env: Vec<String> = env_default
        .unwrap_or_default()
        .split([' ', ','])
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    let names = if names.is_empty() {
        &from_env[..]
    } else {
        names
    };
    let names: Vec<String> = if names.is_empty() {
        kernels::DEFAULT.iter().map(|s| s.to_string()).collect()
    } else if names.iter().any(|n| n == kernels::ALL) {
        let mut v: Vec<String> = kernels::SPECS.iter().map(|s| s.label.to_string()).collect();
        v.extend(names.iter().filter(|n| *n != kernels::ALL).cloned());
        v
    } else {
        names.to_vec()
    };
    let mut jobs: Vec<Job> = Vec::new();
    for n in names {
        let job = if n == "host" {
            Job {
                label: "host".into(),
                arch: Arch::X86_64,
                target: Target::Host,
            }
        } else if let Some(spec) = kernels::spec(&n) {
            Job {
                label: spec.label.into(),
                arch: spec.arch,
                target: Target::Debian(spec),
            }
        } else if Path::new(&n).is_file() {
            let p = fs::canonicalize(&n)?;
            let label = p
                .file_name()
                .map_or("custom".into(), |f| f.to_string_lossy().into_owned());
            Job {
                label,
                arch: image_arch(&p),
                target: Target::File(p),
            }
        } else {
            let known: Vec<String> = kernels::SPECS
                .iter()
                .map(|s| {
                    if s.aliases.is_empty() {
                        s.label.to_string()
                    } else {
                        format!("{} ({})", s.label, s.aliases.join(", "))
                    }
                })
                .collect();
            bail!(
                "unknown kernel {n:?}: use one of {}, all, host, or a kernel image path",
                known.join(", ")
            );
        };
        if !jobs.iter().any(|j| j.label == job.label) {
            jobs.push(job);
        }
    }
    Ok(jobs)
}

/// `qemu::ensure_qemu` for `cargo xtask setup --target ARCH`.
pub fn ensure_qemu(arch: Arch) -> anyhow::Result<PathBuf> {
    let cache = util::target_dir().join("vm").join("cache");
    fs::create_dir_all(&cache)?;
    qemu::ensure_qemu(&cache, arch)
}

/// What one guest architecture boots with.
struct ArchSetup {
    arch: Arch,
    qemu: Option<PathBuf>,
    /// The shared initramfs (modules are appended per kernel).
    initrd: PathBuf,
    /// Shipped binaries, for `--kernel host`'s payload list.
    binaries: Vec<(String, PathBuf)>,
    init: PathBuf,
}

/// Builds the guest binaries for `arch` and writes its initramfs.
fn prepare_arch(
    arch: Arch,
    cache: &Path,
    work: &Path,
    with_vm: bool,
    payloads: &[Payload],
) -> anyhow::Result<ArchSetup> {
    toolchain::ensure_for(false, Some(arch))?;
    let qemu = if with_vm {
        Some(qemu::ensure_qemu(cache, arch)?)
    } else {
        None
    };
    let dir = binaries::build_guest(arch)?;
    // The integration test binaries only where a payload runs one (not for the bench's list).
    let tests = if payloads
        .iter()
        .any(|p| p.argv.first().is_some_and(|a| a.ends_with("-tests")))
    {
        binaries::build_guest_tests(arch)?
    } else {
        Vec::new()
    };
    let binaries = payloads::guest_binaries(&dir, &tests);
    let init = dir.join("vm-guest");
    for (_, p) in binaries
        .iter()
        .chain(std::iter::once(&(String::new(), init.clone())))
    {
        if !p.exists() {
            bail!("{} not found after building", p.display());
        }
    }
    let config = payloads::payload_config(payloads, &binaries, true)?;
    let initrd = work.join(format!("initrd-{}.cpio", arch.debian()));
    let extra = if with_vm {
        tools::guest_tool_files(arch, cache)?
    } else {
        Vec::new()
    };
    let size = initramfs::write_initramfs(&initrd, &init, &binaries, &extra, &config)?;
    fs::write(work.join(format!("vmtest-{}.conf", arch.debian())), &config)?;
    eprintln!(
        "vm: {arch} initramfs {} ({:.1} MiB)",
        initrd.display(),
        size as f64 / 1048576.0
    );
    Ok(ArchSetup {
        arch,
        qemu,
        initrd,
        binaries,
        init,
    })
}

/// One VM to boot.
struct Boot {
    outcome: usize,
    arch: Arch,
    vmlinuz: PathBuf,
    modules: Vec<PathBuf>,
}

pub fn vm_test(args: &VmTestArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let MatrixRun {
        outcomes,
        build_took,
        vm_dir,
    } = run_matrix(args, PAYLOADS)?;
    report::print_table(&outcomes);
    println!("\nREADME rows (\"Supported kernels\"):\n");
    print!("{}", report::readme_rows(&outcomes));
    for o in outcomes.iter().filter(|o| !o.passed()) {
        report::print_failure(o);
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.label.as_str())
        .collect();
    println!(
        "\nvm-test: {} of {} kernel(s) passed; build {}, total {}; logs in {}",
        outcomes.len() - failed.len(),
        outcomes.len(),
        util::secs(build_took),
        util::secs(start.elapsed()),
        vm_dir.display()
    );
    if !failed.is_empty() {
        bail!("vm-test failed on: {}", failed.join(", "));
    }
    Ok(())
}

/// What booting the kernels of `args` with a payload list produced.
pub struct MatrixRun {
    pub outcomes: Vec<Outcome>,
    pub build_took: Duration,
    /// Where the console logs are (`<label>.log`).
    pub vm_dir: PathBuf,
}

/// Builds the guest binaries, fetches the kernels of `args` and boots each with `payloads`
/// (`cargo xtask vm-test`: [`PAYLOADS`]; `cargo xtask bench --kernel`: its rate checks). The
/// work directory (initramfs images, payload lists) is removed afterwards unless `args.keep`.
pub fn run_matrix(args: &VmTestArgs, payloads: &[Payload]) -> anyhow::Result<MatrixRun> {
    let jobs = parse_targets(&args.kernels, std::env::var(KERNELS_ENV).ok().as_deref())?;
    let vm_dir = util::target_dir().join("vm");
    let cache = vm_dir.join("cache");
    let work = vm_dir.join("work");
    fs::create_dir_all(&cache)?;
    fs::create_dir_all(&work)?;
    let any_host = jobs.iter().any(|j| matches!(j.target, Target::Host));
    if any_host && !util::is_root() {
        bail!("--kernel host runs lqtrace on this machine: run as root");
    }

    // Build, per architecture.
    let t = Instant::now();
    toolchain::ensure(false)?;
    let mut arches: Vec<Arch> = jobs.iter().map(|j| j.arch).collect();
    arches.sort_unstable();
    arches.dedup();
    let mut setups = Vec::new();
    for &arch in &arches {
        let with_vm = jobs
            .iter()
            .any(|j| j.arch == arch && !matches!(j.target, Target::Host));
        setups.push(prepare_arch(arch, &cache, &work, with_vm, payloads)?);
    }
    let setup_of = |arch: Arch| setups.iter().find(|s| s.arch == arch).expect("prepared");
    let build_took = t.elapsed();
    eprintln!("vm: build: {}", util::secs(build_took));

    // Kernels.
    let specs: Vec<&'static kernels::Spec> = jobs
        .iter()
        .filter_map(|j| {
            if let Target::Debian(s) = j.target {
                Some(s)
            } else {
                None
            }
        })
        .collect();
    let mut fetched = kernels::fetch_all(&specs, &cache, args.refresh, GUEST_MODULES).into_iter();

    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut boots: Vec<Boot> = Vec::new();
    for j in &jobs {
        let log = vm_dir.join(format!("{}.log", j.label));
        let mut o = Outcome::new(&j.label, j.arch, log);
        let boot = |vmlinuz: PathBuf, modules: Vec<PathBuf>| Boot {
            outcome: outcomes.len(),
            arch: j.arch,
            vmlinuz,
            modules,
        };
        match &j.target {
            Target::Host => o.package = "(no VM)".into(),
            Target::File(p) => {
                o.package = "(file)".into();
                boots.push(boot(p.clone(), Vec::new()));
            }
            Target::Debian(spec) => match fetched.next().expect("one result per spec") {
                Ok(f) => {
                    let k = &f.kernel;
                    eprintln!(
                        "vm: kernel {}: {} {} from {} ({}; {}) {}",
                        j.label,
                        k.package,
                        k.version,
                        k.suite,
                        if f.cached { "cached" } else { "downloaded" },
                        util::secs(f.took),
                        k.config_summary()
                    );
                    o.package = format!("{} {}", k.package, k.version);
                    o.kernel = Some((k.package.clone(), k.version.clone(), k.suite.clone()));
                    o.default_hooks = Some(spec.default_hooks);
                    o.fetch = Some(f.took);
                    boots.push(boot(k.vmlinuz.clone(), k.modules.clone()));
                }
                Err(e) => o.fetch_error = Some(format!("{e:#}")),
            },
        }
        outcomes.push(o);
    }
    // Longest first (arm64 guests are emulated, the x86-64 ones only translated), so that the
    // last VM to start is a short one.
    boots.sort_by_key(|b| b.arch != Arch::Aarch64);

    let timeout = Duration::from_secs(args.timeout);

    // Host first, alone (the VMs would disturb its timing).
    if let Some(i) = outcomes.iter().position(|o| o.label == "host") {
        let s = setup_of(Arch::X86_64);
        let host_conf = work.join("host.conf");
        fs::write(
            &host_conf,
            payloads::payload_config(payloads, &s.binaries, false)?,
        )?;
        let mut cmd = command(&s.init);
        cmd.arg("run").arg(&host_conf);
        eprintln!("vm: [host] {}", render(&cmd));
        outcomes[i].run = Some(qemu::follow("host", cmd, &outcomes[i].log, timeout, false));
    }

    // VMs, `--jobs` at a time.
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, qemu::Run)>> = Mutex::new(Vec::new());
    let workers = args.jobs.max(1).min(boots.len().max(1));
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let Some(b) = boots.get(n) else {
                        break;
                    };
                    let o = &outcomes[b.outcome];
                    let setup = setup_of(b.arch);
                    let run = boot_one(b, o, setup, &work, args, timeout);
                    results.lock().unwrap().push((b.outcome, run));
                }
            });
        }
    });
    if !boots.is_empty() {
        eprintln!(
            "vm: {} VM(s), {} at a time: {}",
            boots.len(),
            workers,
            util::secs(t.elapsed())
        );
    }
    for (i, run) in results.into_inner().unwrap() {
        outcomes[i].run = Some(run);
    }
    if args.keep {
        println!(
            "\nkept {} (initrd-<arch>.cpio, initrd-<kernel>.cpio with the modules, vmtest-<arch>.conf)",
            work.display()
        );
    } else {
        let _ = fs::remove_dir_all(&work);
    }
    Ok(MatrixRun {
        outcomes,
        build_took,
        vm_dir,
    })
}

/// Boots one kernel with its modules appended to its architecture's initramfs.
fn boot_one(
    b: &Boot,
    o: &Outcome,
    setup: &ArchSetup,
    work: &Path,
    args: &VmTestArgs,
    timeout: Duration,
) -> qemu::Run {
    let not_run = |why: String| qemu::Run {
        exit: qemu::Exit::CouldNotStart(why),
        boot: None,
        total: Duration::ZERO,
        report: Default::default(),
    };
    let Some(qemu_bin) = &setup.qemu else {
        return not_run(format!("no QEMU for {}", b.arch));
    };
    let initrd = match initramfs::kernel_initramfs(
        &setup.initrd,
        &b.modules,
        &work.join(format!("initrd-{}.cpio", o.label)),
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vm: [{}] initramfs: {e:#}", o.label);
            return not_run(format!("initramfs: {e:#}"));
        }
    };
    let cmd = qemu::command_for(b.arch, qemu_bin, &b.vmlinuz, &initrd, args.smp, 1024);
    eprintln!("vm: [{}] booting {}", o.label, b.vmlinuz.display());
    if args.keep {
        eprintln!("vm: [{}] {}", o.label, render(&cmd));
    }
    let run = qemu::follow(&o.label, cmd, &o.log, timeout, true);
    eprintln!(
        "vm: [{}] {} after {} (log {})",
        o.label,
        run.exit.describe(),
        util::secs(run.total),
        o.log.display()
    );
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let j = parse_targets(&[], None).unwrap();
        let labels: Vec<&str> = j.iter().map(|j| j.label.as_str()).collect();
        assert_eq!(labels, kernels::DEFAULT);
        let arches: Vec<Arch> = j.iter().map(|j| j.arch).collect();
        assert_eq!(arches[..4], [Arch::X86_64; 4]);
        assert_eq!(arches[4..], [Arch::Aarch64; 2]);
        let j = parse_targets(&[], Some("6.1, arm64-6.1")).unwrap();
        let labels: Vec<&str> = j.iter().map(|j| j.label.as_str()).collect();
        assert_eq!(labels, ["6.1", "arm64-6.1"]);
        let j = parse_targets(&["5.10".into()], Some("6.1")).unwrap();
        assert_eq!(j.len(), 1, "--kernel wins over the environment");
        let j = parse_targets(&["all".into()], None).unwrap();
        assert_eq!(j.len(), kernels::SPECS.len());
        assert!(j.iter().any(|j| j.label == "arm64-sid"));
        let j = parse_targets(&["7.x".into(), "host".into(), "sid".into()], None).unwrap();
        let labels: Vec<&str> = j.iter().map(|j| j.label.as_str()).collect();
        assert_eq!(labels, ["sid", "host"]);
        assert!(parse_targets(&["4.4".into()], None).is_err());
        let j = parse_targets(&["arm64-7.x".into()], None).unwrap();
        assert_eq!(
            (j[0].label.as_str(), j[0].arch),
            ("arm64-sid", Arch::Aarch64)
        );
    }

    #[test]
    fn kernel_image_architecture() {
        let dir = std::env::temp_dir().join(format!("xtask-image-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut arm = vec![0u8; 0x40];
        arm[0x38..0x3c].copy_from_slice(b"ARM\x64");
        fs::write(dir.join("Image"), &arm).unwrap();
        fs::write(dir.join("bzImage"), vec![0u8; 0x40]).unwrap();
        fs::write(dir.join("short"), b"MZ").unwrap();
        assert_eq!(image_arch(&dir.join("Image")), Arch::Aarch64);
        assert_eq!(image_arch(&dir.join("bzImage")), Arch::X86_64);
        assert_eq!(image_arch(&dir.join("short")), Arch::X86_64);
        fs::remove_dir_all(&dir).unwrap();
    }
}
