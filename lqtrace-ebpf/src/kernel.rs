//! Reading kernel memory with offsets handed over by the loader (no CO-RE in Rust eBPF).

use aya_ebpf::helpers::bpf_probe_read_kernel;
use lqtrace_common::MIB_COUNT;

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
#[inline(always)]
pub fn read_mib(mib: u64, out: &mut [u64; MIB_COUNT]) -> Option<()> {
    let idx: [u32; MIB_COUNT] = config!(mib);
    for i in 0..MIB_COUNT {
        out[i] = read_u64(mib + idx[i] as u64 * 8)?;
    }
    Some(())
}
