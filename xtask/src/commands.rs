//! `build`, `ebpf`, `run`, `test` and `clippy`.

use std::{
    ffi::OsString,
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, bail};

use crate::{
    toolchain,
    util::{self, render},
};

/// Setup check (installing what is missing), then `cargo build -p lqtrace`. lqtrace/build.rs
/// (aya-build) builds lqtrace-ebpf for bpfel-unknown-none with the nightly toolchain and
/// bpf-linker; the object is embedded in the binary.
pub fn build(release: bool) -> anyhow::Result<()> {
    toolchain::ensure(false)?;
    let mut cmd = util::cargo();
    cmd.current_dir(util::workspace_root())
        .args(["build", "--package", "lqtrace"]);
    if release {
        cmd.arg("--release");
    }
    eprintln!("running: {}", render(&cmd));
    util::run(&mut cmd)
}

/// Build, then copy the object aya-build produced to `target/bpf/lqtrace.bpf.o`.
pub fn ebpf(release: bool) -> anyhow::Result<()> {
    build(release)?;
    let target = util::target_dir();
    let build_dir = target.join(util::profile_dir(release)).join("build");
    let src = newest_object(&build_dir)?.with_context(|| {
        format!(
            "no eBPF object found at {}/lqtrace-*/out/lqtrace",
            build_dir.display()
        )
    })?;
    let bytes = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
    if bytes.is_empty() {
        bail!(
            "{} is an empty placeholder (was AYA_BUILD_SKIP set?); unset it and rebuild",
            src.display()
        );
    }
    if !bytes.starts_with(b"\x7fELF") {
        bail!("{} is not an ELF object", src.display());
    }
    let dst_dir = target.join("bpf");
    fs::create_dir_all(&dst_dir).with_context(|| format!("creating {}", dst_dir.display()))?;
    let dst = dst_dir.join("lqtrace.bpf.o");
    fs::write(&dst, &bytes).with_context(|| format!("writing {}", dst.display()))?;
    println!("{}", dst.display());
    println!("  ({} bytes, copied from {})", bytes.len(), src.display());
    println!("inspect it with:");
    println!(
        "  llvm-objdump-22 -d --no-show-raw-insn {}   # disassembly",
        dst.display()
    );
    println!(
        "  llvm-readelf-22 -S {}                      # sections (programs, maps)",
        dst.display()
    );
    println!(
        "  bpftool btf dump file {}                   # BTF types",
        dst.display()
    );
    Ok(())
}

/// Is `name` a build-script output directory of the lqtrace package (`lqtrace-<hash>`), as
/// opposed to `lqtrace-ebpf-<hash>` or `lqtrace-common-<hash>`?
pub fn is_lqtrace_build_dir(name: &str) -> bool {
    name.strip_prefix("lqtrace-")
        .is_some_and(|hash| !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The most recently modified `<build_dir>/lqtrace-<hash>/out/lqtrace` (aya-build copies the
/// eBPF binary named `lqtrace` there), ignoring the empty placeholders lqtrace/build.rs leaves
/// under `AYA_BUILD_SKIP=1`. `Ok(None)` if there is none.
pub fn newest_object(build_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let entries = match fs::read_dir(build_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", build_dir.display())),
    };
    let mut best: Option<(SystemTime, PathBuf)> = None;
    for entry in entries.flatten() {
        if !is_lqtrace_build_dir(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let obj = entry.path().join("out").join("lqtrace");
        let Ok(meta) = obj.metadata() else { continue };
        let Ok(mtime) = meta.modified() else { continue };
        if meta.len() == 0 {
            continue;
        }
        if best.as_ref().is_none_or(|(t, _)| mtime > *t) {
            best = Some((mtime, obj));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Build, then replace this process with `target/<profile>/lqtrace ARGS...` (through `sudo -E`
/// when not root). Since xtask is replaced (exec), Ctrl-C goes to lqtrace alone and the exit
/// status is lqtrace's own.
pub fn run(release: bool, args: &[OsString]) -> anyhow::Result<()> {
    build(release)?;
    let bin = util::target_dir()
        .join(util::profile_dir(release))
        .join("lqtrace");
    if !bin.exists() {
        bail!("{} not found after building", bin.display());
    }
    let mut cmd = if util::is_root() {
        util::command(&bin)
    } else if let Some(sudo) = util::find_program("sudo") {
        eprintln!("lqtrace needs root: running it through sudo -E");
        let mut cmd = util::command(sudo);
        cmd.arg("-E").arg(&bin);
        cmd
    } else {
        let mut shown = Command::new(&bin);
        shown.args(args);
        bail!(
            "lqtrace needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) and sudo is not \
             installed; run as root:\n    {}",
            render(&shown)
        );
    };
    cmd.args(args);
    eprintln!("running: {}", render(&cmd));
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not run {}", bin.display()))
}

/// Arguments after `--` for the integration test binaries.
pub fn integration_test_args(
    threads: Option<&str>,
    extra: &[OsString],
) -> anyhow::Result<Vec<OsString>> {
    let mut args = Vec::new();
    if let Some(threads) = threads {
        match threads.trim().parse::<u32>() {
            Ok(n) if n > 0 => args.push(format!("--test-threads={n}").into()),
            _ => bail!("LQTRACE_TEST_THREADS={threads:?} is not a positive integer"),
        }
    }
    args.extend(extra.iter().cloned());
    Ok(args)
}

struct Step {
    name: &'static str,
    cmd: Command,
    /// Checked just before the step runs; an error fails the step.
    precheck: Option<fn() -> anyhow::Result<()>>,
}

/// The userspace crates (each package lives in the directory of its name): linted with
/// `-D warnings` by step 2 of `cargo xtask test` and by `cargo xtask clippy`, and held to the
/// file-size limit (hygiene.rs). lqtrace-ebpf cannot be clippy'd like them: it builds only for
/// bpfel-unknown-none, by lqtrace/build.rs (aya-build, nightly toolchain, `-Z build-std=core`),
/// and not at all for the host that `cargo clippy` checks (duplicate `panic_impl`).
pub const USERSPACE_CRATES: [&str; 5] = [
    "lqtrace",
    "lqtrace-common",
    "lqtrace-testkit",
    "xtask",
    "vm-guest",
];

/// `cargo clippy --all-targets -p <each of USERSPACE_CRATES> -- -D warnings EXTRA`.
fn clippy_cmd(extra: &[OsString]) -> Command {
    let mut cmd = util::cargo();
    cmd.current_dir(util::workspace_root())
        .args(["clippy", "--all-targets"]);
    for p in USERSPACE_CRATES {
        cmd.args(["-p", p]);
    }
    cmd.args(["--", "-D", "warnings"]).args(extra);
    cmd
}

/// `cargo +nightly fmt --all --check`: rustfmt.toml uses nightly-only options (aya's import
/// grouping). `cargo` from PATH (rustup's proxy), not `$CARGO`: `+nightly` is understood by the
/// proxy only. `cargo xtask setup` installs the nightly rustfmt component.
fn fmt_check_cmd() -> Command {
    let mut cmd = util::command("cargo");
    cmd.current_dir(util::workspace_root())
        .args(["+nightly", "fmt", "--all", "--check"]);
    cmd
}

fn cargo_test(args: &[&str], after_dashdash: &[OsString]) -> Command {
    let mut cmd = util::cargo();
    cmd.current_dir(util::workspace_root())
        .arg("test")
        .args(args);
    if !after_dashdash.is_empty() {
        cmd.arg("--").args(after_dashdash);
    }
    cmd
}

/// The Prometheus rules in deploy/, their promtool unit tests, and the same groups as a
/// PrometheusRule for prometheus-operator (kept identical: see [`prometheus_rule`]).
pub const RULES: &str = "deploy/lqtrace-rules.yaml";
pub const RULE_TESTS: &str = "deploy/lqtrace-rules.test.yaml";
pub const PROMETHEUS_RULE: &str = "deploy/prometheusrule.yaml";

/// `promtool ARGS...` in the workspace root (Debian's `prometheus` package ships it).
fn promtool(args: &[&str]) -> Command {
    let mut cmd = util::command("promtool");
    cmd.current_dir(util::workspace_root()).args(args);
    cmd
}

/// The header of deploy/prometheusrule.yaml; its `spec` is the rules file from `groups:` on,
/// indented by two spaces.
const PROMETHEUS_RULE_HEADER: &str = "\
# PrometheusRule for prometheus-operator: the groups of deploy/lqtrace-rules.yaml (this file is
# that one under `spec:`, indented; `cargo xtask test` fails when they differ). Its labels must
# match your Prometheus resource's ruleSelector.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: lqtrace
  namespace: lqtrace
  labels:
    app.kubernetes.io/name: lqtrace
spec:
";

/// deploy/prometheusrule.yaml as it must be for the rules file `rules`.
pub fn prometheus_rule(rules: &str) -> String {
    let groups = rules.find("\ngroups:").map_or(rules, |i| &rules[i + 1..]);
    let mut out = PROMETHEUS_RULE_HEADER.to_string();
    for line in groups.lines() {
        if !line.is_empty() {
            out.push_str("  ");
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Before the promtool steps: the rule files are there, and the PrometheusRule has the rules
/// file's groups.
fn rules_in_sync() -> anyhow::Result<()> {
    let root = util::workspace_root();
    let read = |f: &str| {
        fs::read_to_string(root.join(f))
            .with_context(|| format!("reading {}", root.join(f).display()))
    };
    let rules = read(RULES)?;
    read(RULE_TESTS)?;
    if read(PROMETHEUS_RULE)? != prometheus_rule(&rules) {
        bail!(
            "{PROMETHEUS_RULE} differs from {RULES}: its `spec:` must be the rules file from `groups:` on, indented by two spaces, under the header in xtask/src/commands.rs"
        );
    }
    Ok(())
}

/// Before the root integration tests: write out what the build left in the page cache (a cold
/// build leaves gigabytes of test binaries to write back) so that it does not compete with
/// their timing-sensitive scenarios: the slow-/proc burst lost records once, in a run straight
/// after a cold build, and in none of the runs on a warm machine here.
fn settle_writes() -> anyhow::Result<()> {
    let t = Instant::now();
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    eprintln!("wrote out the build's pages ({})", util::secs(t.elapsed()));
    Ok(())
}

fn integration_tests_present() -> anyhow::Result<()> {
    let dir = util::workspace_root().join("lqtrace/tests");
    let found = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "rs"));
    if !found {
        bail!("no integration tests found ({}/*.rs)", dir.display());
    }
    Ok(())
}

/// Everything CI runs, in order, stopping at the first failure.
pub fn test(unit_only: bool, extra: &[OsString]) -> anyhow::Result<()> {
    let start = Instant::now();
    toolchain::ensure(false)?;

    // The fast checks first, so that a formatting slip or a lint fails in seconds, not after
    // the tests.
    let mut steps = vec![
        Step {
            name: "format (nightly rustfmt)",
            cmd: fmt_check_cmd(),
            precheck: None,
        },
        Step {
            name: "clippy (-D warnings)",
            cmd: clippy_cmd(&[]),
            precheck: None,
        },
        Step {
            name: "unit tests (lqtrace-common, lqtrace-testkit, vm-guest)",
            cmd: cargo_test(
                &[
                    "-p",
                    "lqtrace-common",
                    "-p",
                    "lqtrace-testkit",
                    "-p",
                    "vm-guest",
                ],
                &[],
            ),
            precheck: None,
        },
        // Same package and feature set as the integration-test step below, so the eBPF object
        // (built by lqtrace's build script) is built once, not twice.
        Step {
            name: "unit tests (lqtrace lib)",
            cmd: cargo_test(&["-p", "lqtrace", "--lib"], &[]),
            precheck: None,
        },
        Step {
            name: "xtask tests",
            cmd: cargo_test(&["-p", "xtask"], &[]),
            precheck: None,
        },
        Step {
            name: "alert and recording rules (promtool check rules)",
            cmd: promtool(&["check", "rules", RULES]),
            precheck: Some(rules_in_sync),
        },
        Step {
            name: "rule unit tests (promtool test rules)",
            cmd: promtool(&["test", "rules", RULE_TESTS]),
            precheck: None,
        },
    ];
    let skip_root = if unit_only {
        Some("skipping root integration tests (--unit-only)")
    } else if !util::is_root() {
        Some("skipping root integration tests: run as root")
    } else {
        let threads = std::env::var("LQTRACE_TEST_THREADS").ok();
        let args = integration_test_args(threads.as_deref().filter(|t| !t.is_empty()), extra)?;
        steps.push(Step {
            name: "build the root integration tests",
            cmd: cargo_test(&["-p", "lqtrace", "--test", "*", "--no-run"], &[]),
            precheck: Some(integration_tests_present),
        });
        steps.push(Step {
            name: "root integration tests (lqtrace/tests)",
            // --no-fail-fast: one failing test binary must not hide the others' results.
            cmd: cargo_test(&["-p", "lqtrace", "--test", "*", "--no-fail-fast"], &args),
            precheck: Some(settle_writes),
        });
        // The kernels people run (5.10 ... 7.x) in VMs: the same scenarios, each hook variant.
        if std::env::var_os("LQTRACE_SKIP_VM").is_none() {
            let mut cmd = Command::new(std::env::current_exe().context("locating xtask")?);
            cmd.arg("vm-test");
            steps.push(Step {
                name: "VM kernel matrix (cargo xtask vm-test)",
                cmd,
                precheck: None,
            });
        }
        None
    };

    let total = steps.len();
    for (i, mut step) in steps.into_iter().enumerate() {
        let n = i + 1;
        let shown = render(&step.cmd);
        eprintln!("==> step {n}/{total}: {}: {shown}", step.name);
        let t = Instant::now();
        if let Some(precheck) = step.precheck {
            precheck().with_context(|| format!("FAILED at step {n}/{total} ({})", step.name))?;
        }
        let status = step.cmd.status().with_context(|| {
            format!(
                "step {n}/{total} ({}): could not start `{shown}`",
                step.name
            )
        })?;
        let took = util::secs(t.elapsed());
        if !status.success() {
            bail!(
                "FAILED at step {n}/{total} ({}): `{shown}` ended with {} after {took}",
                step.name,
                util::describe(status)
            );
        }
        eprintln!("==> step {n}/{total} ok: {} ({took})", step.name);
    }
    if let Some(msg) = skip_root {
        eprintln!("{msg}");
        if !unit_only {
            bail!("root integration tests not run (use --unit-only to run only the unit tests)");
        }
    }
    eprintln!(
        "all {total} test steps passed ({})",
        util::secs(start.elapsed())
    );
    Ok(())
}

/// Setup check, then the clippy command of `cargo xtask test` with EXTRA added.
pub fn clippy(extra: &[OsString]) -> anyhow::Result<()> {
    toolchain::ensure(false)?;
    let mut cmd = clippy_cmd(extra);
    eprintln!("running: {}", render(&cmd));
    util::run(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_dir_names() {
        assert!(is_lqtrace_build_dir("lqtrace-631933c1e992b400"));
        assert!(!is_lqtrace_build_dir("lqtrace-ebpf-38d6f829cfbda7f3"));
        assert!(!is_lqtrace_build_dir("lqtrace-common-38d6f829cfbda7f3"));
        assert!(!is_lqtrace_build_dir("lqtrace-"));
        assert!(!is_lqtrace_build_dir("lqtrace"));
        assert!(!is_lqtrace_build_dir("xlqtrace-631933c1e992b400"));
    }

    #[test]
    fn newest_object_by_mtime() {
        let dir = std::env::temp_dir().join(format!("xtask-newest-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            newest_object(&dir).unwrap(),
            None,
            "missing dir is not an error"
        );
        let put = |sub: &str, age_s: u64| {
            let out = dir.join(sub).join("out");
            fs::create_dir_all(&out).unwrap();
            let mut f = fs::File::create(out.join("lqtrace")).unwrap();
            std::io::Write::write_all(&mut f, b"\x7fELF").unwrap();
            f.set_modified(SystemTime::now() - std::time::Duration::from_secs(age_s))
                .unwrap();
            out.join("lqtrace")
        };
        put("lqtrace-aaaa", 300);
        let newest = put("lqtrace-bbbb", 10);
        put("lqtrace-cccc", 100);
        put("lqtrace-ebpf-dddd", 0); // newer, but another package
        fs::create_dir_all(dir.join("lqtrace-eeee/out")).unwrap(); // no object
        fs::create_dir_all(dir.join("lqtrace-ffff/out")).unwrap();
        fs::write(dir.join("lqtrace-ffff/out/lqtrace"), b"").unwrap(); // AYA_BUILD_SKIP placeholder
        assert_eq!(newest_object(&dir).unwrap(), Some(newest));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn integration_args() {
        let extra: Vec<OsString> = vec!["--nocapture".into(), "drops".into()];
        assert_eq!(
            integration_test_args(None, &[]).unwrap(),
            Vec::<OsString>::new()
        );
        assert_eq!(integration_test_args(None, &extra).unwrap(), extra);
        assert_eq!(
            integration_test_args(Some("1"), &extra).unwrap(),
            vec![
                OsString::from("--test-threads=1"),
                "--nocapture".into(),
                "drops".into()
            ]
        );
        assert!(integration_test_args(Some("0"), &[]).is_err());
        assert!(integration_test_args(Some("many"), &[]).is_err());
    }

    #[test]
    fn cargo_test_command_line() {
        let cmd = cargo_test(
            &["-p", "lqtrace", "--test", "*"],
            &["--test-threads=2".into()],
        );
        let shown = render(&cmd);
        assert!(
            shown.ends_with("test -p lqtrace --test '*' -- --test-threads=2"),
            "{shown}"
        );
        let cmd = cargo_test(&["-p", "xtask"], &[]);
        assert!(render(&cmd).ends_with("test -p xtask"));
    }

    #[test]
    fn lint_command_lines() {
        let shown = render(&clippy_cmd(&[]));
        assert!(
            shown.ends_with(
                " clippy --all-targets -p lqtrace -p lqtrace-common -p lqtrace-testkit -p xtask -p vm-guest \
                 -- -D warnings"
            ),
            "{shown}"
        );
        let shown = render(&clippy_cmd(&["-W".into(), "clippy::pedantic".into()]));
        assert!(
            shown.ends_with("-- -D warnings -W clippy::pedantic"),
            "{shown}"
        );
        assert_eq!(render(&fmt_check_cmd()), "cargo +nightly fmt --all --check");
    }

    #[test]
    fn promtool_command_lines() {
        assert!(
            render(&promtool(&["check", "rules", RULES]))
                .ends_with("promtool check rules deploy/lqtrace-rules.yaml")
        );
        assert!(
            render(&promtool(&["test", "rules", RULE_TESTS]))
                .ends_with("promtool test rules deploy/lqtrace-rules.test.yaml")
        );
    }

    #[test]
    fn prometheus_rule_has_the_rules_files_groups() {
        rules_in_sync().unwrap();
        let small = prometheus_rule("# comment\ngroups:\n  - name: x\n\n    rules: []\n");
        assert!(
            small.ends_with("spec:\n  groups:\n    - name: x\n\n      rules: []\n"),
            "{small}"
        );
        assert!(small.starts_with(PROMETHEUS_RULE_HEADER), "{small}");
    }
}
