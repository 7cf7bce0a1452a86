//! Log set-up from the "logging" section: stderr plus optional log files, at
//! justbuild's numeric levels. `RUST_LOG` overrides the level when set.

use std::fs::OpenOptions;
use std::sync::Arc;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LoggingConfig;

/// Errors setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("cannot open log file {path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// justbuild levels: 0 error, 1 warning, 2 info, 3 progress (default), 4 performance,
/// 5 debug, 6 trace. Progress and performance map onto info and debug.
pub fn level_filter(level: u8) -> LevelFilter {
    match level {
        0 => LevelFilter::ERROR,
        1 => LevelFilter::WARN,
        2 | 3 => LevelFilter::INFO,
        4 | 5 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

fn filter(level: LevelFilter) -> EnvFilter {
    EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env_lossy()
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(config: &LoggingConfig) -> Result<(), LoggingError> {
    let level = level_filter(config.limit.unwrap_or(3));
    let stderr_level = match config.restrict_stderr_limit {
        Some(r) => level.min(level_filter(r)),
        None => level,
    };
    let mut layers: Vec<Box<dyn Layer<_> + Send + Sync>> = vec![tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(!config.plain)
        .with_filter(filter(stderr_level))
        .boxed()];
    for path in &config.files {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(config.append)
            .truncate(!config.append)
            .open(path)
            .map_err(|source| LoggingError::File {
                path: path.clone(),
                source,
            })?;
        layers.push(
            tracing_subscriber::fmt::layer()
                .with_writer(Arc::new(file))
                .with_ansi(false)
                .with_thread_ids(true)
                .with_filter(filter(level))
                .boxed(),
        );
    }
    tracing_subscriber::registry().with(layers).init();
    Ok(())
}
