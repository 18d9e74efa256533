//! Hook variants "fentry" (fentry/fexit) and "kprobe" (kprobe/kretprobe): bracket the kernel
//! functions that decide listen drops, where the kernel lets us hook functions (most distro
//! kernels; not the development host). Same counter engine as the cgroup variant
//! (`bracket.rs`), same records.
//!
//! - SYN: `tcp_conn_request()` — every SYN a listener answers or drops (v4-mapped SYNs too:
//!   tcp_v6_conn_request calls tcp_v4_conn_request, which calls it once).
//! - Final ACK (request-socket path): `tcp_check_req()` — including the embryonic RST of
//!   tcp_abort_on_overflow=1; skipped when `sk` is not a listener (TCP Fast Open calls it with
//!   the child).
//! - Syncookie ACK: `cookie_v4_check()` / `cookie_v6_check()`.
//! Argument positions are compiled in; the loader checks them against the running kernel's BTF.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use lqtrace_common::{BracketRecord, STAT_UNBRACKETED};

use crate::{
    bracket::{
        ETH_P_IP, ETH_P_IPV6, VARIANT_FENTRY, VARIANT_KPROBE, apply_ipv4, apply_ipv6, apply_tcp,
        close_matching, fresh_slot, open,
    },
    kernel::{read_bytes, read_u16, read_u64},
    maps::{config, stat_add},
};

/// Open a bracket for `skb` about to be handled by the listener `sk` (`variant`: fentry or kprobe).
#[inline(always)]
fn before(sk: u64, skb: u64, variant: u64) {
    if config!(ready) == 0 || sk == 0 || skb == 0 {
        return;
    }
    if !is_listener(sk) {
        return;
    }
    if probe_open(sk, skb, variant).is_none() {
        stat_add(STAT_UNBRACKETED, 1);
    }
}

#[inline(always)]
fn is_listener(sk: u64) -> bool {
    let mut state = [0u8; 1];
    let ok = unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel_buf(
            (sk + config!(sk_state) as u64) as *const u8,
            &mut state,
        )
    }
    .is_ok();
    ok && state[0] as u32 == config!(tcp_listen)
}

fn probe_open(sk: u64, skb: u64, variant: u64) -> Option<()> {
    let slot = fresh_slot()?;
    read_segment(skb, unsafe { &mut (*slot).record })?;
    open(slot, sk, skb, variant, 0)
}

/// The packet fields of a record (addresses, ports, flags, stage, seq) from an skb whose network
/// and transport headers are set (true in every function these programs hook).
#[inline(always)]
pub fn read_segment(skb: u64, r: &mut BracketRecord) -> Option<()> {
    let head = read_u64(skb + config!(skb_head) as u64)?;
    let nh = read_u16(skb + config!(skb_network_header) as u64)? as u64;
    let th = read_u16(skb + config!(skb_transport_header) as u64)? as u64;
    let proto = u16::from_be(read_u16(skb + config!(skb_protocol) as u64)?);
    if proto == ETH_P_IP {
        let ip: [u8; 20] = read_bytes(head + nh)?;
        apply_ipv4(r, &ip)?;
        apply_tcp(r, &read_bytes(head + th)?);
    } else if proto == ETH_P_IPV6 {
        if apply_ipv6(r, &read_bytes(head + nh)?) {
            apply_tcp(r, &read_bytes(head + th)?);
        }
    } else {
        return None;
    }
    Some(())
}

/// Argument positions are literals (checked against `lqtrace_common::PROBE_ARGS` by a test and
/// against the kernel's BTF by the loader): older verifiers reject context reads at computed
/// offsets ("dereference of modified ctx ptr").
macro_rules! probe_pair {
    ($func:literal, $sk:literal, $skb:literal,
     $fentry:ident, $fexit:ident, $kprobe:ident, $kretprobe:ident) => {
        #[fentry(function = $func)]
        pub fn $fentry(ctx: FEntryContext) -> i32 {
            before(ctx.arg::<u64>($sk), ctx.arg::<u64>($skb), VARIANT_FENTRY);
            0
        }

        #[fexit(function = $func)]
        pub fn $fexit(ctx: FExitContext) -> i32 {
            close_matching(VARIANT_FENTRY, ctx.arg::<u64>($skb));
            0
        }

        #[kprobe(function = $func)]
        pub fn $kprobe(ctx: ProbeContext) -> u32 {
            before(
                ctx.arg::<u64>($sk).unwrap_or(0),
                ctx.arg::<u64>($skb).unwrap_or(0),
                VARIANT_KPROBE,
            );
            0
        }

        #[kretprobe(function = $func)]
        pub fn $kretprobe(_ctx: RetProbeContext) -> u32 {
            // No arguments at return: the bracket this CPU's kprobe opened is the one to close
            // (nothing nests inside these functions that opens another).
            close_matching(VARIANT_KPROBE, 0);
            0
        }
    };
}

// Keep in step with lqtrace_common::PROBE_ARGS.
probe_pair!(
    "tcp_conn_request",
    2,
    3,
    syn_fentry,
    syn_fexit,
    syn_kprobe,
    syn_kretprobe
);
probe_pair!(
    "tcp_check_req",
    0,
    1,
    ack_fentry,
    ack_fexit,
    ack_kprobe,
    ack_kretprobe
);
probe_pair!(
    "cookie_v4_check",
    0,
    1,
    cookie4_fentry,
    cookie4_fexit,
    cookie4_kprobe,
    cookie4_kretprobe
);
probe_pair!(
    "cookie_v6_check",
    0,
    1,
    cookie6_fentry,
    cookie6_fexit,
    cookie6_kprobe,
    cookie6_kretprobe
);
