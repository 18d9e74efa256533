//! The kernel layout the programs need, resolved from the running kernel at start: struct
//! offsets from BTF, enum values from BTF, tracepoint field offsets from tracefs formats.
//! Rust eBPF has no CO-RE relocations (aya issue 349), so nothing here may be hard-coded.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use lqtrace_common::{Config, MIB_COUNT, MIB_ENUM_NAMES};

use super::{btf::Btf, tracefs};

/// Offset of `path` in `ty`, checking the field has the size the programs read.
fn field(btf: &Btf, ty: &str, path: &str, size: u32) -> Result<u32> {
    let m = btf
        .member(ty, path)
        .with_context(|| format!("kernel BTF: struct {ty} has no usable member {path}"))?;
    if m.size != size {
        bail!(
            "kernel BTF: {ty}.{path} is {} bytes, lqtrace reads {size}: unsupported layout",
            m.size
        );
    }
    Ok(m.offset)
}

fn enum_u32(btf: &Btf, name: &str) -> Result<u32> {
    let v = btf
        .enum_value(name)
        .with_context(|| format!("kernel BTF has no enumerator {name}"))?;
    u32::try_from(v).with_context(|| format!("kernel BTF: {name} = {v} is out of range"))
}

fn tp_field(fmt: &tracefs::Format, name: &str, size: u32) -> Result<u32> {
    let f = fmt.field(name)?;
    if f.size != size {
        bail!(
            "tracepoint {}: field {name} is {} bytes, expected {size}",
            fmt.name,
            f.size
        );
    }
    Ok(f.offset)
}

pub fn resolve(btf: &Btf, tracefs_root: &Path) -> Result<Config> {
    let mut c = Config {
        ready: 1,
        ..Config::default()
    };
    c.tcp_listen = enum_u32(btf, "TCP_LISTEN")?;
    c.tcp_close = enum_u32(btf, "TCP_CLOSE")?;
    c.sk_state = field(btf, "sock", "__sk_common.skc_state", 1)?;
    c.sk_net = field(btf, "sock", "__sk_common.skc_net", 8)?;
    c.sk_ack_backlog = field(btf, "sock", "sk_ack_backlog", 4)?;
    c.sk_max_ack_backlog = field(btf, "sock", "sk_max_ack_backlog", 4)?;
    c.sk_socket = field(btf, "sock", "sk_socket", 8)?;
    // struct sock is the first member of inet_connection_sock (via inet_sock), so offsets from
    // the inet_connection_sock start are offsets from the sock pointer.
    c.icsk_qlen = field(btf, "inet_connection_sock", "icsk_accept_queue.qlen", 4)?;
    let socket = btf
        .member("socket_alloc", "socket")
        .context("kernel BTF: socket_alloc.socket")?;
    let ino = field(btf, "socket_alloc", "vfs_inode.i_ino", 8)?;
    c.socket_ino = ino
        .checked_sub(socket.offset)
        .context("socket_alloc layout")?;
    c.net_inum = field(btf, "net", "ns.inum", 4)?;
    c.net_mib_stats = field(btf, "net", "mib.net_statistics", 8)?;
    c.net_somaxconn = field(btf, "net", "core.sysctl_somaxconn", 4)?;
    // A flexible array member (size 0 in BTF): only its offset matters.
    c.bpf_array_pptrs = btf
        .member("bpf_array", "pptrs")
        .context("kernel BTF: struct bpf_array has no pptrs")?
        .offset;
    for (slot, name) in c.mib.iter_mut().zip(MIB_ENUM_NAMES) {
        *slot = enum_u32(btf, name)?;
    }
    debug_assert_eq!(c.mib.len(), MIB_COUNT);
    // For the function-probe variants, which read the packet from the skb.
    c.skb_head = field(btf, "sk_buff", "head", 8)?;
    c.skb_network_header = field(btf, "sk_buff", "network_header", 2)?;
    c.skb_transport_header = field(btf, "sk_buff", "transport_header", 2)?;
    c.skb_protocol = field(btf, "sk_buff", "protocol", 2)?;
    check_raw_tracepoint(btf, "consume_skb")?;
    check_raw_tracepoint(btf, "kfree_skb")?;

    let enter = tracefs::read_format(tracefs_root, "syscalls", "sys_enter_listen")?;
    c.tp_listen_fd = tp_field(&enter, "fd", 8)?;
    c.tp_listen_backlog = tp_field(&enter, "backlog", 8)?;
    let exit = tracefs::read_format(tracefs_root, "syscalls", "sys_exit_listen")?;
    c.tp_exit_ret = tp_field(&exit, "ret", 8)?;
    let state = tracefs::read_format(tracefs_root, "sock", "inet_sock_set_state")?;
    c.tp_state_skaddr = tp_field(&state, "skaddr", 8)?;
    c.tp_state_oldstate = tp_field(&state, "oldstate", 4)?;
    c.tp_state_newstate = tp_field(&state, "newstate", 4)?;
    c.tp_state_sport = tp_field(&state, "sport", 2)?;
    c.tp_state_family = tp_field(&state, "family", 2)?;
    c.tp_state_protocol = tp_field(&state, "protocol", 2)?;
    Ok(c)
}

/// The raw tracepoint programs read the skb from argument 0: make sure that is what the running
/// kernel passes (`btf_trace_<name>` is `void (*)(void *, struct sk_buff *, ...)`).
fn check_raw_tracepoint(btf: &Btf, name: &str) -> Result<()> {
    let typedef = format!("btf_trace_{name}");
    let params = btf
        .func_params(&typedef)
        .with_context(|| format!("kernel BTF has no {typedef}"))?;
    match params.get(1) {
        Some((_, ty)) if ty.contains("sk_buff") => Ok(()),
        other => {
            bail!("raw tracepoint {name}: first argument is {other:?}, expected struct sk_buff *")
        }
    }
}

/// Positions of the `struct sock *` and `struct sk_buff *` parameters of `func`, by type (names
/// vary across versions). None when the function is absent or the prototype is unexpected.
pub fn sk_skb_args(btf: &Btf, func: &str) -> Option<(u32, u32)> {
    let params = btf.func_params(func).ok()?;
    let pos = |ty: &str| params.iter().position(|(_, t)| t == ty).map(|p| p as u32);
    let sk = pos("struct sock *")?;
    let skb = pos("struct sk_buff *")?;
    (sk < 6 && skb < 6).then_some((sk, skb))
}

/// For each function the probe variants hook: None when it exists in BTF with `sk` and `skb` at
/// the positions compiled into the programs (`lqtrace_common::PROBE_ARGS`), else why not.
pub fn probe_functions(btf: &Btf) -> std::collections::HashMap<String, Option<String>> {
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
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooked_functions_are_the_ones_with_compiled_argument_positions() {
        for v in crate::bpf::hooks::VARIANTS {
            for f in v.functions {
                assert!(
                    lqtrace_common::PROBE_ARGS
                        .iter()
                        .any(|(name, _, _)| name == f),
                    "{f} missing from PROBE_ARGS"
                );
            }
        }
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
