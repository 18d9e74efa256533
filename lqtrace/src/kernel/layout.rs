//! The kernel layout the programs need, resolved from the running kernel's BTF at start: struct
//! member offsets, enum values, and the fields of the tracepoint records they read. Rust eBPF
//! has no CO-RE relocations (aya issue 349), so nothing here may be hard-coded.
//!
//! A classic tracepoint program gets a pointer to the record the kernel writes, and that record
//! is a C struct in BTF, the one the tracefs `format` file is generated from:
//! - `TRACE_EVENT(e, ...)` writes `struct trace_event_raw_e` (include/trace/trace_events.h). An
//!   event made with `DEFINE_EVENT(class, e, ...)` writes its class's struct instead: e.g.
//!   `tcp:tcp_send_reset` is `trace_event_raw_tcp_event_sk_skb` on 5.10 and 6.1 and has its own
//!   `trace_event_raw_tcp_send_reset` (with `reason`) from 6.10 on ("tcp: fully support
//!   trace_tcp_send_reset", which also made it fire without a socket). [`Record::structs`] lists
//!   the structs a record may be; for tcp_send_reset only the own struct will do, and its
//!   absence is no error, just `Config::tp_reset_full` = 0 (the reset stage uses a function
//!   probe instead).
//! - `syscalls:sys_enter_*` writes `struct syscall_trace_enter { struct trace_entry ent; int nr;
//!   unsigned long args[]; }` and `sys_exit_*` `struct syscall_trace_exit { ...; long ret; }`
//!   (kernel/trace/trace.h): every argument takes one `unsigned long` whatever its C type
//!   (`syscall_enter_define_fields()` in kernel/trace/trace_syscalls.c), so listen()'s `fd` is
//!   `args[0]` and `backlog` is `args[1]`.
//!
//! These structs are in the BTF of every kernel lqtrace is tested on (Debian 5.10, 6.1, 6.12,
//! 7.2 in the VM matrix, 6.18 on the host), with the offsets the `format` files give (a test
//! compares them on the running kernel), so tracefs is not read for layouts at all.

use anyhow::{Context as _, Result, bail};
use lqtrace_common::{Config, MIB_COUNT, MIB_ENUM_NAMES};

use super::btf::Btf;

/// The record a tracepoint writes: the BTF structs it may be laid out as, in order of
/// preference (the first one the kernel has is the layout).
struct Record {
    tracepoint: &'static str,
    structs: &'static [&'static str],
}

const SYS_ENTER: Record = Record {
    tracepoint: "syscalls:sys_enter_*",
    structs: &["syscall_trace_enter"],
};
const SYS_EXIT: Record = Record {
    tracepoint: "syscalls:sys_exit_*",
    structs: &["syscall_trace_exit"],
};
const TCP_SEND_RESET: Record = Record {
    tracepoint: "tcp:tcp_send_reset",
    structs: &["trace_event_raw_tcp_send_reset"],
};

/// Offset of `path` in the record of `rec`, checking it has the size the programs read.
fn tp_field(btf: &Btf, rec: &Record, path: &str, size: u32) -> Result<u32> {
    let Some(ty) = rec.structs.iter().find(|s| btf.has_struct(s)) else {
        bail!(
            "kernel BTF has no struct {} (the record of tracepoint {})",
            rec.structs.join(" or struct "),
            rec.tracepoint
        );
    };
    field(btf, ty, path, size)
}

/// Offset of `path` in `ty`, checking the field has the size the programs read.
fn field(btf: &Btf, ty: &str, path: &str, size: u32) -> Result<u32> {
    let m = btf.member(ty, path)?;
    if m.size != size {
        bail!(
            "kernel BTF: {ty}.{path} is {} bytes, lqtrace reads {size}: unsupported layout",
            m.size
        );
    }
    Ok(m.offset)
}

fn enum_u32(btf: &Btf, name: &str) -> Result<u32> {
    let v = btf.enum_value(name)?;
    u32::try_from(v).with_context(|| format!("kernel BTF: {name} = {v} is out of range"))
}

pub fn resolve(btf: &Btf) -> Result<Config> {
    let mut c = Config {
        ready: 1,
        ..Config::default()
    };
    c.tcp_listen = enum_u32(btf, "TCP_LISTEN")?;
    c.tcp_close = enum_u32(btf, "TCP_CLOSE")?;
    c.tcp_syn_recv = enum_u32(btf, "TCP_SYN_RECV")?;
    c.sk_state = field(btf, "sock", "__sk_common.skc_state", 1)?;
    c.sk_net = field(btf, "sock", "__sk_common.skc_net", 8)?;
    c.sk_ack_backlog = field(btf, "sock", "sk_ack_backlog", 4)?;
    c.sk_max_ack_backlog = field(btf, "sock", "sk_max_ack_backlog", 4)?;
    c.sk_socket = field(btf, "sock", "sk_socket", 8)?;
    c.sk_num = field(btf, "sock", "__sk_common.skc_num", 2)?;
    c.sk_protocol = field(btf, "sock", "sk_protocol", 2)?;
    c.sk_family = field(btf, "sock", "__sk_common.skc_family", 2)?;
    c.sk_rcv_saddr = field(btf, "sock", "__sk_common.skc_rcv_saddr", 4)?;
    // Absent without CONFIG_IPV6: the programs then read no IPv6 address (none can exist).
    c.sk_v6_rcv_saddr = field(btf, "sock", "__sk_common.skc_v6_rcv_saddr", 16).unwrap_or(0);
    // struct sock is the first member of inet_sock: an offset from the sock pointer.
    c.sk_inet_sport = field(btf, "inet_sock", "inet_sport", 2)?;
    // struct sock is the first member of inet_connection_sock (via inet_sock), so offsets from
    // the inet_connection_sock start are offsets from the sock pointer.
    c.icsk_qlen = field(btf, "inet_connection_sock", "icsk_accept_queue.qlen", 4)?;
    let socket = btf.member("socket_alloc", "socket")?;
    let ino = field(btf, "socket_alloc", "vfs_inode.i_ino", 8)?;
    c.socket_ino = ino
        .checked_sub(socket.offset)
        .context("socket_alloc layout")?;
    c.socket_sk = field(btf, "socket", "sk", 8)?;
    c.net_inum = field(btf, "net", "ns.inum", 4)?;
    c.net_mib_stats = field(btf, "net", "mib.net_statistics", 8)?;
    c.net_somaxconn = field(btf, "net", "core.sysctl_somaxconn", 4)?;
    // A flexible array member (size 0 in BTF): only its offset matters.
    c.bpf_array_pptrs = btf.member("bpf_array", "pptrs")?.offset;
    for (slot, name) in c.mib.iter_mut().zip(MIB_ENUM_NAMES) {
        *slot = enum_u32(btf, name)?;
    }
    debug_assert_eq!(c.mib.len(), MIB_COUNT);
    // `struct linux_mib { unsigned long mibs[LINUX_MIB_MAX]; }`: the runs stay inside it.
    let mib_max = enum_u32(btf, "__LINUX_MIB_MAX")?;
    if let Some(i) = c.mib.iter().position(|&v| v >= mib_max) {
        bail!(
            "kernel BTF: {} = {} is not below __LINUX_MIB_MAX = {mib_max}",
            MIB_ENUM_NAMES[i],
            c.mib[i]
        );
    }
    (c.mib_runs, c.mib_run_start, c.mib_pos) = lqtrace_common::mib_runs(&c.mib, mib_max);
    // The accept syscall variant: from the current task to the socket behind an fd.
    c.task_files = field(btf, "task_struct", "files", 8)?;
    c.files_fdt = field(btf, "files_struct", "fdt", 8)?;
    c.fdt_max_fds = field(btf, "fdtable", "max_fds", 4)?;
    c.fdt_fd = field(btf, "fdtable", "fd", 8)?;
    c.file_private_data = field(btf, "file", "private_data", 8)?;
    // For the programs that read the packet from the skb.
    c.skb_head = field(btf, "sk_buff", "head", 8)?;
    c.skb_network_header = field(btf, "sk_buff", "network_header", 2)?;
    c.skb_transport_header = field(btf, "sk_buff", "transport_header", 2)?;
    c.skb_protocol = field(btf, "sk_buff", "protocol", 2)?;
    c.skb_dev = field(btf, "sk_buff", "dev", 8)?;
    c.dev_nd_net = field(btf, "net_device", "nd_net.net", 8)?;
    check_raw_tracepoint(btf, "consume_skb")?;
    check_raw_tracepoint(btf, "kfree_skb")?;
    check_state_tracepoint(btf)?;

    c.tp_sys_arg0 = tp_field(btf, &SYS_ENTER, "args[0]", 8)?;
    c.tp_sys_arg1 = tp_field(btf, &SYS_ENTER, "args[1]", 8)?;
    c.tp_sys_ret = tp_field(btf, &SYS_EXIT, "ret", 8)?;
    if let Ok([skb, sk, st, reason]) = reset_tracepoint(btf) {
        c.tp_reset_full = 1;
        (c.tp_reset_skbaddr, c.tp_reset_skaddr) = (skb, sk);
        (c.tp_reset_state, c.tp_reset_reason) = (st, reason);
    }
    c.accept_args = accept_args(btf).unwrap_or(0);
    c.send_reset_args = btf
        .func_params("tcp_v4_send_reset")
        .map_or(0, |p| p.len() as u32);
    Ok(c)
}

/// Offsets of `skbaddr`, `skaddr`, `state` and `reason` in the record of `tcp:tcp_send_reset`,
/// or why the reset tracepoint variant cannot be used on this kernel.
pub fn reset_tracepoint(btf: &Btf) -> Result<[u32; 4]> {
    let rec = &TCP_SEND_RESET;
    let reason = tp_field(btf, rec, "reason", 4).context(
        "tcp:tcp_send_reset has no record of its own with a reason (Linux < 6.10): it does not fire for a segment without a socket",
    )?;
    Ok([
        tp_field(btf, rec, "skbaddr", 8)?,
        tp_field(btf, rec, "skaddr", 8)?,
        tp_field(btf, rec, "state", 4)?,
        reason,
    ])
}

/// Parameter count of `inet_csk_accept` (4 before Linux 6.10, 2 since: `flags, err, kern`
/// became `struct proto_accept_arg *`), checking that the listener comes first.
pub fn accept_args(btf: &Btf) -> Result<u32> {
    let f = lqtrace_common::ACCEPT_FUNCTION;
    let params = btf.func_params(f)?;
    match params.first().map(String::as_str) {
        Some("struct sock *") => Ok(params.len() as u32),
        other => bail!("{f}(): first parameter is {other:?}, expected struct sock *"),
    }
}

/// The raw tracepoint programs read the skb from argument 0: make sure that is what the running
/// kernel passes (`btf_trace_<name>` is `void (*)(void *, struct sk_buff *, ...)`).
fn check_raw_tracepoint(btf: &Btf, name: &str) -> Result<()> {
    let typedef = format!("btf_trace_{name}");
    let params = btf
        .func_params(&typedef)
        .with_context(|| format!("kernel BTF has no {typedef}"))?;
    match params.get(1) {
        Some(ty) if ty == "struct sk_buff *" => Ok(()),
        other => {
            bail!("raw tracepoint {name}: first argument is {other:?}, expected struct sk_buff *")
        }
    }
}

/// The `sock_state` raw tracepoint program reads (sk, oldstate, newstate) from its arguments
/// (`btf_trace_inet_sock_set_state` is `void (*)(void *, const struct sock *, int, int)`).
fn check_state_tracepoint(btf: &Btf) -> Result<()> {
    let typedef = "btf_trace_inet_sock_set_state";
    let params = btf
        .func_params(typedef)
        .with_context(|| format!("kernel BTF has no {typedef}"))?;
    let p: Vec<&str> = params.iter().map(String::as_str).collect();
    match p.as_slice() {
        [_, sk, old, new]
            if sk.ends_with("struct sock *") && old.ends_with("int") && new.ends_with("int") =>
        {
            Ok(())
        }
        _ => bail!(
            "raw tracepoint inet_sock_set_state: arguments {p:?}, expected (struct sock *, int, int)"
        ),
    }
}

/// Positions of the `struct sock *` and `struct sk_buff *` parameters of `func`, by type (names
/// vary across versions). None when the function is absent or the prototype is unexpected.
pub fn sk_skb_args(btf: &Btf, func: &str) -> Option<(u32, u32)> {
    let params = btf.func_params(func).ok()?;
    let pos = |ty: &[&str]| {
        params
            .iter()
            .position(|t| ty.contains(&t.as_str()))
            .map(|p| p as u32)
    };
    let sk = pos(&["struct sock *", "const struct sock *"])?;
    let skb = pos(&["struct sk_buff *"])?;
    (sk < 6 && skb < 6).then_some((sk, skb))
}

/// For each function the probe variants hook: None when it exists in BTF with `sk` and `skb` at
/// the positions compiled into the programs (`lqtrace_common::PROBE_ARGS`; for
/// `inet_csk_accept`, the listener first), else why not.
pub fn probe_functions(btf: &Btf) -> std::collections::HashMap<String, Option<String>> {
    let accept = lqtrace_common::ACCEPT_FUNCTION;
    let accept_why = if btf.has_func(accept) {
        accept_args(btf).err().map(|e| e.to_string())
    } else {
        Some(format!("{accept}() is not in the kernel BTF"))
    };
    lqtrace_common::PROBE_ARGS
        .iter()
        .map(|&(f, sk, skb)| {
            let why = if !btf.has_func(f) {
                Some(format!("{f}() is not in the kernel BTF"))
            } else {
                match sk_skb_args(btf, f) {
                    Some(found) if found == (sk, skb) => None,
                    found => Some(format!(
                        "{f}(): sk/skb arguments at {found:?} in this kernel, lqtrace's programs expect ({sk}, {skb})"
                    )),
                }
            };
            (f.to_string(), why)
        })
        .chain([(accept.to_string(), accept_why)])
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn hooked_functions_are_the_ones_with_compiled_argument_positions() {
        for v in crate::bpf::hooks::VARIANTS {
            for f in v.functions {
                assert!(
                    lqtrace_common::PROBE_ARGS
                        .iter()
                        .any(|(name, _, _)| name == f)
                        || *f == lqtrace_common::ACCEPT_FUNCTION,
                    "{f} missing from PROBE_ARGS"
                );
            }
        }
    }

    /// `field:TYPE NAME;\toffset:N;\tsize:N;...` of `name` in a tracefs format file.
    fn format_field(format: &str, name: &str) -> Option<(u32, u32)> {
        let line = format.lines().find(|l| {
            let decl = l
                .trim()
                .strip_prefix("field:")
                .and_then(|f| f.split(';').next());
            // `__u8 saddr[4]`: the name without its array length.
            let last = decl.and_then(|d| d.split_whitespace().last());
            last.is_some_and(|n| n.split('[').next() == Some(name))
        })?;
        let number = |key: &str| line.split(key).nth(1)?.split(';').next()?.parse().ok();
        Some((number("offset:")?, number("size:")?))
    }

    /// On the running kernel, the offsets from the BTF record structs are the ones its tracefs
    /// `format` files give (the files the kernel generates from the same structs).
    #[test]
    fn tracepoint_offsets_match_the_tracefs_formats() {
        let path = Path::new(crate::kernel::preflight::DEFAULT_BTF);
        let (Ok(btf), Ok(root)) = (Btf::from_file(path), crate::kernel::tracefs::root()) else {
            eprintln!("skipped: no readable {} or no tracefs", path.display());
            return;
        };
        let c = resolve(&btf).unwrap_or_else(|e| panic!("{e:#}"));
        let mut cases = vec![
            ("syscalls/sys_enter_listen", "fd", c.tp_sys_arg0, 8),
            ("syscalls/sys_enter_listen", "backlog", c.tp_sys_arg1, 8),
            ("syscalls/sys_exit_listen", "ret", c.tp_sys_ret, 8),
            ("syscalls/sys_enter_accept4", "fd", c.tp_sys_arg0, 8),
            ("syscalls/sys_exit_accept4", "ret", c.tp_sys_ret, 8),
        ];
        if c.tp_reset_full == 1 {
            cases.extend([
                ("tcp/tcp_send_reset", "skbaddr", c.tp_reset_skbaddr, 8),
                ("tcp/tcp_send_reset", "skaddr", c.tp_reset_skaddr, 8),
                ("tcp/tcp_send_reset", "state", c.tp_reset_state, 4),
                ("tcp/tcp_send_reset", "reason", c.tp_reset_reason, 4),
            ]);
        }
        for (event, name, offset, size) in cases {
            let file = root.join("events").join(event).join("format");
            let format = std::fs::read_to_string(&file).unwrap();
            assert_eq!(
                format_field(&format, name),
                Some((offset, size)),
                "{event} {name}: BTF says offset {offset}"
            );
        }
    }

    #[test]
    fn a_missing_record_struct_is_named() {
        let btf = Btf::from_file(Path::new(crate::kernel::preflight::DEFAULT_BTF));
        let Ok(btf) = btf else { return };
        let rec = Record {
            tracepoint: "x:y",
            structs: &["trace_event_raw_nope", "trace_event_raw_nope2"],
        };
        let err = tp_field(&btf, &rec, "skaddr", 8).unwrap_err().to_string();
        assert_eq!(
            err,
            "kernel BTF has no struct trace_event_raw_nope or struct trace_event_raw_nope2 (the record of tracepoint x:y)"
        );
        let err = tp_field(&btf, &SYS_ENTER, "args[0]", 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is 8 bytes, lqtrace reads 4"), "{err}");
    }

    /// On the running kernel (when its BTF is readable), the compiled positions match.
    #[test]
    fn compiled_argument_positions_match_the_running_kernel() {
        let path = Path::new(crate::kernel::preflight::DEFAULT_BTF);
        let Ok(btf) = Btf::from_file(path) else {
            eprintln!("skipped: no readable {}", path.display());
            return;
        };
        for (f, why) in probe_functions(&btf) {
            assert!(why.is_none(), "{f}: {why:?}");
        }
    }
}
