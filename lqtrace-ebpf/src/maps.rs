//! Maps and the configuration global shared by all programs.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use lqtrace_common::{
    BracketRecord, Config, MIB_BUF, MIB_COUNT, STAT_COUNT,
    accepts::{ACCEPT_STATS_MAX, AcceptStats, CHILDREN_MAX, ChildEntry},
    clients::{
        ATTEMPTS_MAX, AttemptKey, AttemptValue, LIVE_SLOTS, OutcomeRecord, PortKey,
        REFUSED_PORTS_MAX, RefusedRecord,
    },
};

/// Kernel layout resolved by the loader from BTF and tracefs (`EbpfLoader::override_global`).
/// Read fields with [`config!`]: a volatile read, so the compiler cannot fold the zero initializer.
#[unsafe(no_mangle)]
pub static CONFIG: Config = unsafe { core::mem::zeroed() };

macro_rules! config {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let v =
            unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::maps::CONFIG.$field)) };
        v
    }};
}
pub(crate) use config;

/// Which packets the cgroup "before" hook brackets (`lqtrace_common::CGROUP_SYN | CGROUP_ACK`):
/// a map, not part of CONFIG, because the loader decides it after probing which hook variants
/// the kernel accepts, once the object is loaded.
#[map]
pub static CGROUP_STAGES: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn cgroup_stages() -> u32 {
    CGROUP_STAGES.get(0).copied().unwrap_or(0)
}

/// Records to userspace. 4 MiB holds ~30k drop records: several seconds of a flood even when the
/// reader is slow; every record that does not fit is counted in `STATS`.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Counters about the tracer itself (`lqtrace_common::STAT_*`), per CPU, summed by userspace.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// The packet a listener is processing on this CPU and the counter values before it.
#[repr(C)]
pub struct Bracket {
    /// Address of the skb being processed, 0 when no bracket is open.
    pub skb: u64,
    /// `bracket::VARIANT_*`: which hook variant opened it.
    pub variant: u64,
    /// The listener (`struct sock *`) and its network namespace (`struct net *`).
    pub sk: u64,
    pub net: u64,
    /// When this CPU last woke the reader (see `bracket::close`).
    pub last_wakeup: u64,
    /// Address of this CPU's `struct linux_mib` of the listener's network namespace.
    pub mib: u64,
    /// Counter values before processing, in `MIB_*` order.
    pub before: [u64; MIB_COUNT],
    /// Scratch slot used to turn kernel pointers into plain numbers (see `kernel::as_number`).
    pub scratch: u64,
    /// Set by the reset programs when the listener sends a RST for this very packet: the close
    /// resolves the packet's attempt (after its drop record, if it was a drop).
    pub rst_pending: u64,
    /// When an attempt last found `ATTEMPTS` full on this CPU (`clients::on_drop`), 0: never.
    pub attempts_full_ns: u64,
    /// The record to send if a counter moves, filled before processing.
    pub record: BracketRecord,
    /// Room for the counter runs `kernel::read_mib` reads.
    pub mib_buf: [u64; MIB_BUF],
}

#[map]
pub static BRACKETS: PerCpuArray<Bracket> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's per-CPU area offset (see `kernel::this_cpu_offset`).
#[repr(C)]
pub struct CpuBase {
    pub offset: u64,
    pub valid: u64,
    pub scratch: u64,
}

#[map]
pub static CPU_BASE: PerCpuArray<CpuBase> = PerCpuArray::with_max_entries(1, 0);

/// A listen() call in progress, by pid_tgid, between sys_enter_listen and sys_exit_listen.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ListenCall {
    pub fd: i32,
    pub backlog: i32,
    /// Set when inet_sock_set_state(TCP_LISTEN) consumed the call.
    pub seen: u32,
    pub _pad: u32,
}

/// LRU so that calls whose exit we never see (killed task) cannot fill the map.
#[map]
pub static LISTEN_CALLS: LruHashMap<u64, ListenCall> = LruHashMap::with_max_entries(4096, 0);

/// Connection attempts with a dropped packet, until their fate is known (`lqtrace_common::clients`).
/// A plain hash, not LRU: a full map is counted, never silently evicted.
#[map]
pub static ATTEMPTS: HashMap<AttemptKey, AttemptValue> = HashMap::with_max_entries(ATTEMPTS_MAX, 0);

/// Live-attempt counters (`clients::LIVE_*`), so that programs skip `ATTEMPTS` when it is empty.
#[map]
pub static ATTEMPTS_LIVE: Array<u64> = Array::with_max_entries(LIVE_SLOTS, 0);

/// Accept activity per listener (`struct sock *` address), see `lqtrace_common::accepts`.
#[map]
pub static ACCEPT_STATS: HashMap<u64, AcceptStats> = HashMap::with_max_entries(ACCEPT_STATS_MAX, 0);

/// Children in an accept queue, by socket address. LRU: children closed before accept() are
/// never seen leaving. `BPF_F_NO_COMMON_LRU`: an insert (one per connection, in softirq) takes
/// this CPU's LRU list instead of the map-wide one and its lock (kernel/bpf/bpf_lru_list.c);
/// a child accepted on another CPU is found and freed there all the same (the hash table is
/// shared, a freed node goes back to the list of the CPU that took it). Each CPU's list holds
/// CHILDREN_MAX / CPUs entries.
#[map]
pub static CHILDREN: LruHashMap<u64, ChildEntry> =
    LruHashMap::with_max_entries(CHILDREN_MAX, BPF_F_NO_COMMON_LRU);

const BPF_F_NO_COMMON_LRU: u32 = 1 << 1; // include/uapi/linux/bpf.h, stable

/// Ports whose refused SYNs are recorded (`lqtrace_common::clients::PortKey`).
#[map]
pub static REFUSED_PORTS: HashMap<PortKey, u8> = HashMap::with_max_entries(REFUSED_PORTS_MAX, 0);

/// An accept() in progress: the listener's fd (syscall variant) or socket (kprobe variant),
/// between entry and return.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AcceptCall {
    pub fd: i64,
    pub sk: u64,
}

/// The accept() call last entered on this CPU, with the thread that made it (`pid_tgid`; 0:
/// none). A per-CPU slot, not a hash by thread: an entry and a lookup cost a few loads instead
/// of two LRU hash updates per accepted connection. The return finds its call when the thread
/// did not sleep and migrate in between, or let another accept() run on the CPU meanwhile (a
/// non-blocking accept, as event-loop servers make, always does); otherwise the call's listener
/// is taken from the child's arrival (`CHILDREN`), which every connection that completed while
/// lqtrace ran has, and only a connection queued before lqtrace started goes uncounted.
#[repr(C)]
pub struct AcceptSlot {
    pub pid_tgid: u64,
    pub call: AcceptCall,
}

#[map]
pub static ACCEPT_SLOT: PerCpuArray<AcceptSlot> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room for records and values too large for the 512-byte BPF stack next to the rest.
#[repr(C)]
pub struct Scratch {
    pub outcome: OutcomeRecord,
    pub refused: RefusedRecord,
    pub stats: AcceptStats,
    /// The segment a reset program examines.
    pub segment: BracketRecord,
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn stat_add(index: u32, n: u64) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it, and programs on one CPU don't nest for our hooks.
        unsafe { *p += n };
    }
}
