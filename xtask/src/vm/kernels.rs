//! Debian cloud kernels for the VM matrix: which package, downloading it with apt through a
//! private sources list (nothing is installed), extracting `vmlinuz` and `config`, and caching.
//!
//! Layout under `target/vm/cache/`:
//! - `apt/` — private apt state: `sources.list`, `lists/`, an empty dpkg `status`, `archives/`
//! - `debs/` — downloaded `.deb` files
//! - `kernels/<package>_<version>/{vmlinuz,config}` — what QEMU boots
//! - `kernels/<label>.resolved` — the package chosen for a label (`6.1`, ...): reused until
//!   `--refresh`, so reruns need no network.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util::{self, command, render};

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// (suite, archive URL) for every suite a kernel may come from.
const SUITES: &[(&str, &str)] = &[
    ("bullseye", "http://deb.debian.org/debian"),
    ("bullseye-security", "http://deb.debian.org/debian-security"),
    ("bookworm", "http://deb.debian.org/debian"),
    ("bookworm-security", "http://deb.debian.org/debian-security"),
    ("bookworm-backports", "http://deb.debian.org/debian"),
    ("sid", "http://deb.debian.org/debian"),
];

/// A kernel of the matrix: where its package may come from. The highest version among the
/// candidates wins; `prefix` guards against a meta-package that moved to another series.
pub struct Spec {
    pub label: &'static str,
    pub aliases: &'static [&'static str],
    /// (suite, meta-package): the meta-package depends on the versioned image package.
    pub candidates: &'static [(&'static str, &'static str)],
    pub prefix: Option<&'static str>,
}

pub const SPECS: &[Spec] = &[
    Spec {
        label: "5.10",
        aliases: &["bullseye"],
        candidates: &[
            ("bullseye-security", "linux-image-cloud-amd64"),
            ("bullseye", "linux-image-cloud-amd64"),
        ],
        prefix: Some("linux-image-5.10."),
    },
    Spec {
        label: "6.1",
        aliases: &["bookworm"],
        candidates: &[
            ("bookworm-security", "linux-image-cloud-amd64"),
            ("bookworm", "linux-image-cloud-amd64"),
        ],
        prefix: Some("linux-image-6.1."),
    },
    Spec {
        label: "6.12",
        aliases: &["bookworm-backports"],
        candidates: &[
            ("bookworm-security", "linux-image-6.12-cloud-amd64"),
            ("bookworm-backports", "linux-image-cloud-amd64"),
        ],
        prefix: Some("linux-image-6.12."),
    },
    Spec {
        label: "sid",
        aliases: &["7.x", "7", "unstable"],
        candidates: &[("sid", "linux-image-cloud-amd64")],
        prefix: None,
    },
];

pub const DEFAULT: &[&str] = &["5.10", "6.1", "6.12", "sid"];

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

/// Private apt state under `dir`.
pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    pub fn new(dir: PathBuf) -> Apt {
        Apt { dir }
    }

    fn lists(&self) -> PathBuf {
        self.dir.join("lists")
    }

    fn options(&self) -> Vec<String> {
        let d = &self.dir;
        vec![
            format!("Dir::Etc::sourcelist={}", d.join("sources.list").display()),
            "Dir::Etc::sourceparts=-".into(),
            format!("Dir::State::Lists={}", self.lists().display()),
            format!("Dir::State::status={}", d.join("status").display()),
            format!("Dir::Cache={}", d.join("cache").display()),
            "Acquire::Languages=none".into(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
            "APT::Get::List-Cleanup=0".into(),
            "APT::Sandbox::User=root".into(),
        ]
    }

    fn cmd(&self, program: &str) -> Command {
        let mut cmd = command(program);
        for o in self.options() {
            cmd.arg("-o").arg(o);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        cmd
    }

    fn has_lists(&self, suite: &str) -> bool {
        let Some(&(_, url)) = SUITES.iter().find(|(s, _)| *s == suite) else {
            return false;
        };
        let host_path = url.trim_start_matches("http://").replace('/', "_");
        self.lists()
            .join(format!("{host_path}_dists_{suite}_InRelease"))
            .exists()
    }

    /// Writes a sources list with `suites` and runs `apt-get update` if any of them has no
    /// lists yet (or always with `refresh`).
    pub fn prepare(&self, suites: &[&str], refresh: bool) -> anyhow::Result<()> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(self.dir.join(sub))?;
        }
        let status = self.dir.join("status");
        if !status.exists() {
            fs::write(&status, "")?;
        }
        let mut text = String::from("# written by `cargo xtask vm-test`\n");
        for suite in suites {
            let (_, url) = SUITES
                .iter()
                .find(|(s, _)| s == suite)
                .with_context(|| format!("unknown suite {suite}"))?;
            text.push_str(&format!("deb [signed-by={KEYRING}] {url} {suite} main\n"));
        }
        fs::write(self.dir.join("sources.list"), text)?;
        if refresh || !suites.iter().all(|s| self.has_lists(s)) {
            let mut cmd = self.cmd("apt-get");
            cmd.args(["-q", "update"]);
            eprintln!("vm: {}", render(&cmd));
            let t = Instant::now();
            util::run(&mut cmd)?;
            eprintln!("vm: apt-get update: {}", util::secs(t.elapsed()));
        }
        Ok(())
    }

    fn output(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.cmd("apt-cache");
        cmd.args(args);
        let out = cmd
            .output()
            .with_context(|| format!("running {}", render(&cmd)))?;
        if !out.status.success() {
            bail!(
                "`{}` failed: {}",
                render(&cmd),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Versions of `pkg` in `suite` (from `apt-cache madison`).
    fn versions_in(&self, pkg: &str, suite: &str) -> anyhow::Result<Vec<String>> {
        Ok(parse_madison(&self.output(&["madison", pkg])?, suite))
    }

    /// The `Depends:` of `pkg=version`.
    fn depends(&self, pkg: &str, version: &str) -> anyhow::Result<String> {
        let out = self.output(&["show", &format!("{pkg}={version}")])?;
        out.lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .map(|d| d.trim().to_string())
            .with_context(|| format!("{pkg}={version} has no Depends"))
    }

    fn download(&self, pkg: &str, version: &str, dest: &Path) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(dest)?;
        let mut cmd = self.cmd("apt-get");
        cmd.current_dir(dest)
            .args(["-q", "download", &format!("{pkg}={version}")]);
        eprintln!("vm: {}", render(&cmd));
        util::run(&mut cmd)?;
        find_deb(dest, pkg, version)?
            .with_context(|| format!("no {pkg} .deb in {} after download", dest.display()))
    }
}

/// Rows of `apt-cache madison` output for `suite`: the versions.
pub fn parse_madison(out: &str, suite: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            let src = cols.get(2)?;
            let from = src.split_whitespace().nth(1)?; // "bookworm-security/main"
            (from.split('/').next() == Some(suite)).then(|| cols[1].to_string())
        })
        .collect()
}

/// The `linux-image-*` package in a `Depends:` value ("linux-base-cloud-amd64 (= 7.2.13-1),
/// linux-image-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)").
pub fn image_dependency(depends: &str) -> Option<(String, Option<String>)> {
    depends.split(',').map(str::trim).find_map(|d| {
        let d = d.split('|').next()?.trim();
        let (name, rest) = d.split_once(' ').unwrap_or((d, ""));
        if !name.starts_with("linux-image-") {
            return None;
        }
        let version = rest
            .trim()
            .strip_prefix("(=")
            .and_then(|v| v.strip_suffix(')'))
            .map(|v| v.trim().to_string());
        Some((name.to_string(), version))
    })
}

/// `version` as it appears in a .deb file name (the epoch's `:` becomes `%3a`).
fn deb_version(version: &str) -> String {
    version.replace(':', "%3a")
}

fn find_deb(dir: &Path, pkg: &str, version: &str) -> anyhow::Result<Option<PathBuf>> {
    let want = format!("{pkg}_{}_amd64.deb", deb_version(version));
    let p = dir.join(&want);
    Ok(p.exists().then_some(p))
}

/// `dpkg --compare-versions a gt b`.
fn version_gt(a: &str, b: &str) -> bool {
    command("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .is_ok_and(|s| s.success())
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

/// The module name of a `.ko`/`.ko.xz`/`.ko.zst`/`.ko.gz` path.
pub fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let (name, _) = file.split_once(".ko")?;
    Some(name.to_string())
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
    let t = Instant::now();
    let apt = Apt::new(cache.join("apt"));
    let mut suites: Vec<&str> = need
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
    for &i in &need {
        results[i] = Some(match &prepared {
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
            Ok(()) => {
                let t = Instant::now();
                resolve_and_download(specs[i], &apt, cache, &kdir, modules).map(|kernel| Fetched {
                    kernel,
                    cached: false,
                    // The shared apt-get update is charged to every kernel that needed it.
                    took: t.elapsed() + update_took,
                })
            }
        });
    }
    results.into_iter().map(Option::unwrap).collect()
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
        match find_deb(&debs, pkg, ver)? {
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

/// The `linux-binary-<abi>`/`linux-base-<abi>`/`linux-modules-<abi>` packages in an image
/// package's `Depends:`.
pub fn split_image_parts(depends: &str) -> Vec<(String, Option<String>)> {
    depends
        .split(',')
        .filter_map(|d| {
            let d = d.split('|').next()?.trim();
            let (name, rest) = d.split_once(' ').unwrap_or((d, ""));
            let versioned = |p: &str| {
                name.strip_prefix(p)
                    .is_some_and(|abi| abi.starts_with(|c: char| c.is_ascii_digit()))
            };
            if !["linux-binary-", "linux-base-", "linux-modules-"]
                .iter()
                .any(|p| versioned(p))
            {
                return None;
            }
            let version = rest
                .trim()
                .strip_prefix("(=")
                .and_then(|v| v.strip_suffix(')'))
                .map(|v| v.trim().to_string());
            Some((name.to_string(), version))
        })
        .collect()
}

#[derive(Default)]
struct BootFiles {
    /// (extracted path, kernel release)
    vmlinuz: Option<(PathBuf, String)>,
    config: Option<PathBuf>,
    modules: Vec<PathBuf>,
}

impl BootFiles {
    fn has_modules(&self, names: &[&str]) -> bool {
        names.iter().all(|n| {
            self.modules
                .iter()
                .any(|m| module_name(m).as_deref() == Some(*n))
        })
    }
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
fn extract_boot_files(deb: &Path, tmp: &Path, modules: &[&str]) -> anyhow::Result<BootFiles> {
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
    fn specs_and_aliases() {
        assert_eq!(spec("7.x").unwrap().label, "sid");
        assert_eq!(spec("sid").unwrap().label, "sid");
        assert_eq!(spec("6.12").unwrap().label, "6.12");
        assert!(spec("4.19").is_none());
        for d in DEFAULT {
            assert!(spec(d).is_some(), "{d}");
        }
        for s in SPECS {
            for (suite, _) in s.candidates {
                assert!(SUITES.iter().any(|(x, _)| x == suite), "{suite}");
            }
        }
    }

    #[test]
    fn madison_rows_by_suite() {
        let out = "linux-image-cloud-amd64 |   7.2.13-1 | http://deb.debian.org/debian sid/main amd64 Packages\n\
                   linux-image-cloud-amd64 | 6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n\
                   linux-image-cloud-amd64 | 6.1.170-1 | http://deb.debian.org/debian bookworm/main amd64 Packages\n";
        assert_eq!(parse_madison(out, "bookworm-security"), ["6.1.192-2"]);
        assert_eq!(parse_madison(out, "bookworm"), ["6.1.170-1"]);
        assert_eq!(parse_madison(out, "sid"), ["7.2.13-1"]);
        assert!(parse_madison(out, "bullseye").is_empty());
    }

    #[test]
    fn image_dependency_of_meta_packages() {
        assert_eq!(
            image_dependency(
                "linux-base-cloud-amd64 (= 7.2.13-1), linux-image-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)"
            ),
            Some((
                "linux-image-7.2.13+deb14-cloud-amd64".into(),
                Some("7.2.13-1".into())
            ))
        );
        assert_eq!(
            image_dependency("linux-image-5.10.0-46-cloud-amd64 (= 5.10.262-1)"),
            Some((
                "linux-image-5.10.0-46-cloud-amd64".into(),
                Some("5.10.262-1".into())
            ))
        );
        assert_eq!(image_dependency("linux-base"), None);
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
        assert_eq!(deb_version("1:2.3"), "1%3a2.3");
    }

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
    fn split_packages_of_7x() {
        let deps = "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
                    linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), linux-binary-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), \
                    linux-modules-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)";
        assert_eq!(
            split_image_parts(deps),
            [
                (
                    "linux-base-7.2.13+deb14-cloud-amd64".to_string(),
                    Some("7.2.13-1".to_string())
                ),
                (
                    "linux-binary-7.2.13+deb14-cloud-amd64".to_string(),
                    Some("7.2.13-1".to_string())
                ),
                (
                    "linux-modules-7.2.13+deb14-cloud-amd64".to_string(),
                    Some("7.2.13-1".to_string())
                ),
            ]
        );
        assert!(split_image_parts("linux-base (>= 4.17~)").is_empty());
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

    #[test]
    fn config_values() {
        let text = "CONFIG_KPROBES=y\n# CONFIG_FPROBE is not set\nCONFIG_X=\"abc\"\n";
        assert_eq!(config_value(text, "KPROBES"), "y");
        assert_eq!(config_value(text, "FPROBE"), "n");
        assert_eq!(config_value(text, "X"), "abc");
    }
}
