//! The `connrate:VARIANT` check: what lqtrace costs the connection rate inside a guest, with one
//! hook variant forced (`--hooks fentry`, `kprobe` or `cgroup`). The development host can only
//! measure the cgroup variant (no kprobes, fentry refused), while most production kernels get
//! fentry or kprobe; `cargo xtask bench --kernel K` boots K and runs this check once per variant.
//!
//! As `cargo xtask bench` does on the host: alternating A/B pairs of the kit's connect loop
//! (`lqtrace_testkit::load`, one client thread per CPU), without lqtrace and with a fresh
//! lqtrace attached (started before its half, ended with SIGINT after it), without first in even
//! pairs. Under TCG the absolute rates mean little; the per-pair ratio is the figure. PASS with
//! the figures as `key=value` details (read by xtask/src/bench/guest.rs); SKIP when the kernel
//! has no such variant (lqtrace says "no usable hook").

use std::{
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use lqtrace_testkit::{
    load::connect_loop,
    ndjson, sockets,
    tracer::{START_TIMEOUT, STOP_TIMEOUT, Tracer},
};

use crate::{Verdict, proc};

/// A/B pairs, and the length of each half.
pub const PAIRS: usize = 5;
pub const HALF: Duration = Duration::from_secs(3);
const PORT: u16 = 7100;
static NEVER: AtomicBool = AtomicBool::new(false);

/// The median of `v` (sorted in place; `v` is not empty).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One half with lqtrace (`argv`) attached: its connection rate, or why not (`Err(Ok(..))`:
/// SKIP, the variant is missing; `Err(Err(..))`: FAIL, also when its summary says another
/// variant than `variant` served the SYN and ACK stages).
fn traced(
    tag: &str,
    argv: &[String],
    env: &[(String, String)],
    variant: &str,
    clients: usize,
) -> Result<f64, Result<String, String>> {
    let cmd = proc::command(&argv[0], &argv[1..], env);
    let mut t = match Tracer::start(cmd, proc::echoed(tag), START_TIMEOUT) {
        Ok(t) => t,
        Err(mut e) => {
            let stderr = e.stderr();
            if stderr.iter().any(|l| l.contains("no usable hook")) {
                return Err(Ok(format!(
                    "this kernel has no usable variant for {argv:?}: {}",
                    proc::last_line(&stderr, 200)
                )));
            }
            return Err(Err(proc::shorten(&e.message, 400)));
        }
    };
    let run = connect_loop(PORT, clients, HALF, &NEVER).map_err(|e| Err(e.to_string()))?;
    t.stop_ok(STOP_TIMEOUT)
        .map_err(|e| Err(proc::shorten(&e, 400)))?;
    let (objs, _) = ndjson::objects(&t.proc.stdout);
    let hooks = ndjson::summary(&objs).map(|s| s["hooks"].clone());
    let served = |stage: &str| hooks.as_ref().and_then(|h| h[stage].as_str()) == Some(variant);
    if !served("syn") || !served("ack") {
        return Err(Err(format!(
            "forced {variant}, but the summary's hooks are {hooks:?}"
        )));
    }
    Ok(run.rate())
}

/// Runs the pairs with `argv` = the lqtrace command (`--hooks VARIANT` included).
pub fn run(
    tag: &str,
    argv: &[String],
    env: &[(String, String)],
    variant: &str,
    timeout: Duration,
) -> Verdict {
    let deadline = Instant::now() + timeout;
    let clients = sockets::ncpus();
    if let Err(e) = connect_loop(PORT, clients, Duration::from_millis(500), &NEVER) {
        return Verdict::fail(format!("warm-up connect loop: {e}"));
    }
    let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..PAIRS {
        if Instant::now() > deadline {
            return Verdict::fail(format!("only {pair} of {PAIRS} pairs within the timeout"));
        }
        let plain = || {
            connect_loop(PORT, clients, HALF, &NEVER)
                .map(|r| r.rate())
                .map_err(|e| e.to_string())
        };
        let (wo, w) = if pair % 2 == 0 {
            (plain(), traced(tag, argv, env, variant, clients))
        } else {
            let w = traced(tag, argv, env, variant, clients);
            (plain(), w)
        };
        let wo = match wo {
            Ok(r) => r,
            Err(e) => return Verdict::fail(format!("connect loop without lqtrace: {e}")),
        };
        let w = match w {
            Ok(r) => r,
            Err(Ok(skip)) => return Verdict::skip(skip),
            Err(Err(e)) => return Verdict::fail(format!("with lqtrace: {e}")),
        };
        crate::out::line(&format!(
            "{tag}|o pair {}: without {wo:.0}/s, with {w:.0}/s, ratio {:.3}",
            pair + 1,
            w / wo
        ));
        without.push(wo);
        with.push(w);
        ratios.push(w / wo);
    }
    let list = ratios
        .iter()
        .map(|r| format!("{r:.3}"))
        .collect::<Vec<_>>()
        .join(",");
    let (min, max) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &r| (a.min(r), b.max(r)));
    Verdict::pass(format!(
        "variant={variant} pairs={PAIRS} clients={clients} half={}s without={:.0} with={:.0} ratio={:.3} ratio_min={min:.3} ratio_max={max:.3} ratios={list}",
        HALF.as_secs(),
        median(&mut without),
        median(&mut with),
        median(&mut ratios)
    ))
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
