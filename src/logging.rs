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
    let json = config.format == crate::config::LogFormat::Json;
    let mut layers: Vec<Box<dyn Layer<_> + Send + Sync>> =
        vec![
            sink(Capped(std::io::stderr, json), json, !config.plain, false)
                .with_filter(filter(stderr_level))
                .boxed(),
        ];
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
            sink(Capped(Arc::new(file), json), json, false, true)
                .with_filter(filter(level))
                .boxed(),
        );
    }
    tracing_subscriber::registry().with(layers).init();
    Ok(())
}

/// How often long work without a setting of its own (syncs) logs its
/// progress, in milliseconds; set from the configuration at start.
static PROGRESS_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(5000);

/// Sets the interval [`progress_interval`] answers.
pub fn set_progress_interval(every: std::time::Duration) {
    PROGRESS_MS.store(
        every.as_millis().max(1) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// How often long work logs its progress.
pub fn progress_interval() -> std::time::Duration {
    std::time::Duration::from_millis(PROGRESS_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Names what the current RPC is about (a commit, tree, archive, target
/// key) in its span, so that every later line of the request carries it.
/// Client input: only the first [`SUBJECT_BYTES`] bytes are kept.
pub fn subject(what: &str) {
    let mut end = what.len().min(SUBJECT_BYTES);
    while !what.is_char_boundary(end) {
        end -= 1;
    }
    tracing::Span::current().record("subject", &what[..end]);
}

/// The longest subject kept: any digest or commit id fits.
const SUBJECT_BYTES: usize = 160;

/// One log sink: text (with colours if `ansi`), or one JSON object a line
/// whose fields are at the top and whose RPC span (request id, method, what
/// it is about) is under `span`.
fn sink<S, W>(
    writer: W,
    json: bool,
    ansi: bool,
    thread_ids: bool,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_thread_ids(thread_ids);
    if json {
        layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        layer.with_ansi(ansi).boxed()
    }
}

/// Log lines are cut after this many bytes. Messages quote client input
/// (entry names, paths, target names, digests); a 512 MiB entry name must
/// not become 512 MiB of log on every sink.
pub const MAX_LINE: usize = 8 << 10;

/// A [`MakeWriter`] whose writers cut each event at [`MAX_LINE`] bytes
/// (JSON lines staying JSON when `.1`).
struct Capped<M>(M, bool);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Capped<M> {
    type Writer = CappedWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        CappedWriter(self.0.make_writer(), self.1)
    }
}

/// Writes one formatted event (the fmt layer hands each over in one write),
/// cut at a character boundary below [`MAX_LINE`] with a note of the rest;
/// a JSON line has its long strings cut instead, so it stays one object.
struct CappedWriter<W>(W, bool);

/// Strings of a JSON log line over [`MAX_LINE`] are cut to this many bytes.
const JSON_STRING: usize = 1 << 10;

impl<W: Write> Write for CappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() <= MAX_LINE {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        if self.1 {
            let mut value = serde_json::from_slice::<serde_json::Value>(buf)
                .unwrap_or_else(|_| serde_json::json!({"message": String::from_utf8_lossy(buf)}));
            cut_strings(&mut value);
            let mut line = serde_json::to_vec(&value).map_err(io::Error::other)?;
            line.push(b'\n');
            self.0.write_all(&line)?;
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

/// Cuts every string in `value` to [`JSON_STRING`] bytes (at a character
/// boundary, noting the rest), in place.
fn cut_strings(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) if text.len() > JSON_STRING => {
            let mut cut = JSON_STRING;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let rest = text.len() - cut;
            text.truncate(cut);
            text.push_str(&format!(" [{rest} more bytes cut]"));
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(cut_strings),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(cut_strings),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_json_lines_stay_one_json_object() {
        let long = "\u{e9}".repeat(MAX_LINE);
        let line = format!(
            "{}\n",
            serde_json::json!({"level": "INFO", "message": long, "span": {"id": 7}})
        );
        let mut out = Vec::new();
        CappedWriter(&mut out, true)
            .write_all(line.as_bytes())
            .unwrap();
        assert!(out.len() < MAX_LINE, "{}", out.len());
        assert_eq!(out.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&out).expect("still JSON");
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["span"]["id"], 7);
        let message = value["message"].as_str().unwrap();
        assert!(message.ends_with("more bytes cut]"), "{message}");
    }

    #[test]
    fn long_lines_are_cut_at_a_character_boundary() {
        let mut out = Vec::new();
        let short = b"short line\n";
        CappedWriter(&mut out, false).write_all(short).unwrap();
        assert_eq!(out, short);
        let mut out = Vec::new();
        // One byte, then two-byte characters: the limit falls inside one.
        let long = format!("x{}\n", "\u{e9}".repeat(MAX_LINE));
        CappedWriter(&mut out, false)
            .write_all(long.as_bytes())
            .unwrap();
        let text = String::from_utf8(out).expect("still UTF-8");
        assert!(text.len() < MAX_LINE + 64, "{}", text.len());
        let kept = MAX_LINE - 1;
        assert!(text.ends_with(&format!(" [{} more bytes cut]\n", long.len() - kept)));
    }
}
