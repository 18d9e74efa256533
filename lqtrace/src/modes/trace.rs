//! The default mode: one line per drop, live, then the summary and the reconciliation.

use anyhow::{Context as _, Result};

use super::{live::print_events, stop::Stop};
use crate::{
    cli::Cli,
    session::{Session, SessionOptions},
    sink::Printer,
};

pub async fn run(cli: Cli) -> Result<()> {
    let opts = SessionOptions::from_cli(&cli);
    let mut session = Session::start(&opts).await?;
    let mut printer = Printer::new(cli.json);
    printer.banner().context("writing to stdout")?;

    let mut stop = Stop::new(cli.duration)?;

    // stdout closed (e.g. `| head`): stop, finish quietly.
    let output_closed = print_events(&mut session, &mut printer, &mut stop, |_| true)
        .await?
        .is_none();

    let crate::session::Finished { last, summary, .. } = session.finish().await;
    if !output_closed {
        for e in &last {
            if printer.event(e).is_err() {
                break;
            }
        }
        let _ = printer.summary(&summary);
    }
    let output = printer.output();
    if !printer.finish() {
        // stdout is closed or not being read: the summary still belongs somewhere.
        eprintln!("lqtrace: summary (stdout did not take it):");
        summary_to_stderr(&summary, output, cli.json);
    }
    Ok(())
}

fn summary_to_stderr(
    summary: &crate::stats::summary::Summary,
    output: crate::sink::printer::Output,
    json: bool,
) {
    if json {
        eprintln!("{}", crate::sink::json::summary_line(summary, output));
    } else {
        for line in crate::sink::text::summary(summary, output) {
            eprintln!("{line}");
        }
    }
}
