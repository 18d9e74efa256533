//! From a listener's facts to one line of advice. Pure; every rule is derived from how the
//! kernel sets and checks the accept queue's limit:
//!
//! - `listen(fd, backlog)` sets `sk_max_ack_backlog = min(backlog, net.core.somaxconn)`, with
//!   somaxconn read *at that moment* (a negative backlog counts as huge, i.e. somaxconn).
//!   So a limit below somaxconn can only come from the application's backlog, and a limit equal
//!   to somaxconn means the application asked for at least that much.
//! - The queue counts as full when `sk_ack_backlog > sk_max_ack_backlog` (`sk_acceptq_is_full`):
//!   a queue of limit N holds N+1 connections before the kernel drops.
//! - Connections wait there until the application calls accept(); a queue that is full (now, or
//!   at the drops lqtrace traced) means accept() is not called fast enough. Why, only a trace
//!   tells ([`crate::stats::verdict`]): the owners stopped accepting (a larger backlog only buys
//!   time), they accept steadily but slower than connections arrive (capacity), or a burst came
//!   while they kept pace (then, and only then, the backlog is the fix, and the trace says how
//!   large).

use crate::stats::{summary::ListenerTotals, verdict::Kind};

/// What is known about one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// Its local port (0: unknown), for the command that traces it.
    pub lport: u16,
    /// Connections waiting to be accepted now.
    pub accept_queue: u32,
    /// The effective limit (sk_max_ack_backlog).
    pub accept_queue_max: u32,
    /// net.core.somaxconn of the listener's namespace now.
    pub somaxconn: u32,
    /// The backlog passed to listen(), when lqtrace saw the call.
    pub requested_backlog: Option<i32>,
    /// Drops seen at this listener (lqtrace's count, or the socket's kernel drop counter).
    pub drops: u64,
    /// The largest accept queue lqtrace saw at this listener's drops, if it traced any.
    pub peak_accept_queue: Option<u32>,
}

/// Why the application fell behind, as far as lqtrace knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause<'a> {
    /// A snapshot (`lqtrace listeners`): nothing was traced, so the cause is not known.
    NotTraced,
    /// Traced, but accept() was not observed at the listener (no hook for it on this kernel, or
    /// its series was not kept), so no verdict.
    NoVerdict,
    /// The verdict of the trace, with the figures it rests on and the backlog that would have
    /// absorbed the run.
    Verdict {
        kind: Kind,
        detail: &'a str,
        backlog_needed: Option<u32>,
    },
}

impl<'a> Cause<'a> {
    /// The cause for a listener of a run's summary.
    pub fn of(l: &'a ListenerTotals) -> Cause<'a> {
        match l.verdict {
            Some(kind) => Cause::Verdict {
                kind,
                detail: l.verdict_detail.as_deref().unwrap_or(""),
                backlog_needed: l.backlog_needed,
            },
            None => Cause::NoVerdict,
        }
    }
}

impl Facts {
    /// A listener of a run's summary (the queue now is not known: 0).
    pub fn of(l: &ListenerTotals) -> Facts {
        Facts {
            lport: l.lport,
            accept_queue: 0,
            accept_queue_max: l.accept_queue_max,
            somaxconn: l.somaxconn,
            requested_backlog: l.requested_backlog,
            drops: l.drops,
            peak_accept_queue: Some(l.peak_accept_queue),
        }
    }
}

const APP_BACKLOG_EXAMPLES: &str =
    "e.g. Java ServerSocket backlog, Tomcat acceptCount, nginx `listen ... backlog=`";

/// Where the limit comes from, and which knob raises it.
struct Origin {
    fact: String,
    knob: String,
}

fn origin(f: &Facts) -> Origin {
    let (n, m) = (f.accept_queue_max, f.somaxconn);
    let o = |fact: String, knob: String| Origin { fact, knob };
    let raise_app = || format!("raise the application's backlog ({APP_BACKLOG_EXAMPLES})");
    let relisten =
        || "restart the application (or make it call listen() again) to apply it".to_string();
    let raise_both =
        || "raise somaxconn (sysctl -w net.core.somaxconn=...) and the backlog".to_string();
    match f.requested_backlog {
        Some(req) => {
            // A negative backlog is taken as "as large as allowed".
            let req_u = if req < 0 { u32::MAX } else { req as u32 };
            if req_u > m || (req_u == m && n == m) {
                if n == m {
                    o(
                        format!(
                            "backlog capped by net.core.somaxconn {m} (listen() asked for {req})"
                        ),
                        raise_both(),
                    )
                } else {
                    o(
                        format!(
                            "limit {n} differs from min(backlog {req}, somaxconn {m}): somaxconn was changed after listen()"
                        ),
                        relisten(),
                    )
                }
            } else if n == req_u {
                o(
                    format!("limit {n} = backlog {req} passed to listen() (somaxconn {m})"),
                    raise_app(),
                )
            } else {
                o(
                    format!(
                        "limit {n} differs from min(backlog {req}, somaxconn {m}): somaxconn was lower when listen() ran"
                    ),
                    relisten(),
                )
            }
        }
        None if n == m => o(
            format!("backlog capped by net.core.somaxconn {m}"),
            raise_both(),
        ),
        None if n < m => o(
            format!(
                "limit {n} < somaxconn {m}, so the application passed backlog {n} to listen() (limit = min(backlog, somaxconn at listen() time))"
            ),
            raise_app(),
        ),
        None => o(
            format!("limit {n} > somaxconn {m}: somaxconn was lowered after listen()"),
            format!("the limit stays {n} until the application calls listen() again"),
        ),
    }
}

/// Where the limit comes from and which knob raises it (one clause).
pub fn limit_origin(f: &Facts) -> String {
    let o = origin(f);
    format!("{}: {}", o.fact, o.knob)
}

const NOT_ACCEPTING: &str = "the application is not calling accept() fast enough";

/// How to learn the cause: trace the listener while it happens.
fn how_to_trace(f: &Facts) -> String {
    let port = if f.lport == 0 {
        "PORT".to_string()
    } else {
        f.lport.to_string()
    };
    format!(
        "trace it while it happens (`lqtrace -P {port}`, or `lqtrace run -P {port} -- LOAD`): the summary says whether it stalled, was too slow or got a burst, and the backlog that would have absorbed it"
    )
}

/// What to do, given the cause, for a queue that was or is full: one clause, without the
/// verdict's figures (for views that show them next to it, like the summary).
pub fn remedy(f: &Facts, cause: &Cause<'_>) -> String {
    remedy_with(f, cause, false)
}

fn remedy_with(f: &Facts, cause: &Cause<'_>, with_detail: bool) -> String {
    let o = origin(f);
    let detail = |d: &str| {
        if with_detail && !d.is_empty() {
            format!(" ({d})")
        } else {
            String::new()
        }
    };
    match *cause {
        Cause::NotTraced => format!(
            "{NOT_ACCEPTING}; a snapshot cannot tell why: {}; {}: {}",
            how_to_trace(f),
            o.fact,
            o.knob
        ),
        Cause::NoVerdict => format!(
            "{NOT_ACCEPTING}; why is not known: accept() was not observed at this listener (`lqtrace check` lists the hooks for it); {}: {}",
            o.fact, o.knob
        ),
        Cause::Verdict {
            kind: Kind::Stalled,
            detail: detail_text,
            ..
        } => format!(
            "{NOT_ACCEPTING}: its owners stopped accepting{}: look for what blocks the accept loop (GC pauses, a blocked event loop, every worker busy, a lock held around accept()); a larger backlog only buys time; {}",
            detail(detail_text),
            o.fact
        ),
        Cause::Verdict {
            kind: Kind::TooSlow,
            detail: detail_text,
            ..
        } => format!(
            "{NOT_ACCEPTING}: it accepts steadily but slower than connections arrive{}: add capacity (more workers or acceptor threads, faster request handling, more instances); a larger backlog only delays the drops; {}",
            detail(detail_text),
            o.fact
        ),
        Cause::Verdict {
            kind: Kind::Burst,
            detail: detail_text,
            backlog_needed,
        } => {
            let size = match backlog_needed {
                Some(b) if b > f.somaxconn => format!(
                    "raise the backlog to {b}, and net.core.somaxconn to {b} too (it is {}: sysctl -w net.core.somaxconn={b})",
                    f.somaxconn
                ),
                Some(b) => format!("raise the backlog to {b}"),
                None => "raise the backlog".to_string(),
            };
            format!(
                "{NOT_ACCEPTING} for a burst{}: {size}; {}: {}",
                detail(detail_text),
                o.fact,
                o.knob
            )
        }
    }
}

/// One line: "ok", or what is wrong and what to do.
pub fn advise(f: &Facts, cause: &Cause<'_>) -> String {
    let (q, n) = (f.accept_queue, f.accept_queue_max);
    if q > n {
        return format!(
            "queue full now ({q} > limit {n}): {}",
            remedy_with(f, cause, true)
        );
    }
    if q == n && q > 0 {
        return format!(
            "queue at its limit now ({q}/{n}, one more connection fills it): {}",
            remedy_with(f, cause, true)
        );
    }
    if let Some(p) = f.peak_accept_queue.filter(|&p| p > n) {
        return format!(
            "queue was full at the drops ({p} > limit {n}; {q}/{n} now): {}",
            remedy_with(f, cause, true)
        );
    }
    if f.drops > 0 {
        let why = match cause {
            Cause::Verdict { .. } => format!("; {}", remedy_with(f, cause, true)),
            Cause::NotTraced => format!("; to learn why, {}", how_to_trace(f)),
            Cause::NoVerdict => String::new(),
        };
        return format!(
            "queue overflowed earlier ({} drops), {q}/{n} now: {}{why}",
            f.drops,
            limit_origin(f)
        );
    }
    if q == 0 {
        return "ok".into();
    }
    format!("ok ({q}/{n} waiting to be accepted)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(q: u32, n: u32, m: u32, req: Option<i32>, drops: u64) -> Facts {
        Facts {
            lport: 8080,
            accept_queue: q,
            accept_queue_max: n,
            somaxconn: m,
            requested_backlog: req,
            drops,
            peak_accept_queue: None,
        }
    }

    #[test]
    fn full_at_the_drops_but_not_now() {
        let f = Facts {
            peak_accept_queue: Some(5),
            ..facts(0, 4, 4096, Some(4), 300)
        };
        let a = advise(&f, &Cause::NotTraced);
        assert!(
            a.starts_with("queue was full at the drops (5 > limit 4; 0/4 now)"),
            "{a}"
        );
        assert!(a.contains("not calling accept() fast enough"), "{a}");
        assert!(a.contains("limit 4 = backlog 4 passed to listen()"), "{a}");
        // Full now wins over the peak.
        assert!(
            advise(
                &Facts {
                    accept_queue: 5,
                    ..f
                },
                &Cause::NotTraced
            )
            .starts_with("queue full now")
        );
        // A peak within the limit says nothing more than the drops.
        let a = advise(
            &Facts {
                peak_accept_queue: Some(2),
                ..f
            },
            &Cause::NotTraced,
        );
        assert!(a.starts_with("queue overflowed earlier (300 drops)"), "{a}");
    }

    #[test]
    fn empty_queue_no_drops_is_ok() {
        assert_eq!(
            advise(&facts(0, 128, 4096, None, 0), &Cause::NotTraced),
            "ok"
        );
        assert_eq!(
            advise(&facts(0, 4096, 4096, Some(4096), 0), &Cause::NotTraced),
            "ok"
        );
        assert_eq!(
            advise(&facts(3, 128, 4096, None, 0), &Cause::NotTraced),
            "ok (3/128 waiting to be accepted)"
        );
    }

    #[test]
    fn known_backlog_below_somaxconn_points_at_the_application() {
        let a = advise(&facts(0, 50, 4096, Some(50), 12), &Cause::NotTraced);
        assert!(
            a.contains("limit 50 = backlog 50 passed to listen() (somaxconn 4096)"),
            "{a}"
        );
        assert!(a.contains("raise the application's backlog"), "{a}");
        assert!(
            a.contains("Tomcat acceptCount") && a.contains("nginx"),
            "{a}"
        );
        assert!(a.contains("12 drops"), "{a}");
        assert!(
            !a.contains("accept() fast enough"),
            "queue not full now: {a}"
        );
    }

    #[test]
    fn backlog_above_somaxconn_points_at_somaxconn() {
        let a = advise(&facts(0, 4096, 4096, Some(65535), 3), &Cause::NotTraced);
        assert!(a.contains("capped by net.core.somaxconn 4096"), "{a}");
        assert!(a.contains("listen() asked for 65535"), "{a}");
        assert!(a.contains("sysctl -w net.core.somaxconn="), "{a}");
        // A negative backlog means "the maximum": same advice.
        assert!(
            advise(&facts(0, 128, 128, Some(-1), 1), &Cause::NotTraced)
                .contains("capped by net.core.somaxconn 128")
        );
        // Unknown backlog, limit == somaxconn: capped (the app asked for at least that).
        let a = advise(&facts(0, 4096, 4096, None, 1), &Cause::NotTraced);
        assert!(a.contains("capped by net.core.somaxconn 4096"), "{a}");
        assert!(a.contains("raise somaxconn"), "{a}");
    }

    #[test]
    fn unknown_backlog_below_somaxconn_is_derived() {
        let a = advise(&facts(0, 3, 4096, None, 5), &Cause::NotTraced);
        assert!(
            a.contains("application passed backlog 3 to listen()"),
            "{a}"
        );
        assert!(
            a.contains("min(backlog, somaxconn at listen() time)"),
            "{a}"
        );
        assert!(a.contains("raise the application's backlog"), "{a}");
    }

    #[test]
    fn full_queue_points_at_accept() {
        // Kernel semantics: full is ack_backlog > max, so a limit of 3 holds 4.
        let a = advise(&facts(4, 3, 4096, None, 10), &Cause::NotTraced);
        assert!(a.starts_with("queue full now (4 > limit 3)"), "{a}");
        assert!(a.contains("not calling accept() fast enough"), "{a}");
        assert!(
            a.contains("a snapshot cannot tell why") && a.contains("`lqtrace -P 8080`"),
            "without a trace, how to get a verdict: {a}"
        );
        assert!(
            a.contains("raise the application's backlog"),
            "and the limit's origin: {a}"
        );
        let a = advise(&facts(3, 3, 4096, None, 0), &Cause::NotTraced);
        assert!(a.starts_with("queue at its limit now (3/3"), "{a}");
        assert!(a.contains("not calling accept() fast enough"), "{a}");
        // Limit 0 (backlog 0) with one waiting: full.
        assert!(
            advise(&facts(1, 0, 4096, Some(0), 0), &Cause::NotTraced)
                .starts_with("queue full now (1 > limit 0)")
        );
        // Limit 0 and empty: ok (q == n == 0 is not "at the limit").
        assert_eq!(
            advise(&facts(0, 0, 4096, Some(0), 0), &Cause::NotTraced),
            "ok"
        );
    }

    #[test]
    fn somaxconn_changed_after_listen() {
        // Asked for 1000, somaxconn is 4096 now but the limit is 128: somaxconn was 128 then.
        let a = advise(&facts(0, 128, 4096, Some(1000), 2), &Cause::NotTraced);
        assert!(a.contains("somaxconn was lower when listen() ran"), "{a}");
        // Unknown backlog, limit above current somaxconn.
        let a = advise(&facts(0, 4096, 128, None, 2), &Cause::NotTraced);
        assert!(a.contains("somaxconn was lowered after listen()"), "{a}");
        // Known backlog above somaxconn, limit != somaxconn.
        let a = advise(&facts(0, 4096, 128, Some(8192), 2), &Cause::NotTraced);
        assert!(a.contains("somaxconn was changed after listen()"), "{a}");
    }

    #[test]
    fn advice_is_one_line() {
        for f in [
            facts(0, 0, 0, None, 0),
            facts(u32::MAX, 0, 0, Some(i32::MIN), u64::MAX),
            facts(5, 4, 4096, Some(4), 100),
            facts(0, 4096, 4096, Some(4096), 1),
        ] {
            assert!(!advise(&f, &Cause::NotTraced).contains('\n'));
        }
        // requested == somaxconn == limit: capped by somaxconn (raising the backlog alone won't help).
        assert!(
            advise(&facts(0, 4096, 4096, Some(4096), 1), &Cause::NotTraced)
                .contains("capped by net.core.somaxconn")
        );
    }

    fn verdict(kind: Kind, needed: Option<u32>) -> Cause<'static> {
        Cause::Verdict {
            kind,
            detail: "the figures",
            backlog_needed: needed,
        }
    }

    #[test]
    fn a_verdict_replaces_the_list_of_causes() {
        let f = Facts {
            peak_accept_queue: Some(5),
            ..facts(0, 4, 4096, Some(4), 300)
        };
        let stalled = advise(&f, &verdict(Kind::Stalled, Some(40)));
        assert!(
            stalled.starts_with("queue was full at the drops (5 > limit 4; 0/4 now): the application is not calling accept() fast enough: its owners stopped accepting (the figures): look for what blocks the accept loop (GC pauses"),
            "{stalled}"
        );
        assert!(stalled.contains("a larger backlog only buys time; limit 4 = backlog 4 passed to listen() (somaxconn 4096)"), "{stalled}");
        assert!(
            !stalled.contains("raise the application's backlog"),
            "{stalled}"
        );
        assert!(!stalled.contains("trace it"), "{stalled}");

        let slow = advise(&f, &verdict(Kind::TooSlow, Some(40)));
        assert!(slow.contains("accepts steadily but slower than connections arrive (the figures): add capacity (more workers"), "{slow}");
        assert!(
            slow.contains("a larger backlog only delays the drops"),
            "{slow}"
        );

        let burst = advise(&f, &verdict(Kind::Burst, Some(40)));
        assert!(
            burst.contains("not calling accept() fast enough for a burst (the figures): raise the backlog to 40; limit 4 = backlog 4 passed to listen() (somaxconn 4096): raise the application's backlog (e.g. Java"),
            "{burst}"
        );
        assert!(!burst.contains("somaxconn to"), "{burst}");
        // Beyond somaxconn: both numbers.
        let big = advise(&f, &verdict(Kind::Burst, Some(5000)));
        assert!(
            big.contains("raise the backlog to 5000, and net.core.somaxconn to 5000 too (it is 4096: sysctl -w net.core.somaxconn=5000)"),
            "{big}"
        );
        // No estimate.
        assert!(
            advise(&f, &verdict(Kind::Burst, None))
                .contains("for a burst (the figures): raise the backlog; limit 4")
        );
        // Traced without an accept() hook.
        let none = advise(&f, &Cause::NoVerdict);
        assert!(
            none.contains("why is not known: accept() was not observed at this listener"),
            "{none}"
        );
        // After the queue emptied again, the verdict still says why.
        let earlier = advise(
            &facts(0, 4, 4096, Some(4), 3),
            &verdict(Kind::Stalled, None),
        );
        assert!(
            earlier.starts_with("queue overflowed earlier (3 drops), 0/4 now: limit 4 = backlog 4 passed to listen() (somaxconn 4096): raise the application's backlog"),
            "{earlier}"
        );
        assert!(
            earlier.contains("its owners stopped accepting"),
            "{earlier}"
        );
        let earlier = advise(&facts(0, 4, 4096, Some(4), 3), &Cause::NotTraced);
        assert!(earlier.ends_with("to learn why, trace it while it happens (`lqtrace -P 8080`, or `lqtrace run -P 8080 -- LOAD`): the summary says whether it stalled, was too slow or got a burst, and the backlog that would have absorbed it"), "{earlier}");
        for cause in [
            verdict(Kind::Stalled, None),
            verdict(Kind::Burst, Some(9)),
            Cause::NoVerdict,
        ] {
            assert!(!advise(&f, &cause).contains('\n'));
        }
    }

    #[test]
    fn facts_and_cause_of_a_summary_listener() {
        let mut e = crate::event::tests::sample();
        e.last_accept_ms_ago = None;
        let mut agg = crate::stats::aggregate::Aggregate::new(0);
        agg.add_drop(&e, true);
        let s = agg.summary(&Default::default(), &Default::default(), Default::default());
        let l = &s.listeners[0];
        let f = Facts::of(l);
        assert_eq!(
            (f.lport, f.accept_queue_max, f.peak_accept_queue, f.drops),
            (8080, 50, Some(51), 1)
        );
        assert_eq!(f.requested_backlog, Some(50));
        assert_eq!(Cause::of(l), Cause::NoVerdict, "no accept hook: no verdict");
        let mut l = l.clone();
        l.verdict = Some(Kind::Burst);
        l.verdict_detail = Some("x".into());
        l.backlog_needed = Some(60);
        assert_eq!(Cause::of(&l), verdict_with(Kind::Burst, "x", Some(60)));
    }

    fn verdict_with(kind: Kind, detail: &str, backlog_needed: Option<u32>) -> Cause<'_> {
        Cause::Verdict {
            kind,
            detail,
            backlog_needed,
        }
    }
}
