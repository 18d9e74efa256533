//! Listener lifetimes per port: how many sockets listen on each (netns, port) now, and when the
//! last one closed and who closed it. A SYN refused there (nothing listened) is told how long ago
//! the port lost its listener; a listen() that re-opens a port ends the gap. Counted per port,
//! not per address: a SYN to 127.0.0.1:80 is only refused when no socket listens on port 80 on
//! that address or the wildcard, and SO_REUSEPORT groups are several sockets on one port (losing
//! one member while another listens is no gap).

use std::{collections::HashMap, net::IpAddr};

use crate::event::{
    Clock, ListenCloseEvent, ListenEvent,
    clients::{Process, RefusedEvent, ms_between},
};

#[derive(Debug, Default, Clone)]
struct PortLife {
    live: u32,
    closed: Option<(u64, Process)>,
}

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
            .and_then(|l| l.closed.as_ref());
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
