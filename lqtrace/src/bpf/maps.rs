//! The kernel maps userspace reads and writes besides the ring buffer: the attempt map the
//! outcome tracker ends attempts in, the per-listener accept counters, and the ports whose
//! refused SYNs are recorded. Each is optional: an object without the map (or a map that does
//! not convert) leaves the feature off, with a warning, instead of failing the tracer.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use lqtrace_common::{
    accepts::AcceptStats,
    clients::{AttemptKey, AttemptValue, LIVE_USER_ENDED, PortKey},
};

use crate::attribution::{accepts::AcceptSource, outcomes::AttemptMap};

/// The attempt map, and the live-attempt count the programs check before looking in it
/// (`ATTEMPTS_LIVE`: userspace owns the slot of the attempts it ended).
struct Attempts {
    map: HashMap<MapData, AttemptKey, AttemptValue>,
    live: Option<Array<MapData, u64>>,
    ended: u64,
}

impl AttemptMap for Attempts {
    fn remove(&mut self, key: &AttemptKey) -> bool {
        if self.map.remove(key).is_err() {
            return false; // not there: the kernel resolved it first
        }
        self.ended += 1;
        if let Some(live) = &mut self.live
            && let Err(e) = live.set(LIVE_USER_ENDED, self.ended, 0)
        {
            log::debug!("ATTEMPTS_LIVE: {e}");
        }
        true
    }
    fn keys(&self) -> Vec<AttemptKey> {
        self.map.keys().filter_map(Result::ok).collect()
    }
}

struct Accepts(HashMap<MapData, u64, AcceptStats>);

impl AcceptSource for Accepts {
    fn entries(&self) -> Vec<(u64, AcceptStats)> {
        self.0.iter().filter_map(Result::ok).collect()
    }
}

fn take<K: aya::Pod, V: aya::Pod>(ebpf: &mut Ebpf, name: &str) -> Option<HashMap<MapData, K, V>> {
    let map = ebpf.take_map(name)?;
    match HashMap::try_from(map) {
        Ok(m) => Some(m),
        Err(e) => {
            log::warn!("map {name}: {e}");
            None
        }
    }
}

/// The `ATTEMPTS` map (with `ATTEMPTS_LIVE`), for the outcome tracker.
pub fn attempts(ebpf: &mut Ebpf) -> Option<Box<dyn AttemptMap + Send>> {
    let map = take::<AttemptKey, AttemptValue>(ebpf, "ATTEMPTS")?;
    let live = ebpf
        .take_map("ATTEMPTS_LIVE")
        .and_then(|m| Array::try_from(m).ok());
    Some(Box::new(Attempts {
        map,
        live,
        ended: 0,
    }))
}

/// The `ACCEPT_STATS` map, for the accept poller.
pub fn accepts(ebpf: &mut Ebpf) -> Option<Box<dyn AcceptSource + Send>> {
    let m = take::<u64, AcceptStats>(ebpf, "ACCEPT_STATS")?;
    Some(Box::new(Accepts(m)))
}

/// Watch these ports for refused SYNs (`netns` 0: in every namespace).
pub fn watch_ports(ebpf: &mut Ebpf, ports: &[PortKey]) {
    let Some(map) = ebpf.map_mut("REFUSED_PORTS") else {
        return;
    };
    let Ok(mut m) = HashMap::<&mut MapData, PortKey, u8>::try_from(map) else {
        log::warn!("map REFUSED_PORTS: unexpected type");
        return;
    };
    for p in ports {
        if let Err(e) = m.insert(p, 1, 0) {
            log::warn!("watching port {} for refused SYNs: {e}", p.port);
        }
    }
}
