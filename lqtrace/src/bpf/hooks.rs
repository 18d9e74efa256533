//! The one table of hook variants: for each group of drop kinds, the ways lqtrace can observe
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

use std::fmt;

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
pub enum Method {
    Fentry,
    Kprobe,
    Cgroup,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::Fentry, Method::Kprobe, Method::Cgroup];
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Fentry => "fentry",
            Method::Kprobe => "kprobe",
            Method::Cgroup => "cgroup",
        }
    }
    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Syn,
    Ack,
}

impl Group {
    pub const ALL: [Group; 2] = [Group::Syn, Group::Ack];
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Syn => "syn",
            Group::Ack => "ack",
        }
    }
    /// The drop kinds (JSON `reason` values) this group observes.
    pub fn kinds(self) -> &'static [&'static str] {
        match self {
            Group::Syn => &[
                "syn_accept_queue_full",
                "syn_queue_full",
                "syn_other",
                "syncookie (not a drop)",
            ],
            Group::Ack => &[
                "ack_accept_queue_full",
                "ack_accept_queue_full + rst",
                "ack_syncookie_accept_queue_full",
            ],
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub group: Group,
    pub method: Method,
    pub hooks: &'static [Hook],
    /// Kernel functions that must exist (BTF for fentry, kallsyms for kprobe).
    pub functions: &'static [&'static str],
    /// What the variant depends on, for messages and `lqtrace check`.
    pub relies_on: &'static str,
}

const fn h(program: &'static str, attach: Attach) -> Hook {
    Hook { program, attach }
}

/// The cgroup variant's programs are shared by both groups (attached once).
const CGROUP_HOOKS: &[Hook] = &[
    h("skb_consumed", Attach::RawTracepoint("consume_skb")),
    h("skb_dropped", Attach::RawTracepoint("kfree_skb")),
    h("listener_rx", Attach::CgroupIngress),
];

pub const VARIANTS: &[Variant] = &[
    Variant {
        group: Group::Syn,
        method: Method::Fentry,
        hooks: &[
            h("syn_fentry", Attach::Fentry("tcp_conn_request")),
            h("syn_fexit", Attach::Fexit("tcp_conn_request")),
        ],
        functions: &["tcp_conn_request"],
        relies_on: "BPF trampolines (fentry/fexit) on tcp_conn_request()",
    },
    Variant {
        group: Group::Syn,
        method: Method::Kprobe,
        hooks: &[
            h("syn_kprobe", Attach::Kprobe("tcp_conn_request")),
            h("syn_kretprobe", Attach::Kretprobe("tcp_conn_request")),
        ],
        functions: &["tcp_conn_request"],
        relies_on: "CONFIG_KPROBES; tcp_conn_request() not inlined",
    },
    Variant {
        group: Group::Syn,
        method: Method::Cgroup,
        hooks: CGROUP_HOOKS,
        functions: &[],
        relies_on: "cgroup v2 + cgroup_skb ingress (tcp_filter() runs it with skb->sk = the listener); tcp_rcv_state_process() consume_skb()s every SYN",
    },
    Variant {
        group: Group::Ack,
        method: Method::Fentry,
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
    Variant {
        group: Group::Ack,
        method: Method::Kprobe,
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
    Variant {
        group: Group::Ack,
        method: Method::Cgroup,
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

pub fn variants(group: Group) -> impl Iterator<Item = &'static Variant> {
    VARIANTS.iter().filter(move |v| v.group == group)
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
    pub syn: Option<Method>,
    pub ack: Option<Method>,
}

impl Forced {
    pub fn get(&self, g: Group) -> Option<Method> {
        match g {
            Group::Syn => self.syn,
            Group::Ack => self.ack,
        }
    }
}

pub fn parse_forced(s: &str) -> Result<Forced, String> {
    let bad = |what: &str| {
        format!(
            "invalid --hooks `{what}`: use fentry, kprobe or cgroup, optionally per group: syn=kprobe,ack=cgroup"
        )
    };
    let mut f = Forced::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            None => {
                let m = Method::parse(part).ok_or_else(|| bad(part))?;
                f.syn = Some(m);
                f.ack = Some(m);
            }
            Some((g, m)) => {
                let m = Method::parse(m.trim()).ok_or_else(|| bad(part))?;
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
        for g in Group::ALL {
            let methods: Vec<Method> = variants(g).map(|v| v.method).collect();
            assert_eq!(
                methods,
                vec![Method::Fentry, Method::Kprobe, Method::Cgroup]
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
                syn: Some(Method::Kprobe),
                ack: Some(Method::Kprobe)
            })
        );
        assert_eq!(
            parse_forced("syn=fentry,ack=cgroup"),
            Ok(Forced {
                syn: Some(Method::Fentry),
                ack: Some(Method::Cgroup)
            })
        );
        assert_eq!(
            parse_forced("ack=cgroup"),
            Ok(Forced {
                syn: None,
                ack: Some(Method::Cgroup)
            })
        );
        for bad in ["", "x", "syn=x", "foo=kprobe", ","] {
            assert!(parse_forced(bad).is_err(), "{bad}");
        }
    }
}
