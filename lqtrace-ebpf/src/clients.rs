//! What the clients saw, kernel side: each connection attempt with a dropped packet is kept in
//! `ATTEMPTS` from its first drop (`on_drop`, called by the bracket close) until the program that
//! sees its fate deletes it and, only if that delete succeeded, writes an `OutcomeRecord`:
//! - the child socket's creation (`completed`, from `lifecycle.rs`): connected;
//! - a RST this host sent for it (`resolve_reset`, from the bracket close or `resets.rs`): reset;
//! - a new attempt from the same client port (`on_drop`, `completed`): superseded.
//!
//! Attempts are told apart by the client's initial sequence number (ISN): a SYN carries it, a
//! final ACK carries ISN + 1, and a later segment of the same attempt (data sent after a final
//! ACK the listener dropped) ISN + 1 + the bytes before it. So a SYN belongs to the stored
//! attempt only with the same ISN, any other segment when it lies less than [`ISN_WINDOW`]
//! above it (a request socket accepts no segment beyond its receive window, well below that;
//! another attempt's random ISN lands there with probability 2^-12).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lqtrace_common::{
    BracketRecord, FLAG_ATTEMPT_UNTRACKED, MIB_LISTEN_DROPS, STAGE_ACK, STAGE_SYN,
    STAT_ATTEMPTS_FULL, STAT_LOST_OUTCOMES,
    clients::{
        AttemptKey, AttemptValue, KIND_OUTCOME, LIVE_ADDED, LIVE_KERNEL_ENDED, LIVE_USER_ENDED,
        OUTCOME_CONNECTED, OUTCOME_RESET, OUTCOME_SUPERSEDED, OutcomeRecord, RESOLVED_BY_CHILD,
        RESOLVED_BY_NEW_ATTEMPT,
    },
};

use crate::{
    kernel::{atomic_add32, atomic_add64},
    maps::{ATTEMPTS, ATTEMPTS_LIVE, EVENTS, SCRATCH, stat_add},
};

const ISN_WINDOW: u32 = 1 << 20;
/// After an insert found `ATTEMPTS` full, this CPU enters no new attempt for this long. Under a
/// flood of new clients (spoofed SYNs) the map is full within milliseconds and stays full until
/// userspace ends its attempts as given up (~2 s later); every drop would otherwise pay for a
/// failed insert (bucket lock, free-list walk) and two contended counter updates. A drop of an
/// attempt already in the map still finds it (the lookup comes first).
const FULL_BACKOFF_NS: u64 = 10_000_000;
const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

/// The attempt key of a packet described by `r` (addresses and ports as the listener sees
/// them). A v4-mapped IPv6 client is keyed as IPv4, as every hook sees an IPv4 packet.
#[inline(always)]
pub fn key_of(netns: u32, r: &BracketRecord) -> AttemptKey {
    let mut k = AttemptKey {
        netns,
        lport: r.lport,
        rport: r.rport,
        ip_version: r.ip_version,
        ..AttemptKey::default()
    };
    if r.ip_version == 6 && is_v4_mapped(&r.raddr) {
        k.ip_version = 4;
        k.raddr[..4].copy_from_slice(&r.raddr[12..16]);
        k.laddr[..4].copy_from_slice(&r.laddr[12..16]);
    } else if r.ip_version == 6 {
        k.raddr = r.raddr;
        k.laddr = r.laddr;
    } else {
        k.raddr[..4].copy_from_slice(&r.raddr[..4]);
        k.laddr[..4].copy_from_slice(&r.laddr[..4]);
    }
    k
}

#[inline(always)]
pub fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0u8; 10] && a[10] == 0xff && a[11] == 0xff
}

/// Whether any attempt may be pending (see `lqtrace_common::clients`): lets the programs that
/// run for every child and every listener RST skip `ATTEMPTS` when nothing was dropped.
#[inline(always)]
pub fn any_live() -> bool {
    let slot = |i| ATTEMPTS_LIVE.get(i).copied().unwrap_or(0);
    let live = slot(LIVE_ADDED)
        .wrapping_sub(slot(LIVE_KERNEL_ENDED))
        .wrapping_sub(slot(LIVE_USER_ENDED));
    live as i64 > 0
}

#[inline(always)]
fn live_add(slot: u32) {
    if let Some(p) = ATTEMPTS_LIVE.get_ptr_mut(slot) {
        atomic_add64(p, 1);
    }
}

/// Whether a segment (`stage`, `seq`) belongs to the attempt whose ISN is `isn`.
#[inline(always)]
fn same_attempt(stage: u8, seq: u32, isn: u32) -> bool {
    if stage == STAGE_SYN {
        return seq == isn;
    }
    let d = seq.wrapping_sub(isn);
    d >= 1 && d < ISN_WINDOW
}

/// Delete the entry; true if this program took it (and so owns its outcome).
#[inline(always)]
fn take(key: &AttemptKey) -> bool {
    if ATTEMPTS.remove(key).is_ok() {
        live_add(LIVE_KERNEL_ENDED);
        true
    } else {
        false
    }
}

/// Fill the per-CPU outcome record; `emit_staged` writes it.
#[inline(always)]
fn stage(outcome: u8, by: u32, key: &AttemptKey, value: &AttemptValue, now: u64) -> bool {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        stat_add(STAT_LOST_OUTCOMES, 1);
        return false;
    };
    unsafe {
        (*s).outcome = OutcomeRecord {
            kind: KIND_OUTCOME,
            outcome,
            resolved_by: by,
            ts_ns: now,
            value: *value,
            key: *key,
            ..OutcomeRecord::default()
        };
    }
    true
}

#[inline(always)]
pub fn emit_staged() {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    if EVENTS
        .output::<OutcomeRecord>(unsafe { &(*s).outcome }, 0)
        .is_err()
    {
        stat_add(STAT_LOST_OUTCOMES, 1);
    }
}

#[inline(always)]
fn emit(outcome: u8, by: u32, key: &AttemptKey, value: &AttemptValue, now: u64) {
    if stage(outcome, by, key, value, now) {
        emit_staged();
    }
}

/// A listen drop of the packet `r` (its record complete but not yet written). Enters or updates
/// the attempt; with `reset_by` (a RST was sent for this packet) ends it at once. Returns true
/// when an outcome is staged, to be written after the drop record (`emit_staged`).
#[inline(always)]
pub fn on_drop(r: &mut BracketRecord, reset_by: u32, full_ns: &mut u64) -> bool {
    if r.lport == 0 || (r.stage != STAGE_SYN && r.stage != STAGE_ACK) {
        // No ports (IPv6 extension headers) or not a handshake segment: no attempt to follow.
        r.flags |= FLAG_ATTEMPT_UNTRACKED;
        return false;
    }
    let key = key_of(r.netns, r);
    let drops = r.deltas[MIB_LISTEN_DROPS];
    let now = r.ts_ns;
    if let Some(v) = ATTEMPTS.get_ptr_mut(&key) {
        if same_attempt(r.stage, r.seq, unsafe { (*v).isn }) {
            unsafe {
                atomic_add32(&raw mut (*v).drops, drops);
                (*v).last_ns = now;
            }
            if reset_by == 0 {
                return false;
            }
            let value = unsafe { *v };
            return take(&key) && stage(OUTCOME_RESET, reset_by, &key, &value, now);
        }
        // Another attempt from this client port: the stored one is over.
        let old = unsafe { *v };
        if take(&key) {
            emit(OUTCOME_SUPERSEDED, RESOLVED_BY_NEW_ATTEMPT, &key, &old, now);
        }
    }
    let value = AttemptValue {
        first_ns: now,
        last_ns: now,
        drops,
        isn: if r.stage == STAGE_SYN {
            r.seq
        } else {
            r.seq.wrapping_sub(1)
        },
        sock_ino: r.sock_ino,
    };
    if reset_by != 0 {
        // Its first drop is also its end: nobody else can see it, no entry needed.
        return stage(OUTCOME_RESET, reset_by, &key, &value, now);
    }
    if *full_ns != 0 && now.wrapping_sub(*full_ns) < FULL_BACKOFF_NS {
        untracked_map_full(r);
        return false;
    }
    // Count first, so that `any_live` never misses an entry that exists.
    live_add(LIVE_ADDED);
    match ATTEMPTS.insert(&key, &value, BPF_NOEXIST) {
        Ok(()) => {}
        Err(e) => {
            live_add(LIVE_KERNEL_ENDED);
            if e == -EEXIST
                && let Some(v) = ATTEMPTS.get_ptr_mut(&key)
            {
                // Another CPU entered the same attempt meanwhile.
                unsafe { atomic_add32(&raw mut (*v).drops, drops) };
            } else {
                *full_ns = now;
                untracked_map_full(r);
            }
        }
    }
    false
}

/// `ATTEMPTS` had no room for the attempt of `r`: counted, and the record says so (userspace
/// then follows the attempt alone).
#[inline(always)]
fn untracked_map_full(r: &mut BracketRecord) {
    stat_add(STAT_ATTEMPTS_FULL, 1);
    r.flags |= FLAG_ATTEMPT_UNTRACKED;
}

/// This host sent a RST for the segment `r` from a listener (no drop in the same packet, or seen
/// outside a bracket): the attempt it belongs to, if any, ends as reset.
#[inline(always)]
pub fn resolve_reset(netns: u32, r: &BracketRecord, by: u32) {
    if r.lport == 0 || !any_live() {
        return;
    }
    let key = key_of(netns, r);
    let Some(v) = (unsafe { ATTEMPTS.get(&key) }).copied() else {
        return;
    };
    if !same_attempt(r.stage, r.seq, v.isn) {
        return;
    }
    if take(&key) {
        emit(OUTCOME_RESET, by, &key, &v, unsafe { bpf_ktime_get_ns() });
    }
}

/// The packet `r` completed a handshake (a child socket was created while it was processed):
/// its attempt, if one had a drop, connected — or, with another ISN, was superseded by it.
#[inline(always)]
pub fn completed(netns: u32, r: &BracketRecord) {
    if r.lport == 0 || !any_live() {
        return;
    }
    let key = key_of(netns, r);
    let Some(v) = (unsafe { ATTEMPTS.get(&key) }).copied() else {
        return;
    };
    let (outcome, by) = if same_attempt(r.stage, r.seq, v.isn) {
        (OUTCOME_CONNECTED, RESOLVED_BY_CHILD)
    } else {
        (OUTCOME_SUPERSEDED, RESOLVED_BY_NEW_ATTEMPT)
    };
    if take(&key) {
        emit(outcome, by, &key, &v, unsafe { bpf_ktime_get_ns() });
    }
}
