//! What the parsed flags build: the event filter, the engine, the kernel programs' options,
//! what `stuck` evaluates.

use std::time::Duration;

use anyhow::Result;

use super::flags::{Common, Follow, RecordArgs, StuckOpts};
use crate::{
    commands::{record::Files, stuck::Settings},
    engine::{
        filter::{Family, Filter},
        halfopen::Thresholds,
        Engine,
    },
    host::cgroup,
    kernel::Options,
};

impl Common {
    pub(super) fn filter(&self) -> Filter {
        Filter {
            port: self.port,
            sport: self.sport,
            dport: self.dport,
            addr: self.addr,
            comm: self.comm.clone(),
            pid: self.pid,
            family: match (self.ipv4, self.ipv6) {
                (true, _) => Family::V4,
                (_, true) => Family::V6,
                _ => Family::Any,
            },
            netns: self.netns,
            cgroup: self
                .cgroup
                .as_deref()
                .map(|c| cgroup::normalize(c, cgroup::mount().as_deref())),
        }
    }

    /// Kernel-side options (`place`: the output shows namespaces and cgroups); `--cgroup` must
    /// name a cgroup on this host.
    pub(super) fn source_options(&self, place: bool) -> Result<Options> {
        let cgroup = self.cgroup.as_deref().map(cgroup::target).transpose()?;
        Ok(Options {
            ringbuf_bytes: self.ringbuf_size,
            place,
            netns: self.netns,
            cgroup: cgroup.map(|t| (t.id, t.level)),
            port: self.port,
            sport: self.sport,
            dport: self.dport,
            family: match (self.ipv4, self.ipv6) {
                (true, _) => Some(tcp_trace_common::AF_INET),
                (_, true) => Some(tcp_trace_common::AF_INET6),
                _ => None,
            },
            ..Options::default()
        })
    }
}

impl Follow {
    pub(super) fn thresholds(&self) -> Thresholds {
        Thresholds {
            retransmits: self.half_open_retransmits,
            after: self.half_open_after,
        }
    }

    /// An engine with these limits and thresholds.
    pub(super) fn engine(&self, keep_finished: bool) -> Engine {
        Engine::new(self.max_sockets, keep_finished).with_thresholds(self.thresholds())
    }
}

impl StuckOpts {
    /// What to evaluate every `interval` (`once`: a single evaluation, after this settle time).
    pub(super) fn settings(
        &self,
        c: &Common,
        f: &Follow,
        interval: Duration,
        once: Option<Duration>,
    ) -> Settings {
        Settings {
            states: self.states.clone(),
            threshold: self.threshold,
            interval,
            once,
            filter: c.filter(),
            kinds: self.kinds.clone(),
            idle_after: self.idle_after,
            thresholds: f.thresholds(),
        }
    }
}

/// The smallest `--max-size`: a file holds a header and a snapshot of every socket besides its
/// events.
const MIN_FILE: u64 = 64 << 10;

impl RecordArgs {
    /// Where the recording goes, and how large each file may grow.
    pub(super) fn files(&self) -> Result<Files> {
        let max_size = self.max_size.as_u64();
        anyhow::ensure!(
            max_size == 0 || max_size >= MIN_FILE,
            "--max-size {}: too small (a file holds a snapshot of the host's sockets besides \
             its events); use at least 64KiB",
            self.max_size
        );
        anyhow::ensure!(
            max_size > 0 || self.rotate.is_none(),
            "--rotate needs a --max-size other than 0 (the size of each file)"
        );
        Ok(Files {
            path: self.output.clone(),
            max_size,
            rotate: self.rotate,
        })
    }
}
