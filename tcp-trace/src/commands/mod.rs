//! One module per subcommand; each builds a [`crate::pipeline::Sink`].

pub mod life;
pub mod record;
pub mod serve;
pub mod stuck;
pub mod watch;
