//! Listener lifetimes per port: how many sockets listen on each (netns, port) now, and when the
//! last one closed and who closed it. A SYN refused there (nothing listened) is told how long ago
//! the port lost its listener; a listen() that re-opens a port ends the gap. Counted per port,
//! not per address: a SYN to 127.0.0.1:80 is only refused when no socket listens on port 80 on
//! that address or the wildcard, and SO_REUSEPORT groups are several sockets on one port (losing
//! one member while another listens is no gap).
//!
//! The listener's state tracepoint and its presence in the listening hash are not one step, in
//! either direction: on close, `tcp_set_state()` unhashes the socket before
//! `inet_sk_state_store()` fires (a refusal can be read before the close record: the enricher
//! holds it for that record), and on listen, `inet_csk_listen_start()` fires
//! `inet_sk_state_store(sk, TCP_LISTEN)` before `get_port()` and `hash()` (a SYN that arrives in
//! between is refused, and its record is read after the listen record that ends the gap; seen
//! in CI on 2026-12-08, the 5.10 guest: a refusal 504.6 ms after the close, next to the listen
//! that re-opened the port). A refusal within [`HASH_WINDOW_NS`] after the listen that ended a
//! gap belongs to that gap.

use std::{collections::HashMap, net::IpAddr};

use crate::event::{
    Clock, ListenCloseEvent, ListenEvent,
    clients::{Process, RefusedEvent, ms_between},
};

#[derive(Debug, Default, Clone)]
struct PortLife {
    live: u32,
    /// The port's current gap: when and by whom its last listener closed.
    closed: Option<(u64, Process)>,
    /// The gap the last listen() ended, and that listen record's time.
    ended: Option<((u64, Process), u64)>,
}

impl PortLife {
    /// The close a SYN refused at `ts_ns` answers for: the current gap's, or the gap that a
    /// listen just ended (the new socket was not hashed yet when the SYN came).
    fn gap_at(&self, ts_ns: u64) -> Option<&(u64, Process)> {
        self.closed.as_ref().or_else(|| {
            let (closed, listened) = self.ended.as_ref()?;
            (ts_ns >= closed.0 && ts_ns.saturating_sub(*listened) <= HASH_WINDOW_NS)
                .then_some(closed)
        })
    }
}

/// How long after the listen record that ended a gap a refusal at the port is taken as from
/// before the new socket was hashed (the kernel's window is one `get_port()` and one `hash()`
/// call; this leaves room for a slow or emulated machine, and stays far below the gaps
/// restarts make).
const HASH_WINDOW_NS: u64 = 100_000_000;

#[derive(Debug, Default)]
pub struct Ports {
    by_port: HashMap<(u32, u16), PortLife>,
}

/// Ports followed at most (a port that churns many listeners keeps one entry).
const MAX_PORTS: usize = 1 << 16;

impl Ports {
    /// Listeners that existed when lqtrace started (one call per socket).
    pub fn existing(&mut self, netns: u32, port: u16) {
        if port != 0 {
            self.by_port.entry((netns, port)).or_default().live += 1;
        }
    }

    /// A socket started listening: completes the event with the gap it ends, if any.
    pub fn listened(&mut self, e: &mut ListenEvent) {
        if e.lport == 0 || self.by_port.len() >= MAX_PORTS {
            return;
        }
        let life = self.by_port.entry((e.netns, e.lport)).or_default();
        if life.live == 0 {
            e.reopens = life.closed.take();
            life.ended = e.reopens.clone().map(|c| (c, e.ts_ns));
        }
        life.live += 1;
    }

    /// A listening socket closed: completes the event with whether the port is now without a
    /// listener.
    pub fn closed(&mut self, e: &mut ListenCloseEvent) {
        if e.lport == 0 || self.by_port.len() >= MAX_PORTS {
            return;
        }
        let life = self.by_port.entry((e.netns, e.lport)).or_default();
        life.live = life.live.saturating_sub(1);
        e.last = life.live == 0;
        if e.last {
            life.closed = Some((e.ts_ns, e.by.clone()));
        }
    }

    /// Whether a socket listens on the port, as far as the listen and close records said so far.
    /// A SYN can be refused before the close record of the last listener is read: the kernel
    /// unhashes the socket in `tcp_set_state()` before `inet_sk_state_store()` fires the
    /// tracepoint.
    pub fn listening(&self, netns: u32, port: u16) -> bool {
        self.by_port.get(&(netns, port)).is_some_and(|l| l.live > 0)
    }

    /// The refused event for a SYN to `laddr:lport` in `netns` that nothing listened on.
    #[allow(clippy::too_many_arguments)]
    pub fn refused(
        &self,
        netns: u32,
        laddr: IpAddr,
        lport: u16,
        raddr: IpAddr,
        rport: u16,
        ts_ns: u64,
        clock: &Clock,
    ) -> RefusedEvent {
        let closed = self
            .by_port
            .get(&(netns, lport))
            .and_then(|l| l.gap_at(ts_ns));
        RefusedEvent {
            kind: (),
            ts: clock.wall(ts_ns),
            ts_ns,
            netns,
            laddr,
            lport,
            raddr,
            rport,
            listener_closed_ms_ago: closed.map(|(at, _)| ms_between(*at, ts_ns)),
            closed_by: closed.map(|(_, by)| by.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn by(pid: u32) -> Process {
        Process {
            pid,
            comm: "srv".into(),
        }
    }

    fn listen(port: u16, pid: u32) -> ListenEvent {
        ListenEvent {
            netns: 1,
            sock_ino: 7,
            ts_ns: 0,
            requested_backlog: None,
            laddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            lport: port,
            by: by(pid),
            reopens: None,
        }
    }

    fn close(port: u16, ts_ns: u64, pid: u32) -> ListenCloseEvent {
        ListenCloseEvent {
            netns: 1,
            sock_ino: 7,
            ts_ns,
            laddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            lport: port,
            by: by(pid),
            last: false,
        }
    }

    #[test]
    fn a_gap_from_the_last_close_to_the_next_listen() {
        let mut p = Ports::default();
        let clock = Clock::with_offset(0);
        p.listened(&mut listen(80, 1));
        let mut c = close(80, 1_000_000_000, 1);
        p.closed(&mut c);
        assert!(c.last);
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let r = p.refused(1, lo, 80, lo, 5000, 1_250_000_000, &clock);
        assert_eq!(r.listener_closed_ms_ago, Some(250.0));
        assert_eq!(r.closed_by, Some(by(1)));
        let mut l = listen(80, 2);
        p.listened(&mut l);
        assert_eq!(l.reopens, Some((1_000_000_000, by(1))));
        // A port never seen closing: nothing to say.
        let r = p.refused(1, lo, 81, lo, 5000, 1, &clock);
        assert_eq!((r.listener_closed_ms_ago, r.closed_by), (None, None));
    }

    /// A SYN refused between the listen record that re-opened the port and the hashing of the
    /// new socket belongs to the gap; one long after that listen (a listener bound to another
    /// address of the port) does not, nor one before the gap's close.
    #[test]
    fn a_refusal_right_after_the_reopening_listen_is_in_the_gap() {
        let mut p = Ports::default();
        let clock = Clock::with_offset(0);
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let ms = 1_000_000;
        p.listened(&mut listen(80, 1));
        p.closed(&mut close(80, 1_000 * ms, 1));
        let mut l = listen(80, 2);
        l.ts_ns = 1_500 * ms;
        p.listened(&mut l);
        assert!(p.listening(1, 80));
        let r = p.refused(1, lo, 80, lo, 5000, 1_504 * ms, &clock);
        assert_eq!(r.listener_closed_ms_ago, Some(504.0));
        assert_eq!(r.closed_by, Some(by(1)));
        let r = p.refused(1, lo, 80, lo, 5000, 1_500 * ms + HASH_WINDOW_NS + 1, &clock);
        assert_eq!((r.listener_closed_ms_ago, r.closed_by), (None, None));
        let r = p.refused(1, lo, 80, lo, 5000, 999 * ms, &clock);
        assert_eq!((r.listener_closed_ms_ago, r.closed_by), (None, None));
    }

    #[test]
    fn a_reuseport_group_losing_one_member_is_no_gap() {
        let mut p = Ports::default();
        p.existing(1, 80);
        p.listened(&mut listen(80, 2));
        let mut c = close(80, 5, 2);
        p.closed(&mut c);
        assert!(!c.last, "another socket still listens on the port");
        let mut c = close(80, 6, 1);
        p.closed(&mut c);
        assert!(c.last);
    }
}
