//! `tcp-trace watch`: every event, one line (or JSON object) each, as it happens.

use std::io::Write;

use anyhow::Result;

use crate::{
    clock::Clock,
    engine::Engine,
    filter::Filter,
    halfopen::Notice,
    output::watch::{Annotated, WatchWriter},
    pipeline::{Flow, Sink},
    source::Record,
};

/// The `watch` sink: engine (for owners and time in state) → filter → writer.
pub struct Watch<W: Write> {
    engine: Engine,
    filter: Filter,
    out: WatchWriter<W>,
}

impl<W: Write> Watch<W> {
    /// A watch writing to `out`.
    pub fn new(
        out: W,
        json: bool,
        clock: Clock,
        filter: Filter,
        (max_sockets, thresholds): (usize, crate::halfopen::Thresholds),
    ) -> Self {
        Self {
            engine: Engine::new(max_sockets, false).with_thresholds(thresholds),
            filter,
            out: WatchWriter::new(out, json, clock),
        }
    }
}

impl<W: Write> Sink for Watch<W> {
    fn batch(&mut self, records: &[Record]) -> Result<Flow> {
        for r in records {
            match r {
                Record::Event(ev) => {
                    let applied = self.engine.apply(ev);
                    if !self.filter.matches(ev, applied.owner.as_ref()) {
                        continue;
                    }
                    self.out.event(&Annotated {
                        ev,
                        sock: applied.sock,
                        owner: applied.owner,
                        ns_in_old: applied.ns_in_old,
                    })?;
                }
                Record::Lost { ts_ns, count } => {
                    self.engine.mark_all_incomplete();
                    self.out.lost(*ts_ns, *count)?;
                }
            }
        }
        self.engine.tick(crate::clock::monotonic_ns());
        for n in self.engine.take_notices() {
            let (Notice::Began(ep) | Notice::Ended(ep)) = &n;
            let shown =
                self.filter
                    .matches_endpoints(&ep.tuple.saddr, ep.tuple.sport, ep.tuple.dport)
                    && self
                        .filter
                        .pid
                        .is_none_or(|p| ep.owner.is_some_and(|o| o.pid == p));
            if shown {
                self.out.half_open(ep, crate::clock::monotonic_ns())?;
            }
        }
        self.out.flush()?;
        Ok(Flow::Continue)
    }

    fn finish(&mut self) -> Result<()> {
        Ok(self.out.flush()?)
    }
}
