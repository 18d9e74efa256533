//! tracefs: finding it, and mounting it where nothing is mounted.
//!
//! aya attaches classic tracepoints through tracefs (it reads `events/<category>/<event>/id`,
//! from /sys/kernel/tracing or /sys/kernel/debug/tracing, whichever is populated, and remembers
//! the answer), so it must be mounted before the first attach: a fresh machine or a minimal
//! container may not have it. That is all lqtrace needs tracefs for. The tracepoint record
//! layouts, which once came from the `format` files parsed here, come from BTF now (see
//! `layout.rs`: the records are BTF structs on every supported kernel).

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{Result, anyhow};

/// Where tracefs is usually found: its own mount point, and the legacy path under debugfs.
pub const DEFAULT_ROOTS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Where we mount tracefs ourselves when nothing is mounted (the kernel creates this directory).
const MOUNT_POINT: &str = "/sys/kernel/tracing";

/// Finds the tracefs root (a directory containing `events/`). If none is mounted, mounts
/// tracefs at /sys/kernel/tracing, as a fresh machine or a minimal container may not have it.
pub fn root() -> Result<PathBuf> {
    if let Some(found) = first_with_events(DEFAULT_ROOTS.iter().map(Path::new)) {
        return Ok(found);
    }
    let why = match mount_tracefs(MOUNT_POINT) {
        Ok(()) if Path::new(MOUNT_POINT).join("events").is_dir() => {
            log::info!("mounted tracefs at {MOUNT_POINT}");
            return Ok(PathBuf::from(MOUNT_POINT));
        }
        Ok(()) => "the mounted tracefs has no events/ directory".to_string(),
        Err(e) => e.to_string(),
    };
    Err(anyhow!(
        "tracefs is not mounted and mounting it at {MOUNT_POINT} failed ({why}): run \
         `mount -t tracefs nodev {MOUNT_POINT}` as root"
    ))
}

/// The first candidate directory that has an `events/` subdirectory.
fn first_with_events<'a>(candidates: impl IntoIterator<Item = &'a Path>) -> Option<PathBuf> {
    candidates
        .into_iter()
        .find(|dir| dir.join("events").is_dir())
        .map(Path::to_path_buf)
}

fn mount_tracefs(target: &str) -> std::io::Result<()> {
    let to_c = |s: &str| CString::new(s).map_err(std::io::Error::other);
    let (source, target, fstype) = (to_c("nodev")?, to_c(target)?, to_c("tracefs")?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; tracefs
    // takes no mount data, so a null data pointer is allowed.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_root_with_events_wins() {
        let dir = std::env::temp_dir().join(format!("lqtrace-tracefs-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("events")).unwrap();
        let missing = dir.join("missing");
        assert_eq!(
            first_with_events([missing.as_path(), dir.as_path()]),
            Some(dir.clone())
        );
        assert_eq!(first_with_events([missing.as_path()]), None);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// With tracefs mounted, root() finds it without mounting anything, where aya looks.
    #[test]
    fn running_kernel_root() {
        let Some(found) = first_with_events(DEFAULT_ROOTS.iter().map(Path::new)) else {
            println!("note: tracefs is not mounted; skipping");
            return;
        };
        assert_eq!(root().unwrap(), found);
        assert!(found.join("events/syscalls/sys_enter_listen/id").is_file());
    }
}
