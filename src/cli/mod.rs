//! The command line: parse, then hand over to one module per subcommand.

mod analyse;
mod client;
mod execute;
mod gc;
mod prefetch;
mod serve;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::LoggingConfig;
use crate::daemon::RunningServer;

/// Exit code for an invalid configuration or command line.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for failures while starting or running.
pub const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(
    name = "jserve",
    version,
    about = "A target-level cache service for justbuild clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the serve daemon (the drop-in for `just serve`).
    Serve {
        /// Config file in the just-serve-config(5) format; defaults apply without one.
        config: Option<PathBuf>,
        /// Log lines as text or as one JSON object each (`json`), over the
        /// config's `"logging"."format"`.
        #[arg(long = "log-format", value_name = "FORMAT")]
        log_format: Option<crate::config::LogFormat>,
    },
    /// Run only a remote-execution endpoint (the drop-in for `just execute`).
    Execute(Box<execute::ExecuteArgs>),
    /// Collect garbage in a build root once (also while a daemon serves it),
    /// rotate its generations, or check it.
    Gc(Box<gc::GcArgs>),
    /// Analyse a target as `just analyse` does (no build).
    Analyse(Box<analyse::AnalyseArgs>),
    /// Make every content-fixed root of a just-mr configuration known to a
    /// serve endpoint and backed up at its execution endpoint (and, with
    /// --targets, build export targets there).
    Prefetch(Box<prefetch::PrefetchArgs>),
    #[command(flatten)]
    Client(client::ClientCommand),
    /// Unpacks one archive for the daemon, in a process of its own.
    #[command(name = crate::archive::HELPER_COMMAND, hide = true)]
    Unpack {
        #[arg(num_args = 7)]
        args: Vec<String>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_format } => serve::run(config.as_deref(), log_format),
        Command::Execute(args) => execute::run(*args),
        Command::Gc(args) => gc::run(*args),
        Command::Analyse(args) => analyse::run(*args),
        Command::Prefetch(args) => prefetch::run(*args),
        Command::Client(command) => client::run(command),
        Command::Unpack { args } => ExitCode::from(crate::archive::helper_main(&args) as u8),
    }
}

/// Runs a client command to its exit code on a one-thread runtime (blocking
/// work goes to tokio's blocking pool); errors are printed after `name`.
fn run_client(name: &str, command: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Sets up logging, starts a daemon on a runtime with `jobs` workers, and runs
/// it until SIGTERM or SIGINT, then stops it gracefully.
fn run_daemon<F, Fut>(
    logging: &LoggingConfig,
    warnings: &[String],
    jobs: usize,
    stop_timeout: std::time::Duration,
    start: F,
) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<RunningServer>>,
{
    if let Err(e) = crate::logging::init(logging) {
        eprintln!("jserve: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let served = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(jobs.max(1))
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| {
            let served = runtime.block_on(async {
                // Listen before the info file announces the server, so that an
                // early SIGTERM still means a graceful stop.
                let mut signals = StopSignals::new()?;
                let server = start().await?;
                let signal = signals.next().await;
                tracing::info!(
                    "{signal} received: finishing running calls (at most {} s; \
                     another signal stops at once), then stopping",
                    stop_timeout.as_secs_f64()
                );
                let again = async {
                    let signal = signals.next().await;
                    tracing::warn!("{signal} received again: stopping at once");
                };
                match server.shutdown_within(stop_timeout, again).await? {
                    crate::daemon::Stop::Graceful => tracing::info!("stopped"),
                    crate::daemon::Stop::Deadline => tracing::warn!(
                        "calls still running after {} s were cut off; stopped",
                        stop_timeout.as_secs_f64()
                    ),
                    crate::daemon::Stop::Forced => tracing::warn!("stopped"),
                }
                Ok(())
            });
            // Whatever still runs (cut-off calls, their blocking work) ends
            // with the process.
            runtime.shutdown_background();
            served
        });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// SIGTERM and SIGINT, installed once and awaited as often as needed.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
