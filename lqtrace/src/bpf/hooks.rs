//! The one table of hook variants: for each stage, the ways lqtrace can observe it, best first,
//! with the kernel functions each relies on. Variants of one stage produce the same records.
//!
//! Drop stages (every drop is missed without them: the tracer refuses to run uncovered):
//! - `syn`: SYN drops (syn_accept_queue_full, syn_queue_full, syn_other) and SYN cookies: the
//!   packet handled by `tcp_conn_request()`.
//! - `ack`: final-ACK drops (ack_accept_queue_full with or without RST,
//!   ack_syncookie_accept_queue_full): the packet handled by `tcp_check_req()` (request-socket
//!   path) or `cookie_v4_check()`/`cookie_v6_check()` (syncookie path).
//!
//! Both feed the same counter engine (lqtrace-ebpf/src/bracket.rs). Variants, best first:
//! fentry/fexit (cheapest, needs BPF trampolines), kprobe/kretprobe (needs CONFIG_KPROBES),
//! cgroup (cgroup_skb ingress + skb free tracepoints: no function hooks at all; the
//! development host's only option).
//!
//! Feature stages (without them lqtrace still records every drop, and says what it lacks):
//! - `accept`: accept activity per listener (drop records' `accepts_per_s`/`last_accept_ns`,
//!   the accept-queue wait; lqtrace-ebpf/src/accepts.rs). fentry = fexit `inet_csk_accept()`
//!   and kprobe = kprobe/kretprobe `inet_csk_accept()` see every TCP accept (accept(2),
//!   accept4(2), io_uring IORING_OP_ACCEPT, in-kernel `kernel_accept()`); syscalls =
//!   `sys_{enter,exit}_accept{,4}` misses io_uring, in-kernel and 32-bit compat accepts.
//! - `reset`: RSTs this host sends for a segment (lqtrace-ebpf/src/resets.rs): a listener's RST
//!   ends a client's attempt (`outcome` reset); a SYN with no listener is a `refused` record.
//!   tracepoint = `tcp:tcp_send_reset` (Linux >= 6.10, where it fires for a NULL socket and
//!   has the reason), fentry and kprobe = `tcp_v4_send_reset()`/`tcp_v6_send_reset()`.
//!
//! Arrivals and `connected` outcomes come from the `inet_sock_set_state` raw tracepoint (a
//! child socket is created), attached with the listener bookkeeping; `reset` outcomes of
//! `tcp_abort_on_overflow=1` drops from the bracket itself (EmbryonicRsts moved).

use std::{collections::BTreeMap, fmt};

use lqtrace_common::Config;

/// What a group of hooks observes. `syn` and `ack` are the packet stages of drop records
/// (`event::Stage`); `accept` and `reset` are the features above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Syn,
    Ack,
    Accept,
    Reset,
}

impl Stage {
    /// Every stage a variant is chosen for, in the order they are attached and shown.
    pub const HOOKED: [Stage; 4] = [Stage::Syn, Stage::Ack, Stage::Accept, Stage::Reset];
    /// The stages without which drops would be missed.
    pub const REQUIRED: [Stage; 2] = [Stage::Syn, Stage::Ack];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Syn => "syn",
            Stage::Ack => "ack",
            Stage::Accept => "accept",
            Stage::Reset => "reset",
        }
    }

    pub fn is_required(self) -> bool {
        Stage::REQUIRED.contains(&self)
    }
}

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
    /// A classic tracepoint of the kernel subsystem (reset stage: `tcp:tcp_send_reset`).
    Tracepoint,
    /// The syscall tracepoints (accept stage).
    Syscalls,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::Fentry,
        Variant::Kprobe,
        Variant::Cgroup,
        Variant::Tracepoint,
        Variant::Syscalls,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Fentry => "fentry",
            Variant::Kprobe => "kprobe",
            Variant::Cgroup => "cgroup",
            Variant::Tracepoint => "tracepoint",
            Variant::Syscalls => "syscalls",
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

/// A kernel property a variant needs beyond its functions' prototypes, read from the layout the
/// loader resolved (`Config`). A variant may come in several table entries for different
/// kernel generations (the same variant name): the loader takes the first that fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Nothing,
    /// `inet_csk_accept` has this many parameters (the fexit program reads the return value
    /// after them).
    AcceptArgs(u32),
    /// `tcp:tcp_send_reset` has its own record with `reason` (`Config::tp_reset_full`).
    FullResetTracepoint,
}

impl Needs {
    /// None when `config` has what is needed, else why not.
    pub fn check(self, config: &Config) -> Option<String> {
        match self {
            Needs::Nothing => None,
            Needs::AcceptArgs(n) if config.accept_args == n => None,
            Needs::AcceptArgs(n) => Some(format!(
                "{}() has {} parameters here, this program is for {n}",
                lqtrace_common::ACCEPT_FUNCTION,
                config.accept_args
            )),
            Needs::FullResetTracepoint if config.tp_reset_full == 1 => None,
            Needs::FullResetTracepoint => Some(
                "tcp:tcp_send_reset has no record of its own with a reason (Linux < 6.10): it does not fire for a segment without a socket"
                    .into(),
            ),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct VariantHooks {
    pub stage: Stage,
    pub variant: Variant,
    pub hooks: &'static [Hook],
    /// Kernel functions that must exist (BTF for fentry, kallsyms for kprobe).
    pub functions: &'static [&'static str],
    pub needs: Needs,
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

const fn v(
    stage: Stage,
    variant: Variant,
    hooks: &'static [Hook],
    functions: &'static [&'static str],
    needs: Needs,
    relies_on: &'static str,
) -> VariantHooks {
    VariantHooks {
        stage,
        variant,
        hooks,
        functions,
        needs,
        relies_on,
    }
}

const ACCEPT: &str = lqtrace_common::ACCEPT_FUNCTION;
const RESETS: &[&str] = &["tcp_v4_send_reset", "tcp_v6_send_reset"];

pub const VARIANTS: &[VariantHooks] = &[
    v(
        Stage::Syn,
        Variant::Fentry,
        &[
            h("syn_fentry", Attach::Fentry("tcp_conn_request")),
            h("syn_fexit", Attach::Fexit("tcp_conn_request")),
        ],
        &["tcp_conn_request"],
        Needs::Nothing,
        "BPF trampolines (fentry/fexit) on tcp_conn_request()",
    ),
    v(
        Stage::Syn,
        Variant::Kprobe,
        &[
            h("syn_kprobe", Attach::Kprobe("tcp_conn_request")),
            h("syn_kretprobe", Attach::Kretprobe("tcp_conn_request")),
        ],
        &["tcp_conn_request"],
        Needs::Nothing,
        "CONFIG_KPROBES; tcp_conn_request() not inlined",
    ),
    v(
        Stage::Syn,
        Variant::Cgroup,
        CGROUP_HOOKS,
        &[],
        Needs::Nothing,
        "cgroup v2 + cgroup_skb ingress (tcp_filter() runs it with skb->sk = the listener); tcp_rcv_state_process() consume_skb()s every SYN",
    ),
    v(
        Stage::Ack,
        Variant::Fentry,
        &[
            h("ack_fentry", Attach::Fentry("tcp_check_req")),
            h("ack_fexit", Attach::Fexit("tcp_check_req")),
            h("cookie4_fentry", Attach::Fentry("cookie_v4_check")),
            h("cookie4_fexit", Attach::Fexit("cookie_v4_check")),
            h("cookie6_fentry", Attach::Fentry("cookie_v6_check")),
            h("cookie6_fexit", Attach::Fexit("cookie_v6_check")),
        ],
        &["tcp_check_req", "cookie_v4_check", "cookie_v6_check"],
        Needs::Nothing,
        "BPF trampolines on tcp_check_req(), cookie_v4_check(), cookie_v6_check()",
    ),
    v(
        Stage::Ack,
        Variant::Kprobe,
        &[
            h("ack_kprobe", Attach::Kprobe("tcp_check_req")),
            h("ack_kretprobe", Attach::Kretprobe("tcp_check_req")),
            h("cookie4_kprobe", Attach::Kprobe("cookie_v4_check")),
            h("cookie4_kretprobe", Attach::Kretprobe("cookie_v4_check")),
            h("cookie6_kprobe", Attach::Kprobe("cookie_v6_check")),
            h("cookie6_kretprobe", Attach::Kretprobe("cookie_v6_check")),
        ],
        &["tcp_check_req", "cookie_v4_check", "cookie_v6_check"],
        Needs::Nothing,
        "CONFIG_KPROBES; tcp_check_req()/cookie_v4_check()/cookie_v6_check() not inlined",
    ),
    v(
        Stage::Ack,
        Variant::Cgroup,
        CGROUP_HOOKS,
        &[],
        Needs::Nothing,
        "cgroup v2 + cgroup_skb ingress; tcp_v4_rcv()/cookie_v4_check() kfree_skb() the dropped ACK",
    ),
    v(
        Stage::Accept,
        Variant::Fentry,
        &[h("accept_fexit", Attach::Fexit(ACCEPT))],
        &[ACCEPT],
        Needs::AcceptArgs(2),
        "BPF trampolines (fexit) on inet_csk_accept(sk, arg) (Linux >= 6.10); every TCP accept, io_uring and in-kernel ones included",
    ),
    v(
        Stage::Accept,
        Variant::Fentry,
        &[h("accept_fexit_old", Attach::Fexit(ACCEPT))],
        &[ACCEPT],
        Needs::AcceptArgs(4),
        "BPF trampolines (fexit) on inet_csk_accept(sk, flags, err, kern) (Linux < 6.10); every TCP accept, io_uring and in-kernel ones included",
    ),
    v(
        Stage::Accept,
        Variant::Kprobe,
        &[
            h("accept_kprobe", Attach::Kprobe(ACCEPT)),
            h("accept_kretprobe", Attach::Kretprobe(ACCEPT)),
        ],
        &[ACCEPT],
        Needs::Nothing,
        "CONFIG_KPROBES on inet_csk_accept(); every TCP accept, io_uring and in-kernel ones included",
    ),
    v(
        Stage::Accept,
        Variant::Syscalls,
        &[
            h(
                "accept_enter",
                Attach::Tracepoint("syscalls", "sys_enter_accept"),
            ),
            h(
                "accept4_enter",
                Attach::Tracepoint("syscalls", "sys_enter_accept4"),
            ),
            h(
                "accept_exit",
                Attach::Tracepoint("syscalls", "sys_exit_accept"),
            ),
            h(
                "accept4_exit",
                Attach::Tracepoint("syscalls", "sys_exit_accept4"),
            ),
        ],
        &[],
        Needs::Nothing,
        "syscall tracepoints of accept(2)/accept4(2); misses io_uring, in-kernel and 32-bit compat accepts",
    ),
    v(
        Stage::Reset,
        Variant::Tracepoint,
        &[h("reset_tp", Attach::Tracepoint("tcp", "tcp_send_reset"))],
        &[],
        Needs::FullResetTracepoint,
        "tcp:tcp_send_reset with its own record and reason (Linux >= 6.10: fires for a segment without a socket too)",
    ),
    v(
        Stage::Reset,
        Variant::Fentry,
        &[
            h("reset4_fentry", Attach::Fentry("tcp_v4_send_reset")),
            h("reset6_fentry", Attach::Fentry("tcp_v6_send_reset")),
        ],
        RESETS,
        Needs::Nothing,
        "BPF trampolines on tcp_v4_send_reset()/tcp_v6_send_reset() (no RST reason recorded)",
    ),
    v(
        Stage::Reset,
        Variant::Kprobe,
        &[
            h("reset4_kprobe", Attach::Kprobe("tcp_v4_send_reset")),
            h("reset6_kprobe", Attach::Kprobe("tcp_v6_send_reset")),
        ],
        RESETS,
        Needs::Nothing,
        "CONFIG_KPROBES; tcp_v4_send_reset()/tcp_v6_send_reset() not inlined",
    ),
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
    // A raw tracepoint: the classic one builds its trace record for every state change of
    // every socket before the program runs (lqtrace-ebpf/src/lifecycle.rs).
    h("sock_state", Attach::RawTracepoint("inet_sock_set_state")),
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
            // One row per attach point: a variant's entries for two kernel generations attach
            // their own program at the same point, and only one of them is loaded.
            if !out
                .iter()
                .any(|x| x.program == h.program || x.attach == h.attach)
            {
                out.push(*h);
            }
        }
    }
    out
}

/// What a stage's hooks observe, for `lqtrace check`: the drop reasons (JSON `reason` values)
/// of the drop stages; the record kinds and drop-record keys of the feature stages.
pub fn kinds(stage: Stage) -> Vec<&'static str> {
    let packet = match stage {
        Stage::Syn => crate::event::Stage::Syn,
        Stage::Ack => crate::event::Stage::Ack,
        Stage::Accept => return vec!["accepts_per_s", "last_accept_ms_ago", "accept_wait"],
        Stage::Reset => return vec!["outcome reset (listener RST)", "refused"],
    };
    crate::event::Reason::ALL
        .into_iter()
        .filter(|r| r.stage() == packet)
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

/// `--hooks` value: one variant for every stage that has it (`kprobe`), or per stage
/// (`syn=fentry,ack=cgroup,accept=syscalls,reset=tracepoint`). A forced stage tries only that
/// variant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forced(pub BTreeMap<Stage, Variant>);

impl Forced {
    pub fn get(&self, g: Stage) -> Option<Variant> {
        self.0.get(&g).copied()
    }
}

pub fn parse_forced(s: &str) -> Result<Forced, String> {
    let bad = |what: &str| {
        format!(
            "invalid --hooks `{what}`: use fentry, kprobe, cgroup, tracepoint or syscalls, optionally per stage: syn=kprobe,ack=cgroup,accept=syscalls,reset=tracepoint"
        )
    };
    let has = |stage: Stage, m: Variant| variants(stage).any(|v| v.variant == m);
    let mut f = Forced::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            None => {
                let m = Variant::parse(part).ok_or_else(|| bad(part))?;
                for stage in Stage::HOOKED.into_iter().filter(|&st| has(st, m)) {
                    f.0.insert(stage, m);
                }
            }
            Some((g, m)) => {
                let m = Variant::parse(m.trim()).ok_or_else(|| bad(part))?;
                let stage = Stage::HOOKED
                    .into_iter()
                    .find(|st| st.as_str() == g.trim())
                    .ok_or_else(|| bad(part))?;
                if !has(stage, m) {
                    return Err(format!(
                        "invalid --hooks `{part}`: the {} stage has no {m} variant",
                        stage.as_str()
                    ));
                }
                f.0.insert(stage, m);
            }
        }
    }
    if f == Forced::default() {
        return Err(bad(s));
    }
    Ok(f)
}

#[cfg(test)]
#[path = "hooks_tests.rs"]
mod tests;
