//! `lqtrace run --report FILE.html`: a self-contained HTML report (inline CSS, plots as inline
//! SVG) plus the plots as PNG files beside it (`FILE.drops.png`, `FILE.queue.png`).

mod glyphs;
pub mod html;
mod panels;
pub mod plots;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use plots::{Figure, PlotData};

use crate::stats::{impact::Delays, refused::Gap, summary::Summary, timeline::Timeline};

/// What a report is made of.
pub struct ReportInput<'a> {
    /// The command that ran (argv).
    pub command: &'a [String],
    /// Wall clock at the start, ns since the Unix epoch.
    pub started: crate::event::WallTime,
    pub duration_s: f64,
    /// How the command ended, e.g. "exit status 0", "killed by signal 9".
    pub exit: String,
    /// Active filters as text ("" for none).
    pub filters: String,
    pub summary: &'a Summary,
    pub timeline: &'a Timeline,
    /// Connect delays of the shown listeners' attempts that connected, merged.
    pub delays: &'a Delays,
    /// Listener gaps: (netns, port, gap); those at ports of the summary are drawn.
    pub gaps: &'a [(u32, u16, Gap)],
}

/// Gap bands drawn at most (the oldest first).
const MAX_GAPS: usize = 200;

impl ReportInput<'_> {
    /// The gaps worth a band: at ports that refused SYNs or whose listener is in the summary
    /// (any listener closing on the host is a gap, and most say nothing about this run).
    fn relevant_gaps(&self) -> Vec<(u32, u16, Gap)> {
        let s = self.summary;
        let shown = |netns: u32, port: u16| {
            s.refused
                .iter()
                .any(|p| p.netns == netns && p.lport == port)
                || s.listeners
                    .iter()
                    .any(|l| l.netns == netns && l.lport == port)
        };
        self.gaps
            .iter()
            .filter(|(n, p, _)| shown(*n, *p))
            .take(MAX_GAPS)
            .cloned()
            .collect()
    }

    fn plot_data<'a>(&'a self, gaps: &'a [(u32, u16, Gap)]) -> PlotData<'a> {
        PlotData {
            timeline: self.timeline,
            delays: self.delays,
            gaps,
        }
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    pub html: PathBuf,
    /// The plot files: PNG, or SVG when PNG could not be written.
    pub images: Vec<PathBuf>,
    /// Why the images are not PNG, if they are not.
    pub note: Option<String>,
}

/// `dir/name.html` -> `dir/name.<what>.<ext>` (the report's extension, if any, replaced).
pub fn image_path(report: &Path, what: &str, ext: &str) -> PathBuf {
    let stem = match report.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm") => report
            .file_stem()
            .map(|s| s.to_os_string())
            .unwrap_or_default(),
        _ => report
            .file_name()
            .map(|s| s.to_os_string())
            .unwrap_or_default(),
    };
    let mut name = stem;
    name.push(format!(".{what}.{ext}"));
    report.with_file_name(name)
}

/// Write the HTML report and the plot images.
pub fn write(path: &Path, input: &ReportInput<'_>) -> Result<ReportFiles> {
    let gaps = input.relevant_gaps();
    let data = input.plot_data(&gaps);
    let svgs = Figure::ALL
        .iter()
        .map(|f| f.svg(&data))
        .collect::<Result<Vec<String>>>()?;
    let pngs: Vec<PathBuf> = Figure::ALL
        .iter()
        .map(|f| image_path(path, f.name(), "png"))
        .collect();
    let png = Figure::ALL
        .iter()
        .zip(&pngs)
        .try_for_each(|(f, p)| f.png(&data, p));
    let (images, note) = match png {
        Ok(()) => (pngs, None),
        Err(e) => {
            // Fallback: the same plots as SVG files.
            for p in &pngs {
                let _ = std::fs::remove_file(p);
            }
            let mut files = Vec::new();
            for (f, svg) in Figure::ALL.iter().zip(&svgs) {
                let file = image_path(path, f.name(), "svg");
                std::fs::write(&file, svg)
                    .with_context(|| format!("writing {}", file.display()))?;
                files.push(file);
            }
            (
                files,
                Some(format!(
                    "PNG output failed ({e:#}); wrote SVG files instead"
                )),
            )
        }
    };
    let names: Vec<String> = images
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let page = html::render(input, &svgs[0], &svgs[1], &names);
    std::fs::write(path, page).with_context(|| format!("writing the report {}", path.display()))?;
    Ok(ReportFiles {
        html: path.to_path_buf(),
        images,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report of `command` over `summary` and `timeline`, as the tests read it: started at
    /// the epoch, as long as the summary says, exit status 0, no filters, delays or gaps.
    pub(super) fn input<'a>(
        command: &'a [String],
        summary: &'a Summary,
        timeline: &'a Timeline,
    ) -> ReportInput<'a> {
        static NO_DELAYS: std::sync::LazyLock<Delays> = std::sync::LazyLock::new(Delays::default);
        ReportInput {
            command,
            started: crate::event::WallTime(0),
            duration_s: summary.duration_s,
            exit: "exit status 0".into(),
            filters: String::new(),
            summary,
            timeline,
            delays: &NO_DELAYS,
            gaps: &[],
        }
    }

    #[test]
    fn image_paths_beside_the_report() {
        assert_eq!(
            image_path(Path::new("/tmp/x.html"), "drops", "png"),
            Path::new("/tmp/x.drops.png")
        );
        assert_eq!(
            image_path(Path::new("out/r.HTM"), "queue", "svg"),
            Path::new("out/r.queue.svg")
        );
        assert_eq!(
            image_path(Path::new("report"), "drops", "png"),
            Path::new("report.drops.png")
        );
        assert_eq!(
            image_path(Path::new("a.b.txt"), "drops", "png"),
            Path::new("a.b.txt.drops.png")
        );
    }

    #[test]
    fn writes_html_and_pngs() {
        let dir = std::env::temp_dir().join(format!("lqtrace-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (tl, delays, gaps) = plots::tests::synthetic();
        let summary = Summary {
            duration_s: 12.0,
            ..Default::default()
        };
        let argv = vec!["true".to_string()];
        let input = ReportInput {
            delays: &delays,
            gaps: &gaps,
            ..input(&argv, &summary, &tl)
        };
        let files = write(&dir.join("r.html"), &input).unwrap();
        assert!(files.note.is_none(), "{:?}", files.note);
        assert_eq!(
            files.images,
            vec![dir.join("r.drops.png"), dir.join("r.queue.png")]
        );
        let page = std::fs::read_to_string(dir.join("r.html")).unwrap();
        assert_eq!(page.matches("<svg").count(), 2);
        for img in &files.images {
            assert_eq!(&std::fs::read(img).unwrap()[..4], b"\x89PNG");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_gaps_at_the_summarys_ports_are_drawn() {
        let (tl, delays, mut gaps) = plots::tests::synthetic();
        let netns = gaps[0].0;
        let mut other = gaps[0].clone();
        other.1 = 22; // a listener of another service closed: not this run's business
        gaps.push(other);
        let mut summary = Summary::default();
        let argv = vec!["true".to_string()];
        let kept = |summary: &Summary| {
            ReportInput {
                delays: &delays,
                gaps: &gaps,
                ..input(&argv, summary, &tl)
            }
            .relevant_gaps()
        };
        assert!(kept(&summary).is_empty());
        summary.refused.push(crate::stats::refused::RefusedPort {
            netns,
            laddr: None,
            lport: 9090,
            count: 1,
            gaps: Vec::new(),
        });
        let kept = kept(&summary);
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|(n, p, _)| (*n, *p) == (netns, 9090)));
    }
}
