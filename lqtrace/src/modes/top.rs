//! `lqtrace top` (in progress).

use anyhow::{Result, bail};

use crate::cli::{Cli, TopArgs};

pub async fn run(_cli: &Cli, _args: &TopArgs) -> Result<i32> {
    bail!("`lqtrace top` is not implemented yet")
}
