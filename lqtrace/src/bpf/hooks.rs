//! The one table of hook variants: for each stage (SYN, final ACK), the ways lqtrace can observe
//! them, best first, with the kernel functions each relies on. All variants feed the same
//! counter engine (lqtrace-ebpf/src/bracket.rs) and produce the same records.
//!
//! - SYN drops (syn_accept_queue_full, syn_queue_full, syn_other) and SYN cookies: the packet
//!   handled by `tcp_conn_request()`.
//! - Final-ACK drops (ack_accept_queue_full with or without RST, ack_syncookie_accept_queue_full):
//!   the packet handled by `tcp_check_req()` (request-socket path) or
//!   `cookie_v4_check()`/`cookie_v6_check()` (syncookie path).
//!
//! Variants, best first: fentry/fexit (cheapest, needs BPF trampolines), kprobe/kretprobe (needs
//! CONFIG_KPROBES), cgroup (cgroup_skb ingress + skb free tracepoints: no function hooks at all;
//! the development host's only option).

use std::{collections::BTreeMap, fmt};

pub use crate::event::Stage;

/// How a program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// cgroup_skb ingress on the root of the cgroup v2 hierarchy (all sockets of the host).
    CgroupIngress,
    RawTracepoint(&'static str),
    /// Classic tracepoint (category, name).
    Tracepoint(&'static str, &'static str),
    Fentry(&'static str),
    Fexit(&'static str),
    Kprobe(&'static str),
    Kretprobe(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Hook {
    /// Program name in the eBPF object.
    pub program: &'static str,
    pub attach: Attach,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    Fentry,
    Kprobe,
    Cgroup,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Fentry, Variant::Kprobe, Variant::Cgroup];
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Fentry => "fentry",
            Variant::Kprobe => "kprobe",
            Variant::Cgroup => "cgroup",
        }
    }
    pub fn parse(s: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy)]
pub struct VariantHooks {
    pub stage: Stage,
    pub variant: Variant,
    pub hooks: &'static [Hook],
    /// Kernel functions that must exist (BTF for fentry, kallsyms for kprobe).
    pub functions: &'static [&'static str],
    /// What the variant depends on, for messages and `lqtrace check`.
    pub relies_on: &'static str,
}

const fn h(program: &'static str, attach: Attach) -> Hook {
    Hook { program, attach }
}

/// The cgroup variant's programs are shared by both stages (attached once).
const CGROUP_HOOKS: &[Hook] = &[
    h("skb_consumed", Attach::RawTracepoint("consume_skb")),
    h("skb_dropped", Attach::RawTracepoint("kfree_skb")),
    h("listener_rx", Attach::CgroupIngress),
];

pub const VARIANTS: &[VariantHooks] = &[
    VariantHooks {
        stage: Stage::Syn,
        variant: Variant::Fentry,
        hooks: &[
            h("syn_fentry", Attach::Fentry("tcp_conn_request")),
            h("syn_fexit", Attach::Fexit("tcp_conn_request")),
        ],
        functions: &["tcp_conn_request"],
        relies_on: "BPF trampolines (fentry/fexit) on tcp_conn_request()",
    },
    VariantHooks {
        stage: Stage::Syn,
        variant: Variant::Kprobe,
        hooks: &[
            h("syn_kprobe", Attach::Kprobe("tcp_conn_request")),
            h("syn_kretprobe", Attach::Kretprobe("tcp_conn_request")),
        ],
        functions: &["tcp_conn_request"],
        relies_on: "CONFIG_KPROBES; tcp_conn_request() not inlined",
    },
    VariantHooks {
        stage: Stage::Syn,
        variant: Variant::Cgroup,
        hooks: CGROUP_HOOKS,
        functions: &[],
        relies_on: "cgroup v2 + cgroup_skb ingress (tcp_filter() runs it with skb->sk = the listener); tcp_rcv_state_process() consume_skb()s every SYN",
    },
    VariantHooks {
        stage: Stage::Ack,
        variant: Variant::Fentry,
        hooks: &[
            h("ack_fentry", Attach::Fentry("tcp_check_req")),
            h("ack_fexit", Attach::Fexit("tcp_check_req")),
            h("cookie4_fentry", Attach::Fentry("cookie_v4_check")),
            h("cookie4_fexit", Attach::Fexit("cookie_v4_check")),
            h("cookie6_fentry", Attach::Fentry("cookie_v6_check")),
            h("cookie6_fexit", Attach::Fexit("cookie_v6_check")),
        ],
        functions: &["tcp_check_req", "cookie_v4_check", "cookie_v6_check"],
        relies_on: "BPF trampolines on tcp_check_req(), cookie_v4_check(), cookie_v6_check()",
    },
    VariantHooks {
        stage: Stage::Ack,
        variant: Variant::Kprobe,
        hooks: &[
            h("ack_kprobe", Attach::Kprobe("tcp_check_req")),
            h("ack_kretprobe", Attach::Kretprobe("tcp_check_req")),
            h("cookie4_kprobe", Attach::Kprobe("cookie_v4_check")),
            h("cookie4_kretprobe", Attach::Kretprobe("cookie_v4_check")),
            h("cookie6_kprobe", Attach::Kprobe("cookie_v6_check")),
            h("cookie6_kretprobe", Attach::Kretprobe("cookie_v6_check")),
        ],
        functions: &["tcp_check_req", "cookie_v4_check", "cookie_v6_check"],
        relies_on: "CONFIG_KPROBES; tcp_check_req()/cookie_v4_check()/cookie_v6_check() not inlined",
    },
    VariantHooks {
        stage: Stage::Ack,
        variant: Variant::Cgroup,
        hooks: CGROUP_HOOKS,
        functions: &[],
        relies_on: "cgroup v2 + cgroup_skb ingress; tcp_v4_rcv()/cookie_v4_check() kfree_skb() the dropped ACK",
    },
];

/// Listener bookkeeping (requested backlog, listen() caller): always attached.
pub const LISTENER_HOOKS: &[Hook] = &[
    h(
        "listen_enter",
        Attach::Tracepoint("syscalls", "sys_enter_listen"),
    ),
    h(
        "listen_exit",
        Attach::Tracepoint("syscalls", "sys_exit_listen"),
    ),
    h(
        "sock_state",
        Attach::Tracepoint("sock", "inet_sock_set_state"),
    ),
];

/// Every hook lqtrace may attach (listener bookkeeping and all variants), each once.
pub fn all_hooks() -> Vec<Hook> {
    let mut out: Vec<Hook> = LISTENER_HOOKS.to_vec();
    for v in VARIANTS {
        for hook in v.hooks {
            if !out.iter().any(|x| x.program == hook.program) {
                out.push(*hook);
            }
        }
    }
    out
}

/// The programs attached for `chosen` (stage -> variant names, as `Session::hooks()` gives):
/// listener bookkeeping, then each chosen variant's programs, each program once.
pub fn in_use(chosen: &BTreeMap<String, String>) -> Vec<Hook> {
    let mut out: Vec<Hook> = LISTENER_HOOKS.to_vec();
    for v in VARIANTS {
        if chosen.get(v.stage.as_str()).map(String::as_str) != Some(v.variant.as_str()) {
            continue;
        }
        for h in v.hooks {
            if !out.iter().any(|x| x.program == h.program) {
                out.push(*h);
            }
        }
    }
    out
}

/// The reasons (JSON `reason` values) a stage's hooks observe.
pub fn kinds(stage: Stage) -> Vec<&'static str> {
    crate::event::Reason::ALL
        .into_iter()
        .filter(|r| r.stage() == stage)
        .map(crate::event::Reason::as_str)
        .collect()
}

pub fn variants(stage: Stage) -> impl Iterator<Item = &'static VariantHooks> {
    VARIANTS.iter().filter(move |v| v.stage == stage)
}

pub fn describe(attach: Attach) -> String {
    match attach {
        Attach::CgroupIngress => "cgroup_skb/ingress (root cgroup v2)".to_string(),
        Attach::RawTracepoint(name) => format!("raw_tp/{name}"),
        Attach::Tracepoint(cat, name) => format!("tracepoint/{cat}/{name}"),
        Attach::Fentry(f) => format!("fentry/{f}"),
        Attach::Fexit(f) => format!("fexit/{f}"),
        Attach::Kprobe(f) => format!("kprobe/{f}"),
        Attach::Kretprobe(f) => format!("kretprobe/{f}"),
    }
}

/// `--hooks` value: one method for both groups (`kprobe`), or per group (`syn=fentry,ack=cgroup`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forced {
    pub syn: Option<Variant>,
    pub ack: Option<Variant>,
}

impl Forced {
    pub fn get(&self, g: Stage) -> Option<Variant> {
        match g {
            Stage::Syn => self.syn,
            Stage::Ack => self.ack,
            Stage::Other => None,
        }
    }
}

pub fn parse_forced(s: &str) -> Result<Forced, String> {
    let bad = |what: &str| {
        format!(
            "invalid --hooks `{what}`: use fentry, kprobe or cgroup, optionally per stage: syn=kprobe,ack=cgroup"
        )
    };
    let mut f = Forced::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            None => {
                let m = Variant::parse(part).ok_or_else(|| bad(part))?;
                f.syn = Some(m);
                f.ack = Some(m);
            }
            Some((g, m)) => {
                let m = Variant::parse(m.trim()).ok_or_else(|| bad(part))?;
                match g.trim() {
                    "syn" => f.syn = Some(m),
                    "ack" => f.ack = Some(m),
                    _ => return Err(bad(part)),
                }
            }
        }
    }
    if f == Forced::default() {
        return Err(bad(s));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_has_all_methods_best_first() {
        for g in Stage::HOOKED {
            let methods: Vec<Variant> = variants(g).map(|v| v.variant).collect();
            assert_eq!(
                methods,
                vec![Variant::Fentry, Variant::Kprobe, Variant::Cgroup]
            );
        }
    }

    #[test]
    fn program_names_are_unique_per_attach() {
        let mut seen = std::collections::HashMap::new();
        for v in VARIANTS {
            for hook in v.hooks {
                let prev = seen.insert(hook.program, hook.attach);
                assert!(
                    prev.is_none() || prev == Some(hook.attach),
                    "{} attached two ways",
                    hook.program
                );
            }
        }
    }

    #[test]
    fn forced_parsing() {
        assert_eq!(
            parse_forced("kprobe"),
            Ok(Forced {
                syn: Some(Variant::Kprobe),
                ack: Some(Variant::Kprobe)
            })
        );
        assert_eq!(
            parse_forced("syn=fentry,ack=cgroup"),
            Ok(Forced {
                syn: Some(Variant::Fentry),
                ack: Some(Variant::Cgroup)
            })
        );
        assert_eq!(
            parse_forced("ack=cgroup"),
            Ok(Forced {
                syn: None,
                ack: Some(Variant::Cgroup)
            })
        );
        for bad in ["", "x", "syn=x", "foo=kprobe", ","] {
            assert!(parse_forced(bad).is_err(), "{bad}");
        }
    }
}
