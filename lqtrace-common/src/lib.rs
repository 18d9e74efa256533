//! Plain-data types shared by the kernel programs and the loader.
//!
//! Every type here is `#[repr(C)]`, built from fixed-width integers and byte arrays only, with
//! explicit padding, so that the same bytes mean the same thing on both sides. Records start with a
//! one-byte kind tag; userspace decodes them with bounds checks (see `lqtrace/src/bpf/records.rs`),
//! never by transmuting.
#![no_std]

pub mod accepts;
pub mod clients;

/// Indexes of the per-CPU `STATS` array the programs keep (summed by userspace).
/// Drop records that could not be written to the ring buffer (ring full).
pub const STAT_LOST_DROP_RECORDS: u32 = 0;
/// Listen drops those lost records stood for (sum of their `LISTEN_DROPS` deltas).
pub const STAT_LOST_DROPS: u32 = 1;
/// Other records (syncookie, listen) that could not be written.
pub const STAT_LOST_OTHER: u32 = 2;
/// Listener packets bracketed (counters read before processing).
pub const STAT_BRACKETS: u32 = 3;
/// Brackets closed by the next listener packet instead of by the free of their own skb.
pub const STAT_LATE: u32 = 4;
/// Listener packets that could not be bracketed (a kernel read failed): drops during them
/// would be missed, so userspace reports this number.
pub const STAT_UNBRACKETED: u32 = 5;
/// Brackets whose closing read failed or gave implausible deltas (netns freed meanwhile).
pub const STAT_BAD_CLOSE: u32 = 6;
/// Drops whose attempt could not be followed (the `ATTEMPTS` map was full): they get no outcome
/// from the kernel; userspace reports them.
pub const STAT_ATTEMPTS_FULL: u32 = 7;
/// SYNs refused at ports that are not watched (no listener there during the run, not asked for
/// with `-P`): counted, not recorded, so a port scan cannot flood the output.
pub const STAT_REFUSED_UNWATCHED: u32 = 8;
/// Listeners whose accept activity could not be kept (`ACCEPT_STATS` full).
pub const STAT_ACCEPT_STATS_FULL: u32 = 9;
/// Outcome records that could not be written (ring full). Their attempts were already taken out
/// of `ATTEMPTS` by the kernel, so userspace cannot end them (its delete finds nothing).
pub const STAT_LOST_OUTCOMES: u32 = 10;
/// Child sockets created while no bracket was open on their CPU (the listener, and so the
/// arrival, unknown). Expected 0: every path that creates a child (`tcp_check_req`,
/// `cookie_v4_check`/`cookie_v6_check`, Fast Open in `tcp_conn_request`) runs inside one.
pub const STAT_CHILD_UNBRACKETED: u32 = 11;
pub const STAT_COUNT: u32 = 12;

/// Kind tag of a [`BracketRecord`] whose packet made the kernel count a listen drop
/// (`ListenDrops` moved), whatever else moved: `tcp_conn_request()` may first decide to answer
/// with a cookie (`TCPReqQFullDoCookies`) and then drop the SYN for a full accept queue.
pub const KIND_DROP: u8 = 1;
/// Kind tag of a [`BracketRecord`] whose SYN was answered with a SYN cookie (`SyncookiesSent`
/// moved, `ListenDrops` did not): not a drop.
pub const KIND_SYNCOOKIE: u8 = 2;
/// Kind tag of a [`ListenRecord`]: a socket entered TCP_LISTEN.
pub const KIND_LISTEN: u8 = 3;
/// Kind tag of a [`ListenRecord`]: `listen()` returned without a state change (a second
/// `listen()` on a listening socket changes its backlog), so userspace resolves the fd.
pub const KIND_RELISTEN: u8 = 4;
/// Kind tag of a [`ListenRecord`]: a socket left TCP_LISTEN.
pub const KIND_LISTEN_CLOSE: u8 = 5;

/// The packet that reached the listener was a SYN (connection request).
pub const STAGE_SYN: u8 = 1;
/// The packet that reached the listener was the client's ACK completing the handshake.
pub const STAGE_ACK: u8 = 2;
/// Any other segment (RST, data without a request socket, ...).
pub const STAGE_OTHER: u8 = 3;

/// The bracket was closed when the next listener packet arrived on the same CPU rather than when
/// its own packet was freed (e.g. the free happened without a tracepoint). Still exact.
pub const FLAG_LATE: u8 = 1;
/// The drop's attempt has no entry in `ATTEMPTS`: the map was full (`STAT_ATTEMPTS_FULL`), or
/// the packet was no SYN or final ACK, or its ports were unknown (IPv6 extension headers). The
/// kernel will send no outcome for it; userspace ends it itself.
pub const FLAG_ATTEMPT_UNTRACKED: u8 = 2;

/// Indexes into [`BracketRecord::deltas`] and [`Config::mib`]: the `LINUX_MIB_*` counters that
/// the programs read before and after a listener processes a packet.
pub const MIB_LISTEN_DROPS: usize = 0;
pub const MIB_LISTEN_OVERFLOWS: usize = 1;
pub const MIB_REQQ_FULL_DROP: usize = 2;
pub const MIB_REQQ_FULL_DO_COOKIES: usize = 3;
pub const MIB_SYNCOOKIES_RECV: usize = 4;
pub const MIB_EMBRYONIC_RSTS: usize = 5;
/// Bumped by `cookie_init_sequence()` (include/net/tcp.h) when `tcp_conn_request()` really
/// builds a cookie SYN-ACK; `TCPReqQFullDoCookies` only says a cookie was wanted.
pub const MIB_SYNCOOKIES_SENT: usize = 6;
pub const MIB_COUNT: usize = 7;

/// Kernel names of the counters above, in index order, as BTF names the enumerators.
pub const MIB_ENUM_NAMES: [&str; MIB_COUNT] = [
    "LINUX_MIB_LISTENDROPS",
    "LINUX_MIB_LISTENOVERFLOWS",
    "LINUX_MIB_TCPREQQFULLDROP",
    "LINUX_MIB_TCPREQQFULLDOCOOKIES",
    "LINUX_MIB_SYNCOOKIESRECV",
    "LINUX_MIB_EMBRYONICRSTS",
    "LINUX_MIB_SYNCOOKIESSENT",
];

/// One listener packet whose processing moved a listen counter on this CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BracketRecord {
    /// [`KIND_DROP`] or [`KIND_SYNCOOKIE`].
    pub kind: u8,
    /// [`STAGE_SYN`], [`STAGE_ACK`] or [`STAGE_OTHER`].
    pub stage: u8,
    /// 4 or 6: the IP version of the packet (an IPv4 packet may reach an AF_INET6 listener).
    pub ip_version: u8,
    /// [`FLAG_LATE`], [`FLAG_ATTEMPT_UNTRACKED`] bits.
    pub flags: u8,
    /// TCP flags byte of the packet.
    pub tcp_flags: u8,
    pub _pad0: [u8; 3],
    pub cpu: u32,
    pub netns: u32,
    /// `bpf_ktime_get_ns()` when the listener started on the packet (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Socket cookie of the listener (`bpf_get_socket_cookie`).
    pub cookie: u64,
    /// Inode number of the listener's socket (what `/proc/PID/fd` and `ss -e` show).
    pub sock_ino: u64,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    /// Host byte order.
    pub lport: u16,
    pub rport: u16,
    /// `sk_ack_backlog` when the packet arrived.
    pub accept_queue: u32,
    /// `sk_max_ack_backlog`.
    pub accept_queue_max: u32,
    /// `icsk_accept_queue.qlen`: request sockets (SYN queue).
    pub syn_queue: u32,
    /// `net.core.somaxconn` of the listener's network namespace.
    pub somaxconn: u32,
    /// How much each `MIB_*` counter of this CPU moved while the packet was processed.
    pub deltas: [u32; MIB_COUNT],
    /// The packet's TCP sequence number: the client's initial one for a SYN, plus one for the
    /// final ACK (attempts are told apart by it).
    pub seq: u32,
    /// The listener's accept activity at the drop (`accepts::AcceptStats`): how many
    /// connections its owners took in the last second, and when they last took one (0: not
    /// since lqtrace started).
    pub accepts_per_s: u32,
    pub last_accept_ns: u64,
}

/// A listener appeared, disappeared or had `listen()` called on it again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenRecord {
    /// [`KIND_LISTEN`], [`KIND_RELISTEN`] or [`KIND_LISTEN_CLOSE`].
    pub kind: u8,
    /// AF_INET / AF_INET6 of the socket (0 for KIND_RELISTEN).
    pub family: u8,
    /// 1 when `backlog` holds the value passed to `listen()`.
    pub has_backlog: u8,
    pub _pad0: u8,
    /// Thread group id and thread id of the caller of `listen()` (the caller of close for
    /// KIND_LISTEN_CLOSE, often a softirq bystander: not used for attribution).
    pub pid: u32,
    pub tid: u32,
    pub netns: u32,
    pub sock_ino: u64,
    pub ts_ns: u64,
    /// The backlog argument of `listen()` (int as the kernel received it).
    pub backlog: i32,
    /// The fd argument of `listen()` (KIND_RELISTEN: resolved through /proc by userspace).
    pub fd: i32,
    /// Local port from the tracepoint (0 for a port-0 bind: the port is chosen after the state
    /// change, in `inet_csk_listen_start`).
    pub sport: u16,
    /// 4 or 6: how `laddr` is stored (IPv4 in its first 4 bytes).
    pub ip_version: u8,
    pub _pad1: [u8; 5],
    pub comm: [u8; 16],
    /// The local address the socket listens on (all zero: the wildcard address).
    pub laddr: [u8; 16],
}

/// Kernel-specific layout, resolved at start from the running kernel (BTF and tracefs formats)
/// and handed to the programs as one global. Nothing in the programs is hard-coded.
/// All offsets are in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Set to 1 by the loader; the programs do nothing while it is 0.
    pub ready: u32,
    /// `TCP_LISTEN`, `TCP_CLOSE` and `TCP_SYN_RECV` from BTF (enum tcp_states).
    pub tcp_listen: u32,
    pub tcp_close: u32,
    pub tcp_syn_recv: u32,
    // struct sock
    /// `__sk_common.skc_state` (one byte).
    pub sk_state: u32,
    pub sk_net: u32,
    pub sk_ack_backlog: u32,
    pub sk_max_ack_backlog: u32,
    pub sk_socket: u32,
    /// `__sk_common.skc_num`: the local port, host byte order (u16).
    pub sk_num: u32,
    /// `sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `inet_connection_sock.icsk_accept_queue.qlen`, from the start of the sock.
    pub icsk_qlen: u32,
    /// `socket_alloc.vfs_inode.i_ino` minus `socket_alloc.socket`: from a `struct socket *`.
    pub socket_ino: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    // struct net
    pub net_inum: u32,
    pub net_mib_stats: u32,
    pub net_somaxconn: u32,
    /// `bpf_array.pptrs`: used to find this CPU's per-CPU base (see the ebpf crate).
    pub bpf_array_pptrs: u32,
    /// `LINUX_MIB_*` indexes in `struct linux_mib`, in `MIB_*` order.
    pub mib: [u32; MIB_COUNT],
    /// The counters are read in runs of [`MIB_RUN_LEN`] consecutive `unsigned long`s (one
    /// `bpf_probe_read_kernel` each) instead of one read per counter: `mib_runs` runs starting
    /// at these indexes, and each counter's position in the runs' buffer (`run * MIB_RUN_LEN +
    /// index - start`). See `mib_runs()`.
    pub mib_runs: u32,
    pub mib_run_start: [u32; MIB_COUNT],
    pub mib_pos: [u32; MIB_COUNT],
    // From the current task to the socket behind a file descriptor (accept syscall variant):
    // task_struct.files -> files_struct.fdt -> fdtable.{max_fds, fd[]} -> file.private_data.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    // tracepoint records (layouts from BTF)
    /// `syscall_trace_enter.args[0]` and `args[1]` (any `syscalls:sys_enter_*`), and
    /// `syscall_trace_exit.ret` (any `syscalls:sys_exit_*`).
    pub tp_sys_arg0: u32,
    pub tp_sys_arg1: u32,
    pub tp_sys_ret: u32,
    /// `__sk_common.skc_family` (u16), `skc_rcv_saddr` (4 bytes) and `skc_v6_rcv_saddr` (16
    /// bytes; 0 when the kernel has no IPv6): a listener's family and local address, read by the
    /// `inet_sock_set_state` raw tracepoint program.
    pub sk_family: u32,
    pub sk_rcv_saddr: u32,
    pub sk_v6_rcv_saddr: u32,
    /// `inet_sock.inet_sport` (u16, network order), from the sock pointer.
    pub sk_inet_sport: u32,
    /// 1 when `tcp:tcp_send_reset` has its own record with a `reason` (Linux 6.10, "tcp: fully
    /// support trace_tcp_send_reset"): from then on it fires for a NULL socket too. The four
    /// offsets below are valid only then.
    pub tp_reset_full: u32,
    pub tp_reset_skbaddr: u32,
    pub tp_reset_skaddr: u32,
    pub tp_reset_state: u32,
    pub tp_reset_reason: u32,
    // struct sk_buff, for the programs that read the packet from the skb
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub skb_protocol: u32,
    /// `sk_buff.dev` and `net_device.nd_net.net`: the network namespace of a segment that found
    /// no socket (a refused SYN).
    pub skb_dev: u32,
    pub dev_nd_net: u32,
    /// Number of parameters of `inet_csk_accept` (4 before Linux 6.10, 2 since; 0: absent) and
    /// of `tcp_v4_send_reset`/`tcp_v6_send_reset` (2, or 3 with `enum sk_rst_reason` since
    /// 6.10): which fexit program fits, and whether the kprobe reads a reason.
    pub accept_args: u32,
    pub send_reset_args: u32,
    /// Set by userspace (not from the kernel): record refused SYNs at every port, not only at
    /// the ports in `REFUSED_PORTS`.
    pub refused_all: u32,
}

/// Counters read per `bpf_probe_read_kernel` of a MIB run (see `Config::mib_runs`).
pub const MIB_RUN_LEN: usize = 8;
/// Size of the programs' run buffer, in counters: a power of two above `MIB_COUNT * MIB_RUN_LEN`
/// so that a position masked with `MIB_BUF - 1` is in bounds for the verifier.
pub const MIB_BUF: usize = 64;

/// Group the counter indexes `idx` (of a `struct linux_mib` with `max` entries) into runs of
/// [`MIB_RUN_LEN`]: returns (runs, start of each run, each counter's position in the buffer).
/// A run never reads past `max` (it starts lower instead), so every read stays inside the struct.
pub fn mib_runs(idx: &[u32; MIB_COUNT], max: u32) -> (u32, [u32; MIB_COUNT], [u32; MIB_COUNT]) {
    let len = MIB_RUN_LEN as u32;
    let mut order: [usize; MIB_COUNT] = core::array::from_fn(|i| i);
    order.sort_unstable_by_key(|&i| idx[i]);
    let (mut runs, mut start, mut pos) = (0u32, [0u32; MIB_COUNT], [0u32; MIB_COUNT]);
    for &i in &order {
        let v = idx[i];
        let fits = runs > 0 && v >= start[runs as usize - 1] && v < start[runs as usize - 1] + len;
        if !fits {
            let s = if max >= len && v + len > max {
                max - len
            } else {
                v
            };
            start[runs as usize] = s;
            runs += 1;
        }
        let r = runs as usize - 1;
        pos[i] = r as u32 * len + (v - start[r]);
    }
    (runs, start, pos)
}

/// Positions of the `struct sock *` (the listener, or for the send_reset functions the socket
/// that answers, maybe NULL) and the `struct sk_buff *` among the arguments of the functions the
/// fentry/kprobe variants hook. They are compiled into the programs (the verifier of kernels
/// before ~6.5 rejects a context read at a computed offset), and the loader checks them against
/// the running kernel's BTF prototypes, skipping a variant whose function differs: (function, sk
/// position, skb position).
pub const PROBE_ARGS: [(&str, u32, u32); 6] = [
    ("tcp_conn_request", 2, 3),
    ("tcp_check_req", 0, 1),
    ("cookie_v4_check", 0, 1),
    ("cookie_v6_check", 0, 1),
    ("tcp_v4_send_reset", 0, 1),
    ("tcp_v6_send_reset", 0, 1),
];

/// The accept variants' function: `struct sock *inet_csk_accept(struct sock *sk, ...)`, the
/// listener first, the child returned (checked against BTF like [`PROBE_ARGS`]).
pub const ACCEPT_FUNCTION: &str = "inet_csk_accept";

/// Bits of the `CGROUP_STAGES` map: which packets the cgroup "before" hook brackets. The others
/// are bracketed by function probes (fentry/fexit or kprobe/kretprobe).
pub const CGROUP_SYN: u32 = 1;
pub const CGROUP_ACK: u32 = 2;

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::BracketRecord {}
    unsafe impl aya::Pod for super::ListenRecord {}
    unsafe impl aya::Pod for super::clients::AttemptKey {}
    unsafe impl aya::Pod for super::clients::AttemptValue {}
    unsafe impl aya::Pod for super::clients::PortKey {}
    unsafe impl aya::Pod for super::clients::OutcomeRecord {}
    unsafe impl aya::Pod for super::clients::RefusedRecord {}
    unsafe impl aya::Pod for super::accepts::ChildEntry {}
    unsafe impl aya::Pod for super::accepts::AcceptStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::offset_of!(BracketRecord, deltas), 92);
        assert_eq!(core::mem::offset_of!(BracketRecord, seq), 120);
        assert_eq!(core::mem::offset_of!(BracketRecord, last_accept_ns), 128);
        assert_eq!(size_of::<BracketRecord>(), 136);
        assert_eq!(
            size_of::<ListenRecord>(),
            4 + 4 * 3 + 8 * 2 + 4 * 2 + 2 + 6 + 16 + 16
        );
        assert_eq!(size_of::<Config>() % 4, 0);
    }

    /// Every counter's position reads back its own index, runs stay inside the struct.
    fn check_runs(idx: [u32; MIB_COUNT], max: u32) -> u32 {
        let (runs, start, pos) = mib_runs(&idx, max);
        for i in 0..MIB_COUNT {
            let (r, off) = (pos[i] as usize / MIB_RUN_LEN, pos[i] as usize % MIB_RUN_LEN);
            assert!(r < runs as usize && (pos[i] as usize) < MIB_BUF);
            assert_eq!(start[r] + off as u32, idx[i], "{idx:?}");
        }
        for s in &start[..runs as usize] {
            assert!(s + MIB_RUN_LEN as u32 <= max.max(MIB_RUN_LEN as u32));
        }
        runs
    }

    #[test]
    fn mib_runs_cover_every_counter() {
        // 6.18: LISTENDROPS 24, LISTENOVERFLOWS 23, REQQFULLDROP 79, REQQFULLDOCOOKIES 78,
        // SYNCOOKIESRECV 2, EMBRYONICRSTS 4, SYNCOOKIESSENT 1; __LINUX_MIB_MAX 136.
        assert_eq!(check_runs([24, 23, 79, 78, 2, 4, 1], 136), 3);
        // A counter at the very end: the run starts lower.
        assert_eq!(check_runs([24, 23, 79, 135, 2, 4, 1], 136), 4);
        // Spread out: one run each.
        assert_eq!(check_runs([0, 10, 20, 30, 40, 50, 60], 136), 7);
    }
}
