//! What a listener's drops cost its clients: how its connection attempts ended, and how long the
//! ones that got in were delayed.
//!
//! Delays are kept as a histogram fine enough for the summary's p50 (100 ms steps up to 10 s,
//! 1 s steps up to 130 s: Linux gives up a SYN after ~127 s) and for the metric's buckets, which
//! are sums of these steps; the maximum is kept exactly.

use serde::Serialize;

use crate::event::clients::{Outcome, OutcomeEvent};

const FINE_MS: u64 = 100;
const FINE_UP_TO_MS: u64 = 10_000;
const COARSE_MS: u64 = 1_000;
const LAST_MS: u64 = 130_000;
const BUCKETS: usize =
    (FINE_UP_TO_MS / FINE_MS + (LAST_MS - FINE_UP_TO_MS) / COARSE_MS) as usize + 1;

/// Connect delays (first dropped packet → handshake completed), in ms.
#[derive(Debug, Clone, PartialEq)]
pub struct Delays {
    counts: Vec<u64>,
    pub count: u64,
    pub sum_ms: f64,
    pub max_ms: f64,
}

impl Default for Delays {
    fn default() -> Delays {
        Delays {
            counts: vec![0; BUCKETS],
            count: 0,
            sum_ms: 0.0,
            max_ms: 0.0,
        }
    }
}

/// Upper bound (ms, inclusive) of bucket `i`; the last one is open.
fn upper_ms(i: usize) -> f64 {
    let fine = (FINE_UP_TO_MS / FINE_MS) as usize;
    if i < fine {
        ((i as u64 + 1) * FINE_MS) as f64
    } else if i + 1 < BUCKETS {
        (FINE_UP_TO_MS + (i - fine + 1) as u64 * COARSE_MS) as f64
    } else {
        f64::INFINITY
    }
}

fn bucket_of(ms: f64) -> usize {
    let ms = ms.max(0.0) as u64;
    let fine = FINE_UP_TO_MS / FINE_MS;
    let i = if ms < FINE_UP_TO_MS {
        ms / FINE_MS
    } else {
        fine + (ms - FINE_UP_TO_MS) / COARSE_MS
    };
    (i as usize).min(BUCKETS - 1)
}

impl Delays {
    pub fn add(&mut self, ms: f64) {
        self.counts[bucket_of(ms)] += 1;
        self.count += 1;
        self.sum_ms += ms;
        self.max_ms = self.max_ms.max(ms);
    }

    pub fn merge(&mut self, other: &Delays) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum_ms += other.sum_ms;
        self.max_ms = self.max_ms.max(other.max_ms);
    }

    /// The `q`-quantile (0..1), as the upper bound of its bucket (so within 100 ms below 10 s),
    /// never above the maximum.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(upper_ms(i).min(self.max_ms));
            }
        }
        Some(self.max_ms)
    }

    /// Delays at most `le_ms` (a bucket boundary: a multiple of 100 ms up to 10 s, of 1 s up to
    /// 130 s; other values round down to one).
    pub fn at_most(&self, le_ms: f64) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .take_while(|(i, _)| upper_ms(*i) <= le_ms)
            .map(|(_, n)| n)
            .sum()
    }
}

/// How a listener's attempts with drops ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Impact {
    /// Attempts by outcome, in `Outcome::ALL` order.
    pub outcomes: [u64; 4],
    /// Delays of the attempts that connected.
    pub delays: Delays,
}

impl Impact {
    pub fn add(&mut self, o: &OutcomeEvent) {
        let i = Outcome::ALL
            .iter()
            .position(|x| *x == o.outcome)
            .unwrap_or(3);
        self.outcomes[i] += 1;
        if o.outcome == Outcome::Connected {
            self.delays.add(o.delay_ms);
        }
    }

    pub fn get(&self, o: Outcome) -> u64 {
        Outcome::ALL
            .iter()
            .position(|x| *x == o)
            .map_or(0, |i| self.outcomes[i])
    }

    pub fn attempts(&self) -> u64 {
        self.outcomes.iter().sum()
    }

    pub fn summary(&self) -> ImpactSummary {
        ImpactSummary {
            attempts: self.attempts(),
            connected: self.get(Outcome::Connected),
            reset: self.get(Outcome::Reset),
            gave_up: self.get(Outcome::GaveUp),
            unresolved: self.get(Outcome::Unresolved),
            delay_p50_ms: self.delays.quantile_ms(0.5),
            delay_max_ms: (self.delays.count > 0).then_some(self.delays.max_ms),
        }
    }
}

/// The summary's view of a listener's impact (JSON `impact`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImpactSummary {
    /// Connection attempts that had a dropped packet.
    pub attempts: u64,
    pub connected: u64,
    pub reset: u64,
    pub gave_up: u64,
    pub unresolved: u64,
    /// Delay of the attempts that connected: median and maximum, in ms.
    pub delay_p50_ms: Option<f64>,
    pub delay_max_ms: Option<f64>,
}

impl ImpactSummary {
    /// "41 connection attempts delayed, p50 +1.0 s, max +3.0 s; 4 gave up; 2 reset".
    pub fn sentence(&self) -> String {
        let s = |n: u64| if n == 1 { "" } else { "s" };
        let mut parts = Vec::new();
        if self.connected > 0 {
            let mut p = format!(
                "{} connection attempt{} delayed",
                self.connected,
                s(self.connected)
            );
            if let (Some(p50), Some(max)) = (self.delay_p50_ms, self.delay_max_ms) {
                p.push_str(&format!(
                    ", p50 +{:.1} s, max +{:.1} s",
                    p50 / 1e3,
                    max / 1e3
                ));
            }
            parts.push(p);
        }
        if self.gave_up > 0 {
            parts.push(format!("{} gave up", self.gave_up));
        }
        if self.reset > 0 {
            parts.push(format!("{} reset", self.reset));
        }
        if self.unresolved > 0 {
            parts.push(format!("{} still waiting at the end", self.unresolved));
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_quantiles() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(99.9), 0);
        assert_eq!(bucket_of(100.0), 1);
        assert_eq!(bucket_of(9_999.0), 99);
        assert_eq!(bucket_of(10_000.0), 100);
        assert_eq!(bucket_of(1e9), BUCKETS - 1);
        assert_eq!(upper_ms(0), 100.0);
        assert_eq!(upper_ms(100), 11_000.0);
        assert!(upper_ms(BUCKETS - 1).is_infinite());
        let mut d = Delays::default();
        assert_eq!(d.quantile_ms(0.5), None);
        for ms in [1003.0, 1010.0, 1020.0, 3005.0] {
            d.add(ms);
        }
        assert_eq!(d.quantile_ms(0.5), Some(1100.0));
        assert_eq!(d.quantile_ms(1.0), Some(3005.0));
        assert_eq!(d.max_ms, 3005.0);
        assert_eq!(d.at_most(1000.0), 0);
        assert_eq!(d.at_most(1100.0), 3);
        assert_eq!(d.at_most(f64::INFINITY), 4);
    }

    #[test]
    fn the_sentence() {
        let s = ImpactSummary {
            attempts: 47,
            connected: 41,
            reset: 2,
            gave_up: 4,
            unresolved: 0,
            delay_p50_ms: Some(1000.0),
            delay_max_ms: Some(3000.0),
        };
        assert_eq!(
            s.sentence(),
            "41 connection attempts delayed, p50 +1.0 s, max +3.0 s; 4 gave up; 2 reset"
        );
    }
}
