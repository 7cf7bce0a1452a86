//! Unpacking source archives into a directory, the way `just-mr` does it
//! with libarchive, but refusing hostile content.
//!
//! Two archive kinds exist, matching the `archive_type` of `ServeArchiveTree`:
//!
//! * [`ArchiveFormat::Tar`]: a tar archive, plain or compressed with gzip,
//!   bzip2, xz, lzip or legacy lzma. The compression is recognised from the
//!   content (magic bytes), never from a file name; nested compression layers
//!   (e.g. a gzip inside an xz) are peeled off as libarchive does.
//! * [`ArchiveFormat::Zip`]: a zip or a 7-Zip archive, told apart by content.
//!
//! The result is a git tree: the entries become git objects written into one
//! pack in a scratch directory, which the caller moves into its repository.
//! Regular files keep only "executable or not" (any execute bit), directories
//! are kept even when empty, symlinks keep their link text exactly as stored
//! (whether the link points inside the tree is decided later, by the symlink
//! resolution of the caller), and hard links to files extracted before share
//! their content and mode. Nothing is ever written at a path the archive
//! names.
//!
//! Anything that has no git representation or that would escape the root on
//! disk is an [`UnpackError`]: absolute paths, `..` components, paths leading
//! through a symlink or file of the archive, hard links to anything but an
//! earlier regular file, device files, FIFOs and sockets, the same file path
//! twice, and archives expanding beyond the [`Limits`].

mod extract;
mod isolated;
mod packer;
mod path;
mod sevenzip;
mod tar_headers;
mod tarball;
mod zipfile;

#[cfg(test)]
mod tests;

pub use isolated::{helper_main, unpack_isolated, Isolation, HELPER_COMMAND};

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use crate::git::{GitError, PackFiles, PackWriter};
use packer::Packer;

/// The two archive kinds a `ServeArchiveTree` request can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArchiveFormat {
    /// A tar archive, uncompressed or compressed with gzip, bzip2, xz, lzip or lzma.
    Tar,
    /// A zip or 7-Zip archive.
    Zip,
}

impl ArchiveFormat {
    /// The name justbuild uses for this kind in its tree-map and tmp-dir paths.
    pub fn justbuild_name(self) -> &'static str {
        match self {
            ArchiveFormat::Tar => "archive",
            ArchiveFormat::Zip => "zip",
        }
    }
}

/// Bounds on what one archive may expand to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes of file content written in total (symlink texts and
    /// directory entries are not counted).
    pub max_total_bytes: u64,
    /// The most entries (files, directories, symlinks, hard links) extracted.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_bytes: 16 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// How archives are unpacked: the bounds, the zlib level of the packed
/// objects, and whether in a child process (see [`Isolation`]; without it,
/// in this process).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unpacking {
    pub limits: Limits,
    pub compression: u32,
    pub isolation: Option<Isolation>,
    /// How often an isolated unpacking logs how far it got.
    pub progress_every: std::time::Duration,
}

impl Default for Unpacking {
    fn default() -> Self {
        Unpacking {
            limits: Limits::default(),
            compression: 0,
            isolation: None,
            progress_every: crate::config::DEFAULT_PROGRESS_INTERVAL,
        }
    }
}

impl Unpacking {
    /// Unpacks `archive` into a pack in `scratch` as [`unpack`] does,
    /// isolated if configured.
    pub fn unpack(
        &self,
        archive: &Path,
        format: ArchiveFormat,
        scratch: &Path,
    ) -> Result<Unpacked, UnpackError> {
        match &self.isolation {
            Some(isolation) => unpack_isolated(isolation, archive, format, scratch, self),
            None => unpack(archive, format, scratch, &self.limits, self.compression),
        }
    }
}

/// Entries and bytes unpacked so far in this process: what the unpack
/// helper, which unpacks one archive, reports while it works.
pub struct Progress {
    pub entries: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
}

pub static PROGRESS: Progress = Progress {
    entries: std::sync::atomic::AtomicU64::new(0),
    bytes: std::sync::atomic::AtomicU64::new(0),
};

/// An unpacked archive: its root tree, in packs not yet installed anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unpacked {
    pub root: git2::Oid,
    pub stats: UnpackStats,
    pub packs: Vec<PackFiles>,
}

/// Threads that hash, compress and write, besides the one that decompresses
/// and parses: one per core, as compression is the costliest step.
fn packer_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4))
}

/// What an unpack produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries extracted: files, directories, symlinks and hard links.
    pub entries: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Why an archive could not be unpacked. Entry names are given as stored in
/// the archive (non-UTF-8 bytes replaced).
#[derive(thiserror::Error, Debug)]
pub enum UnpackError {
    /// The archive file could not be opened or read.
    #[error("cannot read archive {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The destination is not an existing directory.
    #[error("destination {path} is not usable: {reason}")]
    Destination { path: PathBuf, reason: String },
    /// The content is not an archive of the requested kind.
    #[error("not a {expected} archive: {reason}")]
    UnknownFormat {
        expected: &'static str,
        reason: String,
    },
    /// The archive is damaged: truncated, a checksum mismatch, invalid
    /// compressed data, an entry shorter than its header says.
    #[error("corrupt or truncated archive{}: {message}", entry_suffix(.entry))]
    Corrupt {
        entry: Option<String>,
        message: String,
    },
    /// A feature the unpacker does not handle (encryption, an unknown
    /// compression method inside a zip, an unknown tar header kind).
    #[error("unsupported{}: {what}", entry_suffix(.entry))]
    Unsupported { entry: Option<String>, what: String },
    /// The entry path is absolute, contains `..`, NUL, or names the root.
    #[error("entry {entry:?}: unsafe path: {reason}")]
    UnsafePath { entry: String, reason: &'static str },
    /// A parent of the entry path is a symlink extracted earlier.
    #[error("entry {entry:?}: path leads through the symlink {symlink:?}")]
    ThroughSymlink { entry: String, symlink: String },
    /// A parent of the entry path is a file extracted earlier.
    #[error("entry {entry:?}: parent {parent:?} is not a directory")]
    NotADirectory { entry: String, parent: String },
    /// The entry path was already extracted (as a file, symlink, or as a
    /// directory when the entry is not one).
    #[error("entry {entry:?}: duplicate entry, the path was already extracted as a {existing}")]
    Duplicate {
        entry: String,
        existing: &'static str,
    },
    /// A hard link whose target is unsafe or not an extracted regular file.
    #[error("entry {entry:?}: bad hard link to {target:?}: {reason}")]
    HardLink {
        entry: String,
        target: String,
        reason: &'static str,
    },
    /// A device file, FIFO or socket.
    #[error("entry {entry:?}: {kind} entries are not allowed")]
    SpecialFile { entry: String, kind: &'static str },
    /// The archive expands to more bytes than allowed.
    #[error("entry {entry:?}: archive expands beyond the limit of {limit} bytes")]
    TooLarge { entry: String, limit: u64 },
    /// The archive has more entries than allowed.
    #[error("archive has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    /// Writing below the destination failed.
    #[error("entry {entry:?}: cannot write {path}: {source}")]
    Write {
        entry: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// What the isolated unpacker refused the archive for (its message).
    #[error("{0}")]
    Refused(String),
    /// The isolated unpacker ran out of memory or crashed.
    #[error("{0}")]
    Stopped(String),
    /// Writing the pack failed.
    #[error("cannot store the unpacked objects: {0}")]
    Store(#[source] GitError),
    /// A bug (a panic inside the unpacker or one of its libraries).
    #[error("internal error while unpacking: {0}")]
    Internal(String),
}

fn entry_suffix(entry: &Option<String>) -> String {
    match entry {
        Some(name) => format!(" at entry {name:?}"),
        None => String::new(),
    }
}

/// Unpacks `archive` (of kind `format`) into a pack written in `scratch`,
/// an existing directory, with objects compressed at zlib level
/// `compression`. Blocking (it uses a second thread for the packing); run it
/// on a blocking thread. On error, `scratch` may hold partial files; the
/// caller discards it.
pub fn unpack(
    archive: &Path,
    format: ArchiveFormat,
    scratch: &Path,
    limits: &Limits,
    compression: u32,
) -> Result<Unpacked, UnpackError> {
    match std::fs::metadata(scratch) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(UnpackError::Destination {
                path: scratch.to_path_buf(),
                reason: "not a directory".to_string(),
            })
        }
        Err(err) => {
            return Err(UnpackError::Destination {
                path: scratch.to_path_buf(),
                reason: err.to_string(),
            })
        }
    }
    let run = || {
        std::thread::scope(|scope| {
            let writers = (0..packer_threads())
                .map(|i| {
                    PackWriter::create(&scratch.join(format!("incoming-{i}.pack")), compression)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(UnpackError::Store)?;
            let mut out = extract::Extractor::new(scratch, limits, Packer::spawn(scope, writers));
            match format {
                ArchiveFormat::Tar => tarball::unpack(archive, &mut out)?,
                ArchiveFormat::Zip => zipfile::unpack(archive, &mut out)?,
            }
            out.finish()
        })
    };
    // The parsers are third-party code fed with untrusted bytes: a panic in
    // them must not take the serving thread down.
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_string());
            Err(UnpackError::Internal(message))
        }
    }
}

fn open_archive(archive: &Path) -> Result<std::fs::File, UnpackError> {
    std::fs::File::open(archive).map_err(|source| UnpackError::Open {
        path: archive.to_path_buf(),
        source,
    })
}
