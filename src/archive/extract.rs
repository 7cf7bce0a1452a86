//! The writing side shared by all formats: creates entries below the
//! destination, never following a symlink, and enforces the limits.
//!
//! Every node created is recorded in a map from relative path to kind. The
//! destination starts empty and nothing else writes into it, so the map tells
//! exactly what is on disk; each directory is checked with `symlink_metadata`
//! right after it is created, and every final path component is opened with
//! `O_EXCL | O_NOFOLLOW` (or created by `mkdir`/`symlink`/`link`, which fail
//! on an existing name), so a path can never be redirected through a link.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::path::EntryPath;
use super::{Limits, UnpackError, UnpackStats};

/// What an extracted path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File,
    Symlink,
}

impl Node {
    fn describe(self) -> &'static str {
        match self {
            Node::Dir => "directory",
            Node::File => "file",
            Node::Symlink => "symlink",
        }
    }
}

/// The longest symlink text accepted (Linux's PATH_MAX, without the NUL).
pub(super) const MAX_LINK_TEXT: usize = 4095;

pub(super) struct Extractor<'a> {
    dest: PathBuf,
    limits: &'a Limits,
    nodes: HashMap<PathBuf, Node>,
    stats: UnpackStats,
    buf: Vec<u8>,
}

impl<'a> Extractor<'a> {
    pub fn new(dest: &Path, limits: &'a Limits) -> Self {
        Extractor {
            dest: dest.to_path_buf(),
            limits,
            nodes: HashMap::new(),
            stats: UnpackStats::default(),
            buf: Vec::new(),
        }
    }

    pub fn stats(&self) -> UnpackStats {
        self.stats
    }

    pub fn limits(&self) -> &Limits {
        self.limits
    }

    /// Fails early when an archive announces more entries than allowed.
    pub fn check_entry_count(&self, announced: u64) -> Result<(), UnpackError> {
        if announced > self.limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    fn count_entry(&mut self) -> Result<(), UnpackError> {
        self.stats.entries += 1;
        self.check_entry_count(self.stats.entries)
    }

    /// A directory entry. Repeating one is fine.
    pub fn directory(&mut self, path: &EntryPath) -> Result<(), UnpackError> {
        self.count_entry()?;
        if path.is_root() {
            return Ok(());
        }
        let rel = path.relative();
        match self.nodes.get(&rel) {
            Some(Node::Dir) => Ok(()),
            Some(other) => Err(UnpackError::Duplicate {
                entry: path.name.clone(),
                existing: other.describe(),
            }),
            None => {
                self.prepare_parents(path)?;
                self.make_dir(&path.name, rel)
            }
        }
    }

    /// A regular file with its content read from `data`. `declared` is the
    /// size the archive announces; the data must have exactly that length.
    pub fn file(
        &mut self,
        path: &EntryPath,
        executable: bool,
        declared: Option<u64>,
        data: &mut dyn Read,
    ) -> Result<(), UnpackError> {
        self.count_entry()?;
        if let Some(size) = declared {
            if self.stats.bytes.saturating_add(size) > self.limits.max_total_bytes {
                return Err(self.too_large(path));
            }
        }
        let (rel, full) = self.claim(path)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&full)
            .map_err(write_err(path, &full))?;
        self.nodes.insert(rel, Node::File);
        let written = self.copy(path, data, &mut file, &full)?;
        if let Some(size) = declared {
            if written != size {
                return Err(UnpackError::Corrupt {
                    entry: Some(path.name.clone()),
                    message: format!("{written} bytes of data, but the archive announces {size}"),
                });
            }
        }
        // Set explicitly, so that the umask plays no part: git only sees
        // "executable or not".
        let mode = if executable { 0o755 } else { 0o644 };
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(write_err(path, &full))
    }

    /// A symlink; its text is kept exactly, wherever it points.
    pub fn symlink(&mut self, path: &EntryPath, target: &[u8]) -> Result<(), UnpackError> {
        self.count_entry()?;
        let bad = |message: &str| UnpackError::Corrupt {
            entry: Some(path.name.clone()),
            message: message.to_string(),
        };
        if target.is_empty() {
            return Err(bad("symlink with an empty target"));
        }
        if target.contains(&0) {
            return Err(bad("symlink target contains a NUL byte"));
        }
        if target.len() > MAX_LINK_TEXT {
            return Err(bad("symlink target is too long"));
        }
        let (rel, full) = self.claim(path)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &full)
            .map_err(write_err(path, &full))?;
        self.nodes.insert(rel, Node::Symlink);
        Ok(())
    }

    /// A hard link to the regular file extracted earlier at `target`.
    pub fn hard_link(&mut self, path: &EntryPath, target: &[u8]) -> Result<(), UnpackError> {
        self.count_entry()?;
        let target_name = String::from_utf8_lossy(target).into_owned();
        let bad = |reason: &'static str| UnpackError::HardLink {
            entry: path.name.clone(),
            target: target_name.clone(),
            reason,
        };
        let target = match EntryPath::parse(target) {
            Ok(target) => target,
            Err(UnpackError::UnsafePath { reason, .. }) => return Err(bad(reason)),
            Err(err) => return Err(err),
        };
        if target.is_root() {
            return Err(bad("the target is the root directory"));
        }
        let target_rel = target.relative();
        match self.nodes.get(&target_rel) {
            Some(Node::File) => {}
            Some(Node::Dir) => return Err(bad("the target is a directory")),
            Some(Node::Symlink) => return Err(bad("the target is a symlink")),
            None => return Err(bad("the target was not extracted before")),
        }
        let source = self.dest.join(&target_rel);
        match fs::symlink_metadata(&source) {
            Ok(meta) if meta.file_type().is_file() => {}
            _ => return Err(bad("the target is not a regular file on disk")),
        }
        let (rel, full) = self.claim(path)?;
        // link(2) does not follow a symlink given as its source; the source
        // was checked to be a regular file anyway.
        fs::hard_link(&source, &full).map_err(write_err(path, &full))?;
        self.nodes.insert(rel, Node::File);
        Ok(())
    }

    /// Checks that `path` is new, creates its missing parents, and returns
    /// its relative and full path.
    fn claim(&mut self, path: &EntryPath) -> Result<(PathBuf, PathBuf), UnpackError> {
        if path.is_root() {
            return Err(UnpackError::UnsafePath {
                entry: path.name.clone(),
                reason: "the path names the destination directory itself",
            });
        }
        let rel = path.relative();
        if let Some(existing) = self.nodes.get(&rel) {
            return Err(UnpackError::Duplicate {
                entry: path.name.clone(),
                existing: existing.describe(),
            });
        }
        self.prepare_parents(path)?;
        let full = self.dest.join(&rel);
        match fs::symlink_metadata(&full) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok((rel, full)),
            Err(err) => Err(write_err(path, &full)(err)),
            Ok(_) => Err(write_err(path, &full)(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists although nothing was extracted there",
            ))),
        }
    }

    /// Makes sure every parent of `path` is a directory, creating missing ones.
    fn prepare_parents(&mut self, path: &EntryPath) -> Result<(), UnpackError> {
        for parent in path.parents() {
            match self.nodes.get(&parent) {
                Some(Node::Dir) => {}
                Some(Node::Symlink) => {
                    return Err(UnpackError::ThroughSymlink {
                        entry: path.name.clone(),
                        symlink: parent.to_string_lossy().into_owned(),
                    })
                }
                Some(Node::File) => {
                    return Err(UnpackError::NotADirectory {
                        entry: path.name.clone(),
                        parent: parent.to_string_lossy().into_owned(),
                    })
                }
                None => self.make_dir(&path.name, parent)?,
            }
        }
        Ok(())
    }

    fn make_dir(&mut self, entry: &str, rel: PathBuf) -> Result<(), UnpackError> {
        let full = self.dest.join(&rel);
        let fail = |source| UnpackError::Write {
            entry: entry.to_string(),
            path: full.clone(),
            source,
        };
        DirBuilder::new().mode(0o755).create(&full).map_err(fail)?;
        let meta = fs::symlink_metadata(&full).map_err(fail)?;
        if !meta.file_type().is_dir() {
            return Err(fail(io::Error::other("not a directory after mkdir")));
        }
        self.nodes.insert(rel, Node::Dir);
        Ok(())
    }

    /// Copies `data` into `out`, counting against the byte limit as it goes.
    fn copy(
        &mut self,
        path: &EntryPath,
        data: &mut dyn Read,
        out: &mut fs::File,
        full: &Path,
    ) -> Result<u64, UnpackError> {
        const CHUNK: usize = 64 * 1024;
        if self.buf.len() < CHUNK {
            self.buf.resize(CHUNK, 0);
        }
        let mut written = 0u64;
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => return Ok(written),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(corrupt(Some(&path.name), &err)),
            };
            if self.stats.bytes + n as u64 > self.limits.max_total_bytes {
                return Err(self.too_large(path));
            }
            out.write_all(&self.buf[..n])
                .map_err(write_err(path, full))?;
            self.stats.bytes += n as u64;
            written += n as u64;
        }
    }

    fn too_large(&self, path: &EntryPath) -> UnpackError {
        UnpackError::TooLarge {
            entry: path.name.clone(),
            limit: self.limits.max_total_bytes,
        }
    }
}

fn write_err<'p>(
    path: &'p EntryPath,
    full: &'p Path,
) -> impl FnOnce(io::Error) -> UnpackError + 'p {
    move |source| UnpackError::Write {
        entry: path.name.clone(),
        path: full.to_path_buf(),
        source,
    }
}

/// A damaged-archive error from a failed read.
pub(super) fn corrupt(entry: Option<&str>, err: &dyn std::fmt::Display) -> UnpackError {
    UnpackError::Corrupt {
        entry: entry.map(str::to_string),
        message: err.to_string(),
    }
}

/// Reads at most `max` bytes of `data` (a symlink text stored as content),
/// failing if there is more.
pub(super) fn read_link_text(
    name: &str,
    data: &mut dyn Read,
    max: usize,
) -> Result<Vec<u8>, UnpackError> {
    let mut text = Vec::new();
    data.take(max as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|err| corrupt(Some(name), &err))?;
    if text.len() > max {
        return Err(UnpackError::Corrupt {
            entry: Some(name.to_string()),
            message: "symlink target is too long".to_string(),
        });
    }
    Ok(text)
}
