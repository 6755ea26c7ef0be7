//! The `tcp-trace` binary: parse, run on the tokio runtime, map errors to one line
//! on stderr and exit status 2 (a closed stdout pipe is a normal end: status 0).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{io::Write, process::ExitCode};

use clap::Parser;
use tcp_trace::{cli, output::is_broken_pipe};

fn main() -> ExitCode {
    // Warnings are said to the user as tcp-trace's own lines; the rest (RUST_LOG=info, debug)
    // is for whoever debugs it, with where it came from.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, r| match r.level() {
            log::Level::Error => writeln!(buf, "tcp-trace: error: {}", r.args()),
            log::Level::Warn => writeln!(buf, "tcp-trace: warning: {}", r.args()),
            l => writeln!(buf, "[{l} {}] {}", r.target(), r.args()),
        })
        .init();
    let args = cli::Cli::parse();
    // The pipeline runs in block_on on this thread. For `serve`, one worker thread runs the
    // HTTP server, so a scrape never waits for event processing; every other command runs on
    // this thread alone, which its drain timer then wakes directly rather than by way of a
    // worker (a wake-up per drain, and each thread switch costs CPU).
    let mut builder = if args.serves_http() {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(1);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tcp-trace: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcp-trace: {e:#}");
            ExitCode::from(2)
        }
    }
}
