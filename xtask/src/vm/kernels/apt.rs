//! Downloading kernel packages with apt without installing anything: a private apt state (own
//! sources list, lists and empty dpkg status under `target/vm/cache/apt/`), `apt-cache` to pick
//! versions and read dependencies, `apt-get download` for the `.deb` files, and parsers for
//! what those commands print. One state per package architecture (`APT::Architecture`): the
//! arm64 guests' kernels and tools come from Debian's arm64 archive through the same code.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    cross::Arch,
    util::{self, command, render},
};

pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// (suite, archive URL) for every suite a kernel may come from.
pub const SUITES: &[(&str, &str)] = &[
    ("bullseye", "http://deb.debian.org/debian"),
    ("bullseye-security", "http://deb.debian.org/debian-security"),
    ("bookworm", "http://deb.debian.org/debian"),
    ("bookworm-security", "http://deb.debian.org/debian-security"),
    ("bookworm-backports", "http://deb.debian.org/debian"),
    ("sid", "http://deb.debian.org/debian"),
];

/// Private apt state under `dir`, for the packages of `arch`.
pub struct Apt {
    dir: PathBuf,
    arch: Arch,
}

impl Apt {
    pub fn new(dir: PathBuf, arch: Arch) -> Apt {
        Apt { dir, arch }
    }

    pub fn arch(&self) -> Arch {
        self.arch
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
            // This state's only architecture: its lists, its `.deb` files, and the one
            // dependencies resolve in (an empty dpkg status installs nothing on the host).
            format!("APT::Architecture={}", self.arch.debian()),
            format!("APT::Architectures={}", self.arch.debian()),
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
        stdout_of(&mut cmd)
    }

    /// Versions of `pkg` in `suite` (from `apt-cache madison`).
    pub fn versions_in(&self, pkg: &str, suite: &str) -> anyhow::Result<Vec<String>> {
        Ok(parse_madison(&self.output(&["madison", pkg])?, suite))
    }

    /// The `Depends:` of `pkg=version`.
    pub fn depends(&self, pkg: &str, version: &str) -> anyhow::Result<String> {
        let out = self.output(&["show", &format!("{pkg}={version}")])?;
        out.lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .map(|d| d.trim().to_string())
            .with_context(|| format!("{pkg}={version} has no Depends"))
    }

    pub fn download(&self, pkg: &str, version: &str, dest: &Path) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(dest)?;
        let mut cmd = self.cmd("apt-get");
        cmd.current_dir(dest)
            .args(["-q", "download", &format!("{pkg}={version}")]);
        eprintln!("vm: {}", render(&cmd));
        util::run(&mut cmd)?;
        find_deb(dest, pkg, version, self.arch)?
            .with_context(|| format!("no {pkg} .deb in {} after download", dest.display()))
    }

    /// Downloads `pkgs` from `suite` with their whole dependency closure (`apt-get install
    /// --download-only` against the empty dpkg status: nothing is installed) and returns the
    /// `.deb` files of that closure. The closure comes from a simulated install (`-s`), which
    /// lists every package whether or not its `.deb` is already downloaded.
    pub fn download_closure(&self, pkgs: &[&str], suite: &str) -> anyhow::Result<Vec<PathBuf>> {
        let install = |extra: &[&str]| {
            let mut cmd = self.cmd("apt-get");
            cmd.args(["-q", "-y", "--no-install-recommends", "-t", suite])
                .args(extra)
                .arg("install")
                .args(pkgs);
            cmd
        };
        let mut sim = install(&["-s"]);
        let files = parse_simulated(&stdout_of(&mut sim)?);
        if files.is_empty() {
            bail!("`{}` listed no package", render(&sim));
        }
        let archives = self.dir.join("cache/archives");
        let paths: Vec<PathBuf> = files.iter().map(|f| archives.join(f)).collect();
        if !paths.iter().all(|p| p.exists()) {
            let mut get = install(&["--download-only"]);
            eprintln!("vm: {}", render(&get));
            util::run(&mut get)?;
        }
        if let Some(p) = paths.iter().find(|p| !p.exists()) {
            bail!("{} missing after downloading", p.display());
        }
        Ok(paths)
    }
}

/// What `cmd` printed on stdout; an error naming the command and its stderr if it failed.
fn stdout_of(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", render(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            render(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `.deb` file names of the packages a simulated `apt-get -s install` would unpack
/// (`Inst zlib1g (1:1.2.13.dfsg-1 Debian:12.15/oldstable [arm64])`).
pub fn parse_simulated(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(" (")?;
            let version = rest.split_whitespace().next()?;
            let arch = rest.split_once('[')?.1.split_once(']')?.0;
            Some(format!("{name}_{}_{arch}.deb", deb_version(version)))
        })
        .collect()
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

/// Each dependency in a `Depends:` value: the name of its first alternative, and the version it
/// pins with `(= version)`, if any.
fn dependencies(depends: &str) -> impl Iterator<Item = (&str, Option<String>)> {
    depends.split(',').filter_map(|d| {
        let d = d.split('|').next()?.trim();
        let (name, rest) = d.split_once(' ').unwrap_or((d, ""));
        let version = rest
            .trim()
            .strip_prefix("(=")
            .and_then(|v| v.strip_suffix(')'))
            .map(|v| v.trim().to_string());
        Some((name, version))
    })
}

/// The `linux-image-*` package in a `Depends:` value ("linux-base-cloud-amd64 (= 7.2.13-1),
/// linux-image-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)").
pub fn image_dependency(depends: &str) -> Option<(String, Option<String>)> {
    dependencies(depends)
        .find(|(name, _)| name.starts_with("linux-image-"))
        .map(|(name, version)| (name.to_string(), version))
}

/// `version` as it appears in a .deb file name (the epoch's `:` becomes `%3a`).
pub fn deb_version(version: &str) -> String {
    version.replace(':', "%3a")
}

pub fn find_deb(
    dir: &Path,
    pkg: &str,
    version: &str,
    arch: Arch,
) -> anyhow::Result<Option<PathBuf>> {
    let want = format!("{pkg}_{}_{}.deb", deb_version(version), arch.debian());
    let p = dir.join(&want);
    Ok(p.exists().then_some(p))
}

/// `dpkg --compare-versions a gt b`.
pub fn version_gt(a: &str, b: &str) -> bool {
    command("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .is_ok_and(|s| s.success())
}

/// The `linux-binary-<abi>`/`linux-base-<abi>`/`linux-modules-<abi>` packages in an image
/// package's `Depends:`.
pub fn split_image_parts(depends: &str) -> Vec<(String, Option<String>)> {
    dependencies(depends)
        .filter(|(name, _)| {
            let versioned = |p: &str| {
                name.strip_prefix(p)
                    .is_some_and(|abi| abi.starts_with(|c: char| c.is_ascii_digit()))
            };
            ["linux-binary-", "linux-base-", "linux-modules-"]
                .iter()
                .any(|p| versioned(p))
        })
        .map(|(name, version)| (name.to_string(), version))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn simulated_install_output() {
        let out = "Reading package lists...\n\
                   Inst debconf (1.5.82 Debian:12.15/oldstable [all])\n\
                   Inst libgcc-s1 (12.2.0-14+deb12u1 Debian:12.15/oldstable [arm64]) []\n\
                   Inst zlib1g (1:1.2.13.dfsg-1 Debian:12.15/oldstable [arm64])\n\
                   Conf debconf (1.5.82 Debian:12.15/oldstable [all])\n";
        assert_eq!(
            parse_simulated(out),
            [
                "debconf_1.5.82_all.deb",
                "libgcc-s1_12.2.0-14+deb12u1_arm64.deb",
                "zlib1g_1%3a1.2.13.dfsg-1_arm64.deb"
            ]
        );
    }

    #[test]
    fn deb_file_names() {
        assert_eq!(deb_version("1:2.3"), "1%3a2.3");
        assert_eq!(deb_version("6.1.192-2"), "6.1.192-2");
    }
}
