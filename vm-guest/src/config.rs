//! The payload list (`/vmtest.conf` in the initramfs), one payload a line:
//!
//! ```text
//! # name      timeout_s  check     argv...
//! version     30         exit0     /bin/lqtrace --version
//! overflow    180        overflow  /bin/lqtrace -j -d 6s
//! env RUST_BACKTRACE=1
//! ```
//!
//! Fields are separated by whitespace; arguments cannot contain whitespace (no quoting).
//! `env KEY=VALUE` lines set a variable for every payload. `module /lib/modules/x/NAME` lines
//! name kernel modules /init loads first (`NAME.ko`, `.ko.xz`, `.ko.zst` or `.ko.gz`; ignored
//! outside the VM). `#` starts a comment line.
//! Checks: `exit0` (PASS iff the command exits 0 in time), `demo` (`lqtrace demo -j`: exit 0 and
//! every reconciliation entry of the summary matches; SKIP while demo is not implemented),
//! `overflow` (the built-in listen-overflow scenario; argv is the lqtrace command to trace with),
//! `connrate:VARIANT` (the connection rate without and with lqtrace, `connrate.rs`; argv is the
//! lqtrace command, `--hooks VARIANT` included).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Exit0,
    Demo,
    /// The overflow scenario; with a hook variant ("overflow:kprobe"), the payload forces that hook
    /// variant and the check asserts the summary says it served both drop groups (SKIP when the
    /// kernel has no such variant: lqtrace says "no usable hook").
    Overflow(Option<&'static str>),
    /// The connection rate without and with lqtrace, the hook variant forced
    /// ("connrate:fentry"): A/B pairs, ratios in the details (`connrate.rs`).
    ConnRate(&'static str),
}

impl Check {
    fn parse(s: &str) -> Option<Check> {
        match s {
            "exit0" => Some(Check::Exit0),
            "demo" => Some(Check::Demo),
            "overflow" => Some(Check::Overflow(None)),
            "overflow:fentry" => Some(Check::Overflow(Some("fentry"))),
            "overflow:kprobe" => Some(Check::Overflow(Some("kprobe"))),
            "overflow:cgroup" => Some(Check::Overflow(Some("cgroup"))),
            "connrate:fentry" => Some(Check::ConnRate("fentry")),
            "connrate:kprobe" => Some(Check::ConnRate("kprobe")),
            "connrate:cgroup" => Some(Check::ConnRate("cgroup")),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub name: String,
    pub timeout: Duration,
    pub check: Check,
    pub argv: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub payloads: Vec<Payload>,
    pub env: Vec<(String, String)>,
    pub modules: Vec<String>,
}

pub fn parse(text: &str) -> Result<Config, String> {
    let mut cfg = Config::default();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields[0] == "module" {
            let m = fields
                .get(1)
                .ok_or_else(|| format!("line {n}: `module` needs a path"))?;
            cfg.modules.push(m.to_string());
            continue;
        }
        if fields[0] == "env" {
            let kv = fields
                .get(1)
                .ok_or_else(|| format!("line {n}: `env` needs KEY=VALUE"))?;
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("line {n}: `env` needs KEY=VALUE, got {kv:?}"))?;
            cfg.env.push((k.to_string(), v.to_string()));
            continue;
        }
        if fields.len() < 4 {
            return Err(format!(
                "line {n}: expected `name timeout_s check argv...`, got {line:?}"
            ));
        }
        let name = fields[0];
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "line {n}: payload name {name:?} must be [A-Za-z0-9._-]"
            ));
        }
        if cfg.payloads.iter().any(|p| p.name == name) {
            return Err(format!("line {n}: duplicate payload name {name:?}"));
        }
        let secs: u64 = fields[1].parse().ok().filter(|s| *s > 0).ok_or_else(|| {
            format!(
                "line {n}: timeout {:?} is not a positive number of seconds",
                fields[1]
            )
        })?;
        let check = Check::parse(fields[2])
            .ok_or_else(|| format!("line {n}: unknown check {:?}", fields[2]))?;
        cfg.payloads.push(Payload {
            name: name.to_string(),
            timeout: Duration::from_secs(secs),
            check,
            argv: fields[3..].iter().map(|s| s.to_string()).collect(),
        });
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_payloads_and_env() {
        let cfg = parse(
            "# comment\n\nversion 30 exit0 /bin/lqtrace --version\n  env RUST_BACKTRACE=1\nmodule /m/tcp_diag\n\
             overflow 180 overflow /bin/lqtrace -j -d 6s\n",
        )
        .unwrap();
        assert_eq!(cfg.env, [("RUST_BACKTRACE".to_string(), "1".to_string())]);
        assert_eq!(cfg.modules, ["/m/tcp_diag"]);
        assert_eq!(cfg.payloads.len(), 2);
        assert_eq!(cfg.payloads[0].name, "version");
        assert_eq!(cfg.payloads[0].timeout, Duration::from_secs(30));
        assert_eq!(cfg.payloads[0].check, Check::Exit0);
        assert_eq!(cfg.payloads[0].argv, ["/bin/lqtrace", "--version"]);
        assert_eq!(cfg.payloads[1].check, Check::Overflow(None));
        assert_eq!(cfg.payloads[1].argv, ["/bin/lqtrace", "-j", "-d", "6s"]);
    }

    #[test]
    fn rejects_bad_lines() {
        assert!(parse("a 30 exit0").is_err(), "no argv");
        assert!(parse("a x exit0 /bin/true").is_err(), "bad timeout");
        assert!(parse("a 0 exit0 /bin/true").is_err(), "zero timeout");
        assert!(parse("a 30 bogus /bin/true").is_err(), "unknown check");
        assert!(
            parse("a 30 exit0 /bin/true\na 30 exit0 /bin/true").is_err(),
            "duplicate"
        );
        assert!(parse("a|b 30 exit0 /bin/true").is_err(), "bad name");
        assert!(parse("env NOEQUALS").is_err());
    }
}
