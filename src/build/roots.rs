//! Reading a repository root the way `just` reads it while analysing:
//! a git tree (in a repository on disk) or a directory, each optionally
//! "ignore-special" (every entry that is not a file, an executable or a
//! directory is treated as missing, symlinks included).
//!
//! Validity rules of the reference, kept here:
//! * a symlink counts only if its target is non-upwards (relative and not
//!   leaving its directory lexically); in a git root an invalid symlink makes
//!   the directories containing it (at any depth) unreadable;
//! * in a directory root, entries that are neither file, executable,
//!   directory nor (non-upwards) symlink make a directory unreadable, unless
//!   the root ignores special entries;
//! * a file is executable if any execute bit is set;
//! * a directory of a git root that is read unmodified (not ignore-special)
//!   can be taken as a known tree.
//!
//! Paths are `/`-separated, relative to the root, lexically normalised
//! before use (`""` and `"."` are the root).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use git2::{Oid, Repository};

use crate::build::artifact::ArtifactDescription;
use crate::build::repo_config::FileRoot;
use crate::digest::{HashFunction, ObjectKind};

/// Errors reading a root.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("cannot read from absent root {0}")]
    Absent(String),
    #[error("root {0} has to be resolved to a git tree before analysis")]
    Unresolved(String),
    #[error("cannot open git repository {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("git tree {0} not found in repository {1}")]
    MissingTree(String, PathBuf),
    #[error("invalid git tree id {0:?}")]
    BadTreeId(String),
    #[error("git error: {0}")]
    Git(#[from] git2::Error),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Failed to read directory {dir}: {message}")]
    InvalidDirectory { dir: String, message: String },
    #[error(transparent)]
    TooDeep(#[from] crate::tree_walk::TooDeep),
}

/// One entry of a directory: its kind, and for git roots its object id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub kind: ObjectKind,
    pub git_id: Option<String>,
}

/// The valid entries of one directory, by name (bytewise order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryEntries {
    pub entries: BTreeMap<String, DirEntry>,
    /// `(tree id, size)` when the directory is an unmodified git tree.
    pub known_tree: Option<(String, u64)>,
}

impl DirectoryEntries {
    fn names_of(&self, kind: ObjectKind) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(move |(_, e)| e.kind == kind)
            .map(|(n, _)| n.as_str())
    }

    /// Files and executables.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(e.kind, ObjectKind::File | ObjectKind::Executable))
            .map(|(n, _)| n.as_str())
    }

    pub fn symlinks(&self) -> impl Iterator<Item = &str> {
        self.names_of(ObjectKind::Symlink)
    }

    pub fn directories(&self) -> impl Iterator<Item = &str> {
        self.names_of(ObjectKind::Tree)
    }

    /// A file, executable or symlink of that name.
    pub fn contains_blob(&self, name: &str) -> bool {
        self.entries.get(name).is_some_and(|e| !e.kind.is_tree())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Files and symlinks whose names match `pattern` (POSIX `fnmatch`
    /// without flags: `*` matches a leading dot), files first, each group
    /// in name order, as the reference's GLOB collects them.
    pub fn glob(&self, pattern: &str) -> Vec<(&str, ObjectKind)> {
        let mut out: Vec<(&str, ObjectKind)> = Vec::new();
        for name in self.files() {
            if fnmatch(pattern, name) {
                out.push((name, self.entries[name].kind));
            }
        }
        for name in self.symlinks() {
            if fnmatch(pattern, name) {
                out.push((name, ObjectKind::Symlink));
            }
        }
        out
    }
}

/// POSIX `fnmatch(pattern, name, 0)`.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let (Ok(p), Ok(n)) = (
        std::ffi::CString::new(pattern),
        std::ffi::CString::new(name),
    ) else {
        return false;
    };
    // SAFETY: both are valid NUL-terminated strings that outlive the call.
    unsafe { libc::fnmatch(p.as_ptr(), n.as_ptr(), 0) == 0 }
}

/// Lexically normalised components of a relative path (`..` resolved
/// against earlier components, leading `..` kept).
pub fn normal_components(path: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&p) if p != ".." => {
                    parts.pop();
                }
                _ => parts.push(".."),
            },
            c => parts.push(c),
        }
    }
    parts
}

/// Lexical normal form of a path (`"."` for the empty path), as
/// `std::filesystem::path::lexically_normal` gives it for relative paths.
pub fn normal_path(path: &str) -> String {
    let parts = normal_components(path);
    let prefix = if path.starts_with('/') { "/" } else { "" };
    if parts.is_empty() {
        return if prefix.is_empty() {
            ".".into()
        } else {
            "/".into()
        };
    }
    format!("{prefix}{}", parts.join("/"))
}

/// A symlink target that stays inside: relative and not leading upwards.
pub fn is_non_upwards(target: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(target) else {
        // Non-UTF-8 targets cannot be checked lexically here; treat them as
        // plain relative names if they contain no separators going up.
        return !target.starts_with(b"/") && !target.split(|b| *b == b'/').any(|c| c == b"..");
    };
    if s.starts_with('/') {
        return false;
    }
    normal_components(s).first() != Some(&"..")
}

#[derive(Clone)]
struct GitDirEntry {
    /// `None` for special entries (gitlinks).
    kind: Option<ObjectKind>,
    oid: Oid,
}

type GitDir = Arc<BTreeMap<String, GitDirEntry>>;

struct GitRoot {
    path: PathBuf,
    repo: Mutex<Repository>,
    root: Oid,
    ignore_special: bool,
    dirs: Mutex<HashMap<Oid, GitDir>>,
    /// Trees known to contain only valid symlinks (at any depth).
    valid: Mutex<HashMap<Oid, bool>>,
}

enum RootKind {
    Directory { path: PathBuf, ignore_special: bool },
    Git(GitRoot),
    Absent(String),
}

/// A root opened for reading. Shareable between threads.
pub struct SourceRoot {
    kind: RootKind,
}

impl std::fmt::Debug for SourceRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            RootKind::Directory { path, .. } => write!(f, "SourceRoot(file {})", path.display()),
            RootKind::Git(g) => {
                write!(f, "SourceRoot(git tree {} in {})", g.root, g.path.display())
            }
            RootKind::Absent(t) => write!(f, "SourceRoot(absent {t})"),
        }
    }
}

/// A looked-up path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Missing,
    /// A special entry (not file, executable, directory or symlink).
    Special,
    Entry {
        kind: ObjectKind,
        git_id: Option<String>,
    },
}

impl SourceRoot {
    /// Opens a root; `computed` and `tree structure` roots must have been
    /// resolved first.
    pub fn open(root: &FileRoot) -> Result<SourceRoot, RootError> {
        let kind = match root {
            FileRoot::Directory {
                path,
                ignore_special,
            } => RootKind::Directory {
                path: path.clone(),
                ignore_special: *ignore_special,
            },
            FileRoot::GitTree {
                tree,
                repository: None,
                ..
            } => RootKind::Absent(tree.clone()),
            FileRoot::GitTree {
                tree,
                repository: Some(path),
                ignore_special,
            } => {
                let repo = crate::git::open_exact(path).map_err(|e| RootError::Open {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                let oid =
                    crate::git::parse_oid(tree).map_err(|_| RootError::BadTreeId(tree.clone()))?;
                match repo.find_tree(oid) {
                    Ok(_) => {}
                    Err(e) if e.code() == git2::ErrorCode::NotFound => {
                        return Err(RootError::MissingTree(tree.clone(), path.clone()))
                    }
                    Err(e) => return Err(e.into()),
                }
                RootKind::Git(GitRoot {
                    path: path.clone(),
                    repo: Mutex::new(repo),
                    root: oid,
                    ignore_special: *ignore_special,
                    dirs: Mutex::new(HashMap::new()),
                    valid: Mutex::new(HashMap::new()),
                })
            }
            FileRoot::Computed { .. } | FileRoot::TreeStructure { .. } => {
                return Err(RootError::Unresolved(format!("{root:?}")))
            }
        };
        Ok(SourceRoot { kind })
    }

    pub fn is_absent(&self) -> bool {
        matches!(self.kind, RootKind::Absent(_))
    }

    /// The tree id of an absent root.
    pub fn absent_tree(&self) -> Option<&str> {
        match &self.kind {
            RootKind::Absent(t) => Some(t),
            _ => None,
        }
    }

    pub fn is_git(&self) -> bool {
        matches!(self.kind, RootKind::Git(_))
    }

    pub fn ignore_special(&self) -> bool {
        match &self.kind {
            RootKind::Directory { ignore_special, .. } => *ignore_special,
            RootKind::Git(g) => g.ignore_special,
            RootKind::Absent(_) => false,
        }
    }

    /// What is at `path`. Symlinks are reported as such, valid or not;
    /// in ignore-special roots they (and special entries) are missing.
    pub fn lookup(&self, path: &str) -> Result<Lookup, RootError> {
        match &self.kind {
            RootKind::Absent(t) => Err(RootError::Absent(t.clone())),
            RootKind::Git(g) => g.lookup(path),
            RootKind::Directory {
                path: root,
                ignore_special,
            } => {
                let full = join(root, path);
                let meta = match std::fs::symlink_metadata(&full) {
                    Ok(m) => m,
                    Err(_) => return Ok(Lookup::Missing),
                };
                let kind = fs_kind(&meta);
                Ok(match kind {
                    Some(ObjectKind::Symlink) if *ignore_special => Lookup::Missing,
                    Some(kind) => Lookup::Entry { kind, git_id: None },
                    None if *ignore_special => Lookup::Missing,
                    None => Lookup::Special,
                })
            }
        }
    }

    /// Exists as a valid entry (special entries only outside ignore-special
    /// directory roots, as the reference's `Exists`).
    pub fn exists(&self, path: &str) -> Result<bool, RootError> {
        Ok(match self.lookup(path)? {
            Lookup::Missing => false,
            Lookup::Special => !self.is_git(),
            Lookup::Entry {
                kind: ObjectKind::Symlink,
                ..
            } => !self.is_git() || self.is_symlink(path)?,
            Lookup::Entry { .. } => true,
        })
    }

    /// A file or executable.
    pub fn is_file(&self, path: &str) -> Result<bool, RootError> {
        Ok(matches!(
            self.lookup(path)?,
            Lookup::Entry {
                kind: ObjectKind::File | ObjectKind::Executable,
                ..
            }
        ))
    }

    /// A valid (non-upwards) symlink; always false in ignore-special roots.
    pub fn is_symlink(&self, path: &str) -> Result<bool, RootError> {
        if self.ignore_special() {
            return Ok(false);
        }
        match self.lookup(path)? {
            Lookup::Entry {
                kind: ObjectKind::Symlink,
                ..
            } => Ok(self.read_content(path)?.is_some()),
            _ => Ok(false),
        }
    }

    /// A file, executable or valid symlink.
    pub fn is_blob(&self, path: &str) -> Result<bool, RootError> {
        Ok(self.is_file(path)? || self.is_symlink(path)?)
    }

    pub fn is_directory(&self, path: &str) -> Result<bool, RootError> {
        if normal_components(path).is_empty() && !self.is_absent() {
            return Ok(match &self.kind {
                RootKind::Directory { path: root, .. } => root.is_dir(),
                _ => true,
            });
        }
        Ok(matches!(
            self.lookup(path)?,
            Lookup::Entry {
                kind: ObjectKind::Tree,
                ..
            }
        ))
    }

    /// Content of a file, or target of a valid symlink; `None` otherwise.
    pub fn read_content(&self, path: &str) -> Result<Option<Vec<u8>>, RootError> {
        match &self.kind {
            RootKind::Absent(t) => Err(RootError::Absent(t.clone())),
            RootKind::Git(g) => match g.lookup(path)? {
                Lookup::Entry {
                    kind,
                    git_id: Some(id),
                } if !kind.is_tree() => {
                    let data = g.read_blob(Oid::from_str(&id)?)?;
                    if kind == ObjectKind::Symlink && !is_non_upwards(&data) {
                        return Ok(None);
                    }
                    Ok(Some(data))
                }
                _ => Ok(None),
            },
            RootKind::Directory {
                path: root,
                ignore_special,
            } => {
                let full = join(root, path);
                let Ok(meta) = std::fs::symlink_metadata(&full) else {
                    return Ok(None);
                };
                match fs_kind(&meta) {
                    Some(ObjectKind::File | ObjectKind::Executable) => std::fs::read(&full)
                        .map(Some)
                        .map_err(|source| RootError::Io { path: full, source }),
                    Some(ObjectKind::Symlink) if !ignore_special => {
                        let target = read_link_bytes(&full)?;
                        Ok(is_non_upwards(&target).then_some(target))
                    }
                    _ => Ok(None),
                }
            }
        }
    }

    /// The entries of directory `dir`, as the reference's directory map
    /// reads them: a path that is not a directory gives no entries; a
    /// directory with invalid entries is an error.
    pub fn directory_entries(&self, dir: &str) -> Result<DirectoryEntries, RootError> {
        if !self.is_directory(dir)? {
            return Ok(DirectoryEntries::default());
        }
        self.read_directory(dir)
    }

    /// Reads directory `dir` (which must be one).
    pub fn read_directory(&self, dir: &str) -> Result<DirectoryEntries, RootError> {
        match &self.kind {
            RootKind::Absent(t) => Err(RootError::Absent(t.clone())),
            RootKind::Git(g) => g.read_directory(dir),
            RootKind::Directory {
                path: root,
                ignore_special,
            } => {
                let full = join(root, dir);
                let bad = |message: String| RootError::InvalidDirectory {
                    dir: dir.to_string(),
                    message,
                };
                let rd = std::fs::read_dir(&full).map_err(|e| bad(e.to_string()))?;
                let mut entries = BTreeMap::new();
                for item in rd {
                    let item = item.map_err(|e| bad(e.to_string()))?;
                    let name = item.file_name().to_string_lossy().into_owned();
                    let meta = item.metadata().map_err(|e| bad(e.to_string()))?;
                    let kind = match fs_kind(&meta) {
                        Some(ObjectKind::Symlink) if *ignore_special => continue,
                        Some(ObjectKind::Symlink) => {
                            if !is_non_upwards(&read_link_bytes(&item.path())?) {
                                return Err(bad(format!(
                                    "unsupported upwards symlink dir entry {}",
                                    item.path().display()
                                )));
                            }
                            ObjectKind::Symlink
                        }
                        Some(k) => k,
                        None if *ignore_special => continue,
                        None => {
                            return Err(bad(format!(
                                "unsupported type for dir entry {}",
                                item.path().display()
                            )))
                        }
                    };
                    entries.insert(name, DirEntry { kind, git_id: None });
                }
                Ok(DirectoryEntries {
                    entries,
                    known_tree: None,
                })
            }
        }
    }

    /// The artifact of blob `path` (file, executable or valid symlink):
    /// `KNOWN` with the git blob id for git roots (re-hashed to SHA-256 in
    /// compatible mode, then without repository hint), `LOCAL` for directory
    /// roots (not checked). `None` when a git root has no such blob.
    pub fn to_artifact(
        &self,
        path: &str,
        repository: &str,
        hash: HashFunction,
    ) -> Result<Option<ArtifactDescription>, RootError> {
        match &self.kind {
            RootKind::Absent(_) => Ok(None),
            RootKind::Directory { .. } => Ok(Some(ArtifactDescription::local(path, repository))),
            RootKind::Git(g) => {
                let (kind, id) = match g.lookup(path)? {
                    Lookup::Entry {
                        kind,
                        git_id: Some(id),
                    } if !kind.is_tree() => (kind, id),
                    _ => return Ok(None),
                };
                let oid = Oid::from_str(&id)?;
                let need_content = kind == ObjectKind::Symlink || !hash.is_native();
                if need_content {
                    let data = g.read_blob(oid)?;
                    if kind == ObjectKind::Symlink && !is_non_upwards(&data) {
                        return Ok(None);
                    }
                    if !hash.is_native() {
                        let id = hash.hash_bytes(ObjectKind::File, &data);
                        return Ok(Some(ArtifactDescription::known(
                            id,
                            data.len() as u64,
                            kind,
                        )));
                    }
                    return Ok(Some(
                        ArtifactDescription::known(id, data.len() as u64, kind)
                            .with_repository(repository),
                    ));
                }
                let size = g.blob_size(oid)?;
                Ok(Some(
                    ArtifactDescription::known(id, size, kind).with_repository(repository),
                ))
            }
        }
    }
}

fn join(root: &Path, path: &str) -> PathBuf {
    let mut full = root.to_path_buf();
    for c in normal_components(path) {
        full.push(c);
    }
    full
}

fn fs_kind(meta: &std::fs::Metadata) -> Option<ObjectKind> {
    use std::os::unix::fs::PermissionsExt;
    let ft = meta.file_type();
    if ft.is_file() {
        Some(ObjectKind::blob(meta.permissions().mode() & 0o111 != 0))
    } else if ft.is_dir() {
        Some(ObjectKind::Tree)
    } else if ft.is_symlink() {
        Some(ObjectKind::Symlink)
    } else {
        None
    }
}

fn read_link_bytes(path: &Path) -> Result<Vec<u8>, RootError> {
    use std::os::unix::ffi::OsStrExt;
    std::fs::read_link(path)
        .map(|t| t.as_os_str().as_bytes().to_vec())
        .map_err(|source| RootError::Io {
            path: path.to_path_buf(),
            source,
        })
}

impl GitRoot {
    fn dir(&self, oid: Oid) -> Result<GitDir, RootError> {
        if let Some(d) = self.dirs.lock().unwrap().get(&oid) {
            return Ok(d.clone());
        }
        let repo = self.repo.lock().unwrap();
        let tree = repo.find_tree(oid)?;
        let mut map = BTreeMap::new();
        for entry in tree.iter() {
            let name = String::from_utf8_lossy(entry.name_bytes()).into_owned();
            let kind = ObjectKind::from_git_mode(entry.filemode() as u32);
            let special = match kind {
                None => true,
                Some(ObjectKind::Symlink) => self.ignore_special,
                _ => false,
            };
            if special && self.ignore_special {
                continue;
            }
            map.insert(
                name,
                GitDirEntry {
                    kind,
                    oid: entry.id(),
                },
            );
        }
        drop(tree);
        drop(repo);
        let dir = Arc::new(map);
        self.dirs.lock().unwrap().insert(oid, dir.clone());
        Ok(dir)
    }

    fn read_blob(&self, oid: Oid) -> Result<Vec<u8>, RootError> {
        let repo = self.repo.lock().unwrap();
        let blob = repo.find_blob(oid)?;
        Ok(blob.content().to_vec())
    }

    fn blob_size(&self, oid: Oid) -> Result<u64, RootError> {
        let repo = self.repo.lock().unwrap();
        let (size, _) = repo.odb()?.read_header(oid)?;
        Ok(size as u64)
    }

    fn tree_size(&self, oid: Oid) -> Result<u64, RootError> {
        self.blob_size(oid)
    }

    fn lookup(&self, path: &str) -> Result<Lookup, RootError> {
        let parts = normal_components(path);
        if parts.first() == Some(&"..") {
            return Ok(Lookup::Missing);
        }
        let mut current = self.root;
        let mut result = Lookup::Entry {
            kind: ObjectKind::Tree,
            git_id: Some(self.root.to_string()),
        };
        for (i, part) in parts.iter().enumerate() {
            let dir = self.dir(current)?;
            let Some(entry) = dir.get(*part) else {
                return Ok(Lookup::Missing);
            };
            let last = i + 1 == parts.len();
            match entry.kind {
                Some(ObjectKind::Tree) => current = entry.oid,
                _ if !last => return Ok(Lookup::Missing),
                _ => {}
            }
            result = match entry.kind {
                None => Lookup::Special,
                Some(kind) => Lookup::Entry {
                    kind,
                    git_id: Some(entry.oid.to_string()),
                },
            };
        }
        Ok(result)
    }

    /// All symlinks below tree `oid` are non-upwards and there are no
    /// special entries (walked without recursion: trees may nest deeply).
    fn tree_valid(&self, oid: Oid) -> Result<bool, RootError> {
        crate::tree_walk::post_order(&mut ValidTrees { root: self }, oid)
    }

    fn read_directory(&self, dir: &str) -> Result<DirectoryEntries, RootError> {
        let oid = match self.lookup(dir)? {
            Lookup::Entry {
                kind: ObjectKind::Tree,
                git_id: Some(id),
            } => Oid::from_str(&id)?,
            _ => {
                return Err(RootError::InvalidDirectory {
                    dir: dir.to_string(),
                    message: "not a directory".into(),
                })
            }
        };
        if !self.ignore_special && !self.tree_valid(oid)? {
            return Err(RootError::InvalidDirectory {
                dir: dir.to_string(),
                message: format!("git tree {oid} contains upwards symlinks or unsupported entries"),
            });
        }
        let entries = self
            .dir(oid)?
            .iter()
            .filter_map(|(name, e)| {
                e.kind.map(|kind| {
                    (
                        name.clone(),
                        DirEntry {
                            kind,
                            git_id: Some(e.oid.to_string()),
                        },
                    )
                })
            })
            .collect();
        let known_tree = if self.ignore_special {
            None
        } else {
            Some((oid.to_string(), self.tree_size(oid)?))
        };
        Ok(DirectoryEntries {
            entries,
            known_tree,
        })
    }
}

/// Whether each tree is valid, from its own entries and its subtrees.
struct ValidTrees<'a> {
    root: &'a GitRoot,
}

impl crate::tree_walk::PostOrder for ValidTrees<'_> {
    type Key = Oid;
    type Data = ();
    type Value = bool;
    type Error = RootError;

    fn visit(&mut self, oid: &Oid) -> crate::tree_walk::VisitResult<Self> {
        use crate::tree_walk::Visit;
        if let Some(v) = self.root.valid.lock().unwrap().get(oid) {
            return Ok(Visit::Known(*v));
        }
        let dir = self.root.dir(*oid)?;
        let mut subtrees = Vec::new();
        for entry in dir.values() {
            let ok = match entry.kind {
                None => false,
                Some(ObjectKind::Tree) => {
                    subtrees.push(entry.oid);
                    true
                }
                Some(ObjectKind::Symlink) => is_non_upwards(&self.root.read_blob(entry.oid)?),
                _ => true,
            };
            if !ok {
                self.root.valid.lock().unwrap().insert(*oid, false);
                return Ok(Visit::Known(false));
            }
        }
        Ok(Visit::Expand((), subtrees))
    }

    fn finish(
        &mut self,
        oid: &Oid,
        _: (),
        done: &std::collections::HashMap<Oid, bool>,
    ) -> Result<bool, RootError> {
        let dir = self.root.dir(*oid)?;
        let ok = dir
            .values()
            .filter(|e| e.kind == Some(ObjectKind::Tree))
            .all(|e| done[&e.oid]);
        self.root.valid.lock().unwrap().insert(*oid, ok);
        Ok(ok)
    }
}

/// Roots opened once, by description.
#[derive(Default)]
pub struct RootCache {
    roots: Mutex<Vec<(FileRoot, Arc<SourceRoot>)>>,
}

impl RootCache {
    pub fn new() -> RootCache {
        RootCache::default()
    }

    /// The opened root for `root`, opening it on first use.
    pub fn get(&self, root: &FileRoot) -> Result<Arc<SourceRoot>, RootError> {
        let mut roots = self.roots.lock().unwrap();
        if let Some((_, r)) = roots.iter().find(|(f, _)| f == root) {
            return Ok(r.clone());
        }
        let opened = Arc::new(SourceRoot::open(root)?);
        roots.push((root.clone(), opened.clone()));
        Ok(opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree_walk::MAX_TREE_DEPTH;

    #[test]
    fn fnmatch_is_posix_without_flags() {
        assert!(fnmatch("*.c", "a.c"));
        assert!(fnmatch("*.c", ".hidden.c"));
        assert!(!fnmatch("*.c", "a.h"));
        assert!(fnmatch("[ab]?", "bx"));
        assert!(fnmatch("\\*", "*"));
        assert!(!fnmatch("\\*", "x"));
        assert!(fnmatch("*", ""));
    }

    #[test]
    fn non_upwards() {
        assert!(is_non_upwards(b"a/b"));
        assert!(is_non_upwards(b"a/../b"));
        assert!(is_non_upwards(b"a/.."));
        assert!(!is_non_upwards(b"a/../.."));
        assert!(!is_non_upwards(b"../x"));
        assert!(!is_non_upwards(b"/etc"));
        assert_eq!(normal_path("a/./b/../c/"), "a/c");
        assert_eq!(normal_path(""), ".");
        assert_eq!(normal_path("../a"), "../a");
    }

    /// A git root whose tree nests `depth` levels (`d/d/…/f`).
    fn deep_root(dir: &std::path::Path, depth: usize) -> SourceRoot {
        let repo = git2::Repository::init_bare(dir).unwrap();
        let blob = repo.blob(b"x\n").unwrap();
        let mut builder = repo.treebuilder(None).unwrap();
        builder.insert("f", blob, 0o100644).unwrap();
        let mut tree = builder.write().unwrap();
        for _ in 1..depth {
            let mut builder = repo.treebuilder(None).unwrap();
            builder.insert("d", tree, 0o040000).unwrap();
            tree = builder.write().unwrap();
        }
        SourceRoot::open(&FileRoot::GitTree {
            tree: tree.to_string(),
            repository: Some(dir.to_path_buf()),
            ignore_special: false,
        })
        .unwrap()
    }

    #[test]
    fn deep_git_roots_are_checked_without_recursion() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = deep_root(&tmp.path().join("deep"), 12_000);
        assert_eq!(deep.read_directory(".").unwrap().entries.len(), 1);
        let too_deep = deep_root(&tmp.path().join("too-deep"), MAX_TREE_DEPTH + 1);
        let err = too_deep.read_directory(".").unwrap_err();
        assert!(matches!(err, RootError::TooDeep(_)), "{err}");
    }
}
