//! Where the events come from: the kernel now, or a recording; and the environment (host or
//! recorded snapshots) that goes with it.

use std::time::Duration;

use anyhow::Result;

use super::flags::Common;
use crate::{
    commands::pipeline::{self, Sink, Stop},
    event::clock::Clock,
    host::{self, Env},
    kernel::KernelSource,
    recording::{self, Item, Parts},
};

/// Where the events come from.
pub(super) enum Input {
    /// The kernel, now.
    Live(Box<KernelSource>, Stop, Box<host::Live>),
    /// A recording (one file or its parts).
    Replay(Box<Parts>, Box<recording::Replay>),
}

impl Input {
    /// Opens the kernel (attach first: callers snapshot after) or the recording `replay`
    /// names; the clock to print times with. `owners`: the command looks up who holds a socket
    /// in other processes' fds. `sweep`: how often every network namespace is listed in full.
    pub(super) fn open(
        c: &Common,
        replay: &[std::path::PathBuf],
        owners: bool,
        sweep: Duration,
    ) -> Result<(Self, Clock)> {
        match replay {
            [] => {
                crate::kernel::preflight(owners)?;
                let stop = Stop::new(c.duration)?;
                // The output always shows sockets' namespaces and cgroups.
                let src = KernelSource::open(c.source_options(true)?)?;
                Ok((
                    Self::Live(
                        Box::new(src),
                        stop,
                        Box::new(host::Live::new(c.netns, sweep)),
                    ),
                    Clock::measure(),
                ))
            }
            _ => {
                let mut parts = Parts::open(replay)?;
                // The start-up snapshot, after the names of the cgroups it mentions.
                let mut names = Vec::new();
                let first = loop {
                    match parts.next_item() {
                        Ok(Some(Item::Snapshot(s))) => break *s,
                        Ok(Some(Item::Cgroup { id, path })) => names.push((id, path)),
                        Ok(_) => anyhow::bail!("no start-up snapshot after the recording's header"),
                        Err(e) => {
                            return Err(anyhow::Error::new(e).context("reading the recording"))
                        }
                    }
                };
                let fin_timeout = Duration::from_secs(parts.header().fin_timeout_s);
                let mut env =
                    recording::Replay::new(first, fin_timeout).with_version(parts.header().version);
                for (id, path) in names {
                    env.learn_cgroup(id, path);
                }
                let clock = parts.clock();
                Ok((Self::Replay(Box::new(parts), Box::new(env)), clock))
            }
        }
    }

    /// What a live run traces, for the line that says it has begun: `TCP in every network
    /// namespace for 10s`.
    pub(super) fn scope(c: &Common) -> String {
        let place = match c.netns {
            Some(ns) => format!("in network namespace {ns}"),
            None => "in every network namespace".to_string(),
        };
        match c.duration {
            Some(d) => format!("TCP {place} for {}", humantime::format_duration(d)),
            None => format!("TCP {place}"),
        }
    }

    /// Someone at a terminal sees at once that live tracing has begun (`watch`, `stuck`,
    /// `life`, whose output says the rest).
    pub(super) fn announce(&self, c: &Common) {
        if matches!(self, Self::Live(..)) && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("tcp-trace: tracing {}; Ctrl-C to stop", Self::scope(c));
        }
    }

    /// The environment sinks are built with.
    pub(super) fn env(&mut self) -> &mut dyn Env {
        match self {
            Self::Live(_, _, e) => e.as_mut(),
            Self::Replay(_, e) => e.as_mut(),
        }
    }

    pub(super) async fn run(self, sink: &mut dyn Sink) -> Result<()> {
        match self {
            Self::Live(mut src, mut stop, mut env) => {
                pipeline::run(&mut src, &mut stop, sink, &mut env).await?;
            }
            Self::Replay(mut parts, mut env) => {
                pipeline::replay(&mut parts, sink, &mut env)?;
                if let Some(u) = parts.unfinished() {
                    let what = recording::describe(&u, &parts.clock());
                    match parts.last_of_many() {
                        Some(last) => log::warn!("{}: {what}", last.display()),
                        None => log::warn!("{what}"),
                    }
                }
            }
        }
        Ok(())
    }
}

/// The forms a time flag accepts, for its help and its errors.
const TIME_FORMS: &str = "HH:MM or HH:MM:SS (UTC, on the recording's first day), an \
    RFC 3339 time (2026-12-07T14:30:00Z), or a duration from the recording's end (-5m) or \
    start (+90s)";

/// A moment in a recording as operators type it (see [`TIME_FORMS`]) → monotonic ns. `flag`
/// names the flag in an error; the recording's end is read only for `-DURATION`.
pub(super) fn moment(flag: &str, given: &str, parts: &Parts) -> Result<u64> {
    let clock = parts.clock();
    let start = parts.header().start.as_str();
    let bad = || anyhow::anyhow!("{flag} {given}: not a time; use {TIME_FORMS}");
    let ns_of = |wall: std::time::SystemTime| {
        let ns = wall
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        ns.saturating_sub(clock.boot_epoch_ns()) as u64
    };
    let duration = |d: &str| humantime::parse_duration(d.trim()).map_err(|_| bad());
    if let Some(before_end) = given.strip_prefix('-') {
        let back = duration(before_end)?.as_nanos() as u64;
        return Ok(parts.end_ns()?.saturating_sub(back));
    }
    if let Some(after_start) = given.strip_prefix('+') {
        let start = humantime::parse_rfc3339_weak(start).map_err(|_| bad())?;
        return Ok(ns_of(start) + duration(after_start)?.as_nanos() as u64);
    }
    let full = match time_of_day(given) {
        Some(hms) => format!("{}T{hms}Z", start.get(..10).unwrap_or("1970-01-01")),
        None => given.to_string(),
    };
    let wall = humantime::parse_rfc3339_weak(&full).map_err(|_| bad())?;
    Ok(ns_of(wall))
}

/// `H:MM`, `HH:MM` or `HH:MM:SS[.fff]` → `HH:MM:SS[.fff]`; `None` for anything else.
fn time_of_day(s: &str) -> Option<String> {
    let mut it = s.split(':');
    let (h, m, sec) = (it.next()?, it.next()?, it.next().unwrap_or("00"));
    let digits = |x: &str, n: std::ops::RangeInclusive<usize>| {
        n.contains(&x.len()) && x.bytes().all(|b| b.is_ascii_digit())
    };
    let whole = sec.split('.').next().unwrap_or_default();
    (it.next().is_none() && digits(h, 1..=2) && digits(m, 2..=2) && digits(whole, 2..=2))
        .then(|| format!("{h:0>2}:{m}:{sec}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_of_day() {
        assert_eq!(time_of_day("14:30").as_deref(), Some("14:30:00"));
        assert_eq!(time_of_day("9:05").as_deref(), Some("09:05:00"));
        assert_eq!(time_of_day("14:30:05.25").as_deref(), Some("14:30:05.25"));
        for not in [
            "14",
            "14:3",
            "14:30:5",
            "1430",
            "14:30:00:00",
            "a:bc",
            "2025-11-23",
        ] {
            assert_eq!(time_of_day(not), None, "{not}");
        }
    }
}
