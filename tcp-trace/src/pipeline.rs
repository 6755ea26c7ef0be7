//! The live loop shared by every command: source → sink until a signal, `--duration` or the
//! sink itself says stop. Sinks hold the engine and the output.

use std::time::Duration;

use anyhow::Result;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::source::{KernelSource, Record};

/// What a sink wants after a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// Stop now (e.g. the reader went away).
    Stop,
}

/// Consumes batches of records.
pub trait Sink {
    /// Handles one batch (possibly empty: called at least every poll interval).
    fn batch(&mut self, records: &[Record]) -> Result<Flow>;
    /// Called once at the end, after the last batch.
    fn finish(&mut self) -> Result<()>;
}

/// Why the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// SIGINT or SIGTERM.
    Signal,
    /// `--duration` elapsed.
    Duration,
    /// The sink asked.
    Sink,
}

/// Ends the loop on SIGINT, SIGTERM or after an optional duration.
pub struct Stop {
    int: Signal,
    term: Signal,
    deadline: Option<tokio::time::Instant>,
}

impl Stop {
    /// Installs the signal handlers now (before attaching, so a Ctrl-C is never lost).
    pub fn new(duration: Option<Duration>) -> Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            deadline: duration.map(|d| tokio::time::Instant::now() + d),
        })
    }

    async fn wait(&mut self) -> Ended {
        let deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.int.recv() => Ended::Signal,
            _ = self.term.recv() => Ended::Signal,
            _ = deadline => Ended::Duration,
        }
    }
}

/// Runs until stopped; drains what is queued once more at the end, then calls `finish`.
pub async fn run(src: &mut KernelSource, stop: &mut Stop, sink: &mut dyn Sink) -> Result<Ended> {
    let mut batch = Vec::with_capacity(4096);
    let ended = loop {
        tokio::select! {
            r = src.fill(&mut batch) => r?,
            why = stop.wait() => break why,
        }
        let flow = sink.batch(&batch)?;
        batch.clear();
        if flow == Flow::Stop {
            break Ended::Sink;
        }
    };
    if ended != Ended::Sink {
        src.drain(&mut batch);
        sink.batch(&batch)?;
    }
    sink.finish()?;
    log::info!(
        "delivered {} events, lost {}, undecodable {}",
        src.delivered,
        src.lost_total(),
        src.undecodable
    );
    Ok(ended)
}
