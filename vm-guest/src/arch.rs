//! How /init hands its exit code to the host, per architecture.
//!
//! - Every architecture: a `VMTEST-EXIT <code>` console line, printed before power-off. It is
//!   the only channel on arm64: QEMU's `virt` machine has no isa-debug-exit, and a power-off
//!   (`reboot(RB_POWER_OFF)` → PSCI SYSTEM_OFF) makes QEMU exit 0 whatever happened;
//!   semihosting could carry a status but needs `-semihosting` and an EL0 `HLT #0xf000` that
//!   QEMU only honours with `userspace=on`. xtask/src/vm/qemu.rs reads the line when QEMU exits 0.
//! - x86-64: then the code goes to QEMU's isa-debug-exit device (port 0xf4), which ends QEMU
//!   with status `code * 2 + 1` right away (the `pc` machine's cloud kernels have no other
//!   cheap way out: no 9p, no /dev/port).

/// Prints the exit line the host reads (all architectures).
pub fn announce_exit(code: u32) {
    crate::out::line(&format!("VMTEST-EXIT {code}"));
}

/// Ends QEMU with `code` through a device, where the machine has one (x86-64: isa-debug-exit);
/// returns where it has none, and the caller powers off.
#[cfg(target_arch = "x86_64")]
pub fn debug_exit(code: u32) {
    // SAFETY: ioperm grants this process access to 4 ports; `out` writes one dword. Harmless
    // without the device (the write goes nowhere) and the caller powers off right after.
    unsafe {
        if libc::syscall(libc::SYS_ioperm, 0xf4_u64, 4_u64, 1_i32) == 0 {
            std::arch::asm!("out dx, eax", in("dx") 0xf4u16, in("eax") code, options(nomem, nostack));
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn debug_exit(_code: u32) {}
