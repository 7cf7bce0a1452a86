//! Log set-up from the "logging" section: stderr plus optional log files, at
//! justbuild's numeric levels. `RUST_LOG` overrides the level when set.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;

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
        .with_writer(Capped(std::io::stderr))
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
                .with_writer(Capped(Arc::new(file)))
                .with_ansi(false)
                .with_thread_ids(true)
                .with_filter(filter(level))
                .boxed(),
        );
    }
    tracing_subscriber::registry().with(layers).init();
    Ok(())
}

/// Log lines are cut after this many bytes. Messages quote client input
/// (entry names, paths, target names, digests); a 512 MiB entry name must
/// not become 512 MiB of log on every sink.
pub const MAX_LINE: usize = 8 << 10;

/// A [`MakeWriter`] whose writers cut each event at [`MAX_LINE`] bytes.
struct Capped<M>(M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Capped<M> {
    type Writer = CappedWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        CappedWriter(self.0.make_writer())
    }
}

/// Writes one formatted event (the fmt layer hands each over in one write),
/// cut at a character boundary below [`MAX_LINE`] with a note of the rest.
struct CappedWriter<W>(W);

impl<W: Write> Write for CappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() <= MAX_LINE {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut cut = MAX_LINE;
        while cut > 0 && buf[cut] & 0xc0 == 0x80 {
            cut -= 1;
        }
        self.0.write_all(&buf[..cut])?;
        writeln!(self.0, " [{} more bytes cut]", buf.len() - cut)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_at_a_character_boundary() {
        let mut out = Vec::new();
        let short = b"short line\n";
        CappedWriter(&mut out).write_all(short).unwrap();
        assert_eq!(out, short);
        let mut out = Vec::new();
        // One byte, then two-byte characters: the limit falls inside one.
        let long = format!("x{}\n", "\u{e9}".repeat(MAX_LINE));
        CappedWriter(&mut out).write_all(long.as_bytes()).unwrap();
        let text = String::from_utf8(out).expect("still UTF-8");
        assert!(text.len() < MAX_LINE + 64, "{}", text.len());
        let kept = MAX_LINE - 1;
        assert!(text.ends_with(&format!(" [{} more bytes cut]\n", long.len() - kept)));
    }
}
