//! Listener lifecycle: listen() calls (which backlog a process asked for, and who called it)
//! and the state changes that make a socket a listener or end it.
//!
//! sys_enter_listen sees (fd, backlog) but not the socket; inet_sock_set_state(-> TCP_LISTEN)
//! sees the socket, in the context of the caller of listen() (inet_csk_listen_start), but not the
//! backlog. Joining the two by pid_tgid gives socket -> requested backlog. A second listen() on a
//! listening socket only changes the backlog (no state change): sys_exit_listen reports it with
//! the fd for userspace to resolve through /proc.
//!
//! The same state-change tracepoint sees each child socket being created (TCP_LISTEN →
//! TCP_SYN_RECV: `inet_csk_clone_lock()` clones the listener). That happens while the listener
//! processes the packet that completed the handshake, inside that packet's bracket on this CPU
//! (tcp_check_req / cookie_v4_check / cookie_v6_check, or tcp_conn_request for Fast Open), so
//! the bracket names the listener (an arrival, `accepts.rs`) and the client (the attempt
//! connected, `clients.rs`). This program runs for every TCP state change of the host: anything
//! but a listener change or a child creation returns after one kernel read and two compares.
//!
//! It is a raw tracepoint (`trace_inet_sock_set_state(sk, oldstate, newstate)`, called from
//! `inet_sk_set_state()`/`inet_sk_state_store()`), not the classic one: the classic tracepoint
//! fills its whole trace record (addresses of both ends, ports, family, protocol) in
//! `perf_trace_inet_sock_set_state()` before any program runs, for every state change of every
//! socket, and that work is not in the program's own run time. The raw tracepoint hands over the
//! three arguments, and the few socket fields a listener change needs are read from `struct
//! sock` at offsets from BTF (`Config::sk_*`) only when the change is one we keep.
//!
//! Ports that get or lose a listener are added to `REFUSED_PORTS`, so that refusals there are
//! recorded for the rest of the run.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use lqtrace_common::{
    KIND_LISTEN, KIND_LISTEN_CLOSE, KIND_RELISTEN, ListenRecord, STAT_CHILD_UNBRACKETED,
    STAT_LOST_OTHER, clients::PortKey,
};

use crate::{
    accepts, clients,
    kernel::{read_bytes, read_u16, read_u32, read_u64},
    maps::{
        ACCEPT_STATS, BRACKETS, EVENTS, LISTEN_CALLS, ListenCall, REFUSED_PORTS, config, stat_add,
    },
};

const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const BPF_ANY: u64 = 0;

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn listen_enter(ctx: TracePointContext) -> u32 {
    if config!(ready) == 0 {
        return 0;
    }
    // Syscall arguments are stored as 8-byte fields; listen() takes two ints.
    let fd = unsafe { ctx.read_at::<u64>(config!(tp_sys_arg0) as usize) }.unwrap_or(u64::MAX);
    let backlog = unsafe { ctx.read_at::<u64>(config!(tp_sys_arg1) as usize) }.unwrap_or(0);
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
    let ret = unsafe { ctx.read_at::<u64>(config!(tp_sys_ret) as usize) }.unwrap_or(u64::MAX);
    if call.seen == 0 && ret == 0 {
        let mut r = new_record(KIND_RELISTEN, key);
        r.has_backlog = 1;
        r.backlog = call.backlog;
        r.fd = call.fd;
        emit(&r);
    }
    0
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn sock_state(ctx: RawTracePointContext) -> i32 {
    if config!(ready) == 0 {
        return 0;
    }
    let _ = try_sock_state(&ctx);
    0
}

fn try_sock_state(ctx: &RawTracePointContext) -> Option<()> {
    let listen = config!(tcp_listen) as i32;
    let oldstate = ctx.arg::<u64>(1) as i32;
    let newstate = ctx.arg::<u64>(2) as i32;
    // Cheapest test first: most state changes involve no listener at all.
    if oldstate != listen && newstate != listen {
        return None;
    }
    let sk = ctx.arg::<u64>(0);
    if read_u16(sk + config!(sk_protocol) as u64)? != IPPROTO_TCP {
        return None;
    }
    if oldstate == listen && newstate == config!(tcp_syn_recv) as i32 {
        child_created(sk);
        return Some(());
    }
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
    r.family = read_u16(sk + config!(sk_family) as u64).unwrap_or(0) as u8;
    // inet_sport, as the classic tracepoint's `sport` (ntohs(inet->inet_sport)), not skc_num:
    // on LISTEN -> CLOSE, tcp_set_state() has already run inet_put_port(), which zeroes
    // inet_num of an autobound socket, before inet_sk_state_store() fires the tracepoint.
    r.sport = u16::from_be(read_u16(sk + config!(sk_inet_sport) as u64).unwrap_or(0));
    if let Some(net) = read_u64(sk + config!(sk_net) as u64) {
        r.netns = read_u32(net + config!(net_inum) as u64).unwrap_or(0);
    }
    local_address(sk, &mut r);
    // The socket still has its file here: __tcp_close() changes the state before sock_orphan().
    let socket = read_u64(sk + config!(sk_socket) as u64).unwrap_or(0);
    if socket != 0 {
        r.sock_ino = read_u64(socket + config!(socket_ino) as u64).unwrap_or(0);
    }
    if r.sport != 0 {
        let port = PortKey {
            netns: r.netns,
            port: r.sport,
            _pad: 0,
        };
        let _ = REFUSED_PORTS.insert(&port, &1u8, BPF_ANY);
    }
    if kind == KIND_LISTEN {
        // A new listener: an entry at this address belongs to a freed socket.
        let _ = ACCEPT_STATS.remove(&sk);
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

/// The socket's local address (`skc_rcv_saddr`, or `skc_v6_rcv_saddr` for AF_INET6; IPv4 and
/// v4-mapped IPv6 stored as IPv4 in the first 4 bytes).
#[inline(always)]
fn local_address(sk: u64, r: &mut ListenRecord) {
    if r.family as u16 == AF_INET {
        if let Some(a) = read_bytes::<4>(sk + config!(sk_rcv_saddr) as u64) {
            r.laddr[..4].copy_from_slice(&a);
            r.ip_version = 4;
        }
    } else if config!(sk_v6_rcv_saddr) != 0 {
        if let Some(a) = read_bytes::<16>(sk + config!(sk_v6_rcv_saddr) as u64) {
            if clients::is_v4_mapped(&a) {
                r.laddr[..4].copy_from_slice(&a[12..16]);
                r.ip_version = 4;
            } else {
                r.laddr = a;
                r.ip_version = 6;
            }
        }
    }
}

/// A child socket is being created by the listener whose bracket is open on this CPU.
#[inline(always)]
fn child_created(child: u64) {
    let Some(b) = BRACKETS.get_ptr_mut(0) else {
        return;
    };
    let b = unsafe { &*b };
    if b.skb == 0 {
        stat_add(STAT_CHILD_UNBRACKETED, 1);
        return;
    }
    accepts::arrival(b.sk, child, unsafe { bpf_ktime_get_ns() });
    if clients::any_live() {
        let netns = read_u32(b.net + config!(net_inum) as u64).unwrap_or(0);
        clients::completed(netns, &b.record);
    }
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
