//! The dispatch floor of step 3b: programs that do nothing (`return 1` / `return 0`), attached
//! at the hook points of lqtrace's cgroup variant, with lqtrace not running. What the connect
//! loop loses then is what the kernel charges for running *any* program there (the cgroup
//! hook's per-packet entry, `__cgroup_bpf_run_filter_skb`, and the raw tracepoints' calls into
//! BPF), which no change inside lqtrace's programs can win back: the machine's limit for a
//! variant that sees every listener packet.
//!
//! Loaded with the bpf(2) system call directly (two instructions each): the bench has no BPF
//! toolchain of its own, and building these into lqtrace's object would ship them.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context as _, Result};

/// The hook points of the cgroup variant that run for every connection or packet (what
/// `lqtrace check` lists as its drop stages' before and after, and the state-change hook).
pub const RAW_TRACEPOINTS: [&str; 3] = ["consume_skb", "kfree_skb", "inet_sock_set_state"];

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const BPF_CGROUP_INET_INGRESS: u32 = 0;

/// `union bpf_attr` for BPF_PROG_LOAD, as far as used (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_LINK_CREATE (a cgroup target).
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    /// The rest of the command's struct (zero).
    rest: [u8; 48],
}

/// `union bpf_attr` for BPF_RAW_TRACEPOINT_OPEN.
#[repr(C)]
struct RawTpOpen {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: attr is a valid bpf_attr prefix of its size; the kernel zero-fills the rest.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A program that returns `ret` at once.
fn load_noop(prog_type: u32, ret: i32, name: &str) -> io::Result<OwnedFd> {
    // mov64 r0, ret; exit
    let mut insns = [0u8; 16];
    insns[0] = 0xb7;
    insns[4..8].copy_from_slice(&ret.to_le_bytes());
    insns[8] = 0x95;
    let license = c"GPL";
    let mut attr = ProgLoad {
        prog_type,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: if prog_type == BPF_PROG_TYPE_CGROUP_SKB {
            BPF_CGROUP_INET_INGRESS
        } else {
            0
        },
        ..ProgLoad::default()
    };
    let n = name.len().min(15);
    attr.prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    bpf(BPF_PROG_LOAD, &mut attr)
}

/// No-op programs attached; dropping this detaches them (closing the links).
pub struct Floor {
    _fds: Vec<OwnedFd>,
}

/// Where cgroup2 is mounted (the first cgroup2 line of /proc/self/mounts; /sys/fs/cgroup on a
/// unified host, /sys/fs/cgroup/unified on a hybrid one such as this machine): the root cgroup,
/// where lqtrace attaches too.
pub fn cgroup2_root() -> Result<String> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .map(|f| f[1].replace("\\040", " "))
        .context("no cgroup2 mount in /proc/self/mounts")
}

/// Attach a no-op cgroup_skb ingress program at the root cgroup and no-op raw tracepoint
/// programs at `tracepoints`.
pub fn attach(tracepoints: &[&str]) -> Result<Floor> {
    let cgroup_root = &cgroup2_root()?;
    let mut fds = Vec::new();
    let prog = load_noop(BPF_PROG_TYPE_CGROUP_SKB, 1, "floor_rx")
        .context("loading a no-op cgroup_skb program")?;
    let cgroup = File::open(cgroup_root).with_context(|| format!("opening {cgroup_root}"))?;
    let mut link = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_INET_INGRESS,
        flags: 0,
        rest: [0; 48],
    };
    fds.push(
        bpf(BPF_LINK_CREATE, &mut link)
            .with_context(|| format!("attaching it to {cgroup_root}"))?,
    );
    fds.push(prog);
    for &tp in tracepoints {
        let prog = load_noop(BPF_PROG_TYPE_RAW_TRACEPOINT, 0, "floor_tp")
            .context("loading a no-op raw tracepoint program")?;
        let name = CString::new(tp)?;
        let mut open = RawTpOpen {
            name: name.as_ptr() as u64,
            prog_fd: prog.as_raw_fd() as u32,
            _pad: 0,
        };
        fds.push(
            bpf(BPF_RAW_TRACEPOINT_OPEN, &mut open)
                .with_context(|| format!("attaching it to {tp}"))?,
        );
        fds.push(prog);
    }
    Ok(Floor { _fds: fds })
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        time::Duration,
    };

    use super::*;

    /// The floor attaches at every hook point and lets traffic through (a cgroup_skb program
    /// that returned 0 would drop every ingress packet: this connect would time out).
    #[test]
    fn floor_attaches_and_lets_packets_through() {
        if !lqtrace_testkit::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let floor = attach(&RAW_TRACEPOINTS).expect("attach the floor");
        assert_eq!(floor._fds.len(), 2 + 2 * RAW_TRACEPOINTS.len());
        for fd in &floor._fds {
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
                .expect("fdinfo");
            assert!(
                info.contains("prog_id:") || info.contains("prog_type:"),
                "not a BPF program or link: {info}"
            );
        }
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect_timeout(&l.local_addr().unwrap(), Duration::from_secs(3));
        assert!(c.is_ok(), "connect with the floor attached: {c:?}");
        l.accept().expect("accept");
    }
}
