//! Debian cloud kernels for the VM matrix: the list ([`SPECS`]), which package each resolves to,
//! and the cache. Downloading with apt is in `kernels/apt.rs`, taking `vmlinuz`, `config` and
//! modules out of the packages in `kernels/extract.rs`; nothing is installed.
//!
//! Layout under `target/vm/cache/`:
//! - `apt/` (amd64), `apt-arm64/` — private apt state per architecture: `sources.list`,
//!   `lists/`, an empty dpkg `status`, `archives/`
//! - `debs/` — downloaded `.deb` files (the architecture is in their names)
//! - `kernels/<package>_<version>/{vmlinuz,config,modules/}` — what QEMU boots
//! - `kernels/<label>.resolved` — the package chosen for a label (`6.1`, ...): reused until
//!   `--refresh`, so reruns need no network.

mod apt;
mod extract;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
pub use apt::Apt;
use apt::{deb_version, find_deb, image_dependency, split_image_parts, version_gt};
use extract::{extract_boot_files, module_name};

use crate::{cross::Arch, util};

/// A kernel of the matrix: where its package may come from. The highest version among the
/// candidates wins; `prefix` guards against a meta-package that moved to another series.
pub struct Spec {
    pub label: &'static str,
    pub aliases: &'static [&'static str],
    /// The guest's architecture (QEMU binary, machine, guest binaries, package architecture).
    pub arch: Arch,
    /// The hook variant the default choice must settle on for both drop groups (the overflow
    /// payload's `hooks=syn:X/ack:X`): what this kernel accepts, measured, so that a regression
    /// to a worse variant fails the matrix. arm64 before 6.5 has no ftrace direct calls
    /// (`CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS`), so BPF trampolines attach to BPF programs
    /// only and fentry on a kernel function fails (ENOTSUPP): kprobe it is.
    pub default_hooks: &'static str,
    /// (suite, meta-package): the meta-package depends on the versioned image package.
    pub candidates: &'static [(&'static str, &'static str)],
    pub prefix: Option<&'static str>,
}

pub const SPECS: &[Spec] = &[
    Spec {
        label: "5.10",
        arch: Arch::X86_64,
        default_hooks: "fentry",
        aliases: &["bullseye"],
        candidates: &[
            ("bullseye-security", "linux-image-cloud-amd64"),
            ("bullseye", "linux-image-cloud-amd64"),
        ],
        prefix: Some("linux-image-5.10."),
    },
    Spec {
        label: "6.1",
        arch: Arch::X86_64,
        default_hooks: "fentry",
        aliases: &["bookworm"],
        candidates: &[
            ("bookworm-security", "linux-image-cloud-amd64"),
            ("bookworm", "linux-image-cloud-amd64"),
        ],
        prefix: Some("linux-image-6.1."),
    },
    Spec {
        label: "6.12",
        arch: Arch::X86_64,
        default_hooks: "fentry",
        aliases: &["bookworm-backports"],
        candidates: &[
            ("bookworm-security", "linux-image-6.12-cloud-amd64"),
            ("bookworm-backports", "linux-image-cloud-amd64"),
        ],
        prefix: Some("linux-image-6.12."),
    },
    Spec {
        label: "sid",
        arch: Arch::X86_64,
        default_hooks: "fentry",
        aliases: &["7.x", "7", "unstable"],
        candidates: &[("sid", "linux-image-cloud-amd64")],
        prefix: None,
    },
    Spec {
        label: "arm64-6.1",
        arch: Arch::Aarch64,
        default_hooks: "kprobe",
        aliases: &["arm64-bookworm"],
        candidates: &[
            ("bookworm-security", "linux-image-cloud-arm64"),
            ("bookworm", "linux-image-cloud-arm64"),
        ],
        prefix: Some("linux-image-6.1."),
    },
    Spec {
        label: "arm64-6.12",
        arch: Arch::Aarch64,
        default_hooks: "fentry",
        aliases: &["arm64-bookworm-backports"],
        candidates: &[
            ("bookworm-security", "linux-image-6.12-cloud-arm64"),
            ("bookworm-backports", "linux-image-cloud-arm64"),
        ],
        prefix: Some("linux-image-6.12."),
    },
    Spec {
        label: "arm64-sid",
        arch: Arch::Aarch64,
        default_hooks: "fentry",
        aliases: &["arm64-7.x", "arm64-7", "arm64-unstable"],
        candidates: &[("sid", "linux-image-cloud-arm64")],
        prefix: None,
    },
];

/// What `cargo xtask vm-test` (and so CI) boots without `--kernel`.
pub const DEFAULT: &[&str] = &["5.10", "6.1", "6.12", "sid", "arm64-6.1", "arm64-6.12"];
/// `--kernel all`: every spec.
pub const ALL: &str = "all";

pub fn spec(name: &str) -> Option<&'static Spec> {
    SPECS
        .iter()
        .find(|s| s.label == name || s.aliases.contains(&name))
}

/// A kernel ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub package: String,
    pub version: String,
    pub suite: String,
    /// Release string from the file name (`boot/vmlinuz-<kver>`).
    pub kver: String,
    pub vmlinuz: PathBuf,
    pub config: Option<PathBuf>,
    /// Extracted modules (`<name>.ko`, `.ko.xz`, ...), in the order asked for.
    pub modules: Vec<PathBuf>,
}

impl Kernel {
    fn to_text(&self) -> String {
        let modules: Vec<String> = self
            .modules
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "package={}\nversion={}\nsuite={}\nkver={}\nvmlinuz={}\nconfig={}\nmodules={}\n",
            self.package,
            self.version,
            self.suite,
            self.kver,
            self.vmlinuz.display(),
            self.config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            modules.join(",")
        )
    }

    /// Has every module of `names` (file stem before `.ko`).
    fn has_modules(&self, names: &[&str]) -> bool {
        names.iter().all(|n| {
            self.modules
                .iter()
                .any(|m| module_name(m).as_deref() == Some(*n) && m.exists())
        })
    }

    fn from_text(text: &str) -> Option<Kernel> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        let config = get("config").filter(|c| !c.is_empty()).map(PathBuf::from);
        let modules = get("modules")
            .unwrap_or_default()
            .split(',')
            .filter(|m| !m.is_empty())
            .map(PathBuf::from)
            .collect();
        Some(Kernel {
            package: get("package")?,
            version: get("version")?,
            suite: get("suite")?,
            kver: get("kver")?,
            vmlinuz: PathBuf::from(get("vmlinuz")?),
            config,
            modules,
        })
    }

    /// `CONFIG_X=y` values of interest, from the packaged config.
    pub fn config_summary(&self) -> String {
        let Some(text) = self
            .config
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
        else {
            return "config: not packaged".into();
        };
        let keys = [
            ("DEBUG_INFO_BTF", "BTF"),
            ("KPROBES", "KPROBES"),
            ("FPROBE", "FPROBE"),
            ("BPF_JIT", "BPF_JIT"),
            ("CGROUP_BPF", "CGROUP_BPF"),
            ("BPF_LSM", "BPF_LSM"),
        ];
        let vals: Vec<String> = keys
            .iter()
            .map(|(k, short)| format!("{short}={}", config_value(&text, k)))
            .collect();
        format!("config: {}", vals.join(" "))
    }
}

/// `y`, `m`, a value, or `n` (unset) for `CONFIG_<key>` in a kernel config text.
pub fn config_value(text: &str, key: &str) -> String {
    let set = format!("CONFIG_{key}=");
    text.lines()
        .find_map(|l| l.strip_prefix(&set))
        .map_or_else(|| "n".into(), |v| v.trim_matches('"').to_string())
}

pub struct Fetched {
    pub kernel: Kernel,
    pub cached: bool,
    pub took: Duration,
}

fn cached(spec: &Spec, kdir: &Path, modules: &[&str]) -> Option<Kernel> {
    let text = fs::read_to_string(kdir.join(format!("{}.resolved", spec.label))).ok()?;
    Kernel::from_text(&text).filter(|k| k.vmlinuz.exists() && k.has_modules(modules))
}

/// Resolves, downloads and extracts the kernel of each spec, with `modules` (loaded by the
/// guest's /init in this order), reusing the cached choice unless `refresh`. apt runs (one
/// `apt-get update` for all suites needed) only for what is not cached.
pub fn fetch_all(
    specs: &[&'static Spec],
    cache: &Path,
    refresh: bool,
    modules: &[&str],
) -> Vec<anyhow::Result<Fetched>> {
    let kdir = cache.join("kernels");
    let mut results: Vec<Option<anyhow::Result<Fetched>>> = specs
        .iter()
        .map(|s| {
            let t = Instant::now();
            (!refresh)
                .then(|| cached(s, &kdir, modules))
                .flatten()
                .map(|kernel| {
                    Ok(Fetched {
                        kernel,
                        cached: true,
                        took: t.elapsed(),
                    })
                })
        })
        .collect();
    let need: Vec<usize> = (0..specs.len()).filter(|&i| results[i].is_none()).collect();
    if need.is_empty() {
        return results.into_iter().map(Option::unwrap).collect();
    }
    let mut arches: Vec<Arch> = need.iter().map(|&i| specs[i].arch).collect();
    arches.sort_unstable();
    arches.dedup();
    for arch in arches {
        let t = Instant::now();
        let apt = Apt::new(apt_dir(cache, arch), arch);
        let mine: Vec<usize> = need
            .iter()
            .copied()
            .filter(|&i| specs[i].arch == arch)
            .collect();
        let mut suites: Vec<&str> = mine
            .iter()
            .flat_map(|&i| specs[i].candidates.iter().map(|c| c.0))
            .collect();
        suites.sort_unstable();
        suites.dedup();
        let prepared = if util::is_root() {
            fs::create_dir_all(&kdir)
                .map_err(anyhow::Error::from)
                .and_then(|()| apt.prepare(&suites, refresh))
        } else {
            Err(anyhow::anyhow!(
                "downloading kernels uses apt-get (root); run as root or fill {} first",
                cache.display()
            ))
        };
        let update_took = t.elapsed();
        for i in mine {
            results[i] = Some(match &prepared {
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
                Ok(()) => {
                    let t = Instant::now();
                    resolve_and_download(specs[i], &apt, cache, &kdir, modules).map(|kernel| {
                        Fetched {
                            kernel,
                            cached: false,
                            // The shared apt-get update is charged to every kernel that needed it.
                            took: t.elapsed() + update_took,
                        }
                    })
                }
            });
        }
    }
    results.into_iter().map(Option::unwrap).collect()
}

/// The private apt state for `arch`'s packages: `apt/` (amd64, the first one) or `apt-<arch>/`.
pub fn apt_dir(cache: &Path, arch: Arch) -> PathBuf {
    match arch {
        Arch::X86_64 => cache.join("apt"),
        _ => cache.join(format!("apt-{}", arch.debian())),
    }
}

/// The private apt state for `arch`, ready to use (lists for `suites` fetched if missing).
pub fn apt_for(cache: &Path, arch: Arch, suites: &[&str], refresh: bool) -> anyhow::Result<Apt> {
    let apt = Apt::new(apt_dir(cache, arch), arch);
    apt.prepare(suites, refresh)?;
    Ok(apt)
}

fn resolve_and_download(
    spec: &Spec,
    apt: &Apt,
    cache: &Path,
    kdir: &Path,
    modules: &[&str],
) -> anyhow::Result<Kernel> {
    // The highest version of the meta-package among the candidates.
    let mut best: Option<(&str, &str, String)> = None;
    for &(suite, meta) in spec.candidates {
        for v in apt.versions_in(meta, suite)? {
            if best.as_ref().is_none_or(|(_, _, b)| version_gt(&v, b)) {
                best = Some((suite, meta, v));
            }
        }
    }
    let (suite, meta, meta_version) = best.with_context(|| {
        let c: Vec<String> = spec
            .candidates
            .iter()
            .map(|(s, m)| format!("{m} in {s}"))
            .collect();
        format!("kernel {}: none of {} found", spec.label, c.join(", "))
    })?;
    let depends = apt.depends(meta, &meta_version)?;
    let (package, version) = image_dependency(&depends).with_context(|| {
        format!("{meta}={meta_version}: no linux-image dependency in {depends:?}")
    })?;
    let version = version.unwrap_or_else(|| meta_version.clone());
    if let Some(prefix) = spec.prefix.filter(|p| !package.starts_with(p)) {
        bail!(
            "kernel {}: {meta} in {suite} now depends on {package}, not {prefix}*",
            spec.label
        );
    }
    eprintln!(
        "vm: kernel {}: {meta} {meta_version} ({suite}) -> {package} {version}",
        spec.label
    );

    let debs = cache.join("debs");
    let get = |pkg: &str, ver: &str| -> anyhow::Result<PathBuf> {
        match find_deb(&debs, pkg, ver, apt.arch())? {
            Some(d) => Ok(d),
            None => apt.download(pkg, ver, &debs),
        }
    };
    let out = kdir.join(format!("{package}_{}", deb_version(&version)));
    let tmp = out.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let deb = get(&package, &version)?;
    let mut found = extract_boot_files(&deb, &tmp, modules)?;
    if found.vmlinuz.is_none() || !found.has_modules(modules) {
        // Since 7.x (sid) the image package is empty: vmlinuz is in linux-binary-<abi>, the
        // config in linux-base-<abi> (both under usr/lib/modules/<kver>/), the modules in
        // linux-modules-<abi>.
        let deps = apt.depends(&package, &version)?;
        for (dep, dep_version) in split_image_parts(&deps) {
            if dep.starts_with("linux-modules-") && found.has_modules(modules) {
                continue;
            }
            let deb = get(&dep, dep_version.as_deref().unwrap_or(&version))?;
            let more = extract_boot_files(&deb, &tmp, modules)?;
            found.vmlinuz = found.vmlinuz.or(more.vmlinuz);
            found.config = found.config.or(more.config);
            found.modules.extend(more.modules);
        }
    }
    let (src, kver) = found.vmlinuz.take().with_context(|| {
        format!("no vmlinuz in {package} {version} (nor in its linux-binary-* dependency)")
    })?;
    let missing: Vec<&str> = modules
        .iter()
        .copied()
        .filter(|m| !found.has_modules(std::slice::from_ref(m)))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{package} {version}: module(s) {} not found (built in? then drop them from GUEST_MODULES)",
            missing.join(", ")
        );
    }
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(out.join("modules"))?;
    let vmlinuz = out.join("vmlinuz");
    fs::rename(&src, &vmlinuz)?;
    let config = match found.config {
        Some(c) => {
            let d = out.join("config");
            fs::rename(&c, &d)?;
            Some(d)
        }
        None => None,
    };
    let mut kept = Vec::new();
    for name in modules {
        let src = found
            .modules
            .iter()
            .find(|m| module_name(m).as_deref() == Some(*name))
            .expect("checked above");
        let dst = out.join("modules").join(src.file_name().expect("file"));
        fs::rename(src, &dst)?;
        kept.push(dst);
    }
    let _ = fs::remove_dir_all(&tmp);
    let kernel = Kernel {
        package,
        version,
        suite: suite.to_string(),
        kver,
        vmlinuz,
        config,
        modules: kept,
    };
    fs::write(
        kdir.join(format!("{}.resolved", spec.label)),
        kernel.to_text(),
    )?;
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_aliases() {
        assert_eq!(spec("7.x").unwrap().label, "sid");
        assert_eq!(spec("sid").unwrap().label, "sid");
        assert_eq!(spec("6.12").unwrap().label, "6.12");
        assert!(spec("4.19").is_none());
        for d in DEFAULT {
            assert!(spec(d).is_some(), "{d}");
        }
        for s in SPECS {
            for (suite, meta) in s.candidates {
                assert!(apt::SUITES.iter().any(|(x, _)| x == suite), "{suite}");
                // The package of the spec's architecture (its apt state has no other).
                assert!(meta.ends_with(s.arch.debian()), "{}: {meta}", s.label);
            }
            assert!(["fentry", "kprobe", "cgroup"].contains(&s.default_hooks));
        }
        assert_eq!(spec("arm64-7.x").unwrap().arch, Arch::Aarch64);
    }

    #[test]
    fn resolved_file_round_trip() {
        let k = Kernel {
            package: "linux-image-6.1.0-41-cloud-amd64".into(),
            version: "6.1.192-2".into(),
            suite: "bookworm-security".into(),
            kver: "6.1.0-41-cloud-amd64".into(),
            vmlinuz: "/x/vmlinuz".into(),
            config: None,
            modules: vec![
                "/x/modules/inet_diag.ko.xz".into(),
                "/x/modules/tcp_diag.ko".into(),
            ],
        };
        assert_eq!(Kernel::from_text(&k.to_text()), Some(k));
    }

    #[test]
    fn config_values() {
        let text = "CONFIG_KPROBES=y\n# CONFIG_FPROBE is not set\nCONFIG_X=\"abc\"\n";
        assert_eq!(config_value(text, "KPROBES"), "y");
        assert_eq!(config_value(text, "FPROBE"), "n");
        assert_eq!(config_value(text, "X"), "abc");
    }
}
