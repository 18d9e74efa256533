//! Parsing the guest's console protocol (see vm-guest/src/main.rs), and what vm-test prints at
//! the end: the per-kernel table, the same results as rows of README's "Supported kernels"
//! table (Markdown, so the README is produced from the matrix), and, for each failed kernel,
//! why.

use std::{collections::BTreeMap, fs, path::PathBuf, time::Duration};

use super::{payloads::PAYLOADS, qemu};
use crate::cross::Arch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadResult {
    pub name: String,
    /// PASS, FAIL or SKIP.
    pub status: String,
    pub secs: String,
    pub details: String,
}

#[derive(Debug, Default)]
pub struct GuestReport {
    /// `VMTEST-INFO` key=value pairs (uname, btf, cgroup2, ...).
    pub info: BTreeMap<String, String>,
    pub results: Vec<PayloadResult>,
    /// Payloads started (`VMTEST-START`), in order.
    pub started: Vec<String>,
    pub done: bool,
    /// The code of the guest's `VMTEST-EXIT` line (printed right before it powers off).
    pub exit_code: Option<i32>,
    /// `VMTEST-ERROR`/`VMTEST-PANIC` lines and kernel panics/oopses.
    pub errors: Vec<String>,
    /// Output lines of each payload (`<name>|o ...`/`<name>|e ...`).
    pub output: BTreeMap<String, Vec<String>>,
}

/// Lines worth showing live on the host.
pub fn is_protocol_line(line: &str) -> bool {
    line.starts_with("VMTEST") || (!line.contains('|') && is_kernel_trouble(line))
}

fn is_kernel_trouble(line: &str) -> bool {
    [
        "Kernel panic",
        "BUG:",
        "Oops:",
        "WARNING:",
        "Call Trace:",
        "general protection fault",
    ]
    .iter()
    .any(|p| line.contains(p))
}

impl GuestReport {
    /// Feeds one console line (without its newline).
    pub fn feed(&mut self, raw: &str) {
        let line = raw.trim_end_matches(['\r', '\n']);
        if let Some(rest) = line.strip_prefix("VMTEST-INFO ") {
            for kv in rest.split_whitespace() {
                if let Some((k, v)) = kv.split_once('=') {
                    self.info.insert(k.to_string(), v.to_string());
                }
            }
        } else if let Some(rest) = line.strip_prefix("VMTEST-START ") {
            if let Some(name) = rest.split_whitespace().next() {
                self.started.push(name.to_string());
            }
        } else if line.starts_with("VMTEST-DONE") {
            self.done = true;
        } else if let Some(code) = line.strip_prefix("VMTEST-EXIT ") {
            self.exit_code = code.trim().parse().ok();
        } else if line.starts_with("VMTEST-ERROR") || line.starts_with("VMTEST-PANIC") {
            self.errors.push(line.to_string());
        } else if let Some(rest) = line.strip_prefix("VMTEST ") {
            let mut it = rest.splitn(4, ' ');
            let (Some(name), Some(status), secs) = (it.next(), it.next(), it.next()) else {
                return;
            };
            self.results.push(PayloadResult {
                name: name.to_string(),
                status: status.to_string(),
                secs: secs.unwrap_or("").to_string(),
                details: it.next().unwrap_or("").to_string(),
            });
        } else if let Some((name, text)) = line
            .split_once('|')
            .filter(|(name, _)| self.started.iter().any(|s| s == name))
        {
            self.output
                .entry(name.to_string())
                .or_default()
                .push(text.to_string());
        } else if is_kernel_trouble(line) {
            self.errors.push(line.trim().to_string());
        }
    }

    pub fn status_of(&self, payload: &str) -> Option<&str> {
        self.result(payload).map(|r| r.status.as_str())
    }

    fn result(&self, payload: &str) -> Option<&PayloadResult> {
        self.results.iter().find(|r| r.name == payload)
    }

    /// The value of `key=value` in a payload's details.
    pub fn detail(&self, payload: &str, key: &str) -> Option<&str> {
        let prefix = format!("{key}=");
        self.result(payload)?
            .details
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(prefix.as_str()))
    }

    /// The hook variants an overflow payload's summary named: (syn, ack), from
    /// `hooks=syn:X/ack:Y`.
    pub fn hooks(&self, payload: &str) -> Option<(&str, &str)> {
        let h = self.detail(payload, "hooks")?;
        let (syn, ack) = h.split_once('/')?;
        Some((syn.strip_prefix("syn:")?, ack.strip_prefix("ack:")?))
    }

    /// (passed, passed + failed) from a test binary's `test result:` line.
    pub fn test_counts(&self, payload: &str) -> Option<(u32, u32)> {
        let line = self
            .output
            .get(payload)?
            .iter()
            .rev()
            .find_map(|l| l.split_once("test result: ").map(|(_, r)| r))?;
        let count = |what: &str| -> Option<u32> {
            let i = line.find(what)?;
            line[..i].trim_end().rsplit([' ', ';']).next()?.parse().ok()
        };
        let passed = count(" passed")?;
        Some((passed, passed + count(" failed")?))
    }

    /// All payloads reported, none failed, the guest said DONE, and the kernel printed no
    /// panic/BUG/Oops/WARNING (a splat while lqtrace runs is a failure even if the payload
    /// passed).
    pub fn all_passed(&self) -> bool {
        self.done
            && self.errors.is_empty()
            && !self.results.is_empty()
            && self.results.iter().all(|r| r.status != "FAIL")
    }
}

/// A fixed-width text table.
pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let fmt = |cells: &[String]| {
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate().take(cols) {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(c);
            if i + 1 < cols {
                line.push_str(&" ".repeat(width[i] - c.chars().count()));
            }
        }
        line.trim_end().to_string()
    };
    let mut out = fmt(header);
    out.push('\n');
    for r in rows {
        out.push_str(&fmt(r));
        out.push('\n');
    }
    out
}

pub struct Outcome {
    pub label: String,
    pub arch: Arch,
    /// (package, version, suite) of a Debian kernel.
    pub kernel: Option<(String, String, String)>,
    /// The hook variant the default choice must settle on (kernels::Spec::default_hooks).
    pub default_hooks: Option<&'static str>,
    pub package: String,
    pub fetch: Option<Duration>,
    pub fetch_error: Option<String>,
    pub run: Option<qemu::Run>,
    pub log: PathBuf,
}

impl Outcome {
    /// A kernel not fetched or booted yet.
    pub fn new(label: &str, arch: Arch, log: PathBuf) -> Outcome {
        Outcome {
            label: label.to_string(),
            arch,
            kernel: None,
            default_hooks: None,
            package: "-".into(),
            fetch: None,
            fetch_error: None,
            run: None,
            log,
        }
    }

    pub fn passed(&self) -> bool {
        self.fetch_error.is_none()
            && self.hooks_problem().is_none()
            && self
                .run
                .as_ref()
                .is_some_and(|r| r.exit == qemu::Exit::Guest(0) && r.report.all_passed())
    }

    /// Why the default hook choice is not the one this kernel must settle on, if it is not.
    pub fn hooks_problem(&self) -> Option<String> {
        let want = self.default_hooks?;
        let report = &self.run.as_ref()?.report;
        report.status_of("overflow")?;
        match report.hooks("overflow") {
            Some((syn, ack)) if syn == want && ack == want => None,
            Some((syn, ack)) => Some(format!(
                "default hooks syn:{syn}/ack:{ack}, expected {want}/{want} on this kernel"
            )),
            None => Some(format!(
                "the overflow payload named no hooks (expected {want}/{want})"
            )),
        }
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64()))
}

pub fn print_table(outcomes: &[Outcome]) {
    let mut header: Vec<String> = [
        "KERNEL", "ARCH", "PACKAGE", "UNAME -R", "BTF", "CGROUP2", "HOOKS",
    ]
    .map(String::from)
    .to_vec();
    header.extend(PAYLOADS.iter().map(|p| p.name.to_uppercase()));
    header.extend(["GET S", "BOOT S", "RUN S", "TOTAL S", "RESULT"].map(String::from));
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let r = o.run.as_ref();
            let info = |k: &str| {
                r.and_then(|r| r.report.info.get(k).cloned())
                    .unwrap_or_else(|| "-".into())
            };
            let hooks = r
                .and_then(|r| r.report.hooks("overflow"))
                .map_or("-".into(), |(s, a)| format!("{s}/{a}"));
            let mut row = vec![
                o.label.clone(),
                o.arch.debian().to_string(),
                o.package.clone(),
                info("uname"),
                info("btf"),
                info("cgroup2"),
                hooks,
            ];
            for p in PAYLOADS {
                row.push(
                    r.and_then(|r| r.report.status_of(p.name))
                        .unwrap_or("-")
                        .to_string(),
                );
            }
            let run_s = r.and_then(|r| r.boot.map(|b| r.total.saturating_sub(b)));
            row.push(secs(o.fetch));
            row.push(secs(r.and_then(|r| r.boot)));
            row.push(secs(run_s));
            row.push(secs(r.map(|r| r.total)));
            row.push(if o.passed() {
                "ok".into()
            } else if let Some(e) = &o.fetch_error {
                format!("FAILED (download: {})", first_line(e))
            } else if let Some(p) = o.hooks_problem() {
                format!("FAILED ({p})")
            } else if let Some(e) = r
                .filter(|r| r.exit == qemu::Exit::Guest(0))
                .and_then(|r| r.report.errors.first())
            {
                format!("FAILED (kernel: {})", first_line(e))
            } else {
                format!(
                    "FAILED ({})",
                    r.map_or("not run".into(), |r| r.exit.describe())
                )
            });
            row
        })
        .collect();
    println!();
    print!("{}", table(&header, &rows));
}

/// The columns of README's "Supported kernels" table after Kernel, Arch and Package: (heading,
/// payload).
const README_COLUMNS: &[(&str, &str)] = &[
    ("check", "check"),
    ("demo", "demo"),
    ("loopback tests", "loopback-tests"),
    ("TUN tests", "tun-tests"),
    ("clients tests", "clients-tests"),
    ("verdicts tests", "verdicts-tests"),
    ("overflow (default)", "overflow"),
    ("`--hooks fentry`", "fentry"),
    ("`--hooks kprobe`", "kprobe"),
    ("`--hooks cgroup`", "cgroup"),
];

/// One README cell for `payload`: pass/skip/FAIL, `5/5` for test binaries, `48 = 48` (drops
/// recorded = the kernel's ListenDrops delta) for the overflow scenarios.
fn readme_cell(r: &qemu::Run, payload: &str) -> String {
    let report = &r.report;
    let Some(status) = report.status_of(payload) else {
        return "-".into();
    };
    match status {
        "SKIP" if payload == "demo" => "skip".into(),
        "SKIP" => "skip (unavailable)".into(),
        "FAIL" => "FAIL".into(),
        _ => {
            if let Some((passed, total)) = report.test_counts(payload) {
                format!("{passed}/{total}")
            } else if let (Some(rec), Some(k)) = (
                report.detail(payload, "recorded"),
                report.detail(payload, "kernel_listen_drops"),
            ) {
                format!("{rec} = {k}")
            } else {
                "pass".into()
            }
        }
    }
}

/// `6.1.192-3` -> `6.1.192`; the release from uname for a kernel given as a file.
fn kernel_version(o: &Outcome) -> String {
    match &o.kernel {
        Some((_, version, _)) => version.split(['-', '~']).next().unwrap_or(version).into(),
        None => o
            .run
            .as_ref()
            .and_then(|r| r.report.info.get("uname").cloned())
            .unwrap_or_else(|| o.label.clone()),
    }
}

/// README's "Supported kernels" rows, one per kernel that ran.
pub fn readme_rows(outcomes: &[Outcome]) -> String {
    let mut out = String::from("| Kernel | Arch | Package | Hooks chosen (SYN / ACK) |");
    for (h, _) in README_COLUMNS {
        out.push_str(&format!(" {h} |"));
    }
    out.push_str("\n|");
    out.push_str(&" --- |".repeat(4 + README_COLUMNS.len()));
    out.push('\n');
    for o in outcomes {
        let Some(r) = &o.run else { continue };
        let package = match &o.kernel {
            Some((p, _, suite)) => format!("{p} ({suite})"),
            None => "—".into(),
        };
        let hooks = r
            .report
            .hooks("overflow")
            .map_or("-".into(), |(s, a)| format!("{s} / {a}"));
        out.push_str(&format!(
            "| {} | {} | {package} | {hooks} |",
            kernel_version(o),
            o.arch.debian()
        ));
        for (_, payload) in README_COLUMNS {
            out.push_str(&format!(" {} |", readme_cell(r, payload)));
        }
        out.push('\n');
    }
    out
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(120).collect()
}

/// For a failed kernel: guest errors, each failed payload's details and last output lines, or
/// the end of the log if the guest reported nothing.
pub fn print_failure(o: &Outcome) {
    println!("\n--- {} failed (log: {})", o.label, o.log.display());
    if let Some(e) = &o.fetch_error {
        println!("    download: {e:#}");
        return;
    }
    let Some(run) = &o.run else { return };
    println!("    {}", run.exit.describe());
    if let Some(p) = o.hooks_problem() {
        println!("    {p}");
    }
    for e in &run.report.errors {
        println!("    {e}");
    }
    let failed: Vec<_> = run
        .report
        .results
        .iter()
        .filter(|r| r.status == "FAIL")
        .collect();
    for r in &failed {
        println!("    {} FAIL: {}", r.name, r.details);
        if let Some(lines) = run.report.output.get(&r.name) {
            let from = lines.len().saturating_sub(30);
            for l in &lines[from..] {
                println!("      | {l}");
            }
        }
    }
    if failed.is_empty() {
        let text = fs::read_to_string(&o.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(40)..] {
            println!("      | {l}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_protocol() {
        let mut r = GuestReport::default();
        for l in [
            "[    1.234] random kernel line",
            "VMTEST-INFO uname=6.1.0-41-cloud-amd64 btf=yes cgroup2=yes uptime=1.20s",
            "VMTEST-START smoke timeout=120s cmd=/bin/lqtrace -v -d 1s",
            "smoke|e attached skb_consumed\r",
            "VMTEST smoke FAIL 2.50s exit status 2: lqtrace: loading listener_rx: EPERM",
            "VMTEST-START version timeout=30s cmd=/bin/lqtrace --version",
            "VMTEST version PASS 0.10s lqtrace 0.1.0",
            "VMTEST demo SKIP 0.30s not implemented",
            "[    3.000] Kernel panic - not syncing: Attempted to kill init!",
            "VMTEST-DONE pass=1 fail=1 skip=1",
        ] {
            r.feed(l);
        }
        assert_eq!(r.info["uname"], "6.1.0-41-cloud-amd64");
        assert_eq!(r.info["btf"], "yes");
        assert_eq!(r.results.len(), 3);
        assert_eq!(r.results[0].name, "smoke");
        assert_eq!(r.results[0].status, "FAIL");
        assert_eq!(r.results[0].secs, "2.50s");
        assert_eq!(
            r.results[0].details,
            "exit status 2: lqtrace: loading listener_rx: EPERM"
        );
        assert_eq!(r.status_of("version"), Some("PASS"));
        assert_eq!(r.output["smoke"], ["e attached skb_consumed"]);
        assert!(r.done);
        assert!(!r.all_passed());
        assert_eq!(r.errors.len(), 1);
    }

    #[test]
    fn all_passed_needs_done() {
        let mut r = GuestReport::default();
        r.feed("VMTEST version PASS 0.10s x");
        assert!(!r.all_passed());
        r.feed("VMTEST demo SKIP 0.10s not implemented");
        r.feed("VMTEST-DONE pass=1 fail=0 skip=1");
        assert!(r.all_passed());
        r.feed("[   12.5] WARNING: CPU: 1 PID: 93 at kernel/bpf/trampoline.c:123");
        assert!(!r.all_passed(), "a kernel warning fails the kernel");
    }

    fn run_of(lines: &[&str]) -> qemu::Run {
        let mut report = GuestReport::default();
        for l in lines {
            report.feed(l);
        }
        qemu::Run {
            exit: qemu::Exit::Guest(0),
            boot: None,
            total: Duration::from_secs(1),
            report,
        }
    }

    fn outcome(run: qemu::Run, default_hooks: Option<&'static str>) -> Outcome {
        Outcome {
            label: "arm64-6.1".into(),
            arch: Arch::Aarch64,
            kernel: Some((
                "linux-image-6.1.0-57-cloud-arm64".into(),
                "6.1.192-3".into(),
                "bookworm-security".into(),
            )),
            default_hooks,
            package: "-".into(),
            fetch: None,
            fetch_error: None,
            run: Some(run),
            log: PathBuf::from("/dev/null"),
        }
    }

    const LINES: &[&str] = &[
        "VMTEST-INFO uname=6.1.0-57-cloud-arm64",
        "VMTEST-START overflow timeout=60s cmd=/bin/lqtrace -j -d 6s",
        "VMTEST overflow PASS 8.25s netns=1 kernel_listen_drops=48 recorded=48 hooks=syn:kprobe/ack:kprobe",
        "VMTEST-START loopback-tests timeout=150s cmd=/bin/loopback-tests",
        "loopback-tests|o test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 21.25s",
        "VMTEST loopback-tests PASS 21.42s ",
        "VMTEST fentry SKIP 3.0s this kernel has no usable fentry variant",
        "VMTEST-DONE pass=2 fail=0 skip=1",
        "VMTEST-EXIT 0",
    ];

    #[test]
    fn exit_line_and_details() {
        let r = run_of(LINES);
        assert_eq!(r.report.exit_code, Some(0));
        assert_eq!(r.report.hooks("overflow"), Some(("kprobe", "kprobe")));
        assert_eq!(r.report.detail("overflow", "recorded"), Some("48"));
        assert_eq!(r.report.test_counts("loopback-tests"), Some((5, 5)));
        assert_eq!(r.report.test_counts("overflow"), None);
    }

    #[test]
    fn default_hooks_are_asserted() {
        assert!(outcome(run_of(LINES), Some("kprobe")).passed());
        let o = outcome(run_of(LINES), Some("fentry"));
        assert!(!o.passed());
        assert!(
            o.hooks_problem()
                .unwrap()
                .contains("expected fentry/fentry")
        );
        assert!(outcome(run_of(LINES), None).passed());
    }

    #[test]
    fn readme_rows_from_results() {
        let rows = readme_rows(&[outcome(run_of(LINES), Some("kprobe"))]);
        let lines: Vec<&str> = rows.lines().collect();
        assert_eq!(lines.len(), 3, "{rows}");
        assert!(
            lines[0].starts_with("| Kernel | Arch | Package | Hooks chosen (SYN / ACK) | check |")
        );
        assert_eq!(
            lines[2],
            "| 6.1.192 | arm64 | linux-image-6.1.0-57-cloud-arm64 (bookworm-security) | kprobe / kprobe \
             | - | - | 5/5 | - | - | - | 48 = 48 | skip (unavailable) | - | - |"
        );
    }

    #[test]
    fn table_alignment() {
        let t = table(
            &["A".into(), "BB".into()],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    BB\nxyz  1\nq    22\n");
    }
}
