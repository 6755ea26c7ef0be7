//! tcp-trace: eBPF TCP lifecycle tracing.
//!
//! The data path, one module per stage:
//! kernel ([`source`]: load, attach, ring buffer) → [`event`] (decode) → [`engine`] (pure
//! lifecycles; [`stuck`] classifies from them) → [`enrich`] (sock_diag, /proc) → [`output`]
//! (human | JSON). [`pipeline`] drives it; [`commands`] hold one sink per subcommand; [`cli`]
//! parses the command line.

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
