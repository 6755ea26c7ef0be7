//! `tcp-trace watch`: every event, one line (or JSON object) each, as it happens.

use std::io::Write;

use anyhow::Result;

use crate::{
    clock::Clock,
    engine::Engine,
    filter::Filter,
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
    pub fn new(out: W, json: bool, clock: Clock, filter: Filter, max_sockets: usize) -> Self {
        Self {
            engine: Engine::new(max_sockets, false),
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
        self.out.flush()?;
        Ok(Flow::Continue)
    }

    fn finish(&mut self) -> Result<()> {
        Ok(self.out.flush()?)
    }
}
