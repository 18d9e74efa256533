//! Taking what QEMU needs out of a kernel `.deb` without installing it: the image (`vmlinuz`),
//! the config and the modules /init loads, found by listing the package's data archive
//! (`dpkg-deb --fsys-tarfile | tar -t`) and extracting only those members.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, bail};

use crate::util::{self, command, render};

#[derive(Default)]
pub struct BootFiles {
    /// (extracted path, kernel release)
    pub vmlinuz: Option<(PathBuf, String)>,
    pub config: Option<PathBuf>,
    pub modules: Vec<PathBuf>,
}

impl BootFiles {
    pub fn has_modules(&self, names: &[&str]) -> bool {
        names.iter().all(|n| {
            self.modules
                .iter()
                .any(|m| module_name(m).as_deref() == Some(*n))
        })
    }
}

/// The module name of a `.ko`/`.ko.xz`/`.ko.zst`/`.ko.gz` path.
pub fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let (name, _) = file.split_once(".ko")?;
    Some(name.to_string())
}

/// Is `path` (a package member) the module `<name>.ko[.xz|.zst|.gz]` of one of `names`?
pub fn is_wanted_module(path: &str, names: &[&str]) -> bool {
    path.contains("/kernel/")
        && Path::new(path)
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.split_once(".ko"))
            .is_some_and(|(n, ext)| names.contains(&n) && ["", ".xz", ".zst", ".gz"].contains(&ext))
}

/// Which member of a kernel package is the image or the config: `./boot/vmlinuz-<kver>`,
/// `./boot/config-<kver>` (up to 6.x), `./usr/lib/modules/<kver>/{vmlinuz,config}` (7.x).
/// Returns (is_vmlinuz, kver).
pub fn boot_member(path: &str) -> Option<(bool, String)> {
    let p = path.trim_start_matches("./");
    if let Some(kver) = p.strip_prefix("boot/vmlinuz-") {
        return Some((true, kver.to_string()));
    }
    if let Some(kver) = p.strip_prefix("boot/config-") {
        return Some((false, kver.to_string()));
    }
    let rest = p
        .strip_prefix("usr/lib/modules/")
        .or_else(|| p.strip_prefix("lib/modules/"))?;
    let (kver, file) = rest.split_once('/')?;
    match file {
        "vmlinuz" => Some((true, kver.to_string())),
        "config" => Some((false, kver.to_string())),
        _ => None,
    }
}

/// Extracts the image, config and wanted module members of `deb` (if any) under `tmp`.
pub fn extract_boot_files(deb: &Path, tmp: &Path, modules: &[&str]) -> anyhow::Result<BootFiles> {
    let mut list = command("dpkg-deb");
    list.arg("--fsys-tarfile").arg(deb).stdout(Stdio::piped());
    let mut list_child = list
        .spawn()
        .with_context(|| format!("running {}", render(&list)))?;
    let listing = command("tar")
        .arg("-t")
        .stdin(list_child.stdout.take().expect("piped"))
        .output()
        .with_context(|| format!("listing {}", deb.display()))?;
    let list_status = list_child.wait()?;
    if !list_status.success() || !listing.status.success() {
        bail!(
            "listing {} failed ({})",
            deb.display(),
            util::describe(list_status)
        );
    }
    let text = String::from_utf8_lossy(&listing.stdout);
    let members: Vec<(String, bool, String)> = text
        .lines()
        .filter_map(|m| boot_member(m).map(|(v, k)| (m.to_string(), v, k)))
        .collect();
    let module_members: Vec<&str> = text
        .lines()
        .filter(|m| is_wanted_module(m, modules))
        .collect();
    let mut found = BootFiles::default();
    if members.is_empty() && module_members.is_empty() {
        return Ok(found);
    }
    let mut dpkg = command("dpkg-deb");
    dpkg.arg("--fsys-tarfile").arg(deb).stdout(Stdio::piped());
    let mut dpkg_child = dpkg
        .spawn()
        .with_context(|| format!("running {}", render(&dpkg)))?;
    let mut tar = command("tar");
    tar.arg("-x")
        .arg("-C")
        .arg(tmp)
        .args(members.iter().map(|m| m.0.as_str()))
        .args(&module_members);
    tar.stdin(dpkg_child.stdout.take().expect("piped"));
    let tar_status = tar
        .status()
        .with_context(|| format!("running {}", render(&tar)))?;
    let dpkg_status = dpkg_child.wait()?;
    if !dpkg_status.success() || !tar_status.success() {
        bail!(
            "extracting the kernel from {} failed (dpkg-deb: {}, tar: {})",
            deb.display(),
            util::describe(dpkg_status),
            util::describe(tar_status)
        );
    }
    for m in module_members {
        found.modules.push(tmp.join(m.trim_start_matches("./")));
    }
    for (member, is_vmlinuz, kver) in members {
        let path = tmp.join(member.trim_start_matches("./"));
        if is_vmlinuz {
            found.vmlinuz = Some((path, kver));
        } else {
            found.config = Some(path);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_members() {
        assert_eq!(
            boot_member("./boot/vmlinuz-6.1.0-56-cloud-amd64"),
            Some((true, "6.1.0-56-cloud-amd64".into()))
        );
        assert_eq!(
            boot_member("./boot/config-6.1.0-56-cloud-amd64"),
            Some((false, "6.1.0-56-cloud-amd64".into()))
        );
        assert_eq!(
            boot_member("./usr/lib/modules/7.2.13+deb14-cloud-amd64/vmlinuz"),
            Some((true, "7.2.13+deb14-cloud-amd64".into()))
        );
        assert_eq!(
            boot_member("./usr/lib/modules/7.2.13+deb14-cloud-amd64/config"),
            Some((false, "7.2.13+deb14-cloud-amd64".into()))
        );
        assert_eq!(
            boot_member("./usr/lib/modules/7.2.13+deb14-cloud-amd64/System.map"),
            None
        );
        assert_eq!(boot_member("./boot/System.map-6.1"), None);
        assert_eq!(boot_member("./usr/lib/modules/x/kernel/fs/a.ko"), None);
    }

    #[test]
    fn modules() {
        let names = ["inet_diag", "tcp_diag"];
        assert!(is_wanted_module(
            "./lib/modules/6.1.0-56-cloud-amd64/kernel/net/ipv4/inet_diag.ko",
            &names
        ));
        assert!(is_wanted_module(
            "./usr/lib/modules/7.2/kernel/net/ipv4/tcp_diag.ko.xz",
            &names
        ));
        assert!(!is_wanted_module(
            "./usr/lib/modules/7.2/kernel/net/ipv4/udp_diag.ko.xz",
            &names
        ));
        assert!(!is_wanted_module("./usr/share/doc/tcp_diag.ko.txt", &names));
        assert!(!is_wanted_module(
            "./usr/lib/modules/7.2/kernel/net/ipv4/tcp_diag.kox",
            &names
        ));
        assert_eq!(
            module_name(Path::new("/a/tcp_diag.ko.xz")).as_deref(),
            Some("tcp_diag")
        );
        assert_eq!(
            module_name(Path::new("/a/inet_diag.ko")).as_deref(),
            Some("inet_diag")
        );
    }
}
