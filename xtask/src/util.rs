//! Small helpers: paths, PATH lookup, running and printing commands.

use std::{
    env,
    ffi::{OsStr, OsString},
    os::unix::{fs::PermissionsExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Duration,
};

use anyhow::{Context as _, bail};

/// True when running with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The workspace root (parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                env::current_dir().unwrap_or_default().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

pub fn profile_dir(release: bool) -> &'static str {
    if release { "release" } else { "debug" }
}

fn home() -> PathBuf {
    env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// `$CARGO_HOME` or `~/.cargo`.
pub fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .filter(|s| !s.is_empty())
        .map_or_else(|| home().join(".cargo"), PathBuf::from)
}

/// `$RUSTUP_HOME` or `~/.rustup`.
pub fn rustup_home() -> PathBuf {
    env::var_os("RUSTUP_HOME")
        .filter(|s| !s.is_empty())
        .map_or_else(|| home().join(".rustup"), PathBuf::from)
}

/// `$PATH` for the commands xtask runs: the caller's PATH with `~/.cargo/bin` (where
/// `cargo install` puts bpf-linker) prepended if it is not already there.
pub fn child_path() -> OsString {
    let current = env::var_os("PATH").unwrap_or_default();
    let cargo_bin = cargo_home().join("bin");
    if env::split_paths(&current).any(|p| p == cargo_bin) {
        return current;
    }
    env::join_paths(std::iter::once(cargo_bin).chain(env::split_paths(&current))).unwrap_or(current)
}

/// Looks `name` up in [`child_path`], then in the sbin directories (a non-root PATH often lacks
/// them, and `ip` lives there).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = child_path();
    env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A command with [`child_path`] as its PATH.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", child_path());
    cmd
}

/// `cargo` of the toolchain running xtask (`$CARGO`, set by `cargo run`), else `cargo`.
pub fn cargo() -> Command {
    command(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Quotes `s` for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%^".contains(&b));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The command as one could type it into a shell: explicitly set variables (except PATH), then
/// the program (`cargo` for `$CARGO`) and its arguments.
pub fn render(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if key == "PATH" {
            continue;
        }
        if let Some(value) = value {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                shell_quote(&value.to_string_lossy())
            ));
        }
    }
    let program = cmd.get_program();
    if env::var_os("CARGO").is_some_and(|c| c == program) {
        parts.push("cargo".to_owned());
    } else {
        parts.push(shell_quote(&program.to_string_lossy()));
    }
    parts.extend(cmd.get_args().map(|a| shell_quote(&a.to_string_lossy())));
    parts.join(" ")
}

/// Runs `cmd` (inheriting stdio) and fails, naming the command, unless it exits 0.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = render(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({})", describe(status));
    }
    Ok(())
}

/// "exit status 101" / "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => format!("{status}"),
    }
}

pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2} s")
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("cargo"), "cargo");
        assert_eq!(shell_quote("/usr/lib/llvm-22"), "/usr/lib/llvm-22");
        assert_eq!(shell_quote("*"), "'*'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn rendering_shows_env_but_not_path() {
        let mut cmd = command("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "llvm-22-dev"]);
        assert_eq!(
            render(&cmd),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y llvm-22-dev"
        );
        let mut cmd = command("cargo");
        cmd.args(["test", "-p", "lqtrace", "--test", "*"]);
        assert_eq!(render(&cmd), "cargo test -p lqtrace --test '*'");
    }

    #[test]
    fn status_descriptions() {
        assert_eq!(describe(ExitStatus::from_raw(101 << 8)), "exit status 101");
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by signal 9");
    }

    #[test]
    fn durations() {
        assert_eq!(secs(Duration::from_millis(1234)), "1.23 s");
        assert_eq!(secs(Duration::from_millis(45_670)), "45.7 s");
        assert_eq!(secs(Duration::from_secs(185)), "3m05s");
    }
}
