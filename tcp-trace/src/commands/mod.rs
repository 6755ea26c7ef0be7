//! One module per subcommand; each builds a [`crate::commands::pipeline::Sink`].

pub mod fates;
pub mod life;
pub mod owners;
pub mod pipeline;
pub mod record;
pub mod report;
pub mod serve;
pub mod stuck;
pub mod watch;
