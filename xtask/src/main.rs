//! `cargo xtask`: the build/test front door of lqtrace.
//!
//! `cargo xtask` / `cargo xtask setup` checks and installs the BPF toolchain; `build`, `ebpf`,
//! `run`, `test` and `clippy` do that check first. See README.md ("Development").

mod bench;
mod commands;
mod cross;
mod elf;
#[cfg(test)]
mod hygiene;
mod image;
mod toolchain;
mod util;
mod vm;

use std::{ffi::OsString, process::ExitCode};

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test lqtrace (with no command: `setup`)",
    after_help = "Quick start (as root, on a fresh machine):\n  \
                  cargo xtask run     # install the BPF toolchain if missing, build, trace (Ctrl-C to end)\n  \
                  cargo xtask test    # install the toolchain if missing, build, run unit + root integration tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Args)]
struct BuildArgs {
    /// Build with the release profile
    #[arg(long)]
    release: bool,
}

#[derive(Args)]
struct TargetArg {
    /// Also check (setup) or build for this architecture: a static binary at
    /// target/<triple>/<profile>/lqtrace (x86_64 = x86_64-unknown-linux-musl, aarch64 =
    /// aarch64-unknown-linux-gnu with a static glibc). Aliases: amd64, arm64
    #[arg(long, value_name = "ARCH", value_parser = cross::Arch::parse)]
    target: Option<cross::Arch>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the toolchain (nightly rust-src and rustfmt, LLVM 22, bpf-linker, iproute2, python3)
    /// and install what is missing (apt needs root); `--target aarch64` adds the cross linker,
    /// the static glibc for arm64 and qemu-system-aarch64
    Setup(TargetArg),
    /// Setup check, then `cargo build -p lqtrace` (build.rs builds and embeds the eBPF object);
    /// `--target ARCH` builds a static binary for that architecture and checks it
    #[command(
        after_help = "Example: cargo xtask build --release --target aarch64   \
                            # -> target/aarch64-unknown-linux-gnu/release/lqtrace"
    )]
    Build {
        #[command(flatten)]
        build: BuildArgs,
        #[command(flatten)]
        target: TargetArg,
    },
    /// Build, then copy the eBPF object to target/bpf/lqtrace.bpf.o for inspection
    Ebpf(BuildArgs),
    /// Build, then run target/<profile>/lqtrace ARGS as root (via `sudo -E` if not root)
    #[command(after_help = "Example: cargo xtask run -- -j -d 30s")]
    Run {
        #[command(flatten)]
        build: BuildArgs,
        /// Arguments for lqtrace (after `--`; see `cargo xtask run -- --help`)
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<OsString>,
    },
    /// Setup check, then what CI runs: format check, clippy, unit tests, xtask tests, root
    /// integration tests, VM kernel matrix
    #[command(
        after_help = "Environment: LQTRACE_TEST_THREADS=N passes --test-threads=N to the \
                            integration test binaries.\n\
                            Example: cargo xtask test -- --nocapture some_test_name"
    )]
    Test {
        /// Run only the steps that need no root (format, clippy, unit and xtask tests); without
        /// it, a non-root run fails
        #[arg(long)]
        unit_only: bool,
        /// Arguments for the integration test binaries (after `--`)
        #[arg(last = true, value_name = "EXTRA")]
        extra: Vec<OsString>,
    },
    /// Build release, then measure lqtrace's overhead (connection rate, per-program ns, drop
    /// throughput, start-up, RSS) on loopback in a private netns; writes BENCHMARKS.md (root)
    Bench(bench::BenchArgs),
    /// Setup check, then `cargo clippy` on lqtrace, lqtrace-common, xtask and vm-guest (all
    /// targets, `-D warnings`), as in `cargo xtask test`
    Clippy {
        /// More arguments for clippy-driver (after `--`), e.g. `-W clippy::pedantic`
        #[arg(last = true, value_name = "EXTRA")]
        extra: Vec<OsString>,
    },
    /// Build the static binaries for linux/amd64 and linux/arm64, then the multi-architecture
    /// image of deploy/Dockerfile.multiarch with `docker buildx` (or print that command where
    /// Docker is missing)
    Image(image::ImageArgs),
    /// Build static lqtrace for x86-64 and arm64, boot Debian kernels of both under QEMU (TCG)
    /// and run lqtrace's scenarios in each; logs in target/vm/<kernel>.log
    #[command(
        after_help = "Examples:\n  cargo xtask vm-test                          # 5.10 6.1 6.12 sid arm64-6.1 arm64-6.12\n  \
                            cargo xtask vm-test --kernel all             # and arm64-sid\n  \
                            cargo xtask vm-test --kernel 6.1 --kernel arm64-6.12\n  \
                            cargo xtask vm-test --kernel host            # same payloads, no VM"
    )]
    VmTest(vm::VmTestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli
        .command
        .unwrap_or(Cmd::Setup(TargetArg { target: None }))
    {
        Cmd::Setup(t) => toolchain::ensure_for(true, t.target).and_then(|()| match t.target {
            Some(arch) if arch != cross::Arch::X86_64 => vm::ensure_qemu(arch).map(drop),
            _ => Ok(()),
        }),
        Cmd::Build { build, target } => match target.target {
            Some(arch) => cross::build(arch, build.release).map(drop),
            None => commands::build(build.release),
        },
        Cmd::Ebpf(b) => commands::ebpf(b.release),
        Cmd::Run { build, args } => commands::run(build.release, &args),
        Cmd::Test { unit_only, extra } => commands::test(unit_only, &extra),
        Cmd::Clippy { extra } => commands::clippy(&extra),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::VmTest(args) => vm::vm_test(&args),
        Cmd::Image(args) => image::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_args_after_dashdash() {
        let cli =
            Cli::try_parse_from(["xtask", "run", "--release", "--", "-j", "-d", "30s"]).unwrap();
        let Some(Cmd::Run { build, args }) = cli.command else {
            panic!("not run")
        };
        assert!(build.release);
        assert_eq!(args, ["-j", "-d", "30s"]);
        assert!(Cli::try_parse_from(["xtask", "run", "-j"]).is_err());
    }

    #[test]
    fn test_flags() {
        let cli =
            Cli::try_parse_from(["xtask", "test", "--unit-only", "--", "--nocapture"]).unwrap();
        let Some(Cmd::Test { unit_only, extra }) = cli.command else {
            panic!("not test")
        };
        assert!(unit_only);
        assert_eq!(extra, ["--nocapture"]);
        assert!(Cli::try_parse_from(["xtask"]).unwrap().command.is_none());
    }

    #[test]
    fn build_target() {
        let cli =
            Cli::try_parse_from(["xtask", "build", "--release", "--target", "arm64"]).unwrap();
        let Some(Cmd::Build { build, target }) = cli.command else {
            panic!("not build")
        };
        assert!(build.release);
        assert_eq!(target.target, Some(cross::Arch::Aarch64));
        assert!(Cli::try_parse_from(["xtask", "build", "--target", "mips"]).is_err());
        let cli = Cli::try_parse_from(["xtask", "setup", "--target", "aarch64"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Cmd::Setup(TargetArg {
                target: Some(cross::Arch::Aarch64)
            }))
        ));
    }
}
