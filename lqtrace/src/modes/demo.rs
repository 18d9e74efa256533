//! `lqtrace demo` (in progress).

use anyhow::{Result, bail};

use crate::cli::{Cli, DemoArgs};

pub async fn run(_cli: &Cli, _args: &DemoArgs) -> Result<i32> {
    bail!("`lqtrace demo` is not implemented yet")
}
