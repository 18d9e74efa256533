//! Listener lifecycle: listen() calls (which backlog a process asked for, and who called it)
//! and the state changes that make a socket a listener or end it.
//!
//! sys_enter_listen sees (fd, backlog) but not the socket; inet_sock_set_state(-> TCP_LISTEN)
//! sees the socket, in the context of the caller of listen() (inet_csk_listen_start), but not the
//! backlog. Joining the two by pid_tgid gives socket -> requested backlog. A second listen() on a
//! listening socket only changes the backlog (no state change): sys_exit_listen reports it with
//! the fd for userspace to resolve through /proc.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use lqtrace_common::{
    KIND_LISTEN, KIND_LISTEN_CLOSE, KIND_RELISTEN, ListenRecord, STAT_LOST_OTHER,
};

use crate::{
    kernel::{read_u32, read_u64},
    maps::{EVENTS, LISTEN_CALLS, ListenCall, config, stat_add},
};

const IPPROTO_TCP: u16 = 6;

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn listen_enter(ctx: TracePointContext) -> u32 {
    if config!(ready) == 0 {
        return 0;
    }
    // Syscall arguments are stored as 8-byte fields; listen() takes two ints.
    let fd = unsafe { ctx.read_at::<u64>(config!(tp_listen_fd) as usize) }.unwrap_or(u64::MAX);
    let backlog = unsafe { ctx.read_at::<u64>(config!(tp_listen_backlog) as usize) }.unwrap_or(0);
    let call = ListenCall {
        fd: fd as i32,
        backlog: backlog as i32,
        seen: 0,
        _pad: 0,
    };
    let _ = LISTEN_CALLS.insert(&bpf_get_current_pid_tgid(), &call, 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_listen")]
pub fn listen_exit(ctx: TracePointContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    let Some(call) = (unsafe { LISTEN_CALLS.get(&key) }).copied() else {
        return 0;
    };
    let _ = LISTEN_CALLS.remove(&key);
    let ret = unsafe { ctx.read_at::<u64>(config!(tp_exit_ret) as usize) }.unwrap_or(u64::MAX);
    if call.seen == 0 && ret == 0 {
        let mut r = new_record(KIND_RELISTEN, key);
        r.has_backlog = 1;
        r.backlog = call.backlog;
        r.fd = call.fd;
        emit(&r);
    }
    0
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn sock_state(ctx: TracePointContext) -> u32 {
    if config!(ready) == 0 {
        return 0;
    }
    let _ = try_sock_state(&ctx);
    0
}

fn try_sock_state(ctx: &TracePointContext) -> Option<()> {
    let protocol = unsafe { ctx.read_at::<u16>(config!(tp_state_protocol) as usize) }.ok()?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let listen = config!(tcp_listen) as i32;
    let newstate = unsafe { ctx.read_at::<i32>(config!(tp_state_newstate) as usize) }.ok()?;
    let oldstate = unsafe { ctx.read_at::<i32>(config!(tp_state_oldstate) as usize) }.ok()?;
    let kind = if newstate == listen {
        KIND_LISTEN
    } else if oldstate == listen && newstate == config!(tcp_close) as i32 {
        // Only LISTEN -> CLOSE: a new connection's child socket also leaves TCP_LISTEN (it is
        // cloned from the listener and moved to SYN_RECV), once per accepted connection.
        KIND_LISTEN_CLOSE
    } else {
        return None;
    };
    let key = bpf_get_current_pid_tgid();
    let mut r = new_record(kind, key);
    let sk = unsafe { ctx.read_at::<u64>(config!(tp_state_skaddr) as usize) }.ok()?;
    r.family = unsafe { ctx.read_at::<u16>(config!(tp_state_family) as usize) }.unwrap_or(0) as u8;
    r.sport = unsafe { ctx.read_at::<u16>(config!(tp_state_sport) as usize) }.unwrap_or(0);
    if let Some(net) = read_u64(sk + config!(sk_net) as u64) {
        r.netns = read_u32(net + config!(net_inum) as u64).unwrap_or(0);
    }
    // The socket still has its file here: __tcp_close() changes the state before sock_orphan().
    let socket = read_u64(sk + config!(sk_socket) as u64).unwrap_or(0);
    if socket != 0 {
        r.sock_ino = read_u64(socket + config!(socket_ino) as u64).unwrap_or(0);
    }
    if kind == KIND_LISTEN {
        if let Some(call) = LISTEN_CALLS.get_ptr_mut(&key) {
            unsafe {
                (*call).seen = 1;
                r.has_backlog = 1;
                r.backlog = (*call).backlog;
                r.fd = (*call).fd;
            }
        }
    }
    emit(&r);
    Some(())
}

#[inline(always)]
fn new_record(kind: u8, pid_tgid: u64) -> ListenRecord {
    ListenRecord {
        kind,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        fd: -1,
        comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
        ..ListenRecord::default()
    }
}

#[inline(always)]
fn emit(r: &ListenRecord) {
    if EVENTS.output::<ListenRecord>(r, 0).is_err() {
        stat_add(STAT_LOST_OTHER, 1);
    }
}
