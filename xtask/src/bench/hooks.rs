//! Step 2 of the bench: the run time of each program of one lqtrace process, from
//! `kernel.bpf_stats_enabled=1`, over traffic that reaches no listener, the no-drop connect loop,
//! nginx + wrk, and a SYN flood (the drop path). Packets and connections are the namespace's own
//! counts (`Tcp.InSegs`, `Tcp.PassiveOpens`), not the programs' run counts, so that a variant
//! with no per-packet program is measured the same way.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    Context, FLOOD_PORT, LOOP_PORT,
    load::{self, connect_loop, saturated_listener, syn_flood},
    sys::{self, Sysctl},
    tracer::{self, Tracer, prog_names, prog_stats},
};

pub struct ProgCost {
    pub name: String,
    pub kind: String,
    pub stream: tracer::ProgStat,
    pub hot: tracer::ProgStat,
    pub nginx: tracer::ProgStat,
    pub drop: tracer::ProgStat,
}

pub struct HookCost {
    pub progs: Vec<ProgCost>,
    pub round_trips: u64,
    pub stream_secs: f64,
    /// Segments received in the namespace during the ping-pong.
    pub stream_packets: u64,
    /// Connections accepted (PassiveOpens) in the connect loop and during nginx + wrk.
    pub loop_conns: u64,
    pub nginx_conns: u64,
    pub nginx_rate: f64,
    pub conn_rate: f64,
    pub drops: u64,
    pub drop_rate: f64,
}

fn stat_delta(
    a: &BTreeMap<u32, tracer::ProgStat>,
    b: &BTreeMap<u32, tracer::ProgStat>,
    id: u32,
) -> tracer::ProgStat {
    let (x, y) = (
        a.get(&id).copied().unwrap_or_default(),
        b.get(&id).copied().unwrap_or_default(),
    );
    tracer::ProgStat {
        run_time_ns: y.run_time_ns.saturating_sub(x.run_time_ns),
        run_cnt: y.run_cnt.saturating_sub(x.run_cnt),
    }
}

/// With `kernel.bpf_stats_enabled=1` (restored on return): run time and count of each program
/// of one lqtrace process, over request/response traffic on an established connection (packets
/// that reach no listener), over the connect loop (no drops) and over a SYN flood at `drop_rate`.
pub fn hook_cost(cx: &Context, drop_rate: u64) -> Result<HookCost> {
    eprintln!("bench: [3/4] per-program cost (kernel.bpf_stats_enabled=1, restored afterwards)");
    let _stats = Sysctl::set("kernel.bpf_stats_enabled", "1")?;
    let t = Tracer::start(&cx.bin, &["-d", "600s"], vec![])?;
    let names = prog_names()?;
    let s0 = prog_stats(t.pid())?;
    if s0.is_empty() {
        bail!("found no BPF program fds in /proc/{}/fdinfo", t.pid());
    }
    let began = Instant::now();
    let c0 = cx.ns.counters()?;
    let round_trips = load::ping_pong(&cx.ns, LOOP_PORT + 20, cx.run)?;
    let stream_secs = began.elapsed().as_secs_f64();
    let sm = prog_stats(t.pid())?;
    let c1 = cx.ns.counters()?;
    let hot = connect_loop(&cx.ns, LOOP_PORT, cx.cpus, cx.run)?;
    let s1 = prog_stats(t.pid())?;
    let c2 = cx.ns.counters()?;
    let nginx_rate = cx.nginx.wrk(cx.run, super::nginx::WRK_CONNECTIONS)?;
    let sn = prog_stats(t.pid())?;
    let c3 = cx.ns.counters()?;
    // The ping-pong's connection itself: one handshake's packets, a few out of tens of
    // thousands.
    let stream_packets = c1.delta(&c0).get("Tcp.InSegs");
    let loop_conns = c2.delta(&c1).get("Tcp.PassiveOpens");
    let nginx_conns = c3.delta(&c2).get("Tcp.PassiveOpens");
    let _sat = saturated_listener(&cx.ns, FLOOD_PORT + 1)?;
    let c0 = cx.ns.counters()?;
    let flood = syn_flood(&cx.ns, FLOOD_PORT + 1, Some(drop_rate), 1, cx.run)?;
    eprintln!(
        "  hot path: {} connections; drop path: {} SYNs sent at {drop_rate}/s",
        hot.connections, flood.sent
    );
    sys::sleep(Duration::from_millis(200))?;
    let drops = cx.ns.counters()?.delta(&c0).get("TcpExt.ListenDrops");
    let s2 = prog_stats(t.pid())?;
    t.stop()?;
    let progs = s0
        .keys()
        .map(|&id| {
            let (name, kind) = names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| (format!("id {id}"), "?".into()));
            ProgCost {
                name,
                kind,
                stream: stat_delta(&s0, &sm, id),
                hot: stat_delta(&sm, &s1, id),
                nginx: stat_delta(&s1, &sn, id),
                drop: stat_delta(&sn, &s2, id),
            }
        })
        .collect();
    Ok(HookCost {
        progs,
        round_trips,
        stream_secs,
        stream_packets,
        loop_conns,
        nginx_conns,
        nginx_rate,
        conn_rate: hot.rate(),
        drops,
        drop_rate: drops as f64 / flood.secs,
    })
}
