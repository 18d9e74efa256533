//! `cargo xtask image`: the multi-architecture runtime image (`deploy/Dockerfile.multiarch`).
//!
//! Builds the static binary of every platform in [`PLATFORMS`] (`cross.rs`), then runs
//! `docker buildx build --platform linux/amd64,linux/arm64 ...` where Docker is installed, and
//! otherwise prints that command (the development and CI machines have no Docker engine). The
//! Dockerfile names the binaries by path, one stage per `TARGETARCH`: the tests below hold it,
//! its `.dockerignore` and the single-architecture `deploy/Dockerfile` to the paths xtask
//! builds and to this platform list.

use std::process::Command;

use clap::Args;

use crate::{
    cross::{self, Arch},
    util::{self, render},
};

/// (Docker platform, architecture) of the image.
pub const PLATFORMS: &[(&str, Arch)] = &[
    ("linux/amd64", Arch::X86_64),
    ("linux/arm64", Arch::Aarch64),
];
pub const DOCKERFILE: &str = "deploy/Dockerfile.multiarch";

#[derive(Debug, Clone, Args)]
pub struct ImageArgs {
    /// Image name and tag
    #[arg(short, long, default_value = concat!("lqtrace:", env!("CARGO_PKG_VERSION")))]
    pub tag: String,
    /// Push to the registry named in the tag (else the image is written as an OCI archive to
    /// target/lqtrace-image.oci.tar: a multi-platform image cannot be loaded into the classic
    /// docker image store)
    #[arg(long)]
    pub push: bool,
}

fn platform_list() -> String {
    PLATFORMS
        .iter()
        .map(|(p, _)| *p)
        .collect::<Vec<_>>()
        .join(",")
}

/// `docker buildx build` for [`DOCKERFILE`] and [`PLATFORMS`], run from the workspace root.
pub fn buildx_command(args: &ImageArgs) -> Command {
    let mut cmd = util::command("docker");
    cmd.current_dir(util::workspace_root())
        .args(["buildx", "build", "-f", DOCKERFILE, "--platform"])
        .arg(platform_list())
        .args(["-t", &args.tag]);
    if args.push {
        cmd.arg("--push");
    } else {
        cmd.arg("--output")
            .arg("type=oci,dest=target/lqtrace-image.oci.tar");
    }
    cmd.arg(".");
    cmd
}

pub fn run(args: &ImageArgs) -> anyhow::Result<()> {
    for (_, arch) in PLATFORMS {
        cross::build(*arch, true)?;
    }
    let mut cmd = buildx_command(args);
    let has_buildx = util::find_program("docker").is_some()
        && util::command("docker")
            .args(["buildx", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !has_buildx {
        println!(
            "no `docker buildx` on this machine; with Docker (BuildKit), from {}:\n    {}",
            util::workspace_root().display(),
            render(&cmd)
        );
        return Ok(());
    }
    eprintln!("running: {}", render(&cmd));
    util::run(&mut cmd)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// `p` relative to the workspace root (as the Dockerfile names it).
    fn relative(p: &std::path::Path) -> String {
        p.strip_prefix(util::workspace_root())
            .unwrap_or(p)
            .display()
            .to_string()
    }

    fn read(rel: &str) -> String {
        let p = util::workspace_root().join(rel);
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    /// Instruction lines (comments dropped, continuations joined).
    fn instructions(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
            .replace("\\\n", " ")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// (stage name or base, instructions) in order; the first element of each is its FROM line.
    fn stages(text: &str) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for l in instructions(text) {
            if let Some(from) = l.strip_prefix("FROM ") {
                let name = match from.split_once(" AS ") {
                    Some((_, name)) => name.trim().to_string(),
                    None => from.trim().to_string(),
                };
                out.push((name, vec![l.clone()]));
            } else if let Some(last) = out.last_mut() {
                last.1.push(l);
            }
        }
        out
    }

    fn arg_of<'a>(lines: &'a [String], instr: &str) -> Vec<&'a str> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(instr)?.strip_prefix(' ').map(str::trim))
            .collect()
    }

    #[test]
    fn dockerfile_copies_the_binaries_xtask_builds() {
        let text = read(DOCKERFILE);
        let stages = stages(&text);
        let runtime = &stages[0];
        let entry = arg_of(&runtime.1, "ENTRYPOINT");
        assert_eq!(entry, [r#"["/usr/local/bin/lqtrace"]"#]);
        let per_arch: Vec<&(String, Vec<String>)> = stages
            .iter()
            .filter(|(n, _)| n.starts_with("lqtrace-") && !n.contains('$'))
            .collect();
        assert_eq!(per_arch.len(), PLATFORMS.len(), "one stage per platform");
        for (platform, arch) in PLATFORMS {
            let targetarch = platform.strip_prefix("linux/").unwrap();
            assert_eq!(targetarch, arch.debian(), "TARGETARCH is Debian's name");
            let (_, lines) = per_arch
                .iter()
                .find(|(n, _)| *n == format!("lqtrace-{targetarch}"))
                .unwrap_or_else(|| panic!("no stage lqtrace-{targetarch}"));
            assert_eq!(
                lines[0],
                format!("FROM {} AS lqtrace-{targetarch}", runtime.0)
            );
            let want = format!(
                "{} /usr/local/bin/lqtrace",
                relative(&cross::binary(*arch, true))
            );
            assert_eq!(arg_of(lines, "COPY"), [want.as_str()], "{platform}");
        }
        let last = stages.last().unwrap();
        assert_eq!(
            last.1,
            ["FROM lqtrace-${TARGETARCH}"],
            "the platform picks its stage"
        );
        // The documented command builds exactly these platforms.
        assert!(
            text.contains(&format!("--platform {}", platform_list())),
            "{DOCKERFILE} documents the platform list"
        );
        let cmd = render(&buildx_command(&ImageArgs {
            tag: "x:1".into(),
            push: true,
        }));
        assert!(cmd.ends_with(&format!(
            "buildx build -f {DOCKERFILE} --platform linux/amd64,linux/arm64 -t x:1 --push ."
        )));
    }

    #[test]
    fn build_context_is_the_two_binaries() {
        let text = read(&format!("{DOCKERFILE}.dockerignore"));
        let rules: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let mut want = vec!["*".to_string()];
        for (_, arch) in PLATFORMS {
            want.push(format!("!{}", relative(&cross::binary(*arch, true))));
        }
        assert_eq!(rules, want);
    }

    #[test]
    fn same_runtime_as_the_single_arch_image() {
        let multi = stages(&read(DOCKERFILE));
        let single = stages(&read("deploy/Dockerfile"));
        let base = |s: &(String, Vec<String>)| {
            s.1[0]
                .strip_prefix("FROM ")
                .unwrap()
                .split(" AS ")
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(base(&multi[0]), base(&single[0]), "base image");
        for instr in ["ENTRYPOINT", "CMD", "USER", "EXPOSE"] {
            assert_eq!(
                arg_of(&multi[0].1, instr),
                arg_of(&single[0].1, instr),
                "{instr}"
            );
        }
    }
}
