//! The panels of the report's two figures. The time panels share their x axis (seconds since
//! the start, one step per timeline bucket: 100 ms, coarser after a long run) and their margins,
//! so that stacked they line up: a burst of drops, the listener gap behind refused connections
//! and the stall behind a full queue show at the same x.

use std::collections::HashMap;

use plotters::{
    coord::{Shift, types::RangedCoordf64},
    prelude::*,
};

use super::plots::{
    DrawResult, FONT, PlotData, axis_label, legend, per_second, reason_color, step_label, steps,
    x_max,
};
use crate::{
    event::{ListenerId, Reason, clients::Outcome},
    stats::timeline::{ClientBucket, ListenerBucket, ListenerSeries, Timeline},
};

/// Listeners drawn in the queue and arrivals panels.
pub const TOP_LISTENERS: usize = 5;

pub const SERIES_COLORS: [RGBColor; TOP_LISTENERS] = [
    RGBColor(213, 94, 0),
    RGBColor(0, 114, 178),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(120, 120, 120),
];

const GAP_COLOR: RGBColor = RGBColor(200, 40, 40);

/// A chart with seconds on x and a value on y.
type TimeChart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// How a series of the clients panel reads a bucket.
type ClientSeries = (&'static str, RGBColor, fn(&ClientBucket) -> u64);

/// A chart from 0 to `x_hi` and 0 to `y_max`: the same margins and label areas in every panel.
fn chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: String,
    x_hi: f64,
    y_max: f64,
) -> Result<TimeChart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_hi, 0.0..y_max)
}

/// The mesh of every panel: the axis titles, tick labels as short as the range allows, the same
/// fonts and light grid. `whole`: the y axis counts whole connections, so a short one gets
/// integer ticks.
fn mesh<DB: DrawingBackend>(
    chart: &mut TimeChart<'_, DB>,
    (x_desc, y_desc): (&str, &str),
    (x_hi, y_max): (f64, f64),
    whole: bool,
) -> DrawResult<DB> {
    let x_label = |v: &f64| axis_label(*v, x_hi);
    let y_label = |v: &f64| axis_label(*v, y_max);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(RGBColor(235, 235, 235));
    if whole {
        mesh.y_labels(if y_max <= 10.0 {
            y_max as usize + 1
        } else {
            10
        });
    }
    mesh.draw()
}

/// A chart over the run's time axis with its mesh drawn, the same in every time panel: seconds
/// since the start on x, `y_desc` on y (`whole`: as in [`mesh`]).
fn time_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: String,
    tl: &Timeline,
    (y_desc, y_max): (&str, f64),
    whole: bool,
) -> Result<TimeChart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = chart(area, caption, x_max(tl), y_max)?;
    mesh(
        &mut chart,
        ("seconds since start", y_desc),
        (x_max(tl), y_max),
        whole,
    )?;
    Ok(chart)
}

/// The legend's mark of a line series: a short thick stroke of its color.
fn legend_mark(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
}

/// Drops per second over time, one line per reason seen.
pub fn drops<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    d: &PlotData<'_>,
) -> DrawResult<DB> {
    let tl = d.timeline;
    let reasons: Vec<Reason> = tl
        .reasons_seen()
        .into_iter()
        .filter(|r| *r != Reason::SyncookieSent)
        .collect();
    let peak = tl
        .host()
        .iter()
        .flat_map(|b| reasons.iter().map(move |r| per_second(tl, b.get(*r))))
        .fold(0.0f64, f64::max);
    // Headroom for the legend (upper right).
    let y_max = (peak * 1.35).max(1.0);
    let caption = if reasons.is_empty() {
        "Listen drops per second by reason (no drops)".to_string()
    } else {
        format!("Listen drops per second by reason ({})", step_label(tl))
    };
    let mut chart = time_chart(area, caption, tl, ("drops / s", y_max), false)?;
    for r in &reasons {
        let color = reason_color(*r);
        let pts = steps(
            tl,
            tl.host()
                .iter()
                .enumerate()
                .map(|(i, b)| (i, per_second(tl, b.get(*r)))),
        );
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(r.as_str())
            .legend(legend_mark(color));
    }
    if !reasons.is_empty() {
        legend(&mut chart)?;
    }
    Ok(())
}

/// What the clients saw over time: SYNs refused because no listener was there, attempts reset
/// and given up (counted when their fate was known), with each listener gap as a shaded band.
pub fn clients<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    d: &PlotData<'_>,
) -> DrawResult<DB> {
    let tl = d.timeline;
    let series: [ClientSeries; 3] = [
        ("refused (no listener)", GAP_COLOR, |b| b.refused),
        ("reset", RGBColor(117, 80, 160), |b| {
            b.outcomes[index(Outcome::Reset)]
        }),
        ("gave up", RGBColor(90, 90, 90), |b| {
            b.outcomes[index(Outcome::GaveUp)]
        }),
    ];
    let shown: Vec<_> = series
        .iter()
        .filter(|(_, _, f)| tl.clients().iter().any(|b| f(b) > 0))
        .collect();
    let peak = shown
        .iter()
        .flat_map(|(_, _, f)| tl.clients().iter().map(|b| per_second(tl, f(b))))
        .fold(0.0f64, f64::max);
    let y_max = (peak * 1.35).max(1.0);
    let xm = x_max(tl);
    let start = tl.start_ns();
    let secs = |ns: u64| (ns.saturating_sub(start) as f64 / 1e9).min(xm);
    let bands: Vec<(f64, f64, u16)> = d
        .gaps
        .iter()
        .map(|(_, port, g)| {
            let end = g.reopened.as_ref().map_or(xm, |(t, _)| secs(*t));
            (secs(g.closed_ns), end, *port)
        })
        .filter(|(a, _, _)| *a < xm)
        .collect();
    let caption = if shown.is_empty() && bands.is_empty() {
        "Refused, reset and abandoned connections (none)".to_string()
    } else {
        format!(
            "Refused, reset and abandoned connections per second; listener gaps shaded ({})",
            step_label(tl)
        )
    };
    let mut chart = time_chart(area, caption, tl, ("connections / s", y_max), false)?;
    for (n, (a, b, port)) in bands.iter().enumerate() {
        // At least a pixel or two wide: a 5 ms gap must still show.
        let b = b.max(a + xm / 400.0);
        let band = chart.draw_series(std::iter::once(Rectangle::new(
            [(*a, 0.0), (b, y_max)],
            GAP_COLOR.mix(0.15).filled(),
        )))?;
        if n == 0 {
            band.label("listener gap (port without a listener)")
                .legend(|(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 18, y + 5)], GAP_COLOR.mix(0.3).filled())
                });
        }
        chart.draw_series(std::iter::once(Text::new(
            format!(":{port}"),
            (*a, y_max * 0.12),
            (FONT, 12).into_font().color(&GAP_COLOR),
        )))?;
    }
    for (label, color, f) in &shown {
        let color = *color;
        let pts = steps(
            tl,
            tl.clients()
                .iter()
                .enumerate()
                .map(|(i, b)| (i, per_second(tl, f(b)))),
        );
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(*label)
            .legend(legend_mark(color));
    }
    if !shown.is_empty() || !bands.is_empty() {
        legend(&mut chart)?;
    }
    Ok(())
}

fn index(o: Outcome) -> usize {
    Outcome::ALL.iter().position(|x| *x == o).unwrap_or(3)
}

/// The client-delay histogram: how much later than their first SYN the attempts with drops that
/// connected got in (the shown listeners' delays merged). 100 ms bins up to 10 s, 1 s bins
/// beyond (the aggregate's own resolution).
pub fn delays<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    d: &PlotData<'_>,
) -> DrawResult<DB> {
    let h = d.delays;
    let max_s = h.max_ms / 1e3;
    let fine = max_s <= 10.0;
    let step_ms = if fine { 100.0 } else { 1000.0 };
    let top_ms =
        ((h.max_ms / step_ms).floor() + 1.0).min(if fine { 100.0 } else { 130.0 }) * step_ms;
    let top_ms = top_ms.max(1000.0);
    let mut bins = Vec::new();
    let mut lo = 0.0;
    while lo < top_ms {
        let hi = lo + step_ms;
        // The last bin takes everything beyond (delays past 130 s).
        let n = if hi >= top_ms {
            h.count - h.at_most(lo)
        } else {
            h.at_most(hi) - h.at_most(lo)
        };
        bins.push((lo / 1e3, hi / 1e3, n));
        lo = hi;
    }
    let peak = bins.iter().map(|b| b.2).max().unwrap_or(0) as f64;
    let y_max = (peak * 1.3).max(1.0).ceil();
    let caption = match (h.quantile_ms(0.5), h.count) {
        (Some(p50), n) => format!(
            "Client connect delay after a drop: {n} connection{} delayed, p50 +{:.1} s, max +{:.1} s",
            if n == 1 { "" } else { "s" },
            p50 / 1e3,
            max_s
        ),
        (None, _) => "Client connect delay after a drop (no delayed connection)".to_string(),
    };
    let x_hi = top_ms / 1e3;
    let mut chart = chart(area, caption, x_hi, y_max)?;
    let x_desc = if fine {
        "delay, seconds (100 ms bins)"
    } else {
        "delay, seconds (1 s bins)"
    };
    mesh(&mut chart, (x_desc, "connections"), (x_hi, y_max), true)?;
    let color = RGBColor(0, 114, 178);
    chart.draw_series(
        bins.iter()
            .filter(|b| b.2 > 0)
            .map(|&(a, b, n)| Rectangle::new([(a, 0.0), (b, n as f64)], color.mix(0.8).filled())),
    )?;
    if let Some(p50) = h.quantile_ms(0.5) {
        let x = p50 / 1e3;
        chart.draw_series(DashedLineSeries::new(
            vec![(x, 0.0), (x, y_max)],
            6,
            4,
            RGBColor(60, 60, 60).stroke_width(1),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            "p50",
            (x + x_hi * 0.005, y_max * 0.95),
            (FONT, 12).into_font(),
        )))?;
    }
    Ok(())
}

/// The listeners drawn in the queue panel: the most drops first, those with queue samples.
pub fn queue_listeners(tl: &Timeline) -> Vec<&ListenerSeries> {
    tl.listeners_ranked()
        .into_iter()
        .filter(|l| l.buckets().any(|(_, b)| b.queue.is_some()))
        .take(TOP_LISTENERS)
        .collect()
}

/// The listeners drawn in the arrivals panel: the most drops first, those whose accept activity
/// the kernel counted.
pub fn flow_listeners(tl: &Timeline) -> Vec<&ListenerSeries> {
    tl.listeners_ranked()
        .into_iter()
        .filter(|l| l.buckets().any(|(_, b)| b.arrivals > 0 || b.accepts > 0))
        .take(TOP_LISTENERS)
        .collect()
}

/// One colour per listener across both panels: the queue panel's order, then the others.
pub fn colors(tl: &Timeline) -> HashMap<ListenerId, RGBColor> {
    let mut m = HashMap::new();
    for l in queue_listeners(tl).into_iter().chain(flow_listeners(tl)) {
        let n = m.len();
        m.entry(l.key)
            .or_insert(SERIES_COLORS[n % SERIES_COLORS.len()]);
    }
    m
}

fn listener_label(l: &ListenerSeries) -> String {
    let mut label = format!("{} {}", l.endpoint(), l.owner.as_deref().unwrap_or("?"));
    if l.netns() != 0 {
        label.push_str(&format!(" netns {}", l.netns()));
    }
    label
}

/// Samples further apart than this are not joined: the queue was not watched in between.
const HOLD_S: f64 = 1.5;

/// A listener's accept-queue samples as step lines: each sample's level held until the next
/// one (samples come twice a second and at drops, so most 100 ms buckets have none), broken
/// where samples are more than [`HOLD_S`] apart.
fn held_runs(tl: &Timeline, l: &ListenerSeries) -> Vec<Vec<(f64, f64)>> {
    let w = tl.bucket_secs();
    let hold = ((HOLD_S / w).ceil() as usize).max(1);
    let samples: Vec<(usize, f64)> = l
        .buckets()
        .filter_map(|(i, b)| b.queue.map(|q| (i, f64::from(q.max))))
        .collect();
    let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut open = false;
    for (k, &(i, v)) in samples.iter().enumerate() {
        let x = i as f64 * w;
        if !open {
            runs.push(Vec::new());
        }
        let run = runs.last_mut().expect("a run was just pushed");
        run.push((x, v));
        match samples.get(k + 1) {
            Some(&(j, _)) if j - i <= hold => {
                run.push((j as f64 * w, v));
                open = true;
            }
            _ => {
                run.push((x + w, v));
                open = false;
            }
        }
    }
    runs
}

/// Accept-queue occupancy (max per bucket) vs the limit, per listener (top 5 by drops).
pub fn queue<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    d: &PlotData<'_>,
) -> DrawResult<DB> {
    let tl = d.timeline;
    let listeners = queue_listeners(tl);
    let colors = colors(tl);
    let peak = listeners
        .iter()
        .map(|l| l.peak_queue.max(l.limit))
        .max()
        .unwrap_or(0) as f64;
    let y_max = (peak * (1.3 + 0.07 * listeners.len() as f64))
        .max(1.0)
        .ceil();
    let caption = match listeners.len() {
        0 => "Accept-queue occupancy vs limit (no samples)".to_string(),
        1 => format!("Accept-queue occupancy vs limit ({})", step_label(tl)),
        n => format!(
            "Accept-queue occupancy vs limit (top {n} listeners by drops; {})",
            step_label(tl)
        ),
    };
    let xm = x_max(tl);
    let mut chart = time_chart(
        area,
        caption,
        tl,
        ("connections in accept queue", y_max),
        true,
    )?;
    for l in &listeners {
        let color = colors[&l.key];
        let label = listener_label(l);
        let mut first = true;
        for run in held_runs(tl, l) {
            let series = chart.draw_series(LineSeries::new(run, color.stroke_width(2)))?;
            if first {
                series.label(label.clone()).legend(legend_mark(color));
                first = false;
            }
        }
        // The limit, dashed, over the whole run.
        if l.limit > 0 {
            let lim = l.limit as f64;
            chart.draw_series(DashedLineSeries::new(
                vec![(0.0, lim), (xm, lim)],
                8,
                5,
                color.mix(0.8).stroke_width(1),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("limit {}", l.limit),
                (xm * 0.005, lim + y_max * 0.045),
                (FONT, 12).into_font().color(&color),
            )))?;
        }
    }
    if !listeners.is_empty() {
        legend(&mut chart)?;
    }
    Ok(())
}

/// Connections arriving in the accept queue (solid) against those accept() took (dashed), per
/// second, per listener: a stall is a dashed line at zero under a solid one, a shortfall a
/// dashed line below the solid one, a burst a solid spike the dashed line then catches up with.
pub fn flow<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, d: &PlotData<'_>) -> DrawResult<DB> {
    let tl = d.timeline;
    let listeners = flow_listeners(tl);
    let colors = colors(tl);
    let rate = |l: &ListenerSeries, f: fn(&ListenerBucket) -> u64| {
        (0..tl.len())
            .map(|i| (i, per_second(tl, l.bucket(i).map_or(0, f))))
            .collect::<Vec<_>>()
    };
    let peak = listeners
        .iter()
        .flat_map(|l| {
            rate(l, |b| b.arrivals)
                .into_iter()
                .chain(rate(l, |b| b.accepts))
                .map(|(_, v)| v)
        })
        .fold(0.0f64, f64::max);
    let y_max = (peak * (1.3 + 0.1 * listeners.len() as f64)).max(1.0);
    let caption = if listeners.is_empty() {
        "Connections arriving vs accepted (accept() not observed)".to_string()
    } else {
        format!(
            "Connections arriving (solid) vs accepted (dashed) per second ({})",
            step_label(tl)
        )
    };
    let mut chart = time_chart(area, caption, tl, ("connections / s", y_max), false)?;
    for l in &listeners {
        let color = colors[&l.key];
        chart
            .draw_series(LineSeries::new(
                steps(tl, rate(l, |b| b.arrivals).into_iter()),
                color.stroke_width(2),
            ))?
            .label(listener_label(l))
            .legend(legend_mark(color));
        chart.draw_series(DashedLineSeries::new(
            steps(tl, rate(l, |b| b.accepts).into_iter()),
            6,
            4,
            color.stroke_width(2),
        ))?;
    }
    if !listeners.is_empty() {
        legend(&mut chart)?;
    }
    Ok(())
}
