//! Step 3b of the bench: where the connect loop's lost rate goes. The same alternating A/B pairs
//! as step 1, with lqtrace attached minus some of its programs (`LQTRACE_SKIP_PROGRAMS`, the
//! loader's measuring aid): none (as in step 1), all of them (what lqtrace's user space, maps and
//! ring cost alone), all but each of the three programs with the most BPF time per connection in
//! step 3, and only the first of those. A program whose absence brings the ratio up is what the
//! loss is made of, dispatch included (which `bpf_stats` does not show).

use anyhow::Result;

use super::{Context, LOOP_PORT, alternating, connect_loop, hooks::HookCost, traced_without};

/// A/B pairs per configuration (each half `cx.run` long).
const PAIRS: usize = 3;

pub struct Part {
    pub what: String,
    /// The programs left unattached.
    pub skip: Vec<String>,
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
        ("every program".to_string(), Vec::new()),
        (
            "no program (user space, maps, ring)".to_string(),
            all.clone(),
        ),
    ];
    for (name, _) in by_cost.iter().take(3) {
        v.push((format!("all but `{name}`"), vec![name.to_string()]));
    }
    if let Some((top, _)) = by_cost.first() {
        let rest = all.iter().filter(|n| n != top).cloned().collect();
        v.push((format!("only `{top}`"), rest));
    }
    v
}

pub fn attribution(cx: &Context, h: &HookCost) -> Result<Vec<Part>> {
    eprintln!(
        "bench: [3b/4] where the connect loop's lost rate goes ({PAIRS} A/B pairs per configuration)"
    );
    let clients = cx.cpus;
    let mut out = Vec::new();
    for (what, skip) in parts(h) {
        let names: Vec<&str> = skip.iter().map(String::as_str).collect();
        let run = || Ok(connect_loop(&cx.ns, LOOP_PORT, clients, cx.run)?.rate());
        let mut ratios = Vec::new();
        for pair in 0..PAIRS {
            let (mut a, mut b) = (0.0, 0.0);
            for with in alternating(pair, false) {
                if with {
                    b = traced_without(cx, &names, run)?;
                } else {
                    a = run()?;
                }
            }
            ratios.push(b / a);
        }
        eprintln!("  {what}: ratios {ratios:.3?}");
        out.push(Part { what, skip, ratios });
    }
    Ok(out)
}
