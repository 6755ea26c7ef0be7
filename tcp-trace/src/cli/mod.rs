//! The command line: [`flags`] as parsed, the [`settings`] they build, the [`input`] they
//! name; [`run`] builds the sink for the subcommand and runs it.

mod flags;
mod input;
mod settings;

pub use flags::Cli;
use flags::Command;

use std::{cell::RefCell, io, process::ExitCode, rc::Rc, sync::Arc};

use anyhow::{Context, Result};

use self::input::{moment, Input};
use crate::{
    commands::{
        life::Life,
        record::Record,
        report::{self, Buffer, ReportCmd},
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
            let (c, f) = (&a.common, &a.follow);
            // Owners come from the events alone.
            let (input, clock) = Input::open(c, &f.replay, false, SWEEP_EVERY)?;
            input.announce(c);
            let mut sink = Watch::new(stdout(), a.json, clock, c.filter(), f.engine(false));
            sink.set_wide(a.wide);
            sink.set_reset_reasons(reset_reasons(&input));
            input.run(&mut sink).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stuck(a) => {
            let (c, f) = (&a.common, &a.follow);
            // Attach first, then snapshot (in StuckCmd::new): nothing in between is missed.
            let (mut input, clock) = Input::open(c, &f.replay, true, a.opts.sweep)?;
            input.announce(c);
            let at = match (&a.at, &input) {
                (Some(t), Input::Replay(r, _)) => Some(moment("--at", t, r)?),
                (Some(_), Input::Live(..)) => anyhow::bail!("--at needs --replay FILE"),
                (None, _) => None,
            };
            let set = a
                .opts
                .settings(c, f, a.interval, a.once.then_some(a.settle));
            let mut sink = StuckCmd::new(stdout(), a.json, clock, set, f.max_sockets, input.env())?;
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
            let (c, f) = (&a.common, &a.follow);
            anyhow::ensure!(
                !f.replay.is_empty() || (a.from.is_none() && a.to.is_none()),
                "--from and --to need --replay FILE (a live report covers --duration)"
            );
            let (mut input, clock) = Input::open(c, &f.replay, true, a.opts.sweep)?;
            let start = input.env().now();
            let (host, window) = match &input {
                Input::Replay(r, _) => {
                    let h = r.header();
                    let at = |flag: &str, t: &Option<String>| {
                        t.as_deref().map(|t| moment(flag, t, r)).transpose()
                    };
                    let (from, to) = (at("--from", &a.from)?, at("--to", &a.to)?);
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
            let to_file = a.output.to_str() != Some("-");
            let dest = match to_file {
                true => a.output.display().to_string(),
                false => "stdout".to_string(),
            };
            // Always, whoever reads stderr: what is read and where the report goes.
            match &input {
                Input::Live(..) => eprintln!(
                    "tcp-trace: tracing {} for a report to {dest}, written at the end; Ctrl-C \
                     to end sooner",
                    Input::scope(c)
                ),
                Input::Replay(..) => eprintln!(
                    "tcp-trace: reading {} for a report to {dest}",
                    f.replay
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            }
            // `stuck --json` inside, asked once: at --to, else when the input ends.
            let buf: Buffer = Shared(Rc::new(RefCell::new(Vec::new())));
            let set = a.opts.settings(
                c,
                f,
                std::time::Duration::ZERO,
                Some(std::time::Duration::ZERO),
            );
            let mut stuck =
                StuckCmd::new(buf.clone(), true, clock, set, f.max_sockets, input.env())?;
            match window.1 {
                Some(to) => stuck.evaluate_at(to),
                None => stuck.evaluate_at_end(),
            }
            let mut sink = ReportCmd::new(
                out,
                a.format,
                clock,
                host,
                f.engine(true),
                c.filter(),
                stuck,
                buf,
                (window.0.unwrap_or(start), window.1),
            );
            input.run(&mut sink).await?;
            let holds = sink.summary().unwrap_or_default();
            let open = match a.format {
                _ if !to_file => String::new(),
                report::Format::Html => format!(
                    "; open file://{} in a browser",
                    std::path::absolute(&a.output)?.display()
                ),
                report::Format::Perfetto => "; open it in https://ui.perfetto.dev".to_string(),
            };
            let size = std::fs::metadata(&a.output)
                .ok()
                .filter(|_| to_file)
                .map(|m| format!(" ({})", bytesize::ByteSize::b(m.len()).display().iec()))
                .unwrap_or_default();
            eprintln!("tcp-trace: wrote {dest}{size}: {holds}{open}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Life(a) => {
            let (c, f) = (&a.common, &a.follow);
            let (input, clock) = Input::open(c, &f.replay, true, SWEEP_EVERY)?;
            input.announce(c);
            let mut sink = Life::new(stdout(), a.json, clock, c.filter(), f.engine(true));
            sink.set_wide(a.wide);
            sink.set_open(a.open);
            input.run(&mut sink).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(a) => {
            let (c, f) = (&a.common, &a.follow);
            let metrics = Arc::new(Metrics::new(a.label_ports));
            let listener = tokio::net::TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("listening on {}", a.listen))?;
            let (mut input, clock) = Input::open(c, &f.replay, true, a.opts.sweep)?;
            let out: Box<dyn io::Write> = match a.events_json.as_deref() {
                None => Box::new(io::sink()),
                Some("-") => Box::new(stdout()),
                Some(p) => Box::new(Rotating::open(p.into(), a.events_json_max_mib << 20)?),
            };
            let out = Shared(Rc::new(RefCell::new(out)));
            let set = a.opts.settings(c, f, a.interval, None);
            let mut stuck =
                StuckCmd::new(out.clone(), true, clock, set, f.max_sockets, input.env())?;
            stuck.set_metrics(metrics.clone());
            let mut watch = a
                .events_json
                .is_some()
                .then(|| Watch::new(out, true, clock, c.filter(), f.engine(false)));
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
            let (mut input, clock) = Input::open(c, &[], true, SWEEP_EVERY)?;
            let files = a.files()?;
            let mut sink =
                Record::new(files, &clock, c.filter(), a.snapshot_interval, input.env())?;
            // Always, whoever reads stderr (a terminal, a unit's journal): what and where.
            eprintln!(
                "tcp-trace: recording {} {}; Ctrl-C to stop",
                Input::scope(c),
                sink.plan()
            );
            input.run(&mut sink).await?;
            eprintln!("tcp-trace: {}", sink.summary());
            Ok(ExitCode::SUCCESS)
        }
    }
}
