//! One module per subcommand; each builds a [`crate::pipeline::Sink`].

pub mod life;
pub mod stuck;
pub mod watch;
