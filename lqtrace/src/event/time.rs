//! Time: the kernel stamps records with `bpf_ktime_get_ns()` (CLOCK_MONOTONIC); people read wall
//! clock. [`Clock`] converts with the offset between the two measured at start; RFC 3339
//! formatting is humantime's. Local time of day (text output) uses `localtime_r`, which honours
//! TZ; no crate is needed for that one call.

use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

/// Converts the kernel's CLOCK_MONOTONIC (bpf_ktime_get_ns) to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns, measured at start.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Clock {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real - mono,
        }
    }

    pub fn with_offset(offset_ns: i128) -> Clock {
        Clock { offset_ns }
    }

    pub fn wall(&self, mono_ns: u64) -> WallTime {
        WallTime(i128::from(mono_ns) + self.offset_ns)
    }
}

/// Wall-clock time in ns since the Unix epoch; serializes as RFC 3339 UTC with microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct WallTime(pub i128);

impl WallTime {
    pub fn now() -> WallTime {
        WallTime(clock_ns(libc::CLOCK_REALTIME))
    }

    /// `2026-11-29T01:02:03.456789Z`.
    pub fn rfc3339(self) -> String {
        let t = if self.0 >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_nanos(self.0.min(i128::from(u64::MAX)) as u64)
        } else {
            SystemTime::UNIX_EPOCH
        };
        humantime::format_rfc3339_micros(t).to_string()
    }

    /// Local time of day `HH:MM:SS.mmm`, for the text output.
    pub fn local_hms(self) -> String {
        let secs = self.0.div_euclid(1_000_000_000);
        let millis = self.0.rem_euclid(1_000_000_000) / 1_000_000;
        // Typed by localtime_r's parameter, not by naming `libc::time_t` (deprecated on musl,
        // whose time_t changes width).
        let Ok(t) = secs.try_into() else {
            return format!("{secs}.{millis:03}");
        };
        // SAFETY: a zeroed tm is a valid out parameter; localtime_r is thread-safe.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
            return format!("{secs}.{millis:03}");
        }
        format!(
            "{:02}:{:02}:{:02}.{millis:03}",
            tm.tm_hour, tm.tm_min, tm.tm_sec
        )
    }
}

impl Serialize for WallTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock of `bpf_ktime_get_ns()` and of events' `ts_ns`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// `--duration` and friends: humantime's units (`500ms`, `30s`, `5m`, `1h`, `1h30m`), and a bare
/// number means seconds (as the BCC tools take their interval).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 365.0 * 86_400.0 => {
            Duration::from_secs_f64(secs)
        }
        Ok(_) => return Err(format!("duration `{s}` out of range")),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("invalid duration `{s}` ({e}): expected e.g. 30s, 5m, 500ms"))?,
    };
    if d.is_zero() || d > Duration::from_secs(365 * 86_400) {
        return Err(format!("duration `{s}` out of range"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(WallTime(0).rfc3339(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            WallTime(1_795_914_123_456_789_000).rfc3339(),
            "2026-11-29T01:02:03.456789Z"
        );
        assert_eq!(
            WallTime(951_782_400 * 1_000_000_000).rfc3339(),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            serde_json::to_string(&WallTime(0)).unwrap(),
            "\"1970-01-01T00:00:00.000000Z\""
        );
    }

    #[test]
    fn clock_offset_applies() {
        assert_eq!(Clock::with_offset(1_000).wall(5), WallTime(1_005));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in [
            "", "s", "10x", "-1s", "0s", "0", "abc", "1000000h", "inf", "NaN",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }
}
