//! The before/after reading of the listen counters around each packet a listener processes.
//!
//! Why this approach: SYN-time drops never reach skb:kfree_skb (tcp_rcv_state_process consumes
//! the SYN either way), `tcp_listendrop()` is inline, and kprobes/fentry may be missing. What the
//! kernel does for every listen drop is bump `LINUX_MIB_LISTENDROPS` (and, by cause,
//! LISTENOVERFLOWS / TCPREQQFULLDROP) with `__NET_INC_STATS`, a per-CPU increment in softirq
//! context; a SYN it answers with a cookie bumps SYNCOOKIESSENT the same way, in
//! `cookie_init_sequence()` (include/net/tcp.h, inlined in tcp_conn_request; same from 5.x to 6.x).
//! A listener's packet is processed start to finish on one CPU without interleaving with another
//! packet on that CPU (softirq; tcp_v4_rcv handles TCP_LISTEN and TCP_NEW_SYN_RECV without the
//! socket lock), so the difference between this CPU's counters before and after the packet is
//! exactly what that packet caused — on any number of CPUs, under concurrent bursts, for SYN and
//! ACK drops alike, with the cause read from which counter moved (never re-deriving the kernel's
//! predicate). A listener's own `sk_drops` would not do: other CPUs bump it concurrently, and the
//! final-ACK path bumps it twice.
//!
//! The record kind follows what the kernel did, not what it meant to do: ListenDrops moved → a
//! drop; otherwise SyncookiesSent moved → a syncookie. TCPReqQFullDoCookies alone is no cookie:
//! `tcp_syn_flood_action()` bumps it when it *wants* a cookie, and the same SYN can then be
//! dropped because the accept queue is full (ListenOverflows, ListenDrops; seen on 7.2). Such a
//! drop record carries all three deltas.
//!
//! Where the "before" and "after" come from is a hook variant (`cgroup.rs`, `probes.rs`); this
//! file is the part they share. One bracket per CPU is open at a time. A variant that finds a
//! bracket still open when it opens one closes it first ("late"): no drop can happen on a CPU
//! outside a bracket, so a bracket whose own end was not seen is settled exactly by the next one.
//!
//! A drop record also carries the listener's accept activity (`accepts.rs`), and each drop
//! enters its connection attempt in `ATTEMPTS` (`clients.rs`). A RST the listener sends for the
//! bracketed packet itself (`tcp_abort_on_overflow=1`, or a segment the listener has no
//! connection for) is noted by the reset programs in the bracket and resolved here, after the
//! drop record, so that the attempt's outcome always follows its drops in the ring.

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use lqtrace_common::{
    BracketRecord, FLAG_LATE, KIND_DROP, KIND_SYNCOOKIE, MIB_COUNT, MIB_EMBRYONIC_RSTS,
    MIB_LISTEN_DROPS, MIB_SYNCOOKIES_SENT, STAGE_ACK, STAGE_OTHER, STAGE_SYN, STAT_BAD_CLOSE,
    STAT_BRACKETS, STAT_LATE, STAT_LOST_DROP_RECORDS, STAT_LOST_DROPS, STAT_LOST_OTHER,
    clients::{RESOLVED_BY_EMBRYONIC_RST, RESOLVED_BY_LISTENER_RST},
};

use crate::{
    accepts, clients,
    kernel::{read_mib, read_u32, read_u64, this_cpu_offset},
    maps::{BRACKETS, Bracket, EVENTS, config, stat_add},
};

pub const IPPROTO_TCP: u8 = 6;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// A counter delta larger than this cannot come from one packet: the bracket read freed memory.
const MAX_PLAUSIBLE_DELTA: u64 = 1 << 16;

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const WAKEUP_EVERY_NS: u64 = 5_000_000;

/// The hook variant that opened the bracket, so that only that variant's "after" hook closes it.
pub const VARIANT_CGROUP: u64 = 1;
pub const VARIANT_FENTRY: u64 = 2;
pub const VARIANT_KPROBE: u64 = 3;

/// The slot of this CPU, with any stale bracket settled.
#[inline(always)]
pub fn fresh_slot() -> Option<*mut Bracket> {
    let slot = BRACKETS.get_ptr_mut(0)?;
    if unsafe { (*slot).skb } != 0 {
        close(slot, FLAG_LATE);
    }
    unsafe { (*slot).record = BracketRecord::default() };
    Some(slot)
}

/// Open a bracket for a packet about to be processed by the listener at `sk`. The packet fields
/// of `(*slot).record` (addresses, ports, flags, stage) are already filled by the caller.
///
/// This runs for every packet a listener receives, so it only does what must happen before the
/// kernel processes the packet: find this CPU's counters and read them. Everything else about the
/// listener is read in `close()`, and only when a counter moved.
#[inline(always)]
pub fn open(slot: *mut Bracket, sk: u64, skb: u64, variant: u64, cookie: u64) -> Option<()> {
    let b: &mut Bracket = unsafe { &mut *slot };
    let cpu_offset = this_cpu_offset()?;
    let net = read_u64(sk + config!(sk_net) as u64)?;
    let mib_percpu = read_u64(net + config!(net_mib_stats) as u64)?;
    let mib = mib_percpu.wrapping_add(cpu_offset);
    read_mib(mib, &mut b.mib_buf, &mut b.before)?;
    b.record.cookie = cookie;
    b.sk = sk;
    b.net = net;
    b.mib = mib;
    b.variant = variant;
    b.rst_pending = 0;
    b.skb = skb;
    stat_add(STAT_BRACKETS, 1);
    Some(())
}

/// The listener's state, read when a counter moved. The packet was just processed and dropped
/// (or answered with a cookie), so the queues are as the kernel saw them when it decided.
#[inline(always)]
fn describe_listener(b: &mut Bracket) {
    let (sk, net) = (b.sk, b.net);
    let r = &mut b.record;
    r.cpu = unsafe { bpf_get_smp_processor_id() };
    r.ts_ns = unsafe { bpf_ktime_get_ns() };
    r.netns = read_u32(net + config!(net_inum) as u64).unwrap_or(0);
    r.somaxconn = read_u32(net + config!(net_somaxconn) as u64).unwrap_or(0);
    r.accept_queue = read_u32(sk + config!(sk_ack_backlog) as u64).unwrap_or(0);
    r.accept_queue_max = read_u32(sk + config!(sk_max_ack_backlog) as u64).unwrap_or(0);
    r.syn_queue = read_u32(sk + config!(icsk_qlen) as u64).unwrap_or(0);
    let socket = read_u64(sk + config!(sk_socket) as u64).unwrap_or(0);
    if socket != 0 {
        r.sock_ino = read_u64(socket + config!(socket_ino) as u64).unwrap_or(0);
    }
}

/// Close this CPU's bracket if it is the one `variant` opened for `skb` (0: any skb).
#[inline(always)]
pub fn close_matching(variant: u64, skb: u64) {
    let Some(slot) = BRACKETS.get_ptr_mut(0) else {
        return;
    };
    let (open_skb, open_by) = unsafe { ((*slot).skb, (*slot).variant) };
    if open_skb == 0 || open_by != variant || (skb != 0 && open_skb != skb) {
        return;
    }
    close(slot, 0);
}

/// Fill addresses from an IPv4 header; returns the TCP header offset.
#[inline(always)]
pub fn apply_ipv4(r: &mut BracketRecord, ip: &[u8; 20]) -> Option<usize> {
    if ip[9] != IPPROTO_TCP {
        return None;
    }
    r.ip_version = 4;
    r.raddr[..4].copy_from_slice(&ip[12..16]);
    r.laddr[..4].copy_from_slice(&ip[16..20]);
    Some(((ip[0] & 0x0f) as usize) * 4)
}

/// Fill addresses from an IPv6 header; false when TCP is not the next header (extension
/// headers: rare on a listener's traffic; the packet is still bracketed, without ports).
#[inline(always)]
pub fn apply_ipv6(r: &mut BracketRecord, ip: &[u8; 40]) -> bool {
    r.ip_version = 6;
    r.raddr.copy_from_slice(&ip[8..24]);
    r.laddr.copy_from_slice(&ip[24..40]);
    if ip[6] != IPPROTO_TCP {
        r.stage = STAGE_OTHER;
        return false;
    }
    true
}

#[inline(always)]
pub fn apply_tcp(r: &mut BracketRecord, tcp: &[u8; 14]) {
    r.rport = u16::from_be_bytes([tcp[0], tcp[1]]);
    r.lport = u16::from_be_bytes([tcp[2], tcp[3]]);
    r.seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let flags = tcp[13];
    r.tcp_flags = flags;
    r.stage = if flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN {
        STAGE_SYN
    } else if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_ACK {
        STAGE_ACK
    } else {
        STAGE_OTHER
    };
}

/// After: compare this CPU's counters with the values before the packet; report what moved.
#[inline(always)]
pub fn close(slot: *mut Bracket, flags: u8) {
    let b: &mut Bracket = unsafe { &mut *slot };
    b.skb = 0;
    let rst = core::mem::take(&mut b.rst_pending) != 0;
    if flags & FLAG_LATE != 0 {
        stat_add(STAT_LATE, 1);
    }
    let mut after = [0u64; MIB_COUNT];
    if read_mib(b.mib, &mut b.mib_buf, &mut after).is_none() {
        stat_add(STAT_BAD_CLOSE, 1);
        return;
    }
    for i in 0..MIB_COUNT {
        let d = after[i].wrapping_sub(b.before[i]);
        if d > MAX_PLAUSIBLE_DELTA {
            stat_add(STAT_BAD_CLOSE, 1);
            return;
        }
        b.record.deltas[i] = d as u32;
    }
    let drops = b.record.deltas[MIB_LISTEN_DROPS];
    let kind = if drops > 0 {
        KIND_DROP
    } else if b.record.deltas[MIB_SYNCOOKIES_SENT] > 0 {
        KIND_SYNCOOKIE
    } else {
        // Nothing moved, or e.g. SyncookiesRecv alone (a connection made from a cookie): not a
        // drop. A RST the listener sent for this packet still ends the client's attempt.
        if rst {
            let netns = read_u32(b.net + config!(net_inum) as u64).unwrap_or(0);
            clients::resolve_reset(netns, &b.record, RESOLVED_BY_LISTENER_RST);
        }
        return;
    };
    b.record.kind = kind;
    b.record.flags |= flags;
    describe_listener(b);
    accepts::fill_drop(&mut b.record, b.sk);
    // The RST that ends this attempt: tcp_abort_on_overflow's (EmbryonicRsts moved), or another
    // one the listener sent for the packet.
    let reset_by = if b.record.deltas[MIB_EMBRYONIC_RSTS] > 0 {
        RESOLVED_BY_EMBRYONIC_RST
    } else if rst {
        RESOLVED_BY_LISTENER_RST
    } else {
        0
    };
    let outcome_after = if kind == KIND_DROP {
        clients::on_drop(&mut b.record, reset_by, &mut b.attempts_full_ns)
    } else {
        false
    };
    // Waking the reader costs more than the record itself under a flood: wake it at most every
    // WAKEUP_EVERY_NS per CPU; userspace also polls the ring (session.rs), so a record written
    // without a wakeup is read within that poll period.
    let now = b.record.ts_ns;
    let wake = if now.wrapping_sub(b.last_wakeup) >= WAKEUP_EVERY_NS {
        b.last_wakeup = now;
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<BracketRecord>(&b.record, wake).is_err() {
        if drops > 0 {
            stat_add(STAT_LOST_DROP_RECORDS, 1);
            stat_add(STAT_LOST_DROPS, drops as u64);
        } else {
            stat_add(STAT_LOST_OTHER, 1);
        }
    }
    if outcome_after {
        clients::emit_staged();
    }
}
