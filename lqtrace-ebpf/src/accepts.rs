//! Accept activity per listener (`ACCEPT_STATS`, see `lqtrace_common::accepts`): arrivals (a
//! child created during one of the listener's brackets, `arrival`, from `lifecycle.rs`) and
//! accepts (`accepted`), plus the accept-queue wait of each child (`CHILDREN`: when it was
//! queued). Accepts are seen by one of three variants (the loader picks one, `bpf/hooks.rs`):
//! - "fentry": fexit `inet_csk_accept()` — every TCP accept, whatever called it;
//! - "kprobe": kprobe/kretprobe `inet_csk_accept()`, paired through a per-CPU slot
//!   (`maps::AcceptSlot`) — the same paths;
//! - "syscalls": `syscalls:sys_{enter,exit}_accept{,4}` — only accept(2)/accept4(2) (not
//!   io_uring's IORING_OP_ACCEPT, not in-kernel `kernel_accept()` users, not 32-bit compat
//!   syscalls, which do not fire these tracepoints). The sockets are found from the file
//!   descriptors: current task → files → fdtable → file → private_data (`struct socket`) → sk.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns},
    macros::{fexit, kprobe, kretprobe, tracepoint},
    programs::{FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use lqtrace_common::{
    BracketRecord, STAT_ACCEPT_STATS_FULL,
    accepts::{AcceptStats, ChildEntry, WAIT_BUCKETS},
    clients::PortKey,
};

use crate::{
    kernel::{
        atomic_add32, atomic_add64, read_u16, read_u32, read_u64, sock_ino, sock_netns, sock_state,
    },
    maps::{
        ACCEPT_SLOT, ACCEPT_STATS, AcceptCall, CHILDREN, REFUSED_PORTS, SCRATCH, config, stat_add,
    },
};

const SECOND_NS: u64 = 1_000_000_000;
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;
const IPPROTO_TCP: u16 = 6;

/// The listener's entry, created (with its netns, port and inode) if it has none yet.
#[inline(always)]
fn stats_of(listener: u64) -> Option<*mut AcceptStats> {
    if let Some(p) = ACCEPT_STATS.get_ptr_mut(&listener) {
        return Some(p);
    }
    let s = SCRATCH.get_ptr_mut(0)?;
    let netns = sock_netns(listener);
    let lport = read_u16(listener + config!(sk_num) as u64).unwrap_or(0);
    unsafe {
        (*s).stats = AcceptStats {
            netns,
            lport,
            sock_ino: sock_ino(listener),
            ..AcceptStats::default()
        };
    }
    match ACCEPT_STATS.insert(&listener, unsafe { &(*s).stats }, BPF_NOEXIST) {
        Ok(()) => {
            // A listener bound to port 0 had no port yet when it entered TCP_LISTEN: watch its
            // port for refusals from its first connection on.
            if lport != 0 {
                let key = PortKey {
                    netns,
                    port: lport,
                    _pad: 0,
                };
                let _ = REFUSED_PORTS.insert(&key, &1u8, BPF_ANY);
            }
        }
        Err(e) if e == -EEXIST => {}
        Err(_) => {
            stat_add(STAT_ACCEPT_STATS_FULL, 1);
            return None;
        }
    }
    ACCEPT_STATS.get_ptr_mut(&listener)
}

/// A child socket entered `listener`'s accept queue (the handshake completed).
#[inline(always)]
pub fn arrival(listener: u64, child: u64, now: u64) {
    if let Some(s) = stats_of(listener) {
        unsafe {
            atomic_add64(&raw mut (*s).arrivals, 1);
            (*s).last_arrival_ns = now;
        }
    }
    let entry = ChildEntry {
        queued_ns: now,
        listener,
    };
    let _ = CHILDREN.insert(&child, &entry, BPF_ANY);
}

/// `child` was accepted from `listener` (0: the listener it was queued at, if seen).
#[inline(always)]
fn accepted(listener: u64, child: u64) {
    if config!(ready) == 0 || child == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let queued = unsafe { CHILDREN.get(&child) }.copied();
    if queued.is_some() {
        let _ = CHILDREN.remove(&child);
    }
    let listener = match (listener, queued) {
        (0, Some(q)) => q.listener,
        (0, None) => return,
        (l, _) => l,
    };
    let Some(s) = stats_of(listener) else {
        return;
    };
    unsafe {
        atomic_add64(&raw mut (*s).accepts, 1);
        (*s).last_accept_ns = now;
        let age = now.wrapping_sub((*s).window_start_ns);
        if age >= SECOND_NS {
            (*s).prev_window_accepts = if age < 2 * SECOND_NS {
                (*s).window_accepts
            } else {
                0
            };
            (*s).window_accepts = 0;
            (*s).window_start_ns = now;
        }
        atomic_add32(&raw mut (*s).window_accepts, 1);
        if let Some(q) = queued {
            let bucket = wait_bucket(now.saturating_sub(q.queued_ns) / 1000);
            if let Some(slot) = (*s).wait_hist.get_mut(bucket) {
                atomic_add32(slot, 1);
            }
        }
    }
}

/// log2 bucket of a wait in µs (see `lqtrace_common::accepts::WAIT_BUCKETS`), by halving: no
/// count-leading-zeros instruction in BPF.
#[inline(always)]
fn wait_bucket(mut us: u64) -> usize {
    let mut b = 0usize;
    for _ in 0..WAIT_BUCKETS - 1 {
        us >>= 1;
        if us == 0 {
            break;
        }
        b += 1;
    }
    b
}

/// A drop record's view of its listener's accept activity (see the reading rule in
/// `lqtrace_common::accepts`).
#[inline(always)]
pub fn fill_drop(r: &mut BracketRecord, listener: u64) {
    let Some(s) = (unsafe { ACCEPT_STATS.get(&listener) }) else {
        return;
    };
    r.last_accept_ns = s.last_accept_ns;
    let age = r.ts_ns.wrapping_sub(s.window_start_ns);
    r.accepts_per_s = if age < SECOND_NS {
        s.prev_window_accepts
    } else if age < 2 * SECOND_NS {
        s.window_accepts
    } else {
        0
    };
}

// ---- variant "fentry": fexit inet_csk_accept(sk, ...) -> child -------------------------------
// The return value follows the arguments in the context, and the prototype changed in 6.10
// (`flags, err, kern` became one `struct proto_accept_arg *`): one program per prototype, the
// loader attaches the one that matches BTF (`Config::accept_args`).

#[fexit(function = "inet_csk_accept")]
pub fn accept_fexit(ctx: FExitContext) -> i32 {
    accepted(ctx.arg::<u64>(0), ctx.arg::<u64>(2));
    0
}

#[fexit(function = "inet_csk_accept")]
pub fn accept_fexit_old(ctx: FExitContext) -> i32 {
    accepted(ctx.arg::<u64>(0), ctx.arg::<u64>(4));
    0
}

// ---- variant "kprobe" ----------------------------------------------------------------------

#[kprobe(function = "inet_csk_accept")]
pub fn accept_kprobe(ctx: ProbeContext) -> u32 {
    if config!(ready) == 0 {
        return 0;
    }
    let call = AcceptCall {
        fd: -1,
        sk: ctx.arg::<u64>(0).unwrap_or(0),
    };
    call_entered(call);
    0
}

#[kretprobe(function = "inet_csk_accept")]
pub fn accept_kretprobe(ctx: RetProbeContext) -> u32 {
    // Not found (the thread slept and migrated): the child's arrival names the listener.
    let sk = call_returned().map_or(0, |c| c.sk);
    accepted(sk, ctx.ret::<u64>());
    0
}

/// Note the accept() call this thread enters (see `maps::AcceptSlot`).
#[inline(always)]
fn call_entered(call: AcceptCall) {
    if let Some(slot) = ACCEPT_SLOT.get_ptr_mut(0) {
        unsafe {
            (*slot).pid_tgid = bpf_get_current_pid_tgid();
            (*slot).call = call;
        }
    }
}

/// The call this thread entered on this CPU, if the slot still holds it.
#[inline(always)]
fn call_returned() -> Option<AcceptCall> {
    let slot = ACCEPT_SLOT.get_ptr_mut(0)?;
    let me = bpf_get_current_pid_tgid();
    unsafe {
        if (*slot).pid_tgid != me {
            return None;
        }
        (*slot).pid_tgid = 0;
        Some((*slot).call)
    }
}

// ---- variant "syscalls" --------------------------------------------------------------------

#[tracepoint(category = "syscalls", name = "sys_enter_accept")]
pub fn accept_enter(ctx: TracePointContext) -> u32 {
    syscall_enter(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept4")]
pub fn accept4_enter(ctx: TracePointContext) -> u32 {
    syscall_enter(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn accept_exit(ctx: TracePointContext) -> u32 {
    syscall_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn accept4_exit(ctx: TracePointContext) -> u32 {
    syscall_exit(&ctx);
    0
}

#[inline(always)]
fn syscall_enter(ctx: &TracePointContext) {
    if config!(ready) == 0 {
        return;
    }
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(config!(tp_sys_arg0) as usize) }) else {
        return;
    };
    call_entered(AcceptCall {
        fd: fd as i32 as i64,
        sk: 0,
    });
}

#[inline(always)]
fn syscall_exit(ctx: &TracePointContext) {
    // The listener's fd (-1: the call was not found). A plain integer: an Option of the call
    // kept across the helper calls below compiles to a read of an uninitialized register, which
    // the verifier rejects.
    let fd = call_returned().map_or(-1, |c| c.fd);
    let ret = unsafe { ctx.read_at::<i64>(config!(tp_sys_ret) as usize) }.unwrap_or(-1);
    if ret < 0 {
        return;
    }
    let Some(child) = sock_of_fd(ret) else {
        return;
    };
    // The listener the child was queued at, if its arrival was seen (`accepted` finds it);
    // else the one behind the fd accept() was called with, if it really is a TCP listener (the
    // same syscalls serve unix sockets). The fd walk costs more than the map lookup.
    let listener = if unsafe { CHILDREN.get(&child) }.is_some() {
        0
    } else {
        sock_of_fd(fd)
            .filter(|&sk| is_tcp_listener(sk))
            .unwrap_or(0)
    };
    accepted(listener, child);
}

/// The `struct sock *` behind file descriptor `fd` of the current task, if it is a socket
/// whose sock points back at it (a plain file's `private_data` is something else).
#[inline(always)]
fn sock_of_fd(fd: i64) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    let task = unsafe { bpf_get_current_task() };
    let files = read_u64(task + config!(task_files) as u64)?;
    let fdt = read_u64(files + config!(files_fdt) as u64)?;
    let max = read_u32(fdt + config!(fdt_max_fds) as u64)?;
    if fd as u64 >= max as u64 {
        return None;
    }
    let array = read_u64(fdt + config!(fdt_fd) as u64)?;
    let file = read_u64(array + fd as u64 * 8)?;
    let socket = read_u64(file + config!(file_private_data) as u64)?;
    let sk = read_u64(socket + config!(socket_sk) as u64)?;
    if sk == 0 || read_u64(sk + config!(sk_socket) as u64)? != socket {
        return None;
    }
    Some(sk)
}

#[inline(always)]
fn is_tcp_listener(sk: u64) -> bool {
    sock_state(sk) == Some(config!(tcp_listen))
        && read_u16(sk + config!(sk_protocol) as u64) == Some(IPPROTO_TCP)
}
