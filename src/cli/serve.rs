//! `jserve serve [CONFIG]`.

use std::path::Path;
use std::process::ExitCode;

use super::{run_daemon, EXIT_CONFIG};
use crate::config::{Environment, ServeConfig};
use crate::context::ServeContext;

pub fn run(config_path: Option<&Path>, log_format: Option<crate::config::LogFormat>) -> ExitCode {
    let env = Environment::current();
    let loaded = match config_path {
        Some(path) => ServeConfig::load(path, &env),
        None => ServeConfig::defaults(&env),
    };
    let mut config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("jserve: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(format) = log_format {
        config.logging.format = format;
    }
    // Archives are unpacked by this very binary in a child process.
    config.unpack_helper = std::env::current_exe().ok();
    let (logging, warnings, jobs) = (config.logging.clone(), config.warnings.clone(), config.jobs);
    let stop_timeout = config.stop_timeout;
    run_daemon(
        &logging,
        &warnings,
        jobs,
        stop_timeout,
        move || async move {
            let ctx = ServeContext::open(config)?;
            Ok(crate::daemon::start(ctx).await?)
        },
    )
}
