//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) → wall-clock time, converted once
//! per event from an offset measured at start.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ns(clock: libc::clockid_t) -> u128 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut t) };
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

/// CLOCK_MONOTONIC now, in the kernel programs' time base.
pub fn monotonic_ns() -> u64 {
    now_ns(libc::CLOCK_MONOTONIC) as u64
}

/// Maps monotonic nanoseconds to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock ns since the epoch at monotonic 0.
    boot_epoch_ns: u128,
}

impl Clock {
    /// Measures the offset now: the tightest of a few realtime/monotonic/realtime samples.
    pub fn measure() -> Self {
        let mut best: Option<(u128, u128)> = None;
        for _ in 0..5 {
            let r1 = now_ns(libc::CLOCK_REALTIME);
            let m = now_ns(libc::CLOCK_MONOTONIC);
            let r2 = now_ns(libc::CLOCK_REALTIME);
            let width = r2.saturating_sub(r1);
            let offset = (r1 + width / 2).saturating_sub(m);
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, offset));
            }
        }
        Self {
            boot_epoch_ns: best.map_or(0, |(_, o)| o),
        }
    }

    /// A clock with a fixed offset (replays and tests).
    pub fn fixed(boot_epoch_ns: u128) -> Self {
        Self { boot_epoch_ns }
    }

    /// Wall-clock ns since the epoch at monotonic 0.
    pub fn boot_epoch_ns(&self) -> u128 {
        self.boot_epoch_ns
    }

    /// Wall-clock time of a monotonic timestamp.
    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = self.boot_epoch_ns + u128::from(mono_ns);
        UNIX_EPOCH + Duration::new((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32)
    }

    /// RFC 3339 UTC with nanoseconds, e.g. `2026-11-23T20:01:02.123456789Z`.
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        humantime::format_rfc3339_nanos(self.wall(mono_ns)).to_string()
    }

    /// `HH:MM:SS.mmm` (UTC) for human output.
    pub fn hms(&self, mono_ns: u64) -> String {
        let s = self.rfc3339(mono_ns);
        s.get(11..23).unwrap_or(&s).to_string()
    }
}

/// RFC 3339 formatting for a stream of nearby timestamps: the date and time of day are
/// formatted once per second, only the nanoseconds per call.
#[derive(Default)]
pub struct Rfc3339Cache {
    sec: u64,
    prefix: String,
    buf: String,
}

impl Rfc3339Cache {
    /// `mono_ns` as RFC 3339 UTC with nanoseconds, borrowed until the next call.
    pub fn format(&mut self, clock: &Clock, mono_ns: u64) -> &str {
        let wall = clock.wall(mono_ns);
        let d = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.prefix.is_empty() || d.as_secs() != self.sec {
            self.sec = d.as_secs();
            let full =
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(self.sec))
                    .to_string();
            // "YYYY-MM-DDTHH:MM:SSZ" → "YYYY-MM-DDTHH:MM:SS."
            self.prefix = full.trim_end_matches('Z').to_string();
            self.prefix.push('.');
        }
        self.buf.clear();
        self.buf.push_str(&self.prefix);
        let n = d.subsec_nanos();
        let mut digits = [b'0'; 9];
        let mut v = n;
        for i in (0..9).rev() {
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        self.buf
            .push_str(std::str::from_utf8(&digits).unwrap_or("000000000"));
        self.buf.push('Z');
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_offset_formats() {
        let c = Clock::fixed(1_700_000_000_000_000_000);
        assert_eq!(c.rfc3339(1_500_000_001), "2023-11-14T22:13:21.500000001Z");
        assert_eq!(c.hms(1_500_000_001), "22:13:21.500");
    }

    #[test]
    fn cached_formatting_matches() {
        let c = Clock::fixed(1_700_000_000_000_000_000);
        let mut cache = Rfc3339Cache::default();
        for ns in [
            1_500_000_001u64,
            1_500_000_999,
            2_000_000_000,
            2_999_999_999,
            86_400_000_000_000,
        ] {
            assert_eq!(cache.format(&c, ns), c.rfc3339(ns));
        }
    }

    #[test]
    fn measured_offset_is_now() {
        let c = Clock::measure();
        let wall = c.wall(monotonic_ns());
        let d = SystemTime::now()
            .duration_since(wall)
            .unwrap_or_else(|e| e.duration());
        assert!(d < Duration::from_millis(50), "{d:?}");
    }
}
