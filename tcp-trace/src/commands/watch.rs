//! `tcp-trace watch`: every event, one line (or JSON object) each, as it happens.

use std::io::Write;

use anyhow::Result;

use crate::{
    commands::{
        fates::Fates,
        pipeline::{Flow, Sink},
    },
    engine::{cause, filter::Filter, halfopen::Notice, Applied, Engine},
    event::{clock::Clock, Delivery, Event},
    host::Env,
    output::watch::{Annotated, WatchWriter},
    stuck::forecast,
};

/// The `watch` sink: engine (for owners and time in state) → filter → writer.
pub struct Watch<W: Write> {
    engine: Engine,
    filter: Filter,
    out: WatchWriter<W>,
    /// What the engine made of each event of the batch.
    applied: Vec<Applied>,
    fates: Fates,
}

impl<W: Write> Watch<W> {
    /// A watch writing to `out`, with its engine (which need not keep finished lifecycles).
    pub fn new(out: W, json: bool, clock: Clock, filter: Filter, mut engine: Engine) -> Self {
        engine.tell_fates();
        Self {
            engine,
            filter,
            out: WatchWriter::new(out, json, clock),
            applied: Vec::new(),
            fates: Fates::default(),
        }
    }

    /// Human output: also each socket's network namespace and cgroup.
    pub fn set_wide(&mut self, wide: bool) {
        self.out.set_wide(wide);
    }

    /// The names of the reset reasons of the kernel the events come from: the running one's
    /// ([`crate::kernel::KernelSource::reset_reasons`]) or the recording's
    /// ([`crate::recording::FileHeader::reset_reasons`]).
    pub fn set_reset_reasons(&mut self, reasons: crate::event::ResetReasons) {
        self.out.set_reset_reasons(reasons);
    }
}

impl<W: Write> Sink for Watch<W> {
    fn started(&mut self) -> Result<()> {
        Ok(self.out.start()?)
    }

    fn batch(&mut self, records: &[Delivery], env: &mut dyn Env) -> Result<Flow> {
        // The whole batch first: what explains a connection's end can follow its CLOSE (the
        // reset an abort sends), so each CLOSE line's cause is read after the batch.
        self.applied.clear();
        for r in records {
            match r {
                Delivery::Event(ev) => self.applied.push(self.engine.apply(ev)),
                Delivery::Lost { .. } => self.engine.mark_all_incomplete(),
            }
        }
        let mut applied = self.applied.iter();
        for r in records {
            match r {
                Delivery::Event(ev) => {
                    let Some(applied) = applied.next() else { break };
                    // An error reported after a disconnect has lost endpoints: its connection's.
                    let shown;
                    let ev = match applied.tuple {
                        Some(t) => {
                            shown = Event {
                                saddr: t.saddr,
                                sport: t.sport,
                                daddr: t.daddr,
                                dport: t.dport,
                                ..*ev
                            };
                            &shown
                        }
                        None => ev,
                    };
                    if !self.filter.matches(ev, applied.owner.as_ref()) {
                        continue;
                    }
                    let place = applied.place;
                    let cgroup = env.cgroup_path(place.cgroup);
                    if !self.filter.matches_place(place.netns, cgroup) {
                        continue;
                    }
                    // A timewait orphan's cause comes with its fate, on its `end` line.
                    let ended = applied.finished.and_then(|id| self.engine.ended(id));
                    self.out.event(&Annotated {
                        ev,
                        sock: applied.sock,
                        owner: applied.owner,
                        ns_in_old: applied.ns_in_old,
                        place,
                        cgroup,
                        cause: ended.and_then(cause::cause),
                    })?;
                }
                Delivery::Lost { ts_ns, count } => self.out.lost(*ts_ns, *count)?,
            }
        }
        let now = env.now();
        self.engine.tick(now);
        self.fates.check(&mut self.engine, env);
        for l in self.engine.take_decided() {
            let place = self.engine.place(&l);
            let cgroup = env.cgroup_path(place.cgroup);
            if self
                .filter
                .matches_all(&l.tuple, l.owner.as_ref(), place.netns, cgroup)
            {
                self.out.end(&l, place, cgroup)?;
            }
        }
        for n in self.engine.take_notices() {
            let (Notice::Began(ep) | Notice::Ended(ep)) = &n;
            let cgroup = env.cgroup_path(ep.place.cgroup).map(str::to_string);
            let shown = self.filter.matches_conn(&ep.tuple, ep.owner.as_ref())
                && self.filter.matches_place(ep.place.netns, cgroup.as_deref());
            if shown {
                // Only an episode under way has a forecast (and needs its namespace's sysctls).
                let ends = match ep.outcome {
                    None => forecast::half_open(ep, &env.sysctls(ep.place.netns)),
                    Some(_) => None,
                };
                self.out.half_open(ep, now, cgroup.as_deref(), ends)?;
            }
        }
        self.out.flush()?;
        Ok(Flow::Continue)
    }

    fn finish(&mut self, _env: &mut dyn Env) -> Result<()> {
        Ok(self.out.flush()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{Replay, Snapshot};
    use serde_json::Value;
    use std::time::Duration;

    /// A timewait orphan's cause is printed once, on its `end` line, even when its fate (its
    /// peer's FIN, on one host) came in the batch of its CLOSE: the CLOSE line's is null.
    #[test]
    fn a_timewait_orphan_decided_in_the_batch_of_its_close_is_told_once() {
        let t0 = 1_000_000_000;
        let batch: Vec<Delivery> = crate::testkit::active_close_in_one_batch(t0)
            .into_iter()
            .map(Delivery::Event)
            .collect();
        let snap = Snapshot {
            ts_ns: t0,
            sockets: vec![],
            holders: vec![],
        };
        let mut env = Replay::new(snap, Duration::from_secs(60));
        let mut out = Vec::new();
        let engine = Engine::new(100, false);
        let mut w = Watch::new(&mut out, true, Clock::fixed(0), Filter::default(), engine);
        env.advance(t0 + 4_000_000);
        w.batch(&batch, &mut env).unwrap();
        env.advance(t0 + 1_000_000_000);
        w.batch(&[], &mut env).unwrap();
        drop(w);
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let client: Vec<_> = lines.iter().filter(|v| v["sport"] == 40000).collect();
        let told: Vec<_> = client.iter().filter(|v| !v["cause"].is_null()).collect();
        assert_eq!(told.len(), 1, "{client:#?}");
        assert_eq!(
            (&told[0]["type"], &told[0]["cause"]),
            (&"end".into(), &"normal".into())
        );
        let close = client.iter().find(|v| v["new"] == "CLOSE").unwrap();
        assert!(close["cause"].is_null(), "{close}");
    }
}
