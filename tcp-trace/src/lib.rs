//! tcp-trace: eBPF TCP lifecycle tracing.
//!
//! The modules in the order an event travels; each uses only those above it:
//!
//! - [`event`]: the model (an [`event::Event`], states, errnos, task names, endpoints) and its
//!   codec, the kernel's record layout (from `tcp-trace-common`) ↔ events.
//! - [`kernel`]: privileges, tracepoint formats and BTF checked against this build, the
//!   programs loaded and attached, the ring buffer drained into [`event::Delivery`]s.
//! - [`engine`]: pure; folds events into per-socket lifecycles, tracks half-open episodes,
//!   filters what a command shows.
//! - [`host`]: what the events cannot tell — sock_diag in every network namespace, who holds a
//!   socket (`/proc/PID/fd`), cgroup paths, the clock, sysctls — behind [`host::Env`].
//! - [`stuck`]: the engine's lifecycles and the host's sockets together: what is stuck, since
//!   when, why.
//! - [`recording`]: the recording file (events and host snapshots), and a replayed
//!   [`host::Env`].
//! - [`output`]: one writer per command and format; the NDJSON keys declared once.
//! - [`commands`]: the loop (live or replayed) and one sink per subcommand.
//! - [`cli`]: flags as parsed, what they build, where the events come from.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod cli;
pub mod commands;
pub mod engine;
pub mod event;
pub mod host;
pub mod kernel;
pub mod output;
pub mod recording;
pub mod stuck;
#[cfg(test)]
pub(crate) mod testkit;
