//! lqtrace kernel programs.
//!
//! How a listen drop is observed (see `bracket.rs` for the details and the reasons):
//! - `listener_rx` (cgroup_skb/ingress on the root cgroup) runs for every packet a *listening*
//!   socket is about to process (SYN, final ACK, syncookie ACK), in the softirq, on the CPU that
//!   will process it. It reads this CPU's `LINUX_MIB_*` listen counters of the listener's network
//!   namespace: the "before" reading.
//! - `skb_consumed` / `skb_dropped` (raw tracepoints skb:consume_skb / skb:kfree_skb) fire when that
//!   same skb is freed at the end of its processing: the "after" reading. Whatever moved in between
//!   was caused by this packet, because one CPU processes one packet at a time in softirq.
//! - `listeners.rs` follows listen() calls to learn the requested backlog and who called listen().
#![no_std]
#![no_main]

mod bracket;
mod cgroup;
mod kernel;
mod listeners;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
