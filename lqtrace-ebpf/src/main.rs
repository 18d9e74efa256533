//! lqtrace kernel programs.
//!
//! A listen drop is observed by reading this CPU's `LINUX_MIB_*` listen counters of the
//! listener's network namespace before and after the listener processes a packet: whatever moved
//! in between was caused by that packet, because one CPU processes one packet at a time in
//! softirq (`bracket.rs` has the details and the reasons). Where "before" and "after" are taken
//! is the hook variant, chosen per stage (syn, ack) by the loader:
//! - `cgroup.rs` (variant cgroup): cgroup_skb/ingress on the root cgroup, just before the
//!   listener processes the packet; the raw tracepoints skb:consume_skb / skb:kfree_skb when
//!   that skb is freed.
//! - `probes.rs` (variants fentry and kprobe): entry and return of `tcp_conn_request`,
//!   `tcp_check_req`, `cookie_v4_check`, `cookie_v6_check`.
//!
//! `lifecycle.rs` follows listen() calls and listener state changes (requested backlog, who
//! called listen(), when a listener closes, each child socket created); `clients.rs` follows
//! each connection attempt with a drop to its outcome; `accepts.rs` keeps accept activity per
//! listener; `resets.rs` sees the RSTs this host sends (listener RSTs, refused SYNs); `maps.rs`
//! holds the maps and the configuration global; `kernel.rs` reads kernel memory at the offsets
//! the loader resolved from BTF.
#![no_std]
#![no_main]
// Atomic adds to shared map values (kernel.rs): the BPF target has no atomic types.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod accepts;
mod bracket;
mod cgroup;
mod clients;
mod kernel;
mod lifecycle;
mod maps;
mod probes;
mod resets;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
