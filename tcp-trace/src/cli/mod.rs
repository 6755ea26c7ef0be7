//! The command line: [`flags`] as parsed, the [`settings`] they build, the [`input`] they
//! name; [`run`] builds the sink for the subcommand and runs it.

mod flags;
mod input;
mod settings;

pub use flags::Cli;
use flags::Command;

use std::{cell::RefCell, io, process::ExitCode, rc::Rc, sync::Arc};

use anyhow::{Context, Result};

use self::input::{at_time, Input};
use crate::{
    commands::{
        life::Life,
        record::Record,
        report::{Buffer, ReportCmd},
        serve::{spawn_http, Rotating, Serve},
        stuck::StuckCmd,
        watch::Watch,
    },
    host::sockdiag::SWEEP_EVERY,
    output::{metrics::Metrics, Shared},
};

fn stdout() -> io::BufWriter<io::StdoutLock<'static>> {
    io::BufWriter::with_capacity(64 << 10, io::stdout().lock())
}

/// The names of the reset reasons of the kernel the events come from: the running one's, or
/// the recording's.
fn reset_reasons(input: &Input) -> crate::event::ResetReasons {
    match input {
        Input::Live(src, ..) => src.reset_reasons().clone(),
        Input::Replay(parts, _) => parts.header().reset_reasons.clone(),
    }
}

/// Runs a parsed command line; the exit status for success paths.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Watch(a) => {
            let c = &a.common;
            // Always the sockets' namespaces: a timewait orphan's fate is looked up there.
            let (input, clock) = Input::open(c, true, SWEEP_EVERY)?;
            let mut sink = Watch::new(stdout(), a.json, clock, c.filter(), c.engine(false));
            sink.set_wide(a.wide);
            sink.set_reset_reasons(reset_reasons(&input));
            input.run(&mut sink).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stuck(a) => {
            let c = &a.common;
            // Attach first, then snapshot (in StuckCmd::new): nothing in between is missed.
            // Always the sockets' namespaces: they say where sock_diag must look.
            let (mut input, clock) = Input::open(c, true, a.opts.sweep)?;
            if matches!(input, Input::Live(..)) && !crate::kernel::privilege::can_read_all_fds() {
                log::warn!("without CAP_SYS_PTRACE the owners of other users' sockets are unknown");
            }
            let at = match (&a.at, &input) {
                (Some(t), Input::Replay(r, _)) => Some(at_time(t, &r.header().start, &clock)?),
                (Some(_), Input::Live(..)) => anyhow::bail!("--at needs --replay FILE"),
                (None, _) => None,
            };
            let set = a.opts.settings(c, a.once.then_some(a.settle));
            let mut sink = StuckCmd::new(stdout(), a.json, clock, set, c.max_sockets, input.env())?;
            // A replay answers as of its end (its last event or time frame), `--at` for any
            // other moment; live, `--once` answers after its settle window.
            match (at, &input) {
                (Some(at), _) => sink.evaluate_at(at),
                (None, Input::Replay(..)) if a.once => sink.evaluate_at_end(),
                (None, Input::Replay(..)) => sink.evaluate_at_end_too(),
                (None, Input::Live(..)) => {}
            }
            sink.set_wide(a.wide);
            sink.set_each(a.each);
            input.run(&mut sink).await?;
            Ok(if (a.once || a.at.is_some()) && sink.stuck_now() > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Report(a) => {
            let c = &a.common;
            anyhow::ensure!(
                !c.replay.is_empty() || (a.from.is_none() && a.to.is_none()),
                "--from and --to need --replay FILE (a live report covers --duration)"
            );
            let (mut input, clock) = Input::open(c, true, a.opts.sweep)?;
            let start = input.env().now();
            let (host, window) = match &input {
                Input::Replay(r, _) => {
                    let h = r.header();
                    let at = |t: &Option<String>| {
                        t.as_deref()
                            .map(|t| at_time(t, &h.start, &clock))
                            .transpose()
                    };
                    let (from, to) = (at(&a.from)?, at(&a.to)?);
                    if let Some(to) = to {
                        anyhow::ensure!(
                            to > from.unwrap_or(start),
                            "--to {} is not after the window's start ({})",
                            clock.rfc3339(to),
                            clock.rfc3339(from.unwrap_or(start))
                        );
                    }
                    ((h.host.clone(), h.kernel.clone()), (from, to))
                }
                Input::Live(..) => (crate::host::identity(), (None, None)),
            };
            let out: Box<dyn io::Write> = match a.output.to_str() {
                Some("-") => Box::new(stdout()),
                _ => Box::new(io::BufWriter::new(
                    std::fs::File::create(&a.output)
                        .with_context(|| format!("creating {}", a.output.display()))?,
                )),
            };
            // `stuck --json` inside, asked once: at --to, else when the input ends.
            let buf: Buffer = Shared(Rc::new(RefCell::new(Vec::new())));
            let set = a.opts.settings(c, Some(std::time::Duration::ZERO));
            let mut stuck =
                StuckCmd::new(buf.clone(), true, clock, set, c.max_sockets, input.env())?;
            match window.1 {
                Some(to) => stuck.evaluate_at(to),
                None => stuck.evaluate_at_end(),
            }
            let mut sink = ReportCmd::new(
                out,
                a.format,
                clock,
                host,
                c.engine(true),
                c.filter(),
                stuck,
                buf,
                (window.0.unwrap_or(start), window.1),
            );
            input.run(&mut sink).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Life(a) => {
            let c = &a.common;
            // Always the sockets' namespaces: a timewait orphan's fate is looked up there.
            let (input, clock) = Input::open(c, true, SWEEP_EVERY)?;
            let mut sink = Life::new(stdout(), a.json, clock, c.filter(), c.engine(true));
            sink.set_wide(a.wide);
            sink.set_open(a.open);
            input.run(&mut sink).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(a) => {
            let c = &a.common;
            let metrics = Arc::new(Metrics::new(a.label_ports));
            let listener = tokio::net::TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("listening on {}", a.listen))?;
            // The sockets' namespaces always: they say where sock_diag must look.
            let (mut input, clock) = Input::open(c, true, a.opts.sweep)?;
            let out: Box<dyn io::Write> = match a.events_json.as_deref() {
                None => Box::new(io::sink()),
                Some("-") => Box::new(stdout()),
                Some(p) => Box::new(Rotating::open(p.into(), a.events_json_max_mib << 20)?),
            };
            let out = Shared(Rc::new(RefCell::new(out)));
            let set = a.opts.settings(c, None);
            let mut stuck =
                StuckCmd::new(out.clone(), true, clock, set, c.max_sockets, input.env())?;
            stuck.set_metrics(metrics.clone());
            let mut watch = a
                .events_json
                .is_some()
                .then(|| Watch::new(out, true, clock, c.filter(), c.engine(false)));
            if let Some(w) = watch.as_mut() {
                w.set_reset_reasons(reset_reasons(&input));
            }
            spawn_http(listener, metrics);
            // One line at start, whatever the log level: where to scrape.
            eprintln!(
                "tcp-trace: serving /metrics and /healthz on http://{}",
                a.listen
            );
            input.run(&mut Serve { stuck, watch }).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "tcp-trace", &mut io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Record(a) => {
            // A capture must survive its terminal going away.
            // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
            unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
            let c = &a.common;
            anyhow::ensure!(
                c.replay.is_empty(),
                "record reads the kernel, not a recording"
            );
            let (mut input, clock) = Input::open(c, true, SWEEP_EVERY)?;
            let files = a.files()?;
            let mut sink =
                Record::new(files, &clock, c.filter(), a.snapshot_interval, input.env())?;
            input.run(&mut sink).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
