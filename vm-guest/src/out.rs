//! Console output: whole lines, one `write` each, so lines from the payload reader threads and
//! the VMTEST verdicts do not interleave mid-line.

use std::io::Write as _;

pub fn line(s: &str) {
    let mut buf = String::with_capacity(s.len() + 1);
    buf.push_str(s);
    buf.push('\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(buf.as_bytes());
    let _ = out.flush();
}

/// Replaces newlines and control characters so a detail string stays on one line.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
