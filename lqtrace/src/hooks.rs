//! The one table of what lqtrace attaches, and which drop kind each hook serves.
//!
//! Every drop kind is observed the same way on this design: a before/after reading of the
//! listener's per-CPU SNMP counters around the packet (see lqtrace-ebpf/src/bracket.rs). The
//! table names, for each program, its attach point and the kernel behaviour it relies on, so
//! that a kernel where one of them is missing fails with a message that says what is missing.

/// How a program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// cgroup_skb ingress on the root of the cgroup v2 hierarchy (all sockets of the host).
    CgroupIngress,
    /// Raw tracepoint by name.
    RawTracepoint(&'static str),
    /// Classic tracepoint (category, name).
    Tracepoint(&'static str, &'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Hook {
    /// Program name in the eBPF object.
    pub program: &'static str,
    pub attach: Attach,
    /// What the program does for the drop kinds.
    pub role: &'static str,
    /// The kernel function or behaviour the hook depends on.
    pub relies_on: &'static str,
}

/// In attach order: the "after" hooks and listener bookkeeping first, the cgroup "before" hook
/// last, so no bracket is opened that cannot be closed.
pub const HOOKS: &[Hook] = &[
    Hook {
        program: "skb_consumed",
        attach: Attach::RawTracepoint("consume_skb"),
        role: "after: end of a SYN's processing (accepted or dropped)",
        relies_on: "tcp_rcv_state_process() consumes the SYN with consume_skb() after conn_request",
    },
    Hook {
        program: "skb_dropped",
        attach: Attach::RawTracepoint("kfree_skb"),
        role: "after: end of a dropped final ACK / syncookie ACK",
        relies_on: "tcp_v4_rcv()/tcp_v6_rcv() and cookie_v4_check() free the dropped ACK with kfree_skb_reason()",
    },
    Hook {
        program: "listen_enter",
        attach: Attach::Tracepoint("syscalls", "sys_enter_listen"),
        role: "listeners: backlog requested in listen()",
        relies_on: "CONFIG_FTRACE_SYSCALLS",
    },
    Hook {
        program: "listen_exit",
        attach: Attach::Tracepoint("syscalls", "sys_exit_listen"),
        role: "listeners: listen() on an already listening socket (backlog change)",
        relies_on: "CONFIG_FTRACE_SYSCALLS",
    },
    Hook {
        program: "sock_state",
        attach: Attach::Tracepoint("sock", "inet_sock_set_state"),
        role: "listeners: socket enters/leaves TCP_LISTEN, in the caller of listen()",
        relies_on: "inet_csk_listen_start() sets TCP_LISTEN in process context",
    },
    Hook {
        program: "listener_rx",
        attach: Attach::CgroupIngress,
        role: "before: a listener is about to process a SYN / final ACK / syncookie ACK",
        relies_on: "tcp_filter() -> sk_filter_trim_cap() runs cgroup ingress programs with skb->sk = the listener",
    },
];

/// Drop kinds and the counters that identify them, for `-v` and the README.
pub const DROP_KINDS: &[(&str, &str, &str)] = &[
    ("syn_accept_queue_full", "listener_rx + skb_consumed", "ListenDrops + ListenOverflows"),
    ("syn_queue_full", "listener_rx + skb_consumed", "ListenDrops + TCPReqQFullDrop"),
    ("syn_other", "listener_rx + skb_consumed", "ListenDrops alone"),
    ("ack_accept_queue_full", "listener_rx + skb_dropped", "ListenDrops + ListenOverflows"),
    (
        "ack_syncookie_accept_queue_full",
        "listener_rx + skb_dropped",
        "ListenDrops + ListenOverflows + SyncookiesRecv",
    ),
    ("syncookie (not a drop)", "listener_rx + skb_consumed", "TCPReqQFullDoCookies"),
];

pub fn describe(attach: Attach) -> String {
    match attach {
        Attach::CgroupIngress => "cgroup_skb/ingress (root cgroup v2)".to_string(),
        Attach::RawTracepoint(name) => format!("raw_tp/{name}"),
        Attach::Tracepoint(cat, name) => format!("tracepoint/{cat}/{name}"),
    }
}

/// The table as text lines, for `-v`.
pub fn table() -> Vec<String> {
    let mut lines = vec![format!("{:<14} {:<40} {}", "PROGRAM", "ATTACH", "ROLE")];
    for h in HOOKS {
        lines.push(format!("{:<14} {:<40} {}", h.program, describe(h.attach), h.role));
    }
    lines.push(format!("{:<32} {:<28} {}", "DROP KIND", "HOOKS", "COUNTERS THAT MOVE"));
    for (kind, hooks, counters) in DROP_KINDS {
        lines.push(format!("{kind:<32} {hooks:<28} {counters}"));
    }
    lines
}
