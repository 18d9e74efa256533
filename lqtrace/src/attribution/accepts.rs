//! Reading the kernel's per-listener accept counters (`ACCEPT_STATS`, keyed by the listener's
//! `struct sock *` address) a few times a second, and passing on what changed as one snapshot
//! event: the aggregate turns consecutive snapshots into arrivals and accepts per time step.

use std::collections::HashMap;

use lqtrace_common::accepts::AcceptStats;

use crate::event::{
    ListenerId,
    accepts::{AcceptSample, AcceptSnapshot},
};

/// Where the counters come from: the kernel map (a trait so the change detection is tested on
/// its own).
pub trait AcceptSource {
    fn entries(&self) -> Vec<(u64, AcceptStats)>;
}

#[derive(Debug, Default)]
pub struct AcceptPoller {
    /// Per map key: the listener it stood for, and its counters at the last poll.
    last: HashMap<u64, (ListenerId, u64, u64)>,
}

impl AcceptPoller {
    /// The listeners whose counters moved since the last poll (a key whose listener changed —
    /// an address reused by a new socket — counts as new).
    pub fn poll(&mut self, src: &dyn AcceptSource, now_ns: u64) -> Option<AcceptSnapshot> {
        let mut listeners = Vec::new();
        let entries = src.entries();
        let mut seen = HashMap::with_capacity(entries.len());
        for (key, s) in entries {
            let id = ListenerId {
                netns: s.netns,
                sock_ino: s.sock_ino,
                lport: s.lport,
            };
            let now = (id, s.accepts, s.arrivals);
            if self.last.get(&key) != Some(&now) {
                listeners.push(AcceptSample {
                    listener: id,
                    accepts: s.accepts,
                    arrivals: s.arrivals,
                    last_accept_ns: s.last_accept_ns,
                    wait_hist: s.wait_hist,
                });
            }
            seen.insert(key, now);
        }
        self.last = seen;
        (!listeners.is_empty()).then_some(AcceptSnapshot {
            ts_ns: now_ns,
            listeners,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    struct Fixed(RefCell<Vec<(u64, AcceptStats)>>);

    impl AcceptSource for Fixed {
        fn entries(&self) -> Vec<(u64, AcceptStats)> {
            self.0.borrow().clone()
        }
    }

    #[test]
    fn only_changes_are_passed_on() {
        let s = AcceptStats {
            accepts: 1,
            arrivals: 2,
            netns: 3,
            lport: 80,
            sock_ino: 9,
            ..Default::default()
        };
        let src = Fixed(RefCell::new(vec![(0xffff_0001, s)]));
        let mut p = AcceptPoller::default();
        let first = p.poll(&src, 10).expect("a new listener");
        assert_eq!(first.listeners[0].listener.sock_ino, 9);
        assert!(p.poll(&src, 20).is_none(), "nothing moved");
        src.0.borrow_mut()[0].1.accepts = 2;
        assert_eq!(p.poll(&src, 30).unwrap().listeners[0].accepts, 2);
    }
}
