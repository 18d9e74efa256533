//! The report's two figures, drawn with plotters on any backend: SVG (inlined in the HTML) and
//! PNG (files beside it). Each stacks panels (`panels.rs`):
//! - `drops`: listen drops per second by reason; refused, reset and abandoned connections per
//!   second with the listener gaps shaded; the client-delay histogram;
//! - `queue`: accept-queue occupancy against the limit; connections arriving against those
//!   accepted, per second.
//!
//! Text is rendered from a font compiled into the binary (the `dejavu` crate): no system font,
//! fontconfig or freetype is needed at build or run time. In the PNGs it is laid out by
//! `glyphs.rs`, which fixes plotters' glyph placement.

use std::{path::Path, sync::Once};

use anyhow::{Result, anyhow};
use plotters::{coord::Shift, prelude::*, style::register_font};

use super::{glyphs::Glyphs, panels};
use crate::{
    event::{Reason, clients::ms_between},
    stats::{impact::Delays, refused::Gap, timeline::Timeline},
};

/// The font family name plots use; registered by [`ensure_fonts`].
pub const FONT: &str = "sans-serif";

pub const WIDTH: u32 = 960;
/// Panel heights: the drops figure (drops, clients, delays), the queue figure (queue, flow).
const DROPS_PANELS: [u32; 3] = [400, 290, 280];
const QUEUE_PANELS: [u32; 2] = [400, 330];

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

/// What the plots are drawn from.
#[derive(Clone, Copy)]
pub struct PlotData<'a> {
    pub timeline: &'a Timeline,
    /// Connect delays of the shown listeners' attempts that connected, merged.
    pub delays: &'a Delays,
    /// Listener gaps: (netns, port, gap).
    pub gaps: &'a [(u32, u16, Gap)],
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

fn err<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {e:?}")
}

pub type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Which figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    Drops,
    Queue,
}

impl Figure {
    pub const ALL: [Figure; 2] = [Figure::Drops, Figure::Queue];

    /// The file name part: `report.drops.png`.
    pub fn name(self) -> &'static str {
        match self {
            Figure::Drops => "drops",
            Figure::Queue => "queue",
        }
    }

    fn panels(self) -> &'static [u32] {
        match self {
            Figure::Drops => &DROPS_PANELS,
            Figure::Queue => &QUEUE_PANELS,
        }
    }

    pub fn size(self) -> (u32, u32) {
        (WIDTH, self.panels().iter().sum())
    }

    fn draw<DB: DrawingBackend>(
        self,
        root: &DrawingArea<DB, Shift>,
        d: &PlotData<'_>,
    ) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let mut rest = root.clone();
        let mut areas = Vec::new();
        for h in self.panels() {
            let (top, bottom) = rest.split_vertically(*h);
            areas.push(top);
            rest = bottom;
        }
        match self {
            Figure::Drops => {
                panels::drops(&areas[0], d)?;
                panels::clients(&areas[1], d)?;
                panels::delays(&areas[2], d)
            }
            Figure::Queue => {
                panels::queue(&areas[0], d)?;
                panels::flow(&areas[1], d)
            }
        }
    }

    /// As an SVG document.
    pub fn svg(self, d: &PlotData<'_>) -> Result<String> {
        ensure_fonts();
        let mut s = String::new();
        {
            let root = SVGBackend::with_string(&mut s, self.size()).into_drawing_area();
            self.draw(&root, d)
                .map_err(err(&format!("drawing the {} plot", self.name())))?;
            root.present()
                .map_err(err(&format!("rendering the {} plot", self.name())))?;
        }
        Ok(s)
    }

    /// As a PNG file.
    pub fn png(self, d: &PlotData<'_>, path: &Path) -> Result<()> {
        ensure_fonts();
        let root = Glyphs(BitMapBackend::new(path, self.size())).into_drawing_area();
        self.draw(&root, d)
            .map_err(err(&format!("drawing the {} plot", self.name())))?;
        root.present()
            .map_err(|e| anyhow!("writing {}: {e:?}", path.display()))
    }
}

/// x extent in seconds: the whole timeline, at least one second.
pub fn x_max(tl: &Timeline) -> f64 {
    (tl.len() as f64 * tl.bucket_secs()).max(1.0)
}

/// A bucket's count as a rate per second.
pub fn per_second(tl: &Timeline, n: u64) -> f64 {
    n as f64 / tl.bucket_secs()
}

/// The time step, for captions: "100 ms steps", "1.6 s steps".
pub fn step_label(tl: &Timeline) -> String {
    let ms = ms_between(0, (tl.bucket_secs() * 1e9) as u64);
    if ms < 1000.0 {
        format!("{ms:.0} ms steps")
    } else {
        format!("{:.1} s steps", ms / 1e3)
    }
}

/// Tick labels without useless decimals: "20" rather than "20.0" on a wide axis.
pub fn axis_label(v: f64, range: f64) -> String {
    if range >= 8.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A step line through per-bucket values: each bucket is a flat segment over its width.
pub fn steps(tl: &Timeline, values: impl Iterator<Item = (usize, f64)>) -> Vec<(f64, f64)> {
    let w = tl.bucket_secs();
    let mut pts = Vec::new();
    for (i, v) in values {
        let x0 = i as f64 * w;
        pts.push((x0, v));
        pts.push((x0 + w, v));
    }
    pts
}

/// The series legend, upper right.
pub fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{
        attribution::owners::Owner,
        event::{
            ListenerId, Stage,
            clients::{Outcome, OutcomeEvent, Process},
        },
    };

    const S: u64 = 1_000_000_000;

    /// A 12-second synthetic run: two listeners, SYN- and ACK-time overflows, accept activity
    /// with a one-second stall at 8080, refused SYNs during a gap at 9090, delayed connections.
    pub(crate) fn synthetic() -> (Timeline, Delays, Vec<(u32, u16, Gap)>) {
        let mut tl = Timeline::new(10 * S);
        let base = crate::event::tests::sample();
        let id = |port: u16| ListenerId {
            netns: base.netns,
            sock_ino: u64::from(port),
            lport: port,
        };
        for sec in 0..12u64 {
            for (port, n, limit) in [(8080u16, 5 + sec * 3, 128u32), (9090, sec % 4, 16)] {
                for k in 0..n {
                    let mut e = base.clone();
                    e.ts_ns = 10 * S + sec * S + k * 1000;
                    e.lport = port;
                    e.sock_ino = u64::from(port);
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
                10 * S + sec * S + S / 2,
                id(8080),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                (sec as u32 * 11).min(128),
                128,
            );
            // Accept counters every 100 ms: 8080 takes 30/s of 50/s arriving, nothing in second 6.
            for tenth in 0..10u64 {
                let at = 10 * S + sec * S + tenth * S / 10;
                let accepts = if sec == 6 { 0 } else { 3 };
                tl.add_accepts(at, id(8080), 5, accepts);
            }
            if (3..5).contains(&sec) {
                tl.add_refused(10 * S + sec * S + S / 3);
            }
        }
        let e = base.clone();
        for (ms, outcome) in [
            (1020.0, Outcome::Connected),
            (3010.0, Outcome::Connected),
            (7000.0, Outcome::GaveUp),
        ] {
            tl.add_outcome(&OutcomeEvent {
                ts_ns: 15 * S + ms as u64 * 1_000_000,
                lport: 8080,
                sock_ino: 8080,
                delay_ms: ms,
                first_drop_ns: 15 * S,
                ..crate::event::tests::outcome_of(&e, outcome)
            });
        }
        tl.extend_to(22 * S);
        let mut delays = Delays::default();
        for ms in [1003.0, 1010.0, 1020.0, 1090.0, 3005.0, 3010.0, 7004.0] {
            delays.add(ms);
        }
        let by = |pid: u32| Process {
            pid,
            comm: "nginx".into(),
        };
        let gaps = vec![
            (
                base.netns,
                9090,
                Gap {
                    closed_ns: 13 * S,
                    closed_by: by(1),
                    reopened: Some((15 * S, by(2))),
                },
            ),
            (
                base.netns,
                9090,
                Gap {
                    closed_ns: 20 * S,
                    closed_by: by(2),
                    reopened: None,
                },
            ),
        ];
        (tl, delays, gaps)
    }

    fn data<'a>(x: &'a (Timeline, Delays, Vec<(u32, u16, Gap)>)) -> PlotData<'a> {
        PlotData {
            timeline: &x.0,
            delays: &x.1,
            gaps: &x.2,
        }
    }

    #[test]
    fn svg_plots_have_text_and_lines() {
        let x = synthetic();
        let d = Figure::Drops.svg(&data(&x)).unwrap();
        assert!(d.starts_with("<svg"), "{}", &d[..40.min(d.len())]);
        for text in [
            "Listen drops per second by reason (100 ms steps)",
            "syn_accept_queue_full",
            "ack_accept_queue_full",
            "seconds since start",
            "drops / s",
            "Refused, reset and abandoned connections per second; listener gaps shaded",
            "refused (no listener)",
            "gave up",
            "listener gap (port without a listener)",
            ":9090",
            "Client connect delay after a drop: 7 connections delayed, p50 +1.1 s, max +7.0 s",
            "delay, seconds (100 ms bins)",
        ] {
            assert!(d.contains(text), "{text:?} missing");
        }
        assert!(d.contains("<polyline"));
        let q = Figure::Queue.svg(&data(&x)).unwrap();
        for text in [
            "Accept-queue occupancy vs limit",
            "127.0.0.1:8080 8080/srv8080",
            "limit 128",
            "limit 16",
            "Connections arriving (solid) vs accepted (dashed) per second (100 ms steps)",
        ] {
            assert!(q.contains(text), "{text:?} missing");
        }
        // Empty: still valid plots.
        let empty = (Timeline::new(0), Delays::default(), Vec::new());
        let d = Figure::Drops.svg(&data(&empty)).unwrap();
        assert!(
            d.contains("no drops") && d.contains("(none)") && d.contains("no delayed connection")
        );
        let q = Figure::Queue.svg(&data(&empty)).unwrap();
        assert!(q.contains("no samples") && q.contains("accept() not observed"));
    }

    #[test]
    fn delays_beyond_ten_seconds_use_one_second_bins() {
        let mut x = synthetic();
        x.1.add(31_400.0);
        let d = Figure::Drops.svg(&data(&x)).unwrap();
        assert!(d.contains("delay, seconds (1 s bins)") && d.contains("max +31.4 s"));
    }

    #[test]
    fn png_plots_are_png() {
        // LQTRACE_PLOT_DIR=DIR keeps the pictures there, to look at them.
        let keep = std::env::var_os("LQTRACE_PLOT_DIR").map(std::path::PathBuf::from);
        let dir = keep.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("lqtrace-plots-{}", std::process::id()))
        });
        std::fs::create_dir_all(&dir).unwrap();
        let x = synthetic();
        for f in Figure::ALL {
            let p = dir.join(format!("{}.png", f.name()));
            f.png(&data(&x), &p).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", f.name());
            assert!(
                bytes.len() > 5_000,
                "{}: {} bytes: empty picture?",
                f.name(),
                bytes.len()
            );
        }
        if keep.is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
