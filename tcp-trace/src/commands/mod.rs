//! One module per subcommand; each builds a [`crate::pipeline::Sink`].

pub mod watch;
