//! What the parsed flags build: the event filter, the engine, the kernel programs' options,
//! what `stuck` evaluates.

use std::time::Duration;

use anyhow::Result;

use super::flags::{Common, StuckOpts};
use crate::{
    commands::stuck::Settings,
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

impl StuckOpts {
    pub(super) fn settings(&self, c: &Common, once: Option<Duration>) -> Settings {
        Settings {
            states: self.states.clone(),
            threshold: self.threshold,
            interval: self.interval,
            once,
            filter: c.filter(),
            kinds: self.kinds.clone(),
            idle_after: self.idle_after,
            thresholds: c.thresholds(),
        }
    }
}
