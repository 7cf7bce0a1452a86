//! The local content-addressable store of one hash mode: blobs, executables
//! and (native mode) git trees, each file named by its hex id and sharded by
//! the id's first two characters, as justbuild lays them out.
//!
//! Every object is hashed while it is written and only gets its final name
//! when the hash is what the caller expected.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::atomic::TempFile;
use crate::digest::{Digest, HashFunction, ObjectKind};

/// Errors of the local CAS.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("content hashes to {actual}, not to the announced {expected}")]
    HashMismatch { expected: String, actual: String },
    #[error("content has {actual} bytes, not the announced {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("{0}")]
    Rejected(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CasError + '_ {
    move |source| CasError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which of the three stores an object lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    File,
    Executable,
    Tree,
}

impl Store {
    fn dir_name(self) -> &'static str {
        match self {
            Store::File => "casf",
            Store::Executable => "casx",
            Store::Tree => "cast",
        }
    }

    fn mode(self) -> u32 {
        match self {
            Store::Executable => 0o555,
            _ => 0o444,
        }
    }
}

/// The local CAS of one hash mode.
#[derive(Clone, Debug)]
pub struct Cas {
    hash: HashFunction,
    root: PathBuf,
    tmp: PathBuf,
    /// The same mode's directories of older generations, youngest first:
    /// read, and what is found there copied forward into `root`.
    older: Vec<PathBuf>,
}

impl Cas {
    /// A CAS rooted at `root` (the mode's directory of a generation), staging writes in `tmp`.
    pub fn new(hash: HashFunction, root: PathBuf, tmp: PathBuf) -> Cas {
        Cas {
            hash,
            root,
            tmp,
            older: Vec::new(),
        }
    }

    /// This CAS, also reading the older generations at `older` (youngest first).
    pub fn with_older(mut self, older: Vec<PathBuf>) -> Cas {
        self.older = older;
        self
    }

    pub fn hash_function(&self) -> HashFunction {
        self.hash
    }

    /// Native trees get their own store; compatible `Directory` messages are plain blobs.
    fn store(&self, kind: ObjectKind) -> Store {
        match kind {
            ObjectKind::Executable => Store::Executable,
            ObjectKind::Tree if self.hash.is_native() => Store::Tree,
            _ => Store::File,
        }
    }

    fn path_in(&self, store: Store, hash: &str) -> PathBuf {
        path_under(&self.root, store, hash)
    }

    /// Where an object of `kind` with `hash` is (or would be) stored.
    pub fn path(&self, kind: ObjectKind, hash: &str) -> PathBuf {
        self.path_in(self.store(kind), hash)
    }

    /// Path of a stored object of `kind`, if present. A blob asked for as a plain
    /// file is also found among the executables, and vice versa (same bytes).
    pub fn find(&self, kind: ObjectKind, hash: &str) -> Option<PathBuf> {
        if self.hash.check_hex(hash).is_err() {
            return None;
        }
        let first = self.store(kind);
        let candidates: &[Store] = match first {
            Store::File => &[Store::File, Store::Executable],
            Store::Executable => &[Store::Executable, Store::File],
            Store::Tree => &[Store::Tree],
        };
        let found = candidates
            .iter()
            .map(|s| self.path_in(*s, hash))
            .find(|p| p.is_file());
        if found.is_some() || self.older.is_empty() {
            return found;
        }
        // An older generation's object is used: it moves forward, so what
        // is in use between two rotations survives both (trees with
        // everything below them, so a present tree stays complete).
        let store = candidates.iter().find(|s| {
            self.older
                .iter()
                .any(|o| path_under(o, **s, hash).is_file())
        })?;
        if kind.is_tree() {
            self.uplink_tree(hash)
        } else {
            self.uplink(*store, hash)
        }
    }

    /// The object's file in the youngest older generation that has it.
    fn find_older(&self, store: Store, hash: &str) -> Option<PathBuf> {
        self.older
            .iter()
            .map(|o| path_under(o, store, hash))
            .find(|p| p.is_file())
    }

    /// Links (or copies) one object from an older generation into this one;
    /// its path here, or the old one should that fail.
    fn uplink(&self, store: Store, hash: &str) -> Option<PathBuf> {
        let old = self.find_older(store, hash)?;
        let new = self.path_in(store, hash);
        match link_or_copy(&old, &new, &self.tmp, store.mode()) {
            Ok(()) => Some(new),
            Err(e) => {
                tracing::warn!(
                    object = hash,
                    "cannot copy forward from an older generation: {e}"
                );
                Some(old)
            }
        }
    }

    /// Copies a tree forward with every entry it names, each entry before
    /// the tree naming it; walks with a stack, so any depth works.
    fn uplink_tree(&self, root: &str) -> Option<PathBuf> {
        let tree_store = self.store(ObjectKind::Tree);
        // (tree hash, whether its entries have been taken care of)
        let mut todo = vec![(root.to_string(), false)];
        while let Some((hash, entries_done)) = todo.pop() {
            if self.path_in(tree_store, &hash).is_file() {
                continue;
            }
            if entries_done {
                self.uplink(tree_store, &hash)?;
                continue;
            }
            let old = self.find_older(tree_store, &hash)?;
            let data = fs::read(&old).ok()?;
            todo.push((hash.clone(), true));
            for (kind, entry) in self.tree_entries(&data)? {
                if kind.is_tree() {
                    todo.push((entry, false));
                } else if self.find(kind, &entry).is_none() {
                    // Not copied forward: a present tree is a complete one.
                    tracing::debug!(tree = hash, entry, "older tree is incomplete");
                    return None;
                }
            }
        }
        Some(self.path_in(tree_store, root))
    }

    /// Entries of a tree object (git tree or `Directory`) by kind and hex id;
    /// symlink targets of git trees are blobs, those of `Directory` inline.
    fn tree_entries(&self, data: &[u8]) -> Option<Vec<(ObjectKind, String)>> {
        let children = super::trees::tree_children(self.hash, "", data).ok()?;
        Some(
            children
                .into_iter()
                .map(|(d, kind)| (kind, d.hash))
                .collect(),
        )
    }

    pub fn contains(&self, kind: ObjectKind, hash: &str) -> bool {
        self.find(kind, hash).is_some()
    }

    /// Stores in-memory content; returns its digest.
    pub fn put_bytes(&self, kind: ObjectKind, data: &[u8]) -> Result<Digest, CasError> {
        self.put_bytes_checked(kind, data, None)
    }

    /// Stores in-memory content, refusing it unless it hashes to `expected`.
    pub fn put_bytes_checked(
        &self,
        kind: ObjectKind,
        data: &[u8],
        expected: Option<&str>,
    ) -> Result<Digest, CasError> {
        let digest = self.hash.digest_bytes(kind, data);
        check_expected(expected, &digest.hash)?;
        let dest = self.path(kind, &digest.hash);
        if !dest.is_file() {
            let mut tmp = TempFile::new_in(&self.tmp).map_err(io_err(&self.tmp))?;
            tmp.write_all(data).map_err(io_err(&self.tmp))?;
            tmp.commit(&dest, self.store(kind).mode())
                .map_err(io_err(&dest))?;
        }
        Ok(digest)
    }

    /// Stores many in-memory objects, each refused unless it hashes to its
    /// expected id: those not stored yet are staged, then synced together
    /// and named in the given order (see [`super::atomic::commit_all`]), at
    /// most [`STAGED_AT_ONCE`] at a time (each holds a descriptor).
    pub fn put_many_checked(
        &self,
        items: &[(ObjectKind, &[u8], Option<&str>)],
    ) -> Vec<Result<Digest, CasError>> {
        let mut results = Vec::with_capacity(items.len());
        for chunk in items.chunks(STAGED_AT_ONCE) {
            results.extend(self.put_chunk_checked(chunk));
        }
        results
    }

    fn put_chunk_checked(
        &self,
        items: &[(ObjectKind, &[u8], Option<&str>)],
    ) -> Vec<Result<Digest, CasError>> {
        let mut results = Vec::with_capacity(items.len());
        let mut staged = Vec::new();
        let mut staged_at = Vec::new();
        let mut staging = std::collections::HashSet::new();
        for (i, (kind, data, expected)) in items.iter().enumerate() {
            let digest = self.hash.digest_bytes(*kind, data);
            if let Err(e) = check_expected(*expected, &digest.hash) {
                results.push(Err(e));
                continue;
            }
            let dest = self.path(*kind, &digest.hash);
            if !dest.is_file() && staging.insert(dest.clone()) {
                let stage = || -> io::Result<TempFile> {
                    let mut tmp = TempFile::new_in(&self.tmp)?;
                    tmp.write_all(data)?;
                    Ok(tmp)
                };
                match stage() {
                    Ok(tmp) => {
                        staged.push((tmp, dest, self.store(*kind).mode()));
                        staged_at.push(i);
                    }
                    Err(e) => {
                        results.push(Err(io_err(&self.tmp)(e)));
                        continue;
                    }
                }
            }
            results.push(Ok(digest));
        }
        if let Err(e) = super::atomic::commit_all(staged) {
            let message = e.to_string();
            for i in staged_at {
                results[i] = Err(io_err(&self.tmp)(io::Error::new(e.kind(), message.clone())));
            }
        }
        results
    }

    /// Stores `len` bytes read from `reader`, hashing them on the way (constant memory).
    pub fn put_stream(
        &self,
        kind: ObjectKind,
        len: u64,
        reader: impl Read,
        expected: Option<&str>,
    ) -> Result<Digest, CasError> {
        let is_tree = self.hash.hashes_as_tree(kind);
        // An object the store has already needs neither copy nor check.
        if let Some(hash) = expected {
            if self.hash.check_hex(hash).is_ok() && self.path(kind, hash).is_file() {
                return Ok(Digest {
                    hash: hash.to_string(),
                    size: len,
                    is_tree,
                });
            }
        }
        let mut hasher = self.hash.hasher(kind, len);
        let mut tmp = TempFile::new_in(&self.tmp).map_err(io_err(&self.tmp))?;
        let mut reader = reader.take(len);
        let mut buf = vec![0u8; 256 * 1024];
        let mut copied = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(&self.tmp)(e)),
            };
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(io_err(&self.tmp))?;
            copied += n as u64;
        }
        if copied != len {
            return Err(CasError::SizeMismatch {
                expected: len,
                actual: copied,
            });
        }
        let hash = hasher.finish_hex();
        check_expected(expected, &hash)?;
        let dest = self.path(kind, &hash);
        if !dest.is_file() {
            tmp.commit(&dest, self.store(kind).mode())
                .map_err(io_err(&dest))?;
        }
        Ok(Digest {
            hash,
            size: len,
            is_tree,
        })
    }

    /// Starts an upload of `len` bytes that arrive in pieces (e.g. a ByteStream
    /// write). With `len` unknown (`None`) the content is hashed once complete.
    pub fn begin_upload(&self, kind: ObjectKind, len: Option<u64>) -> Result<Upload, CasError> {
        Ok(Upload {
            cas: self.clone(),
            kind,
            len,
            written: 0,
            hasher: len.map(|len| self.hash.hasher(kind, len)),
            tmp: TempFile::new_in(&self.tmp).map_err(io_err(&self.tmp))?,
        })
    }

    /// Stores a file from disk as `kind`, streaming it.
    pub fn put_file(&self, kind: ObjectKind, path: &Path) -> Result<Digest, CasError> {
        let file = File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        self.put_stream(kind, len, file, None)
    }

    /// Stores a file this process owns and nobody writes any more (an
    /// action's output in its working directory, about to be removed): it
    /// is hashed where it is and hard-linked into the store, as justbuild
    /// does, instead of copied (no second inode, no copy). It becomes
    /// read-only. Across filesystems it is copied as by [`Cas::put_file`].
    pub fn adopt_file(&self, kind: ObjectKind, path: &Path) -> Result<Digest, CasError> {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::fs::PermissionsExt;
        let file = File::open(path).map_err(io_err(path))?;
        let meta = file.metadata().map_err(io_err(path))?;
        // A file with other names (an action may link anything it can
        // reach) is not the action's own: copied, never made read-only.
        if meta.nlink() != 1 {
            return self.put_file(kind, path);
        }
        let len = meta.len();
        let hex = self
            .hash
            .hash_reader(kind, len, &file)
            .map_err(io_err(path))?;
        let digest = Digest {
            hash: hex,
            size: len,
            is_tree: self.hash.hashes_as_tree(kind),
        };
        let dest = self.path(kind, &digest.hash);
        if dest.is_file() {
            return Ok(digest);
        }
        let mode = self.store(kind).mode();
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(path))?;
        // As durable as a copied object.
        file.sync_data().map_err(io_err(path))?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        match fs::hard_link(path, &dest) {
            Ok(()) => Ok(digest),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(digest),
            Err(_) => self.put_file(kind, path),
        }
    }

    /// Opens a stored object for reading.
    pub fn open(&self, kind: ObjectKind, hash: &str) -> Result<Option<File>, CasError> {
        match self.find(kind, hash) {
            Some(p) => File::open(&p).map(Some).map_err(io_err(&p)),
            None => Ok(None),
        }
    }

    /// Reads a stored object into memory (for small objects; stream large ones with `open`).
    pub fn read(&self, kind: ObjectKind, hash: &str) -> Result<Option<Vec<u8>>, CasError> {
        match self.find(kind, hash) {
            Some(p) => fs::read(&p).map(Some).map_err(io_err(&p)),
            None => Ok(None),
        }
    }
}

fn path_under(root: &Path, store: Store, hash: &str) -> PathBuf {
    let (shard, rest) = hash.split_at(2.min(hash.len()));
    root.join(store.dir_name()).join(shard).join(rest)
}

/// Puts the file `old` at `new` as well: a hard link where possible (same
/// filesystem), else an atomic copy. An existing `new` is fine.
pub(crate) fn link_or_copy(old: &Path, new: &Path, tmp: &Path, mode: u32) -> io::Result<()> {
    if let Some(parent) = new.parent() {
        fs::create_dir_all(parent)?;
    }
    match fs::hard_link(old, new) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(_) => {
            let mut tmp = TempFile::new_in(tmp)?;
            io::copy(&mut File::open(old)?, &mut tmp)?;
            tmp.commit(new, mode)
        }
    }
}

/// An object being written piece by piece; it only enters the CAS on `commit`.
pub struct Upload {
    cas: Cas,
    kind: ObjectKind,
    len: Option<u64>,
    written: u64,
    hasher: Option<crate::digest::ObjectHasher>,
    tmp: TempFile,
}

impl Upload {
    /// Bytes received so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `data`; refuses to go past the announced length.
    pub fn write(&mut self, data: &[u8]) -> Result<(), CasError> {
        let total = self.written + data.len() as u64;
        if let Some(len) = self.len.filter(|len| total > *len) {
            return Err(CasError::SizeMismatch {
                expected: len,
                actual: total,
            });
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(data);
        }
        let tmp_dir = self.cas.tmp.clone();
        self.tmp.write_all(data).map_err(io_err(&tmp_dir))?;
        self.written = total;
        Ok(())
    }

    /// Closes the staged file's descriptor until the next write: an upload
    /// that pauses (or is abandoned) holds none.
    pub fn pause(&mut self) {
        self.tmp.close();
    }

    /// Checks length and hash, runs `accept` on the staged file (e.g. the tree
    /// invariant), and only then gives the object its final name.
    pub fn commit(
        mut self,
        expected: Option<&str>,
        accept: impl FnOnce(&Path) -> Result<(), CasError>,
    ) -> Result<Digest, CasError> {
        if let Some(len) = self.len.filter(|len| *len != self.written) {
            return Err(CasError::SizeMismatch {
                expected: len,
                actual: self.written,
            });
        }
        let tmp_path = self.tmp.path().to_path_buf();
        self.tmp.flush().map_err(io_err(&tmp_path))?;
        let is_tree = self.cas.hash.hashes_as_tree(self.kind);
        let hash = match self.hasher.take() {
            Some(h) => h.finish_hex(),
            None => {
                let file = File::open(&tmp_path).map_err(io_err(&tmp_path))?;
                self.cas
                    .hash
                    .hash_reader(self.kind, self.written, file)
                    .map_err(io_err(&tmp_path))?
            }
        };
        check_expected(expected, &hash)?;
        accept(&tmp_path)?;
        let dest = self.cas.path(self.kind, &hash);
        if !dest.is_file() {
            let mode = self.cas.store(self.kind).mode();
            self.tmp.commit(&dest, mode).map_err(io_err(&dest))?;
        }
        Ok(Digest {
            hash,
            size: self.written,
            is_tree,
        })
    }
}

/// Objects [`Cas::put_many_checked`] stages (and keeps open) at once.
pub const STAGED_AT_ONCE: usize = 256;

fn check_expected(expected: Option<&str>, actual: &str) -> Result<(), CasError> {
    match expected {
        Some(e) if e != actual => Err(CasError::HashMismatch {
            expected: e.to_string(),
            actual: actual.to_string(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    /// More objects than are staged at once, duplicates and a wrong
    /// expected id among them: each answer is its own.
    #[test]
    fn many_objects_are_stored_in_chunks_each_checked() {
        let (_dir, cas) = cas(HashFunction::GitSha1);
        let n = STAGED_AT_ONCE * 2 + 7;
        let contents: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("object {}", i % (n - 3)).into_bytes())
            .collect();
        let ids: Vec<String> = contents
            .iter()
            .map(|c| HashFunction::GitSha1.hash_bytes(ObjectKind::File, c))
            .collect();
        let wrong = "0".repeat(40);
        let items: Vec<(ObjectKind, &[u8], Option<&str>)> = contents
            .iter()
            .zip(&ids)
            .enumerate()
            .map(|(i, (c, id))| {
                let expected = if i == 300 {
                    wrong.as_str()
                } else {
                    id.as_str()
                };
                (ObjectKind::File, c.as_slice(), Some(expected))
            })
            .collect();
        let results = cas.put_many_checked(&items);
        assert_eq!(results.len(), n);
        for (i, r) in results.iter().enumerate() {
            match i {
                300 => assert!(matches!(r, Err(CasError::HashMismatch { .. })), "{r:?}"),
                _ => {
                    assert_eq!(r.as_ref().unwrap().hash, ids[i]);
                    assert_eq!(
                        cas.read(ObjectKind::File, &ids[i]).unwrap().unwrap(),
                        contents[i]
                    );
                }
            }
        }
    }

    fn cas(hf: HashFunction) -> (tempfile::TempDir, Cas) {
        let dir = tempfile::tempdir().unwrap();
        let c = Cas::new(hf, dir.path().join("store"), dir.path().join("tmp"));
        (dir, c)
    }

    /// A tree (a/b/deep, a/top, x, an executable) in an older generation
    /// only; a CAS whose generation 0 is empty finds it and moves it up,
    /// everything below it first.
    #[test]
    fn older_generations_are_read_and_copied_forward_deeply() {
        for hf in [HashFunction::GitSha1, HashFunction::Sha256] {
            let dir = tempfile::tempdir().unwrap();
            let (old_root, new_root) = (dir.path().join("gen1"), dir.path().join("gen0"));
            let tmp = dir.path().join("tmp");
            let old = Cas::new(hf, old_root.clone(), tmp.clone());
            let src = dir.path().join("src");
            std::fs::create_dir_all(src.join("a/b")).unwrap();
            std::fs::write(src.join("a/b/deep"), "deep").unwrap();
            std::fs::write(src.join("a/top"), "top").unwrap();
            std::fs::write(src.join("x"), "x").unwrap();
            std::fs::write(src.join("run"), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(src.join("run"), fs::Permissions::from_mode(0o755)).unwrap();
            let root = crate::storage::trees::store_directory(&old, &src)
                .unwrap()
                .root;
            let blob = old.put_bytes(ObjectKind::File, b"loose").unwrap();

            let new = Cas::new(hf, new_root.clone(), tmp).with_older(vec![old_root.clone()]);
            let plain = Cas::new(hf, new_root.clone(), dir.path().join("tmp"));
            assert!(!plain.contains(ObjectKind::Tree, &root.hash));
            assert!(new.contains(ObjectKind::Tree, &root.hash), "{hf:?}");
            // Now generation 0 alone has the tree and everything below it.
            let nodes = crate::storage::trees::read_tree(&plain, &root)
                .unwrap()
                .unwrap();
            assert_eq!(nodes.len(), 3, "{hf:?}");
            let mut todo = vec![root.clone()];
            let mut blobs = 0;
            while let Some(t) = todo.pop() {
                for n in crate::storage::trees::read_tree(&plain, &t)
                    .unwrap()
                    .unwrap()
                {
                    match n {
                        crate::storage::trees::Node::Dir { digest, .. } => todo.push(digest),
                        crate::storage::trees::Node::File {
                            digest, executable, ..
                        } => {
                            assert!(plain.contains(ObjectKind::blob(executable), &digest.hash));
                            blobs += 1;
                        }
                        crate::storage::trees::Node::Symlink { .. } => {}
                    }
                }
            }
            assert_eq!(blobs, 4, "{hf:?}");
            // Blobs move up alone; what no generation has stays missing.
            assert_eq!(
                new.read(ObjectKind::File, &blob.hash).unwrap().unwrap(),
                b"loose"
            );
            assert!(plain.contains(ObjectKind::File, &blob.hash));
            let absent = hf.digest_bytes(ObjectKind::File, b"absent");
            assert!(!new.contains(ObjectKind::File, &absent.hash));
        }
    }

    fn tmp_is_empty(dir: &tempfile::TempDir) -> bool {
        fs::read_dir(dir.path().join("tmp")).map_or(true, |mut d| d.next().is_none())
    }

    #[test]
    fn adopted_files_are_linked_not_copied() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        for hf in [HashFunction::GitSha1, HashFunction::Sha256] {
            let (dir, cas) = cas(hf);
            let out = dir.path().join("out");
            fs::write(&out, b"an output").unwrap();
            let d = cas.adopt_file(ObjectKind::File, &out).unwrap();
            assert_eq!(d, cas.put_bytes(ObjectKind::File, b"an output").unwrap());
            let stored = cas.path(ObjectKind::File, &d.hash);
            let (a, b) = (fs::metadata(&out).unwrap(), fs::metadata(&stored).unwrap());
            assert_eq!(a.ino(), b.ino(), "{hf:?}: one inode");
            assert_eq!(b.permissions().mode() & 0o777, 0o444);
            // An object already stored is left as it is; the file too.
            let again = dir.path().join("again");
            fs::write(&again, b"an output").unwrap();
            assert_eq!(cas.adopt_file(ObjectKind::File, &again).unwrap(), d);
            assert_ne!(fs::metadata(&again).unwrap().ino(), b.ino());
            // A file with another name elsewhere is copied, and left writable.
            let theirs = dir.path().join("theirs");
            fs::write(&theirs, b"not the action's").unwrap();
            fs::set_permissions(&theirs, fs::Permissions::from_mode(0o644)).unwrap();
            let linked = dir.path().join("linked");
            fs::hard_link(&theirs, &linked).unwrap();
            let d = cas.adopt_file(ObjectKind::File, &linked).unwrap();
            let stored = fs::metadata(cas.path(ObjectKind::File, &d.hash)).unwrap();
            assert_ne!(stored.ino(), fs::metadata(&theirs).unwrap().ino());
            let mode = fs::metadata(&theirs).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
            assert!(tmp_is_empty(&dir));
        }
    }

    #[test]
    fn put_and_read_in_both_modes() {
        for hf in [HashFunction::GitSha1, HashFunction::Sha256] {
            let (dir, c) = cas(hf);
            let d = c.put_bytes(ObjectKind::File, b"hello\n").unwrap();
            assert_eq!(d.hash, hf.hash_bytes(ObjectKind::File, b"hello\n"));
            assert_eq!(d.size, 6);
            assert_eq!(
                c.read(ObjectKind::File, &d.hash).unwrap().unwrap(),
                b"hello\n"
            );
            let p = c.path(ObjectKind::File, &d.hash);
            assert!(p.ends_with(format!("casf/{}/{}", &d.hash[..2], &d.hash[2..])));
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o444
            );
            assert!(tmp_is_empty(&dir));
        }
    }

    #[test]
    fn executables_and_trees_have_their_own_stores() {
        let (_dir, c) = cas(HashFunction::GitSha1);
        let x = c.put_bytes(ObjectKind::Executable, b"#!/bin/sh\n").unwrap();
        let px = c.find(ObjectKind::Executable, &x.hash).unwrap();
        assert!(px.to_string_lossy().contains("/casx/"));
        assert_eq!(
            fs::metadata(&px).unwrap().permissions().mode() & 0o777,
            0o555
        );
        // Asked for as a plain file, the same bytes are found among the executables.
        assert!(c.contains(ObjectKind::File, &x.hash));
        let t = c.put_bytes(ObjectKind::Tree, b"").unwrap();
        assert!(t.is_tree);
        assert_eq!(t.hash, "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
        assert!(c
            .find(ObjectKind::Tree, &t.hash)
            .unwrap()
            .to_string_lossy()
            .contains("/cast/"));
        assert!(!c.contains(ObjectKind::File, &t.hash));
        // Compatible mode keeps Directory messages among the blobs.
        let (_dir, c) = cas(HashFunction::Sha256);
        let t = c.put_bytes(ObjectKind::Tree, b"dir").unwrap();
        assert!(!t.is_tree);
        assert!(c.contains(ObjectKind::File, &t.hash));
    }

    #[test]
    fn wrong_hash_or_size_stores_nothing() {
        let (dir, c) = cas(HashFunction::GitSha1);
        let wrong = "0".repeat(40);
        let e = c
            .put_bytes_checked(ObjectKind::File, b"abc", Some(&wrong))
            .unwrap_err();
        assert!(matches!(e, CasError::HashMismatch { .. }));
        let e = c
            .put_stream(ObjectKind::File, 3, &b"abc"[..], Some(&wrong))
            .unwrap_err();
        assert!(matches!(e, CasError::HashMismatch { .. }));
        let e = c
            .put_stream(ObjectKind::File, 10, &b"abc"[..], None)
            .unwrap_err();
        assert!(matches!(
            e,
            CasError::SizeMismatch {
                expected: 10,
                actual: 3
            }
        ));
        assert!(!c.contains(
            ObjectKind::File,
            &HashFunction::GitSha1.hash_bytes(ObjectKind::File, b"abc")
        ));
        assert!(!dir.path().join("store").exists());
        assert!(tmp_is_empty(&dir));
    }

    #[test]
    fn streamed_put_matches_in_memory_put() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        for hf in [HashFunction::GitSha1, HashFunction::Sha256] {
            let (_dir, c) = cas(hf);
            let d = c
                .put_stream(ObjectKind::File, data.len() as u64, &data[..], None)
                .unwrap();
            assert_eq!(d, hf.digest_bytes(ObjectKind::File, &data));
            let mut f = c.open(ObjectKind::File, &d.hash).unwrap().unwrap();
            let mut back = Vec::new();
            f.read_to_end(&mut back).unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn piecewise_upload_checks_length_and_hash() {
        let (dir, c) = cas(HashFunction::GitSha1);
        let data = b"hello world";
        let want = HashFunction::GitSha1.hash_bytes(ObjectKind::File, data);
        let mut up = c
            .begin_upload(ObjectKind::File, Some(data.len() as u64))
            .unwrap();
        up.write(&data[..5]).unwrap();
        up.write(&data[5..]).unwrap();
        assert!(up.write(b"!").is_err(), "past the announced length");
        let d = up.commit(Some(&want), |_| Ok(())).unwrap();
        assert_eq!(d.hash, want);
        assert!(c.contains(ObjectKind::File, &want));
        // Short, wrong or refused uploads leave nothing behind.
        let mut up = c.begin_upload(ObjectKind::File, Some(3)).unwrap();
        up.write(b"ab").unwrap();
        assert!(matches!(
            up.commit(None, |_| Ok(())),
            Err(CasError::SizeMismatch { .. })
        ));
        let mut up = c.begin_upload(ObjectKind::File, Some(3)).unwrap();
        up.write(b"abc").unwrap();
        assert!(matches!(
            up.commit(Some(&want), |_| Ok(())),
            Err(CasError::HashMismatch { .. })
        ));
        let mut up = c.begin_upload(ObjectKind::File, Some(3)).unwrap();
        up.write(b"xyz").unwrap();
        let refused = up.commit(None, |_| Err(CasError::Rejected("refused".into())));
        assert!(refused.is_err());
        assert!(!c.contains(
            ObjectKind::File,
            &HashFunction::GitSha1.hash_bytes(ObjectKind::File, b"xyz")
        ));
        // Unknown length: hashed once complete.
        let mut up = c.begin_upload(ObjectKind::File, None).unwrap();
        up.write(data).unwrap();
        assert_eq!(
            up.commit(Some(&want), |_| Ok(())).unwrap().size,
            data.len() as u64
        );
        assert!(tmp_is_empty(&dir));
    }

    #[test]
    fn unknown_and_malformed_ids_are_absent() {
        let (_dir, c) = cas(HashFunction::GitSha1);
        assert!(c.read(ObjectKind::File, &"a".repeat(40)).unwrap().is_none());
        assert!(c
            .read(ObjectKind::File, "../../etc/passwd")
            .unwrap()
            .is_none());
        assert!(c.find(ObjectKind::File, "").is_none());
    }

    #[test]
    fn streaming_a_stored_object_with_its_id_reads_nothing() {
        let (_dir, c) = cas(HashFunction::Sha256);
        let d = c.put_bytes(ObjectKind::File, b"stored").unwrap();
        // The reader would fail if it were touched.
        struct Untouchable;
        impl Read for Untouchable {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("read"))
            }
        }
        let again = c
            .put_stream(ObjectKind::File, 6, Untouchable, Some(&d.hash))
            .unwrap();
        assert_eq!(again.hash, d.hash);
        assert!(c
            .put_stream(ObjectKind::File, 6, Untouchable, None)
            .is_err());
    }

    #[test]
    fn concurrent_writers_of_the_same_object() {
        let (dir, c) = cas(HashFunction::GitSha1);
        let c = Arc::new(c);
        let data: Arc<Vec<u8>> = Arc::new((0..300_000u32).map(|i| (i % 13) as u8).collect());
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (c, data) = (c.clone(), data.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        if i % 2 == 0 {
                            c.put_bytes(ObjectKind::File, &data).unwrap();
                        } else {
                            c.put_stream(ObjectKind::File, data.len() as u64, &data[..], None)
                                .unwrap();
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let hash = HashFunction::GitSha1.hash_bytes(ObjectKind::File, &data);
        assert_eq!(c.read(ObjectKind::File, &hash).unwrap().unwrap(), *data);
        assert!(tmp_is_empty(&dir));
    }

    #[test]
    fn readers_never_see_a_partial_object() {
        // A reader polling the final name sees either nothing or the whole object.
        let (_dir, c) = cas(HashFunction::Sha256);
        let c = Arc::new(c);
        let data: Arc<Vec<u8>> = Arc::new(vec![42u8; 4 << 20]);
        let hash = HashFunction::Sha256.hash_bytes(ObjectKind::File, &data);
        let reader = {
            let (c, hash, len) = (c.clone(), hash.clone(), data.len());
            std::thread::spawn(move || loop {
                if let Some(bytes) = c.read(ObjectKind::File, &hash).unwrap() {
                    assert_eq!(bytes.len(), len);
                    break;
                }
            })
        };
        c.put_bytes(ObjectKind::File, &data).unwrap();
        reader.join().unwrap();
    }
}
