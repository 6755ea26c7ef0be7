//! `tcp-trace watch`: every event, one line (or JSON object) each, as it happens.

use std::io::Write;

use anyhow::Result;

use crate::{
    commands::pipeline::{Flow, Sink},
    engine::{filter::Filter, halfopen::Notice, Engine},
    event::{clock::Clock, Delivery},
    host::Env,
    output::watch::{Annotated, WatchWriter},
};

/// The `watch` sink: engine (for owners and time in state) → filter → writer.
pub struct Watch<W: Write> {
    engine: Engine,
    filter: Filter,
    out: WatchWriter<W>,
}

impl<W: Write> Watch<W> {
    /// A watch writing to `out`, with its engine (which need not keep finished lifecycles).
    pub fn new(out: W, json: bool, clock: Clock, filter: Filter, engine: Engine) -> Self {
        Self {
            engine,
            filter,
            out: WatchWriter::new(out, json, clock),
        }
    }

    /// Human output: also each socket's network namespace and cgroup.
    pub fn set_wide(&mut self, wide: bool) {
        self.out.set_wide(wide);
    }
}

impl<W: Write> Sink for Watch<W> {
    fn batch(&mut self, records: &[Delivery], env: &mut dyn Env) -> Result<Flow> {
        for r in records {
            match r {
                Delivery::Event(ev) => {
                    let applied = self.engine.apply(ev);
                    if !self.filter.matches(ev, applied.owner.as_ref()) {
                        continue;
                    }
                    let place = applied.place;
                    let cgroup = env.cgroup_path(place.cgroup);
                    if !self.filter.matches_place(place.netns, cgroup) {
                        continue;
                    }
                    self.out.event(&Annotated {
                        ev,
                        sock: applied.sock,
                        owner: applied.owner,
                        ns_in_old: applied.ns_in_old,
                        place,
                        cgroup,
                    })?;
                }
                Delivery::Lost { ts_ns, count } => {
                    self.engine.mark_all_incomplete();
                    self.out.lost(*ts_ns, *count)?;
                }
            }
        }
        let now = env.now();
        self.engine.tick(now);
        for n in self.engine.take_notices() {
            let (Notice::Began(ep) | Notice::Ended(ep)) = &n;
            let cgroup = env.cgroup_path(ep.place.cgroup);
            let shown = self.filter.matches_conn(&ep.tuple, ep.owner.as_ref())
                && self.filter.matches_place(ep.place.netns, cgroup);
            if shown {
                self.out.half_open(ep, now, cgroup)?;
            }
        }
        self.out.flush()?;
        Ok(Flow::Continue)
    }

    fn finish(&mut self, _env: &mut dyn Env) -> Result<()> {
        Ok(self.out.flush()?)
    }
}
