//! The before/after reading of the listen counters around each packet a listener processes.
//!
//! Why this method: SYN-time drops never reach skb:kfree_skb (tcp_rcv_state_process consumes the
//! SYN either way), `tcp_listendrop()` is inline, and kprobes/fentry may be missing. What the
//! kernel does for every listen drop is bump `LINUX_MIB_LISTENDROPS` (and, by cause,
//! LISTENOVERFLOWS / TCPREQQFULLDROP; TCPREQQFULLDOCOOKIES for a SYN cookie) with
//! `__NET_INC_STATS`, a per-CPU increment in softirq context. A listener's packet is processed
//! start to finish on one CPU without interleaving with another packet on that CPU (softirq;
//! tcp_v4_rcv handles TCP_LISTEN and TCP_NEW_SYN_RECV without the socket lock), so the
//! difference between this CPU's counters before and after the packet is exactly what that
//! packet caused — on any number of CPUs, under concurrent bursts, for SYN and ACK drops alike,
//! with the cause read from which counter moved (never re-deriving the kernel's predicate).
//! A listener's own `sk_drops` would not do: other CPUs bump it concurrently, and the final-ACK
//! path bumps it twice.
//!
//! - Before: cgroup_skb ingress runs in `tcp_filter()` -> `sk_filter_trim_cap()` just before
//!   `tcp_v4_do_rcv()`/`tcp_check_req()` (and the v6 twins), with `skb->sk` = the listener, for
//!   SYNs, final ACKs (request-socket path: the filter runs on `req->rsk_listener`) and syncookie
//!   ACKs.
//! - After: the same skb reaches skb:consume_skb (SYN, accepted or dropped) or skb:kfree_skb
//!   (final-ACK overflow, syncookie ACK overflow). An ACK that created a child is queued instead;
//!   its bracket stays open and is closed by the next listener packet on that CPU ("late"), which
//!   costs nothing because no drop can happen on a CPU outside a bracket.

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, bpf_sock},
    helpers::{
        bpf_get_smp_processor_id, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_fullsock,
        generated::bpf_skb_load_bytes,
    },
    macros::{cgroup_skb, raw_tracepoint},
    programs::{RawTracePointContext, SkBuffContext},
};
use lqtrace_common::{
    BracketRecord, FLAG_LATE, KIND_DROP, KIND_SYNCOOKIE, MIB_COUNT, MIB_LISTEN_DROPS,
    MIB_REQQ_FULL_DO_COOKIES, STAGE_ACK, STAGE_OTHER, STAGE_SYN, STAT_BAD_CLOSE, STAT_BRACKETS,
    STAT_LATE, STAT_LOST_DROP_RECORDS, STAT_LOST_DROPS, STAT_LOST_OTHER, STAT_UNBRACKETED,
};

use crate::{
    kernel::{as_number, read_mib, read_u32, read_u64, this_cpu_offset},
    maps::{BRACKETS, Bracket, EVENTS, config, stat_add},
};

const BPF_TCP_LISTEN: u32 = 10; // uapi enum (include/uapi/linux/bpf.h), stable
const IPPROTO_TCP: u32 = 6;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// A counter delta larger than this cannot come from one packet: the bracket read freed memory.
const MAX_PLAUSIBLE_DELTA: u64 = 1 << 16;

/// Before: a listener is about to process this packet. Always lets the packet through.
#[cgroup_skb(ingress)]
pub fn listener_rx(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    if let Some(sk) = listener_of(skb) {
        if open_bracket(&ctx, skb, sk).is_none() {
            stat_add(STAT_UNBRACKETED, 1);
        }
    }
    1
}

/// After (SYNs end here, accepted or dropped).
#[raw_tracepoint(tracepoint = "consume_skb")]
pub fn skb_consumed(ctx: RawTracePointContext) -> i32 {
    skb_freed(ctx.arg::<u64>(0));
    0
}

/// After (final-ACK and syncookie-ACK overflows end here).
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn skb_dropped(ctx: RawTracePointContext) -> i32 {
    skb_freed(ctx.arg::<u64>(0));
    0
}

/// The listening TCP socket the packet is delivered to, if any. This is the hot path for every
/// ingress packet of every socket: keep it to two field reads.
#[inline(always)]
fn listener_of(skb: *mut __sk_buff) -> Option<*mut bpf_sock> {
    if config!(ready) == 0 {
        return None;
    }
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return None;
    }
    let (state, protocol) = unsafe { ((*sk).state, (*sk).protocol) };
    (state == BPF_TCP_LISTEN && protocol == IPPROTO_TCP).then_some(sk)
}

#[inline(always)]
fn skb_freed(skb: u64) {
    let Some(slot) = BRACKETS.get_ptr_mut(0) else { return };
    if unsafe { (*slot).skb } != skb || skb == 0 {
        return;
    }
    close_bracket(slot, 0);
}

fn open_bracket(ctx: &SkBuffContext, skb: *mut __sk_buff, sk: *mut bpf_sock) -> Option<()> {
    let slot = BRACKETS.get_ptr_mut(0)?;
    let b: &mut Bracket = unsafe { &mut *slot };
    if b.skb != 0 {
        // The previous listener packet on this CPU was not freed through a tracepoint (an ACK
        // that became a connection): settle it now, before its counters are overwritten.
        close_bracket(slot, FLAG_LATE);
    }
    let scratch = &raw mut b.scratch;
    let sk_addr = as_number(scratch, sk);
    let skb_addr = as_number(scratch, ctx.as_ptr());
    let cpu_offset = this_cpu_offset()?;
    let net = read_u64(sk_addr + config!(sk_net) as u64)?;
    let mib_percpu = read_u64(net + config!(net_mib_stats) as u64)?;
    let mib = mib_percpu + cpu_offset;

    let r = &mut b.record;
    *r = BracketRecord::default();
    parse_packet(ctx, unsafe { (*skb).protocol }, r)?;
    r.cpu = unsafe { bpf_get_smp_processor_id() };
    r.ts_ns = unsafe { bpf_ktime_get_ns() };
    r.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    r.netns = read_u32(net + config!(net_inum) as u64).unwrap_or(0);
    r.somaxconn = read_u32(net + config!(net_somaxconn) as u64).unwrap_or(0);
    r.accept_queue = read_u32(sk_addr + config!(sk_ack_backlog) as u64).unwrap_or(0);
    r.accept_queue_max = read_u32(sk_addr + config!(sk_max_ack_backlog) as u64).unwrap_or(0);
    r.syn_queue = read_u32(sk_addr + config!(icsk_qlen) as u64).unwrap_or(0);
    let socket = read_u64(sk_addr + config!(sk_socket) as u64).unwrap_or(0);
    if socket != 0 {
        r.sock_ino = read_u64(socket + config!(socket_ino) as u64).unwrap_or(0);
    }

    // Read the counters last: nothing above can move them.
    read_mib(mib, &mut b.before)?;
    b.mib = mib;
    b.skb = skb_addr;
    stat_add(STAT_BRACKETS, 1);
    Some(())
}

/// Addresses, ports and TCP flags from the packet. At cgroup ingress `skb->data` points at the
/// network header.
#[inline(always)]
fn parse_packet(ctx: &SkBuffContext, protocol_be: u32, r: &mut BracketRecord) -> Option<()> {
    let proto = u16::from_be(protocol_be as u16);
    let l4 = if proto == ETH_P_IP {
        let ip: [u8; 20] = load(ctx, 0)?;
        if ip[9] != IPPROTO_TCP as u8 {
            return None;
        }
        r.ip_version = 4;
        r.raddr[..4].copy_from_slice(&ip[12..16]);
        r.laddr[..4].copy_from_slice(&ip[16..20]);
        ((ip[0] & 0x0f) as usize) * 4
    } else if proto == ETH_P_IPV6 {
        let ip: [u8; 40] = load(ctx, 0)?;
        // Extension headers before TCP are rare on a listener's traffic; such packets are still
        // bracketed, with addresses but no ports.
        r.ip_version = 6;
        r.raddr.copy_from_slice(&ip[8..24]);
        r.laddr.copy_from_slice(&ip[24..40]);
        if ip[6] != IPPROTO_TCP as u8 {
            r.stage = STAGE_OTHER;
            return Some(());
        }
        40
    } else {
        return None;
    };
    let tcp: [u8; 14] = load(ctx, l4 & 0x3f)?;
    r.rport = u16::from_be_bytes([tcp[0], tcp[1]]);
    r.lport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let flags = tcp[13];
    r.tcp_flags = flags;
    r.stage = if flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN {
        STAGE_SYN
    } else if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_ACK {
        STAGE_ACK
    } else {
        STAGE_OTHER
    };
    Some(())
}

/// Fixed-size read from the packet (aya's `load_bytes` passes a computed length, which the
/// verifier rejects when it may be zero).
#[inline(always)]
fn load<const N: usize>(ctx: &SkBuffContext, offset: usize) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    let ret = unsafe {
        bpf_skb_load_bytes(ctx.as_ptr(), offset as u32, buf.as_mut_ptr().cast(), N as u32)
    };
    (ret == 0).then_some(buf)
}

/// After: compare this CPU's counters with the values before the packet; report what moved.
#[inline(always)]
fn close_bracket(slot: *mut Bracket, flags: u8) {
    let b: &mut Bracket = unsafe { &mut *slot };
    b.skb = 0;
    if flags & FLAG_LATE != 0 {
        stat_add(STAT_LATE, 1);
    }
    let mut after = [0u64; MIB_COUNT];
    if read_mib(b.mib, &mut after).is_none() {
        stat_add(STAT_BAD_CLOSE, 1);
        return;
    }
    let mut moved = false;
    for i in 0..MIB_COUNT {
        let d = after[i].wrapping_sub(b.before[i]);
        if d > MAX_PLAUSIBLE_DELTA {
            stat_add(STAT_BAD_CLOSE, 1);
            return;
        }
        b.record.deltas[i] = d as u32;
        moved |= d != 0;
    }
    if !moved {
        return;
    }
    let drops = b.record.deltas[MIB_LISTEN_DROPS];
    b.record.kind = if drops > 0 {
        KIND_DROP
    } else if b.record.deltas[MIB_REQQ_FULL_DO_COOKIES] > 0 {
        KIND_SYNCOOKIE
    } else {
        return; // e.g. SyncookiesRecv alone: a connection made from a cookie, not a drop
    };
    b.record.flags |= flags;
    if EVENTS.output::<BracketRecord>(&b.record, 0).is_err() {
        if drops > 0 {
            stat_add(STAT_LOST_DROP_RECORDS, 1);
            stat_add(STAT_LOST_DROPS, drops as u64);
        } else {
            stat_add(STAT_LOST_OTHER, 1);
        }
    }
}
