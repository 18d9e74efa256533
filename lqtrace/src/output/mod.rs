//! Output: one line per drop (text or JSON), then the summary.

pub mod json;
pub mod summary;
pub mod text;

use std::io::{self, Write};

use crate::event::DropEvent;
use summary::Summary;

pub const BANNER: &str = "Tracing listen-queue drops... Ctrl-C to end.";

pub struct Printer {
    json: bool,
    out: io::BufWriter<io::Stdout>,
}

impl Printer {
    pub fn new(json: bool) -> Printer {
        Printer { json, out: io::BufWriter::with_capacity(64 * 1024, io::stdout()) }
    }

    /// The banner goes to stderr, once every program is attached: it tells a person (and a
    /// script) that tracing has started, and keeps stdout to the data (header + lines, or JSON).
    pub fn banner(&mut self) -> io::Result<()> {
        eprintln!("{BANNER}");
        if !self.json {
            writeln!(self.out, "{}", text::header())?;
            self.out.flush()?;
        }
        Ok(())
    }

    pub fn event(&mut self, e: &DropEvent) -> io::Result<()> {
        if self.json {
            writeln!(self.out, "{}", json::event(e))
        } else {
            writeln!(self.out, "{}", text::event(e))
        }
    }

    pub fn summary(&mut self, s: &Summary) -> io::Result<()> {
        if self.json {
            writeln!(self.out, "{}", json::summary(s))?;
        } else {
            for line in text::summary(s) {
                writeln!(self.out, "{line}")?;
            }
        }
        self.out.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
