//! One module per subcommand; each builds a [`crate::pipeline::Sink`].

pub mod life;
pub mod record;
pub mod stuck;
pub mod watch;
