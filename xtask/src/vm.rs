//! `cargo xtask vm-test`: boot Debian kernels under QEMU and run lqtrace's scenarios in each.
//!
//! 1. Host tools: `qemu-system-x86_64` (`qemu.rs`; installed from bookworm-backports together
//!    with qemu-utils when missing, so the machine's qemu-utils 10 stays), the musl Rust target.
//! 2. `cargo build --release --target x86_64-unknown-linux-musl -p lqtrace -p vm-guest` and the
//!    integration tests the guests run (`musl.rs`): static binaries (build.rs builds the eBPF
//!    object for the BPF target either way).
//! 3. Kernels (`kernels.rs`): Debian cloud images via `apt-get download` with a private sources
//!    list, cached under `target/vm/cache/`.
//! 4. One initramfs (`initramfs.rs`): /init = vm-guest, /bin/lqtrace, /vmtest.conf (the payload
//!    list generated from `payloads.rs`), plus one per kernel with its modules.
//! 5. Each kernel boots under QEMU/TCG (`qemu.rs`); the serial console goes to
//!    `target/vm/<kernel>.log`; the guest prints `VMTEST <payload> PASS|FAIL|SKIP ...` lines
//!    and ends the VM through isa-debug-exit.
//! 6. A table per kernel (`report.rs`); non-zero exit if any kernel failed.
//!
//! `--kernel host` runs the same payload list on this machine with `vm-guest run` (root).
//! This file holds the command line and the order of the steps.

mod initramfs;
mod kernels;
mod musl;
mod payloads;
mod qemu;
mod report;

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
use payloads::{GUEST_MODULES, HOST_TOOLS, PAYLOADS};
use report::Outcome;

use crate::{
    toolchain,
    util::{self, command, render},
};

#[derive(Debug, Clone, Args)]
pub struct VmTestArgs {
    /// Kernel to test (repeatable): 5.10, 6.1, 6.12, sid (alias 7.x), host (no VM: the payloads
    /// run on this machine), or the path of a bzImage [default: 5.10 6.1 6.12 sid]
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
    #[arg(long, value_name = "SECONDS", default_value_t = 720)]
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
    target: Target,
}

fn parse_targets(names: &[String]) -> anyhow::Result<Vec<Job>> {
    let names: Vec<String> = if names.is_empty() {
        kernels::DEFAULT.iter().map(|s| s.to_string()).collect()
    } else {
        names.to_vec()
    };
    let mut jobs: Vec<Job> = Vec::new();
    for n in names {
        let job = if n == "host" {
            Job {
                label: "host".into(),
                target: Target::Host,
            }
        } else if let Some(spec) = kernels::spec(&n) {
            Job {
                label: spec.label.into(),
                target: Target::Debian(spec),
            }
        } else if Path::new(&n).is_file() {
            let p = fs::canonicalize(&n)?;
            let label = p
                .file_name()
                .map_or("custom".into(), |f| f.to_string_lossy().into_owned());
            Job {
                label,
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
                "unknown kernel {n:?}: use one of {}, host, or a bzImage path",
                known.join(", ")
            );
        };
        if !jobs.iter().any(|j| j.label == job.label) {
            jobs.push(job);
        }
    }
    Ok(jobs)
}

pub fn vm_test(args: &VmTestArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let jobs = parse_targets(&args.kernels)?;
    let vm_dir = util::target_dir().join("vm");
    let cache = vm_dir.join("cache");
    let work = vm_dir.join("work");
    fs::create_dir_all(&cache)?;
    fs::create_dir_all(&work)?;
    let any_vm = jobs.iter().any(|j| !matches!(j.target, Target::Host));
    let any_host = jobs.iter().any(|j| matches!(j.target, Target::Host));
    if any_host && !util::is_root() {
        bail!("--kernel host runs lqtrace on this machine: run as root");
    }

    let qemu_bin = if any_vm {
        Some(qemu::ensure_qemu(&cache)?)
    } else {
        None
    };

    // Build.
    let t = Instant::now();
    toolchain::ensure(false)?;
    let musl_dir = musl::build_guest()?;
    let tests = musl::build_guest_tests()?;
    let build_took = t.elapsed();
    let binaries = payloads::guest_binaries(&musl_dir, &tests);
    let init = musl_dir.join("vm-guest");
    for (_, p) in binaries
        .iter()
        .chain(std::iter::once(&(String::new(), init.clone())))
    {
        if !p.exists() {
            bail!("{} not found after building", p.display());
        }
    }
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
    let mut boots: Vec<(usize, PathBuf, Vec<PathBuf>)> = Vec::new(); // (outcome index, vmlinuz, modules)
    for j in &jobs {
        let log = vm_dir.join(format!("{}.log", j.label));
        let mut o = Outcome {
            label: j.label.clone(),
            package: "-".into(),
            fetch: None,
            fetch_error: None,
            run: None,
            log,
        };
        match &j.target {
            Target::Host => o.package = "(no VM)".into(),
            Target::File(p) => {
                o.package = "(file)".into();
                boots.push((outcomes.len(), p.clone(), Vec::new()));
            }
            Target::Debian(_) => match fetched.next().expect("one result per spec") {
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
                    o.fetch = Some(f.took);
                    boots.push((outcomes.len(), k.vmlinuz.clone(), k.modules.clone()));
                }
                Err(e) => o.fetch_error = Some(format!("{e:#}")),
            },
        }
        outcomes.push(o);
    }

    // Initramfs (one for all kernels).
    let config = payloads::payload_config(PAYLOADS, &binaries, true)?;
    let initrd = work.join("initrd.cpio");
    let mut extra = Vec::new();
    for tool in HOST_TOOLS {
        extra.extend(payloads::host_tool_files(tool)?);
    }
    let size = initramfs::write_initramfs(&initrd, &init, &binaries, &extra, &config)?;
    fs::write(work.join("vmtest.conf"), &config)?;
    eprintln!(
        "vm: initramfs {} ({:.1} MiB)",
        initrd.display(),
        size as f64 / 1048576.0
    );

    let timeout = Duration::from_secs(args.timeout);

    // Host first, alone (the VMs would disturb its timing).
    if let Some(i) = outcomes.iter().position(|o| o.label == "host") {
        let host_conf = work.join("host.conf");
        fs::write(
            &host_conf,
            payloads::payload_config(PAYLOADS, &binaries, false)?,
        )?;
        let mut cmd = command(&init);
        cmd.arg("run").arg(&host_conf);
        eprintln!("vm: [host] {}", render(&cmd));
        outcomes[i].run = Some(qemu::follow("host", cmd, &outcomes[i].log, timeout, false));
    }

    // VMs, `--jobs` at a time.
    if let Some(qemu_bin) = &qemu_bin {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<(usize, qemu::Run)>> = Mutex::new(Vec::new());
        let workers = args.jobs.max(1).min(boots.len().max(1));
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        let Some((i, vmlinuz, modules)) = boots.get(n) else {
                            break;
                        };
                        let o = &outcomes[*i];
                        let initrd = match initramfs::kernel_initramfs(
                            &initrd,
                            modules,
                            &work.join(format!("initrd-{}.cpio", o.label)),
                        ) {
                            Ok(p) => p,
                            Err(e) => {
                                eprintln!("vm: [{}] initramfs: {e:#}", o.label);
                                results.lock().unwrap().push((
                                    *i,
                                    qemu::Run {
                                        exit: qemu::Exit::CouldNotStart(format!(
                                            "initramfs: {e:#}"
                                        )),
                                        boot: None,
                                        total: Duration::ZERO,
                                        report: Default::default(),
                                    },
                                ));
                                continue;
                            }
                        };
                        let cmd = qemu::command_for(qemu_bin, vmlinuz, &initrd, args.smp, 1024);
                        eprintln!("vm: [{}] booting {}", o.label, vmlinuz.display());
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
                        results.lock().unwrap().push((*i, run));
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
    }

    report::print_table(&outcomes);
    for o in outcomes.iter().filter(|o| !o.passed()) {
        report::print_failure(o);
    }
    if args.keep {
        println!(
            "\nkept {} (initrd.cpio, initrd-<kernel>.cpio with the modules, vmtest.conf)",
            work.display()
        );
    } else {
        let _ = fs::remove_dir_all(&work);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let j = parse_targets(&[]).unwrap();
        let labels: Vec<&str> = j.iter().map(|j| j.label.as_str()).collect();
        assert_eq!(labels, ["5.10", "6.1", "6.12", "sid"]);
        let j = parse_targets(&["7.x".into(), "host".into(), "sid".into()]).unwrap();
        let labels: Vec<&str> = j.iter().map(|j| j.label.as_str()).collect();
        assert_eq!(labels, ["sid", "host"]);
        assert!(parse_targets(&["4.4".into()]).is_err());
    }
}
