//! `tcp-trace life`: one line per finished connection, with its whole story.

use std::io::Write;

use anyhow::Result;

use crate::{
    commands::pipeline::{Flow, Sink},
    engine::{filter::Filter, Engine},
    event::{clock::Clock, Delivery, LATE_AFTER_CLOSE_NS},
    host::Env,
    output::life::LifeWriter,
};

/// The `life` sink.
pub struct Life<W: Write> {
    engine: Engine,
    filter: Filter,
    out: LifeWriter<W>,
    latest_ns: u64,
    lives: u64,
    lost: u64,
}

impl<W: Write> Life<W> {
    /// A `life` run writing to `out`, with an engine that keeps finished lifecycles (see
    /// [`crate::engine::Engine::new`]). Connections already open when it starts are reported
    /// too, marked incomplete, with the time from when the tracer first saw them.
    pub fn new(out: W, json: bool, clock: Clock, filter: Filter, engine: Engine) -> Self {
        Self {
            engine,
            filter,
            out: LifeWriter::new(out, json, clock),
            latest_ns: 0,
            lives: 0,
            lost: 0,
        }
    }

    /// Human output: also each connection's network namespace and cgroup.
    pub fn set_wide(&mut self, wide: bool) {
        self.out.wide = wide;
    }

    fn emit(&mut self, until_ns: u64, env: &mut dyn Env) -> Result<()> {
        for l in self.engine.take_finished(until_ns) {
            if l.is_listener() {
                continue;
            }
            let t = &l.tuple;
            let place = self.engine.place(&l);
            let cgroup = env.cgroup_path(place.cgroup);
            if self.filter.matches_conn(t, l.owner.as_ref())
                && self.filter.matches_place(place.netns, cgroup)
            {
                self.out.life(&l, place, cgroup)?;
                self.lives += 1;
            }
        }
        Ok(())
    }
}

impl<W: Write> Sink for Life<W> {
    fn started(&mut self) -> Result<()> {
        Ok(self.out.start()?)
    }

    fn batch(&mut self, records: &[Delivery], env: &mut dyn Env) -> Result<Flow> {
        for r in records {
            match r {
                Delivery::Event(ev) => {
                    self.latest_ns = self.latest_ns.max(ev.ts_ns);
                    self.engine.apply(ev);
                }
                Delivery::Lost { count, .. } => {
                    self.lost += count;
                    self.engine.mark_all_incomplete();
                }
            }
        }
        // Event time stands still on a quiet host: the grace period runs on the real clock.
        let now = self.latest_ns.max(env.now());
        self.engine.tick(now);
        self.engine.take_notices();
        self.emit(now.saturating_sub(LATE_AFTER_CLOSE_NS), env)?;
        self.out.flush()?;
        Ok(Flow::Continue)
    }

    fn finish(&mut self, env: &mut dyn Env) -> Result<()> {
        self.emit(u64::MAX, env)?;
        let now = env.now();
        self.out
            .summary(self.lives, self.engine.counters.evictions, self.lost, now)?;
        Ok(self.out.flush()?)
    }
}
