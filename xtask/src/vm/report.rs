//! Parsing the guest's console protocol (see vm-guest/src/main.rs) and the per-kernel table.

use std::collections::BTreeMap;

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
        self.results
            .iter()
            .find(|r| r.name == payload)
            .map(|r| r.status.as_str())
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
