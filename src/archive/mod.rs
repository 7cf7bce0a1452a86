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
//! What ends up in the destination is what the later git import needs:
//! regular files (mode 0644, or 0755 when the archive gave the entry any
//! execute bit), directories (also empty ones), symlinks with their link text
//! exactly as stored (whether the link points inside the tree is decided later,
//! by the symlink resolution of the caller), and hard links to files extracted
//! before. Ownership and time stamps are not restored; git ignores them.
//!
//! Anything that could write outside the destination, or that has no git
//! representation, is an [`UnpackError`]: absolute paths, `..` components,
//! paths leading through an extracted symlink, hard links to anything but an
//! earlier regular file, device files, FIFOs and sockets, the same file path
//! twice, and archives expanding beyond the [`Limits`]. The caller discards the
//! destination directory on error.

mod extract;
mod isolated;
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

/// How archives are unpacked: the bounds, and whether in a child process
/// (see [`Isolation`]; without it, in this process).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unpacking {
    pub limits: Limits,
    pub isolation: Option<Isolation>,
}

impl Unpacking {
    /// Unpacks `archive` into `dest` as [`unpack`] does, isolated if configured.
    pub fn unpack(
        &self,
        archive: &Path,
        format: ArchiveFormat,
        dest: &Path,
    ) -> Result<UnpackStats, UnpackError> {
        match &self.isolation {
            Some(isolation) => unpack_isolated(isolation, archive, format, dest, &self.limits),
            None => unpack(archive, format, dest, &self.limits),
        }
    }
}

/// What an unpack produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries extracted: files, directories, symlinks and hard links.
    pub entries: u64,
    /// Bytes of file content written.
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

/// Unpacks `archive` (of kind `format`) into `dest`, an existing empty
/// directory. Blocking; run it on a blocking thread. On error, `dest` may hold
/// a partial extraction, never anything outside it; the caller discards it.
pub fn unpack(
    archive: &Path,
    format: ArchiveFormat,
    dest: &Path,
    limits: &Limits,
) -> Result<UnpackStats, UnpackError> {
    match std::fs::metadata(dest) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(UnpackError::Destination {
                path: dest.to_path_buf(),
                reason: "not a directory".to_string(),
            })
        }
        Err(err) => {
            return Err(UnpackError::Destination {
                path: dest.to_path_buf(),
                reason: err.to_string(),
            })
        }
    }
    let run = || {
        let mut out = extract::Extractor::new(dest, limits);
        match format {
            ArchiveFormat::Tar => tarball::unpack(archive, &mut out)?,
            ArchiveFormat::Zip => zipfile::unpack(archive, &mut out)?,
        }
        Ok(out.stats())
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
