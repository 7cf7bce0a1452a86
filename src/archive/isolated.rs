//! Unpacking in a child process with a memory bound.
//!
//! The unpackers are third-party parsers and decoders fed with untrusted
//! bytes, and some size their allocations from header fields: a 41-byte 7z
//! header asks for 800 GB, an xz block header for a 4 GiB dictionary. In Rust
//! an allocation failure aborts the whole process, so catching panics cannot
//! help. The daemon therefore unpacks through its own binary's hidden
//! [`HELPER_COMMAND`], under an address-space limit: a hostile archive costs
//! one child process and answers UNPACK_ERROR, the daemon is untouched.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{unpack, ArchiveFormat, Limits, UnpackError, UnpackStats, Unpacked, Unpacking};
use crate::git::PackFiles;

/// The hidden subcommand of the jserve binary that unpacks one archive into
/// a pack in SCRATCH:
/// `jserve __unpack tar|zip ARCHIVE SCRATCH MAX_BYTES MAX_ENTRIES LEVEL`.
/// It prints `ENTRIES BYTES ROOT PACK-NAME[,PACK-NAME...]`.
pub const HELPER_COMMAND: &str = "__unpack";

/// Exit code of the helper for an archive it refused (message on stdout).
const EXIT_REFUSED: i32 = 3;

/// CPU seconds one unpack may use: a parser caught in a loop by a hostile
/// archive ends here (SIGXCPU). Far above what 16 GiB of content needs.
const MAX_CPU_SECONDS: u64 = 3600;

/// At most this much of the helper's output is read.
const MAX_OUTPUT: u64 = 64 << 10;

/// How to run the helper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isolation {
    /// The jserve binary.
    pub program: PathBuf,
    /// The helper's address-space limit in bytes.
    pub max_memory: u64,
}

/// [`unpack`] in a child process limited to `isolation.max_memory` bytes of
/// address space. Blocking.
pub fn unpack_isolated(
    isolation: &Isolation,
    archive: &Path,
    format: ArchiveFormat,
    scratch: &Path,
    unpacking: &Unpacking,
) -> Result<Unpacked, UnpackError> {
    let limits = &unpacking.limits;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let mut cmd = Command::new(&isolation.program);
    cmd.arg(HELPER_COMMAND)
        .arg(format.justbuild_name())
        .arg(archive)
        .arg(scratch)
        .arg(limits.max_total_bytes.to_string())
        .arg(limits.max_entries.to_string())
        .arg(unpacking.compression.to_string())
        .arg(
            unpacking
                .progress_every
                .as_millis()
                .clamp(1, 1000)
                .to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let max_memory = isolation.max_memory;
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || {
            let memory = libc::rlimit {
                rlim_cur: max_memory,
                rlim_max: max_memory,
            };
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            let cpu = libc::rlimit {
                rlim_cur: MAX_CPU_SECONDS,
                rlim_max: MAX_CPU_SECONDS,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &memory) != 0
                || libc::setrlimit(libc::RLIMIT_CORE, &no_core) != 0
                || libc::setrlimit(libc::RLIMIT_CPU, &cpu) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        UnpackError::Internal(format!(
            "cannot start the unpacker {}: {e}",
            isolation.program.display()
        ))
    })?;
    let progress = child.stderr.take().map(|stderr| {
        let (archive, every) = (archive.to_path_buf(), unpacking.progress_every);
        std::thread::spawn(move || log_progress(stderr, &archive, every))
    });
    let mut output = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = stdout.take(MAX_OUTPUT).read_to_string(&mut output);
    }
    let status = child
        .wait()
        .map_err(|e| UnpackError::Internal(format!("waiting for the unpacker: {e}")))?;
    if let Some(progress) = progress {
        let _ = progress.join();
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => parse_output(&output, scratch),
        (Some(EXIT_REFUSED), _) => Err(UnpackError::Refused(output.trim().to_string())),
        (_, Some(signal)) => Err(UnpackError::Stopped(format!(
            "the unpacker needed more than {} MiB of memory or {MAX_CPU_SECONDS} s of CPU, \
             or crashed (signal {signal})",
            max_memory >> 20
        ))),
        (code, _) => Err(UnpackError::Internal(format!(
            "the unpacker exited with {code:?}: {}",
            output.trim()
        ))),
    }
}

/// Reads the helper's progress reports (`progress ENTRIES BYTES` lines on
/// its stderr) until it ends, logging one at most every `every`. Other
/// lines (a panic's message) are read and dropped, each cut at a bound.
fn log_progress(stderr: std::process::ChildStderr, archive: &Path, every: std::time::Duration) {
    use std::io::BufRead;
    let started = std::time::Instant::now();
    let mut logged = started;
    let mut reader = std::io::BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        // At most 1 KiB a line; the rest of a longer one is a line of its own.
        match reader.by_ref().take(1 << 10).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let mut words = text.split_whitespace();
        if words.next() != Some("progress") {
            continue;
        }
        let (Some(Ok(entries)), Some(Ok(bytes))) = (
            words.next().map(str::parse::<u64>),
            words.next().map(str::parse::<u64>),
        ) else {
            continue;
        };
        if logged.elapsed() >= every {
            logged = std::time::Instant::now();
            tracing::info!(
                archive = %archive.display(),
                entries,
                bytes,
                "unpacking: {entries} entries, {} MiB so far ({} s)",
                bytes >> 20,
                started.elapsed().as_secs()
            );
        }
    }
}

fn parse_output(output: &str, scratch: &Path) -> Result<Unpacked, UnpackError> {
    let bad = || UnpackError::Internal(format!("unpacker output {output:?}"));
    let mut words = output.split_whitespace();
    let entries = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    let bytes = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    let root = words
        .next()
        .and_then(|w| git2::Oid::from_str(w).ok())
        .ok_or_else(bad)?;
    // Only names the packer gives are accepted: they stay inside `scratch`.
    let names = words.next().ok_or_else(bad)?;
    let mut packs = Vec::new();
    for name in names.split(',') {
        let hex = name.strip_prefix("pack-").ok_or_else(bad)?;
        if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        packs.push(PackFiles {
            pack: scratch.join(format!("{name}.pack")),
            idx: scratch.join(format!("{name}.idx")),
        });
    }
    Ok(Unpacked {
        root,
        stats: UnpackStats { entries, bytes },
        packs,
    })
}

/// The helper's side: runs [`unpack`] on its arguments, prints `ENTRIES
/// BYTES ROOT PACK-NAMES` or the refusal, and returns the process exit code.
pub fn helper_main(args: &[String]) -> i32 {
    let [format, archive, scratch, max_bytes, max_entries, level, progress_ms] = args else {
        println!(
            "usage: {HELPER_COMMAND} tar|zip ARCHIVE SCRATCH MAX_BYTES MAX_ENTRIES LEVEL PROGRESS_MS"
        );
        return 2;
    };
    let format = match format.as_str() {
        "archive" | "tar" => ArchiveFormat::Tar,
        "zip" => ArchiveFormat::Zip,
        other => {
            println!("unknown archive kind {other:?}");
            return 2;
        }
    };
    let (Ok(max_total_bytes), Ok(max_entries), Ok(level), Ok(progress_ms)) = (
        max_bytes.parse(),
        max_entries.parse(),
        level.parse(),
        progress_ms.parse::<u64>(),
    ) else {
        println!("limits, level and progress interval must be numbers");
        return 2;
    };
    // How far it got, on stderr, for the daemon to log (it ends with us).
    std::thread::spawn(move || {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            std::thread::sleep(std::time::Duration::from_millis(progress_ms.max(1)));
            let progress = &super::PROGRESS;
            eprintln!(
                "progress {} {}",
                progress.entries.load(Relaxed),
                progress.bytes.load(Relaxed)
            );
        }
    });
    let limits = Limits {
        max_total_bytes,
        max_entries,
    };
    match unpack(
        Path::new(archive),
        format,
        Path::new(scratch),
        &limits,
        level,
    ) {
        Ok(done) => {
            let names: Vec<String> = done
                .packs
                .iter()
                .map(|p| {
                    p.pack
                        .file_stem()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            println!(
                "{} {} {} {}",
                done.stats.entries,
                done.stats.bytes,
                done.root,
                names.join(",")
            );
            0
        }
        Err(e) => {
            println!("{e}");
            EXIT_REFUSED
        }
    }
}
