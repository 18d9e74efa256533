//! `lqtrace run` (in progress).

use anyhow::{Result, bail};

use crate::cli::{Cli, RunArgs};

pub async fn run(_cli: &Cli, _args: &RunArgs) -> Result<i32> {
    bail!("`lqtrace run` is not implemented yet")
}
