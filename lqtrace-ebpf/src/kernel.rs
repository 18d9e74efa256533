//! Reading kernel memory with offsets handed over by the loader (no CO-RE in Rust eBPF).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::bpf_probe_read_kernel;
use lqtrace_common::{MIB_BUF, MIB_COUNT, MIB_RUN_LEN};

use crate::maps::{CPU_BASE, config};

#[inline(always)]
pub fn read_u64(addr: u64) -> Option<u64> {
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
}

#[inline(always)]
pub fn read_u32(addr: u64) -> Option<u32> {
    unsafe { bpf_probe_read_kernel(addr as *const u32) }.ok()
}

/// Turn a verifier-typed pointer (socket, ctx, map value, map) into a plain number by storing it
/// in a map slot and reading it back. The verifier forbids arithmetic on those pointer types but
/// lets privileged programs (CAP_PERFMON: `allow_ptr_leaks`) store them in maps; a value read
/// back from a map is a scalar. Volatile so the compiler keeps the round trip.
#[inline(always)]
pub fn as_number<T>(slot: *mut u64, ptr: *const T) -> u64 {
    unsafe {
        core::ptr::write_volatile(slot, ptr as u64);
        core::ptr::read_volatile(slot)
    }
}

/// This CPU's per-CPU offset (`__per_cpu_offset[cpu]`), needed to read the per-CPU SNMP
/// counters. `__per_cpu_offset` is a data symbol (absent from kallsyms without
/// CONFIG_KALLSYMS_ALL) and aya has no ksym support, so derive it from a per-CPU map: for a
/// BPF_MAP_TYPE_PERCPU_ARRAY, lookup returns `this_cpu_ptr(array->pptrs[key])`
/// (kernel/bpf/arraymap.c, percpu_array_map_lookup_elem), so
/// `offset = element address - array->pptrs[0]`. Computed once per CPU.
#[inline(always)]
pub fn this_cpu_offset() -> Option<u64> {
    let slot = CPU_BASE.get_ptr_mut(0)?;
    unsafe {
        if core::ptr::read_volatile(&(*slot).valid) == 1 {
            return Some((*slot).offset);
        }
        let scratch = &raw mut (*slot).scratch;
        let element = as_number(scratch, slot);
        let map = as_number(scratch, &raw const CPU_BASE);
        let pptr0 = read_u64(map + config!(bpf_array_pptrs) as u64)?;
        if pptr0 == 0 {
            return None;
        }
        // Modular: where per-CPU pointers are not zero-based offsets (x86-64 since ~6.15), a
        // CPU's area can lie below the per-CPU section and its offset "negative".
        let offset = element.wrapping_sub(pptr0);
        (*slot).offset = offset;
        (*slot).valid = 1;
        Some(offset)
    }
}

/// Read the listen counters of one CPU's `struct linux_mib` (`mibs[]` of unsigned long).
///
/// The seven counters lie in a few clusters of that array (on 6.18: indexes 1-4, 23-24 and
/// 78-79), so they are read as `Config::mib_runs` runs of `MIB_RUN_LEN` (3 helper calls
/// there) into `buf`, not with one `bpf_probe_read_kernel` each: a call costs more than
/// copying 64 bytes, and this runs twice per listener packet.
#[inline(always)]
pub fn read_mib(mib: u64, buf: &mut [u64; MIB_BUF], out: &mut [u64; MIB_COUNT]) -> Option<()> {
    let runs = config!(mib_runs) as usize;
    let start: [u32; MIB_COUNT] = config!(mib_run_start);
    let pos: [u32; MIB_COUNT] = config!(mib_pos);
    for r in 0..MIB_COUNT {
        if r >= runs {
            break;
        }
        let base = r * MIB_RUN_LEN;
        let dst: &mut [u64; MIB_RUN_LEN] = unsafe { &mut *buf.as_mut_ptr().add(base).cast() };
        unsafe {
            aya_ebpf::helpers::bpf_probe_read_kernel_buf(
                (mib + start[r] as u64 * 8) as *const u8,
                core::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), MIB_RUN_LEN * 8),
            )
        }
        .ok()?;
    }
    for i in 0..MIB_COUNT {
        out[i] = buf[pos[i] as usize & (MIB_BUF - 1)];
    }
    Some(())
}

#[inline(always)]
pub fn read_u16(addr: u64) -> Option<u16> {
    unsafe { bpf_probe_read_kernel(addr as *const u16) }.ok()
}

#[inline(always)]
pub fn read_u8(addr: u64) -> Option<u8> {
    let mut b = [0u8; 1];
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_buf(addr as *const u8, &mut b) }.ok()?;
    Some(b[0])
}

#[inline(always)]
pub fn read_bytes<const N: usize>(addr: u64) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_buf(addr as *const u8, &mut buf) }.ok()?;
    Some(buf)
}

/// Atomic adds to map values shared by CPUs (accept statistics, attempt drops). The BPF target
/// has no `core::sync::atomic` read-modify-write types, so the intrinsic; its result is never
/// used, so LLVM emits the plain `BPF_XADD` every kernel has (fetching atomics need 5.12).
#[inline(always)]
pub fn atomic_add64(p: *mut u64, n: u64) {
    let _ = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, n) };
}

#[inline(always)]
pub fn atomic_add32(p: *mut u32, n: u32) {
    let _ = unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(p, n) };
}

/// Network namespace inode of a socket.
#[inline(always)]
pub fn sock_netns(sk: u64) -> u32 {
    read_u64(sk + config!(sk_net) as u64)
        .and_then(|net| read_u32(net + config!(net_inum) as u64))
        .unwrap_or(0)
}

/// Inode of a socket's `struct socket` (0 when it has none).
#[inline(always)]
pub fn sock_ino(sk: u64) -> u64 {
    match read_u64(sk + config!(sk_socket) as u64) {
        Some(socket) if socket != 0 => read_u64(socket + config!(socket_ino) as u64).unwrap_or(0),
        _ => 0,
    }
}

#[inline(always)]
pub fn sock_state(sk: u64) -> Option<u32> {
    read_u8(sk + config!(sk_state) as u64).map(u32::from)
}
