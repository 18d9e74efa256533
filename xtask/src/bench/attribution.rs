//! Step 3b of the bench: where the connect loop's lost rate goes. The same alternating A/B pairs
//! as step 1, with lqtrace attached minus some of its programs (`LQTRACE_SKIP_PROGRAMS`, the
//! loader's measuring aid): none (as in step 1), all of them (what lqtrace's user space, maps and
//! ring cost alone), all but each of the three programs with the most BPF time per connection in
//! step 3, and only the first of those. A program whose absence brings the ratio up is what the
//! loss is made of, dispatch included (which `bpf_stats` does not show).

use anyhow::Result;

use super::{
    Context, LOOP_PORT, alternating, connect_loop, floor, hooks::HookCost, traced_without,
};

/// A/B pairs per configuration (each half `cx.run` long).
const PAIRS: usize = 3;

pub struct Part {
    pub what: String,
    /// The programs left unattached.
    pub skip: Vec<String>,
    /// Whether lqtrace ran (false: the floor's no-op programs instead).
    pub lqtrace: bool,
    pub ratios: Vec<f64>,
}

/// The configurations, from the programs of step 3 (most BPF time per connection first).
fn parts(h: &HookCost) -> Vec<(String, Vec<String>)> {
    let mut by_cost: Vec<(&str, u64)> = h
        .progs
        .iter()
        .map(|p| (p.name.as_str(), p.hot.run_time_ns))
        .collect();
    by_cost.sort_by_key(|&(_, ns)| std::cmp::Reverse(ns));
    let all: Vec<String> = by_cost.iter().map(|(n, _)| n.to_string()).collect();
    let mut v = vec![
        ("lqtrace, every program".to_string(), Vec::new()),
        (
            "lqtrace, no program (user space, maps, ring)".to_string(),
            all.clone(),
        ),
    ];
    for (name, _) in by_cost.iter().take(3) {
        v.push((format!("lqtrace, all but `{name}`"), vec![name.to_string()]));
    }
    if let Some((top, _)) = by_cost.first() {
        let rest = all.iter().filter(|n| n != top).cloned().collect();
        v.push((format!("lqtrace, only `{top}`"), rest));
    }
    v
}

/// [`PAIRS`] alternating pairs of the connect loop: its rate run through `with` over its rate
/// run alone.
fn ratios(
    cx: &Context,
    mut with: impl FnMut(&dyn Fn() -> Result<f64>) -> Result<f64>,
) -> Result<Vec<f64>> {
    let run = || -> Result<f64> { Ok(connect_loop(&cx.ns, LOOP_PORT, cx.cpus, cx.run)?.rate()) };
    let mut ratios = Vec::new();
    for pair in 0..PAIRS {
        let (mut a, mut b) = (0.0, 0.0);
        for traced in alternating(pair, false) {
            if traced {
                b = with(&run)?;
            } else {
                a = run()?;
            }
        }
        ratios.push(b / a);
    }
    Ok(ratios)
}

pub fn attribution(cx: &Context, h: &HookCost) -> Result<Vec<Part>> {
    eprintln!(
        "bench: [3b/4] where the connect loop's lost rate goes ({PAIRS} A/B pairs per configuration)"
    );
    let mut out = Vec::new();
    for (what, skip) in parts(h) {
        let names: Vec<&str> = skip.iter().map(String::as_str).collect();
        let ratios = ratios(cx, |run| traced_without(cx, &names, run))?;
        eprintln!("  {what}: ratios {ratios:.3?}");
        out.push(Part {
            what,
            skip,
            lqtrace: true,
            ratios,
        });
    }
    let floors = [
        (
            "no-op `cgroup_skb` ingress at the root cgroup".to_string(),
            &[][..],
        ),
        (
            format!(
                "no-op programs at the cgroup variant's hook points (`cgroup_skb` ingress, raw tracepoints {})",
                floor::RAW_TRACEPOINTS.join(", ")
            ),
            &floor::RAW_TRACEPOINTS[..],
        ),
    ];
    for (what, tracepoints) in floors {
        let ratios = ratios(cx, |run| {
            let _attached = floor::attach(tracepoints)?;
            run()
        })?;
        eprintln!("  {what}: ratios {ratios:.3?}");
        out.push(Part {
            what,
            skip: Vec::new(),
            lqtrace: false,
            ratios,
        });
    }
    Ok(out)
}
