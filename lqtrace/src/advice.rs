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
//!   at the drops lqtrace traced) means accept() is not called fast enough. Raising the limit
//!   only buys time against bursts.

/// What is known about one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
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

const APP_BACKLOG_EXAMPLES: &str =
    "e.g. Java ServerSocket backlog, Tomcat acceptCount, nginx `listen ... backlog=`";

/// Where the limit comes from and which knob raises it (one clause).
pub fn limit_origin(f: &Facts) -> String {
    let (n, m) = (f.accept_queue_max, f.somaxconn);
    match f.requested_backlog {
        Some(req) => {
            // A negative backlog is taken as "as large as allowed".
            let req_u = if req < 0 { u32::MAX } else { req as u32 };
            if req_u > m || (req_u == m && n == m) {
                if n == m {
                    format!(
                        "backlog capped by net.core.somaxconn {m} (listen() asked for {req}): raise somaxconn (sysctl -w net.core.somaxconn=...) and the backlog"
                    )
                } else {
                    format!(
                        "limit {n} differs from min(backlog {req}, somaxconn {m}): somaxconn was changed after listen(); restart the application (or make it call listen() again) to apply it"
                    )
                }
            } else if n == req_u {
                format!(
                    "limit {n} = backlog {req} passed to listen() (somaxconn {m}): raise the application's backlog ({APP_BACKLOG_EXAMPLES})"
                )
            } else {
                format!(
                    "limit {n} differs from min(backlog {req}, somaxconn {m}): somaxconn was lower when listen() ran; restart the application (or make it call listen() again) to apply it"
                )
            }
        }
        None if n == m => format!(
            "backlog capped by net.core.somaxconn {m}: raise somaxconn (sysctl -w net.core.somaxconn=...) and the backlog"
        ),
        None if n < m => format!(
            "limit {n} < somaxconn {m}, so the application passed backlog {n} to listen() (limit = min(backlog, somaxconn at listen() time)): raise the application's backlog ({APP_BACKLOG_EXAMPLES})"
        ),
        None => format!(
            "limit {n} > somaxconn {m}: somaxconn was lowered after listen(); the limit stays {n} until the application calls listen() again"
        ),
    }
}

/// One line: "ok", or what is wrong and what to do.
pub fn advise(f: &Facts) -> String {
    let (q, n) = (f.accept_queue, f.accept_queue_max);
    let not_accepting = "the application is not calling accept() fast enough (CPU-starved, blocked workers, too few acceptor threads)";
    if q > n {
        return format!(
            "queue full now ({q} > limit {n}): {not_accepting}; {}",
            limit_origin(f)
        );
    }
    if q == n && q > 0 {
        return format!(
            "queue at its limit now ({q}/{n}, one more connection fills it): {not_accepting}; {}",
            limit_origin(f)
        );
    }
    if let Some(p) = f.peak_accept_queue.filter(|&p| p > n) {
        return format!(
            "queue was full at the drops ({p} > limit {n}; {q}/{n} now): {not_accepting}; {}",
            limit_origin(f)
        );
    }
    if f.drops > 0 {
        return format!(
            "queue overflowed earlier ({} drops), {q}/{n} now: {}",
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
        let a = advise(&f);
        assert!(
            a.starts_with("queue was full at the drops (5 > limit 4; 0/4 now)"),
            "{a}"
        );
        assert!(a.contains("not calling accept() fast enough"), "{a}");
        assert!(a.contains("limit 4 = backlog 4 passed to listen()"), "{a}");
        // Full now wins over the peak.
        assert!(
            advise(&Facts {
                accept_queue: 5,
                ..f
            })
            .starts_with("queue full now")
        );
        // A peak within the limit says nothing more than the drops.
        let a = advise(&Facts {
            peak_accept_queue: Some(2),
            ..f
        });
        assert!(a.starts_with("queue overflowed earlier (300 drops)"), "{a}");
    }

    #[test]
    fn empty_queue_no_drops_is_ok() {
        assert_eq!(advise(&facts(0, 128, 4096, None, 0)), "ok");
        assert_eq!(advise(&facts(0, 4096, 4096, Some(4096), 0)), "ok");
        assert_eq!(
            advise(&facts(3, 128, 4096, None, 0)),
            "ok (3/128 waiting to be accepted)"
        );
    }

    #[test]
    fn known_backlog_below_somaxconn_points_at_the_application() {
        let a = advise(&facts(0, 50, 4096, Some(50), 12));
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
        let a = advise(&facts(0, 4096, 4096, Some(65535), 3));
        assert!(a.contains("capped by net.core.somaxconn 4096"), "{a}");
        assert!(a.contains("listen() asked for 65535"), "{a}");
        assert!(a.contains("sysctl -w net.core.somaxconn="), "{a}");
        // A negative backlog means "the maximum": same advice.
        assert!(
            advise(&facts(0, 128, 128, Some(-1), 1)).contains("capped by net.core.somaxconn 128")
        );
        // Unknown backlog, limit == somaxconn: capped (the app asked for at least that).
        let a = advise(&facts(0, 4096, 4096, None, 1));
        assert!(a.contains("capped by net.core.somaxconn 4096"), "{a}");
        assert!(a.contains("raise somaxconn"), "{a}");
    }

    #[test]
    fn unknown_backlog_below_somaxconn_is_derived() {
        let a = advise(&facts(0, 3, 4096, None, 5));
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
        let a = advise(&facts(4, 3, 4096, None, 10));
        assert!(a.starts_with("queue full now (4 > limit 3)"), "{a}");
        assert!(a.contains("not calling accept() fast enough"), "{a}");
        assert!(a.contains("CPU-starved"), "{a}");
        assert!(
            a.contains("raise the application's backlog"),
            "and the limit's origin: {a}"
        );
        let a = advise(&facts(3, 3, 4096, None, 0));
        assert!(a.starts_with("queue at its limit now (3/3"), "{a}");
        assert!(a.contains("not calling accept() fast enough"), "{a}");
        // Limit 0 (backlog 0) with one waiting: full.
        assert!(advise(&facts(1, 0, 4096, Some(0), 0)).starts_with("queue full now (1 > limit 0)"));
        // Limit 0 and empty: ok (q == n == 0 is not "at the limit").
        assert_eq!(advise(&facts(0, 0, 4096, Some(0), 0)), "ok");
    }

    #[test]
    fn somaxconn_changed_after_listen() {
        // Asked for 1000, somaxconn is 4096 now but the limit is 128: somaxconn was 128 then.
        let a = advise(&facts(0, 128, 4096, Some(1000), 2));
        assert!(a.contains("somaxconn was lower when listen() ran"), "{a}");
        // Unknown backlog, limit above current somaxconn.
        let a = advise(&facts(0, 4096, 128, None, 2));
        assert!(a.contains("somaxconn was lowered after listen()"), "{a}");
        // Known backlog above somaxconn, limit != somaxconn.
        let a = advise(&facts(0, 4096, 128, Some(8192), 2));
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
            assert!(!advise(&f).contains('\n'));
        }
        // requested == somaxconn == limit: capped by somaxconn (raising the backlog alone won't help).
        assert!(
            advise(&facts(0, 4096, 4096, Some(4096), 1)).contains("capped by net.core.somaxconn")
        );
    }
}
