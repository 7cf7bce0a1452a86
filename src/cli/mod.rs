//! The command line: parse, then hand over to one module per subcommand.

mod analyse;
mod client;
mod execute;
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
    },
    /// Run only a remote-execution endpoint (the drop-in for `just execute`).
    Execute(Box<execute::ExecuteArgs>),
    /// Analyse a target as `just analyse` does (no build).
    Analyse(Box<analyse::AnalyseArgs>),
    #[command(flatten)]
    Client(client::ClientCommand),
    /// Unpacks one archive for the daemon, in a process of its own.
    #[command(name = crate::archive::HELPER_COMMAND, hide = true)]
    Unpack {
        #[arg(num_args = 5)]
        args: Vec<String>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve::run(config.as_deref()),
        Command::Execute(args) => execute::run(*args),
        Command::Analyse(args) => analyse::run(*args),
        Command::Client(command) => client::run(command),
        Command::Unpack { args } => ExitCode::from(crate::archive::helper_main(&args) as u8),
    }
}

/// Sets up logging, starts a daemon on a runtime with `jobs` workers, and runs
/// it until SIGTERM or SIGINT, then stops it gracefully.
fn run_daemon<F, Fut>(
    logging: &LoggingConfig,
    warnings: &[String],
    jobs: usize,
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
            runtime.block_on(async {
                // Listen before the info file announces the server, so that an
                // early SIGTERM still means a graceful stop.
                let stop = stop_signals()?;
                let server = start().await?;
                let signal = stop.await;
                tracing::info!("{signal} received: finishing running calls, then stopping");
                server.shutdown().await?;
                tracing::info!("stopped");
                Ok(())
            })
        });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers; the future resolves on the first signal.
fn stop_signals() -> anyhow::Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}
