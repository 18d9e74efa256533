//! RSTs this host sends in answer to a segment (`tcp_v4_send_reset()` / `tcp_v6_send_reset()`):
//! - from a listening socket (state TCP_LISTEN): a client segment the listener has no
//!   connection for, typically the data of a client whose final ACK was dropped (reason
//!   TCP_FLAGS), or `tcp_abort_on_overflow=1`'s RST: the attempt ends as reset. A RST for the
//!   packet a bracket is open for is left to the bracket close (`bracket.rs`), so that it follows
//!   that packet's drop record;
//! - with no socket at all: nothing listens at the segment's address:port. A SYN answered this
//!   way is a refused connection: a `RefusedRecord`, for the ports in `REFUSED_PORTS` (or all
//!   with `Config::refused_all`); the others are only counted (`STAT_REFUSED_UNWATCHED`).
//!
//! Variants (the loader picks one, `bpf/hooks.rs`):
//! - "tracepoint": `tcp:tcp_send_reset`, where it has its own record with `reason` (Linux 6.10,
//!   "tcp: fully support trace_tcp_send_reset"): from then on it fires for a NULL socket too.
//!   Before, it fired only for full sockets, so it would miss every refusal. It fires after the
//!   early returns of the send functions (a RST is really sent).
//! - "fentry" / "kprobe": entry of `tcp_v4_send_reset()` / `tcp_v6_send_reset()`. Also counts a
//!   RST the function then declines to send (the segment was itself a RST — never a SYN — or,
//!   without a socket, not routed locally). The kprobe reads the reason argument where the
//!   prototype has it (`Config::send_reset_args`); the fentry variant records reason 0 (it is
//!   chosen only below 6.10, where no reason exists, unless forced).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{fentry, kprobe, tracepoint},
    programs::{FEntryContext, ProbeContext, TracePointContext},
};
use lqtrace_common::{
    BracketRecord, STAGE_SYN, STAT_LOST_OTHER, STAT_REFUSED_UNWATCHED,
    clients::{KIND_REFUSED, PortKey, RESOLVED_BY_LISTENER_RST, RefusedRecord},
};

use crate::{
    clients::{any_live, is_v4_mapped, resolve_reset},
    kernel::{read_u32, read_u64, sock_netns, sock_state},
    maps::{BRACKETS, EVENTS, REFUSED_PORTS, SCRATCH, config, stat_add},
    probes::read_segment,
};

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn reset_tp(ctx: TracePointContext) -> u32 {
    if config!(ready) == 0 || config!(tp_reset_full) == 0 {
        return 0;
    }
    let read = |off: u32| unsafe { ctx.read_at::<u64>(off as usize) }.unwrap_or(0);
    let skb = read(config!(tp_reset_skbaddr));
    let sk = read(config!(tp_reset_skaddr));
    let state = unsafe { ctx.read_at::<i32>(config!(tp_reset_state) as usize) }.unwrap_or(0);
    let reason = unsafe { ctx.read_at::<u32>(config!(tp_reset_reason) as usize) }.unwrap_or(0);
    on_reset(sk, skb, reason, Some(state as u32));
    0
}

#[fentry(function = "tcp_v4_send_reset")]
pub fn reset4_fentry(ctx: FEntryContext) -> i32 {
    on_reset(ctx.arg::<u64>(0), ctx.arg::<u64>(1), 0, None);
    0
}

#[fentry(function = "tcp_v6_send_reset")]
pub fn reset6_fentry(ctx: FEntryContext) -> i32 {
    on_reset(ctx.arg::<u64>(0), ctx.arg::<u64>(1), 0, None);
    0
}

#[kprobe(function = "tcp_v4_send_reset")]
pub fn reset4_kprobe(ctx: ProbeContext) -> u32 {
    reset_kprobe(&ctx);
    0
}

#[kprobe(function = "tcp_v6_send_reset")]
pub fn reset6_kprobe(ctx: ProbeContext) -> u32 {
    reset_kprobe(&ctx);
    0
}

#[inline(always)]
fn reset_kprobe(ctx: &ProbeContext) {
    let reason = if config!(send_reset_args) >= 3 {
        ctx.arg::<u64>(2).unwrap_or(0) as u32
    } else {
        0
    };
    on_reset(
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<u64>(1).unwrap_or(0),
        reason,
        None,
    );
}

/// A RST about to be sent by socket `sk` (0: none) in answer to the segment `skb`; `state`: the
/// socket's state when the hook already has it.
#[inline(always)]
fn on_reset(sk: u64, skb: u64, reason: u32, state: Option<u32>) {
    if config!(ready) == 0 || skb == 0 {
        return; // an active reset (tcp_send_active_reset) answers no segment
    }
    if sk != 0 {
        let state = match state {
            Some(s) => Some(s),
            None => sock_state(sk),
        };
        if state == Some(config!(tcp_listen)) {
            let _ = listener_reset(sk, skb);
        }
        return;
    }
    let _ = refused(skb, reason);
}

fn listener_reset(sk: u64, skb: u64) -> Option<()> {
    let b = BRACKETS.get_ptr_mut(0)?;
    if unsafe { (*b).skb } == skb {
        unsafe { (*b).rst_pending = 1 };
        return Some(());
    }
    if !any_live() {
        return Some(());
    }
    let seg = segment(skb)?;
    resolve_reset(sock_netns(sk), seg, RESOLVED_BY_LISTENER_RST);
    Some(())
}

/// The segment's fields in this CPU's scratch record.
#[inline(always)]
fn segment(skb: u64) -> Option<&'static BracketRecord> {
    let s = SCRATCH.get_ptr_mut(0)?;
    let seg = unsafe { &mut (*s).segment };
    *seg = BracketRecord::default();
    read_segment(skb, seg)?;
    Some(seg)
}

fn refused(skb: u64, reason: u32) -> Option<()> {
    let seg = segment(skb)?;
    if seg.stage != STAGE_SYN {
        return Some(());
    }
    // No socket: the namespace is the receiving device's (skb->dev->nd_net).
    let dev = read_u64(skb + config!(skb_dev) as u64)?;
    let net = read_u64(dev + config!(dev_nd_net) as u64)?;
    let netns = read_u32(net + config!(net_inum) as u64).unwrap_or(0);
    if config!(refused_all) == 0 && !watched(netns, seg.lport) {
        stat_add(STAT_REFUSED_UNWATCHED, 1);
        return Some(());
    }
    let s = SCRATCH.get_ptr_mut(0)?;
    let r = unsafe { &mut (*s).refused };
    *r = RefusedRecord {
        kind: KIND_REFUSED,
        ip_version: seg.ip_version,
        tcp_flags: seg.tcp_flags,
        netns,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        lport: seg.lport,
        rport: seg.rport,
        reason,
        ..RefusedRecord::default()
    };
    if seg.ip_version == 6 && is_v4_mapped(&seg.raddr) {
        r.ip_version = 4;
        r.laddr[..4].copy_from_slice(&seg.laddr[12..16]);
        r.raddr[..4].copy_from_slice(&seg.raddr[12..16]);
    } else {
        r.laddr = seg.laddr;
        r.raddr = seg.raddr;
    }
    if EVENTS.output::<RefusedRecord>(r, 0).is_err() {
        stat_add(STAT_LOST_OTHER, 1);
    }
    Some(())
}

#[inline(always)]
fn watched(netns: u32, port: u16) -> bool {
    let key = |netns| PortKey {
        netns,
        port,
        _pad: 0,
    };
    unsafe { REFUSED_PORTS.get(&key(netns)).is_some() || REFUSED_PORTS.get(&key(0)).is_some() }
}
