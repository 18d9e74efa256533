//! The report's plots, drawn with plotters on any backend: SVG (inlined in the HTML) and PNG
//! (files beside it).
//!
//! Text is rendered with plotters' `ab_glyph` feature from a font compiled into the binary (the
//! `dejavu` crate): no system font, fontconfig or freetype is needed at build or run time.

use std::{path::Path, sync::Once};

use anyhow::{Result, anyhow};
use plotters::{coord::Shift, prelude::*, style::register_font};

use crate::{
    event::Reason,
    stats::timeline::{ListenerSeries, Timeline},
};

/// The font family name plots use; registered by [`ensure_fonts`].
pub const FONT: &str = "sans-serif";

pub const SIZE: (u32, u32) = (960, 400);

/// Listeners drawn in the queue plot.
pub const QUEUE_LISTENERS: usize = 5;

static FONTS: Once = Once::new();

/// Register the embedded font under [`FONT`] (idempotent).
pub fn ensure_fonts() {
    FONTS.call_once(|| {
        if register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_err() {
            log::warn!("report: the embedded font could not be registered; plots will lack text");
        }
        let _ = register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Stable colour per reason (colour-blind friendly-ish: Okabe-Ito).
pub fn reason_color(r: Reason) -> RGBColor {
    match r {
        Reason::SynAcceptQueueFull => RGBColor(213, 94, 0),
        Reason::SynQueueFull => RGBColor(0, 114, 178),
        Reason::SynOther => RGBColor(204, 121, 167),
        Reason::AckAcceptQueueFull => RGBColor(230, 159, 0),
        Reason::AckSyncookieAcceptQueueFull => RGBColor(0, 158, 115),
        Reason::AckOther => RGBColor(86, 180, 233),
        Reason::Other => RGBColor(120, 120, 120),
        Reason::SyncookieSent => RGBColor(90, 90, 200),
    }
}

const SERIES_COLORS: [RGBColor; QUEUE_LISTENERS] = [
    RGBColor(213, 94, 0),
    RGBColor(0, 114, 178),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(120, 120, 120),
];

fn err<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {e:?}")
}

/// Plot 1 as an SVG document.
pub fn drops_svg(tl: &Timeline) -> Result<String> {
    ensure_fonts();
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, SIZE).into_drawing_area();
        draw_drops(&root, tl).map_err(err("drawing the drops plot"))?;
        root.present().map_err(err("rendering the drops plot"))?;
    }
    Ok(s)
}

/// Plot 2 as an SVG document.
pub fn queue_svg(tl: &Timeline) -> Result<String> {
    ensure_fonts();
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, SIZE).into_drawing_area();
        draw_queue(&root, tl).map_err(err("drawing the queue plot"))?;
        root.present().map_err(err("rendering the queue plot"))?;
    }
    Ok(s)
}

/// Plot 1 as a PNG file.
pub fn drops_png(tl: &Timeline, path: &Path) -> Result<()> {
    ensure_fonts();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    draw_drops(&root, tl).map_err(err("drawing the drops plot"))?;
    root.present()
        .map_err(|e| anyhow!("writing {}: {e:?}", path.display()))
}

/// Plot 2 as a PNG file.
pub fn queue_png(tl: &Timeline, path: &Path) -> Result<()> {
    ensure_fonts();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    draw_queue(&root, tl).map_err(err("drawing the queue plot"))?;
    root.present()
        .map_err(|e| anyhow!("writing {}: {e:?}", path.display()))
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// x extent in seconds: the whole timeline, at least one second.
fn x_max(tl: &Timeline) -> f64 {
    (tl.len() as f64 * tl.bucket_secs()).max(1.0)
}

/// Tick labels without useless decimals: "20" rather than "20.0" on a wide axis.
fn axis_label(v: f64, range: f64) -> String {
    if range >= 8.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A step line through per-bucket values: each bucket is a flat segment over its width.
fn steps(tl: &Timeline, values: impl Iterator<Item = (usize, f64)>) -> Vec<(f64, f64)> {
    let w = tl.bucket_secs();
    let mut pts = Vec::new();
    for (i, v) in values {
        let x0 = i as f64 * w;
        pts.push((x0, v));
        pts.push((x0 + w, v));
    }
    pts
}

/// Drops per second over time, one line per reason seen.
pub fn draw_drops<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    tl: &Timeline,
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let w = tl.bucket_secs();
    let reasons: Vec<Reason> = tl
        .reasons_seen()
        .into_iter()
        .filter(|r| *r != Reason::SyncookieSent)
        .collect();
    let peak = tl
        .host()
        .iter()
        .flat_map(|b| reasons.iter().map(move |r| b.get(*r) as f64 / w))
        .fold(0.0f64, f64::max);
    // Headroom for the legend (upper right).
    let y_max = (peak * 1.35).max(1.0);
    let caption = if reasons.is_empty() {
        "Listen drops per second by reason (no drops)".to_string()
    } else if w > 1.0 {
        format!("Listen drops per second by reason ({w:.0} s buckets)")
    } else {
        "Listen drops per second by reason".to_string()
    };
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max(tl), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("drops / s")
        .x_label_formatter(&|v| axis_label(*v, x_max(tl)))
        .y_label_formatter(&|v| axis_label(*v, y_max))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for r in &reasons {
        let color = reason_color(*r);
        let pts = steps(
            tl,
            tl.host()
                .iter()
                .enumerate()
                .map(|(i, b)| (i, b.get(*r) as f64 / w)),
        );
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(r.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
            });
    }
    if !reasons.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()?;
    }
    Ok(())
}

/// The listeners drawn in the queue plot: the most drops first, those with queue samples.
pub fn queue_listeners(tl: &Timeline) -> Vec<&ListenerSeries> {
    tl.listeners_ranked()
        .into_iter()
        .filter(|l| l.buckets().any(|(_, b)| b.queue.is_some()))
        .take(QUEUE_LISTENERS)
        .collect()
}

/// Accept-queue occupancy (max per bucket) vs the limit, per listener (top 5 by drops).
pub fn draw_queue<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    tl: &Timeline,
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let listeners = queue_listeners(tl);
    let peak = listeners
        .iter()
        .map(|l| l.peak_queue.max(l.limit))
        .max()
        .unwrap_or(0) as f64;
    let y_max = (peak * (1.3 + 0.07 * listeners.len() as f64))
        .max(1.0)
        .ceil();
    let caption = if listeners.is_empty() {
        "Accept-queue occupancy vs limit (no samples)".to_string()
    } else {
        match listeners.len() {
            1 => "Accept-queue occupancy vs limit".to_string(),
            n => format!("Accept-queue occupancy vs limit (top {n} listeners by drops)"),
        }
    };
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max(tl), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("connections in accept queue")
        // Whole connections: integer ticks on a short axis.
        .y_labels(if y_max <= 10.0 {
            y_max as usize + 1
        } else {
            10
        })
        .x_label_formatter(&|v| axis_label(*v, x_max(tl)))
        .y_label_formatter(&|v| axis_label(*v, y_max))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for (n, l) in listeners.iter().enumerate() {
        let color = SERIES_COLORS[n % SERIES_COLORS.len()];
        // One step segment per run of consecutive sampled buckets: no line across a gap.
        let mut runs: Vec<Vec<(usize, f64)>> = Vec::new();
        for (i, b) in l.buckets() {
            let Some(q) = b.queue else { continue };
            match runs.last_mut() {
                Some(run) if run.last().is_some_and(|(j, _)| j + 1 == i) => {
                    run.push((i, q.max as f64))
                }
                _ => runs.push(vec![(i, q.max as f64)]),
            }
        }
        let mut label = format!("{} {}", l.endpoint(), l.owner.as_deref().unwrap_or("?"));
        if l.netns() != 0 {
            label.push_str(&format!(" netns {}", l.netns()));
        }
        let mut first = true;
        for run in runs {
            let series = chart.draw_series(LineSeries::new(
                steps(tl, run.into_iter()),
                color.stroke_width(2),
            ))?;
            if first {
                series.label(label.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                });
                first = false;
            }
        }
        // The limit, dashed, over the whole run.
        if l.limit > 0 {
            let lim = l.limit as f64;
            chart.draw_series(DashedLineSeries::new(
                vec![(0.0, lim), (x_max(tl), lim)],
                8,
                5,
                color.mix(0.8).stroke_width(1),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("limit {}", l.limit),
                (x_max(tl) * 0.005, lim + y_max * 0.045),
                (FONT, 12).into_font().color(&color),
            )))?;
        }
    }
    if !listeners.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{attribution::owners::Owner, event::Stage};

    /// A 12-second synthetic run: two listeners, SYN- and ACK-time overflows.
    pub(crate) fn synthetic() -> Timeline {
        let s = 1_000_000_000u64;
        let mut tl = Timeline::new(10 * s);
        let base = crate::event::tests::sample();
        for sec in 0..12u64 {
            for (port, n, limit) in [(8080u16, 5 + sec * 3, 128u32), (9090, sec % 4, 16)] {
                for k in 0..n {
                    let mut e = base.clone();
                    e.ts_ns = 10 * s + sec * s + k * 1000;
                    e.lport = port;
                    e.sock_ino = port as u64;
                    e.accept_queue = limit + 1;
                    e.accept_queue_max = limit;
                    e.reason = if k % 3 == 0 {
                        Reason::AckAcceptQueueFull
                    } else {
                        Reason::SynAcceptQueueFull
                    };
                    e.stage = if k % 3 == 0 { Stage::Ack } else { Stage::Syn };
                    e.owners = [Owner::new(
                        u32::from(port),
                        format!("srv{port}"),
                        String::new(),
                        String::new(),
                    )]
                    .into();
                    tl.add_event(&e);
                }
            }
            // Periodic samples between drops.
            tl.sample_queue(
                10 * s + sec * s + s / 2,
                crate::event::ListenerId {
                    netns: base.netns,
                    sock_ino: 8080,
                    lport: 8080,
                },
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                (sec as u32 * 11).min(128),
                128,
            );
        }
        tl.extend_to(22 * s);
        tl
    }

    #[test]
    fn svg_plots_have_text_and_lines() {
        let tl = synthetic();
        let d = drops_svg(&tl).unwrap();
        assert!(d.starts_with("<svg"), "{}", &d[..40.min(d.len())]);
        assert!(d.contains("Listen drops per second by reason"));
        assert!(d.contains("syn_accept_queue_full") && d.contains("ack_accept_queue_full"));
        assert!(d.contains("seconds since start"));
        assert!(d.contains("<polyline"));
        let q = queue_svg(&tl).unwrap();
        assert!(
            q.contains("127.0.0.1:8080 42/java") || q.contains("127.0.0.1:8080"),
            "legend names the listener"
        );
        assert!(q.contains("limit 128") && q.contains("limit 16"));
        // Empty timeline: still a valid plot.
        let empty = Timeline::new(0);
        assert!(drops_svg(&empty).unwrap().contains("no drops"));
        assert!(queue_svg(&empty).unwrap().contains("no samples"));
    }

    #[test]
    fn png_plots_are_png() {
        // LQTRACE_PLOT_DIR=DIR keeps the pictures there, to look at them.
        let keep = std::env::var_os("LQTRACE_PLOT_DIR").map(std::path::PathBuf::from);
        let dir = keep.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("lqtrace-plots-{}", std::process::id()))
        });
        std::fs::create_dir_all(&dir).unwrap();
        let tl = synthetic();
        for (name, f) in [
            ("drops.png", drops_png as fn(&Timeline, &Path) -> Result<()>),
            ("queue.png", queue_png),
        ] {
            let p = dir.join(name);
            f(&tl, &p).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name}");
            assert!(
                bytes.len() > 5_000,
                "{name}: {} bytes: empty picture?",
                bytes.len()
            );
        }
        if keep.is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
