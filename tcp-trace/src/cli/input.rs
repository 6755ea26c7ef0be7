//! Where the events come from: the kernel now, or a recording; and the environment (host or
//! recorded snapshots) that goes with it.

use std::time::Duration;

use anyhow::{Context, Result};

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
    /// Opens the kernel (attach first: callers snapshot after) or the recording; the clock to
    /// print times with. `place`: the output shows sockets' namespaces and cgroups.
    /// `sweep`: how often every network namespace is listed in full.
    pub(super) fn open(c: &Common, place: bool, sweep: Duration) -> Result<(Self, Clock)> {
        match c.replay.as_slice() {
            [] => {
                let stop = Stop::new(c.duration)?;
                let src = KernelSource::open(c.source_options(place)?)?;
                // Someone at a terminal sees at once that tracing has begun.
                if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    let scope = match c.netns {
                        Some(ns) => format!("in network namespace {ns}"),
                        None => "in every network namespace".to_string(),
                    };
                    eprintln!("tcp-trace: tracing TCP {scope}; Ctrl-C to stop");
                }
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
                let mut parts = Parts::open(&c.replay)?;
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

/// `14:32:05` (on the recording's day, UTC) or a full RFC 3339 time → monotonic ns.
pub(super) fn at_time(s: &str, reader_start: &str, clock: &Clock) -> Result<u64> {
    let full = if s.contains('T') {
        s.to_string()
    } else {
        let day = reader_start.get(..10).unwrap_or("1970-01-01");
        format!("{day}T{s}Z")
    };
    let wall =
        humantime::parse_rfc3339_weak(&full).with_context(|| format!("--at {s}: not a time"))?;
    let ns = wall
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Ok(ns.saturating_sub(clock.boot_epoch_ns()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_times() {
        let c = Clock::fixed(1_763_856_000_000_000_000); // 2025-11-23T00:00:00Z at boot
        let start = "2025-11-23T00:00:10.5Z";
        assert_eq!(at_time("00:01:00", start, &c).unwrap(), 60_000_000_000);
        assert_eq!(
            at_time("2025-11-23T00:00:01.25Z", start, &c).unwrap(),
            1_250_000_000
        );
        assert!(at_time("noon", start, &c).is_err());
    }
}
