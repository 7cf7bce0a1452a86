//! `jserve serve [CONFIG]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::{EXIT_CONFIG, EXIT_FAILURE};
use crate::config::{Environment, ServeConfig};
use crate::serve::ServeContext;

pub fn run(config_path: Option<&Path>) -> ExitCode {
    let env = Environment::current();
    let loaded = match config_path {
        Some(path) => ServeConfig::load(path, &env),
        None => ServeConfig::defaults(&env),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("jserve: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = crate::logging::init(&config.logging) {
        eprintln!("jserve: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.jobs)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let ctx = ServeContext::open(config)?;
        let server = crate::daemon::start(ctx).await?;
        let signal = wait_for_stop_signal().await?;
        tracing::info!("{signal} received: finishing running calls, then stopping");
        server.shutdown().await?;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn wait_for_stop_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
