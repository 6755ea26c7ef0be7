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

pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod engine;
pub mod enrich;
pub mod env;
pub mod event;
pub mod filter;
pub mod halfopen;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod record;
pub mod source;
pub mod stuck;
pub mod tracefs;
