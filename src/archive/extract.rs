//! The receiving side shared by all formats: checks every entry against
//! what was extracted before and against the limits, and turns the entries
//! into git objects in one pack.
//!
//! Nothing is ever created at a path an archive names: the extracted tree
//! exists only as a map from relative path to node, and file contents go
//! straight into the pack (hashed and stored by the packer thread while this
//! thread keeps decompressing). The trees are built from the map at the end.

use std::collections::HashMap;
use std::io::{self, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::packer::{BlobRef, Packer, CHUNK};
use super::path::EntryPath;
use super::{Limits, UnpackError, UnpackStats, Unpacked};
use crate::digest::{serialize_git_tree, GitTreeEntry, ObjectKind};
use crate::git::PackKind;

/// What an extracted path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File { blob: BlobRef, executable: bool },
    Symlink { blob: BlobRef },
}

impl Node {
    fn describe(self) -> &'static str {
        match self {
            Node::Dir => "directory",
            Node::File { .. } => "file",
            Node::Symlink { .. } => "symlink",
        }
    }
}

/// The longest symlink text accepted (Linux's PATH_MAX, without the NUL).
pub(super) const MAX_LINK_TEXT: usize = 4095;

pub(super) struct Extractor<'a> {
    /// Where the pack and any spool file are written.
    scratch: PathBuf,
    limits: &'a Limits,
    nodes: HashMap<PathBuf, Node>,
    stats: UnpackStats,
    packer: Packer<'a>,
}

impl<'a> Extractor<'a> {
    pub fn new(scratch: &Path, limits: &'a Limits, packer: Packer<'a>) -> Self {
        Extractor {
            scratch: scratch.to_path_buf(),
            limits,
            nodes: HashMap::new(),
            stats: UnpackStats::default(),
            packer,
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
        super::PROGRESS
            .entries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
                self.nodes.insert(rel, Node::Dir);
                Ok(())
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
        let rel = self.claim(path)?;
        let blob = match declared {
            Some(size) => self.stream_blob(path, size, data)?,
            None => self.spooled_blob(path, data)?,
        };
        self.nodes.insert(rel, Node::File { blob, executable });
        Ok(())
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
        let rel = self.claim(path)?;
        let blob = self.packer.whole(target)?;
        self.nodes.insert(rel, Node::Symlink { blob });
        Ok(())
    }

    /// A hard link to the regular file extracted earlier at `target`: the
    /// same content and mode, as a link on disk would have.
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
        let node = match self.nodes.get(&target.relative()) {
            Some(node @ Node::File { .. }) => *node,
            Some(Node::Dir) => return Err(bad("the target is a directory")),
            Some(Node::Symlink { .. }) => return Err(bad("the target is a symlink")),
            None => return Err(bad("the target was not extracted before")),
        };
        let rel = self.claim(path)?;
        self.nodes.insert(rel, node);
        Ok(())
    }

    /// Checks that `path` is new and that its parents are (or become)
    /// directories; returns its relative path.
    fn claim(&mut self, path: &EntryPath) -> Result<PathBuf, UnpackError> {
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
        Ok(rel)
    }

    /// Makes sure every parent of `path` is a directory, adding missing ones.
    fn prepare_parents(&mut self, path: &EntryPath) -> Result<(), UnpackError> {
        for parent in path.parents() {
            match self.nodes.get(&parent) {
                Some(Node::Dir) => {}
                Some(Node::Symlink { .. }) => {
                    return Err(UnpackError::ThroughSymlink {
                        entry: path.name.clone(),
                        symlink: parent.to_string_lossy().into_owned(),
                    })
                }
                Some(Node::File { .. }) => {
                    return Err(UnpackError::NotADirectory {
                        entry: path.name.clone(),
                        parent: parent.to_string_lossy().into_owned(),
                    })
                }
                None => {
                    self.nodes.insert(parent, Node::Dir);
                }
            }
        }
        Ok(())
    }

    /// Counts `n` bytes of content against the byte limit.
    fn count_bytes(&mut self, path: &EntryPath, n: usize) -> Result<(), UnpackError> {
        if self.stats.bytes + n as u64 > self.limits.max_total_bytes {
            return Err(self.too_large(path));
        }
        self.stats.bytes += n as u64;
        super::PROGRESS
            .bytes
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// A file of announced size: small ones go to the packer whole (in a
    /// batch), larger ones chunk by chunk, so memory stays bounded whatever
    /// the size. The announced size only picks the way; the length is
    /// checked either way.
    fn stream_blob(
        &mut self,
        path: &EntryPath,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<BlobRef, UnpackError> {
        let wrong = |got: u64| UnpackError::Corrupt {
            entry: Some(path.name.clone()),
            message: format!("{got} bytes of data, but the archive announces {size}"),
        };
        let read_err = |err: io::Error| corrupt(Some(&path.name), &err);
        let mut total;
        if size < CHUNK as u64 {
            // One byte more than announced is asked for, to notice excess data.
            let space = self.packer.batch_space(size as usize + 1)?;
            let n = read_full(data, space).map_err(read_err)?;
            self.count_bytes(path, n)?;
            if n as u64 == size {
                return Ok(self.packer.add_to_batch(n));
            }
            total = n as u64;
        } else {
            let blob = self.packer.begin(size)?;
            total = 0;
            while total <= size {
                let mut buf = self.packer.buffer();
                let n = read_full(data, &mut buf).map_err(read_err)?;
                if n == 0 {
                    break;
                }
                self.count_bytes(path, n)?;
                total += n as u64;
                if total <= size {
                    self.packer.chunk(&blob, buf, n)?;
                }
            }
            if total == size {
                return self.packer.end(blob);
            }
        }
        // A wrong length: count the rest for the message.
        let mut sink = vec![0; CHUNK];
        loop {
            let n = read_full(data, &mut sink).map_err(read_err)?;
            if n == 0 {
                break;
            }
            self.count_bytes(path, n)?;
            total += n as u64;
        }
        Err(wrong(total))
    }

    /// A file whose size is known only at its end (a GNU sparse file): its
    /// content goes to a spool file first.
    fn spooled_blob(
        &mut self,
        path: &EntryPath,
        data: &mut dyn Read,
    ) -> Result<BlobRef, UnpackError> {
        let spool_path = self.scratch.join("spool");
        let write = |source: io::Error| UnpackError::Write {
            entry: path.name.clone(),
            path: spool_path.clone(),
            source,
        };
        let mut spool = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&spool_path)
            .map_err(write)?;
        let mut spooled = || -> Result<BlobRef, UnpackError> {
            let mut buf = vec![0; CHUNK];
            let mut size = 0u64;
            loop {
                let n = read_full(data, &mut buf).map_err(|err| corrupt(Some(&path.name), &err))?;
                if n == 0 {
                    break;
                }
                self.count_bytes(path, n)?;
                spool.write_all(&buf[..n]).map_err(write)?;
                size += n as u64;
            }
            spool.rewind().map_err(write)?;
            // The bytes were counted once already.
            self.stats.bytes -= size;
            super::PROGRESS
                .bytes
                .fetch_sub(size, std::sync::atomic::Ordering::Relaxed);
            self.stream_blob(path, size, &mut spool)
        };
        let blob = spooled();
        let _ = std::fs::remove_file(&spool_path);
        blob
    }

    /// Ends the extraction: builds the trees bottom-up from the map and
    /// finishes the pack. Returns the root tree.
    pub fn finish(self) -> Result<Unpacked, UnpackError> {
        let packed = self.packer.finish()?;
        let blob_id = |b: BlobRef| -> [u8; 20] {
            let mut id = [0u8; 20];
            id.copy_from_slice(packed.id(b).as_bytes());
            id
        };
        let name_of = |p: &Path| {
            p.file_name()
                .map(|n| n.as_bytes().to_vec())
                .unwrap_or_default()
        };
        let mut children: HashMap<PathBuf, Vec<GitTreeEntry>> = HashMap::new();
        let mut dirs = vec![PathBuf::new()];
        for (path, node) in &self.nodes {
            let (kind, id) = match *node {
                Node::Dir => {
                    dirs.push(path.clone());
                    continue;
                }
                Node::File { blob, executable } => (ObjectKind::blob(executable), blob_id(blob)),
                Node::Symlink { blob } => (ObjectKind::Symlink, blob_id(blob)),
            };
            let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
            children.entry(parent).or_default().push(GitTreeEntry {
                name: name_of(path),
                kind,
                id,
            });
        }
        let mut writers = packed.writers;
        let trees = &mut writers[0];
        // Deepest first, so every subtree is written before its parent.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        let mut root = None;
        for dir in dirs {
            let entries = children.remove(&dir).unwrap_or_default();
            let bytes = serialize_git_tree(entries).map_err(|e| UnpackError::Corrupt {
                entry: Some(dir.to_string_lossy().into_owned()),
                message: e.to_string(),
            })?;
            let oid = trees
                .add(PackKind::Tree, &bytes)
                .map_err(UnpackError::Store)?;
            if dir.as_os_str().is_empty() {
                root = Some(oid);
                continue;
            }
            let mut id = [0u8; 20];
            id.copy_from_slice(oid.as_bytes());
            let parent = dir.parent().unwrap_or(Path::new("")).to_path_buf();
            children.entry(parent).or_default().push(GitTreeEntry {
                name: name_of(&dir),
                kind: ObjectKind::Tree,
                id,
            });
        }
        let root = root.ok_or_else(|| UnpackError::Internal("no root tree".to_string()))?;
        let mut packs = Vec::new();
        for writer in writers {
            if let Some(files) = writer.finish().map_err(UnpackError::Store)? {
                packs.push(files);
            }
        }
        Ok(Unpacked {
            root,
            stats: self.stats,
            packs,
        })
    }

    fn too_large(&self, path: &EntryPath) -> UnpackError {
        UnpackError::TooLarge {
            entry: path.name.clone(),
            limit: self.limits.max_total_bytes,
        }
    }
}

/// Reads until `buf` is full or the data ends; returns the bytes read.
fn read_full(data: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match data.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
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
