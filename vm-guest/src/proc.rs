//! Payload processes: lqtrace-testkit's [`Proc`], each in a process group of its own (what a
//! payload leaves running in the background is killed with it), with every output line echoed
//! to the console as `<tag>|o <line>` (stdout) or `<tag>|e <line>` (stderr) as it arrives.

use std::{io, process::Command, sync::Arc};

pub use lqtrace_testkit::process::{Proc, describe, last_line, shorten};
use lqtrace_testkit::process::{Spawn, Stream};

use crate::out;

/// Starts `argv` with `env` added to the environment, stdin from /dev/null.
pub fn spawn(tag: &str, argv: &[String], env: &[(String, String)]) -> io::Result<Proc> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    Proc::spawn(tag, command(program, args, env), echoed(tag))
}

/// `program args` with `env` added to the environment.
pub fn command(program: &str, args: &[String], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Spawn options: a process group of its own, every line echoed to the console under `tag`.
pub fn echoed(tag: &str) -> Spawn {
    let echo_tag = tag.to_string();
    Spawn {
        group: true,
        echo: Some(Arc::new(move |stream, line| {
            let mark = if stream == Stream::Out { 'o' } else { 'e' };
            out::line(&format!("{echo_tag}|{mark} {line}"));
        })),
        ..Spawn::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn environment_and_process_group() {
        let env = [("VMGUEST_TEST".to_string(), "yes".to_string())];
        let mut p = spawn("t", &sh("echo $VMGUEST_TEST; sleep 30 & echo bg"), &env).unwrap();
        let st = p.wait(Instant::now() + Duration::from_secs(10)).unwrap();
        assert!(st.success());
        assert_eq!(p.stdout, ["yes", "bg"]);
        assert!(spawn("t", &[], &[]).is_err());
    }
}
