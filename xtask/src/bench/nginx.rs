//! A real server and a real client: nginx (Debian `nginx-light`, started by the bench in its
//! network namespace with a configuration of its own: 2 workers, `listen ... backlog=4096`,
//! a fixed 200 response, no access log) and `wrk -t1 -c50` sending `Connection: close`
//! requests, so every request is a new connection (handshake, accept, request, close): what a
//! load test of a connection-per-request service does.

use std::{
    fs,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lqtrace_testkit::process::{self, Proc, Spawn, Stdout};

use super::sys::{self, Netns};

pub const WRK_THREADS: u32 = 1;
pub const WRK_CONNECTIONS: u32 = 50;
pub const NGINX_WORKERS: u32 = 2;

/// nginx running in the bench's namespace; stopped (its whole process group) on drop.
pub struct Nginx {
    proc: Proc,
    port: u16,
    netns: String,
    dir: PathBuf,
}

fn config(dir: &std::path::Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "worker_processes {NGINX_WORKERS};\n\
         daemon off;\n\
         master_process on;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 client_body_temp_path {d}/body;\n\
         \x20 server {{\n\
         \x20   listen 127.0.0.1:{port} backlog=4096;\n\
         \x20   location / {{ return 200 \"ok\\n\"; }}\n\
         \x20 }}\n\
         }}\n"
    )
}

impl Nginx {
    pub fn start(ns: &Netns, port: u16) -> Result<Nginx> {
        let dir = crate::util::target_dir()
            .join("bench")
            .join(format!("nginx-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let conf = dir.join("nginx.conf");
        fs::write(&conf, config(&dir, port))?;
        let nginx = program("nginx").context("nginx not found")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name()])
            .arg(nginx)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir);
        let opts = Spawn {
            stdout: Stdout::Lines,
            group: true,
            die_with_parent: true,
            ..Spawn::default()
        };
        let proc = Proc::spawn("nginx", cmd, opts).context("starting nginx")?;
        let mut n = Nginx {
            proc,
            port,
            netns: ns.name().to_string(),
            dir,
        };
        // Ready when it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if n.wrk(Duration::from_secs(1), 1).is_ok() {
                return Ok(n);
            }
            if !n.proc.alive() || Instant::now() > deadline {
                let log = fs::read_to_string(n.dir.join("error.log")).unwrap_or_default();
                bail!(
                    "nginx did not come up on 127.0.0.1:{port}: {} {}",
                    n.proc.stderr_text().trim(),
                    log.trim()
                );
            }
            sys::sleep(Duration::from_millis(100))?;
        }
    }

    /// `wrk -t1 -cN -dS -H 'Connection: close'`: requests per second.
    pub fn wrk(&self, duration: Duration, connections: u32) -> Result<f64> {
        let secs = duration.as_secs().max(1);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "wrk"])
            .arg(format!("-t{WRK_THREADS}"))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{secs}s"))
            .args(["-H", "Connection: close"])
            .arg(format!("http://127.0.0.1:{}/", self.port));
        let out =
            process::run("wrk", cmd, Duration::from_secs(secs + 20)).context("running wrk")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "wrk failed: {} {}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        sys::check_interrupted()?;
        parse_rate(&text).with_context(|| format!("wrk printed no Requests/sec: {text}"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the group (master and workers): fast shutdown; the Proc's drop SIGKILLs
        // the group if anything is left.
        self.proc.signal(libc::SIGTERM);
        let _ = self.proc.wait(Instant::now() + Duration::from_secs(3));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `prog` on PATH or in the sbin directories (Debian's nginx is /usr/sbin/nginx).
fn program(prog: &str) -> Option<PathBuf> {
    crate::util::find_program(prog)
}

fn parse_rate(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

/// nginx and wrk, installed with apt if missing (Debian `nginx-light`, `wrk`).
pub fn ensure_installed() -> Result<()> {
    let missing: Vec<&str> = [("nginx", "nginx-light"), ("wrk", "wrk")]
        .into_iter()
        .filter(|(prog, _)| program(prog).is_none())
        .map(|(_, pkg)| pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "bench: installing: apt-get install -y {}",
        missing.join(" ")
    );
    let install = |update: bool| -> Result<bool> {
        if update {
            let _ = Command::new("apt-get").arg("update").status();
        }
        Ok(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?
            .success())
    };
    if !install(false)? && !install(true)? {
        bail!(
            "could not install {}: apt-get install -y {}",
            missing.join(", "),
            missing.join(" ")
        );
    }
    // The package starts the system nginx (Debian's unit): the bench runs its own.
    let _ = Command::new("systemctl")
        .args(["disable", "--now", "nginx"])
        .status();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_rate() {
        let out = "Running 3s test @ http://127.0.0.1:7010/\n  1 threads and 50 connections\n  Requests/sec:  19771.07\nTransfer/sec:      2.77MB\n";
        assert_eq!(parse_rate(out), Some(19771.07));
        assert_eq!(parse_rate("nothing"), None);
    }

    #[test]
    fn config_has_backlog_and_workers() {
        let c = config(std::path::Path::new("/tmp/x"), 7010);
        assert!(c.contains("listen 127.0.0.1:7010 backlog=4096;"), "{c}");
        assert!(c.contains("worker_processes 2;"), "{c}");
    }
}
