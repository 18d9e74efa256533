//! What the guests run: the payload list ([`PAYLOADS`]), its environment, the kernel modules
//! /init loads, the binaries and host programs shipped in the initramfs, and the `/vmtest.conf`
//! text vm-guest reads (vm-guest/src/config.rs). The console lines the payloads produce are
//! parsed in `report.rs`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::util::{self, command};

/// One payload of the guest, in order. `argv[0]` names a shipped binary (see
/// [`guest_binaries`]) or is an absolute guest path. `check` is vm-guest's: `exit0`, `demo`,
/// `overflow` (vm-guest/src/config.rs). Adding a test binary is one line here plus its entry in
/// [`guest_binaries`].
pub struct Payload {
    pub name: &'static str,
    pub timeout_s: u32,
    pub check: &'static str,
    pub argv: &'static [&'static str],
}

/// Typical times under TCG (2 VMs at a time): version 0.2 s, smoke 3-5 s, demo 5-7 s, overflow
/// 8-10 s, check 3-5 s, loopback-tests, tun-tests, clients-tests and verdicts-tests ~20-60 s
/// each; the timeouts (sum 975 s) stay under the default per-kernel limit of 1020 s so that one
/// hung payload does not hide the others' results.
pub const PAYLOADS: &[Payload] = &[
    Payload {
        name: "version",
        timeout_s: 20,
        check: "exit0",
        argv: &["lqtrace", "--version"],
    },
    // Loads and attaches every program on this kernel; stderr shows which one failed.
    Payload {
        name: "smoke",
        timeout_s: 60,
        check: "exit0",
        argv: &["lqtrace", "-v", "-d", "1s"],
    },
    // SKIP while `lqtrace demo` says it is not implemented.
    Payload {
        name: "demo",
        timeout_s: 60,
        check: "demo",
        argv: &["lqtrace", "demo", "-j"],
    },
    // vm-guest's own scenario: private netns, listen(1) + 50 connects, lqtrace in the initial
    // netns; PASS iff lqtrace's drop records in that netns == the ListenDrops delta > 0.
    Payload {
        name: "overflow",
        timeout_s: 60,
        check: "overflow",
        argv: &["lqtrace", "-j", "-d", "6s"],
    },
    // Every drop kind covered by some hook variant on this kernel (exit 1 otherwise).
    Payload {
        name: "check",
        timeout_s: 40,
        check: "exit0",
        argv: &["lqtrace", "check"],
    },
    // The host's loopback integration tests, unchanged, in the guest (bursts on 2 CPUs, IPv6,
    // v4-mapped, two namespaces, a listener created before the tracer; exact reconciliation).
    Payload {
        name: "loopback-tests",
        timeout_s: 150,
        check: "exit0",
        argv: &["loopback-tests", "--test-threads=1"],
    },
    // The TUN fake-peer tests: SYN-queue full, final-ACK overflow with and without
    // tcp_abort_on_overflow, syncookie ACKs, v4-mapped; per-event truth (client ports).
    Payload {
        name: "tun-tests",
        timeout_s: 150,
        check: "exit0",
        argv: &["tun-tests", "--test-threads=1"],
    },
    // What the clients saw (outcomes by client port, gave_up, a restart gap refused and
    // reported, SO_REUSEPORT without refusals), with the accept and reset hooks this kernel
    // gets.
    Payload {
        name: "clients-tests",
        timeout_s: 150,
        check: "exit0",
        argv: &["clients-tests", "--test-threads=1"],
    },
    // Why the application fell behind (stalled / too_slow / burst, backlog_needed, the
    // accept-wait histogram), with the accept hook this kernel gets; at a quarter of the host's
    // client rates (`GUEST_ONLY_ENV`).
    Payload {
        name: "verdicts-tests",
        timeout_s: 150,
        check: "exit0",
        argv: &["verdicts-tests", "--test-threads=1"],
    },
    // Each hook variant forced in turn: the same scenario reconciles exactly with each, and the
    // summary names the forced variant (SKIP where the kernel lacks it).
    Payload {
        name: "fentry",
        timeout_s: 45,
        check: "overflow:fentry",
        argv: &["lqtrace", "-j", "-d", "6s", "--hooks", "fentry"],
    },
    Payload {
        name: "kprobe",
        timeout_s: 45,
        check: "overflow:kprobe",
        argv: &["lqtrace", "-j", "-d", "6s", "--hooks", "kprobe"],
    },
    Payload {
        name: "cgroup",
        timeout_s: 45,
        check: "overflow:cgroup",
        argv: &["lqtrace", "-j", "-d", "6s", "--hooks", "cgroup"],
    },
];

/// What `cargo xtask bench --kernel K` runs in the guest: the connection rate without and with
/// lqtrace, each hook variant forced in turn (vm-guest/src/connrate.rs; SKIP where the kernel
/// lacks the variant). Under TCG a payload takes 60-150 s (5 pairs of 2 x 3 s, and a tracer
/// started and stopped per pair); the timeouts (900 s) stay under vm-test's per-kernel limit.
pub const BENCH_PAYLOADS: &[Payload] = &[
    Payload {
        name: "connrate-fentry",
        timeout_s: 300,
        check: "connrate:fentry",
        argv: &["lqtrace", "-j", "--hooks", "fentry"],
    },
    Payload {
        name: "connrate-kprobe",
        timeout_s: 300,
        check: "connrate:kprobe",
        argv: &["lqtrace", "-j", "--hooks", "kprobe"],
    },
    Payload {
        name: "connrate-cgroup",
        timeout_s: 300,
        check: "connrate:cgroup",
        argv: &["lqtrace", "-j", "--hooks", "cgroup"],
    },
];

/// Environment of every payload.
/// `LQTRACE_BIN`: the integration tests run the guest's /bin/lqtrace (tests/support/tracer.rs).
pub const GUEST_ENV: &[(&str, &str)] = &[("RUST_BACKTRACE", "1"), ("LQTRACE_BIN", "/bin/lqtrace")];

/// Environment of the guests only (not of `--kernel host`). `LQTRACE_TEST_SLOWDOWN`: the
/// verdicts test's steady acceptor, among 150 client threads started per second, went without
/// a turn for 1.9-6.5 s under TCG (6.12 and 5.10 guests, two at a time on an idle 2-CPU host:
/// judged `stalled`, rightly); at a quarter of the rates it kept its pace in both (2026-12-07).
pub const GUEST_ONLY_ENV: &[(&str, &str)] = &[("LQTRACE_TEST_SLOWDOWN", "4")];

/// Kernel modules /init loads (in this order) before the payloads. The cloud kernels build
/// sock_diag for TCP as modules, and the guest has no modprobe to load them on demand:
/// lqtrace's listener snapshots (`demo`, `listeners`) need them.
pub const GUEST_MODULES: &[&str] = &["inet_diag", "tcp_diag", "tun"];

/// Where the guest finds the modules (one directory, whatever the kernel).
pub const GUEST_MODULE_DIR: &str = "lib/modules/vmtest";

/// The binaries shipped as `/bin/<name>` in the guest: (name, host path).
pub fn guest_binaries(musl_dir: &Path, tests: &[(String, PathBuf)]) -> Vec<(String, PathBuf)> {
    let mut v = vec![("lqtrace".to_string(), musl_dir.join("lqtrace"))];
    v.extend(tests.iter().cloned());
    v
}

/// Integration test files of `lqtrace/tests` run unchanged inside the guests, shipped as
/// `/bin/<file>-tests`.
pub const GUEST_TESTS: &[&str] = &["loopback", "tun", "clients", "verdicts"];

/// The files a dynamically linked host program needs for an x86-64 guest, with the shared
/// libraries `ldd` lists at their host paths: (guest path, host path). See `tools.rs`.
pub fn host_tool_files(name: &str) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let program =
        util::find_program(name).with_context(|| format!("{name} not found on this machine"))?;
    let out = command("ldd")
        .arg(&program)
        .output()
        .context("running ldd")?;
    let mut files = vec![(format!("bin/{name}"), program)];
    // "not a dynamic executable" (exit 1) is fine: nothing else to copy.
    if out.status.success() {
        for lib in parse_ldd(&String::from_utf8_lossy(&out.stdout)) {
            files.push((lib.trim_start_matches('/').to_string(), PathBuf::from(&lib)));
        }
    }
    Ok(files)
}

/// Library paths in `ldd` output (`libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`,
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`), without the vDSO.
pub fn parse_ldd(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// The payload list for vm-guest (`/vmtest.conf`); `guest == false` for `--kernel host` (argv[0]
/// becomes the host path).
pub fn payload_config(
    payloads: &[Payload],
    binaries: &[(String, PathBuf)],
    guest: bool,
) -> anyhow::Result<String> {
    let mut out =
        String::from("# generated by `cargo xtask vm-test` (xtask/src/vm/payloads.rs PAYLOADS)\n");
    for (k, v) in GUEST_ENV {
        out.push_str(&format!("env {k}={v}\n"));
    }
    if guest {
        for (k, v) in GUEST_ONLY_ENV {
            out.push_str(&format!("env {k}={v}\n"));
        }
        for m in GUEST_MODULES {
            out.push_str(&format!("module /{GUEST_MODULE_DIR}/{m}\n"));
        }
    }
    for p in payloads {
        let (first, rest) = p.argv.split_first().context("payload with empty argv")?;
        let program = if first.starts_with('/') {
            (*first).to_string()
        } else {
            let (_, host) = binaries
                .iter()
                .find(|(n, _)| n == first)
                .with_context(|| format!("payload {}: {first} is not a shipped binary", p.name))?;
            if guest {
                format!("/bin/{first}")
            } else {
                host.display().to_string()
            }
        };
        let argv: Vec<&str> = std::iter::once(program.as_str())
            .chain(rest.iter().copied())
            .collect();
        if argv
            .iter()
            .any(|a| a.is_empty() || a.contains(char::is_whitespace))
        {
            bail!(
                "payload {}: arguments cannot be empty or contain whitespace",
                p.name
            );
        }
        out.push_str(&format!(
            "{} {} {} {}\n",
            p.name,
            p.timeout_s,
            p.check,
            argv.join(" ")
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_list_for_guest_and_host() {
        let bins = vec![
            (
                "lqtrace".to_string(),
                PathBuf::from("/w/target/musl/lqtrace"),
            ),
            (
                "loopback-tests".to_string(),
                PathBuf::from("/w/target/musl/deps/loopback-abc"),
            ),
            (
                "tun-tests".to_string(),
                PathBuf::from("/w/target/musl/deps/tun-abc"),
            ),
            (
                "clients-tests".to_string(),
                PathBuf::from("/w/target/musl/deps/clients-abc"),
            ),
            (
                "verdicts-tests".to_string(),
                PathBuf::from("/w/target/musl/deps/verdicts-abc"),
            ),
        ];
        let guest = payload_config(PAYLOADS, &bins, true).unwrap();
        assert!(
            guest.contains("\nversion 20 exit0 /bin/lqtrace --version\n"),
            "{guest}"
        );
        assert!(
            guest.contains("\noverflow 60 overflow /bin/lqtrace -j -d 6s\n"),
            "{guest}"
        );
        assert!(guest.contains("\nenv RUST_BACKTRACE=1\n"));
        assert!(guest.contains("\nenv LQTRACE_TEST_SLOWDOWN=4\n"), "{guest}");
        let host = payload_config(PAYLOADS, &bins, false).unwrap();
        assert!(!host.contains("LQTRACE_TEST_SLOWDOWN"), "{host}");
        assert!(
            host.contains("\nsmoke 60 exit0 /w/target/musl/lqtrace -v -d 1s\n"),
            "{host}"
        );
        let bad = [Payload {
            name: "x",
            timeout_s: 1,
            check: "exit0",
            argv: &["nope"],
        }];
        assert!(payload_config(&bad, &bins, true).is_err());
        let abs = [Payload {
            name: "x",
            timeout_s: 1,
            check: "exit0",
            argv: &["/bin/true"],
        }];
        assert!(
            payload_config(&abs, &bins, true)
                .unwrap()
                .contains("\nx 1 exit0 /bin/true\n")
        );
    }

    #[test]
    fn ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007fd71452d000)\n\
                   \tlibbpf.so.1 => /lib/x86_64-linux-gnu/libbpf.so.1 (0x00007fd7143cd000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007fd71452f000)\n\
                   \tlibfoo.so => not found\n";
        assert_eq!(
            parse_ldd(out),
            [
                "/lib/x86_64-linux-gnu/libbpf.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }
}
