//! `lqtrace listeners` (in progress).

use anyhow::{Result, bail};

use crate::cli::{Cli, ListenersArgs};

pub async fn run(_cli: &Cli, _args: &ListenersArgs) -> Result<i32> {
    bail!("`lqtrace listeners` is not implemented yet")
}
