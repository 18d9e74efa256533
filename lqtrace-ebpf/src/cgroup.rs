//! Hook variant "cgroup": works where kprobes and fentry don't (the development host).
//!
//! - Before: cgroup_skb ingress on the root cgroup runs in `tcp_filter()` ->
//!   `sk_filter_trim_cap()` just before `tcp_v4_do_rcv()`/`tcp_check_req()` (and the v6 twins),
//!   with `skb->sk` = the listener, for SYNs, final ACKs (request-socket path: the filter runs on
//!   `req->rsk_listener`) and syncookie ACKs.
//! - After: the same skb reaches skb:consume_skb (SYN, accepted or dropped: tcp_rcv_state_process)
//!   or skb:kfree_skb (final-ACK overflow, syncookie ACK overflow). An ACK that created a child
//!   is queued instead; its bracket is closed late by the next one.

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, bpf_sock},
    helpers::{bpf_get_socket_cookie, bpf_sk_fullsock, generated::bpf_skb_load_bytes},
    macros::{cgroup_skb, raw_tracepoint},
    programs::{RawTracePointContext, SkBuffContext},
};
use lqtrace_common::{CGROUP_ACK, CGROUP_SYN, STAGE_SYN, STAT_UNBRACKETED};

use crate::{
    bracket::{
        ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, VARIANT_CGROUP, apply_ipv4, apply_ipv6, apply_tcp,
        close_matching, fresh_slot, open,
    },
    kernel::as_number,
    maps::{cgroup_stages, config, stat_add},
};

const BPF_TCP_LISTEN: u32 = 10; // uapi enum (include/uapi/linux/bpf.h), stable

/// Before: a listener is about to process this packet. Always lets the packet through.
#[cgroup_skb(ingress)]
pub fn listener_rx(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    if let Some(sk) = listener_of(skb) {
        if rx(&ctx, skb, sk).is_none() {
            stat_add(STAT_UNBRACKETED, 1);
        }
    }
    1
}

/// After (SYNs end here, accepted or dropped).
#[raw_tracepoint(tracepoint = "consume_skb")]
pub fn skb_consumed(ctx: RawTracePointContext) -> i32 {
    close_matching(VARIANT_CGROUP, ctx.arg::<u64>(0));
    0
}

/// After (final-ACK and syncookie-ACK overflows end here).
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn skb_dropped(ctx: RawTracePointContext) -> i32 {
    close_matching(VARIANT_CGROUP, ctx.arg::<u64>(0));
    0
}

/// The listening TCP socket the packet is delivered to, if any. This is the hot path for every
/// ingress packet of every socket: a packet for any other socket returns after one field read
/// of the socket. `state` is in `struct sock_common`, which the verifier lets a program read
/// from `skb->sk` directly (`bpf_sock_common_is_valid_access()`, net/core/filter.c); only a
/// listener needs `bpf_sk_fullsock()` (a helper call) for `protocol`.
#[inline(always)]
fn listener_of(skb: *mut __sk_buff) -> Option<*mut bpf_sock> {
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    if unsafe { (*sk).state } != BPF_TCP_LISTEN || config!(ready) == 0 {
        return None;
    }
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return None;
    }
    (unsafe { (*sk).protocol } == IPPROTO_TCP as u32).then_some(sk)
}

fn rx(ctx: &SkBuffContext, skb: *mut __sk_buff, sk: *mut bpf_sock) -> Option<()> {
    let slot = fresh_slot()?;
    let r = unsafe { &mut (*slot).record };
    // At cgroup ingress `skb->data` points at the network header.
    let proto = u16::from_be(unsafe { (*skb).protocol } as u16);
    if proto == ETH_P_IP {
        let ip: [u8; 20] = load(ctx, 0)?;
        let l4 = apply_ipv4(r, &ip)?;
        apply_tcp(r, &load(ctx, l4 & 0x3f)?);
    } else if proto == ETH_P_IPV6 {
        if apply_ipv6(r, &load(ctx, 0)?) {
            apply_tcp(r, &load(ctx, 40)?);
        }
    } else {
        return None;
    }
    let wanted = if r.stage == STAGE_SYN {
        CGROUP_SYN
    } else {
        CGROUP_ACK
    };
    if cgroup_stages() & wanted == 0 {
        return Some(()); // this kind of packet is bracketed by a function probe instead
    }
    let scratch = unsafe { &raw mut (*slot).scratch };
    let sk_addr = as_number(scratch, sk);
    let skb_addr = as_number(scratch, ctx.as_ptr());
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    open(slot, sk_addr, skb_addr, VARIANT_CGROUP, cookie)
}

/// Fixed-size read from the packet (aya's `load_bytes` passes a computed length, which the
/// verifier rejects when it may be zero).
#[inline(always)]
fn load<const N: usize>(ctx: &SkBuffContext, offset: usize) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr(),
            offset as u32,
            buf.as_mut_ptr().cast(),
            N as u32,
        )
    };
    (ret == 0).then_some(buf)
}
