//! When a mode stops: Ctrl-C (SIGINT), SIGTERM, or the end of `-d`. The signal streams are
//! created once, before the mode's loop: a stream created per iteration can miss a signal that
//! arrives between iterations under load.

use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::Instant,
};

pub struct Stop {
    sigint: Signal,
    sigterm: Signal,
    deadline: Option<Instant>,
}

/// Why a mode stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Signal,
    Deadline,
}

impl Stop {
    /// Stop on a signal, or `after` from now.
    pub fn new(after: Option<Duration>) -> Result<Stop> {
        Ok(Stop {
            sigint: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            sigterm: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            deadline: after.map(|d| Instant::now() + d),
        })
    }

    /// Stop `after` from now (instead of the deadline given to `new`).
    pub fn stop_after(&mut self, after: Duration) {
        self.deadline = Some(Instant::now() + after);
    }

    /// Resolves when it is time to stop. Cancel-safe (for `tokio::select!` in a loop).
    pub async fn wait(&mut self) -> Why {
        let deadline = self.deadline;
        tokio::select! {
            _ = self.sigint.recv() => Why::Signal,
            _ = self.sigterm.recv() => Why::Signal,
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => Why::Deadline,
        }
    }
}
